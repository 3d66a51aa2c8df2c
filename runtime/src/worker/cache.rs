//! A small map bounded by bytes that forgets the least recently used entries first: the
//! worker keeps envelopes it verified here, so a plan shared by many jobs is fetched and
//! verified once.

use std::collections::HashMap;
use std::hash::Hash;

/// The map.
#[derive(Debug)]
pub(super) struct Bounded<K, V> {
    budget: usize,
    used: usize,
    clock: u64,
    entries: HashMap<K, (V, usize, u64)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Bounded<K, V> {
    /// An empty map holding at most `budget` bytes of values.
    pub(super) fn new(budget: usize) -> Self {
        Self { budget, used: 0, clock: 0, entries: HashMap::new() }
    }

    /// The value for `k`, marked as just used.
    pub(super) fn get(&mut self, k: &K) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(k).map(|(v, _, used)| {
            *used = clock;
            v.clone()
        })
    }

    /// Keeps `v` (of `size` bytes) for `k`, forgetting the least recently used entries to
    /// make room; a value larger than the whole budget is not kept.
    pub(super) fn insert(&mut self, k: K, v: V, size: usize) {
        if size > self.budget {
            return;
        }
        if let Some((_, old, _)) = self.entries.remove(&k) {
            self.used -= old;
        }
        while self.used + size > self.budget {
            let Some(oldest) =
                self.entries.iter().min_by_key(|(_, (_, _, used))| *used).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, s, _)) = self.entries.remove(&oldest) {
                self.used -= s;
            }
        }
        self.clock += 1;
        self.used += size;
        self.entries.insert(k, (v, size, self.clock));
    }

    /// Bytes held.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        let mut m = Bounded::new(10);
        m.insert("a", 1, 4);
        m.insert("b", 2, 4);
        assert_eq!(m.get(&"a"), Some(1));
        m.insert("c", 3, 4);
        assert_eq!((m.get(&"a"), m.get(&"b"), m.get(&"c")), (Some(1), None, Some(3)));
        assert!(m.used() <= 10);
        m.insert("huge", 4, 11);
        assert_eq!(m.get(&"huge"), None, "larger than the budget: not kept");
        assert_eq!(m.get(&"a"), Some(1), "and nothing was evicted for it");
    }
}
