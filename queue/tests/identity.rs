//! Worker identity (docs/test-matrix.md rows I1–I6) against a real agq on loopback: workers
//! authenticate with their own keys in the TLS handshake, only enrolled keys are accepted,
//! a revocation takes effect at the worker's next request, and a lease is bound to the key
//! that claimed it.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use agenix_link::{Client, Credential};
use agenix_proto::job::JobState;
use agenix_proto::keys::signing_key_from_seed;
use agenix_proto::wire::{ClientRole, ErrorCode, Request, Response};
use agenix_proto::{KeyId, Trust};
use common::raw;
use common::*;

const HERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

fn new_key() -> agenix_proto::keys::SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    signing_key_from_seed(&seed)
}

/// `agq ARGS --data DATA`: (success, stdout, stderr).
fn agq(q: &Agq, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agq"))
        .args(args)
        .arg("--data")
        .arg(q.data())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// I1: a key nobody enrolled completes the handshake (the queue must learn the key to name
/// it) and is refused at its hello, naming the key id; so is a worker with no key at all,
/// or one offering a token. The queue's log names the refused key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_a_worker_key_not_enrolled_is_refused_naming_its_key_id() {
    let q = Agq::start(&[]);
    let stranger = new_key();
    let id = KeyId::of(&stranger.verifying_key());
    let credential = Credential::Key(stranger);
    let err =
        Client::connect(q.addr, q.fingerprint, ClientRole::Worker, &credential).await.unwrap_err();
    let expected = format!(
        "worker key {id} is not enrolled here (enroll it: agq worker enroll worker.pub --name NAME)"
    );
    assert_eq!(remote(err), (ErrorCode::Unauthenticated, expected));
    assert!(q.log().contains(&id.to_string()), "the queue's log does not name the key");

    // No key: a worker hello on a connection that proved none.
    let bare = raw::connect_from(HERE, &q).await.unwrap();
    let Response::Error { code, message } = bare.hello(ClientRole::Worker, None).await else {
        panic!("a worker without a key was accepted")
    };
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(message.contains("this connection presented none"), "{message}");
    // A token is no way in for a worker, not even the planner's.
    let planner_token = q.token(ClientRole::Planner);
    let with_token = raw::connect_from(HERE, &q).await.unwrap();
    let Response::Error { code, message } =
        with_token.hello(ClientRole::Worker, Some(&planner_token)).await
    else {
        panic!("a worker with a token was accepted")
    };
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(message.starts_with("workers have no token"), "{message}");
    // An enrolled worker is served, and listed under its enrolled name and key.
    let w = q.worker("enrolled").await;
    register(&w, "what-it-calls-itself").await;
    let obs = q.client(ClientRole::Observer).await;
    let Response::Workers { workers, .. } =
        obs.request(&Request::ListWorkers { after: None, limit: 10 }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0].capabilities.name, "enrolled");
}

/// I2: a key trusted at the queue for signing plans is not a worker; a worker key outside
/// its validity period is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i2_a_key_trusted_for_another_role_or_outside_its_period_is_refused() {
    let q = Agq::start(&[]);
    let credential = Credential::Key(q.signer.clone());
    let err =
        Client::connect(q.addr, q.fingerprint, ClientRole::Worker, &credential).await.unwrap_err();
    let (code, message) = remote(err);
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(message.ends_with("is trusted here, but not as a worker"), "{message}");

    let expired = q.enroll("expired");
    let trust_file = q.data().join("trust.json");
    let mut trust = Trust::from_json(&std::fs::read(&trust_file).unwrap()).unwrap();
    trust.set_period(&KeyId::of(&expired.verifying_key()), Some(1), Some(2)).unwrap();
    std::fs::write(&trust_file, trust.to_json()).unwrap();
    let credential = Credential::Key(expired);
    let err =
        Client::connect(q.addr, q.fingerprint, ClientRole::Worker, &credential).await.unwrap_err();
    let (code, message) = remote(err);
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(message.ends_with("(\"expired\") is outside its validity period"), "{message}");
    let (_, list, _) = agq(&q, &["worker", "list"]);
    assert!(list.contains("  EXPIRED   expired"), "{list}");
    let (_, json, _) = agq(&q, &["worker", "list", "--json"]);
    assert!(json.contains("\"valid_now\":false"), "{json}");
}

/// I3: an enrolled key revoked while its worker holds a lease: the worker's next request is
/// refused naming the key, and its connection closed; within the reaper's second the lease
/// is taken back without costing the job an attempt, so another worker runs it; the key
/// cannot connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i3_an_enrolled_key_is_refused_from_its_next_request_after_revocation() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"i3"], 3).await;
    let key = q.enroll("doomed");
    let id = KeyId::of(&key.verifying_key());
    let w = q.connect_worker(&key).await;
    register(&w, "doomed").await;
    let lease = claim(&w, 1, 1000).await[0].lease;
    assert_eq!(heartbeat(&w, &[lease]).await, (vec![lease], vec![], vec![]));

    let (ok, out, err) = agq(&q, &["worker", "revoke", &id.to_string()]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!("revoked worker key {id} (\"doomed\"): refused from its next request\n")
    );
    let (code, message) = refused(&w, &Request::Heartbeat { leases: vec![lease] }).await;
    assert_eq!(
        (code, message),
        (ErrorCode::Unauthenticated, format!("worker key {id} (\"doomed\") is revoked"))
    );
    let until = Instant::now() + Duration::from_secs(5);
    while !w.is_closed() {
        assert!(Instant::now() < until, "the revoked worker's connection stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let until = Instant::now() + Duration::from_secs(5);
    let rec = loop {
        let rec = job(&planner, jobs[0]).await;
        if matches!(rec.state, JobState::Queued { .. }) {
            break rec;
        }
        assert!(Instant::now() < until, "the revoked worker's lease was not taken back: {rec:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rec.attempts, 0, "the revoked worker's attempt counted: {rec:?}");
    let other = q.worker("other").await;
    register(&other, "other").await;
    let leases = claim(&other, 1, 1000).await;
    assert_eq!((leases[0].lease.job, leases[0].attempt), (jobs[0], 1));
    // Revocation is permanent: the key cannot connect again, nor be enrolled again.
    let credential = Credential::Key(key.clone());
    let err =
        Client::connect(q.addr, q.fingerprint, ClientRole::Worker, &credential).await.unwrap_err();
    assert_eq!(remote(err).1, format!("worker key {id} (\"doomed\") is revoked"));
    let pub_file = q.dir.path().join("doomed.pub");
    std::fs::write(
        &pub_file,
        agenix_proto::keys::verifying_key_to_pem(&key.verifying_key()).unwrap(),
    )
    .unwrap();
    let (ok, _, err) =
        agq(&q, &["worker", "enroll", pub_file.to_str().unwrap(), "--name", "again"]);
    assert!(!ok && err.contains("was revoked"), "{err}");
    let (_, list, _) = agq(&q, &["worker", "list"]);
    assert!(list.contains(&format!("{id}  REVOKED   doomed")), "{list}");
}

/// I4: a certificate over a key that is not ed25519 cannot authenticate a worker: the queue
/// names workers by ed25519 key ids only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i4_a_certificate_over_another_kind_of_key_authenticates_nobody() {
    let q = Agq::start(&[]);
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["w".to_string()]).unwrap().self_signed(&pair).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pair.serialize_der().into());
    let signer = agenix_link::provider().key_provider.load_private_key(key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signer);
    let mut tls = agenix_link::client_tls(q.fingerprint, None).unwrap();
    tls.client_auth_cert_resolver = std::sync::Arc::new(Offer(std::sync::Arc::new(certified)));
    let endpoint = raw::endpoint(HERE, raw::quic(tls));
    let connecting = endpoint.connect(q.addr, "agenix-queue").unwrap();
    // The queue asks for ed25519 signatures only, so the client can offer no certificate
    // and connects anonymously: as a worker, it is refused for presenting no key.
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting).await.unwrap().unwrap();
    let anonymous = raw::Raw { endpoint, conn };
    let Response::Error { code, message } = anonymous.hello(ClientRole::Worker, None).await else {
        panic!("a worker with a P-256 certificate was accepted")
    };
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(message.contains("this connection presented none"), "{message}");
}

/// Offers one certificate, whatever the server asks.
#[derive(Debug)]
struct Offer(std::sync::Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Offer {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// I5: enrolling is checked: a file that is no public key, a key already enrolled, a name
/// already used, labels past their bound; each is refused with the reason and the trust
/// file is left as it was. `agq token rotate worker` says workers have keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i5_bad_enrollments_are_refused_and_change_nothing() {
    let q = Agq::start(&[]);
    let trust_file = q.data().join("trust.json");
    let key = new_key();
    let pub_file = q.dir.path().join("w.pub");
    std::fs::write(
        &pub_file,
        agenix_proto::keys::verifying_key_to_pem(&key.verifying_key()).unwrap(),
    )
    .unwrap();
    let enroll = |name: &str, extra: &[&str]| {
        let mut args = vec!["worker", "enroll", pub_file.to_str().unwrap(), "--name", name];
        args.extend_from_slice(extra);
        agq(&q, &args)
    };
    let (ok, out, err) = enroll("w1", &["--labels", "ssd,gpu"]);
    assert!(ok, "{err}");
    let id = KeyId::of(&key.verifying_key());
    assert!(
        out.starts_with(&format!("enrolled worker key {id} as \"w1\" with labels gpu, ssd")),
        "{out}"
    );
    let before = std::fs::read(&trust_file).unwrap();
    let (ok, _, err) = enroll("w2", &[]);
    assert!(!ok && err.contains("is already trusted as \"w1\""), "{err}");
    let (ok, _, err) = agq(&q, &["worker", "enroll", "/dev/null", "--name", "w3"]);
    assert!(!ok && err.contains("cannot read /dev/null: not a regular file"), "{err}");
    let other = new_key();
    std::fs::write(
        &pub_file,
        agenix_proto::keys::verifying_key_to_pem(&other.verifying_key()).unwrap(),
    )
    .unwrap();
    let (ok, _, err) = enroll("w1", &[]);
    assert!(!ok && err.contains("the name \"w1\" is already used"), "{err}");
    let labels: Vec<String> = (0..=32).map(|i| format!("l{i}")).collect();
    let (ok, _, err) = enroll("w4", &["--labels", &labels.join(",")]);
    assert!(!ok && err.contains("33 labels, over the limit of 32"), "{err}");
    let (ok, _, err) = enroll("w4", &["--labels", &"x".repeat(65)]);
    assert!(!ok && err.contains("a label must be 1 to 64 bytes, not 65"), "{err}");
    assert_eq!(
        std::fs::read(&trust_file).unwrap(),
        before,
        "a refused enrollment changed the file"
    );
    // At the limits: 32 labels of 64 bytes.
    let labels: Vec<String> = (0..32).map(|i| format!("{i:064}")).collect();
    let (ok, _, err) = enroll("w4", &["--labels", &labels.join(",")]);
    assert!(ok, "{err}");
    let (_, list, _) = agq(&q, &["worker", "list", "--json"]);
    let rows: Vec<serde_json::Value> =
        list.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(rows[1]["labels"].as_array().unwrap().len(), 32);
    let signer = KeyId::of(&q.signer.verifying_key()).to_string();
    let (ok, _, err) = agq(&q, &["worker", "revoke", &signer]);
    assert!(!ok && err.contains("is a signer, not a worker"), "{err}");
    let (ok, _, err) = agq(&q, &["token", "rotate", "worker"]);
    assert!(!ok && err.contains("workers have no token"), "{err}");
    assert!(!q.data().join("worker.token").exists());
}

/// I6: a lease is bound to the key that claimed it: another worker, even one registering
/// with the holder's secret instance, cannot heartbeat, complete, fail or release it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i6_worker_a_cannot_complete_worker_b_s_lease() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"i6"], 3).await;
    let b = q.worker("b").await;
    let b_id = register_as(&b, "b", "shared secret").await;
    let held = claim(&b, 1, 1000).await.remove(0);
    let lease = held.lease;
    let a = q.worker("a").await;
    assert_ne!(register_as(&a, "a", "shared secret").await, b_id);
    let mine =
        (ErrorCode::Forbidden, format!("the lease of job {} is held by another worker", jobs[0]));
    assert_eq!(
        refused(&a, &Request::Complete { lease, output: no_output(), blobs: vec![], claim: 0 })
            .await,
        mine
    );
    let fail = Request::Fail { lease, reason: "x".into(), retryable: false };
    assert_eq!(refused(&a, &fail).await, mine);
    let release = Request::Release { lease, reason: "x".into() };
    assert_eq!(refused(&a, &release).await, mine);
    assert_eq!(heartbeat(&a, &[lease]).await, (vec![], vec![], vec![lease]));
    let rec = job(&planner, jobs[0]).await;
    assert!(matches!(&rec.state, JobState::Leased { worker, .. } if worker == "b"), "{rec:?}");
    // A signed by A about B's lease is refused too, as not A's lease.
    let forged = a.signed(&held, no_output()).await;
    let req = Request::Complete { lease, output: forged, blobs: vec![], claim: 0 };
    assert_eq!(refused(&a, &req).await, mine);
    let r = b.complete_signed(&held, no_output()).await;
    assert!(matches!(r, Response::Recorded { state: JobState::Succeeded, .. }), "{r:?}");
}

/// I7: a trust file broken for a while (a hand edit half done) refuses submissions, but the
/// enrolled workers are checked against its last valid reading: a running job's heartbeat
/// and result still land, so nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i7_a_broken_trust_file_loses_no_running_job() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"i7"], 1).await;
    let w = q.worker("w").await;
    register(&w, "w").await;
    let lease = claim(&w, 1, 1000).await.remove(0);
    let file = q.data().join("trust.json");
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, b"{ half an edit").unwrap();
    let (code, message) = refused(
        &planner,
        &submit_of(
            &planner,
            &q.plan(COMPONENT, &[]).0,
            &q.sign(&q.unsigned_action(agenix_proto::Digest::of(b"x"), &[], 1)),
        )
        .await,
    )
    .await;
    assert_eq!(code, ErrorCode::Unavailable, "{message}");
    assert_eq!(heartbeat(&w, &[lease.lease]).await, (vec![lease.lease], vec![], vec![]));
    assert_eq!(recorded(w.complete_signed(&lease, no_output()).await), JobState::Succeeded);
    assert_eq!(job(&planner, jobs[0]).await.attempts, 1);
    std::fs::write(&file, good).unwrap();
}

/// I8: an enrolled name of 64 characters but more bytes than a worker name may hold is
/// shown cut to 64 bytes, marked as cut; one of 64 bytes is shown whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i8_an_enrolled_name_past_the_worker_name_bound_is_shown_cut_and_marked() {
    let q = Agq::start(&[]);
    let whole = "n".repeat(agenix_proto::job::MAX_WORKER_NAME);
    let long = "é".repeat(64);
    let obs = q.client(ClientRole::Observer).await;
    for (name, shown) in
        [(whole.clone(), whole.clone()), (long.clone(), format!("{}…", "é".repeat(30)))]
    {
        let w = q.worker(&name).await;
        register(&w, "w").await;
        let Response::Workers { workers, .. } =
            obs.request(&Request::ListWorkers { after: None, limit: 10 }).await.unwrap()
        else {
            panic!()
        };
        let names: Vec<&str> = workers.iter().map(|w| w.capabilities.name.as_str()).collect();
        assert!(names.contains(&shown.as_str()), "{names:?}");
        assert!(shown.len() <= agenix_proto::job::MAX_WORKER_NAME);
    }
}
