//! agq on PostgreSQL: migrations, the connection's settings, one queue per database, a
//! database restart under a running queue, and TLS with the server's name checked. Real
//! PostgreSQL (Debian's), started per test by `agenix_harness::postgres`. The rest of the
//! queue's tests run on PostgreSQL too with `AGENIX_TEST_STORE=postgres`.

#![allow(clippy::unwrap_used, clippy::print_stderr, reason = "tests fail loudly")]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use agenix_harness::postgres::{self, Postgres};
use agenix_link::Client;
use agenix_proto::wire::{ClientRole, Request, Response};
use common::*;

fn agq() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agq"))
}

/// `agq ARGS` with the server's password file.
fn run(pg: &Postgres, args: &[&str]) -> Output {
    run_with(&pg.password_file().unwrap(), args)
}

/// `agq ARGS` with the password in `file`.
fn run_with(file: &std::path::Path, args: &[&str]) -> Output {
    Command::new(agq())
        .args(args)
        .env("AGQ_STORE_PASSWORD_FILE", file)
        .env_remove("AGQ_STORE_PASSWORD")
        .env_remove("AGQ_STORE")
        .output()
        .unwrap()
}

/// Runs `f` on a thread of its own, failing the test if it takes longer than `limit`.
fn tokio_free_timeout<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("it went on waiting")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A new queue directory (identity, tokens, trust) for `agq serve --store`.
fn queue_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("q");
    agenix_harness::init(&agq(), &data).unwrap();
    (dir, data)
}

/// `agq serve --store URL` on a free port, expected to fail: its error.
fn serve_fails(pg: &Postgres, url: &str, data: &std::path::Path) -> String {
    serve_fails_with(&pg.password_file().unwrap(), url, data)
}

fn serve_fails_with(pass: &std::path::Path, url: &str, data: &std::path::Path) -> String {
    let out = run_with(
        pass,
        &["serve", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--store", url],
    );
    assert!(!out.status.success(), "agq served: {}", text(&out));
    text(&out)
}

/// PG1: the schema is made by `agq migrate`, versioned, applied once however often and
/// however many at once run it; a queue refuses a database without it.
#[test]
fn pg1_migrations_are_versioned_and_run_once() {
    if !postgres::available("pg1_migrations_are_versioned_and_run_once") {
        return;
    }
    let pg = Postgres::start(false).unwrap();
    let (_dir, data) = queue_dir();
    let err = serve_fails(&pg, &pg.url(), &data);
    assert!(err.contains("no queue schema yet: run agq migrate"), "{err}");
    // Two at once: one applies, the other finds nothing to do.
    let url = pg.url();
    let both: Vec<Output> = std::thread::scope(|s| {
        let a = s.spawn(|| run(&pg, &["migrate", "--store", &url]));
        let b = s.spawn(|| run(&pg, &["migrate", "--store", &url]));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    for out in &both {
        assert!(out.status.success(), "{}", text(out));
    }
    for v in ["applied migration 1 (", "applied migration 2 (the serving lease)"] {
        let applied = both.iter().filter(|o| text(o).contains(v)).count();
        assert_eq!(applied, 1, "{v}: {:?}", both.iter().map(text).collect::<Vec<_>>());
    }
    let again = run(&pg, &["migrate", "--store", &url]);
    assert!(text(&again).contains("at version 2, nothing to do"), "{}", text(&again));
    // Over the Unix socket too.
    let again = run(&pg, &["migrate", "--store", &pg.socket_url()]);
    assert!(again.status.success() && text(&again).contains("nothing to do"), "{}", text(&again));
}

/// PG2: what cannot be right is refused before connecting, with the setting named; a wrong
/// password is refused by the server, and said so.
#[test]
fn pg2_bad_connection_settings_are_refused_by_name() {
    if !postgres::available("pg2_bad_connection_settings_are_refused_by_name") {
        return;
    }
    let pg = Postgres::start(false).unwrap();
    let port = pg.addr.port();
    let cases: &[(String, &str)] = &[
        (format!("postgres://agq:secret@127.0.0.1:{port}/postgres"), "holds a password"),
        (format!("postgres://agq@127.0.0.1:{port}/postgres?password=x"), "holds a password"),
        ("postgres://agq@db.example.net/q".into(), "certificate roots"),
        (
            "postgres://agq@db.example.net/q?sslmode=disable".into(),
            "sslmode=disable is for loopback",
        ),
        (
            format!("postgres://agq@127.0.0.1:{port}/postgres?sslmode=require"),
            "use sslmode=verify-full",
        ),
        (format!("postgres://agq@127.0.0.1:{port}/postgres?sslmode=maybe"), "is not a TLS mode"),
        ("mysql://agq@127.0.0.1/q".into(), "must be a postgres://"),
        (
            format!("postgres://agq@127.0.0.1:{port}/postgres?sslrootcert=/nonexistent"),
            "TLS is off",
        ),
    ];
    for (url, want) in cases {
        let out = run(&pg, &["migrate", "--store", url]);
        assert!(!out.status.success(), "{url} accepted");
        let err = text(&out);
        // The URL's secret never comes back in a message.
        assert!(!err.contains("secret"), "{err}");
        // A host off loopback needs TLS: with no roots configured the platform's are used,
        // and this machine may have none; either way it never goes in clear.
        if *want == "certificate roots" {
            assert!(!err.contains("schema"), "{url}: {err}");
            continue;
        }
        assert!(err.contains(want), "{url}: {err}");
    }
    // A wrong password: the server says so, and so does agq.
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not-the-password\n").unwrap();
    let out = Command::new(agq())
        .args(["migrate", "--store", &pg.url(), "--store-password-file"])
        .arg(wrong.path())
        .env_remove("AGQ_STORE_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("password authentication failed"), "{}", text(&out));
    assert!(!text(&out).contains("not-the-password"), "{}", text(&out));
    // A lease outside 1 s to 10 min is refused by name.
    for ms in ["999", "600001"] {
        let out = run(&pg, &["serve", "--store", &pg.url(), "--store-lease-ms", ms]);
        assert!(text(&out).contains("1000..=600000"), "{ms}: {}", text(&out));
    }
    // A standby waits out outages, not a refusal: it stops at once, saying why.
    run(&pg, &["migrate", "--store", &pg.url()]);
    let (_dir, data) = queue_dir();
    let data = data.to_str().unwrap().to_string();
    let (file, url) = (wrong.path().to_path_buf(), pg.url());
    let out = tokio_free_timeout(std::time::Duration::from_secs(30), move || {
        run_with(
            &file,
            &["serve", "--data", &data, "--store", &url, "--standby", "--listen", "127.0.0.1:0"],
        )
    });
    assert!(!out.status.success());
    assert!(text(&out).contains("password authentication failed"), "{}", text(&out));
    // So does one whose user may not read the queue's tables.
    sql(&pg, "CREATE ROLE reader LOGIN PASSWORD 'reader-password'");
    let reader_pass = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(reader_pass.path(), "reader-password\n").unwrap();
    let (file, url) = (
        reader_pass.path().to_path_buf(),
        format!("postgres://reader@127.0.0.1:{}/postgres", pg.addr.port()),
    );
    let (_dir, data) = queue_dir();
    let data = data.to_str().unwrap().to_string();
    let out = tokio_free_timeout(std::time::Duration::from_secs(30), move || {
        run_with(
            &file,
            &["serve", "--data", &data, "--store", &url, "--standby", "--listen", "127.0.0.1:0"],
        )
    });
    assert!(!out.status.success());
    assert!(text(&out).contains("permission denied"), "{}", text(&out));
    // Given twice, or an empty file: refused by name.
    let out = Command::new(agq())
        .args(["migrate", "--store", &pg.url(), "--store-password-file"])
        .arg(pg.password_file().unwrap())
        .env("AGQ_STORE_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(text(&out).contains("given twice"), "{}", text(&out));
    std::fs::write(wrong.path(), "").unwrap();
    let out = Command::new(agq())
        .args(["migrate", "--store", &pg.url(), "--store-password-file"])
        .arg(wrong.path())
        .output()
        .unwrap();
    assert!(text(&out).contains("is empty"), "{}", text(&out));
    std::fs::write(wrong.path(), "agenix-test-password\n").unwrap();
    std::fs::set_permissions(wrong.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .unwrap();
    let out = Command::new(agq())
        .args(["migrate", "--store", &pg.url(), "--store-password-file"])
        .arg(wrong.path())
        .env_remove("AGQ_STORE_PASSWORD")
        .output()
        .unwrap();
    assert!(text(&out).contains("is readable by every user"), "{}", text(&out));
    let out = Command::new(agq())
        .args(["migrate", "--store", &pg.url()])
        .env("AGQ_STORE_PASSWORD", "")
        .env_remove("AGQ_STORE_PASSWORD_FILE")
        .output()
        .unwrap();
    assert!(text(&out).contains("AGQ_STORE_PASSWORD is set but empty"), "{}", text(&out));
    // A FIFO for a password file is refused, not waited on.
    let fifo = tempfile::tempdir().unwrap();
    let fifo = fifo.path().join("pass");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = Command::new(agq())
        .args(["migrate", "--store", &pg.url(), "--store-password-file"])
        .arg(&fifo)
        .output()
        .unwrap();
    assert!(text(&out).contains("not a regular file"), "{}", text(&out));
}

/// PG3: one agq node serves a database at a time, holding a lease it renews. Another
/// queue's directory is refused; another node of the same queue, not standing by, sees the
/// lease renewed and is refused. A node whose connections the database cut renews on a new
/// one. A node whose place was taken writes nothing more and stops; the next node, on the
/// same host, takes the lease of the dead one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg3_one_queue_serves_a_database_at_a_time() {
    if !postgres::available("pg3_one_queue_serves_a_database_at_a_time") {
        return;
    }
    let mut q = Agq::start_on(&["--store-lease-ms", "2000"], true);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"one"], 3).await;
    let pg = q.postgres().unwrap();
    let (url, pass, conn) = (pg.url(), pg.password_file().unwrap(), superuser(pg));
    let (_dir, other) = queue_dir();
    let err = serve_fails_with(&pass, &url, &other);
    assert!(err.contains("this database holds the queue sha256:"), "{err}");
    // A directory the database refused is not tied to it.
    assert!(!other.join("store").exists());
    let err = serve_fails_with(&pass, &url, &q.data());
    assert!(err.contains("another agq is serving this database"), "{err}");
    assert!(err.contains("it renews its lease"), "{err}");
    assert!(err.contains("give --standby"), "{err}");
    // Nor in a pid namespace of its own (another container on this host), where the
    // holder's process id names nothing: the holder is not taken for dead.
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(agq())
        .args(["serve", "--listen", "127.0.0.1:0", "--data", q.data().to_str().unwrap()])
        .args(["--store", &url, "--store-lease-ms", "2000"])
        .env("AGQ_STORE_PASSWORD_FILE", &pass)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("it renews its lease"), "{}", text(&out));
    // Every connection of the queue's cut (a server's idle timeout, an operator): it
    // connects again and renews its lease; no other node took its place, so it serves on.
    run_sql(
        &conn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'agq' \
         AND pid <> pg_backend_pid()",
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(q.is_running(), "{}", q.log());
    assert_eq!(job(&planner, jobs[0]).await.id, jobs[0]);
    // A node whose place was taken is fenced: it stores nothing more, says why, and stops.
    run_sql(&conn, "UPDATE agq_serving SET generation = generation + 1");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while q.is_running() {
        assert!(std::time::Instant::now() < until, "a fenced queue runs on: {}", q.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = q.log();
    assert!(log.contains("another agq took over this database"), "{log}");
    assert!(log.contains("this queue stopped"), "{log}");
    let stored = q.stored().load().unwrap();
    assert_eq!(stored.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), jobs);
    // Its lease runs on at the database, but its process is gone: the next node on this
    // host takes it at once, and finds the job.
    let started = std::time::Instant::now();
    q.restart();
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "waited for the lease");
    let planner = q.client(ClientRole::Planner).await;
    assert_eq!(job(&planner, jobs[0]).await.id, jobs[0]);
}

/// Runs `statements` on a connection of its own (the sync client's runtime on a thread of
/// its own).
fn run_sql(conn: &str, statements: &str) {
    let (conn, statements) = (conn.to_string(), statements.to_string());
    std::thread::spawn(move || {
        let mut c = ::postgres::Client::connect(&conn, ::postgres::NoTls).unwrap();
        c.batch_execute(&statements).unwrap();
    })
    .join()
    .unwrap();
}

/// PG4: PostgreSQL killed and restarted under a running queue: requests during the outage
/// are refused as not stored, the queue goes on afterwards, and every acknowledged job is
/// there and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg4_a_database_restart_loses_no_acknowledged_job() {
    if !postgres::available("pg4_a_database_restart_loses_no_acknowledged_job") {
        return;
    }
    // A lease longer than the outage (the longest taken): the node keeps its clients and
    // answers them.
    let mut q = Agq::start_on(&["--store-lease-ms", "600000"], true);
    let planner = q.client(ClientRole::Planner).await;
    let w = q.worker("w").await;
    register(&w, "w").await;
    let mut acked = q.submit(&planner, &[b"a", b"b", b"c", b"d"], 3).await;
    for lease in claim(&w, 2, 1000).await {
        let out = w.signed(&lease, no_output()).await;
        assert!(matches!(
            w.request(&Request::Complete {
                lease: lease.lease,
                output: out,
                blobs: vec![],
                claim: 0
            })
            .await
            .unwrap(),
            Response::Recorded { .. }
        ));
    }
    planner.put_blob(b"during").await.unwrap();
    planner.put_blob(b"after").await.unwrap();
    let held = claim(&w, 2, 1000).await;
    assert_eq!(held.len(), 2);
    q.postgres().unwrap().kill();
    // A result reported while it is down is refused as unavailable, again and again: never
    // "already finished" from a completion that storage did not keep.
    for lease in &held {
        for _ in 0..2 {
            let out = w.signed(lease, no_output()).await;
            match w
                .request(&Request::Complete {
                    lease: lease.lease,
                    output: out,
                    blobs: vec![],
                    claim: 0,
                })
                .await
            {
                Err(e) => {
                    let (code, message) = remote(e);
                    assert_eq!(code, agenix_proto::wire::ErrorCode::Unavailable, "{message}");
                }
                Ok(other) => panic!("a result was answered {other:?} with no database"),
            }
        }
    }
    // While it is down, a submission is refused (never acknowledged and then lost).
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let (action, _) = q.action(digest, &[b"during"], 3);
    match planner.request(&submit_of(&planner, &plan, &action).await).await {
        Err(e) => assert_eq!(remote(e).0, agenix_proto::wire::ErrorCode::Unavailable),
        Ok(Response::Submitted { jobs, .. }) => panic!("acknowledged {jobs:?} with no database"),
        Ok(other) => panic!("{other:?}"),
    }
    q.postgres().unwrap().restart().unwrap();
    assert!(q.is_running(), "agq exited with its database: {}", q.log());
    // Afterwards it goes on: new work is stored, and every acknowledged job finishes.
    let mut more = Vec::new();
    for attempt in 0.. {
        let (plan, digest) = q.plan(COMPONENT, &[]);
        let (action, _) = q.action(digest, &[b"after"], 3);
        match planner.request(&submit_of(&planner, &plan, &action).await).await {
            Ok(Response::Submitted { jobs, .. }) => {
                more = jobs;
                break;
            }
            other => assert!(attempt < 50, "still refused after the restart: {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    acked.extend(more);
    // The results reported during the outage are taken now.
    for lease in &held {
        let out = w.signed(lease, no_output()).await;
        match w
            .request(&Request::Complete {
                lease: lease.lease,
                output: out,
                blobs: vec![],
                claim: 0,
            })
            .await
        {
            Ok(Response::Recorded { .. }) => {}
            other => panic!("a result held over the outage was answered {other:?}"),
        }
    }
    let mut done = 4;
    while done < acked.len() {
        for lease in claim(&w, 4, 1000).await {
            let out = w.signed(&lease, no_output()).await;
            if let Response::Recorded { .. } = w
                .request(&Request::Complete {
                    lease: lease.lease,
                    output: out,
                    blobs: vec![],
                    claim: 0,
                })
                .await
                .unwrap()
            {
                done += 1;
            }
        }
    }
    q.kill();
    let stored = q.stored().load().unwrap();
    // The refused submission left nothing behind: not stored, never run.
    assert_eq!(stored.jobs.len(), acked.len(), "{:?}", stored.jobs);
    let log = q.log();
    assert!(log.contains("storage is back"), "{log}");
    for id in &acked {
        let j = stored.jobs.iter().find(|j| j.id == *id).unwrap_or_else(|| panic!("job {id} lost"));
        assert_eq!(j.state.name(), "succeeded", "{j:?}");
    }
    // Served without --store, the queue is refused, not served from its empty embedded
    // store; so are the audit commands.
    let data = q.data();
    let bare = |args: &[&str]| {
        Command::new(agq())
            .args(args)
            .args(["--data", data.to_str().unwrap()])
            .env_remove("AGQ_STORE")
            .env_remove("AGQ_STORE_PASSWORD_FILE")
            .env_remove("AGQ_STORE_PASSWORD")
            .output()
            .unwrap()
    };
    let out = bare(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("this queue keeps its jobs in postgres://agq@127.0.0.1"),
        "{}",
        text(&out)
    );
    let out = bare(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("give --store"), "{}", text(&out));
    // Nor is it served from another database: it would start empty under the same
    // identity, beside the blobs of the jobs in the first.
    let pg = q.postgres().unwrap();
    let other = pg.url().replace("/postgres", "/template1");
    let err = serve_fails(pg, &other, &data);
    assert!(err.contains("this queue keeps its jobs in postgres://agq@127.0.0.1"), "{err}");
    assert!(err.contains("not in postgres://"), "{err}");
}

/// PG7: a queue that kept its jobs in its embedded store is not served from PostgreSQL
/// (its jobs and log would be left behind, and a second log begun under its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg7_a_queue_does_not_move_to_postgres_without_its_jobs() {
    if !postgres::available("pg7_a_queue_does_not_move_to_postgres_without_its_jobs") {
        return;
    }
    let mut q = Agq::start_on(&[], false);
    let planner = q.client(ClientRole::Planner).await;
    q.submit(&planner, &[b"kept here"], 3).await;
    q.kill();
    let pg = Postgres::start(false).unwrap();
    pg.migrate(&agq()).unwrap();
    let err = serve_fails(&pg, &pg.url(), &q.data());
    assert!(err.contains("a queue does not move to PostgreSQL"), "{err}");
    assert!(!q.data().join("store").exists());
}

/// PG5: off loopback the store is reached over TLS with the server's name checked against
/// its certificate (`sslmode=verify-full`); a server whose certificate another authority
/// signed is refused.
#[test]
fn pg5_tls_checks_the_servers_name_and_authority() {
    if !postgres::available("pg5_tls_checks_the_servers_name_and_authority") {
        return;
    }
    let root = authority("test root");
    let other = authority("another root");
    let server = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let issuer = rcgen::Issuer::from_params(&root.1, &root.0);
    let cert = params.signed_by(&server, &issuer).unwrap();
    let pg = Postgres::start_with(false, Some((&cert.pem(), &server.serialize_pem()))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&good, root.2.pem()).unwrap();
    std::fs::write(&bad, other.2.pem()).unwrap();
    let port = pg.addr.port();
    let url = |root: &std::path::Path, host: &str| {
        format!(
            "postgres://agq@{host}:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            root.display()
        )
    };
    let out = run(&pg, &["migrate", "--store", &url(&good, "localhost")]);
    assert!(out.status.success(), "{}", text(&out));
    // The server takes TLS only: in clear it refuses, so the success above was over TLS.
    let out =
        run(&pg, &["migrate", "--store", &format!("postgres://agq@127.0.0.1:{port}/postgres")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no encryption"), "{}", text(&out));
    // Another authority, or a name the certificate does not carry: refused.
    let out = run(&pg, &["migrate", "--store", &url(&bad, "localhost")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).to_lowercase().contains("certificate"), "{}", text(&out));
    let out = run(&pg, &["migrate", "--store", &url(&good, "127.0.0.1")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).to_lowercase().contains("certificate"), "{}", text(&out));
}

fn authority(name: &str) -> (rcgen::KeyPair, rcgen::CertificateParams, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (key, params, cert)
}

/// Runs `sql` against the queue's database, as an insider with its password would.
fn sql(pg: &Postgres, statements: &str) {
    run_sql(&superuser(pg), statements);
}

/// A connection string for `pg` as its owner (the role agq uses).
fn superuser(pg: &Postgres) -> String {
    let password = std::fs::read_to_string(pg.password_file().unwrap()).unwrap();
    format!(
        "host=127.0.0.1 port={} user=agq dbname=postgres password={}",
        pg.addr.port(),
        password.trim()
    )
}

/// PG6: the audit log in PostgreSQL: each job step recorded and proven in a signed
/// checkpoint, `agq audit verify|export|checkpoint --store` read it beside the queue, and
/// an entry edited in the database is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg6_the_audit_log_in_postgres_verifies_and_names_an_edit() {
    if !postgres::available("pg6_the_audit_log_in_postgres_verifies_and_names_an_edit") {
        return;
    }
    let mut q = Agq::start_on(&["--checkpoint-every", "100ms"], true);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"x", b"y"], 3).await;
    let w = q.worker("w").await;
    register(&w, "w").await;
    for lease in claim(&w, 2, 1000).await {
        let out = w.signed(&lease, no_output()).await;
        w.request(&Request::Complete { lease: lease.lease, output: out, blobs: vec![], claim: 0 })
            .await
            .unwrap();
    }
    let data = q.data();
    let pg = q.postgres().unwrap();
    let store = pg.url();
    let audit = |args: &[&str]| {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data", data.to_str().unwrap(), "--store", &store]);
        run(pg, &all)
    };
    let mut verified = String::new();
    for _ in 0..100 {
        let out = audit(&["verify"]);
        verified = text(&out);
        if out.status.success() && verified.contains("every entry is covered") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        verified.contains("audit log intact") && verified.contains("every entry is covered"),
        "{verified}"
    );
    let exported = audit(&["export"]);
    assert!(exported.status.success(), "{}", text(&exported));
    let entries: Vec<_> = String::from_utf8(exported.stdout)
        .unwrap()
        .lines()
        .map(|l| agenix_proto::audit::Entry::from_bytes(l.as_bytes()).unwrap())
        .collect();
    assert!(entries.len() >= 6, "{entries:?}");
    assert!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    let checkpoint = audit(&["checkpoint"]);
    assert!(text(&checkpoint).contains(&format!("\n{}\n", entries.len())), "{}", text(&checkpoint));
    // Each job's history is proven in the signed checkpoint, as on the embedded store.
    let obs = q.client(ClientRole::Observer).await;
    for job in &jobs {
        let (page, _) = obs.history(*job, None).await.unwrap();
        let checked = agenix_proto::audit::check_history(&q.fingerprint, *job, &page).unwrap();
        assert!(checked.len() >= 3, "{checked:?}");
    }
    // Read with another queue's directory, the checkpoint is refused, not passed on.
    let (_other_dir, other) = queue_dir();
    let pg = q.postgres().unwrap();
    let out =
        run(pg, &["audit", "checkpoint", "--data", other.to_str().unwrap(), "--store", &pg.url()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is not a checkpoint of this queue"), "{}", text(&out));
    // An insider edits one entry's time in the database: named.
    q.kill();
    let pg = q.postgres().unwrap();
    sql(
        pg,
        "UPDATE agq_audit SET entry = convert_to(replace(convert_from(entry, 'UTF8'), '\"at\":', '\"at\":1'), 'UTF8') WHERE seq = 2",
    );
    let out = run(pg, &["audit", "verify", "--data", data.to_str().unwrap(), "--store", &pg.url()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("entry 2 was edited"), "{}", text(&out));
    // An entry's stored hash deleted (the proofs through it would fail): named.
    sql(
        pg,
        "UPDATE agq_audit SET entry = convert_to(replace(convert_from(entry, 'UTF8'), '\"at\":1', '\"at\":'), 'UTF8') WHERE seq = 2",
    );
    let out = run(pg, &["audit", "verify", "--data", data.to_str().unwrap(), "--store", &pg.url()]);
    assert!(out.status.success(), "the edit was not undone: {}", text(&out));
    sql(
        pg,
        &format!("DELETE FROM agq_audit_hashes WHERE idx = {}", agenix_proto::audit::leaf_index(1)),
    );
    let out = run(pg, &["audit", "verify", "--data", data.to_str().unwrap(), "--store", &pg.url()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the stored tree does not match the entries at size 1"),
        "{}",
        text(&out)
    );
    // The log's recorded size made smaller than the log: the queue refuses to start.
    sql(pg, "UPDATE agq_meta SET value = value - 1 WHERE key = 'audit_size'");
    let err = serve_fails(pg, &pg.url(), &data);
    assert!(err.contains("the audit log in the database is inconsistent"), "{err}");
}

/// A second node of `q`'s queue, on the same directory and database, standing by on a
/// free loopback port (`--standby` and `args`), logging to `log` in `dir`.
fn standby(q: &mut Agq, dir: &std::path::Path, args: &[&str]) -> agenix_harness::Agq {
    let pg = q.postgres().unwrap();
    let store = (pg.url(), pg.password_file().unwrap());
    let mut serve = agenix_harness::Serve::new(agq(), q.data(), dir.join("standby.log"));
    serve.postgres = false;
    serve.store = Some(store);
    serve.ready = Some(dir.join("standby.ready"));
    serve.log_level = "info".into();
    serve.args = ["--standby"].iter().chain(args).map(|s| s.to_string()).collect();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    agenix_harness::Agq::launch(serve, ([127, 0, 0, 1], port).into()).unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < until, "{what}: {}", log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// PG8: a standby node waits without listening; when the node serving freezes (SIGSTOP: its
/// connections stay open, it renews nothing), the standby takes over once the lease runs
/// out. A worker's lease from the first node is heartbeat and completed on the second. The
/// frozen node, resumed, writes nothing more and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg8_a_standby_takes_over_from_a_frozen_node_which_then_writes_nothing() {
    if !postgres::available("pg8_a_standby_takes_over_from_a_frozen_node_which_then_writes_nothing")
    {
        return;
    }
    let mut q = Agq::start_on(&["--store-lease-ms", "2000"], true);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"a", b"b"], 3).await;
    let key = q.enroll("w");
    let w = q.connect_worker(&key).await;
    register_as(&w, "w", "instance-1").await;
    let held = claim(&w, 1, 1000).await;
    assert_eq!(held.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    let mut b = standby(&mut q, dir.path(), &["--store-lease-ms", "2000"]);
    let log = || std::fs::read_to_string(dir.path().join("standby.log")).unwrap_or_default();
    wait_for("the standby never said it stands by", || log().contains("stands by"), log);
    // It waits without listening.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(b.is_running(), "{}", log());
    assert!(!dir.path().join("standby.ready").exists());
    let first = q.addr;
    q.addr = b.addr;
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        Client::connect(
            b.addr,
            q.fingerprint,
            ClientRole::Planner,
            &q.credential(ClientRole::Planner),
        ),
    )
    .await;
    assert!(!matches!(refused, Ok(Ok(_))), "a standby answered");
    // The node serving freezes.
    let pid = nix::unistd::Pid::from_raw(q.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    b.wait_serving().unwrap();
    assert!(log().contains("taking over"), "{}", log());
    // The worker reconnects there, as the same worker, and its lease holds.
    let w2 = q.connect_worker(&key).await;
    register_as(&w2, "w", "instance-1").await;
    let (extended, ..) = heartbeat(&w2, &[held[0].lease]).await;
    assert_eq!(extended, vec![held[0].lease]);
    let out = w2.signed(&held[0], no_output()).await;
    let done = w2
        .request(&Request::Complete { lease: held[0].lease, output: out, blobs: vec![], claim: 0 })
        .await;
    assert_eq!(recorded(done.unwrap()).name(), "succeeded");
    let planner_b = q.client(ClientRole::Planner).await;
    let cancelled = jobs.iter().find(|j| **j != held[0].lease.job).copied().unwrap();
    let r = planner_b.request(&Request::Cancel { job: cancelled }).await.unwrap();
    assert!(matches!(r, Response::Cancel { .. }), "{r:?}");
    // The frozen node resumes: it finds its place taken, writes nothing, and stops.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    q.addr = first;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while q.is_running() {
        // Whatever it is asked meanwhile is not stored.
        if let Ok(c) = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            Client::connect(
                first,
                q.fingerprint,
                ClientRole::Planner,
                &q.credential(ClientRole::Planner),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(agenix_link::LinkError::Connection("timed out".into())))
        {
            let r = c.request(&Request::Cancel { job: held[0].lease.job }).await;
            assert!(!matches!(r, Ok(Response::Cancel { .. })), "a fenced node cancelled: {r:?}");
        }
        assert!(std::time::Instant::now() < until, "a fenced node runs on: {}", q.log());
    }
    assert!(q.log().contains("another agq took over this database"), "{}", q.log());
    let stored = q.stored().load().unwrap();
    let state = |id| stored.jobs.iter().find(|j| j.id == id).unwrap().state.name();
    assert_eq!(state(held[0].lease.job), "succeeded");
    assert_eq!(state(cancelled), "cancelled");
    assert!(b.is_running(), "{}", log());
}

/// PG9 (with the shortest lease taken, 1 s): a node that cannot renew its lease (its database unreachable for longer) closes
/// its connections and answers no one, so that clients go to another node; once it renews
/// again (no other node took over), it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg9_a_node_cut_off_from_its_database_lets_its_clients_go() {
    if !postgres::available("pg9_a_node_cut_off_from_its_database_lets_its_clients_go") {
        return;
    }
    let mut q = Agq::start_on(&["--store-lease-ms", "1000"], true);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"a"], 3).await;
    q.postgres().unwrap().kill();
    wait_for("the connection was kept", || planner.is_closed(), || q.log());
    assert!(q.log().contains("closes its connections"), "{}", q.log());
    let again = Client::connect(
        q.addr,
        q.fingerprint,
        ClientRole::Planner,
        &q.credential(ClientRole::Planner),
    )
    .await;
    assert!(again.is_err(), "a lapsed node took a connection");
    q.postgres().unwrap().restart().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let planner = loop {
        match Client::connect(
            q.addr,
            q.fingerprint,
            ClientRole::Planner,
            &q.credential(ClientRole::Planner),
        )
        .await
        {
            Ok(c) => break c,
            Err(e) => assert!(std::time::Instant::now() < until, "{e}: {}", q.log()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(job(&planner, jobs[0]).await.id, jobs[0]);
    assert!(q.log().contains("holds its storage again"), "{}", q.log());
    assert!(q.is_running());
}

/// PG11: the node serving is frozen (SIGSTOP) in the middle of a batch, so its session sits
/// idle inside a transaction holding the serving row. The standby still takes over (the
/// server ends the frozen session after a lease), and the frozen node, resumed, stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg11_a_node_frozen_inside_a_batch_does_not_keep_its_standby_out() {
    if !postgres::available("pg11_a_node_frozen_inside_a_batch_does_not_keep_its_standby_out") {
        return;
    }
    let mut q = Agq::start_on(&["--store-lease-ms", "2000"], true);
    let dir = tempfile::tempdir().unwrap();
    let mut b = standby(&mut q, dir.path(), &["--store-lease-ms", "2000"]);
    let log = || std::fs::read_to_string(dir.path().join("standby.log")).unwrap_or_default();
    wait_for("the standby never said it stands by", || log().contains("stands by"), log);
    // Batches, one after another (their blobs first: a submission naming a missing blob is
    // refused before it reaches storage).
    let planner = q.client(ClientRole::Planner).await;
    planner.put_blob(COMPONENT).await.unwrap();
    planner.put_blob(b"x").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let (plan, digest) = q.plan(COMPONENT, &[]);
        let actions: Vec<_> = (0..2000).map(|_| q.action(digest, &[b"x"], 3).0).collect();
        tokio::spawn(async move {
            for action in actions {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let _ = planner.request(&submit_of(&planner, &plan, &action).await).await;
            }
        })
    };
    let conn = superuser(q.postgres().unwrap());
    let pid = nix::unistd::Pid::from_raw(q.pid() as i32);
    // Caught inside a batch, deterministically: a lock on the jobs table stops the next batch
    // in its transaction (the serving row already held); the node is frozen there; the lock
    // is let go, the statement finishes, and the frozen node sends nothing more.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let conn = conn.clone();
        std::thread::spawn(move || {
            let mut c = ::postgres::Client::connect(&conn, ::postgres::NoTls).unwrap();
            let mut tx = c.transaction().unwrap();
            tx.batch_execute("LOCK TABLE agq_jobs IN ACCESS EXCLUSIVE MODE").unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
            tx.commit().unwrap();
        })
    };
    locked_rx.recv().unwrap();
    let agq_log = || q.log();
    wait_for(
        "no batch waited on the lock",
        || {
            query_count(
                &conn,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'agq' \
                 AND wait_event_type = 'Lock' AND query LIKE '%agq_jobs%'",
            ) > 0
        },
        agq_log,
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    wait_for(
        "the frozen node's session never sat idle inside its transaction",
        || {
            query_count(
                &conn,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'agq' \
                 AND state = 'idle in transaction'",
            ) > 0
        },
        agq_log,
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    b.wait_serving().unwrap();
    assert!(log().contains("taking over"), "{}", log());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while q.is_running() {
        assert!(std::time::Instant::now() < until, "a fenced node runs on: {}", q.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    load.abort();
    assert!(b.is_running(), "{}", log());
}

/// PG12: a node that takes the database over and then cannot start (its address is taken)
/// says which address, and lets the lease go at once rather than after a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg12_a_node_that_cannot_start_lets_the_lease_go() {
    if !postgres::available("pg12_a_node_that_cannot_start_lets_the_lease_go") {
        return;
    }
    let mut q = Agq::start_on(&["--store-lease-ms", "60000"], true);
    let pg = q.postgres().unwrap();
    let (url, pass) = (pg.url(), pg.password_file().unwrap());
    let conn = superuser(pg);
    q.kill();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    // Restarted on this host: it takes over from its dead self at once, then cannot listen.
    let out = run_with(
        &pass,
        &["serve", "--data", q.data().to_str().unwrap(), "--store", &url, "--listen", &at],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains(&format!("cannot listen on {at}")), "{}", text(&out));
    let released = query_count(&conn, "SELECT count(*) FROM agq_serving WHERE until = '-infinity'");
    assert_eq!(released, 1, "the lease was kept");
}

/// The count `sql` returns, on a connection of its own.
fn query_count(conn: &str, sql: &str) -> i64 {
    let (conn, sql) = (conn.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let mut c = ::postgres::Client::connect(&conn, ::postgres::NoTls).unwrap();
        c.query_one(sql.as_str(), &[]).unwrap().get(0)
    })
    .join()
    .unwrap()
}
