//! W8: asks the host for N random bytes in one call.
fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(16);
    #[cfg(target_os = "wasi")]
    let bytes = wasip2::random::random::get_random_bytes(n);
    #[cfg(not(target_os = "wasi"))]
    let bytes = vec![0u8; n as usize];
    println!("got {} random bytes", bytes.len());
}
