//! W3/W4: one file-system operation per run, named by the arguments; prints `ok ...` and
//! exits 0, or prints `denied <error kind>` and exits 1.
//!
//! fs read PATH | write PATH | append PATH | truncate PATH | rename FROM TO | link FROM TO |
//!    symlink TARGET LINK | mkdir PATH | remove PATH | list DIR | create-then-read LINK |
//!    settime PATH SECS (its access and modification times) | mtime PATH (in seconds) |
//!    deep DIR LEVELS NAMELEN BYTES (LEVELS nested directories with names NAMELEN long
//!    under DIR, and a file of BYTES at the bottom)
use std::fs;
use std::io::Write;

use agenix_test_guests::{args, exit};

fn main() {
    let a = args();
    let arg = |i: usize| a.get(i).map(String::as_str).unwrap_or("");
    let result: std::io::Result<String> = match arg(0) {
        "read" => fs::read(arg(1)).map(|b| format!("ok {} bytes: {}", b.len(), String::from_utf8_lossy(&b))),
        "write" => fs::write(arg(1), b"written by guest").map(|()| "ok".into()),
        "append" => fs::OpenOptions::new()
            .append(true)
            .open(arg(1))
            .and_then(|mut f| f.write_all(b"appended"))
            .map(|()| "ok".into()),
        "truncate" => fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(arg(1))
            .map(|_| "ok".into()),
        "set-len" => fs::OpenOptions::new().write(true).open(arg(1)).and_then(|f| f.set_len(0)).map(|()| "ok".into()),
        "rename" => fs::rename(arg(1), arg(2)).map(|()| "ok".into()),
        "link" => fs::hard_link(arg(1), arg(2)).map(|()| "ok".into()),
        "symlink" => symlink(arg(1), arg(2)).map(|()| "ok".into()),
        "mkdir" => fs::create_dir(arg(1)).map(|()| "ok".into()),
        "remove" => fs::remove_file(arg(1)).map(|()| "ok".into()),
        "settime" => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(arg(2).parse().unwrap_or(0));
            fs::File::open(arg(1))
                .and_then(|f| f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t)))
                .map(|()| "ok".into())
        }
        "mtime" => fs::metadata(arg(1)).and_then(|m| m.modified()).map(|t| {
            format!("ok {}", t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
        }),
        "deep" => {
            let n = |i| arg(i).parse::<usize>().unwrap_or(0);
            let mut path = std::path::PathBuf::from(arg(1));
            let made = (0..n(2)).try_for_each(|_| {
                path.push("d".repeat(n(3).max(1)));
                fs::create_dir(&path)
            });
            made.and_then(|()| fs::write(path.join("f"), vec![b'x'; n(4)])).map(|()| "ok".into())
        }
        "list" => fs::read_dir(arg(1)).map(|rd| {
            let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            format!("ok {}", names.join(","))
        }),
        other => {
            eprintln!("fs: unknown op {other:?}");
            exit(2)
        }
    };
    match result {
        Ok(s) => {
            println!("{s}");
            exit(0)
        }
        Err(e) => {
            println!("denied {:?}", e.kind());
            exit(1)
        }
    }
}

/// Creates LINK -> TARGET through the preopen that holds LINK (std's symlink is unstable on
/// WASI).
#[cfg(target_os = "wasi")]
fn symlink(target: &str, link: &str) -> std::io::Result<()> {
    for (dir, name) in wasip2::filesystem::preopens::get_directories() {
        let prefix = format!("{}/", name.trim_end_matches('/'));
        if let Some(rel) = link.strip_prefix(&prefix) {
            return dir
                .symlink_at(target, rel)
                .map_err(|e| std::io::Error::other(format!("{e:?}")));
        }
    }
    Err(std::io::Error::from(std::io::ErrorKind::NotFound))
}

#[cfg(not(target_os = "wasi"))]
fn symlink(target: &str, link: &str) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}
