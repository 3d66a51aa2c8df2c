//! W5: opens a TCP connection, so the component imports wasi:sockets.
fn main() {
    match std::net::TcpStream::connect("127.0.0.1:9") {
        Ok(_) => println!("connected"),
        Err(e) => println!("refused: {e}"),
    }
}
