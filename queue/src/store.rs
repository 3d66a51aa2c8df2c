//! Durable state behind a narrow trait: the redb store the queue runs on, and an in-memory
//! one for tests of the adapters.
//!
//! Layout (redb tables; values are the JSON of proto types):
//!
//! ```text
//! jobs:    u64 job id        -> JobRecord
//! actions: action id         -> ActionRecord
//! action_envelopes: action id -> the signed action envelope
//! plans:   "sha256:<hex>"    -> the signed plan envelope
//! meta:    "next_job"        -> u64
//! ```
//!
//! A batch is one write transaction with `Durability::Immediate`: it is on disk when
//! `apply` returns, all of it or none of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use agenix_proto::job::{ActionRecord, JobId, JobRecord};
use agenix_proto::{ActionId, Digest};
use agenix_queue_core::Change;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const JOBS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("jobs");
const ACTIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("actions");
const ACTION_ENVELOPES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("action_envelopes");
const PLANS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("plans");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// One durable write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "writes are consumed by the next commit, never stored in bulk"
)]
pub enum Write {
    /// A scheduler change.
    Change(Change),
    /// A signed plan, by the digest of its payload.
    Plan(Digest, Vec<u8>),
    /// A signed action envelope.
    ActionEnvelope(ActionId, Vec<u8>),
    /// Forget a plan no job refers to any more.
    DeletePlan(Digest),
}

/// Everything storage kept.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every job.
    pub jobs: Vec<JobRecord>,
    /// Every action still remembered.
    pub actions: Vec<(ActionId, ActionRecord)>,
    /// Signed action envelopes.
    pub action_envelopes: Vec<(ActionId, Vec<u8>)>,
    /// Signed plans.
    pub plans: Vec<(Digest, Vec<u8>)>,
    /// The next job id.
    pub next_job: u64,
}

/// Storage failed.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Durable state.
pub trait Store: Send + Sync + 'static {
    /// Everything stored.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies `writes` atomically and durably.
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError>;
}

/// redb's page cache: enough for the B-tree's upper levels and a commit's worth of pages.
const CACHE_BYTES: usize = 64 << 20;

/// The redb store.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // The scheduler holds the live state in memory and reads the store only at start,
        // so redb's page cache (1 GiB by default) would mostly duplicate it.
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(err)?;
        // Create every table, so reads never meet a missing one.
        let tx = db.begin_write().map_err(err)?;
        {
            tx.open_table(JOBS).map_err(err)?;
            tx.open_table(ACTIONS).map_err(err)?;
            tx.open_table(ACTION_ENVELOPES).map_err(err)?;
            tx.open_table(PLANS).map_err(err)?;
            tx.open_table(META).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(err)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("{what}: {e}")))
}

impl Store for RedbStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let mut out = Loaded { next_job: 1, ..Loaded::default() };
        for row in tx.open_table(JOBS).map_err(err)?.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.jobs.push(parse("job", v.value())?);
        }
        for row in tx.open_table(ACTIONS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let id: ActionId = k.value().parse().map_err(err)?;
            out.actions.push((id, parse("action", v.value())?));
        }
        for row in tx.open_table(ACTION_ENVELOPES).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.action_envelopes.push((k.value().parse().map_err(err)?, v.value().to_vec()));
        }
        for row in tx.open_table(PLANS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.plans.push((k.value().parse().map_err(err)?, v.value().to_vec()));
        }
        if let Some(n) = tx.open_table(META).map_err(err)?.get("next_job").map_err(err)? {
            out.next_job = n.value();
        }
        Ok(out)
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut jobs = tx.open_table(JOBS).map_err(err)?;
            let mut actions = tx.open_table(ACTIONS).map_err(err)?;
            let mut envs = tx.open_table(ACTION_ENVELOPES).map_err(err)?;
            let mut plans = tx.open_table(PLANS).map_err(err)?;
            let mut meta = tx.open_table(META).map_err(err)?;
            for w in writes {
                match w {
                    Write::Change(Change::Job(j)) => {
                        jobs.insert(j.id.0, json(j)?.as_slice()).map_err(err)?;
                    }
                    Write::Change(Change::DeleteJob(id)) => {
                        jobs.remove(id.0).map_err(err)?;
                    }
                    Write::Change(Change::Action(id, a)) => {
                        actions.insert(id.as_str(), json(a)?.as_slice()).map_err(err)?;
                    }
                    Write::Change(Change::DeleteAction(id)) => {
                        actions.remove(id.as_str()).map_err(err)?;
                        envs.remove(id.as_str()).map_err(err)?;
                    }
                    Write::Change(Change::NextJob(n)) => {
                        meta.insert("next_job", n).map_err(err)?;
                    }
                    Write::Plan(d, bytes) => {
                        plans.insert(d.to_string().as_str(), bytes.as_slice()).map_err(err)?;
                    }
                    Write::ActionEnvelope(id, bytes) => {
                        envs.insert(id.as_str(), bytes.as_slice()).map_err(err)?;
                    }
                    Write::DeletePlan(d) => {
                        plans.remove(d.to_string().as_str()).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }
}

/// An in-memory store (for tests).
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    jobs: BTreeMap<JobId, JobRecord>,
    actions: BTreeMap<ActionId, ActionRecord>,
    envelopes: BTreeMap<ActionId, Vec<u8>>,
    plans: BTreeMap<Digest, Vec<u8>>,
    next_job: u64,
}

impl Store for MemStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        Ok(Loaded {
            jobs: m.jobs.values().cloned().collect(),
            actions: m.actions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            action_envelopes: m.envelopes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            plans: m.plans.iter().map(|(k, v)| (*k, v.clone())).collect(),
            next_job: m.next_job.max(1),
        })
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut m = self.inner.lock().map_err(|_| StoreError("poisoned".into()))?;
        for w in writes {
            match w.clone() {
                Write::Change(Change::Job(j)) => {
                    m.jobs.insert(j.id, j);
                }
                Write::Change(Change::DeleteJob(id)) => {
                    m.jobs.remove(&id);
                }
                Write::Change(Change::Action(id, a)) => {
                    m.actions.insert(id, a);
                }
                Write::Change(Change::DeleteAction(id)) => {
                    m.actions.remove(&id);
                    m.envelopes.remove(&id);
                }
                Write::Change(Change::NextJob(n)) => m.next_job = n,
                Write::Plan(d, b) => {
                    m.plans.insert(d, b);
                }
                Write::ActionEnvelope(id, b) => {
                    m.envelopes.insert(id, b);
                }
                Write::DeletePlan(d) => {
                    m.plans.remove(&d);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_round_trips_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let store = RedbStore::open(&path).unwrap();
        let id = ActionId::from_random([1; 16]);
        let rec = ActionRecord { payload: Digest::of(b"a"), expires_at: 5, jobs: vec![JobId(1)] };
        store
            .apply(&[
                Write::Change(Change::Action(id.clone(), rec.clone())),
                Write::Change(Change::NextJob(9)),
                Write::Plan(Digest::of(b"p"), b"plan".to_vec()),
                Write::ActionEnvelope(id.clone(), b"env".to_vec()),
            ])
            .unwrap();
        drop(store);
        let loaded = RedbStore::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.actions, vec![(id.clone(), rec)]);
        assert_eq!(loaded.next_job, 9);
        assert_eq!(loaded.plans, vec![(Digest::of(b"p"), b"plan".to_vec())]);
        assert_eq!(loaded.action_envelopes, vec![(id.clone(), b"env".to_vec())]);
        let store = RedbStore::open(&path).unwrap();
        store
            .apply(&[Write::DeletePlan(Digest::of(b"p")), Write::Change(Change::DeleteAction(id))])
            .unwrap();
        drop(store);
        let loaded = RedbStore::open(&path).unwrap().load().unwrap();
        assert!(loaded.plans.is_empty() && loaded.actions.is_empty());
        assert!(loaded.action_envelopes.is_empty());
    }
}
