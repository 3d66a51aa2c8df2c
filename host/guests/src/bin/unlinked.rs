//! Scratch cap: creates /tmp/hidden, deletes its name, and keeps writing through the open
//! handle: the space stays in use though no file shows it.
use std::io::Write;

fn main() {
    let mut f = match std::fs::File::create("/tmp/hidden") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("unlinked: cannot create: {e}");
            std::process::exit(1)
        }
    };
    if let Err(e) = std::fs::remove_file("/tmp/hidden") {
        eprintln!("unlinked: cannot remove: {e}");
        std::process::exit(1)
    }
    let block = vec![0x42_u8; 1 << 20];
    let mut written = 0u64;
    loop {
        if f.write_all(&block).is_err() {
            break;
        }
        written += block.len() as u64;
        if written >= 300 << 20 {
            break;
        }
    }
    println!("wrote {} MiB", written >> 20);
}
