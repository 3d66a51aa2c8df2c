//! W5: opens a TCP connection through Rust's standard library (which links wasi:sockets),
//! to the address in its argument (default `127.0.0.1:9`), and prints how it went.
fn main() {
    let target = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9".into());
    match std::net::TcpStream::connect(&target) {
        Ok(_) => println!("connected"),
        Err(e) => println!("refused: {e}"),
    }
}
