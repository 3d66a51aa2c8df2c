//! W7: `exit N` exits with code N; `exit trap` executes `unreachable`; `exit panic` panics.
use agenix_test_guests::{args, exit};

fn main() {
    match args().first().map(String::as_str) {
        Some("trap") => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            std::process::abort();
        }
        Some("panic") => panic!("deliberate panic"),
        Some(n) => exit(n.parse().unwrap_or(2)),
        None => exit(0),
    }
}
