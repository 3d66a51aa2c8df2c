//! Prints its arguments, its environment and how many stdin bytes it read, then copies
//! stdin to stdout.
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let mut err = std::io::stderr().lock();
    for a in std::env::args() {
        let _ = writeln!(err, "arg {a}");
    }
    for (k, v) in std::env::vars() {
        let _ = writeln!(err, "env {k}={v}");
    }
    let _ = writeln!(err, "stdin {}", input.len());
    let _ = std::io::stdout().write_all(&input);
}
