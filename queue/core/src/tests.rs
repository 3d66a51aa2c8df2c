//! The scheduler's rules, on a virtual clock.

use proptest::prelude::*;

use super::*;

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

fn sub(n: u8, inputs: usize, priority: i32, tools: &[&str]) -> Submission {
    Submission {
        action: ActionId::from_random([n; 16]),
        payload: Digest::of(&[n]),
        expires_at: T0 + 3_600_000,
        plan: Digest::of(b"plan"),
        inputs: (0..inputs)
            .map(|i| InputRef { digest: Digest::of(&[n, i as u8]), size: 1 })
            .collect(),
        priority,
        max_attempts: 3,
        requirements: reqs(tools),
    }
}

fn lease_of(j: &JobRecord) -> LeaseRef {
    LeaseRef { job: j.id, epoch: j.epoch }
}

fn output() -> JobOutput {
    JobOutput { succeeded: true, reports: vec![], output: None }
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
    let plain = s.register(T0, caps("plain", &[]));
    let (got, _) = s.claim(T0, plain, 10).unwrap();
    let ids: Vec<JobId> = got.iter().map(|j| j.id).collect();
    assert_eq!(ids, [high[0], low[0]], "the native job needs a worker with sort");
    let sorter = s.register(T0, caps("sorter", &["sort"]));
    let (got, _) = s.claim(T0, sorter, 10).unwrap();
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), native);
    assert!(matches!(got[0].state, JobState::Leased { ref worker, .. } if worker == "sorter"));
    s.check_invariants().unwrap();
}

#[test]
fn q01_expired_lease_is_rerun_elsewhere_with_the_next_attempt() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let a = s.register(T0, caps("a", &[]));
    let b = s.register(T0, caps("b", &[]));
    let (got, _) = s.claim(T0, a, 1).unwrap();
    let first = lease_of(&got[0]);
    assert_eq!(got[0].attempts, 1);
    // Worker a dies: no heartbeat. Just before the deadline nothing happens; after it the job
    // is queued again.
    assert!(s.tick(T0 + 29_999).is_empty());
    let changes = s.tick(T0 + 30_001);
    assert_eq!(changes.len(), 1);
    let (got, _) = s.claim(T0 + 30_002, b, 1).unwrap();
    assert_eq!(got[0].attempts, 2);
    assert!(got[0].epoch > first.epoch);
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
    let w = s.register(T0, caps("w", &[]));
    let (got, _) = s.claim(T0, w, 1).unwrap();
    let lease = lease_of(&got[0]);
    for minute in 1..=10u64 {
        let now = T0 + minute * 10_000;
        let (beat, _) = s.heartbeat(now, w, &[lease]).unwrap();
        assert_eq!(beat.extended, [lease]);
        assert!(s.tick(now).is_empty());
    }
    let other = s.register(T0, caps("other", &[]));
    assert!(s.claim(T0 + 100_000, other, 1).unwrap().0.is_empty(), "never handed out twice");
    s.complete(T0 + 100_001, w, lease, output()).unwrap();
    assert_eq!(s.job(lease.job).unwrap().attempts, 1);
}

#[test]
fn q04_poison_job_backs_off_with_jitter_then_dies() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = s.register(T0, caps("w", &[]));
    let mut now = T0;
    for attempt in 1..=3u32 {
        let (got, _) = s.claim(now, w, 1).unwrap();
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
            assert!(s.claim(not_before - 1, w, 1).unwrap().0.is_empty());
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
    let a = s.register(T0, caps("a", &[]));
    let b = s.register(T0, caps("b", &[]));
    s.claim(T0, a, 1).unwrap();
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
    let w = s.register(T0, caps("w", &[]));
    let (got, _) = s.claim(T0, w, 1).unwrap();
    let (state, _) =
        s.fail(T0, w, lease_of(&got[0]), "signature does not verify", false, 7).unwrap();
    assert_eq!(state, JobState::Dead { reason: "signature does not verify".into() });
}

#[test]
fn a_job_whose_task_failed_is_dead_with_the_task_named_and_not_retried() {
    use agenix_proto::report::TaskReport;
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 1, 0, &[])).unwrap();
    let w = s.register(T0, caps("w", &[]));
    let (got, _) = s.claim(T0, w, 1).unwrap();
    let task = |n: &str| n.parse::<agenix_proto::TaskId>().unwrap();
    let out = JobOutput {
        succeeded: false,
        reports: vec![
            TaskReport::not_run(task("fetch"), Outcome::Exited { code: 0 }),
            TaskReport::not_run(task("parse"), Outcome::OutOfFuel),
            TaskReport::not_run(task("print"), Outcome::Skipped { because: task("parse") }),
        ],
        output: None,
    };
    let (state, _) = s.complete(T0, w, lease_of(&got[0]), out.clone()).unwrap();
    assert_eq!(state, JobState::Dead { reason: "task parse: out-of-fuel".into() });
    let rec = s.job(got[0].id).unwrap();
    assert_eq!((rec.attempts, rec.output.as_ref()), (1, Some(&out)));
    assert!(s.claim(T0 + 3_600_000, w, 1).unwrap().0.is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn q08_cancel_queued_at_once_and_leased_through_the_worker() {
    let mut s = Scheduler::new(Config::default());
    let (ids, _, _) = s.submit(T0, sub(1, 2, 0, &[])).unwrap();
    let (state, _) = s.cancel(T0, ids[0]).unwrap();
    assert_eq!(state, JobState::Cancelled);
    let w = s.register(T0, caps("w", &[]));
    let (got, _) = s.claim(T0, w, 5).unwrap();
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
    let w = s.register(T0, caps("w", &[]));
    s.claim(T0, w, 1).unwrap();
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
    let changes = s.tick(T0 + 3_600_000 + SKEW_MS + 1);
    assert!(changes.contains(&Change::DeleteAction(ActionId::from_random([1; 16]))));
    s.check_invariants().unwrap();
}

#[test]
fn reload_rebuilds_the_same_scheduler() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 4, 3, &[])).unwrap();
    let w = s.register(T0, caps("w", &[]));
    let (got, _) = s.claim(T0, w, 2).unwrap();
    s.fail(T0, w, lease_of(&got[0]), "x", true, 99).unwrap();
    let jobs: Vec<JobRecord> = (1..=4).filter_map(|i| s.job(JobId(i)).cloned()).collect();
    let actions =
        vec![(ActionId::from_random([1; 16]), s.actions[&ActionId::from_random([1; 16])].clone())];
    let r = Scheduler::load(Config::default(), jobs, actions, 5);
    r.check_invariants().unwrap();
    assert_eq!(r.stats(T0).jobs, s.stats(T0).jobs);
    assert_eq!(r.next_job, 5);
}

#[test]
fn listing_pages_and_filters() {
    let mut s = Scheduler::new(Config::default());
    s.submit(T0, sub(1, 5, 0, &[])).unwrap();
    s.submit(T0, sub(2, 2, 0, &[])).unwrap();
    let (page, next) = s.list(&JobFilter::default(), None, 3);
    assert_eq!(page.iter().map(|j| j.id.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(next, Some(JobId(3)));
    let (page, next) = s.list(&JobFilter::default(), next, 10);
    assert_eq!(page.len(), 4);
    assert_eq!(next, None);
    let f = JobFilter { action: Some(ActionId::from_random([2; 16])), ..JobFilter::default() };
    assert_eq!(s.list(&f, None, 10).0.len(), 2);
    let f = JobFilter { state: Some("leased".into()), ..JobFilter::default() };
    assert!(s.list(&f, None, 10).0.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Submit(u8, u8, i8),
    Claim(u8, u8),
    Beat(u8),
    Complete(u8),
    Fail(u8, bool),
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
        let workers: Vec<u64> = (0..3).map(|i| s.register(T0, caps(&format!("w{i}"), &[]))).collect();
        let mut held: Vec<(u64, LeaseRef)> = vec![];
        let mut now = T0;
        let mut seen: BTreeMap<JobId, (JobState, LeaseEpoch)> = BTreeMap::new();
        for op in ops {
            now += 7;
            match op {
                Op::Submit(a, n, p) => { let _ = s.submit(now, sub(a, n as usize, i32::from(p), &[])); }
                Op::Claim(w, n) => {
                    let worker = workers[w as usize];
                    if let Ok((got, _)) = s.claim(now, worker, u32::from(n)) {
                        held.extend(got.iter().map(|j| (worker, lease_of(j))));
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
                Op::Cancel(k) => { let _ = s.cancel(now, JobId(u64::from(k) % 40 + 1)); }
                Op::Tick(dt) => { now += u64::from(dt); let _ = s.tick(now); }
                _ => {}
            }
            prop_assert!(s.check_invariants().is_ok(), "{:?}", s.check_invariants());
            for job in s.jobs.values() {
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
