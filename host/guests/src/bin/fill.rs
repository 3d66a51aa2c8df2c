//! W6/scratch cap: writes 1 MiB blocks to /tmp/fill until a write fails or it is stopped.
use std::io::Write;

fn main() {
    let block = vec![0x5a_u8; 1 << 20];
    let mut f = match std::fs::File::create("/tmp/fill") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fill: cannot create: {e}");
            std::process::exit(1)
        }
    };
    let mut written = 0u64;
    loop {
        if let Err(e) = f.write_all(&block) {
            eprintln!("fill: stopped after {written} bytes: {e}");
            std::process::exit(1)
        }
        written += block.len() as u64;
    }
}
