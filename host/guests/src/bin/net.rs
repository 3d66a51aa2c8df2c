//! W5: tries every way out of the sandbox through the WASI interfaces themselves — a TCP
//! socket, a UDP socket, a name lookup, an HTTP request — and prints what each answered,
//! one line each: `tcp: <error-code>` and so on, or `tcp: OPEN` should one succeed.
//! Argument: the address (`IP:PORT`) to aim at. Or `hoard N`: makes N `wasi:http` header
//! values of 4 KiB each and holds them all, then prints `held N`; or `header BYTES`: tries
//! to set one header of that many bytes; or `text BYTES`: sets a request's authority, path,
//! method and scheme to strings of exactly that many bytes and prints which were refused; or
//! `header BYTES`: tries to set one header of that many bytes, and prints `header: ok` or the error (the host may
//! end the task instead).

#[cfg(target_os = "wasi")]
fn main() {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
    use wasip2::sockets::network::IpAddressFamily;
    use wasip2::sockets::{instance_network, ip_name_lookup, tcp_create_socket, udp_create_socket};

    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hoard") {
        let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let value = vec![b'v'; 4096];
        let mut held = Vec::new();
        for _ in 0..n {
            let fields = Fields::new();
            let _ = fields.append("x-hoard", &value);
            held.push(fields);
        }
        println!("held {}", held.len());
        return;
    }
    if args.get(1).map(String::as_str) == Some("text") {
        let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let request = OutgoingRequest::new(Fields::new());
        let said = |r: Result<(), ()>| if r.is_ok() { "ok" } else { "refused" };
        let authority = said(request.set_authority(Some(&"a".repeat(n))));
        let path = "/".to_string() + &"p".repeat(n.saturating_sub(1));
        let path = said(request.set_path_with_query(Some(&path)));
        let method = said(request.set_method(&Method::Other("M".repeat(n))));
        let scheme = said(request.set_scheme(Some(&Scheme::Other("s".repeat(n)))));
        println!("authority {authority}, path {path}, method {method}, scheme {scheme}");
        return;
    }
    if args.get(1).map(String::as_str) == Some("header") {
        let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        match Fields::new().append("x-big", &vec![b'v'; n]) {
            Ok(()) => println!("header: ok"),
            Err(e) => println!("header: {e:?}"),
        }
        return;
    }
    let target = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:9".into());
    let show = |what: &str, r: Result<(), String>| match r {
        Ok(()) => println!("{what}: OPEN"),
        Err(e) => println!("{what}: {e}"),
    };
    let code = |e: wasip2::sockets::network::ErrorCode| e.name().to_owned();
    show("tcp", tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4).map(drop).map_err(code));
    show("tcp6", tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv6).map(drop).map_err(code));
    show("udp", udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4).map(drop).map_err(code));
    let network = instance_network::instance_network();
    for name in ["localhost", "127.0.0.1"] {
        let r = ip_name_lookup::resolve_addresses(&network, name)
            .and_then(|s| s.resolve_next_address().map(drop))
            .map_err(code);
        show(&format!("lookup {name}"), r);
    }
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(&target));
    let _ = request.set_path_with_query(Some("/"));
    let r = outgoing_handler::handle(request, None).map(drop).map_err(|e| format!("{e:?}").replace("ErrorCode::", ""));
    show("http", r);
}

#[cfg(not(target_os = "wasi"))]
fn main() {}
