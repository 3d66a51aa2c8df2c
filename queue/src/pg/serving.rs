//! Which agq serves the database: a lease on the one row of `agq_serving`, timed by the
//! database's clock.
//!
//! The node serving renews the lease (`until`) every quarter of its length. A node that
//! wants to serve takes the row once `until` has passed, with the next generation; every
//! batch checks the generation in its own transaction, so a node whose place was taken
//! writes nothing more. The node serving counts its hold from the moment *before* each
//! renewal was sent, by its own monotonic clock, and stops acting (no answers, no blob
//! collection) once that hold runs out: before the lease can have expired at the
//! database, where a standby would take it.
//!
//! A node is named by its host, its boot, its pid namespace, its process id and the
//! process's start time: a node restarted on the same host (and in the same pid namespace)
//! finds the lease of its dead predecessor and takes it at once instead of waiting for it to
//! expire. A holder in another pid namespace (another container) is never taken for dead.
//!
//! A node's batches hold the row `FOR KEY SHARE` (which its renewal's update does not wait
//! for, and a take-over's `FOR UPDATE` does); its sessions end at the server when they sit
//! idle inside a transaction for a lease (a node frozen mid-batch), and a take-over waits a
//! second at most for the row before looking again.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::Client;

use super::{Target, pg};
use crate::store::StoreError;

/// One process of agq, as the lease names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    host: String,
    boot: String,
    /// The pid namespace (`/proc/self/ns/pid`'s inode).
    pidns: String,
    pid: u32,
    start: u64,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A process's start time (clock ticks after boot), from `/proc/PID/stat`.
fn start_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Node {
    /// This process.
    pub(crate) fn this() -> Self {
        let pid = std::process::id();
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .map(|l| l.to_string_lossy().chars().filter(char::is_ascii_digit).collect())
            .unwrap_or_default();
        Self {
            host: read_trimmed("/proc/sys/kernel/hostname"),
            boot: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pidns,
            pid,
            start: start_of(pid).unwrap_or(0),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        let mut it = s.split(' ');
        let host = it.next()?.strip_prefix("host=")?.to_string();
        let boot = it.next()?.strip_prefix("boot=")?.to_string();
        let pidns = it.next()?.strip_prefix("pidns=")?.to_string();
        let pid = it.next()?.strip_prefix("pid=")?.parse().ok()?;
        let start = it.next()?.strip_prefix("start=")?.parse().ok()?;
        Some(Self { host, boot, pidns, pid, start })
    }

    /// Whether `self` is a process of this host's current boot that no longer runs.
    fn is_gone(&self) -> bool {
        let here = Self::this();
        !self.boot.is_empty()
            && !self.pidns.is_empty()
            && self.start != 0
            && self.host == here.host
            && self.boot == here.boot
            && self.pidns == here.pidns
            && start_of(self.pid) != Some(self.start)
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host={} boot={} pidns={} pid={} start={}",
            self.host, self.boot, self.pidns, self.pid, self.start
        )
    }
}

/// How the row stood when a node looked.
#[derive(Debug)]
pub(crate) enum Look {
    /// Taken: this node serves with this generation.
    Taken(i64),
    /// Another node holds it: who, and for how much longer (ms), and its `until` as
    /// text (a change means it renewed).
    Held { node: String, left_ms: i64, until: String },
    /// Another node's batch holds the row now: look again.
    Busy,
    /// This node may not serve the database (it holds another queue, or another schema).
    Refused(StoreError),
}

/// The holder, how long its lease runs (ms; none when released) and `until` as text.
const LOOK: &str = "SELECT node, CASE WHEN isfinite(until)
                        THEN (extract(epoch FROM (until - clock_timestamp())) * 1000)::bigint END,
                   until::text
                   FROM agq_serving";

/// Another node holds the row (`Some`), unless its lease has run out or its holder is a
/// process of this host that no longer runs.
fn held(row: &postgres::Row) -> Option<Look> {
    let (node, left_ms, until): (String, Option<i64>, String) =
        (row.get(0), row.get(1), row.get(2));
    let gone = Node::parse(&node).is_some_and(|n| n.is_gone());
    // `until` is -infinity when released: no time left.
    let left_ms = left_ms.unwrap_or(i64::MIN);
    (left_ms > 0 && !gone).then_some(Look::Held { node, left_ms, until })
}

/// Takes the row if its lease has expired (or its holder is a process of this host that no
/// longer runs); records `identity` as the database's queue identity the first time, and
/// refuses a database another identity serves. It looks without locking anything (a node
/// that freezes while it looks must hold nothing up), and locks the row only to take it,
/// waiting a second at most for a batch that holds it.
pub(crate) fn try_take(
    conn: &mut Client,
    me: &Node,
    ttl: Duration,
    identity: &str,
) -> Result<Look, postgres::Error> {
    if let Some(refused) = identity_refusal(conn, identity, false)? {
        return Ok(Look::Refused(refused));
    }
    if let Some(look) = held(&conn.query_one(LOOK, &[])?) {
        return Ok(look);
    }
    let mut tx = conn.transaction()?;
    tx.batch_execute("SET LOCAL lock_timeout = '1s'")?;
    let row = match tx.query_one(&format!("{LOOK} FOR UPDATE"), &[]) {
        Ok(row) => row,
        Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            return Ok(Look::Busy);
        }
        Err(e) => return Err(e),
    };
    if let Some(look) = held(&row) {
        return Ok(look);
    }
    if let Some(refused) = identity_refusal(&mut tx, identity, true)? {
        return Ok(Look::Refused(refused));
    }
    let generation: i64 = tx
        .query_one(
            "UPDATE agq_serving SET generation = generation + 1, node = $1,
                 until = clock_timestamp() + $2::bigint * interval '1 millisecond'
             RETURNING generation",
            &[&me.to_string(), &ms(ttl)],
        )?
        .get(0);
    tx.commit()?;
    Ok(Look::Taken(generation))
}

/// Why the database refuses a node of the queue `identity`: it holds another queue. With
/// `record`, the first node records its identity.
fn identity_refusal(
    client: &mut impl postgres::GenericClient,
    identity: &str,
    record: bool,
) -> Result<Option<StoreError>, postgres::Error> {
    let row = client.query_opt("SELECT value FROM agq_state WHERE key = 'identity'", &[])?;
    match row.map(|r| r.get::<_, Vec<u8>>(0)) {
        Some(found) if found == identity.as_bytes() => Ok(None),
        Some(found) => Ok(Some(StoreError(format!(
            "this database holds the queue {}, and this queue directory's identity is \
             {identity}: a node serves the queue whose identity it has (the same queue \
             directory)",
            String::from_utf8_lossy(&found)
        )))),
        None if record => {
            client.execute(
                "INSERT INTO agq_state (key, value) VALUES ('identity', $1)",
                &[&identity.as_bytes()],
            )?;
            Ok(None)
        }
        None => Ok(None),
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The lease this node holds, shared with the thread renewing it.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) generation: i64,
    ttl: Duration,
    /// Until when this node may act, by its own clock.
    valid_until: Mutex<Instant>,
    /// Why this node no longer serves (the generation moved), once it does not.
    lost: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// What [`Held::state`] finds.
pub(crate) enum State {
    Serving,
    Lapsed(String),
    Lost(String),
}

impl Held {
    /// A lease taken at `taken` (an instant before the transaction that took it began).
    pub(crate) fn new(generation: i64, ttl: Duration, taken: Instant) -> Arc<Self> {
        Arc::new(Self {
            generation,
            ttl,
            valid_until: Mutex::new(taken + hold(ttl)),
            lost: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    /// The lease's length.
    pub(crate) fn lease(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn state(&self) -> State {
        if let Some(why) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return State::Lost(why);
        }
        let until = self.valid_until.lock().map(|u| *u).unwrap_or_else(|_| Instant::now());
        if Instant::now() >= until {
            return State::Lapsed(format!(
                "this node could not renew its lease on the database for {} ms (the database \
                 cannot be reached, or answers too slowly): it does not act until it can",
                ms(self.ttl)
            ));
        }
        State::Serving
    }

    /// Renews the lease every quarter of its length on a connection of its own, until
    /// stopped (then releases it, so a standby takes over at once) or the generation
    /// moves.
    pub(crate) fn renew(
        self: &Arc<Self>,
        target: Target,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let held = self.clone();
        std::thread::Builder::new().name("agq-lease".into()).spawn(move || held.renewing(&target))
    }

    fn renewing(&self, target: &Target) {
        let every = (self.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
        let mut conn: Option<Client> = None;
        let mut failing = false;
        loop {
            std::thread::park_timeout(every);
            if self.stop.load(SeqCst) {
                break;
            }
            let before = Instant::now();
            let client = match conn.as_mut().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => match target.config.connect(target.tls.clone()) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot renew the serving lease: the database cannot be reached");
                            failing = true;
                        }
                        continue;
                    }
                },
            };
            let renewed = client.query_opt(
                "UPDATE agq_serving SET until = clock_timestamp() + $2::bigint * interval '1 millisecond'
                 WHERE generation = $1 RETURNING generation",
                &[&self.generation, &ms(self.ttl)],
            );
            match renewed {
                Ok(Some(_)) => {
                    if let Ok(mut until) = self.valid_until.lock() {
                        *until = before + hold(self.ttl);
                    }
                    if failing {
                        tracing::warn!("the serving lease is renewed again");
                        failing = false;
                    }
                }
                Ok(None) => {
                    let why = format!(
                        "another agq took over this database (this node's serving generation \
                         {} is no longer the database's)",
                        self.generation
                    );
                    if let Ok(mut lost) = self.lost.lock() {
                        *lost = Some(why);
                    }
                    return;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %pg(e), "cannot renew the serving lease");
                        failing = true;
                    }
                    conn = None;
                }
            }
        }
        // Stopped: released, so a standby need not wait for the lease to run out.
        let conn = match conn.filter(|c| !c.is_closed()) {
            Some(c) => Some(c),
            None => target.config.connect(target.tls.clone()).ok(),
        };
        if let Some(mut c) = conn {
            let _ = c.execute(
                "UPDATE agq_serving SET until = '-infinity' WHERE generation = $1",
                &[&self.generation],
            );
        }
    }

    /// Asks the renewing thread to release the lease and end.
    pub(crate) fn stop(&self, renewer: Option<std::thread::JoinHandle<()>>) {
        self.stop.store(true, SeqCst);
        if let Some(h) = renewer {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// How long a node acts on a lease of `ttl` after sending its renewal: a tenth less, for
/// clocks that do not run at quite the same rate.
fn hold(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn a_node_reads_back_and_this_process_is_not_gone() {
        let me = Node::this();
        assert!(me.pid > 0 && me.start > 0 && !me.pidns.is_empty(), "{me}");
        assert_eq!(Node::parse(&me.to_string()), Some(me.clone()));
        assert!(!me.is_gone());
        // A process of this boot that is not running (past the largest pid).
        let dead = Node { pid: 4_194_305, start: 1, ..me.clone() };
        assert!(dead.is_gone());
        // Another host's, or an unknown boot's, is never taken for gone.
        assert!(!Node { host: "elsewhere".into(), ..dead.clone() }.is_gone());
        assert!(!Node { boot: String::new(), ..dead.clone() }.is_gone());
        // Nor one of another pid namespace (another container on this host).
        assert!(!Node { pidns: "1".into(), ..dead.clone() }.is_gone());
        assert!(!Node { pidns: String::new(), ..dead }.is_gone());
        assert_eq!(Node::parse("someone"), None);
    }
}
