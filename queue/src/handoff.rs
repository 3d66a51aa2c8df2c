//! Claims waiting for work, so that a submission can lease its jobs to them in the commit
//! that records it: one durable write where a submission and the lease that follows it
//! took two.
//!
//! A waiting claim registers here and waits for leases, for the queue's `ready` signal,
//! for its deadline or for its worker to go. A submission takes the oldest waiters whose
//! wants cover its jobs, leases to them in its own commit (as their claims would:
//! `Scheduler::claim`), and hands them the leases once that commit is durable. A claim
//! that stops waiting (woken, out of time, or its worker gone) while a submission holds it
//! waits for that submission's answer: it returns the leases, or, when its worker has gone,
//! has them taken back at no attempt's cost. A waiter given nothing finds its channel
//! closed and claims again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use agenix_proto::KeyId;
use agenix_proto::job::Lease;
use tokio::sync::oneshot;

use crate::limits::lock;

/// The claims waiting now.
#[derive(Debug, Default)]
pub struct Waiting {
    next: AtomicU64,
    list: Mutex<Vec<Waiter>>,
}

/// One waiting claim.
#[derive(Debug)]
pub struct Waiter {
    id: u64,
    /// The worker claiming.
    pub worker: u64,
    /// The key its connection proved, checked again before it is leased anything.
    pub key: Option<KeyId>,
    /// Most jobs it wants.
    pub max: u32,
    /// When its claim began (a worker found unresponsive since is leased nothing).
    pub since: u64,
    tx: oneshot::Sender<Vec<Lease>>,
}

impl Waiting {
    /// Registers a claim; its id (to [`Waiting::leave`]) and where its leases come.
    pub fn register(
        &self,
        worker: u64,
        key: Option<KeyId>,
        max: u32,
        since: u64,
    ) -> (u64, oneshot::Receiver<Vec<Lease>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.list).push(Waiter { id, worker, key, max, since, tx });
        (id, rx)
    }

    /// The claim `id` stops waiting; whether it was still registered. When it was not, a
    /// submission has taken it and answers it (or drops its sender) once that submission's
    /// commit is done: the claim must wait for that answer, not drop it.
    pub fn leave(&self, id: u64) -> bool {
        let mut list = lock(&self.list);
        let before = list.len();
        list.retain(|w| w.id != id);
        list.len() != before
    }

    /// Takes the oldest waiters still waiting whose wants together cover `jobs`.
    pub fn take(&self, jobs: usize) -> Vec<Waiter> {
        let mut list = lock(&self.list);
        list.retain(|w| !w.tx.is_closed());
        let mut wanted = 0usize;
        let n = list
            .iter()
            .take_while(|w| {
                let more = wanted < jobs;
                wanted = wanted.saturating_add(w.max as usize);
                more
            })
            .count();
        list.drain(..n).collect()
    }
}

impl Waiter {
    /// Hands the waiter its leases; they come back if it stopped waiting.
    pub fn answer(self, leases: Vec<Lease>) -> Result<(), Vec<Lease>> {
        self.tx.send(leases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiters_covering_the_jobs_are_taken_and_gone_ones_skipped() {
        let w = Waiting::default();
        let (_a, ra) = w.register(1, None, 2, 0);
        let (_b, rb) = w.register(2, None, 1, 0);
        let (c, _rc) = w.register(3, None, 1, 0);
        let (_d, _rd) = w.register(4, None, 1, 0);
        drop(rb);
        assert!(w.leave(c));
        assert!(!w.leave(c), "left already");
        let taken: Vec<u64> = w.take(3).iter().map(|t| t.worker).collect();
        assert_eq!(taken, [1, 4], "1 wants 2, 2 is gone, 3 left, 4 wants the third");
        assert!(w.take(1).is_empty());
        drop(ra);
    }

    #[test]
    fn one_job_takes_one_waiter() {
        let w = Waiting::default();
        let _r: Vec<_> = (0..3).map(|i| w.register(i, None, 4, 0)).collect();
        assert_eq!(w.take(1).len(), 1);
        assert_eq!(w.take(1).len(), 1);
    }
}
