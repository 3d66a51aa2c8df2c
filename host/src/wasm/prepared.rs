//! The prepared components a host keeps in memory: one cell per key (a digest and how it is
//! compiled), so that concurrent `prepare` calls for one key compile it once, bounded by an estimate of the bytes the
//! ready ones hold, least recently used first out.
//!
//! A cell still being filled is never evicted (its compilation is shared by every caller
//! waiting on it); a ready one may be evicted at any time, because whoever runs it holds its
//! own `Arc` and the component lives until the last of them is dropped. A cell left empty
//! (its preparation failed or was cancelled) is forgotten once nobody waits on it, so
//! digests that never prepare do not accumulate either.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::OnceCell;

/// The prepared-component map: cells by key, the ready ones in order of last use.
#[derive(Debug)]
pub(crate) struct PreparedMap<K, T> {
    entries: HashMap<K, Entry<T>>,
    /// Ready entries by the tick of their last use (ticks are unique), oldest first.
    order: BTreeMap<u64, K>,
    tick: u64,
    bytes: u64,
    budget: u64,
}

#[derive(Debug)]
struct Entry<T> {
    cell: Arc<OnceCell<T>>,
    /// The tick of its last use and its cost, once its cell holds a value.
    ready: Option<(u64, u64)>,
}

impl<K: Copy + Eq + Hash, T> PreparedMap<K, T> {
    /// An empty map that keeps at most `budget` bytes of ready entries.
    pub(crate) fn new(budget: u64) -> Self {
        Self { entries: HashMap::new(), order: BTreeMap::new(), tick: 0, bytes: 0, budget }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The cell for `digest`, created empty if there is none; a ready entry counts as used.
    pub(crate) fn cell(&mut self, digest: K) -> Arc<OnceCell<T>> {
        let tick = self.next_tick();
        let entry = self
            .entries
            .entry(digest)
            .or_insert_with(|| Entry { cell: Arc::default(), ready: None });
        if let Some((used, _)) = &mut entry.ready {
            self.order.remove(used);
            *used = tick;
            self.order.insert(tick, digest);
        }
        entry.cell.clone()
    }

    /// Records that `cell`, the cell of `digest`, now holds a value costing `cost` bytes, and
    /// evicts the least recently used ready entries until the map is within its budget. A
    /// value costing more than the whole budget is not kept at all. Does nothing when the
    /// entry was recorded already or `cell` is no longer the map's cell for `digest` (it was
    /// evicted meanwhile).
    pub(crate) fn settle(&mut self, digest: K, cell: &Arc<OnceCell<T>>, cost: u64) {
        let Some(entry) = self.entries.get(&digest) else { return };
        if !Arc::ptr_eq(&entry.cell, cell) || entry.ready.is_some() || !cell.initialized() {
            return;
        }
        if cost > self.budget {
            self.entries.remove(&digest);
            return;
        }
        let tick = self.next_tick();
        if let Some(entry) = self.entries.get_mut(&digest) {
            entry.ready = Some((tick, cost));
        }
        self.order.insert(tick, digest);
        self.bytes = self.bytes.saturating_add(cost);
        while self.bytes > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some(Entry { ready: Some((_, c)), .. }) = self.entries.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(c);
            }
        }
    }

    /// Forgets the cell of `digest` if it holds nothing and nobody else holds it: its
    /// preparation failed or was cancelled, and no caller is waiting to try again.
    pub(crate) fn forget_if_idle(&mut self, digest: K) {
        // Clones of a cell are only made under the map's lock, which `&mut self` stands for,
        // so a count of 1 (the map's own) cannot grow while this runs.
        if let Some(entry) = self.entries.get(&digest)
            && entry.ready.is_none()
            && !entry.cell.initialized()
            && Arc::strong_count(&entry.cell) == 1
        {
            self.entries.remove(&digest);
        }
    }

    /// The estimated bytes held by the ready entries.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many ready entries are kept.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agenix_proto::Digest;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    /// Fills `digest`'s cell as a caller of `prepare` would, then settles it.
    fn fill(map: &mut PreparedMap<Digest, u8>, digest: Digest, cost: u64) -> Arc<OnceCell<u8>> {
        let cell = map.cell(digest);
        cell.set(1).unwrap();
        map.settle(digest, &cell, cost);
        cell
    }

    fn kept(map: &PreparedMap<Digest, u8>) -> Vec<Digest> {
        map.order.values().copied().collect()
    }

    #[test]
    fn least_recently_used_go_first_and_bytes_stay_within_budget() {
        let mut map = PreparedMap::new(100);
        fill(&mut map, d(1), 40);
        fill(&mut map, d(2), 40);
        assert_eq!(map.bytes(), 80);
        // Using 1 makes 2 the least recently used.
        assert!(map.cell(d(1)).initialized());
        fill(&mut map, d(3), 40);
        assert_eq!(kept(&map), [d(1), d(3)]);
        assert_eq!(map.bytes(), 80);
        // A new cell for the evicted one starts empty.
        assert!(!map.cell(d(2)).initialized());
    }

    #[test]
    fn a_value_larger_than_the_budget_is_not_kept_and_evicts_nothing() {
        let mut map = PreparedMap::new(100);
        fill(&mut map, d(1), 60);
        let big = fill(&mut map, d(2), 101);
        assert_eq!(*big.get().unwrap(), 1, "the caller still has it");
        assert_eq!(kept(&map), [d(1)]);
        assert_eq!(map.bytes(), 60);
        assert!(!map.entries.contains_key(&d(2)));
    }

    #[test]
    fn a_cell_being_filled_is_shared_and_never_evicted() {
        let mut map = PreparedMap::new(100);
        let filling = map.cell(d(1));
        let waiter = map.cell(d(1));
        assert!(Arc::ptr_eq(&filling, &waiter), "one compilation for concurrent callers");
        for n in 2..10 {
            fill(&mut map, d(n), 60);
        }
        assert!(Arc::ptr_eq(&map.cell(d(1)), &filling), "still the same cell");
        filling.set(7).unwrap();
        map.settle(d(1), &filling, 60);
        assert_eq!(kept(&map), [d(1)]);
        // Settling again (another waiter) changes nothing.
        map.settle(d(1), &waiter, 60);
        assert_eq!(map.bytes(), 60);
    }

    #[test]
    fn settling_a_cell_that_was_replaced_does_nothing() {
        let mut map = PreparedMap::new(100);
        let old = fill(&mut map, d(1), 60);
        fill(&mut map, d(2), 60); // evicts 1
        let new = map.cell(d(1));
        map.settle(d(1), &old, 60);
        assert_eq!(kept(&map), [d(2)]);
        assert!(!new.initialized());
    }

    #[test]
    fn empty_cells_are_forgotten_once_nobody_holds_them() {
        let mut map = PreparedMap::<Digest, u8>::new(100);
        let a = map.cell(d(1));
        let b = map.cell(d(1));
        drop(a);
        map.forget_if_idle(d(1));
        assert!(map.entries.contains_key(&d(1)), "b may still try");
        drop(b);
        map.forget_if_idle(d(1));
        assert!(map.entries.is_empty());
        // A ready entry is never forgotten this way.
        drop(fill(&mut map, d(2), 10));
        map.forget_if_idle(d(2));
        assert_eq!(kept(&map), [d(2)]);
    }
}
