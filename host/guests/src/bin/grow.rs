//! W2: grows memory in 1 MiB steps, touching every page, until something stops it.
fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xa5; 1 << 20]);
        if hoard.len() % 64 == 0 {
            eprintln!("holding {} MiB", hoard.len());
        }
    }
}
