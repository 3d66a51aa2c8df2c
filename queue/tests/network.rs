//! Network attacks (docs/test-matrix.md rows N1–N5) against a real agq on loopback: clients
//! with the wrong pin or token, 0-RTT, floods of connections, streams and requests, oversized,
//! slow and malformed frames.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agenix_link::{Client, Credential, LinkError};
use agenix_proto::wire::{ClientRole, ErrorCode, MAX_FRAME, Request, Response};
use agenix_proto::{Digest, Fingerprint};
use common::raw::{self, Raw, frame};
use common::*;

const HERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const TIMEOUT: Duration = Duration::from_secs(5);

fn refused_by_limit(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// The application close agq sent, as (code, reason).
async fn closed_by_queue(conn: &quinn::Connection) -> (u64, String) {
    match tokio::time::timeout(TIMEOUT, conn.closed()).await.expect("the connection stayed open") {
        quinn::ConnectionError::ApplicationClosed(c) => {
            (c.error_code.into_inner(), String::from_utf8_lossy(&c.reason).into_owned())
        }
        other => panic!("closed by {other}"),
    }
}

async fn workers(c: &Client) -> usize {
    match c.request(&Request::ListWorkers { after: None, limit: 1000 }).await.unwrap() {
        Response::Workers { workers, .. } => workers.len(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n01_wrong_pin_or_token_is_refused_without_state_change() {
    let q = Agq::start(&[]);
    let observer = q.client(ClientRole::Observer).await;
    let planner = q.client(ClientRole::Planner).await;
    q.submit(&planner, &[b"n01"], 1).await;
    let before = (stats(&observer).await.jobs, workers(&observer).await);

    // Pinning another identity: the TLS handshake fails on the client, naming both keys.
    let other = Fingerprint(Digest::of(b"another queue's key"));
    let err = Client::connect(q.addr, other, ClientRole::Worker, &q.credential(ClientRole::Worker))
        .await
        .unwrap_err();
    let LinkError::WrongQueue { expected, found, .. } = &err else { panic!("{err}") };
    assert_eq!((*expected, *found), (other, q.fingerprint));
    assert!(
        err.to_string().ends_with(&format!(
            "is {}, not the pinned {other}: check the fingerprint",
            q.fingerprint
        )),
        "{err}"
    );

    // A wrong token, another role's token, an empty token: unauthenticated.
    let wrong = [
        (ClientRole::Planner, "agq_0123456789".to_string()),
        (ClientRole::Planner, q.token(ClientRole::Observer)),
        (ClientRole::Observer, q.token(ClientRole::Planner)),
        (ClientRole::Observer, String::new()),
    ];
    for (role, token) in wrong {
        let token = Credential::Token(token);
        let err = Client::connect(q.addr, q.fingerprint, role, &token).await.unwrap_err();
        let (code, message) = remote(err);
        let said = format!("wrong token for the {} role", role.as_str());
        assert_eq!((code, message), (ErrorCode::Unauthenticated, said));
    }
    // Skipping the Hello: a valid submission as the first request is not executed, and the
    // connection is closed.
    let (plan, d) = q.plan(COMPONENT, &[]);
    let (action, _) = q.action(d, &[], 1);
    let planner = q.client(ClientRole::Planner).await;
    let submit = submit_of(&planner, &plan, &action).await;
    let sneaky = raw::connect_from(ELSEWHERE, &q).await.unwrap();
    let answer = sneaky.ask(&submit).await;
    assert_eq!(
        answer,
        Response::Error {
            code: ErrorCode::Unauthenticated,
            message: "the first request must be hello, not submit".into()
        }
    );
    assert_eq!(closed_by_queue(&sneaky.conn).await, (1, "unauthenticated".to_string()));

    // No state changed.
    assert_eq!((stats(&observer).await.jobs, workers(&observer).await), before);
}

/// Records the TLS 1.3 tickets the client is given and resumes with.
#[derive(Debug)]
struct Tickets {
    inner: rustls::client::ClientSessionMemoryCache,
    early_data_sizes: Mutex<Vec<u32>>,
    resumed: Mutex<usize>,
}

impl rustls::client::ClientSessionStore for Tickets {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, g: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, g);
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value);
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.early_data_sizes.lock().unwrap().push(value.max_early_data_size());
        self.inner.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(name);
        if t.is_some() {
            *self.resumed.lock().unwrap() += 1;
        }
        t
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n02_zero_rtt_is_never_accepted() {
    let q = Agq::start(&[]);
    let tickets = Arc::new(Tickets {
        inner: rustls::client::ClientSessionMemoryCache::new(8),
        early_data_sizes: Mutex::new(vec![]),
        resumed: Mutex::new(0),
    });
    // A client that would send 0-RTT data if the queue let it.
    let mut tls = raw::tls(q.fingerprint);
    tls.enable_early_data = true;
    tls.resumption = rustls::client::Resumption::store(tickets.clone());
    let endpoint = raw::endpoint(HERE, raw::quic(tls));

    let conn = endpoint.connect(q.addr, "agenix-queue").unwrap().await.unwrap();
    let first = Raw { endpoint: endpoint.clone(), conn };
    let hello = first.hello(ClientRole::Observer, Some(&q.token(ClientRole::Observer))).await;
    assert!(matches!(hello, Response::HelloOk { .. }), "{hello:?}");
    assert!(matches!(first.ask(&Request::Stats {}).await, Response::Stats { .. }));
    // Tickets arrive after the handshake.
    let give_up = Instant::now() + TIMEOUT;
    while tickets.early_data_sizes.lock().unwrap().is_empty() {
        assert!(Instant::now() < give_up, "the queue sent no session ticket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sizes = tickets.early_data_sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|s| *s == 0), "a ticket allows early data: {sizes:?}");
    first.conn.close(0u32.into(), b"bye");

    // Reconnecting with a ticket: the session resumes but there is no 0-RTT to replay.
    let connecting = endpoint.connect(q.addr, "agenix-queue").unwrap();
    let conn = match connecting.into_0rtt() {
        Err(connecting) => connecting.await.unwrap(),
        Ok((conn, accepted)) => {
            // Had the client been able to try, the queue must still have rejected it.
            let replay = conn.open_bi().await;
            assert!(!accepted.await, "the queue accepted 0-RTT data");
            drop(replay);
            conn
        }
    };
    assert_eq!(*tickets.resumed.lock().unwrap(), 1, "the second connection did not resume");
    // The connection itself is fine once the handshake is complete.
    let second = Raw { endpoint, conn };
    let hello = second.hello(ClientRole::Observer, Some(&q.token(ClientRole::Observer))).await;
    assert!(matches!(hello, Response::HelloOk { .. }), "{hello:?}");
}

/// A client with the right token, from an address over its limit, is refused during the
/// handshake and told so.
async fn refused_with_its_token(q: &Agq, role: ClientRole) {
    let err = Client::connect(q.addr, q.fingerprint, role, &q.credential(role)).await.unwrap_err();
    assert!(
        matches!(&err, LinkError::Connect { message, .. }
            if message == "aborted by peer: the server refused to accept a new connection"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n03_connection_flood_is_capped_per_ip_and_other_clients_are_served() {
    let q = Agq::start(&[]);
    // Ten connections (the default cap) from one address that never say Hello.
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(raw::connect_from(HERE, &q).await.unwrap());
    }
    // The eleventh from that address is refused during the handshake, token or not.
    let err = raw::connect_from(HERE, &q).await.unwrap_err();
    assert!(refused_by_limit(&err), "{err}");
    refused_with_its_token(&q, ClientRole::Planner).await;
    // A client from another address is served.
    let legit = raw::client_from(ELSEWHERE, &q, ClientRole::Planner).await;
    assert!(matches!(legit.ask(&Request::Stats {}).await, Response::Stats { .. }));
    // The flood's connections end: the address is served again.
    for f in &flood {
        f.conn.close(0u32.into(), b"done");
    }
    let give_up = Instant::now() + TIMEOUT;
    loop {
        match raw::connect_from(HERE, &q).await {
            Ok(r) => {
                let hello =
                    r.hello(ClientRole::Observer, Some(&q.token(ClientRole::Observer))).await;
                assert!(matches!(hello, Response::HelloOk { .. }), "{hello:?}");
                break;
            }
            Err(e) => assert!(refused_by_limit(&e) && Instant::now() < give_up, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The per-address connection limit is meant for anonymous clients: workers that
/// authenticated leave it, so many workers on one host are all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n03_workers_on_one_host_are_not_held_to_the_per_address_connection_limit() {
    let q = Agq::start(&["--connections-per-ip", "2"]);
    let mut workers = Vec::new();
    for i in 0..6 {
        let w = raw::client_from(HERE, &q, ClientRole::Worker).await;
        let register =
            Request::Register { capabilities: caps("w"), instance: format!("host worker {i}") };
        assert!(matches!(w.ask(&register).await, Response::Registered { .. }), "worker {i}");
        workers.push(w);
    }
    // The address still has its own two connections for planners and observers.
    let a = raw::client_from(HERE, &q, ClientRole::Observer).await;
    let b = raw::connect_from(HERE, &q).await.unwrap();
    let err = raw::connect_from(HERE, &q).await.unwrap_err();
    assert!(refused_by_limit(&err), "{err}");
    assert!(matches!(a.ask(&Request::Stats {}).await, Response::Stats { .. }));
    drop((b, workers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n03_silent_connections_are_closed_after_the_request_timeout() {
    let q = Agq::start(&["--request-timeout-ms", "500"]);
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(raw::connect_from(HERE, &q).await.unwrap());
    }
    assert!(refused_by_limit(&raw::connect_from(HERE, &q).await.unwrap_err()));
    // Nobody said Hello in time: agq closes every one and frees their slots.
    for f in &flood {
        assert_eq!(closed_by_queue(&f.conn).await, (1, "unauthenticated".to_string()));
    }
    // Silence is not a failed login: the address is not banned, and is served again.
    let c = raw::client_from(HERE, &q, ClientRole::Observer).await;
    assert!(matches!(c.ask(&Request::Stats {}).await, Response::Stats { .. }));
}

/// Five failed logins in a minute: that address's wrong tokens are refused unchecked for a
/// minute, with the reason; its correctly configured clients are still served (one
/// misconfigured process on a shared address must not lock out the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n03_five_failed_logins_get_the_address_wrong_tokens_refused_not_its_right_ones() {
    let q = Agq::start(&[]);
    let already = q.client(ClientRole::Observer).await;
    for i in 0..5 {
        let token = Credential::Token(format!("agq_guess_{i}"));
        let err =
            Client::connect(q.addr, q.fingerprint, ClientRole::Planner, &token).await.unwrap_err();
        assert_eq!(remote(err).0, ErrorCode::Unauthenticated);
    }
    // The sixth wrong token is refused without being checked, saying why and for how long.
    let guess = Credential::Token("agq_guess_6".into());
    let err =
        Client::connect(q.addr, q.fingerprint, ClientRole::Planner, &guess).await.unwrap_err();
    let (code, message) = remote(err);
    assert_eq!(code, ErrorCode::Unauthenticated, "{message}");
    assert!(
        message.starts_with("too many failed logins from this address: they are refused")
            && message.ends_with("(wrong token for the planner role)"),
        "{message}"
    );
    // The right token from the same address still works, in every role.
    for role in ClientRole::ALL {
        let c = q.client(role).await;
        assert!(matches!(c.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
    }
    assert!(matches!(already.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n03_requests_over_the_per_address_rate_are_refused_and_workers_have_their_own() {
    // Planners and observers of one address: 20 requests a minute together, Hellos included.
    let q = Agq::start(&[
        "--requests-per-minute",
        "20",
        "--connections-per-ip",
        "3",
        "--worker-requests-per-minute",
        "30",
    ]);
    let limited = Response::Error {
        code: ErrorCode::RateLimited,
        message: "too many requests: slow down".into(),
    };
    let c = raw::client_from(HERE, &q, ClientRole::Observer).await;
    for i in 1..20 {
        assert!(matches!(c.ask(&Request::Stats {}).await, Response::Stats { .. }), "request {i}");
    }
    assert_eq!(c.ask(&Request::Stats {}).await, limited, "the Hello was the 20th");
    // A second connection from the address is refused at its Hello: the budget is the
    // address's, and reconnecting does not refill it.
    let again = raw::connect_from(HERE, &q).await.unwrap();
    let answer = again.hello(ClientRole::Planner, Some(&q.token(ClientRole::Planner))).await;
    let spent = "too many requests from this address: slow down";
    assert_eq!(answer, Response::Error { code: ErrorCode::RateLimited, message: spent.into() });
    // Another address is served.
    let other = raw::client_from(ELSEWHERE, &q, ClientRole::Observer).await;
    assert!(matches!(other.ask(&Request::Stats {}).await, Response::Stats { .. }));
    // A worker on the spent address is not starved: it has a budget of its own, sized by
    // the concurrency it registers (30 a minute per slot; 4 slots).
    let w = raw::client_from(HERE, &q, ClientRole::Worker).await;
    let register = Request::Register { capabilities: caps("w"), instance: "n03 instance".into() };
    assert!(matches!(w.ask(&register).await, Response::Registered { .. }));
    let mut served = 1;
    let refusal = loop {
        match w.ask(&Request::Stats {}).await {
            Response::Stats { .. } => served += 1,
            other => break other,
        }
        assert!(served < 2000, "the worker's budget never ran out");
    };
    assert_eq!(refusal, limited);
    // The budget refills as time passes, so a slow machine may serve a few more.
    assert!(served >= 120, "a worker of 4 slots was served only {served} requests");
}

/// A client sends a request the queue throttled again after a backoff: it was not acted
/// on, so nothing is lost and the caller sees it succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_request_is_sent_again_and_succeeds() {
    // 600 a minute: a burst of 600, then 10 a second.
    let q = Agq::start(&["--requests-per-minute", "600"]);
    let c = q.client(ClientRole::Planner).await;
    c.put_blob(b"throttled").await.unwrap();
    for _ in 0..620 {
        let got = c.get_blob(Digest::of(b"throttled"), 100).await.unwrap();
        assert_eq!(got, b"throttled");
    }
    // Past the burst, requests went through because they waited.
    assert!(matches!(c.request(&Request::Stats {}).await, Ok(Response::Stats { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n04_oversized_frame_is_refused_and_closes_the_connection() {
    let q = Agq::start(&[]);
    let c = q.client(ClientRole::Planner).await;
    let conn = c.connection().clone();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let announced = MAX_FRAME + 1;
    // One write, so it is buffered before the queue can see the header and close.
    let mut start = u32::try_from(announced).unwrap().to_be_bytes().to_vec();
    start.extend_from_slice(br#"{"type":"stats""#);
    send.write_all(&start).await.unwrap();
    // Not finished: agq must answer without waiting for the announced mebibyte.
    let answer: Response = tokio::time::timeout(TIMEOUT, agenix_link::read_frame(&mut recv))
        .await
        .expect("no answer to an oversized frame")
        .unwrap();
    assert_eq!(
        answer,
        Response::Error {
            code: ErrorCode::TooLarge,
            message: format!("frame of {announced} bytes is over the limit of {MAX_FRAME}")
        }
    );
    assert_eq!(closed_by_queue(&conn).await, (3, "frame too large".to_string()));
    assert!(c.is_closed());
    // agq goes on serving.
    let other = q.client(ClientRole::Observer).await;
    assert!(matches!(other.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n04_slow_sender_is_reset_after_the_request_timeout() {
    let q = Agq::start(&["--request-timeout-ms", "500"]);
    let c = q.client(ClientRole::Planner).await;
    let conn = c.connection().clone();
    // Half a frame, then nothing.
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let whole = frame(br#"{"type":"stats"}"#);
    send.write_all(&whole[..whole.len() / 2]).await.unwrap();
    let r = tokio::time::timeout(TIMEOUT, recv.read_to_end(1 << 20))
        .await
        .expect("the stalled stream was never given up");
    assert!(
        matches!(&r, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code.into_inner() == 2),
        "{r:?}"
    );
    assert!(start.elapsed() >= Duration::from_millis(450), "reset before the timeout");
    drop(send);
    // A blob upload that stalls is answered as too slow.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let blobs = vec![agenix_proto::InputRef { digest: Digest::of(b"0123456789"), size: 10 }];
    let put = Request::PutBlobs { blobs, keep: false };
    agenix_link::write_frame(&mut send, &put).await.unwrap();
    send.write_all(b"01234").await.unwrap();
    let answer: Response = tokio::time::timeout(TIMEOUT, agenix_link::read_frame(&mut recv))
        .await
        .expect("no answer to a stalled upload")
        .unwrap();
    assert_eq!(
        answer,
        Response::Error { code: ErrorCode::BadRequest, message: "upload too slow".into() }
    );
    // The connection survives both.
    assert!(matches!(c.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
    let err = c.get_blob(Digest::of(b"0123456789"), 100).await.unwrap_err();
    assert_eq!(remote(err).0, ErrorCode::NotFound);
}

/// The cap is 64 concurrent streams per connection. quinn returns stream credit in batches
/// (once more than 1/8 of the window is free), so a client sees between 56 and 64 slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n04_streams_over_the_cap_wait_for_a_free_slot() {
    let q = Agq::start(&["--request-timeout-ms", "3000"]);
    let c = q.client(ClientRole::Planner).await;
    let conn = c.connection().clone();
    // Open streams, each stalled mid-frame, until one has to wait.
    let mut stalled = Vec::new();
    let mut waiting = loop {
        let mut next = Box::pin(conn.open_bi());
        match tokio::time::timeout(Duration::from_millis(500), &mut next).await {
            Ok(opened) => {
                let (mut send, recv) = opened.unwrap();
                send.write_all(&[0, 0]).await.unwrap();
                stalled.push((send, recv));
                assert!(stalled.len() <= 64, "more than 64 concurrent streams");
            }
            Err(_) => break next,
        }
    };
    assert!(stalled.len() >= 56, "only {} concurrent streams", stalled.len());
    // agq gives up on every stalled stream after the request timeout (and asks the client to
    // stop sending on it) ...
    for (_, recv) in &mut stalled {
        let r = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
            .await
            .expect("a stalled stream was never given up");
        assert!(
            matches!(&r, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code.into_inner() == 2),
            "{r:?}"
        );
    }
    // ... and once the client lets go of them, the waiting stream gets a slot and is served.
    drop(stalled);
    let (mut send, mut recv) =
        tokio::time::timeout(TIMEOUT, &mut waiting).await.expect("no slot came free").unwrap();
    agenix_link::write_frame(&mut send, &Request::Stats {}).await.unwrap();
    send.finish().unwrap();
    let answer: Response = agenix_link::read_frame(&mut recv).await.unwrap();
    assert!(matches!(answer, Response::Stats { .. }), "{answer:?}");
    assert!(!c.is_closed());
    assert!(matches!(c.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n05_garbage_truncated_frames_and_invalid_json_get_clear_errors_and_the_connection_survives()
 {
    let mut q = Agq::start(&[]);
    let c = q.client(ClientRole::Planner).await;
    let conn = c.connection();
    let mut noise = vec![0u8; 4096];
    getrandom::fill(&mut noise).unwrap();
    noise[0] = 0xff; // never valid UTF-8
    let answered: Vec<(Vec<u8>, &str)> = vec![
        (frame(b"\xff\xfe\x00garbage"), "not UTF-8 (invalid byte at offset 0)"),
        (frame(&noise), "not UTF-8 (invalid byte at offset 0)"),
        (frame(br#"{"type":"stats""#), "EOF while parsing an object at line 1 column 15"),
        (frame(b""), "EOF while parsing a value at line 1 column 0"),
        (frame(b"[1,2,3]"), "invalid type: integer `1`, expected variant identifier"),
        (frame(br#"{"type":"shell","cmd":"rm -rf /"}"#), "type: unknown variant `shell`"),
        (frame(br#"{"type":"show_job","job":1,"x":1}"#), "unknown field `x`"),
        (frame(br#"{"type":"show_job","job":1,"job":2}"#), "job: duplicate key \"job\""),
        (frame(br#"{"type":"show_job","job":123456789012345678901234567890}"#), "expected u64"),
        (frame(br#"{"type":"stats"} trailing"#), "trailing characters at line 1 column 18"),
        (frame(&vec![b' '; MAX_FRAME]), "EOF while parsing a value at line 1 column 1048576"),
    ];
    for (bytes, expected) in answered {
        let out = raw::exchange(conn, &bytes).await.unwrap();
        let Response::Error { code, message } = raw::response(&out) else { panic!("{out:?}") };
        assert_eq!(code, ErrorCode::BadRequest, "{message}");
        assert!(message.contains(expected), "{message:?} does not contain {expected:?}");
        // The connection survives for the next valid request.
        assert!(matches!(c.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
    }
    // Truncated frames end their stream without an answer; the connection survives.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(br#"{"type""#);
    for bytes in [truncated, vec![0, 0], vec![]] {
        let out = raw::exchange(conn, &bytes).await;
        assert!(matches!(&out, Ok(b) if b.is_empty()), "{bytes:?} got {out:?}");
        assert!(matches!(c.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
    }
    // Garbage instead of a Hello: a clear error, then the connection is closed.
    let fresh = raw::connect_from(ELSEWHERE, &q).await.unwrap();
    let out = fresh.exchange(&frame(b"\x00\x01\x02")).await.unwrap();
    let Response::Error { code, message } = raw::response(&out) else { panic!("{out:?}") };
    assert_eq!(
        (code, message.as_str()),
        (ErrorCode::BadRequest, "invalid message: expected value at line 1 column 1")
    );
    assert_eq!(closed_by_queue(&fresh.conn).await, (1, "unauthenticated".to_string()));
    // agq is alive, serves a new client, and never panicked.
    assert!(q.is_running());
    let other = q.client(ClientRole::Observer).await;
    assert!(matches!(other.request(&Request::Stats {}).await.unwrap(), Response::Stats { .. }));
    assert!(!q.log().contains("panicked"), "{}", q.log());
}

/// N7: a client given several addresses of a queue dials them all and keeps the one that
/// serves its pinned identity: an address where nothing answers and one where another
/// queue answers cost it nothing. With no address serving, a link failure (trying again
/// may help, a node may be taking over) wins over another queue's answer; the other
/// queue's answer is what a single address gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n07_a_client_given_several_addresses_takes_the_one_that_serves() {
    let q = Agq::start(&[]);
    let other = Agq::start(&[]);
    // A loopback port where nothing listens.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let list = |addrs: &[std::net::SocketAddr]| -> agenix_link::Addresses {
        let parts: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        agenix_link::Addresses::from_parts(parts.iter().map(String::as_str)).unwrap()
    };
    let planner = q.credential(ClientRole::Planner);
    let started = Instant::now();
    let c = Client::connect_any(
        &list(&[silent, other.addr, q.addr]),
        q.fingerprint,
        ClientRole::Planner,
        &planner,
    )
    .await
    .unwrap();
    assert_eq!(c.remote(), q.addr);
    assert_eq!(stats(&c).await.workers, 0);
    // Not held up by the silent address (a connection attempt there waits 10 s).
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    let e = Client::connect_any(
        &list(&[other.addr, silent]),
        q.fingerprint,
        ClientRole::Planner,
        &planner,
    )
    .await
    .unwrap_err();
    assert!(e.is_link_failure(), "{e}");
    assert!(e.to_string().contains("no address of the queue answered"), "{e}");
    assert!(e.to_string().contains("not the pinned"), "{e}");
    let e = Client::connect_any(&list(&[other.addr]), q.fingerprint, ClientRole::Planner, &planner)
        .await
        .unwrap_err();
    assert!(matches!(e, LinkError::WrongQueue { .. }), "{e}");
    // A refusal is the queue's answer: it wins over what failed elsewhere.
    let wrong = Credential::Token("not-the-token".into());
    let e =
        Client::connect_any(&list(&[silent, q.addr]), q.fingerprint, ClientRole::Planner, &wrong)
            .await
            .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
}
