//! W1: an infinite loop that does visible work.
fn main() {
    let mut x: u64 = 1;
    loop {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        if x == 0 {
            println!("{x}");
        }
    }
}
