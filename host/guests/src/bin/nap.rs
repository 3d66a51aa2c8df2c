//! Sleeps for the milliseconds given (default 1000), then copies stdin to stdout: a task
//! that takes a while and then succeeds.
use std::io::{Read, Write};

fn main() {
    let ms: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let _ = std::io::stdout().write_all(&input);
}
