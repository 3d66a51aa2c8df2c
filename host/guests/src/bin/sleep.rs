//! W1: blocks inside a host call (a one-hour sleep) so only a wall-clock timeout can stop it.
fn main() {
    println!("going to sleep");
    std::thread::sleep(std::time::Duration::from_secs(3600));
    println!("woke up");
}
