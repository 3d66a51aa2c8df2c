//! The audit log (docs/test-matrix.md rows A1–A8) against a real agq on loopback: every
//! step of a job and every trust-file change is recorded, `history` proves a job's entries
//! in a checkpoint the queue signed, and `agq audit verify` names the first entry edited,
//! deleted, swapped or truncated away in the real redb file.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agenix_proto::KeyId;
use agenix_proto::audit::{self, Entry, Event, Step};
use agenix_proto::job::{JobId, StateKind};
use agenix_proto::wire::{ClientRole, Request, Response};
use common::*;
use redb::{ReadableTable, TableDefinition};

const AUDIT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("audit");
const HASHES: TableDefinition<'_, u64, [u8; 32]> = TableDefinition::new("audit_hashes");

fn agq() -> &'static str {
    env!("CARGO_BIN_EXE_agq")
}

/// `agq audit ARGS --data DIR`: exit status, stdout, stderr.
fn audit_cmd(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(agq()).arg("audit").args(args).arg("--data").arg(data).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Every entry, as `agq audit export` writes it.
fn exported(data: &Path) -> Vec<Entry> {
    let (ok, out, err) = audit_cmd(data, &["export"]);
    assert!(ok, "{err}");
    out.lines().map(|l| Entry::from_bytes(l.as_bytes()).unwrap()).collect()
}

/// Waits until a signed checkpoint covers the whole log.
fn wait_signed(data: &Path) -> u64 {
    for _ in 0..100 {
        let (ok, out, _) = audit_cmd(data, &["verify"]);
        if ok && out.contains("every entry is covered") {
            return exported(data).len() as u64;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no checkpoint covered the log: {:?}", audit_cmd(data, &["verify"]));
}

/// One job run to success by an enrolled worker; returns the job, the worker's key id and
/// the digest of its signed result.
async fn one_job(q: &Agq) -> (JobId, KeyId, agenix_proto::Digest) {
    let planner = q.client(ClientRole::Planner).await;
    let job = q.submit(&planner, &[b"audited"], 3).await[0];
    let w = q.worker("w").await;
    register(&w, "w").await;
    let lease = claim(&w, 1, 1000).await.remove(0);
    let output = w.signed(&lease, no_output()).await;
    let result = output.result.clone().unwrap().digest;
    match w
        .request(&Request::Complete { lease: lease.lease, output, blobs: vec![], claim: 0 })
        .await
        .unwrap()
    {
        Response::Recorded { .. } => {}
        other => panic!("{other:?}"),
    }
    (job, KeyId::of(&w.key.verifying_key()), result)
}

/// A1: a job's steps are in the log, and `history` proves each in the queue's signed
/// checkpoint; the log verifies while the queue runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_a_jobs_steps_are_recorded_and_proven_in_a_signed_checkpoint() {
    let q = Agq::start(&["--checkpoint-every", "100ms"]);
    let (job, worker, result) = one_job(&q).await;
    wait_signed(&q.data());
    let obs = q.client(ClientRole::Observer).await;
    let (page, next) = obs.history(job, None).await.unwrap();
    assert_eq!(next, None);
    let checked = audit::check_history(&q.fingerprint, job, &page).unwrap();
    let steps: Vec<(Step, StateKind)> = checked
        .iter()
        .map(|c| match &c.entry.event {
            Event::Job(e) => (e.step, e.state),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        steps,
        [
            (Step::Submitted, StateKind::Queued),
            (Step::Leased, StateKind::Leased),
            (Step::Completed, StateKind::Succeeded)
        ]
    );
    assert!(checked.iter().all(|c| c.proven_in.is_some()), "{checked:?}");
    let Event::Job(done) = &checked[2].entry.event else { unreachable!() };
    assert_eq!((done.worker, done.result), (Some(worker), Some(result)));
    // A proof altered, or an entry of another job, does not check.
    let mut forged = page.clone();
    forged.entries[1].proof[0] = agenix_proto::Digest::of(b"x");
    assert!(audit::check_history(&q.fingerprint, job, &forged).is_err());
    assert!(audit::check_history(&q.fingerprint, JobId(job.0 + 1), &page).is_err());
    let (ok, out, err) = audit_cmd(&q.data(), &["verify"]);
    assert!(ok && out.contains("audit log intact"), "{out}{err}");
    // A worker may not read the log; a job never seen is named.
    let w = q.worker("w2").await;
    assert!(w.history(job, None).await.is_err());
    let e = obs.history(JobId(999_999), None).await.unwrap_err().to_string();
    assert!(e.contains("no entry for job 999999"), "{e}");
}

/// A2: enrollment, revocation and every trust-file change are recorded, key by key;
/// `export --since` keeps only the later entries; no failure reason (free text a worker
/// chose) is ever written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2_trust_changes_are_recorded_and_entries_hold_no_free_text() {
    let q = Agq::start(&["--checkpoint-every", "100ms"]);
    let planner = q.client(ClientRole::Planner).await;
    let job = q.submit(&planner, &[b"fails"], 3).await[0];
    let w = q.worker("w").await;
    register(&w, "w").await;
    let lease = claim(&w, 1, 1000).await.remove(0);
    let reason = "cannot reach s3://secret-bucket/token=hunter2".to_string();
    w.request(&Request::Fail { lease: lease.lease, reason: reason.clone(), retryable: true })
        .await
        .unwrap();
    let before_revoke = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    q.revoke(&w.key);
    let key = KeyId::of(&w.key.verifying_key());
    let mut kinds = Vec::new();
    for _ in 0..100 {
        kinds = exported(&q.data())
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Key(k) if k.key == key => Some(k.change),
                _ => None,
            })
            .collect();
        if kinds.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    use agenix_proto::audit::KeyChange;
    assert_eq!(kinds, [KeyChange::Added, KeyChange::Revoked]);
    let (ok, text, _) = audit_cmd(&q.data(), &["export"]);
    assert!(ok);
    assert!(!text.contains("hunter2") && !text.contains("secret-bucket"), "{text}");
    let failed = exported(&q.data())
        .into_iter()
        .find_map(|e| match e.event {
            Event::Job(j) if j.job == job && j.step == Step::Failed => Some(j),
            _ => None,
        })
        .unwrap();
    assert_eq!(failed.reason, Some(agenix_proto::Digest::of(reason.as_bytes())));
    // Since a time: only what was recorded after it.
    let since = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(before_revoke),
    )
    .to_string();
    let (ok, later, err) = audit_cmd(&q.data(), &["export", "--since", &since]);
    assert!(ok, "{err}");
    let later: Vec<Entry> =
        later.lines().map(|l| Entry::from_bytes(l.as_bytes()).unwrap()).collect();
    assert!(!later.is_empty() && later.iter().all(|e| e.at >= before_revoke), "{later:?}");
    assert!(later.len() < exported(&q.data()).len());
    let (ok, _, err) = audit_cmd(&q.data(), &["export", "--since", "yesterday-ish"]);
    assert!(!ok && err.contains("give a time"), "{err}");
}

/// Runs a job, waits for a checkpoint covering the log, stops agq, lets `tamper` edit the
/// redb file, and returns what `agq audit verify` says.
async fn tampered(tamper: impl FnOnce(&redb::WriteTransaction, u64)) -> String {
    let mut q = Agq::start(&["--checkpoint-every", "100ms"]);
    one_job(&q).await;
    let size = wait_signed(&q.data());
    assert!(size >= 4, "{size}");
    q.kill();
    edit_store(&q.data(), |tx| tamper(tx, size));
    let (ok, out, err) = audit_cmd(&q.data(), &["verify"]);
    assert!(!ok, "a tampered log verified: {out}");
    err
}

/// Edits the stopped queue's redb file in one transaction, as an insider would.
fn edit_store(data: &Path, edit: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::builder()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .create(data.join("queue.redb"))
        .unwrap();
    let tx = db.begin_write().unwrap();
    edit(&tx);
    tx.commit().unwrap();
}

fn entry(tx: &redb::WriteTransaction, seq: u64) -> Vec<u8> {
    tx.open_table(AUDIT).unwrap().get(seq).unwrap().unwrap().value().to_vec()
}

fn put(tx: &redb::WriteTransaction, seq: u64, bytes: &[u8]) {
    tx.open_table(AUDIT).unwrap().insert(seq, bytes).unwrap();
}

/// A3: one entry edited (a job's step rewritten) is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_an_edited_entry_is_named() {
    let err = tampered(|tx, size| {
        let seq = size - 2;
        let text = String::from_utf8(entry(tx, seq)).unwrap();
        let edited = text.replacen(r#""at":"#, r#""at":1"#, 1);
        assert_ne!(edited, text);
        put(tx, seq, edited.as_bytes());
    })
    .await;
    assert!(err.contains("audit log broken: entry") && err.contains("was edited"), "{err}");
    // Which entry: the one changed.
    let n: u64 = err.split("entry ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(err.contains(&format!("entry {n} was edited")), "{err}");
}

/// A3 again, done with care: the attacker also rewrites the stored hashes and every later
/// link, but cannot sign: the checkpoint no longer matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_an_edit_with_every_hash_recomputed_breaks_the_signed_checkpoint() {
    let err = tampered(|tx, size| {
        let mut prev = audit::genesis();
        let mut table = tx.open_table(HASHES).unwrap();
        table.retain(|_, _| false).unwrap();
        struct T<'a>(&'a redb::Table<'a, u64, [u8; 32]>);
        impl audit::Hashes for T<'_> {
            fn stored(&self, i: u64) -> Result<Option<agenix_proto::Digest>, String> {
                Ok(self.0.get(i).unwrap().map(|v| agenix_proto::Digest::from_bytes(v.value())))
            }
        }
        for seq in 0..size {
            let mut e = Entry::from_bytes(&entry(tx, seq)).unwrap();
            if seq == 1 {
                e.at += 1;
            }
            e.prev = prev;
            let bytes = e.to_bytes();
            for (i, h) in audit::append(seq, &bytes, &T(&table)).unwrap() {
                table.insert(i, h.as_bytes()).unwrap();
            }
            prev = audit::leaf_hash(&bytes);
            put(tx, seq, &bytes);
        }
    })
    .await;
    assert!(err.contains("do not match the checkpoint signed for them"), "{err}");
}

/// A4: one entry deleted is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_a_deleted_entry_is_named() {
    let err = tampered(|tx, _| {
        tx.open_table(AUDIT).unwrap().remove(1).unwrap();
    })
    .await;
    assert!(err.contains("entry 1 is missing"), "{err}");
}

/// A5: two entries swapped are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a5_two_swapped_entries_are_named() {
    let err = tampered(|tx, _| {
        let (one, two) = (entry(tx, 1), entry(tx, 2));
        put(tx, 1, &two);
        put(tx, 2, &one);
    })
    .await;
    assert!(err.contains("entry 1 holds entry 2: entries were reordered"), "{err}");
    // An entry whose number was changed is edited, not moved.
    let err = tampered(|tx, _| {
        let text = String::from_utf8(entry(tx, 1)).unwrap();
        put(tx, 1, text.replacen(r#""seq":1"#, r#""seq":2"#, 1).as_bytes());
    })
    .await;
    assert!(err.contains("entry 1 was edited: it carries the number 2"), "{err}");
}

/// A6: the log truncated before the last checkpoint is named, with what is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a6_a_log_truncated_before_its_last_checkpoint_is_named() {
    let err = tampered(|tx, size| {
        let mut t = tx.open_table(AUDIT).unwrap();
        t.remove(size - 1).unwrap();
        t.remove(size - 2).unwrap();
    })
    .await;
    assert!(err.contains("were removed") && err.contains("covers"), "{err}");
}

/// A7: a checkpoint kept elsewhere catches a log rewritten from its start by someone who
/// holds the queue's key; a forged saved checkpoint is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a7_a_saved_checkpoint_must_still_be_in_the_log() {
    let mut q = Agq::start(&["--checkpoint-every", "100ms"]);
    one_job(&q).await;
    wait_signed(&q.data());
    let (ok, note, err) = audit_cmd(&q.data(), &["checkpoint"]);
    assert!(ok && note.starts_with("agenix-queue/"), "{err}");
    let saved = q.dir.path().join("saved.checkpoint");
    std::fs::write(&saved, &note).unwrap();
    let saved_arg = saved.to_str().unwrap();
    let (ok, out, err) = audit_cmd(&q.data(), &["verify", "--checkpoint", saved_arg]);
    assert!(ok, "{out}{err}");
    // The same checkpoint without its last newline, or with carriage returns, still is.
    let mangled = q.dir.path().join("mangled.checkpoint");
    std::fs::write(&mangled, note.trim_end().replace('\n', "\r\n")).unwrap();
    let (ok, out, err) =
        audit_cmd(&q.data(), &["verify", "--checkpoint", mangled.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    // Another log's checkpoint, or a forged one, is refused.
    let forged = q.dir.path().join("forged.checkpoint");
    std::fs::write(&forged, note.replacen('\n', "\n1", 1)).unwrap();
    let (ok, _, err) = audit_cmd(&q.data(), &["verify", "--checkpoint", forged.to_str().unwrap()]);
    assert!(!ok && err.contains("forged.checkpoint: is not a checkpoint of this queue"), "{err}");
    assert!(!err.contains("audit log broken"), "a bad file is not a broken log: {err}");
    // The whole log and its checkpoints replaced (what a holder of the key could do).
    q.kill();
    edit_store(&q.data(), |tx| {
        tx.open_table(AUDIT).unwrap().retain(|_, _| false).unwrap();
        tx.open_table(HASHES).unwrap().retain(|_, _| false).unwrap();
        let cps: TableDefinition<'_, u64, &str> = TableDefinition::new("checkpoints");
        tx.open_table(cps).unwrap().retain(|_, _| false).unwrap();
    });
    let (ok, _, err) = audit_cmd(&q.data(), &["verify"]);
    assert!(ok, "an empty log with no checkpoint is consistent by itself: {err}");
    let (ok, _, err) = audit_cmd(&q.data(), &["verify", "--checkpoint", saved_arg]);
    assert!(!ok && err.contains("were removed"), "{err}");
}

/// A8: `agq audit` on a directory with no store, or a checkpoint that is a FIFO, says so.
#[test]
fn a8_audit_commands_refuse_what_is_not_a_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = audit_cmd(dir.path(), &["verify"]);
    assert!(!ok && err.contains("no queue store"), "{err}");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (ok, _, err) = audit_cmd(dir.path(), &["verify", "--checkpoint", fifo.to_str().unwrap()]);
    assert!(!ok && err.contains("not a regular file"), "{err}");
    // A checkpoint file is read up to MAX_CHECKPOINT_BYTES, and refused one byte past it.
    let max = audit::MAX_CHECKPOINT_BYTES;
    for (len, said) in [(max, "is not text"), (max + 1, "over the limit of 4096 bytes")] {
        let big = dir.path().join(format!("big{len}"));
        std::fs::write(&big, vec![0xff; len]).unwrap();
        let (ok, _, err) =
            audit_cmd(dir.path(), &["verify", "--checkpoint", big.to_str().unwrap()]);
        assert!(!ok && err.contains(said), "{len} bytes: {err}");
    }
    // The checkpoint interval: 100ms is the least (the other tests serve with it); below it,
    // or without a unit, agq refuses to start rather than raise it.
    for bad in ["99ms", "10"] {
        let out = Command::new(agq())
            .args(["serve", "--data"])
            .arg(dir.path())
            .args(["--checkpoint-every", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--checkpoint-every"), "{err}");
    }
}

/// A9: the store of a queue killed mid-run needs recovery; `agq audit verify` makes it (as
/// `agq serve` would), says so, and finds the log intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a9_the_log_of_a_killed_queue_is_recovered_and_verified() {
    let mut q = Agq::start(&["--checkpoint-every", "100ms"]);
    one_job(&q).await;
    wait_signed(&q.data());
    q.kill();
    let (ok, out, err) = audit_cmd(&q.data(), &["verify"]);
    assert!(ok && out.contains("audit log intact"), "{out}{err}");
    assert!(err.contains("recovered it first"), "{err}");
    let (ok, out, err) = audit_cmd(&q.data(), &["verify"]);
    assert!(ok && !err.contains("recovered"), "{out}{err}");
    q.restart();
    let (ok, out, err) = audit_cmd(&q.data(), &["verify"]);
    assert!(ok, "{out}{err}");
}

/// A10: a trust-file change takes effect only once it is in the log: a signer added and
/// used at once has its `added` entry before the submission it signed, which names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a10_a_trust_change_is_recorded_before_it_takes_effect() {
    use agenix_proto::envelope::{sign_action, sign_plan};
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    planner.put_blob(COMPONENT).await.unwrap();
    planner.put_blob(b"fresh").await.unwrap();
    let fresh = agenix_proto::keys::signing_key_from_seed(&rand16x2());
    let path = q.data().join("trust.json");
    let mut trust = agenix_proto::Trust::from_json(&std::fs::read(&path).unwrap()).unwrap();
    trust.add("fresh", fresh.verifying_key(), &agenix_proto::Role::SIGNING).unwrap();
    std::fs::write(&path, trust.to_json()).unwrap();
    // At once: well before the reaper's next look at the file.
    let plan = plan_value(COMPONENT, &[]);
    let plan_env = sign_plan(&plan, &fresh).unwrap();
    let action = q.unsigned_action(agenix_proto::Digest::of(&plan.to_payload()), &[b"fresh"], 3);
    let action_env = sign_action(&action, &fresh).unwrap();
    let job = match planner.request(&submit_of(&planner, &plan_env, &action_env).await).await {
        Ok(Response::Submitted { jobs, .. }) => jobs[0],
        other => panic!("{other:?}"),
    };
    let entries = exported(&q.data());
    let key = KeyId::of(&fresh.verifying_key());
    let added = entries.iter().position(|e| {
        matches!(&e.event, Event::Key(k) if k.key == key && k.change == audit::KeyChange::Added)
    });
    let submitted = entries.iter().position(
        |e| matches!(&e.event, Event::Job(j) if j.job == job && j.step == Step::Submitted),
    );
    let (Some(added), Some(submitted)) = (added, submitted) else { panic!("{entries:?}") };
    assert!(added < submitted, "the key was recorded after it was used: {entries:?}");
    let Event::Job(sub) = &entries[submitted].event else { unreachable!() };
    assert_eq!(sub.signer, Some(key), "the submission names the key that signed it");
}

/// A11: a queue directory whose store is missing, empty or another queue's is refused at
/// start, never served anew; an interval too large to add to the clock keeps the reaper
/// alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a11_a_missing_empty_or_foreign_store_is_refused_at_start() {
    let mut q = Agq::start(&["--checkpoint-every", "100ms"]);
    one_job(&q).await;
    wait_signed(&q.data());
    q.kill();
    let mut other = Agq::start(&["--checkpoint-every", "100ms"]);
    one_job(&other).await;
    wait_signed(&other.data());
    other.kill();
    let store = q.data().join("queue.redb");
    let serve = |data: &Path| {
        let out = Command::new(agq())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let kept = std::fs::read(&store).unwrap();
    std::fs::write(&store, b"").unwrap();
    let err = serve(&q.data());
    assert!(err.contains("is missing or empty"), "{err}");
    std::fs::remove_file(&store).unwrap();
    let err = serve(&q.data());
    assert!(err.contains("is missing or empty"), "{err}");
    std::fs::copy(other.data().join("queue.redb"), &store).unwrap();
    let err = serve(&q.data());
    assert!(err.contains("was not signed by this queue"), "{err}");
    std::fs::write(&store, &kept).unwrap();
    q.restart();
    let err = serve(&q.data());
    assert!(err.contains("is another agq serving this directory?"), "{err}");
    let (ok, out, err) = audit_cmd(&q.data(), &["verify"]);
    assert!(ok, "{out}{err}");
    // The largest interval humantime reads: the reaper goes on (no overflow).
    let mut huge = Agq::start(&["--checkpoint-every", "584542046090years"]);
    one_job(&huge).await;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(huge.is_running());
    assert!(!huge.log().contains("panicked"), "{}", huge.log());
}
