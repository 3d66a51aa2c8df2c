//! Who may connect and how fast each may ask: connections per address, failed logins per
//! address, and request budgets by role.
//!
//! - Before it authenticates, and while it is a planner or an observer, a connection counts
//!   against its address: at most `connections_per_ip` connections, and together at most
//!   `requests_per_minute` requests a minute (its Hello included).
//! - A connection that authenticated as a worker leaves its address's count (workers on one
//!   host are not starved by a limit meant for anonymous clients) and gets its own budget,
//!   sized by the concurrency it registered: `worker_requests_per_minute` per slot. Worker
//!   connections together are capped at `max_worker_connections`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug; the data is still consistent for reading.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections one address may hold before they authenticate as workers.
    pub connections_per_ip: usize,
    /// Requests a minute one address may make over its planner, observer and
    /// unauthenticated connections.
    pub requests_per_minute: u32,
    /// Requests a minute a worker connection may make per slot of its concurrency.
    pub worker_requests_per_minute: u32,
    /// Worker connections at once, from all addresses.
    pub max_worker_connections: usize,
    /// Failed Hellos one address may make per minute before it is refused for a minute.
    pub auth_failures_per_minute: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_ip: 10,
            requests_per_minute: 1000,
            worker_requests_per_minute: 60_000,
            max_worker_connections: 4096,
            auth_failures_per_minute: 5,
        }
    }
}

/// A token bucket: `cap` requests at once, refilled at `cap` per minute.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    tokens: f64,
    refilled: Option<Instant>,
}

impl Bucket {
    fn level(&self, cap: f64, now: Instant) -> f64 {
        let per_sec = cap / 60.0;
        self.refilled
            .map_or(cap, |t| (self.tokens + now.duration_since(t).as_secs_f64() * per_sec).min(cap))
    }

    pub(crate) fn take(&mut self, cap: f64, now: Instant) -> bool {
        self.tokens = self.level(cap, now);
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct IpState {
    connections: usize,
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
    budget: Bucket,
}

/// The state behind the limits.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: Limits,
    ips: Mutex<HashMap<IpAddr, IpState>>,
    workers: Mutex<usize>,
}

impl Gate {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits, ips: Mutex::new(HashMap::new()), workers: Mutex::new(0) }
    }

    /// Admits a new connection from `ip`, counted against the address.
    pub(crate) fn admit(&self, ip: IpAddr) -> bool {
        let mut ips = lock(&self.ips);
        let s = ips.entry(ip).or_default();
        if s.connections >= self.limits.connections_per_ip {
            return false;
        }
        s.connections += 1;
        true
    }

    /// A connection from `ip` ended (`worker`: it had become a worker connection).
    pub(crate) fn release(&self, ip: IpAddr, worker: bool) {
        if worker {
            let mut n = lock(&self.workers);
            *n = n.saturating_sub(1);
            return;
        }
        let mut ips = lock(&self.ips);
        if let Some(s) = ips.get_mut(&ip) {
            s.connections = s.connections.saturating_sub(1);
            if self.forgettable(s, Instant::now()) {
                ips.remove(&ip);
            }
        }
    }

    /// Moves a connection that authenticated as a worker out of its address's count; false
    /// when there are already as many worker connections as allowed.
    pub(crate) fn become_worker(&self, ip: IpAddr) -> bool {
        {
            let mut n = lock(&self.workers);
            if *n >= self.limits.max_worker_connections {
                return false;
            }
            *n += 1;
        }
        self.release(ip, false);
        true
    }

    /// Whether forgetting an address loses nothing: no connection, no ban in force, no
    /// failed login in the last minute, and a full request budget (forgetting a spent one
    /// would let a client refill it by reconnecting).
    fn forgettable(&self, s: &IpState, now: Instant) -> bool {
        let rate = f64::from(self.limits.requests_per_minute);
        s.connections == 0
            && s.banned_until.is_none_or(|t| t <= now)
            && s.failures.back().is_none_or(|t| now.duration_since(*t) > Duration::from_secs(60))
            && s.budget.level(rate, now) >= rate
    }

    /// Forgets addresses [`Gate::release`] had to keep, once keeping them changes nothing.
    pub(crate) fn forget_idle(&self) {
        let now = Instant::now();
        lock(&self.ips).retain(|_, s| !self.forgettable(s, now));
    }

    /// How much longer `ip`'s wrong tokens are refused unread, after too many failed
    /// logins. A valid token is still accepted: tokens are 256 random bits, so the ban is
    /// not what stops guessing; it keeps one misconfigured client on a shared address
    /// (NAT, loopback) from costing the queue, without locking out that address's
    /// correctly configured clients.
    pub(crate) fn banned_for(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let until = lock(&self.ips).get(&ip)?.banned_until?;
        (until > now).then(|| until - now)
    }

    pub(crate) fn auth_failed(&self, ip: IpAddr) {
        let mut ips = lock(&self.ips);
        let s = ips.entry(ip).or_default();
        let now = Instant::now();
        s.failures.push_back(now);
        while s.failures.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            s.failures.pop_front();
        }
        if s.failures.len() >= self.limits.auth_failures_per_minute {
            s.banned_until = Some(now + Duration::from_secs(60));
            warn!(%ip, "too many failed logins: refusing this address's wrong tokens for a minute");
        }
    }

    /// Takes one request from `ip`'s budget.
    pub(crate) fn address_ok(&self, ip: IpAddr) -> bool {
        let rate = f64::from(self.limits.requests_per_minute);
        lock(&self.ips).entry(ip).or_default().budget.take(rate, Instant::now())
    }

    /// Takes one request from a worker connection's own budget, for a worker of
    /// `concurrency` slots (none registered yet: one).
    pub(crate) fn worker_ok(&self, bucket: &Mutex<Bucket>, concurrency: u32) -> bool {
        let rate =
            f64::from(self.limits.worker_requests_per_minute) * f64::from(concurrency.max(1));
        lock(bucket).take(rate, Instant::now())
    }
}
