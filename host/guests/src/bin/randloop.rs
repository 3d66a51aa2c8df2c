//! W1: loops on cheap host calls (1 MiB of randomness each) that never block, so only an
//! interrupt inside the guest stops it on time.
fn main() {
    let mut total: u64 = 0;
    loop {
        #[cfg(target_os = "wasi")]
        let n = wasip2::random::random::get_random_bytes(1 << 20).len() as u64;
        #[cfg(not(target_os = "wasi"))]
        let n = 1u64 << 20;
        total = total.wrapping_add(n);
        if total == 0 {
            println!("wrapped");
        }
    }
}
