//! Helpers shared by the test guests.

use std::io::Write;

/// Exits with `code`, which survives on wasip2 (std's exit maps every failure to 1).
pub fn exit(code: u8) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    #[cfg(target_os = "wasi")]
    wasip2::cli::exit::exit_with_code(code);
    std::process::exit(i32::from(code))
}

/// The arguments after the program name.
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}
