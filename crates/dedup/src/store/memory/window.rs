//! One shard's window: keys in a ring in order of first sight, and an open-addressing index
//! from key to ring position.

use std::collections::VecDeque;
use std::time::Duration;

use super::MAX_PER_SHARD;
use crate::store::Claim;

/// Probe distances are stored in 8 bits of a slot; a longer chain grows the table.
const MAX_DIST: u64 = 255;
/// Expired entries dropped per claim at most, so that a burst of expiries is spread out.
const PURGE_BATCH: usize = 8;
const MIN_TABLE: usize = 16;

#[derive(Clone, Copy)]
struct Entry {
    key: [u32; 4],
    /// First sight, in wrapping milliseconds since the store's epoch.
    at: u32,
}

fn split(key: u128) -> [u32; 4] {
    [
        key as u32,
        (key >> 32) as u32,
        (key >> 64) as u32,
        (key >> 96) as u32,
    ]
}

fn table_hash(key: &[u32; 4]) -> usize {
    // Fingerprints are already uniform, but a multiplicative mix keeps probe chains short even
    // for structured keys (sequential test ids, a custom store key): linear probing clusters
    // badly on lattices. The high half of the product carries the well-mixed bits.
    let lo = u64::from(key[0]) | u64::from(key[1]) << 32;
    let hi = u64::from(key[2]) | u64::from(key[3]) << 32;
    ((lo ^ hi.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize
}

/// A slot: `seq << 32 | tag << 8 | dist`; the tag is never 0, so 0 marks an empty slot.
fn slot(seq: u32, key: &[u32; 4], dist: u64) -> u64 {
    u64::from(seq) << 32 | u64::from((key[2] & 0x00ff_ffff) | 1) << 8 | dist
}

fn slot_tag(key: &[u32; 4]) -> u64 {
    u64::from((key[2] & 0x00ff_ffff) | 1) << 8
}

const TAG_BITS: u64 = 0xffff_ff00;

/// One shard: keys in order of first sight, and an index from key to ring position.
pub(super) struct Window {
    ring: VecDeque<Entry>,
    /// Sequence number (mod 2^32) of `ring[0]`.
    head_seq: u32,
    /// Linear probing; a slot is 0 (empty) or see [`slot`].
    table: Vec<u64>,
    /// Keys in `table`. Ring entries outside it (released or superseded) are inert.
    live: usize,
    last_ms: u64,
}

impl Window {
    pub(super) fn new() -> Self {
        Self {
            ring: VecDeque::new(),
            head_seq: 0,
            table: vec![0; MIN_TABLE],
            live: 0,
            last_ms: 0,
        }
    }

    /// Keys in the index (expired keys not yet dropped included).
    pub(super) fn live(&self) -> usize {
        self.live
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.ring.capacity() * size_of::<Entry>() + self.table.capacity() * size_of::<u64>()
    }

    pub(super) fn claim(&mut self, key: u128, now: u64, ttl: u32, cap: usize) -> (Claim, u64) {
        // Callers read the clock before taking the lock, so a claim may arrive with an earlier
        // time than the last one; keep shard time monotonic or a fresh entry would look expired.
        let now = now.max(self.last_ms);
        // Every entry is at least as old as the last claim: after a ttl of silence all expired.
        if now.saturating_sub(self.last_ms) >= u64::from(ttl) && !self.ring.is_empty() {
            self.clear();
        }
        self.last_ms = now;
        let now32 = now as u32;
        self.purge(now32, ttl);

        let k = split(key);
        if self.ring.len() >= cap {
            // The oldest key is evicted below: touch its slot now, so that its cache miss
            // overlaps the lookup of `key` instead of following it.
            if let Some(front) = self.ring.front() {
                let mask = self.table.len() - 1;
                std::hint::black_box(self.table[table_hash(&front.key) & mask]);
            }
        }
        if let Some((slot, pos)) = self.find(&k) {
            let age = now32.wrapping_sub(self.ring[pos].at);
            if age < ttl {
                return (
                    Claim::Duplicate {
                        age: Duration::from_millis(u64::from(age)),
                    },
                    0,
                );
            }
            // Expired but not yet purged: it starts afresh below.
            self.remove_slot(slot);
        }

        let mut evicted = 0;
        while self.ring.len() >= cap.min(MAX_PER_SHARD) {
            evicted += u64::from(self.pop_front());
        }
        if self.ring.len() == self.ring.capacity() {
            // Grow by a quarter, not by double, to keep the memory per key low.
            let more = (self.ring.len() / 4).max(16).min(cap - self.ring.len());
            self.ring.reserve_exact(more);
        }
        let seq = self.head_seq.wrapping_add(self.ring.len() as u32);
        self.ring.push_back(Entry { key: k, at: now32 });
        if (self.live + 1) * 4 > self.table.len() * 3 {
            self.resize(self.table.len() * 2);
        }
        self.insert_slot(&k, seq);
        (Claim::Fresh, evicted)
    }

    pub(super) fn remove(&mut self, key: u128) {
        if let Some((slot, _)) = self.find(&split(key)) {
            self.remove_slot(slot);
        }
    }

    fn clear(&mut self) {
        self.ring.clear();
        self.head_seq = 0;
        self.table.clear();
        self.table.resize(MIN_TABLE, 0);
        self.table.shrink_to_fit();
        self.ring.shrink_to(MIN_TABLE);
        self.live = 0;
    }

    fn purge(&mut self, now: u32, ttl: u32) {
        for _ in 0..PURGE_BATCH {
            match self.ring.front() {
                Some(e) if now.wrapping_sub(e.at) >= ttl => {
                    self.pop_front();
                }
                _ => break,
            }
        }
        if self.table.len() > MIN_TABLE && self.live * 8 < self.table.len() {
            self.resize(self.table.len() / 2);
        }
        if self.ring.capacity() > 64 && self.ring.len() * 4 < self.ring.capacity() {
            self.ring.shrink_to(self.ring.len() * 2);
        }
    }

    /// Drops the oldest ring entry; answers whether it was a live key (an eviction if unexpired).
    fn pop_front(&mut self) -> bool {
        let Some(front) = self.ring.front().copied() else {
            return false;
        };
        let mut live = false;
        if let Some((slot, _)) = self.find(&front.key) {
            // The key may have been released and claimed again: that newer entry stays.
            if (self.table[slot] >> 32) as u32 == self.head_seq {
                self.remove_slot(slot);
                live = true;
            }
        }
        self.ring.pop_front();
        self.head_seq = self.head_seq.wrapping_add(1);
        live
    }

    fn pos(&self, slot_value: u64) -> usize {
        ((slot_value >> 32) as u32).wrapping_sub(self.head_seq) as usize
    }

    fn find(&self, k: &[u32; 4]) -> Option<(usize, usize)> {
        let mask = self.table.len() - 1;
        let t = slot_tag(k);
        let mut i = table_hash(k) & mask;
        loop {
            let s = self.table[i];
            if s == 0 {
                return None;
            }
            if s & TAG_BITS == t {
                let pos = self.pos(s);
                if self.ring.get(pos).is_some_and(|e| e.key == *k) {
                    return Some((i, pos));
                }
            }
            i = (i + 1) & mask;
        }
    }

    fn insert_slot(&mut self, k: &[u32; 4], seq: u32) {
        loop {
            let mask = self.table.len() - 1;
            let mut i = table_hash(k) & mask;
            let mut dist = 0;
            while self.table[i] != 0 && dist <= MAX_DIST {
                i = (i + 1) & mask;
                dist += 1;
            }
            if dist <= MAX_DIST {
                self.table[i] = slot(seq, k, dist);
                self.live += 1;
                return;
            }
            // A chain this long means bad luck at high load: spread out.
            self.resize(self.table.len() * 2);
        }
    }

    /// Backward-shift deletion: no tombstones, so probe chains stay short. The stored distances
    /// give each entry's home slot, so nothing is looked up in the ring.
    fn remove_slot(&mut self, slot: usize) {
        let mask = self.table.len() - 1;
        self.live -= 1;
        self.table[slot] = 0;
        let mut hole = slot;
        let mut j = (slot + 1) & mask;
        loop {
            let s = self.table[j];
            if s == 0 {
                return;
            }
            let dist = (s & 0xff) as usize;
            // Move back unless its home lies in (hole, j]: then the hole is before its home.
            if dist >= (j.wrapping_sub(hole) & mask) {
                let new_dist = (dist - (j.wrapping_sub(hole) & mask)) as u64;
                self.table[hole] = (s & !0xff) | new_dist;
                self.table[j] = 0;
                hole = j;
            }
            j = (j + 1) & mask;
        }
    }

    fn resize(&mut self, len: usize) {
        let len = len.max(MIN_TABLE);
        let old = std::mem::replace(&mut self.table, vec![0; len]);
        self.live = 0;
        for s in old.into_iter().filter(|&s| s != 0) {
            let k = self.ring[self.pos(s)].key;
            self.insert_slot(&k, (s >> 32) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u32 = 1_000;

    fn k(i: u64) -> u128 {
        // Spread like real fingerprints.
        let x = u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        x ^ (x >> 67)
    }

    fn dup(c: Claim) -> bool {
        matches!(c, Claim::Duplicate { .. })
    }

    #[test]
    fn claim_then_duplicate_then_expiry() {
        let mut w = Window::new();
        assert_eq!(w.claim(k(1), 0, TTL, 100).0, Claim::Fresh);
        assert_eq!(
            w.claim(k(1), 999, TTL, 100).0,
            Claim::Duplicate {
                age: Duration::from_millis(999)
            }
        );
        assert_eq!(w.claim(k(1), 1000, TTL, 100).0, Claim::Fresh);
        assert!(dup(w.claim(k(1), 1500, TTL, 100).0));
    }

    #[test]
    fn many_keys_survive_growth_shrink_and_deletions() {
        let mut w = Window::new();
        let n = 5_000;
        for i in 0..n {
            assert_eq!(w.claim(k(i), 0, TTL, 1 << 20).0, Claim::Fresh, "{i}");
        }
        for i in (0..n).step_by(3) {
            w.remove(k(i));
        }
        for i in 0..n {
            assert_eq!(dup(w.claim(k(i), 10, TTL, 1 << 20).0), i % 3 != 0, "{i}");
        }
        assert_eq!(w.live, n as usize);
        // Time moves on: old keys are purged a batch per claim, the index shrinks back.
        for j in 0..2 * n {
            assert_eq!(w.claim(k(n + j), 1_000 + j, TTL, 1 << 20).0, Claim::Fresh);
        }
        assert!(w.live <= TTL as usize + 1, "live {}", w.live);
        assert!(w.table.len() <= 4 * 1024, "table {}", w.table.len());
        assert!(dup(w.claim(k(3 * n - 1), 1_000 + 2 * n, TTL, 1 << 20).0));
        assert_eq!(w.claim(k(1), 1_000 + 2 * n, TTL, 1 << 20).0, Claim::Fresh);
    }

    #[test]
    fn every_other_key_stays_findable_through_removals() {
        let mut w = Window::new();
        let n = 3_000;
        for i in 0..n {
            w.claim(k(i), 0, TTL, 1 << 20);
        }
        for i in (0..n).step_by(3) {
            w.remove(k(i));
            assert!(w.find(&split(k(i))).is_none(), "{i} still present");
            if i % 150 == 0 {
                for j in 0..n {
                    let present = j > i || j % 3 != 0;
                    assert_eq!(w.find(&split(k(j))).is_some(), present, "key {j} after {i}");
                }
            }
        }
        assert_eq!(w.live, (n - n.div_ceil(3)) as usize);
    }

    #[test]
    fn cap_evicts_oldest_and_counts_only_live_keys() {
        let mut w = Window::new();
        for i in 0..3 {
            assert_eq!(w.claim(k(i), i, TTL, 3), (Claim::Fresh, 0));
        }
        assert_eq!(w.claim(k(3), 3, TTL, 3), (Claim::Fresh, 1));
        assert_eq!(
            w.claim(k(0), 4, TTL, 3),
            (Claim::Fresh, 1),
            "oldest was evicted"
        );
        assert!(dup(w.claim(k(2), 5, TTL, 3).0));
        assert!(dup(w.claim(k(3), 5, TTL, 3).0));
        // A released key still occupies its ring slot, but its eviction is not counted.
        w.remove(k(2));
        assert_eq!(w.claim(k(5), 6, TTL, 3), (Claim::Fresh, 0));
    }

    #[test]
    fn released_and_reclaimed_key_outlives_its_old_entry() {
        let mut w = Window::new();
        assert_eq!(w.claim(k(7), 0, TTL, 10).0, Claim::Fresh);
        w.remove(k(7));
        assert_eq!(w.claim(k(7), 500, TTL, 10).0, Claim::Fresh);
        // The first entry expires at 1000; the second must survive until 1500.
        assert_eq!(w.claim(k(8), 1_200, TTL, 10).0, Claim::Fresh);
        assert!(dup(w.claim(k(7), 1_300, TTL, 10).0));
    }

    #[test]
    fn a_claim_with_an_earlier_clock_reading_still_sees_the_key() {
        let mut w = Window::new();
        assert_eq!(w.claim(k(1), 50, TTL, 10).0, Claim::Fresh);
        // Another thread read the clock at 49 and got the lock later.
        assert!(dup(w.claim(k(1), 49, TTL, 10).0));
        assert!(dup(w.claim(k(1), 0, TTL, 10).0));
    }

    #[test]
    fn silence_longer_than_ttl_clears_the_shard() {
        let mut w = Window::new();
        for i in 0..100 {
            w.claim(k(i), 0, TTL, 1_000);
        }
        assert_eq!(w.claim(k(1_000), 5_000, TTL, 1_000).0, Claim::Fresh);
        assert_eq!(w.live, 1);
    }
}
