//! The per-client table: sharded, capped, emptied by disconnects, swept as a safety net.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::Direction;
use wsguard_policy::Outcome;

/// Tables up to this size find the exact least recently active client over every shard;
/// larger ones look in the new client's shard only (bounded work per insert).
const EXACT_EVICTION_LIMIT: usize = 1024;
/// Bounds the work of one insert when the table is over a lowered cap.
const MAX_EVICTIONS_PER_INSERT: usize = 8;
/// Target number of clients per shard in a full table.
const CLIENTS_PER_SHARD: usize = 256;
/// A shard whose capacity is above this and over four times its clients gives the rest back
/// when it loses one: after a burst of clients leaves, the table no longer holds the burst's room.
const SHRINK_ABOVE_CAPACITY: usize = 64;

/// Frees most of a shard's spare room once it has fallen under a quarter of its capacity. It keeps
/// twice its clients, so removals stay amortized constant time (the next shrink needs the shard to
/// halve again); called on disconnects and sweeps, never per message.
#[allow(clippy::mutable_key_type)] // hashed and compared by the id, which never changes
fn shrink_if_sparse(set: &mut HashSet<Tracked, RandomState>) {
    if set.capacity() > SHRINK_ABOVE_CAPACITY && set.capacity() > 4 * set.len() {
        set.shrink_to(2 * set.len());
    }
}

/// One client's figures. Updated through atomics, so a connection that holds it (through its
/// guard) records without touching the table.
pub(crate) struct ClientEntry {
    pub(crate) id: Box<str>,
    /// Nanoseconds since the registry's epoch.
    pub(crate) created: u64,
    pub(crate) last_activity: AtomicU64,
    pub(crate) connections: AtomicU32,
    pub(crate) messages: [AtomicU64; 2],
    pub(crate) bytes: [AtomicU64; 2],
    pub(crate) errors: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) rejections: AtomicU64,
    /// Outbound messages dropped by the send queue's overflow policy (exact, never sampled).
    pub(crate) send_dropped: AtomicU64,
}

impl ClientEntry {
    fn new(id: &str, now: u64, connections: u32) -> Self {
        Self {
            id: id.into(),
            created: now,
            last_activity: AtomicU64::new(now),
            connections: AtomicU32::new(connections),
            messages: Default::default(),
            bytes: Default::default(),
            errors: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            send_dropped: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn record_message(&self, direction: Direction, size: Option<u64>, now: u64) {
        let d = direction.index();
        self.messages[d].fetch_add(1, Ordering::Relaxed);
        if let Some(b) = size {
            self.bytes[d].fetch_add(b, Ordering::Relaxed);
        }
        self.last_activity.fetch_max(now, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn record_outcome(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Success => return,
            Outcome::Failure => &self.errors,
            Outcome::Rejected => &self.rejections,
            Outcome::Duplicate => &self.duplicates,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn activity(&self) -> u64 {
        self.messages[0].load(Ordering::Relaxed) + self.messages[1].load(Ordering::Relaxed)
    }

    /// Eviction order: clients without a live connection first, then least recently active.
    fn eviction_key(&self) -> (bool, u64) {
        (
            self.connections.load(Ordering::Relaxed) > 0,
            self.last_activity.load(Ordering::Relaxed),
        )
    }
}

/// A table slot; hashes and compares as its id so the id is stored once.
struct Tracked(Arc<ClientEntry>);

impl Borrow<str> for Tracked {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl Hash for Tracked {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Tracked {}

type Shard = RwLock<HashSet<Tracked, RandomState>>;

pub(crate) struct ClientTable {
    shards: Box<[Shard]>,
    hasher: RandomState,
    shift: u32,
    mask: usize,
    /// Tracked clients, plus inserts in progress.
    len: AtomicUsize,
    pub(crate) evicted: AtomicU64,
    pub(crate) expired: AtomicU64,
    evicted_export: metrics::Counter,
}

fn read(shard: &Shard) -> std::sync::RwLockReadGuard<'_, HashSet<Tracked, RandomState>> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> std::sync::RwLockWriteGuard<'_, HashSet<Tracked, RandomState>> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}

impl ClientTable {
    pub(crate) fn new(max_clients: usize, evicted_export: metrics::Counter) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let n = (cores * 4)
            .max(max_clients / CLIENTS_PER_SHARD)
            .next_power_of_two()
            .clamp(16, 4096);
        let hasher = RandomState::new();
        Self {
            shards: (0..n)
                .map(|_| RwLock::new(HashSet::with_hasher(hasher.clone())))
                .collect(),
            hasher,
            // hashbrown uses the low bits (bucket) and the top 7 (tag); pick the shard from
            // bits in between so a shard's keys still spread over its buckets.
            shift: 40,
            mask: n - 1,
            len: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            evicted_export,
        }
    }

    pub(crate) fn len(&self) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            n += read(shard).len();
        }
        n
    }

    fn shard_of(&self, id: &str) -> usize {
        (self.hasher.hash_one(id) >> self.shift) as usize & self.mask
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<ClientEntry>> {
        read(&self.shards[self.shard_of(id)])
            .get(id)
            .map(|t| t.0.clone())
    }

    /// A connection of `id` opened: its entry, created if needed, with one more connection.
    pub(crate) fn connect(&self, id: &str, now: u64, cap: usize) -> Arc<ClientEntry> {
        let i = self.shard_of(id);
        {
            let set = read(&self.shards[i]);
            if let Some(t) = set.get(id) {
                // Counted under the read lock: a disconnect removes an entry only under the write
                // lock and only when it has no connection, so this one is safe.
                t.0.connections.fetch_add(1, Ordering::AcqRel);
                t.0.last_activity.fetch_max(now, Ordering::Relaxed);
                return t.0.clone();
            }
        }
        self.insert(i, id, now, cap, 1)
    }

    /// The entry of `id` for per-client detail, created (without a connection) if needed.
    pub(crate) fn touch(&self, id: &str, now: u64, cap: usize) -> Arc<ClientEntry> {
        let i = self.shard_of(id);
        if let Some(t) = read(&self.shards[i]).get(id) {
            return t.0.clone();
        }
        self.insert(i, id, now, cap, 0)
    }

    fn insert(
        &self,
        shard: usize,
        id: &str,
        now: u64,
        cap: usize,
        connections: u32,
    ) -> Arc<ClientEntry> {
        // Reserve a place first, so concurrent inserts each evict for themselves. After a live
        // lowering of the cap, each insert evicts a few more until the table fits again.
        let reserved = self.len.fetch_add(1, Ordering::AcqRel);
        if reserved >= cap {
            for _ in 0..(reserved + 1 - cap).min(MAX_EVICTIONS_PER_INSERT) {
                self.evict_one(shard, cap);
            }
        }
        let mut set = write(&self.shards[shard]);
        if let Some(t) = set.get(id) {
            self.len.fetch_sub(1, Ordering::AcqRel);
            t.0.connections.fetch_add(connections, Ordering::AcqRel);
            return t.0.clone();
        }
        let entry = Arc::new(ClientEntry::new(id, now, connections));
        set.insert(Tracked(entry.clone()));
        entry
    }

    /// Evicts the least recently active client (of the whole table when it is small, else of
    /// the new client's shard), preferring clients without a live connection.
    fn evict_one(&self, shard: usize, cap: usize) {
        let scan: Box<dyn Iterator<Item = usize>> =
            if cap <= EXACT_EVICTION_LIMIT || read(&self.shards[shard]).is_empty() {
                Box::new(0..self.shards.len())
            } else {
                Box::new(std::iter::once(shard))
            };
        let mut victim: Option<((bool, u64), usize, Arc<ClientEntry>)> = None;
        for i in scan {
            let set = read(&self.shards[i]);
            for t in set.iter() {
                let key = t.0.eviction_key();
                if victim.as_ref().is_none_or(|(k, _, _)| key < *k) {
                    victim = Some((key, i, t.0.clone()));
                }
            }
        }
        let Some((_, i, entry)) = victim else { return };
        let mut set = write(&self.shards[i]);
        if set
            .get(&*entry.id)
            .is_some_and(|t| Arc::ptr_eq(&t.0, &entry))
        {
            set.remove(&*entry.id);
            self.len.fetch_sub(1, Ordering::AcqRel);
            self.evicted.fetch_add(1, Ordering::Relaxed);
            self.evicted_export.increment(1);
        }
    }

    /// A connection of `entry` closed; removes the entry when it was the last one.
    pub(crate) fn disconnect(&self, entry: &Arc<ClientEntry>) {
        if entry.connections.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let i = self.shard_of(&entry.id);
        let mut set = write(&self.shards[i]);
        // A connect since the decrement took the entry back: keep it.
        if entry.connections.load(Ordering::Acquire) == 0
            && set
                .get(&*entry.id)
                .is_some_and(|t| Arc::ptr_eq(&t.0, entry))
        {
            set.remove(&*entry.id);
            shrink_if_sparse(&mut set);
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Removes clients without a live connection whose last activity is older than `now - ttl`
    /// (nanoseconds). Locks one shard at a time, and for writing only when it has something to
    /// remove.
    pub(crate) fn remove_inactive(&self, now: u64, ttl: u64) -> usize {
        (0..self.shards.len())
            .map(|i| self.remove_inactive_in(i, now, ttl))
            .sum()
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Room for clients the shards hold (their sets' capacity), for tests.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.shards.iter().map(|s| read(s).capacity()).sum()
    }

    /// [`remove_inactive`](Self::remove_inactive) for one shard.
    pub(crate) fn remove_inactive_in(&self, shard: usize, now: u64, ttl: u64) -> usize {
        let stale = |e: &ClientEntry| {
            e.connections.load(Ordering::Acquire) == 0
                && now.saturating_sub(e.last_activity.load(Ordering::Relaxed)) > ttl
        };
        let shard = &self.shards[shard];
        if !read(shard).iter().any(|t| stale(&t.0)) {
            return 0;
        }
        let mut set = write(shard);
        let before = set.len();
        set.retain(|t| !stale(&t.0));
        shrink_if_sparse(&mut set);
        let removed = before - set.len();
        drop(set);
        self.len.fetch_sub(removed, Ordering::AcqRel);
        self.expired.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    /// The `n` most active clients (messages in + out), most active first.
    pub(crate) fn top(&self, n: usize) -> Vec<Arc<ClientEntry>> {
        if n == 0 {
            return Vec::new();
        }
        // Min-heap of the best n so far.
        let mut heap: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
        let mut kept: Vec<Arc<ClientEntry>> = Vec::new();
        for shard in self.shards.iter() {
            for t in read(shard).iter() {
                let key = (t.0.activity(), t.0.last_activity.load(Ordering::Relaxed));
                if heap.len() < n {
                    heap.push(Reverse((key.0, key.1, kept.len())));
                    kept.push(t.0.clone());
                } else if let Some(Reverse(min)) = heap.peek()
                    && (key.0, key.1) > (min.0, min.1)
                {
                    let slot = min.2;
                    heap.pop();
                    kept[slot] = t.0.clone();
                    heap.push(Reverse((key.0, key.1, slot)));
                }
            }
        }
        let mut order: Vec<_> = heap.into_iter().map(|Reverse(k)| k).collect();
        order.sort_by_key(|k| Reverse((k.0, k.1)));
        order.into_iter().map(|k| kept[k.2].clone()).collect()
    }

    /// Approximate heap bytes held per tracked client: the entry and its `Arc` header, the id,
    /// and the table's slots (capacity, so including spare room) with their control bytes.
    pub(crate) fn approx_bytes(&self) -> (usize, usize) {
        let mut clients = 0;
        let mut bytes = 0;
        for shard in self.shards.iter() {
            let set = read(shard);
            clients += set.len();
            bytes += set.capacity() * (std::mem::size_of::<Tracked>() + 1);
            for t in set.iter() {
                bytes += 2 * std::mem::size_of::<usize>() + std::mem::size_of::<ClientEntry>();
                bytes += t.0.id.len();
            }
        }
        (clients, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_disconnect_removes_the_entry() {
        let t = ClientTable::new(100, metrics::Counter::noop());
        let a = t.connect("a", 1, 100);
        let b = t.connect("a", 2, 100);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(t.len(), 1);
        t.disconnect(&a);
        assert_eq!(t.len(), 1);
        t.disconnect(&b);
        assert_eq!(t.len(), 0);
        assert_eq!(t.len.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_room_of_clients_that_left_is_given_back() {
        // 16 shards of 1 250 clients each.
        let t = ClientTable::new(4096, metrics::Counter::noop());
        let ids: Vec<String> = (0..20_000).map(|i| format!("client-{i}")).collect();
        let entries: Vec<_> = ids.iter().map(|id| t.connect(id, 1, 100_000)).collect();
        let full = t.capacity();
        assert!(full >= 20_000, "{full}");
        for entry in &entries[..19_000] {
            t.disconnect(entry);
        }
        // 1 000 left: each shard keeps a few times its clients.
        let left = t.capacity();
        assert!(left <= 4 * 1_000, "{full} -> {left}");
        for entry in &entries[19_000..] {
            t.disconnect(entry);
        }
        assert_eq!(t.len(), 0);
        assert!(t.capacity() <= 64 * t.shard_count(), "{}", t.capacity());
    }

    #[test]
    fn a_sweep_gives_back_the_room_of_the_clients_it_removes() {
        let t = ClientTable::new(4096, metrics::Counter::noop());
        for i in 0..20_000 {
            t.touch(&format!("client-{i}"), 1, 100_000);
        }
        let full = t.capacity();
        assert_eq!(t.remove_inactive(1_000, 10), 20_000);
        let left = t.capacity();
        assert!(
            left <= 64 * t.shard_count() && left < full / 4,
            "{full} -> {left}"
        );
    }

    #[test]
    fn small_table_evicts_the_least_recently_active_idle_client() {
        let t = ClientTable::new(3, metrics::Counter::noop());
        let _live = t.connect("live", 0, 3); // oldest, but connected
        t.touch("old", 10, 3);
        let recent = t.touch("recent", 20, 3);
        recent.record_message(Direction::Inbound, None, 30);
        t.touch("new", 40, 3);
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted.load(Ordering::Relaxed), 1);
        let ids: Vec<_> = t.top(10).iter().map(|e| e.id.to_string()).collect();
        assert!(!ids.contains(&"old".to_string()), "{ids:?}");
        assert!(ids.contains(&"live".to_string()));
    }

    #[test]
    fn lowered_cap_is_reached_again_by_later_inserts() {
        let t = ClientTable::new(100, metrics::Counter::noop());
        for i in 0..50 {
            t.touch(&format!("c{i}"), i, 100);
        }
        // Cap lowered to 10: each insert evicts up to 8 until the table fits.
        for i in 0..10 {
            t.touch(&format!("n{i}"), 100 + i, 10);
        }
        assert_eq!(t.len(), 10);
        assert_eq!(t.len.load(Ordering::Relaxed), 10);
        assert!(t.get("n9").is_some());
    }

    #[test]
    fn top_orders_by_activity() {
        let t = ClientTable::new(100, metrics::Counter::noop());
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            let e = t.touch(id, 0, 100);
            for _ in 0..i {
                e.record_message(Direction::Outbound, Some(1), 1);
            }
        }
        let ids: Vec<_> = t.top(2).iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["d", "c"]);
        assert_eq!(t.top(10).len(), 4);
    }
}
