//! The scheduler's jobs, held compactly. The jobs of one submission share everything that
//! never changes (their action, plan, requirements, priority, attempt budget and submission
//! time): a [`Batch`] holds that once, each job's input, and each job's changing state in a
//! 40-byte [`Slot`]. What only some jobs have (a lease's worker, a failure, a result) is
//! boxed beside the slot. A million queued jobs of a thousand submissions take about 80
//! bytes each here, against about a kilobyte as whole records.
//!
//! A job's id is its batch's first id plus its position, so batches are found by id in a
//! map of first ids; they never overlap. Submissions make whole batches; jobs read back from
//! storage join the batch they extend or start one, so any set of records is held exactly
//! (records that fit no batch get batches of their own).

use std::collections::BTreeMap;
use std::sync::Arc;

use agenix_proto::action::InputRef;
use agenix_proto::job::{
    Declined, JobId, JobOutput, JobRecord, JobState, LeaseEpoch, Requirements, StateKind,
};
use agenix_proto::{ActionId, Digest};

/// Most empty positions a job read back from storage may leave between itself and the
/// batch it extends (forgotten jobs of the same submission); past that it starts a batch.
const MAX_GAP: u64 = 4096;

/// What every job of one submission shares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shared {
    action: ActionId,
    plan: Digest,
    requirements: Arc<Requirements>,
    priority: i32,
    max_attempts: u32,
    submitted_at: u64,
    /// Whether its jobs have inputs (an action naming none makes one job without).
    with_input: bool,
}

/// Jobs with consecutive ids that share one [`Shared`].
#[derive(Debug, Clone)]
struct Batch {
    shared: Shared,
    /// The index (in its action's inputs) of the job in the first position.
    index0: u32,
    /// Each position's input (when `shared.with_input`; a placeholder where no job is).
    inputs: Vec<InputRef>,
    slots: Vec<Option<Slot>>,
    /// Positions holding a job.
    live: usize,
}

/// A job's changing state.
#[derive(Debug, Clone)]
struct Slot {
    /// `Queued`: not before; `Leased`: the deadline.
    at: u64,
    epoch: LeaseEpoch,
    updated_at: u64,
    attempts: u32,
    kind: StateKind,
    cancel_requested: bool,
    more: Option<Box<More>>,
}

/// What only some jobs have.
#[derive(Debug, Clone, Default)]
struct More {
    /// While leased: the epoch, the worker's name and id.
    lease: Option<(LeaseEpoch, String, u64)>,
    /// When dead: why.
    dead: Option<String>,
    last_error: Option<String>,
    declined: Vec<Declined>,
    output: Option<JobOutput>,
}

impl More {
    fn is_empty(&self) -> bool {
        self.lease.is_none()
            && self.dead.is_none()
            && self.last_error.is_none()
            && self.declined.is_empty()
            && self.output.is_none()
    }
}

/// `job` taken apart: what it shares with its submission, its input, and its state.
fn split(job: JobRecord, requirements: Arc<Requirements>) -> (Shared, Option<InputRef>, Slot) {
    let mut more = More {
        last_error: job.last_error,
        declined: job.declined,
        output: job.output,
        ..More::default()
    };
    let kind = job.state.kind();
    let at = match job.state {
        JobState::Queued { not_before } => not_before,
        JobState::Leased { epoch, worker, worker_id, deadline } => {
            more.lease = Some((epoch, worker, worker_id));
            deadline
        }
        JobState::Dead { reason } => {
            more.dead = Some(reason);
            0
        }
        JobState::Succeeded | JobState::Cancelled => 0,
    };
    let shared = Shared {
        action: job.action,
        plan: job.plan,
        requirements,
        priority: job.priority,
        max_attempts: job.max_attempts,
        submitted_at: job.submitted_at,
        with_input: job.input.is_some(),
    };
    let slot = Slot {
        at,
        epoch: job.epoch,
        updated_at: job.updated_at,
        attempts: job.attempts,
        kind,
        cancel_requested: job.cancel_requested,
        more: (!more.is_empty()).then(|| Box::new(more)),
    };
    (shared, job.input, slot)
}

/// One job, borrowed from the scheduler: its fields without copying the record.
#[derive(Debug, Clone, Copy)]
pub struct JobRef<'a> {
    id: JobId,
    batch: &'a Batch,
    pos: usize,
    slot: &'a Slot,
}

impl<'a> JobRef<'a> {
    /// Its id.
    pub fn id(&self) -> JobId {
        self.id
    }
    /// The action it came from.
    pub fn action(&self) -> &'a ActionId {
        &self.batch.shared.action
    }
    /// The digest of its plan's payload.
    pub fn plan(&self) -> Digest {
        self.batch.shared.plan
    }
    /// Its input (none: empty stdin).
    pub fn input(&self) -> Option<&'a InputRef> {
        self.batch.shared.with_input.then(|| self.batch.inputs.get(self.pos)).flatten()
    }
    /// Its priority (higher runs first).
    pub fn priority(&self) -> i32 {
        self.batch.shared.priority
    }
    /// Attempts allowed.
    pub fn max_attempts(&self) -> u32 {
        self.batch.shared.max_attempts
    }
    /// What a worker needs to run it.
    pub fn requirements(&self) -> &'a Requirements {
        &self.batch.shared.requirements
    }
    /// Which of its action's inputs it runs.
    pub fn index(&self) -> u32 {
        self.batch.index0.saturating_add(self.pos as u32)
    }
    /// Where it stands, without the details.
    pub fn kind(&self) -> StateKind {
        self.slot.kind
    }
    /// Whether nothing more will happen to it.
    pub fn is_terminal(&self) -> bool {
        matches!(self.slot.kind, StateKind::Succeeded | StateKind::Dead | StateKind::Cancelled)
    }
    /// Leases granted so far.
    pub fn attempts(&self) -> u32 {
        self.slot.attempts
    }
    /// The last lease's epoch.
    pub fn epoch(&self) -> LeaseEpoch {
        self.slot.epoch
    }
    /// When it last changed (Unix ms).
    pub fn updated_at(&self) -> u64 {
        self.slot.updated_at
    }
    /// Whether a planner asked to cancel it while it was leased.
    pub fn cancel_requested(&self) -> bool {
        self.slot.cancel_requested
    }
    fn more(&self) -> Option<&'a More> {
        self.slot.more.as_deref()
    }
    /// The lease's epoch and worker id, while leased.
    pub fn lease(&self) -> Option<(LeaseEpoch, u64)> {
        match self.slot.kind {
            StateKind::Leased => self.more()?.lease.as_ref().map(|(e, _, w)| (*e, *w)),
            _ => None,
        }
    }
    /// Workers that gave it back.
    pub fn declined(&self) -> &'a [Declined] {
        self.more().map_or(&[], |m| &m.declined)
    }
    /// Its result, once reported.
    pub fn output(&self) -> Option<&'a JobOutput> {
        self.more()?.output.as_ref()
    }
    /// Its state, whole.
    pub fn state(&self) -> JobState {
        let more = self.more();
        match self.slot.kind {
            StateKind::Queued => JobState::Queued { not_before: self.slot.at },
            StateKind::Leased => {
                let (epoch, worker, worker_id) = more.and_then(|m| m.lease.clone()).unwrap_or((
                    self.slot.epoch,
                    String::new(),
                    0,
                ));
                JobState::Leased { epoch, worker, worker_id, deadline: self.slot.at }
            }
            StateKind::Succeeded => JobState::Succeeded,
            StateKind::Dead => {
                JobState::Dead { reason: more.and_then(|m| m.dead.clone()).unwrap_or_default() }
            }
            StateKind::Cancelled => JobState::Cancelled,
        }
    }
    /// The whole record.
    pub fn record(&self) -> JobRecord {
        let shared = &self.batch.shared;
        let more = self.more();
        JobRecord {
            id: self.id,
            action: shared.action.clone(),
            plan: shared.plan,
            input: self.input().cloned(),
            index: self.index(),
            priority: shared.priority,
            max_attempts: shared.max_attempts,
            attempts: self.slot.attempts,
            epoch: self.slot.epoch,
            state: self.state(),
            cancel_requested: self.slot.cancel_requested,
            requirements: Requirements::clone(&shared.requirements),
            submitted_at: shared.submitted_at,
            updated_at: self.slot.updated_at,
            last_error: more.and_then(|m| m.last_error.clone()),
            declined: more.map(|m| m.declined.clone()).unwrap_or_default(),
            output: more.and_then(|m| m.output.clone()),
        }
    }
}

/// Every job the scheduler holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Jobs {
    /// By the id of the first position.
    batches: BTreeMap<u64, Batch>,
}

impl Batch {
    fn job(&self, first: u64, pos: usize) -> Option<JobRef<'_>> {
        let slot = self.slots.get(pos)?.as_ref()?;
        Some(JobRef { id: JobId(first + pos as u64), batch: self, pos, slot })
    }

    /// Whether a job sharing `shared`, with `index`, may take position `pos`.
    fn fits(&self, shared: &Shared, index: u32, pos: u64) -> bool {
        self.shared == *shared && u64::from(self.index0) + pos == u64::from(index)
    }

    fn set(&mut self, pos: usize, input: Option<InputRef>, slot: Slot) {
        let placeholder = InputRef { digest: Digest::from_bytes([0; 32]), size: 0 };
        if self.slots.len() <= pos {
            self.slots.resize(pos + 1, None);
            if self.shared.with_input {
                self.inputs.resize(pos + 1, placeholder);
            }
        }
        if let (Some(input), Some(place)) = (input, self.inputs.get_mut(pos)) {
            *place = input;
        }
        if self.slots[pos].replace(slot).is_none() {
            self.live += 1;
        }
    }
}

impl Jobs {
    /// The batch holding `id`, with its first id.
    fn batch_of(&self, id: u64) -> Option<(u64, &Batch)> {
        let (first, b) = self.batches.range(..=id).next_back()?;
        (id - first < b.slots.len() as u64).then_some((*first, b))
    }

    /// One job.
    pub(crate) fn get(&self, id: JobId) -> Option<JobRef<'_>> {
        let (first, b) = self.batch_of(id.0)?;
        b.job(first, (id.0 - first) as usize)
    }

    /// The requirements to share with a new batch: the same ones as the batch before it
    /// when they are equal (most submissions repeat a plan), else `own`.
    fn interned(&self, before: u64, own: Requirements) -> Arc<Requirements> {
        match self.batches.range(..before).next_back() {
            Some((_, b)) if *b.shared.requirements == own => b.shared.requirements.clone(),
            _ => Arc::new(own),
        }
    }

    /// A submission's jobs: ids `first..`, one per input (one without an input when
    /// `inputs` is empty), all queued at `now`. Returns their ids.
    #[allow(clippy::too_many_arguments, reason = "the fields of a submission, each used once")]
    pub(crate) fn submit(
        &mut self,
        first: u64,
        action: ActionId,
        plan: Digest,
        requirements: Requirements,
        priority: i32,
        max_attempts: u32,
        inputs: Vec<InputRef>,
        now: u64,
    ) -> Vec<JobId> {
        let n = inputs.len().max(1);
        let slot = Slot {
            at: 0,
            epoch: LeaseEpoch(0),
            updated_at: now,
            attempts: 0,
            kind: StateKind::Queued,
            cancel_requested: false,
            more: None,
        };
        let shared = Shared {
            action,
            plan,
            requirements: self.interned(first, requirements),
            priority,
            max_attempts,
            submitted_at: now,
            with_input: !inputs.is_empty(),
        };
        let batch = Batch { shared, index0: 0, inputs, slots: vec![Some(slot); n], live: n };
        self.batches.insert(first, batch);
        (first..).take(n).map(JobId).collect()
    }

    /// Stores `job`, replacing the job with its id. Its shared part must be the one it was
    /// submitted with: only its state changes.
    pub(crate) fn insert(&mut self, job: JobRecord) {
        let id = job.id.0;
        let index = job.index;
        let held = self.batch_of(id).map(|(first, b)| (first, Arc::clone(&b.shared.requirements)));
        // Share the requirements of the batch the job lands in, or of the one before.
        let requirements = match &held {
            Some((_, r)) if **r == job.requirements => Arc::clone(r),
            _ => self.interned(id.saturating_add(1), job.requirements.clone()),
        };
        let (shared, input, slot) = split(job, requirements);
        if let Some((first, _)) = held {
            let pos = id - first;
            let fits = self.batches.get(&first).is_some_and(|b| b.fits(&shared, index, pos));
            if fits {
                if let Some(b) = self.batches.get_mut(&first) {
                    b.set(pos as usize, input, slot);
                }
                return;
            }
            // Held by a batch it does not fit (only storage written otherwise): a batch of
            // its own, between the two halves of that one.
            self.remove(JobId(id));
            self.cut(first, pos);
        } else if let Some((&first, b)) = self.batches.range(..id).next_back() {
            let end = first + b.slots.len() as u64;
            if id - end <= MAX_GAP && b.fits(&shared, index, id - first) {
                if let Some(b) = self.batches.get_mut(&first) {
                    b.set((id - first) as usize, input, slot);
                }
                return;
            }
        }
        let mut batch = Batch { shared, index0: index, inputs: vec![], slots: vec![], live: 0 };
        batch.set(0, input, slot);
        self.batches.insert(id, batch);
    }

    /// Splits the batch at `first` around position `pos` (which holds no job): the
    /// positions after it become a batch of their own.
    fn cut(&mut self, first: u64, pos: u64) {
        let Some(b) = self.batches.get_mut(&first) else { return };
        let at = pos as usize;
        let tail_slots = b.slots.split_off((at + 1).min(b.slots.len()));
        let tail_inputs = b.inputs.split_off((at + 1).min(b.inputs.len()));
        b.slots.truncate(at);
        b.inputs.truncate(at);
        let tail_live = tail_slots.iter().flatten().count();
        b.live -= tail_live;
        let tail = Batch {
            shared: b.shared.clone(),
            index0: b.index0.saturating_add(pos as u32).saturating_add(1),
            inputs: tail_inputs,
            slots: tail_slots,
            live: tail_live,
        };
        let empty = b.live == 0;
        if empty {
            self.batches.remove(&first);
        }
        if tail.live > 0 {
            self.batches.insert(first + pos + 1, tail);
        }
    }

    /// Forgets a job; returns it.
    pub(crate) fn remove(&mut self, id: JobId) -> Option<JobRecord> {
        let (first, b) = self.batch_of(id.0)?;
        let pos = (id.0 - first) as usize;
        let record = b.job(first, pos)?.record();
        let b = self.batches.get_mut(&first)?;
        b.slots[pos] = None;
        b.live -= 1;
        if b.live == 0 {
            self.batches.remove(&first);
        } else if pos + 1 == b.slots.len() {
            // Trailing empty positions hold nothing.
            while b.slots.last().is_some_and(Option::is_none) {
                b.slots.pop();
            }
            b.inputs.truncate(b.slots.len());
        }
        Some(record)
    }

    /// Every job, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = JobRef<'_>> {
        self.from(JobId(0))
    }

    /// Jobs from `start` on, by id.
    pub(crate) fn from(&self, start: JobId) -> impl Iterator<Item = JobRef<'_>> {
        let begin = self.batch_of(start.0).map_or(start.0, |(first, _)| first);
        self.batches.range(begin..).flat_map(move |(&first, b)| {
            let skip = start.0.saturating_sub(first) as usize;
            (skip..b.slots.len()).filter_map(move |pos| b.job(first, pos))
        })
    }

    /// Jobs before `end`, newest first.
    pub(crate) fn before(&self, end: JobId) -> impl Iterator<Item = JobRef<'_>> {
        self.batches.range(..end.0).rev().flat_map(move |(&first, b)| {
            let n = (end.0 - first).min(b.slots.len() as u64) as usize;
            (0..n).rev().filter_map(move |pos| b.job(first, pos))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agenix_proto::Limits;

    fn input(n: u8) -> InputRef {
        InputRef { digest: Digest::from_bytes([n; 32]), size: u64::from(n) }
    }

    fn requirements(wasm: bool) -> Requirements {
        Requirements {
            tools: Default::default(),
            mounts: Default::default(),
            wasm,
            limits: Limits {
                fuel: 0,
                memory_bytes: 0,
                timeout_ms: 0,
                output_bytes: 0,
                pids: 0,
                file_bytes: 0,
            },
        }
    }

    fn submitted(jobs: &mut Jobs, first: u64, action: &str, inputs: usize) -> Vec<JobRecord> {
        let inputs = (0..inputs).map(|i| input((i % 250) as u8 + 1)).collect();
        let action: ActionId = action.parse().unwrap();
        let plan = Digest::of(b"plan");
        let ids = jobs.submit(first, action, plan, requirements(true), 3, 2, inputs, 10);
        ids.iter().map(|id| jobs.get(*id).unwrap().record()).collect()
    }

    fn action(n: u8) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn every_state_survives_the_round_trip() {
        let mut jobs = Jobs::default();
        let records = submitted(&mut jobs, 1, &action(1), 5);
        assert_eq!(records.len(), 5);
        assert_eq!(records[2].input, Some(input(3)));
        assert_eq!(records[2].index, 2);
        let states = [
            JobState::Queued { not_before: 77 },
            JobState::Leased {
                epoch: LeaseEpoch(4),
                worker: "w".into(),
                worker_id: 9,
                deadline: 5,
            },
            JobState::Succeeded,
            JobState::Dead { reason: "no".into() },
            JobState::Cancelled,
        ];
        for (mut job, state) in records.into_iter().zip(states) {
            job.state = state;
            job.attempts = 2;
            job.epoch = LeaseEpoch(4);
            job.last_error = Some("e".into());
            job.cancel_requested = true;
            job.updated_at = 99;
            job.declined =
                vec![Declined { worker: "x".into(), worker_id: 1, reason: "r".into(), at: 3 }];
            jobs.insert(job.clone());
            assert_eq!(jobs.get(job.id).unwrap().record(), job);
        }
        assert_eq!(jobs.iter().count(), 5);
    }

    #[test]
    fn records_read_back_make_the_same_batches() {
        let mut made = Jobs::default();
        let mut all = submitted(&mut made, 1, &action(1), 3);
        all.extend(submitted(&mut made, 4, &action(2), 0));
        all.extend(submitted(&mut made, 5, &action(3), 4));
        made.remove(JobId(6));
        all.retain(|j| j.id != JobId(6));
        let mut read = Jobs::default();
        for job in all.iter().cloned() {
            read.insert(job);
        }
        assert_eq!(read.batches.len(), 3, "{:?}", read.batches.keys().collect::<Vec<_>>());
        let back: Vec<JobRecord> = read.iter().map(|j| j.record()).collect();
        assert_eq!(back, all);
        // The batches share one set of requirements.
        let r: Vec<_> =
            read.batches.values().map(|b| Arc::as_ptr(&b.shared.requirements)).collect();
        assert!(r.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_record_that_fits_no_batch_is_held_exactly() {
        let mut jobs = Jobs::default();
        let mut all = submitted(&mut jobs, 1, &action(1), 5);
        jobs.remove(JobId(3));
        // A record at a free position of another batch, with other shared parts.
        let mut odd = all[2].clone();
        odd.action = action(9).parse().unwrap();
        odd.priority = -4;
        odd.index = 0;
        odd.input = None;
        jobs.insert(odd.clone());
        all[2] = odd;
        let back: Vec<JobRecord> = jobs.iter().map(|j| j.record()).collect();
        assert_eq!(back, all);
        assert_eq!(jobs.iter().count(), 5);
        let ids: Vec<u64> = jobs.before(JobId(5)).map(|j| j.id().0).collect();
        assert_eq!(ids, [4, 3, 2, 1]);
        let ids: Vec<u64> = jobs.from(JobId(3)).map(|j| j.id().0).collect();
        assert_eq!(ids, [3, 4, 5]);
        // Replacing a job with one of other shared parts keeps the others.
        let mut other = all[0].clone();
        other.max_attempts = 7;
        jobs.insert(other.clone());
        all[0] = other;
        let back: Vec<JobRecord> = jobs.iter().map(|j| j.record()).collect();
        assert_eq!(back, all);
    }

    #[test]
    fn a_record_read_back_extends_its_batch_across_at_most_max_gap_forgotten_jobs() {
        let far = MAX_GAP as usize + 2;
        let mut made = Jobs::default();
        let all = submitted(&mut made, 1, &action(1), far + 1);
        // Job 1, then the one MAX_GAP positions further (the jobs between forgotten): one
        // batch. One position more: a batch of its own.
        for (last, batches) in [(MAX_GAP as usize + 1, 1), (far, 2)] {
            let mut read = Jobs::default();
            read.insert(all[0].clone());
            read.insert(all[last].clone());
            assert_eq!(read.batches.len(), batches, "job {} read back", last + 1);
            let back: Vec<JobRecord> = read.iter().map(|j| j.record()).collect();
            assert_eq!(back, [all[0].clone(), all[last].clone()]);
        }
    }

    #[test]
    fn removing_every_job_leaves_nothing() {
        let mut jobs = Jobs::default();
        submitted(&mut jobs, 1, &action(1), 3);
        for id in [3, 1, 2] {
            assert!(jobs.remove(JobId(id)).is_some());
            assert!(jobs.remove(JobId(id)).is_none());
        }
        assert_eq!(jobs.iter().count(), 0);
        assert!(jobs.batches.is_empty());
        assert_eq!(jobs.iter().count(), 0);
    }

    #[test]
    fn a_slot_is_forty_bytes() {
        assert_eq!(size_of::<Option<Slot>>(), 40);
    }
}
