//! W6: writes to stdout (or stderr with `stderr`) forever.
use std::io::Write;

fn main() {
    let line = vec![b'y'; 4096];
    let to_stderr = std::env::args().nth(1).as_deref() == Some("stderr");
    loop {
        let r = if to_stderr { std::io::stderr().write_all(&line) } else { std::io::stdout().write_all(&line) };
        if r.is_err() {
            std::process::exit(1)
        }
    }
}
