//! Classification: is refused a large allocation, copes with it, then spins until its fuel
//! runs out: the outcome is out of fuel, not out of memory.
fn main() {
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve(1 << 30).is_ok() {
        println!("got a GiB");
    }
    let mut x: u64 = 1;
    loop {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        if x == 0 {
            println!("{x}");
        }
    }
}
