//! The scheduler's rules, on a virtual clock.

use proptest::prelude::*;

use super::*;
use agenix_proto::job::{Reports, StateKind};

/// The key every test worker authenticated with.
fn key() -> KeyId {
    KeyId::of(&agenix_proto::keys::signing_key_from_seed(&[1; 32]).verifying_key())
}

const T0: u64 = 1_764_060_000_000;

fn caps(name: &str, tools: &[&str]) -> Capabilities {
    Capabilities {
        name: name.into(),
        wasm: true,
        tools: tools.iter().map(|t| t.parse().unwrap()).collect(),
        mounts: BTreeSet::new(),
        ceilings: agenix_proto::Limits::ABSOLUTE,
        concurrency: 4,
        labels: BTreeSet::new(),
    }
}

fn reqs(tools: &[&str]) -> Requirements {
    let mut r = Requirements::of(
        &agenix_proto::Plan::from_json(br#"{"schema":"agenix.plan/v1","name":"p","tasks":[{"id":"a","run":{"wasm":{"name":"x"}}}],"output":"a"}"#).unwrap(),
    );
    r.tools = tools.iter().map(|t| t.parse().unwrap()).collect();
    r
}

/// Registers a worker whose id is derived from its name.
fn register(s: &mut Scheduler, now: u64, name: &str, tools: &[&str]) -> u64 {
    let id = name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    s.register(now, id, key(), caps(name, tools)).unwrap()
}

fn sub(n: u8, inputs: usize, priority: i32, tools: &[&str]) -> Submission {
    Submission {
        action: ActionId::from_random([n; 16]),
        payload: Digest::of(&[n]),
        envelope: Digest::of(&[n, b'a']),
        plan_envelope: Digest::of(b"plan envelope"),
        components: vec![Digest::of(b"component")],
        expires_at: T0 + 3_600_000,
        plan: Digest::of(b"plan"),
        inputs: (0..inputs)
            .map(|i| InputRef { digest: Digest::of(&[n, i as u8]), size: 1 })
            .collect(),
        priority,
        max_attempts: 3,
        requirements: reqs(tools),
        signer: Some(key()),
    }
}

fn lease_of(l: &Lease) -> LeaseRef {
    l.lease
}

fn output() -> JobOutput {
    JobOutput {
        succeeded: true,
        failure: None,
        reports: Reports::Inline(vec![]),
        output: None,
        result: None,
    }
}

/// Claims with no byte budget to speak of.
fn claim(s: &mut Scheduler, now: u64, worker: u64, max: u32) -> Vec<Lease> {
    s.claim(now, worker, max, usize::MAX).unwrap().0
}

/// The jobs a batch of changes stores.
fn ids_of(changes: &[Change]) -> Vec<JobId> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Job(j) => Some(j.id),
            _ => None,
        })
        .collect()
}

/// The audit entries a batch of changes appends: job, step, state after.
fn audited(changes: &[Change]) -> Vec<(JobId, Step, StateKind)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Audit { event: Event::Job(e), .. } => Some((e.job, e.step, e.state)),
            _ => None,
        })
        .collect()
}

fn job_events(changes: &[Change]) -> Vec<JobEvent> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Audit { event: Event::Job(e), .. } => Some(e.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_step_of_a_job_is_audited_with_its_lease_and_worker_and_heartbeats_are_not() {
    let mut s = Scheduler::new(Config::default());
    let (ids, _, changes) = s.submit(T0, sub(1, 2, 0, &[])).unwrap();
    let subs = job_events(&changes);
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[0].step, Step::Submitted);
    assert_eq!(subs[0].action, Some(ActionId::from_random([1; 16])));
    assert_eq!(subs[0].plan, Some(Digest::of(b"plan")));
    assert_eq!(subs[1].input, Some(Digest::of(&[1, 1])));
    let w = register(&mut s, T0, "w", &[]);
    let (leases, changes) = s.claim(T0 + 1, w, 2, usize::MAX).unwrap();
    let leased = job_events(&changes);
    assert_eq!(leased.len(), 2);
    assert!(leased.iter().all(|e| e.step == Step::Leased && e.worker == Some(key())));
    assert_eq!(leased[0].epoch, Some(leases[0].lease.epoch));
    // Heartbeats change the job but are not audited.
    let (_, changes) = s.heartbeat(T0 + 2, w, &[leases[0].lease, leases[1].lease]).unwrap();
    assert_eq!((ids_of(&changes).len(), audited(&changes).len()), (2, 0));
    let mut out = output();
    out.output = Some(InputRef { digest: Digest::of(b"out"), size: 3 });
    out.result = Some(InputRef { digest: Digest::of(b"signed"), size: 6 });
    let (_, changes) = s.complete(T0 + 3, w, leases[0].lease, out).unwrap();
    let done = job_events(&changes);
    assert_eq!((done[0].step, done[0].state), (Step::Completed, StateKind::Succeeded));
    assert_eq!(
        (done[0].output, done[0].result),
        (Some(Digest::of(b"out")), Some(Digest::of(b"signed")))
    );
    assert_eq!((done[0].epoch, done[0].worker), (Some(leases[0].lease.epoch), Some(key())));
    let (_, changes) = s.fail(T0 + 4, w, leases[1].lease, "secret path /x", true, 0).unwrap();
    let failed = job_events(&changes);
    assert_eq!((failed[0].step, failed[0].state), (Step::Failed, StateKind::Queued));
    assert_eq!(failed[0].reason, Some(Digest::of(b"secret path /x")), "the reason, as a digest");
    assert!(!format!("{failed:?}").contains("secret"));
    // Cancelled while queued; retention forgets the finished ones.
    let (_, changes) = s.cancel(T0 + 5, ids[1]).unwrap();
    assert_eq!(audited(&changes), vec![(ids[1], Step::Cancelled, StateKind::Cancelled)]);
    let changes = s.tick(T0 + Config::default().retention_ms + 10);
    let forgotten: Vec<Step> = audited(&changes).iter().map(|e| e.1).collect();
    assert_eq!(forgotten, vec![Step::Forgotten, Step::Forgotten]);
}

#[test]
fn one_job_per_input_and_duplicates_are_idempotent() {
    let mut s = Scheduler::new(Config::default());
    let (ids, dup, changes) = s.submit(T0, sub(1, 3, 0, &[])).unwrap();
    assert_eq!(ids.len(), 3);
    assert!(!dup);
    assert_eq!(changes.iter().filter(|c| matches!(c, Change::Job(_))).count(), 3);
    let (none, _, _) = s.submit(T0, sub(2, 0, 0, &[])).unwrap();
    assert_eq!(none.len(), 1, "no inputs: one job with empty stdin");
    // Q5: the same action again is the same jobs; the same id with other bytes is refused.
    let (again, dup, changes) = s.submit(T0 + 5, sub(1, 3, 0, &[])).unwrap();
    assert_eq!((again, dup, changes.len()), (ids, true, 0));
    let mut other = sub(1, 3, 0, &[]);
    other.payload = Digest::of(b"different");
    assert_eq!(s.submit(T0, other), Err(Refusal::Conflict(ActionId::from_random([1; 16]))));
    s.check_invariants().unwrap();
}

#[test]
fn claims_take_priority_then_age_and_route_by_capability() {
    let mut s = Scheduler::new(Config::default());
    let (low, _, _) = s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let (high, _, _) = s.submit(T0 + 1, sub(2, 1, 10, &[])).unwrap();
    let (native, _, _) = s.submit(T0 + 2, sub(3, 1, 20, &["sort"])).unwrap();
    let plain = register(&mut s, T0, "plain", &[]);
    let got = claim(&mut s, T0, plain, 10);
    let ids: Vec<JobId> = got.iter().map(|l| l.lease.job).collect();
    assert_eq!(ids, [high[0], low[0]], "the native job needs a worker with sort");
    let sorter = register(&mut s, T0, "sorter", &["sort"]);
    let got = claim(&mut s, T0, sorter, 10);
    assert_eq!(got.iter().map(|l| l.lease.job).collect::<Vec<_>>(), native);
    assert!(matches!(
        s.job(native[0]).unwrap().state,
        JobState::Leased { ref worker, worker_id, .. } if worker == "sorter" && worker_id == sorter
    ));
    s.check_invariants().unwrap();
}

#[test]
fn q01_expired_lease_is_rerun_elsewhere_with_the_next_attempt() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let a = register(&mut s, T0, "a", &[]);
    let b = register(&mut s, T0, "b", &[]);
    let got = claim(&mut s, T0, a, 1);
    let first = lease_of(&got[0]);
    assert_eq!(got[0].attempt, 1);
    // Worker a dies: no heartbeat. Just before the deadline nothing happens; after it the job
    // is queued again.
    assert!(s.tick(T0 + 29_999).is_empty());
    let changes = s.tick(T0 + 30_001);
    assert_eq!(audited(&changes), vec![(ids_of(&changes)[0], Step::Expired, StateKind::Queued)]);
    assert_eq!(ids_of(&changes).len(), 1);
    let got = claim(&mut s, T0 + 30_002, b, 1);
    assert_eq!(got[0].attempt, 2);
    assert!(got[0].lease.epoch > first.epoch);
    // Q2: the old holder's late result is fenced off.
    assert_eq!(
        s.complete(T0 + 30_003, a, first, output()).unwrap_err(),
        Refusal::Stale { job: first.job, epoch: first.epoch }
    );
    let (beat, _) = s.heartbeat(T0 + 30_003, a, &[first]).unwrap();
    assert_eq!(beat.lost, [first]);
    s.complete(T0 + 30_004, b, lease_of(&got[0]), output()).unwrap();
    assert_eq!(s.job(first.job).unwrap().state, JobState::Succeeded);
    s.check_invariants().unwrap();
}

#[test]
fn q03_heartbeats_keep_a_long_job_leased_and_it_runs_once() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let got = claim(&mut s, T0, w, 1);
    let lease = lease_of(&got[0]);
    for minute in 1..=10u64 {
        let now = T0 + minute * 10_000;
        let (beat, _) = s.heartbeat(now, w, &[lease]).unwrap();
        assert_eq!(beat.extended, [lease]);
        assert!(s.tick(now).is_empty());
    }
    let other = register(&mut s, T0, "other", &[]);
    assert!(claim(&mut s, T0 + 100_000, other, 1).is_empty(), "never handed out twice");
    s.complete(T0 + 100_001, w, lease, output()).unwrap();
    assert_eq!(s.job(lease.job).unwrap().attempts, 1);
}

#[test]
fn q04_poison_job_backs_off_with_jitter_then_dies() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let mut now = T0;
    for attempt in 1..=3u32 {
        let got = claim(&mut s, now, w, 1);
        assert_eq!(got.len(), 1, "attempt {attempt}");
        let (state, _) = s.fail(now, w, lease_of(&got[0]), "boom", true, u64::MAX / 3).unwrap();
        if attempt < 3 {
            let JobState::Queued { not_before } = state else { panic!("{state:?}") };
            let bound = 1000 << (attempt - 1);
            assert!(
                not_before > now && not_before <= now + bound,
                "attempt {attempt}: {}",
                not_before - now
            );
            // Not claimable during the backoff; claimable after.
            assert!(claim(&mut s, not_before - 1, w, 1).is_empty());
            now = not_before;
        } else {
            assert_eq!(state, JobState::Dead { reason: "failed 3 of 3 attempts: boom".into() });
        }
    }
    // Full jitter: the delay is uniform below the bound, so two random draws differ.
    let d1 = s.backoff(5, 12345);
    let d2 = s.backoff(5, 67890);
    assert_ne!(d1, d2);
    assert!(s.backoff(50, u64::MAX) <= s.config().backoff_cap_ms, "capped");
    s.check_invariants().unwrap();
}

#[test]
fn a_worker_that_let_a_lease_expire_is_unresponsive_to_claims_made_before() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let a = register(&mut s, T0, "a", &[]);
    let b = register(&mut s, T0, "b", &[]);
    claim(&mut s, T0, a, 1);
    // a claims again (it has free slots) and is then killed: its lease expires.
    let waiting_since = T0 + 10;
    assert!(!s.unresponsive_since(a, waiting_since));
    s.tick(T0 + 30_001);
    assert!(s.unresponsive_since(a, waiting_since), "a claim from before the expiry");
    assert!(!s.unresponsive_since(b, waiting_since), "only the worker that let it expire");
    // A claim a makes afterwards is its own proof of life.
    assert!(!s.unresponsive_since(a, T0 + 30_002));
}

#[test]
fn non_retryable_failures_die_at_once() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let got = claim(&mut s, T0, w, 1);
    let (state, _) =
        s.fail(T0, w, lease_of(&got[0]), "signature does not verify", false, 7).unwrap();
    assert_eq!(state, JobState::Dead { reason: "signature does not verify".into() });
}

#[test]
fn a_job_whose_task_failed_is_dead_with_the_task_named_and_not_retried() {
    use agenix_proto::report::TaskReport;
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let got = claim(&mut s, T0, w, 1);
    let task = |n: &str| n.parse::<agenix_proto::TaskId>().unwrap();
    let reports = vec![
        TaskReport::not_run(task("fetch"), agenix_proto::Outcome::Exited { code: 0 }),
        TaskReport::not_run(task("parse"), agenix_proto::Outcome::OutOfFuel),
        TaskReport::not_run(
            task("print"),
            agenix_proto::Outcome::Skipped { because: task("parse") },
        ),
    ];
    let out = JobOutput {
        succeeded: false,
        failure: agenix_proto::report::first_failure(&reports),
        reports: Reports::Inline(reports),
        output: None,
        result: None,
    };
    let (state, _) = s.complete(T0, w, lease_of(&got[0]), out.clone()).unwrap();
    assert_eq!(state, JobState::Dead { reason: "task parse: out-of-fuel".into() });
    let rec = s.job(got[0].lease.job).unwrap();
    assert_eq!((rec.attempts, rec.output.as_ref()), (1, Some(&out)));
    assert!(claim(&mut s, T0 + 3_600_000, w, 1).is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn q08_cancel_queued_at_once_and_leased_through_the_worker() {
    let mut s = Scheduler::new(Config::default());
    let (ids, _, _) = s.submit(T0, sub(1, 2, 0, &[])).unwrap();
    let (state, _) = s.cancel(T0, ids[0]).unwrap();
    assert_eq!(state, JobState::Cancelled);
    let w = register(&mut s, T0, "w", &[]);
    let got = claim(&mut s, T0, w, 5);
    assert_eq!(got.len(), 1, "the cancelled job is never claimed");
    let lease = lease_of(&got[0]);
    let (state, _) = s.cancel(T0 + 1, ids[1]).unwrap();
    assert!(matches!(state, JobState::Leased { .. }));
    let (beat, _) = s.heartbeat(T0 + 2, w, &[lease]).unwrap();
    assert_eq!(beat.cancelled, [lease], "the worker learns at its next heartbeat");
    let (state, _) = s.fail(T0 + 3, w, lease, "cancelled", false, 0).unwrap();
    assert_eq!(state, JobState::Cancelled);
    assert_eq!(s.cancel(T0 + 4, ids[1]), Err(Refusal::Finished(ids[1])));
    s.check_invariants().unwrap();
}

#[test]
fn cancelled_lease_that_expires_is_cancelled_not_requeued() {
    let mut s = Scheduler::new(Config::default());
    let (ids, _, _) = s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    claim(&mut s, T0, w, 1);
    s.cancel(T0, ids[0]).unwrap();
    s.tick(T0 + 60_000);
    assert_eq!(s.job(ids[0]).unwrap().state, JobState::Cancelled);
}

#[test]
fn retention_and_action_expiry_forget_old_things() {
    let cfg = Config { retention_ms: 1000, ..Config::default() };
    let mut s = Scheduler::new(cfg);
    let (ids, _, _) = s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    s.cancel(T0, ids[0]).unwrap();
    let changes = s.tick(T0 + 2000);
    assert!(changes.contains(&Change::DeleteJob(ids[0])));
    assert!(s.job(ids[0]).is_none());
    let changes = s.tick(action_gone_at(T0 + 3_600_000));
    assert!(changes.contains(&Change::DeleteAction(ActionId::from_random([1; 16]))));
    s.check_invariants().unwrap();
}

#[test]
fn reload_rebuilds_the_same_scheduler() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 4, 3, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let got = claim(&mut s, T0, w, 2);
    s.fail(T0, w, lease_of(&got[0]), "x", true, 99).unwrap();
    let jobs: Vec<JobRecord> = (1..=4).filter_map(|i| s.job(JobId(i))).collect();
    let actions =
        vec![(ActionId::from_random([1; 16]), s.actions[&ActionId::from_random([1; 16])].clone())];
    let r = Scheduler::load(Config::default(), T0, jobs, actions, 5);
    r.check_invariants().unwrap();
    assert_eq!(r.stats(T0).jobs, s.stats(T0).jobs);
    assert_eq!(r.next_job, 5);
}

#[test]
fn listing_pages_and_filters() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 5, 0, &[])).unwrap();
    s.submit(T0, sub(2, 2, 0, &[])).unwrap();
    let all = usize::MAX;
    let (page, next) = s.list(&JobFilter::default(), None, 3, all);
    assert_eq!(page.iter().map(|j| j.id.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(next, Some(JobId(3)));
    let (page, next) = s.list(&JobFilter::default(), next, 10, all);
    assert_eq!(page.len(), 4);
    assert_eq!(next, None);
    let f = JobFilter { action: Some(ActionId::from_random([2; 16])), ..JobFilter::default() };
    assert_eq!(s.list(&f, None, 10, all).0.len(), 2);
    let f = JobFilter { state: Some(StateKind::Leased), ..JobFilter::default() };
    assert!(s.list(&f, None, 10, all).0.is_empty());
}

#[test]
fn the_newest_jobs_come_first_and_a_scan_stops_at_its_budget() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 5, 0, &[])).unwrap();
    s.submit(T0, sub(2, 2, 0, &[])).unwrap();
    let ids = |jobs: &[JobRecord]| jobs.iter().map(|j| j.id.0).collect::<Vec<_>>();
    let all = JobFilter::default();
    let (jobs, go_on) = s.newest(&all, None, 3, usize::MAX);
    assert_eq!((ids(&jobs), go_on), (vec![7, 6, 5], None));
    let (jobs, go_on) = s.newest(&all, Some(JobId(3)), 10, usize::MAX);
    assert_eq!((ids(&jobs), go_on), (vec![2, 1], None));
    // Jobs of the first action only, looking at three jobs at a time: none among the
    // newest three, then two, then the rest.
    let first = JobFilter { action: Some(ActionId::from_random([1; 16])), ..JobFilter::default() };
    let (jobs, go_on) = s.newest(&first, None, 10, 3);
    assert_eq!((ids(&jobs), go_on), (vec![5], Some(JobId(5))));
    let (jobs, go_on) = s.newest(&first, go_on, 10, 3);
    assert_eq!((ids(&jobs), go_on), (vec![4, 3, 2], Some(JobId(2))));
    let (jobs, go_on) = s.newest(&first, go_on, 10, 3);
    assert_eq!((ids(&jobs), go_on), (vec![1], None));
}

#[test]
fn leases_belong_to_the_worker_that_claimed_them() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let owner = register(&mut s, T0, "owner", &[]);
    let thief = register(&mut s, T0, "thief", &[]);
    let lease = lease_of(&claim(&mut s, T0, owner, 1)[0]);
    let mine = Refusal::NotYours(lease.job);
    let (beat, changes) = s.heartbeat(T0 + 1, thief, &[lease]).unwrap();
    assert_eq!((beat.lost, beat.extended, changes.len()), (vec![lease], vec![], 0));
    assert_eq!(s.complete(T0 + 2, thief, lease, output()).unwrap_err(), mine);
    assert_eq!(s.fail(T0 + 3, thief, lease, "x", false, 0).unwrap_err(), mine);
    assert_eq!(s.release(T0 + 4, thief, lease, "x").unwrap_err(), mine);
    assert!(s.unclaim(T0 + 5, thief, &[lease]).is_empty());
    assert!(
        matches!(s.job(lease.job).unwrap().state, JobState::Leased { worker_id, .. } if worker_id == owner)
    );
    let (state, _) = s.complete(T0 + 6, owner, lease, output()).unwrap();
    assert_eq!(state, JobState::Succeeded);
    s.check_invariants().unwrap();
}

#[test]
fn a_declined_job_costs_no_attempt_and_goes_to_other_workers_first() {
    let mut s = Scheduler::new(Config::default());
    let (ids, _, _) = s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let stale = register(&mut s, T0, "stale", &[]);
    let good = register(&mut s, T0, "good", &[]);
    let lease = lease_of(&claim(&mut s, T0, stale, 1)[0]);
    let (state, _) = s.release(T0 + 1, stale, lease, "unknown signer \u{1b}[31m").unwrap();
    assert_eq!(state, JobState::Queued { not_before: 0 });
    let job = s.job(ids[0]).unwrap();
    assert_eq!(job.attempts, 0, "declining costs no attempt");
    assert_eq!(job.declined.len(), 1);
    assert_eq!(job.declined[0].reason, "unknown signer ", "reasons are kept clean");
    let (workers, _) = s.workers(None, 10, usize::MAX);
    let w = workers.iter().find(|w| w.id == stale).unwrap();
    assert_eq!((w.declined, w.last_declined.as_deref()), (1, Some("unknown signer ")));
    // The worker that declined it is not offered it again during the cooldown...
    assert!(claim(&mut s, T0 + 2, stale, 1).is_empty());
    // ... another worker is, and its lease is attempt 1 with a newer epoch.
    let again = claim(&mut s, T0 + 3, good, 1);
    assert_eq!(again[0].attempt, 1);
    assert!(again[0].lease.epoch > lease.epoch);
    s.release(T0 + 4, good, again[0].lease, "no tool").unwrap();
    // After the cooldown the first worker may try again.
    let cooldown = s.config().decline_cooldown_ms;
    assert_eq!(claim(&mut s, T0 + 1 + cooldown, stale, 1).len(), 1);
    s.check_invariants().unwrap();
}

#[test]
fn leases_that_never_reached_their_worker_are_taken_back_without_an_attempt() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 3, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let got = claim(&mut s, T0, w, 3);
    let refs: Vec<LeaseRef> = got.iter().map(lease_of).collect();
    let changes = s.unclaim(T0 + 1, w, &refs);
    assert_eq!(ids_of(&changes).len(), 3);
    assert!(audited(&changes).iter().all(|(_, step, _)| *step == Step::Reclaimed));
    for l in &refs {
        let j = s.job(l.job).unwrap();
        assert_eq!((j.attempts, &j.state), (0, &JobState::Queued { not_before: 0 }));
        assert!(j.declined.is_empty());
    }
    assert_eq!(claim(&mut s, T0 + 2, w, 3).len(), 3, "the same worker may have them at once");
    s.check_invariants().unwrap();
}

#[test]
fn a_claim_answer_stops_at_its_byte_budget() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 10, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let one = json_len(&claim(&mut s, T0, w, 1)[0]) + 1;
    let (got, _) = s.claim(T0, w, 64, one * 3 + one / 2).unwrap();
    assert_eq!(got.len(), 3, "as many as fit");
    assert!(got.iter().map(|l| json_len(l) + 1).sum::<usize>() <= one * 3 + one / 2);
    let (got, _) = s.claim(T0, w, 64, 1).unwrap();
    assert_eq!(got.len(), 1, "one lease always goes, whatever the budget");
    let leased = s.jobs.iter().filter(|j| j.kind() == StateKind::Leased).count();
    assert_eq!(leased, 5, "only what was answered is leased");
    s.check_invariants().unwrap();
}

#[test]
fn listings_page_by_bytes() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 20, 0, &[])).unwrap();
    let one = json_len(&s.job(JobId(1)).unwrap()) + 1;
    let (page, next) = s.list(&JobFilter::default(), None, 1000, one * 4);
    assert_eq!(page.len(), 4);
    assert_eq!(next, Some(JobId(4)));
    let mut seen = page.len();
    let mut after = next;
    while let Some(a) = after {
        let (page, next) = s.list(&JobFilter::default(), Some(a), 1000, one * 4);
        assert!(!page.is_empty() && page.len() <= 4);
        seen += page.len();
        after = next;
    }
    assert_eq!(seen, 20, "every job once, across pages");
    for i in 0..5 {
        register(&mut s, T0, &format!("w{i}"), &[]);
    }
    let (page, next) = s.workers(None, 1000, 1);
    assert_eq!(page.len(), 1);
    let (rest, last) = s.workers(next, 1000, usize::MAX);
    assert_eq!((rest.len(), last), (4, None));
}

#[test]
fn jobs_whose_action_expired_are_dead_not_leased() {
    let mut s = Scheduler::new(Config::default());
    let (ids, _, _) = s.submit(T0, sub(1, 3, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let running = claim(&mut s, T0, w, 1);
    let gone = action_gone_at(T0 + 3_600_000);
    // A claim at the moment the action is gone leases nothing and buries what was waiting.
    assert!(claim(&mut s, gone, w, 5).is_empty());
    for id in &ids[1..] {
        assert!(
            matches!(&s.job(*id).unwrap().state, JobState::Dead { reason } if reason.contains("action expired"))
        );
    }
    // The one already running may still finish.
    s.complete(gone + 1, w, running[0].lease, output()).unwrap();
    s.check_invariants().unwrap();
    // The reaper buries them too, without a claim.
    let (ids, _, _) = s.submit(T0, sub(2, 2, 0, &[])).unwrap();
    s.tick(gone);
    assert!(ids.iter().all(|id| matches!(s.job(*id).unwrap().state, JobState::Dead { .. })));
    s.check_invariants().unwrap();
}

#[test]
fn an_action_is_remembered_through_the_last_second_a_verifier_accepts_it() {
    let expires_s = (T0 + 3_600_000) / 1000;
    let skew = agenix_proto::envelope::CLOCK_SKEW_SECS;
    // A verifier at second expires_s + skew still accepts; the queue must still remember.
    let last_accepted_ms = (expires_s + skew) * 1000 + 999;
    assert!(action_gone_at(expires_s * 1000) > last_accepted_ms);
    assert_eq!(action_gone_at(expires_s * 1000), last_accepted_ms + 1);
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    s.tick(last_accepted_ms);
    let (again, dup, _) = s.submit(last_accepted_ms, sub(1, 1, 0, &[])).unwrap();
    assert!(dup && again == vec![JobId(1)], "a replay in the last second is still recognised");
}

#[test]
fn worker_records_expire_are_capped_and_bounded() {
    let cfg = Config { max_workers: 3, worker_ttl_ms: 1000, ..Config::default() };
    let mut s = Scheduler::new(cfg);
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let holder = register(&mut s, T0, "holder", &[]);
    claim(&mut s, T0, holder, 1);
    register(&mut s, T0, "a", &[]);
    register(&mut s, T0, "b", &[]);
    assert_eq!(s.register(T0, 99, key(), caps("c", &[])), Err(Refusal::TooManyWorkers(3)));
    // Past the TTL, idle workers are forgotten; one holding a lease is kept.
    s.tick(T0 + 1001);
    let (left, _) = s.workers(None, 10, usize::MAX);
    assert_eq!(left.iter().map(|w| (w.id, w.leases)).collect::<Vec<_>>(), [(holder, 1)]);
    assert_eq!(s.register(T0 + 1002, 99, key(), caps("c", &[])), Ok(99));
    let mut big = caps("d", &[]);
    big.labels = (0..40).map(|i| format!("l{i}")).collect();
    assert!(matches!(s.register(T0, 100, key(), big), Err(Refusal::BadWorker(_))));
    assert!(matches!(
        s.register(T0, 100, key(), caps(&"n".repeat(65), &[])),
        Err(Refusal::BadWorker(_))
    ));
    assert!(matches!(
        s.register(T0, 100, key(), caps("a\u{202e}b", &[])),
        Err(Refusal::BadWorker(_))
    ));
}

#[test]
fn a_worker_that_registers_again_keeps_its_id_and_leases() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let lease = lease_of(&claim(&mut s, T0, w, 1)[0]);
    assert_eq!(register(&mut s, T0 + 5, "w", &[]), w);
    s.complete(T0 + 6, w, lease, output()).unwrap();
}

#[test]
fn a_restarted_queue_gives_every_lease_a_full_lease() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = register(&mut s, T0, "w", &[]);
    let lease = lease_of(&claim(&mut s, T0, w, 1)[0]);
    let jobs: Vec<JobRecord> = s.jobs.iter().map(|j| j.record()).collect();
    let actions: Vec<_> = s.actions.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // The queue was down for 40 s, longer than the lease.
    let back = T0 + 40_000;
    let mut r = Scheduler::load(Config::default(), back, jobs, actions, s.next_job);
    assert!(r.tick(back + 29_000).is_empty(), "the worker has a lease's time to come back");
    let w = r.register(back, w, key(), caps("w", &[])).unwrap();
    r.heartbeat(back + 1, w, &[lease]).unwrap();
    r.complete(back + 2, w, lease, output()).unwrap();
    r.check_invariants().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Submit(u8, u8, i8),
    Claim(u8, u8),
    Beat(u8),
    Complete(u8),
    Fail(u8, bool),
    Release(u8),
    Unclaim(u8),
    Steal(u8, u8),
    Cancel(u8),
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), 0u8..4, any::<i8>()).prop_map(|(a, n, p)| Op::Submit(a, n, p)),
        (0u8..3, 1u8..4).prop_map(|(w, n)| Op::Claim(w, n)),
        (0u8..3).prop_map(Op::Beat),
        any::<u8>().prop_map(Op::Complete),
        (any::<u8>(), any::<bool>()).prop_map(|(j, r)| Op::Fail(j, r)),
        any::<u8>().prop_map(Op::Release),
        any::<u8>().prop_map(Op::Unclaim),
        (any::<u8>(), 0u8..3).prop_map(|(j, w)| Op::Steal(j, w)),
        any::<u8>().prop_map(Op::Cancel),
        any::<u16>().prop_map(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any sequence of operations keeps every index true, never revives a finished job,
    /// never lets an epoch go backwards, and never exceeds an attempt budget.
    #[test]
    fn invariants_hold_under_any_sequence(ops in proptest::collection::vec(op(), 1..120)) {
        let mut s = Scheduler::new(Config { lease_ms: 500, backoff_base_ms: 10, backoff_cap_ms: 100, ..Config::default() });
        let workers: Vec<u64> = (0..3).map(|i| register(&mut s, T0, &format!("w{i}"), &[])).collect();
        let mut held: Vec<(u64, LeaseRef)> = vec![];
        let mut now = T0;
        let mut seen: BTreeMap<JobId, (JobState, LeaseEpoch)> = BTreeMap::new();
        for op in ops {
            now += 7;
            match op {
                Op::Submit(a, n, p) => { let _ = s.submit(now, sub(a, n as usize, i32::from(p), &[])); }
                Op::Claim(w, n) => {
                    let worker = workers[w as usize];
                    if let Ok((got, _)) = s.claim(now, worker, u32::from(n), 600) {
                        held.extend(got.iter().map(|l| (worker, lease_of(l))));
                    }
                }
                Op::Beat(w) => {
                    let worker = workers[w as usize];
                    let mine: Vec<LeaseRef> = held.iter().filter(|(o, _)| *o == worker).map(|(_, l)| *l).collect();
                    let _ = s.heartbeat(now, worker, &mine);
                }
                Op::Complete(k) if !held.is_empty() => {
                    let (w, l) = held.remove(k as usize % held.len());
                    let _ = s.complete(now, w, l, output());
                }
                Op::Fail(k, r) if !held.is_empty() => {
                    let (w, l) = held.remove(k as usize % held.len());
                    let _ = s.fail(now, w, l, "x", r, u64::from(k) * 7919);
                }
                Op::Release(k) if !held.is_empty() => {
                    let (w, l) = held.remove(k as usize % held.len());
                    let before = s.job(l.job).map(|j| j.attempts);
                    if s.release(now, w, l, "local").is_ok() {
                        prop_assert_eq!(s.job(l.job).map(|j| j.attempts + 1), before, "release costs no attempt");
                    }
                }
                Op::Unclaim(k) if !held.is_empty() => {
                    let (w, l) = held.remove(k as usize % held.len());
                    let _ = s.unclaim(now, w, &[l]);
                }
                Op::Steal(k, thief) if !held.is_empty() => {
                    let (w, l) = held[k as usize % held.len()];
                    let thief = workers[thief as usize];
                    if thief != w {
                        let before = s.job(l.job);
                        let _ = s.complete(now, thief, l, output());
                        let _ = s.fail(now, thief, l, "x", false, 0);
                        let _ = s.release(now, thief, l, "x");
                        let _ = s.unclaim(now, thief, &[l]);
                        // A thief idle past the worker TTL is forgotten: its heartbeat is
                        // refused outright, which also extends nothing.
                        if let Ok((beat, _)) = s.heartbeat(now, thief, &[l]) {
                            prop_assert!(beat.extended.is_empty() && beat.cancelled.is_empty());
                        }
                        prop_assert_eq!(s.job(l.job), before, "another worker's lease is untouchable");
                    }
                }
                Op::Cancel(k) => { let _ = s.cancel(now, JobId(u64::from(k) % 40 + 1)); }
                Op::Tick(dt) => { now += u64::from(dt); let _ = s.tick(now); }
                _ => {}
            }
            prop_assert!(s.check_invariants().is_ok(), "{:?}", s.check_invariants());
            for job in s.jobs.iter().map(|j| j.record()) {
                if let Some((old, epoch)) = seen.get(&job.id) {
                    prop_assert!(job.epoch >= *epoch, "epoch went back for {}", job.id);
                    if old.is_terminal() {
                        prop_assert_eq!(&job.state, old, "a finished job changed");
                    }
                }
                seen.insert(job.id, (job.state.clone(), job.epoch));
            }
        }
    }
}

/// Applies `changes` to `kept`, as storage would.
fn keep(kept: &mut BTreeMap<JobId, JobRecord>, changes: Vec<Change>) {
    for c in changes {
        match c {
            Change::Job(j) => {
                kept.insert(j.id, j);
            }
            Change::DeleteJob(id) => {
                kept.remove(&id);
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the scheduler went through, it holds exactly the jobs storage kept, and
    /// those read back (in any order) make a scheduler with the same jobs, counts and
    /// indexes.
    #[test]
    fn what_storage_kept_reads_back_the_same(
        ops in proptest::collection::vec(op(), 1..120),
        order in 0u8..3,
    ) {
        let mut s = Scheduler::new(Config { lease_ms: 500, backoff_base_ms: 10, backoff_cap_ms: 100, ..Config::default() });
        let workers: Vec<u64> = (0..3).map(|i| register(&mut s, T0, &format!("w{i}"), &[])).collect();
        let mut held: Vec<(u64, LeaseRef)> = vec![];
        let mut kept = BTreeMap::new();
        let mut now = T0;
        for op in ops {
            now += 7;
            let changes = match op {
                Op::Submit(a, n, p) => s.submit(now, sub(a, n as usize, i32::from(p), &[])).map(|r| r.2).unwrap_or_default(),
                Op::Claim(w, n) => {
                    let worker = workers[w as usize];
                    s.claim(now, worker, u32::from(n), 600).map(|(got, c)| {
                        held.extend(got.iter().map(|l| (worker, lease_of(l))));
                        c
                    }).unwrap_or_default()
                }
                Op::Complete(k) if !held.is_empty() => {
                    let (w, l) = held.remove(k as usize % held.len());
                    s.complete(now, w, l, output()).map(|r| r.1).unwrap_or_default()
                }
                Op::Fail(k, r) if !held.is_empty() => {
                    let (w, l) = held.remove(k as usize % held.len());
                    s.fail(now, w, l, "x", r, u64::from(k) * 7919).map(|r| r.1).unwrap_or_default()
                }
                Op::Release(k) if !held.is_empty() => {
                    let (w, l) = held.remove(k as usize % held.len());
                    s.release(now, w, l, "local").map(|r| r.1).unwrap_or_default()
                }
                Op::Cancel(k) => s.cancel(now, JobId(u64::from(k) % 40 + 1)).map(|r| r.1).unwrap_or_default(),
                Op::Tick(dt) => { now += u64::from(dt); s.tick(now) }
                _ => vec![],
            };
            keep(&mut kept, changes);
        }
        let stored: Vec<JobRecord> = kept.into_values().collect();
        let mut records = stored.clone();
        match order {
            0 => {}
            1 => records.reverse(),
            _ => {
                // Odd ids first, then even ones.
                records.sort_by_key(|j| (j.id.0 % 2 == 0, j.id.0));
            }
        }
        let actions: Vec<_> = s.actions.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // Loaded at time 0, no lease is lengthened: the records must come back as they were.
        let back = Scheduler::load(*s.config(), 0, records, actions, s.next_job);
        prop_assert!(back.check_invariants().is_ok(), "{:?}", back.check_invariants());
        let mine: Vec<JobRecord> = s.jobs.iter().map(|j| j.record()).collect();
        let theirs: Vec<JobRecord> = back.jobs.iter().map(|j| j.record()).collect();
        // Memory holds what storage does, before and after reading it back.
        prop_assert_eq!(&mine, &stored);
        prop_assert_eq!(&theirs, &stored);
        prop_assert_eq!(s.stats(now).jobs, back.stats(now).jobs);
        prop_assert_eq!(&s.ready, &back.ready);
        prop_assert_eq!(&s.delayed, &back.delayed);
        prop_assert_eq!(&s.leases, &back.leases);
    }
}

#[test]
fn a_submission_past_the_last_job_id_is_refused_whole() {
    // Only a damaged store gets here; ids must not wrap over jobs that exist.
    let mut s = Scheduler::load(Config::default(), T0, vec![], vec![], u64::MAX - 2);
    let err = s.submit(T0, sub(1, 3, 0, &[])).unwrap_err();
    assert_eq!(err, Refusal::NoIds(3, u64::MAX - 2));
    assert!(err.to_string().contains("no job ids are left"), "{err}");
    assert!(s.action(&ActionId::from_random([1; 16])).is_none(), "nothing of it is kept");
    // Two still fit.
    let (ids, _, _) = s.submit(T0, sub(2, 2, 0, &[])).unwrap();
    assert_eq!(ids, [JobId(u64::MAX - 2), JobId(u64::MAX - 1)]);
    assert!(s.submit(T0, sub(3, 0, 0, &[])).is_err(), "u64::MAX itself is never an id");
    s.check_invariants().unwrap();
}
