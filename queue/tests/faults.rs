//! Queue and worker faults (docs/test-matrix.md rows Q1–Q11) against a real agq on loopback;
//! test clients play the planners and the workers.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "a test fails loudly on any unexpected error; the crash tests report what they hit"
)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agenix_proto::job::{JobId, JobOutput, JobState, LeaseEpoch, LeaseRef};
use agenix_proto::wire::{ClientRole, ErrorCode, JobFilter, Request, Response};
use agenix_proto::{Action, ActionId, Digest, Envelope, InputRef};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q01_worker_killed_mid_job_lease_expires_and_job_reruns_elsewhere() {
    let q = Agq::start(&["--lease-ms", "800", "--heartbeat-ms", "250"]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"q01 input"], 3).await;

    let a = q.worker("worker-a").await;
    register(&a, "worker-a").await;
    let first = claim(&a, 1, 1000).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].lease, LeaseRef { job: jobs[0], epoch: LeaseEpoch(1) });
    assert_eq!(first[0].attempt, 1);
    // Worker A dies mid-job: no heartbeat, no result, its connection gone.
    a.close();
    drop(a);

    let b = q.worker("worker-b").await;
    register(&b, "worker-b").await;
    // While A's lease is live nobody else gets the job.
    let early = claim(&b, 1, 0).await;
    assert!(
        early.is_empty() || now_ms() >= first[0].deadline,
        "the job was leased again before its first lease expired"
    );
    let second = if early.is_empty() { claim(&b, 1, 5000).await } else { early };
    assert_eq!(second.len(), 1, "the reaper did not re-queue the expired lease");
    assert!(now_ms() >= first[0].deadline, "re-leased before the deadline");
    assert_eq!(second[0].lease, LeaseRef { job: jobs[0], epoch: LeaseEpoch(2) });
    assert_eq!(second[0].attempt, 2);
    let rec = job(&planner, jobs[0]).await;
    assert_eq!(rec.attempts, 2);
    assert!(
        matches!(&rec.state, JobState::Leased { worker, epoch: LeaseEpoch(2), .. } if worker == "worker-b"),
        "{:?}",
        rec.state
    );
    assert_eq!(rec.last_error.as_deref(), Some("lease expired: the worker stopped heartbeating"));

    let r = b.complete_signed(&second[0], no_output()).await;
    assert_eq!(recorded(r), JobState::Succeeded);
    let rec = job(&planner, jobs[0]).await;
    assert_eq!((rec.state, rec.attempts), (JobState::Succeeded, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q02_late_complete_or_heartbeat_from_an_old_lease_holder_is_fenced() {
    let q = Agq::start(&["--lease-ms", "800", "--heartbeat-ms", "250"]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"q02 input"], 3).await;
    let a = q.worker("worker-a").await;
    register(&a, "worker-a").await;
    let old = claim(&a, 1, 1000).await[0].lease;
    // A stalls (a long GC pause, a partition) and its lease expires; B gets the job.
    let b = q.worker("worker-b").await;
    register(&b, "worker-b").await;
    let mut new = claim(&b, 1, 5000).await;
    assert_eq!(new.len(), 1);
    let new_lease = new.remove(0);
    let new = new_lease.lease;
    assert_eq!(new, LeaseRef { job: jobs[0], epoch: LeaseEpoch(2) });

    // A wakes up: its heartbeat learns the lease is lost, its result and failure are fenced.
    assert_eq!(heartbeat(&a, &[old]).await, (vec![], vec![], vec![old]));
    let stale = format!("lease LeaseEpoch(1) of job {} is not current", jobs[0]);
    let late = JobOutput {
        succeeded: false,
        failure: None,
        reports: agenix_proto::job::Reports::Inline(vec![]),
        output: None,
        result: None,
    };
    let req = Request::Complete { lease: old, output: late.clone(), blobs: vec![], claim: 0 };
    assert_eq!(refused(&a, &req).await, (ErrorCode::StaleLease, stale.clone()));
    let req = Request::Fail { lease: old, reason: "late".into(), retryable: true };
    assert_eq!(refused(&a, &req).await, (ErrorCode::StaleLease, stale));
    let rec = job(&planner, jobs[0]).await;
    assert!(
        matches!(&rec.state, JobState::Leased { worker, epoch: LeaseEpoch(2), .. } if worker == "worker-b"),
        "{:?}",
        rec.state
    );
    assert_eq!(rec.output, None);
    assert_eq!(rec.last_error.as_deref(), Some("lease expired: the worker stopped heartbeating"));

    // The current holder is unaffected.
    assert_eq!(heartbeat(&b, &[new]).await, (vec![new], vec![], vec![]));
    let real = b.signed(&new_lease, no_output()).await;
    let r = b
        .request(&Request::Complete { lease: new, output: real.clone(), blobs: vec![], claim: 0 })
        .await
        .unwrap();
    assert_eq!(recorded(r), JobState::Succeeded);
    // Once the job is finished, A (and a duplicate report from B) are refused too.
    let finished = format!("job {} is already finished", jobs[0]);
    let req = Request::Complete { lease: old, output: late, blobs: vec![], claim: 0 };
    assert_eq!(refused(&a, &req).await, (ErrorCode::StaleLease, finished.clone()));
    let req = Request::Complete { lease: new, output: real.clone(), blobs: vec![], claim: 0 };
    assert_eq!(refused(&b, &req).await, (ErrorCode::StaleLease, finished));
    assert_eq!(heartbeat(&a, &[old]).await, (vec![], vec![], vec![old]));
    let rec = job(&planner, jobs[0]).await;
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!(rec.output, Some(real), "the late result overwrote the real one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn q03_job_longer_than_the_lease_is_kept_alive_by_heartbeats_and_runs_once() {
    let lease_ms = 1200;
    let q = Agq::start(&["--lease-ms", "1200", "--heartbeat-ms", "400"]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"q03 input"], 3).await;
    let a = q.worker("worker-a").await;
    register(&a, "worker-a").await;
    let leases = claim(&a, 1, 1000).await;
    let (lease, first_deadline) = (leases[0].lease, leases[0].deadline);
    let held = leases[0].clone();

    // Another worker waits for work the whole time; it must get none.
    let b = q.worker("worker-b").await;
    register(&b, "worker-b").await;
    let run_ms = 4 * lease_ms;
    let other =
        tokio::spawn(async move { claim(&b, 1, u32::try_from(run_ms).unwrap() + 300).await });
    // The "task" runs for four lease periods, heartbeating every lease/3.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(lease_ms / 3)).await;
        assert_eq!(heartbeat(&a, &[lease]).await, (vec![lease], vec![], vec![]));
    }
    let stolen = other.await.unwrap();
    assert!(stolen.is_empty(), "a heartbeating job was leased to another worker: {stolen:?}");
    let rec = job(&planner, jobs[0]).await;
    let JobState::Leased { epoch, deadline, worker, .. } = rec.state else {
        panic!("{:?}", rec.state)
    };
    assert_eq!((epoch, worker.as_str()), (LeaseEpoch(1), "worker-a"));
    assert!(deadline > first_deadline + 2 * lease_ms, "heartbeats did not extend the deadline");

    let r = a.complete_signed(&held, no_output()).await;
    assert_eq!(recorded(r), JobState::Succeeded);
    let rec = job(&planner, jobs[0]).await;
    assert_eq!((rec.state, rec.attempts, rec.epoch), (JobState::Succeeded, 1, LeaseEpoch(1)));
    assert_eq!(rec.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q04_poison_job_backs_off_then_is_dead_after_max_attempts() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"poison"], 3).await;
    let w = q.worker("w").await;
    register(&w, "w").await;
    let mut leases = claim(&w, 1, 1000).await;
    for attempt in 1..=3u32 {
        assert_eq!(leases.len(), 1, "attempt {attempt} was not leased");
        let lease = leases[0].clone();
        assert_eq!(lease.lease, LeaseRef { job: jobs[0], epoch: LeaseEpoch(attempt.into()) });
        assert_eq!(lease.attempt, attempt);
        let fail =
            Request::Fail { lease: lease.lease, reason: "exit 1: poison".into(), retryable: true };
        let state = recorded(w.request(&fail).await.unwrap());
        let rec = job(&planner, jobs[0]).await;
        assert_eq!(rec.state, state);
        assert_eq!(rec.attempts, attempt);
        assert_eq!(rec.last_error.as_deref(), Some("exit 1: poison"));
        if attempt == 3 {
            let reason = "failed 3 of 3 attempts: exit 1: poison".to_string();
            assert_eq!(state, JobState::Dead { reason });
            break;
        }
        // Re-queued after a backoff drawn from 1..=base*2^(attempt-1) ms (base 1 s).
        let JobState::Queued { not_before } = state else { panic!("{state:?}") };
        let delay = not_before - rec.updated_at;
        let bound = 1000u64 << (attempt - 1);
        assert!((1..=bound).contains(&delay), "backoff {delay} ms outside 1..={bound}");
        // During the backoff the job is not claimable.
        let before = now_ms();
        let early = claim(&w, 1, 0).await;
        let after = now_ms();
        if early.is_empty() {
            assert!(before < not_before, "a job past its backoff was not claimable");
            leases = claim(&w, 1, 5000).await;
        } else {
            assert!(after >= not_before, "leased during its backoff");
            leases = early;
        }
        assert!(now_ms() >= not_before, "leased during its backoff");
    }
    // Dead is final.
    assert!(claim(&w, 1, 0).await.is_empty());
    assert_eq!(count(&planner, "dead").await, 1);
    assert_eq!(count(&planner, "queued").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q04_backoff_has_full_jitter_and_a_non_retryable_failure_is_dead_at_once() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let inputs: Vec<Vec<u8>> = (0..8).map(|i| format!("jitter {i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let jobs = q.submit(&planner, &refs, 3).await;
    let w = q.worker("w").await;
    register(&w, "w").await;
    let leases = claim(&w, 64, 1000).await;
    assert_eq!(leases.len(), 8);
    let mut delays = Vec::new();
    for l in &leases[..7] {
        let fail = Request::Fail { lease: l.lease, reason: "flaky".into(), retryable: true };
        let JobState::Queued { not_before } = recorded(w.request(&fail).await.unwrap()) else {
            panic!("not re-queued")
        };
        let rec = job(&planner, l.lease.job).await;
        delays.push(not_before - rec.updated_at);
    }
    assert!(delays.iter().all(|d| (1..=1000).contains(d)), "{delays:?}");
    let distinct: HashSet<_> = delays.iter().collect();
    assert!(distinct.len() > 1, "seven backoffs without jitter: {delays:?}");

    // A failure retrying cannot fix (say, a bad signature) is dead on its first attempt.
    let last = leases[7].lease;
    let reason = "verification: no signature is by a trusted key".to_string();
    let fail = Request::Fail { lease: last, reason: reason.clone(), retryable: false };
    assert_eq!(recorded(w.request(&fail).await.unwrap()), JobState::Dead { reason });
    let rec = job(&planner, last.job).await;
    assert_eq!((rec.attempts, rec.max_attempts), (1, 3));
    assert!(jobs.contains(&last.job));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q05_duplicate_submission_yields_one_set_of_jobs_and_a_changed_action_conflicts() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let inputs: [&[u8]; 2] = [b"q05 one", b"q05 two"];
    for b in [COMPONENT, inputs[0], inputs[1]] {
        planner.put_blob(b).await.unwrap();
    }
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let action = q.unsigned_action(digest, &inputs, 3);
    let submit = submit_of(&planner, &plan, &q.sign(&action)).await;
    let Response::Submitted { jobs, duplicate: false } = planner.request(&submit).await.unwrap()
    else {
        panic!("first submission")
    };
    assert_eq!(jobs.len(), 2);
    // The same submission again (a retry after a lost answer): the same jobs.
    for _ in 0..2 {
        let again = planner.request(&submit).await.unwrap();
        assert_eq!(again, Response::Submitted { jobs: jobs.clone(), duplicate: true });
    }
    // The same action id with other content is refused, whatever changed.
    let (other_plan, other_digest) = q.plan(COMPONENT, &[]);
    let changed = [
        (plan.clone(), Action { priority: 7, ..action.clone() }),
        (plan.clone(), Action { inputs: action.inputs[..1].to_vec(), ..action.clone() }),
        (plan.clone(), Action { max_attempts: 5, ..action.clone() }),
        (other_plan, Action { plan: other_digest, ..action.clone() }),
    ];
    let conflict =
        format!("action {} was already submitted with different content", action.action_id);
    for (plan, a) in changed {
        let req = submit_of(&planner, &plan, &q.sign(&a)).await;
        assert_eq!(refused(&planner, &req).await, (ErrorCode::Conflict, conflict.clone()));
    }
    // One set of jobs.
    let stored: Vec<JobId> =
        jobs_of(&planner, &action.action_id).await.iter().map(|j| j.id).collect();
    assert_eq!(stored, jobs);
    let s = stats(&planner).await;
    assert_eq!(s.jobs, BTreeMap::from([("queued".to_string(), 2)]));
    assert_eq!(s.submitted_last_minute, 2);
}

/// An action a burst submits, and what it should become.
struct Planned {
    id: ActionId,
    action: Envelope,
    inputs: Vec<InputRef>,
}

impl Planned {
    fn jobs(&self) -> usize {
        self.inputs.len().max(1)
    }
}

/// What a burst left: every action it meant to submit, and those acknowledged.
struct Burst {
    plan: Envelope,
    planned: Vec<Planned>,
    acked: BTreeMap<ActionId, Vec<JobId>>,
}

/// `planners` concurrent clients submit `actions` actions (a third with no input, a third
/// with one, a third with three); agq is SIGKILLed once `kill_after` are acknowledged, then
/// started again on the same data.
async fn burst_and_crash(q: &mut Agq, planners: usize, actions: usize, kill_after: usize) -> Burst {
    let setup = q.client(ClientRole::Planner).await;
    let pool: [&[u8]; 3] = [b"burst a", b"burst b", b"burst c"];
    for b in [COMPONENT, pool[0], pool[1], pool[2]] {
        setup.put_blob(b).await.unwrap();
    }
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let plan_json = plan.to_json();
    setup.put_blob(&plan_json).await.unwrap();
    let plan_blob = Digest::of(&plan_json);
    let planned: Vec<Planned> = (0..actions)
        .map(|i| {
            let inputs: &[&[u8]] = match i % 3 {
                0 => &[],
                1 => &pool[..1],
                _ => &pool,
            };
            let a = q.unsigned_action(digest, inputs, 3);
            Planned { id: a.action_id.clone(), action: q.sign(&a), inputs: a.inputs }
        })
        .collect();
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let n_acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..planners {
        let client = q.client(ClientRole::Planner).await;
        let mine: Vec<(ActionId, Envelope)> = planned
            .iter()
            .skip(p)
            .step_by(planners)
            .map(|a| (a.id.clone(), a.action.clone()))
            .collect();
        let (acked, n_acked) = (acked.clone(), n_acked.clone());
        tasks.push(tokio::spawn(async move {
            for (id, action) in mine {
                let action = action.to_json();
                if client.put_blob(&action).await.is_err() {
                    // The queue died under this request.
                    return;
                }
                let req =
                    Request::Submit { plan: plan_blob, action: Digest::of(&action), blobs: vec![] };
                match client.request(&req).await {
                    Ok(Response::Submitted { jobs, duplicate: false }) => {
                        acked.lock().unwrap().insert(id, jobs);
                        n_acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => panic!("{other:?}"),
                    // The queue died under this request.
                    Err(_) => return,
                }
            }
        }));
    }
    let give_up = Instant::now() + Duration::from_secs(30);
    while n_acked.load(Ordering::SeqCst) < kill_after {
        assert!(Instant::now() < give_up, "the burst stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    q.kill();
    // Requests in flight died with the queue; their connections would only time out.
    for t in tasks {
        t.abort();
        if let Err(e) = t.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() < actions, "the burst ended before the kill: kill earlier");
    q.restart();
    Burst { plan, planned, acked }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn q06_sigkill_after_ack_loses_no_acknowledged_job() {
    for mode in [&[][..], &["--no-group-commit"][..]] {
        let mut args = vec!["--requests-per-minute", "1000000"];
        args.extend_from_slice(mode);
        sigkill_after_ack(Agq::start(&args)).await;
    }
}

async fn sigkill_after_ack(mut q: Agq) {
    let burst = burst_and_crash(&mut q, 6, 300, 100).await;
    let obs = q.client(ClientRole::Observer).await;
    let by_id: HashMap<&ActionId, &Planned> = burst.planned.iter().map(|p| (&p.id, p)).collect();
    let mut seen = HashSet::new();
    for (id, jobs) in &burst.acked {
        let p = by_id[id];
        assert_eq!(jobs.len(), p.jobs(), "action {id} was acknowledged with {jobs:?}");
        for (k, j) in jobs.iter().enumerate() {
            assert!(seen.insert(*j), "job {j} was acknowledged twice");
            // ShowJob: every acknowledged job is there, as it was acknowledged.
            let rec = job(&obs, *j).await;
            assert_eq!(&rec.action, id);
            assert_eq!(rec.input, p.inputs.get(k).cloned());
            assert_eq!(rec.state, JobState::Queued { not_before: 0 });
            assert_eq!(rec.attempts, 0);
        }
        let stored: Vec<JobId> = jobs_of(&obs, id).await.iter().map(|j| j.id).collect();
        assert_eq!(&stored, jobs, "action {id}");
    }
    // No job id appears twice, and no id is handed out again after the restart.
    let all = list(&obs, JobFilter::default()).await;
    let ids: HashSet<JobId> = all.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), all.len());
    let planner = q.client(ClientRole::Planner).await;
    let fresh = q.submit(&planner, &[b"after the crash"], 1).await;
    assert!(fresh.iter().all(|f| all.iter().all(|j| j.id < *f)), "{fresh:?} reuses an id");
    eprintln!(
        "q06: {} of {} actions acknowledged before the kill, {} jobs stored",
        burst.acked.len(),
        burst.planned.len(),
        all.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn q07_crash_during_group_commit_is_all_or_nothing() {
    let mut q = Agq::start(&["--requests-per-minute", "1000000", "--connections-per-ip", "64"]);
    // Each submission's jobs, action record and envelopes go to storage with the other
    // requests of its group commit, in one transaction; kill during a heavy burst (twice).
    let mut expected: HashMap<ActionId, usize> = HashMap::new();
    for round in 0..2 {
        let burst = burst_and_crash(&mut q, 24, 480, 60).await;
        let planner = q.client(ClientRole::Planner).await;
        let mut lost_acks = 0;
        for p in &burst.planned {
            let stored = jobs_of(&planner, &p.id).await;
            if burst.acked.contains_key(&p.id) {
                assert_eq!(stored.len(), p.jobs(), "acknowledged action {} lost jobs", p.id);
            }
            assert!(
                stored.is_empty() || stored.len() == p.jobs(),
                "action {} has {} of its {} jobs: a partial commit",
                p.id,
                stored.len(),
                p.jobs()
            );
            for (k, j) in stored.iter().enumerate() {
                assert_eq!(j.input, p.inputs.get(k).cloned());
            }
            // The action record went with its jobs: a replay finds exactly those jobs, and an
            // action with no jobs stored was not remembered either.
            let req = submit_of(&planner, &burst.plan, &p.action).await;
            let Response::Submitted { jobs, duplicate } = planner.request(&req).await.unwrap()
            else {
                panic!("resubmission")
            };
            assert_eq!(duplicate, !stored.is_empty(), "action {}", p.id);
            assert_eq!(jobs.len(), p.jobs());
            if duplicate {
                assert_eq!(jobs, stored.iter().map(|j| j.id).collect::<Vec<_>>());
                if !burst.acked.contains_key(&p.id) {
                    lost_acks += 1;
                }
            }
            expected.insert(p.id.clone(), p.jobs());
        }
        // Every job stored belongs to a whole action.
        let all = list(&planner, JobFilter::default()).await;
        let mut per_action: HashMap<ActionId, usize> = HashMap::new();
        for j in &all {
            *per_action.entry(j.action.clone()).or_default() += 1;
        }
        for (a, n) in &per_action {
            assert_eq!(Some(n), expected.get(a), "action {a}");
        }
        assert_eq!(per_action.len(), expected.len());
        eprintln!(
            "q07 round {round}: {} acknowledged, {lost_acks} stored but unacknowledged, of {}",
            burst.acked.len(),
            burst.planned.len()
        );
        planner.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q08_cancel_queued_is_immediate_and_leased_waits_for_the_worker() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"q08 one", b"q08 two", b"q08 three"], 3).await;
    // A queued job is cancelled at once and never leased.
    let r = planner.request(&Request::Cancel { job: jobs[0] }).await.unwrap();
    assert_eq!(r, Response::Cancel { job: jobs[0], state: JobState::Cancelled });
    assert_eq!(job(&planner, jobs[0]).await.state, JobState::Cancelled);
    let w = q.worker("w").await;
    register(&w, "w").await;
    let leases = claim(&w, 64, 1000).await;
    let leased: Vec<JobId> = leases.iter().map(|l| l.lease.job).collect();
    assert_eq!(leased, jobs[1..].to_vec());
    let (two, three) = (leases[0].lease, leases[1].lease);

    // A leased job stays leased until its worker stops it.
    for lease in [two, three] {
        let r = planner.request(&Request::Cancel { job: lease.job }).await.unwrap();
        let Response::Cancel { job: id, state: JobState::Leased { epoch, .. } } = r else {
            panic!("{r:?}")
        };
        assert_eq!((id, epoch), (lease.job, lease.epoch));
        let rec = job(&planner, lease.job).await;
        assert!(rec.cancel_requested);
        assert!(matches!(rec.state, JobState::Leased { .. }), "{:?}", rec.state);
    }
    // The worker's heartbeat tells it to stop both (and does not extend them).
    assert_eq!(heartbeat(&w, &[two, three]).await, (vec![], vec![two, three], vec![]));
    // It kills the sandbox and reports a failure: cancelled, not retried.
    let fail = Request::Fail { lease: two, reason: "cancelled".into(), retryable: true };
    assert_eq!(recorded(w.request(&fail).await.unwrap()), JobState::Cancelled);
    // A worker that finished anyway: still cancelled, its output kept.
    assert_eq!(recorded(w.complete_signed(&leases[1], no_output()).await), JobState::Cancelled);
    for j in &jobs {
        assert_eq!(job(&planner, *j).await.state, JobState::Cancelled);
    }
    assert!(claim(&w, 64, 0).await.is_empty(), "a cancelled job was leased");
    // Cancelling a finished job is refused.
    let (code, message) = refused(&planner, &Request::Cancel { job: jobs[1] }).await;
    assert_eq!(code, ErrorCode::Conflict);
    assert_eq!(message, format!("job {} is already finished", jobs[1]));
    let (code, message) = refused(&planner, &Request::Cancel { job: JobId(9999) }).await;
    assert_eq!((code, message.as_str()), (ErrorCode::NotFound, "no job 9999"));
    assert_eq!(count(&planner, "cancelled").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q10_queue_restart_while_a_worker_holds_a_lease_loses_nothing() {
    let mut q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"q10 one", b"q10 two"], 3).await;
    let key = q.enroll("w");
    let w = q.connect_worker(&key).await;
    let wid = register_as(&w, "w", "q10 instance").await;
    let leases = claim(&w, 1, 1000).await;
    let lease = leases[0].lease;
    let held = leases[0].clone();
    assert_eq!(lease.job, jobs[0]);
    let output = b"q10 output".as_slice();
    w.put_blob(output).await.unwrap();

    q.restart();
    // Old connections are gone; the worker reconnects. A connection acts for no worker
    // until one registers on it.
    drop((w, planner));
    let w = q.connect_worker(&key).await;
    let (code, message) = refused(&w, &Request::Heartbeat { leases: vec![lease] }).await;
    assert_eq!(code, ErrorCode::NotRegistered);
    assert_eq!(message, "no worker is registered on this connection: register first");
    // Another worker cannot take the lease over, not even knowing the secret instance:
    // with another key it is another worker. The same key and instance are the same
    // worker, with the same id and its lease.
    let other = q.worker("other").await;
    assert_ne!(register_as(&other, "other", "q10 instance").await, wid);
    assert_eq!(heartbeat(&other, &[lease]).await, (vec![], vec![], vec![lease]));
    let (code, _) =
        refused(&other, &Request::Complete { lease, output: no_output(), blobs: vec![], claim: 0 })
            .await;
    assert_eq!(code, ErrorCode::Forbidden);
    assert_eq!(register_as(&w, "w", "q10 instance").await, wid);
    let planner = q.client(ClientRole::Planner).await;
    let JobState::Leased { deadline: before, .. } = job(&planner, lease.job).await.state else {
        panic!("the lease did not survive the restart")
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(heartbeat(&w, &[lease]).await, (vec![lease], vec![], vec![]));
    let JobState::Leased { deadline: after, .. } = job(&planner, lease.job).await.state else {
        panic!("not leased")
    };
    assert!(after > before, "the heartbeat did not extend the lease");
    let out = JobOutput {
        succeeded: true,
        failure: None,
        reports: agenix_proto::job::Reports::Inline(vec![]),
        output: Some(InputRef { digest: Digest::of(output), size: output.len() as u64 }),
        result: None,
    };
    let out = w.signed(&held, out).await;
    let r = w
        .request(&Request::Complete { lease, output: out.clone(), blobs: vec![], claim: 0 })
        .await
        .unwrap();
    assert_eq!(recorded(r), JobState::Succeeded);
    let rec = job(&planner, jobs[0]).await;
    assert_eq!((rec.state, rec.attempts, rec.output), (JobState::Succeeded, 1, Some(out)));
    assert_eq!(planner.get_blob(Digest::of(output), 1 << 20).await.unwrap(), output);
    // The other job waited through the restart and is leased as a first attempt.
    let next = claim(&w, 4, 1000).await;
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].lease.job, next[0].attempt), (jobs[1], 1));
}

/// Every request kind, in every role: refused with Forbidden exactly where the design's role
/// table says so (written out here, not derived from `Request::allowed_for`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q11_every_request_outside_a_roles_column_is_forbidden() {
    use ClientRole::{Observer, Planner, Worker};
    let q = Agq::start(&[]);
    let lease = LeaseRef { job: JobId(1), epoch: LeaseEpoch(1) };
    let all: &[ClientRole] = &[Planner, Worker, Observer];
    let empty = || vec![InputRef { digest: Digest::of(b""), size: 0 }];
    let cases: Vec<(Request, &[ClientRole])> = vec![
        (
            Request::Submit { plan: Digest::of(b"p"), action: Digest::of(b"a"), blobs: vec![] },
            &[Planner],
        ),
        (Request::Cancel { job: JobId(1) }, &[Planner]),
        (Request::Unkeep { digest: Digest::of(b"k") }, &[Planner]),
        (Request::PutBlobs { blobs: empty(), keep: false }, &[Planner, Worker]),
        (Request::PutBlobs { blobs: empty(), keep: true }, &[Planner]),
        (Request::GetBlob { digest: Digest::of(b"none") }, all),
        (Request::ListJobs { filter: JobFilter::default(), after: None, limit: 10 }, all),
        (Request::ShowJob { job: JobId(1) }, all),
        (Request::ListWorkers { after: None, limit: 1000 }, all),
        (Request::Stats {}, all),
        (Request::Register { capabilities: caps("x"), instance: "i".into() }, &[Worker]),
        (Request::Claim { max: 1, wait_ms: 0 }, &[Worker]),
        (Request::Heartbeat { leases: vec![lease] }, &[Worker]),
        (Request::Complete { lease, output: no_output(), blobs: vec![], claim: 0 }, &[Worker]),
        (Request::Fail { lease, reason: "r".into(), retryable: true }, &[Worker]),
        (Request::Release { lease, reason: "r".into() }, &[Worker]),
    ];
    for role in [Planner, Worker, Observer] {
        let c = q.client(role).await;
        let raw = c.connection();
        for (req, allowed) in &cases {
            // Raw frames, so put_blob and get_blob are asked the same way as the rest.
            let (mut send, mut recv) = raw.open_bi().await.unwrap();
            agenix_link::write_frame(&mut send, req).await.unwrap();
            send.finish().unwrap();
            let resp: Response = agenix_link::read_frame(&mut recv).await.unwrap();
            let forbidden = Response::Error {
                code: ErrorCode::Forbidden,
                message: format!("the {} role may not {}", role.as_str(), req.name()),
            };
            if allowed.contains(&role) {
                assert!(
                    !matches!(resp, Response::Error { code: ErrorCode::Forbidden, .. }),
                    "{} may {}: {resp:?}",
                    role.as_str(),
                    req.name()
                );
            } else {
                assert_eq!(resp, forbidden, "{} may not {}", role.as_str(), req.name());
            }
        }
        // A second Hello cannot switch the connection to another role.
        let escalate = Request::Hello {
            version: agenix_proto::wire::PROTOCOL_VERSION,
            role: Planner,
            token: Some(q.token(Planner)),
        };
        let (code, message) = refused(&c, &escalate).await;
        assert_eq!((code, message.as_str()), (ErrorCode::BadRequest, "already authenticated"));
        if role != Planner {
            let (code, _) = refused(&c, &Request::Cancel { job: JobId(1) }).await;
            assert_eq!(code, ErrorCode::Forbidden);
        }
    }
    // Nothing the refused requests asked for happened.
    let obs = q.client(Observer).await;
    let s = stats(&obs).await;
    assert_eq!(s.jobs.get("queued"), None, "{s:?}");
    let Response::Workers { workers, .. } =
        obs.request(&Request::ListWorkers { after: None, limit: 1000 }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(workers.len(), 1, "only the worker role registered: {workers:?}");
}

/// Q7, a commit that fails: the request is answered as unavailable and the queue's memory
/// keeps nothing of it. (Before, the scheduler kept the failed claim's lease in memory: the
/// job was leased to nobody until the lease expired.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q07_a_failed_commit_changes_nothing_in_memory() {
    use agenix_queue::store::{FaultyStore, MemStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("q");
    let fingerprint = agenix_queue::identity::init(&data).unwrap();
    let signer = agenix_proto::keys::signing_key_from_seed(&[5; 32]);
    let worker_key = agenix_proto::keys::signing_key_from_seed(&[6; 32]);
    let mut trust = agenix_proto::Trust::new();
    trust.add("tester", signer.verifying_key(), &agenix_proto::Role::SIGNING).unwrap();
    trust.add("w", worker_key.verifying_key(), &[agenix_proto::Role::Worker]).unwrap();
    let store = Arc::new(FaultyStore::new(MemStore::default()));
    let settings = agenix_queue::server::Settings::default();
    let (cert, key) = agenix_queue::identity::load_identity(&data).unwrap();
    let endpoint =
        agenix_queue::server::endpoint("127.0.0.1:0".parse().unwrap(), cert, key, &settings)
            .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let queue = agenix_queue::server::Queue::start(
        store.clone() as Arc<dyn Store>,
        agenix_queue::blobs::Blobs::new(&data, 1 << 20, 1 << 30).unwrap(),
        agenix_queue::trust::TrustSource::fixed(trust),
        agenix_queue::identity::signing_key(&data).unwrap(),
        agenix_queue::identity::load_tokens(&data).unwrap(),
        settings,
    )
    .unwrap();
    tokio::spawn(queue.serve(endpoint));
    let token = |role: ClientRole| {
        std::fs::read_to_string(data.join(format!("{}.token", role.as_str())))
            .unwrap()
            .trim()
            .to_string()
    };
    let connect = |role| {
        let credential = match role {
            ClientRole::Worker => agenix_link::Credential::Key(worker_key.clone()),
            other => agenix_link::Credential::Token(token(other)),
        };
        async move { agenix_link::Client::connect(addr, fingerprint, role, &credential).await.unwrap() }
    };
    let planner = connect(ClientRole::Planner).await;
    planner.put_blob(COMPONENT).await.unwrap();
    let plan = plan_value(COMPONENT, &[]);
    let plan_env = agenix_proto::envelope::sign_plan(&plan, &signer).unwrap();
    let action = Action {
        schema: agenix_proto::action::ACTION_SCHEMA.into(),
        action_id: ActionId::from_random(rand16()),
        plan: Digest::of(&plan.to_payload()),
        inputs: vec![],
        issued_at: now_s(),
        expires_at: now_s() + 600,
        max_attempts: 3,
        priority: 0,
        audience: fingerprint,
    };
    let action_env = agenix_proto::envelope::sign_action(&action, &signer).unwrap();
    let Response::Submitted { jobs, .. } =
        planner.request(&submit_of(&planner, &plan_env, &action_env).await).await.unwrap()
    else {
        panic!("submit")
    };
    let w = connect(ClientRole::Worker).await;
    register(&w, "w").await;
    // The disk fails under the claim: refused, and nothing changed.
    store.fail_next(1);
    let (code, message) = refused(&w, &Request::Claim { max: 1, wait_ms: 0 }).await;
    assert_eq!(code, ErrorCode::Unavailable);
    assert!(message.contains("disk is full"), "{message}");
    let rec = job(&planner, jobs[0]).await;
    assert_eq!(
        (rec.state, rec.attempts, rec.epoch),
        (JobState::Queued { not_before: 0 }, 0, LeaseEpoch(0))
    );
    // The next claim leases it, as its first attempt, and it is stored.
    let leases = claim(&w, 1, 1000).await;
    assert_eq!(leases.len(), 1, "the job was stuck in a lease that was never stored");
    assert_eq!((leases[0].attempt, leases[0].lease.epoch), (1, LeaseEpoch(1)));
    let stored = store.load().unwrap();
    assert!(matches!(stored.jobs[0].state, JobState::Leased { .. }), "{:?}", stored.jobs[0]);
}

/// Any holder of the worker token could once heartbeat, complete, fail or give back a lease
/// another worker held: requests named a worker id. Now they act for the worker registered
/// on their connection, and only the lease's holder is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_belongs_to_the_worker_that_claimed_it() {
    let q = Agq::start(&[]);
    let planner = q.client(ClientRole::Planner).await;
    let jobs = q.submit(&planner, &[b"owned"], 3).await;
    let owner = q.worker("owner").await;
    register(&owner, "owner").await;
    let held = claim(&owner, 1, 1000).await.remove(0);
    let lease = held.lease;
    let thief = q.worker("thief").await;
    register(&thief, "thief").await;
    let mine =
        (ErrorCode::Forbidden, format!("the lease of job {} is held by another worker", jobs[0]));
    assert_eq!(
        refused(&thief, &Request::Complete { lease, output: no_output(), blobs: vec![], claim: 0 })
            .await,
        mine
    );
    let fail = Request::Fail { lease, reason: "x".into(), retryable: false };
    assert_eq!(refused(&thief, &fail).await, mine);
    let release = Request::Release { lease, reason: "x".into() };
    assert_eq!(refused(&thief, &release).await, mine);
    assert_eq!(heartbeat(&thief, &[lease]).await, (vec![], vec![], vec![lease]));
    // A connection with no worker registered is refused outright.
    let anonymous = q.client(ClientRole::Worker).await;
    let (code, _) = refused(
        &anonymous,
        &Request::Complete { lease, output: no_output(), blobs: vec![], claim: 0 },
    )
    .await;
    assert_eq!(code, ErrorCode::NotRegistered);
    // The job is untouched and still its owner's.
    let rec = job(&planner, jobs[0]).await;
    assert!(matches!(&rec.state, JobState::Leased { worker, .. } if worker == "owner"), "{rec:?}");
    assert_eq!(heartbeat(&owner, &[lease]).await, (vec![lease], vec![], vec![]));
    let r = owner.complete_signed(&held, no_output()).await;
    assert_eq!(recorded(r), JobState::Succeeded);
}

/// Registration is bounded: a worker announcing a megabyte of labels, a name of controls or
/// an impossible concurrency is refused, and nothing is kept of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_announcing_too_much_is_refused() {
    let q = Agq::start(&[]);
    let w = q.client(ClientRole::Worker).await;
    let mut labels = caps("w");
    labels.labels = (0..20_000).map(|i| format!("label-{i:040}")).collect();
    let mut name = caps("w");
    name.name = "evil\u{1b}[2J\u{202e}".into();
    let mut busy = caps("w");
    busy.concurrency = 1_000_000;
    for c in [labels, name, busy] {
        let req = Request::Register { capabilities: c, instance: "i".into() };
        let (code, message) = refused(&w, &req).await;
        assert_eq!(code, ErrorCode::BadRequest, "{message}");
        assert!(message.starts_with("cannot register: "), "{message}");
    }
    let long = Request::Register { capabilities: caps("w"), instance: "i".repeat(129) };
    assert_eq!(refused(&w, &long).await.0, ErrorCode::BadRequest);
    let obs = q.client(ClientRole::Observer).await;
    let Response::Workers { workers, .. } =
        obs.request(&Request::ListWorkers { after: None, limit: 1000 }).await.unwrap()
    else {
        panic!()
    };
    assert!(workers.is_empty(), "{workers:?}");
}

use agenix_link::LinkError;

/// A tmpfs of `size` at a new directory, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None`, having said why, where this process cannot mount one (not root).
    fn mount(row: &str, size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        if out.status.success() {
            return Some(Self(dir));
        }
        eprintln!("{row}: skipped: cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        None
    }

    /// Bytes free on it.
    fn free(&self) -> u64 {
        nix::sys::statvfs::statvfs(self.0.path())
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Q12: the disk under the queue's database fills while planners submit. What does not fit
/// is refused, and nothing of it kept; agq runs on; once there is room again it takes
/// submissions by itself, without a restart, and every acknowledged job is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q12_a_full_disk_refuses_submissions_until_there_is_room_again() {
    let Some(fs) = Tmpfs::mount("q12", "16m") else { return };
    // The database on the small disk; blobs stay where they are.
    let mut q = Agq::start_prepared(&["--requests-per-minute", "100000"], false, |data| {
        let db = data.join("queue.redb");
        let moved = fs.0.path().join("queue.redb");
        std::fs::copy(&db, &moved).unwrap();
        std::fs::remove_file(&db).unwrap();
        std::os::unix::fs::symlink(&moved, &db).unwrap();
    });
    let planner = q.client(ClientRole::Planner).await;
    planner.put_blob(COMPONENT).await.unwrap();
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let inputs: Vec<Vec<u8>> = (0..50).map(|i| format!("q12 input {i}").into_bytes()).collect();
    let inputs: Vec<&[u8]> = inputs.iter().map(|i| i.as_slice()).collect();
    for i in &inputs {
        planner.put_blob(i).await.unwrap();
    }
    // Most of the room taken by something else.
    let filler = fs.0.path().join("filler");
    std::fs::write(&filler, vec![7u8; (fs.free() - (1 << 20)) as usize]).unwrap();
    // One submission of every input: the jobs acknowledged, or the refusal (of its
    // envelopes' upload, small blobs being kept in the database, or of the submission).
    let submit = async |q: &Agq| {
        let (action, _) = q.action(digest, &inputs, 3);
        let (plan, action) = (plan.to_json(), action.to_json());
        if let Err(LinkError::Remote { code, message, .. }) =
            planner.put_many(&[&plan, &action], false).await
        {
            return Err((code, message));
        }
        let req =
            Request::Submit { plan: Digest::of(&plan), action: Digest::of(&action), blobs: vec![] };
        match planner.request(&req).await {
            Ok(Response::Submitted { jobs, .. }) => Ok(jobs.len() as u64),
            Err(LinkError::Remote { code, message, .. }) => Err((code, message)),
            other => panic!("{other:?}"),
        }
    };
    let mut acked = 0u64;
    let refused = loop {
        match submit(&q).await {
            Ok(jobs) => acked += jobs,
            Err(refused) => break refused,
        }
        assert!(acked < 1_000_000, "the disk never filled");
    };
    assert_eq!(refused.0, ErrorCode::Unavailable, "{refused:?}");
    assert!(refused.1.contains("No space left on device"), "{refused:?}");
    assert!(acked > 0, "nothing fitted at all: {refused:?}");
    // Still nearly full (the failed commit's pages may be free again): each submission is
    // stored whole or refused, and agq runs on.
    for _ in 0..5 {
        match submit(&q).await {
            Ok(jobs) => acked += jobs,
            Err((code, message)) => assert_eq!(code, ErrorCode::Unavailable, "{message}"),
        }
    }
    assert!(q.is_running());
    // Room again: within a few seconds submissions land, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match submit(&q).await {
            Ok(jobs) => {
                acked += jobs;
                break;
            }
            Err(refused) => assert!(Instant::now() < until, "still refused: {refused:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(q.log().contains("database reopened after a failed write"), "{}", q.log());
    let observer = q.client(ClientRole::Observer).await;
    assert_eq!(count(&observer, "queued").await, acked, "every acknowledged job, no other");
    // And after a restart too.
    q.kill();
    q.restart();
    let observer = q.client(ClientRole::Observer).await;
    assert_eq!(count(&observer, "queued").await, acked);
    drop(q);
}
