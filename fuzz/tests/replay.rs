//! Every seed and every regression input, through its target's harness under the target's
//! allocation limit; and the checked-in seeds are what `seeds::all` makes.
//!
//! `AGENIX_FUZZ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml` rewrites
//! `fuzz/seeds/` after a format change.

use std::fs;
use std::path::{Path, PathBuf};

use agenix_fuzz::alloc::{self, Capped};
use agenix_fuzz::{seeds, targets};

#[global_allocator]
static ALLOC: Capped = Capped;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

fn examples() -> Vec<(String, Vec<u8>)> {
    files(&root().join("../examples"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect()
}

/// Serializes the tests that set the process-wide limit, and records instead of aborting.
fn limits() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    alloc::set_abort(false);
    targets::warm_up();
    guard
}

#[test]
fn seeds_are_current() {
    let seeds = seeds::all(&examples());
    let write = std::env::var_os("AGENIX_FUZZ_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for target in targets::ALL {
        let dir = root().join("seeds").join(target.name);
        let want: Vec<_> = seeds.iter().filter(|s| s.target == target.name).collect();
        if write {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            for s in &want {
                fs::write(dir.join(&s.name), &s.bytes).unwrap();
            }
            continue;
        }
        let have = files(&dir);
        if have.len() != want.len() {
            stale.push(format!("{}: {} files, expected {}", dir.display(), have.len(), want.len()));
        }
        for s in &want {
            if fs::read(dir.join(&s.name)).ok().as_deref() != Some(s.bytes.as_slice()) {
                stale.push(format!("{}/{}", dir.display(), s.name));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "seeds are stale (rerun with AGENIX_FUZZ_WRITE_SEEDS=1):\n{}",
        stale.join("\n")
    );
}

/// Every seed and every input in `fuzz/regressions/` allocates within the limits and takes
/// under a second.
#[test]
fn seeds_and_regressions_pass_under_the_limits() {
    let _guard = limits();
    let mut over = Vec::new();
    let mut slow = Vec::new();
    for target in targets::ALL {
        alloc::set_limit(target.limit);
        let mut inputs = files(&root().join("seeds").join(target.name));
        inputs.extend(files(&root().join("regressions").join(target.name)));
        for path in inputs {
            let data = fs::read(&path).unwrap();
            let start = std::time::Instant::now();
            let ((), cost) = alloc::measure(data.len(), || (target.run)(&data));
            if start.elapsed() > std::time::Duration::from_secs(1) {
                slow.push(format!("{} ({:?})", path.display(), start.elapsed()));
            }
            eprintln!(
                "{}: largest allocation {} bytes of {} allowed, peak {} bytes",
                path.display(),
                cost.largest,
                cost.allowed,
                cost.peak
            );
            if cost.over {
                over.push(path.display().to_string());
            }
        }
    }
    alloc::set_limit(alloc::Limit::NONE);
    assert!(
        over.is_empty() && slow.is_empty(),
        "over the allocation limit: {over:?}; slow: {slow:?}"
    );
}

/// Each input at its format's cap allocates within the limits and takes under a second
/// (writes them to `$AGENIX_FUZZ_WRITE_WORST/<target>/` when that is set).
#[test]
fn worst_cases_stay_under_the_limits() {
    let _guard = limits();
    let mut over = Vec::new();
    let mut slow = Vec::new();
    let dump = std::env::var_os("AGENIX_FUZZ_WRITE_WORST").map(PathBuf::from);
    for target in targets::ALL {
        alloc::set_limit(target.limit);
        for case in seeds::worst_cases().into_iter().filter(|c| c.target == target.name) {
            let start = std::time::Instant::now();
            let ((), cost) = alloc::measure(case.bytes.len(), || (target.run)(&case.bytes));
            eprintln!(
                "{}/{} ({} bytes): largest allocation {} bytes of {} allowed, peak {} bytes, {:?}",
                target.name,
                case.name,
                case.bytes.len(),
                cost.largest,
                cost.allowed,
                cost.peak,
                start.elapsed()
            );
            if cost.over {
                over.push(format!("{}/{}", target.name, case.name));
            }
            if start.elapsed() > std::time::Duration::from_secs(1) {
                slow.push(format!("{}/{} ({:?})", target.name, case.name, start.elapsed()));
            }
            if let Some(dir) = &dump {
                fs::create_dir_all(dir.join(target.name)).unwrap();
                fs::write(dir.join(target.name).join(&case.name), &case.bytes).unwrap();
            }
        }
    }
    alloc::set_limit(alloc::Limit::NONE);
    assert!(
        over.is_empty() && slow.is_empty(),
        "over the allocation limit: {over:?}; slow: {slow:?}"
    );
}
