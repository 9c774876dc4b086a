//! The key table behind each limit: governor's per-key state in sharded maps, capped and swept.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

use crate::stats::Counters;

/// Tables up to this cap evict the key closest to a full limit over every shard; larger ones
/// look in the new key's shard only (bounded work per insert).
const EXACT_EVICTION_LIMIT: usize = 1024;
/// Bounds the work of one insert when the table is over a lowered cap.
const MAX_EVICTIONS_PER_INSERT: usize = 8;
/// Target number of keys per shard in a full table.
const KEYS_PER_SHARD: usize = 256;

/// Keys are keyed SipHash outputs already: the map uses them as their own hash.
#[derive(Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, InMemoryState, BuildHasherDefault<KeyHasher>>;
type Shard = RwLock<Map>;

fn read(shard: &Shard) -> RwLockReadGuard<'_, Map> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, Map> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}

/// The theoretical arrival time governor stored for a key, in nanoseconds after its limiter's
/// start (0: none). A decision that refuses to replace the state hands back what it was shown.
fn arrival(state: &InMemoryState) -> u64 {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
        .map_or(0, Nanos::as_u64)
}

/// One limit's per-key state, at most `cap` keys (plus inserts in progress).
pub(crate) struct KeyTable {
    shards: Box<[Shard]>,
    mask: usize,
    /// Tracked keys, plus inserts in progress.
    len: AtomicUsize,
    cap: AtomicUsize,
    counters: Arc<Counters>,
}

impl KeyTable {
    pub(crate) fn new(cap: usize, counters: Arc<Counters>) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let n = (cores * 4)
            .max(cap / KEYS_PER_SHARD)
            .next_power_of_two()
            .clamp(16, 4096);
        Self {
            shards: (0..n).map(|_| RwLock::new(Map::default())).collect(),
            mask: n - 1,
            len: AtomicUsize::new(0),
            cap: AtomicUsize::new(cap.max(1)),
            counters,
        }
    }

    pub(crate) fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
    }

    /// Keys tracked now (counted shard by shard).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    fn shard_of(&self, key: u64) -> usize {
        // The map uses the low bits (bucket) and the top 7 (tag); the shard takes bits between.
        (key >> 40) as usize & self.mask
    }

    fn insert_and_measure<T, F, E>(&self, key: u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = self.shard_of(key);
        // Reserve a place first, so concurrent inserts each evict for themselves.
        let cap = self.cap.load(Ordering::Relaxed);
        let reserved = self.len.fetch_add(1, Ordering::AcqRel);
        if reserved >= cap {
            for _ in 0..(reserved + 1 - cap).min(MAX_EVICTIONS_PER_INSERT) {
                self.evict_one(shard, cap);
            }
        }
        let mut map = write(&self.shards[shard]);
        let state = match map.entry(key) {
            Entry::Occupied(entry) => {
                self.len.fetch_sub(1, Ordering::AcqRel);
                entry.into_mut()
            }
            Entry::Vacant(entry) => entry.insert(InMemoryState::default()),
        };
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }

    /// Evicts the key with the earliest arrival time, the one whose limit is closest to full (of
    /// the whole table when it is small, else of the new key's shard): forgetting it costs the
    /// least limiting.
    fn evict_one(&self, shard: usize, cap: usize) {
        let whole = cap <= EXACT_EVICTION_LIMIT || read(&self.shards[shard]).is_empty();
        let scan = if whole {
            0..self.shards.len()
        } else {
            shard..shard + 1
        };
        let mut victim: Option<(u64, usize, u64)> = None;
        for i in scan {
            for (key, state) in read(&self.shards[i]).iter() {
                let at = arrival(state);
                if victim.is_none_or(|(best, _, _)| at < best) {
                    victim = Some((at, i, *key));
                }
            }
        }
        let Some((_, i, key)) = victim else { return };
        if write(&self.shards[i]).remove(&key).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
            Counters::add(&self.counters.evicted, 1);
        }
    }
}

/// A [`KeyTable`] as governor's state store (a newtype, so the layer keeps its own reference).
#[derive(Clone)]
pub(crate) struct TableRef(pub(crate) Arc<KeyTable>);

impl StateStore for TableRef {
    type Key = u64;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let table = &*self.0;
        if let Some(state) = read(&table.shards[table.shard_of(*key)]).get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        table.insert_and_measure(*key, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for TableRef {
    /// Forgets keys whose limit has refilled completely (arrival time at or before
    /// `drop_below`): they are indistinguishable from a key never seen. One shard at a time, and
    /// for writing only when it has something to forget.
    fn retain_recent(&self, drop_below: Nanos) {
        let table = &*self.0;
        let drop_below = drop_below.as_u64();
        let mut removed = 0;
        for shard in table.shards.iter() {
            if !read(shard).values().any(|s| arrival(s) <= drop_below) {
                continue;
            }
            let mut map = write(shard);
            let before = map.len();
            map.retain(|_, s| arrival(s) > drop_below);
            removed += before - map.len();
            if map.len() * 4 < map.capacity() {
                map.shrink_to_fit();
            }
        }
        table.len.fetch_sub(removed, Ordering::AcqRel);
        Counters::add(&table.counters.expired, removed as u64);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.shards.iter().all(|s| read(s).is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores `at` as the key's arrival time, as governor does after a passing check.
    fn put(store: &TableRef, key: u64, at: u64) {
        store
            .measure_and_replace(&key, |_| Ok::<_, ()>(((), Nanos::new(at))))
            .unwrap();
    }

    #[test]
    fn the_count_follows_inserts_evictions_and_sweeps() {
        let counters = Arc::new(Counters::default());
        let store = TableRef(Arc::new(KeyTable::new(4, Arc::clone(&counters))));
        for key in 1..=4u64 {
            put(&store, key << 40, 100 + key);
        }
        put(&store, 1 << 40, 500); // an update, not an insert
        assert_eq!((store.len(), store.0.len.load(Ordering::Relaxed)), (4, 4));

        // Full: the key with the earliest arrival (2, at 102) makes room.
        put(&store, 9 << 40, 900);
        assert_eq!(store.len(), 4);
        assert_eq!(counters.evicted.load(Ordering::Relaxed), 1);
        assert!(!read(&store.0.shards[store.0.shard_of(2 << 40)]).contains_key(&(2 << 40)));

        store.retain_recent(Nanos::new(500));
        assert_eq!(store.len(), 1, "only the key at 900 is still limited");
        assert_eq!(store.0.len.load(Ordering::Relaxed), 1);
        assert_eq!(counters.expired.load(Ordering::Relaxed), 3);
        assert!(!store.is_empty());
    }

    #[test]
    fn concurrent_inserts_keep_the_count_exact_and_the_table_near_its_cap() {
        const THREADS: u64 = 4;
        let counters = Arc::new(Counters::default());
        let store = TableRef(Arc::new(KeyTable::new(64, Arc::clone(&counters))));
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let store = store.clone();
                scope.spawn(move || {
                    for i in 0..5_000u64 {
                        // Spread over shards like hashed keys: distinct high bits per key.
                        let key = (t << 60) | (i << 40) | (i % 7);
                        put(&store, key, 1 + i);
                    }
                });
            }
        });
        let tracked = store.len();
        assert_eq!(store.0.len.load(Ordering::Relaxed), tracked);
        assert!(tracked <= 64 + THREADS as usize, "{tracked}");
        assert_eq!(
            counters.evicted.load(Ordering::Relaxed),
            THREADS * 5_000 - tracked as u64
        );
    }
}
