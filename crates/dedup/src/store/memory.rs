use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use wsguard_config::DedupConfig;

use super::{Claim, ClaimFuture, DedupStore};
use crate::fingerprint::Fingerprint;

mod window;

use self::window::Window;

const MAX_SHARDS: usize = 64;
/// Ring positions are stored in 32 bits of a table slot.
const MAX_PER_SHARD: usize = u32::MAX as usize;
/// Times are milliseconds in a wrapping `u32`; a ttl must stay below half its range.
const MAX_TTL_MS: u64 = (1 << 31) - 1;

/// The embedded window: a bounded, sharded, in-memory set of keys that expire `ttl` after
/// their first sight.
///
/// Each shard keeps its keys in a ring in order of first sight (20 bytes a key) and an
/// open-addressing index into that ring (8 bytes a slot, at most 3/4 full: ring position, a
/// 24-bit tag that spares most key comparisons, and the probe distance, so that deleting never
/// has to look keys up). Expiry pops the oldest keys from the front of the ring, a few per claim,
/// so neither a claim nor an expiry ever scans the remembered keys; when a shard holds its share
/// of `max_entries`, its oldest key is evicted and counted. Shards are picked by key bits, each
/// behind its own mutex held for one check-and-insert, so there is no global lock.
///
/// [`len`](Self::len) counts the keys it holds; through [`DedupStore`] the same figure is
/// [`remembered`](DedupStore::remembered), next to [`evictions`](DedupStore::evictions).
///
/// Bounds: at most 64 shards of at most 2^32 - 1 keys each; `ttl` at most 24 days.
///
/// ```
/// use std::time::Duration;
/// use wsguard_dedup::{Claim, DedupStore, Fingerprinter, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::new(1_000);
/// let key = Fingerprinter::random(true).fingerprint_json(br#"{"op":"buy"}"#);
/// let ttl = Duration::from_secs(60);
/// assert_eq!(store.claim(key, ttl).await.unwrap(), Claim::Fresh);
/// assert!(matches!(store.claim(key, ttl).await.unwrap(), Claim::Duplicate { .. }));
/// # }
/// ```
pub struct MemoryStore {
    shards: Box<[Shard]>,
    shard_mask: usize,
    max_entries: AtomicUsize,
    evictions: AtomicU64,
    epoch: Instant,
}

// One cache line each, so that shards locked by different cores do not share a line.
#[repr(align(64))]
struct Shard(Mutex<Window>);

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("max_entries", &self.max_entries.load(Ordering::Relaxed))
            .field("evictions", &self.evictions.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store remembering at most `max_entries` keys (more shards for larger bounds).
    pub fn new(max_entries: usize) -> Self {
        let max_entries = max_entries.clamp(1, MAX_PER_SHARD.saturating_mul(MAX_SHARDS));
        // About 4k keys per shard before sharding further; a small store stays one exact FIFO.
        let shards = (max_entries / 4096)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        Self::with_shards(max_entries, shards)
    }

    /// A store with `shards` shards (rounded up to a power of two, at most 64).
    pub fn with_shards(max_entries: usize, shards: usize) -> Self {
        let shards = shards.next_power_of_two().clamp(1, MAX_SHARDS);
        let max_entries = max_entries.clamp(1, MAX_PER_SHARD.saturating_mul(shards));
        Self {
            shards: (0..shards)
                .map(|_| Shard(Mutex::new(Window::new())))
                .collect(),
            shard_mask: shards - 1,
            max_entries: AtomicUsize::new(max_entries),
            evictions: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Sized from `config.max_entries`.
    pub fn from_config(config: &DedupConfig) -> Self {
        Self::new(config.max_entries)
    }

    /// Check-and-insert without a future: what [`DedupStore::claim`] answers.
    pub fn check_and_insert(&self, key: Fingerprint, ttl: Duration) -> Claim {
        let now = self.now_ms();
        let ttl = ttl.as_millis().clamp(1, MAX_TTL_MS as u128) as u32;
        let (claim, evicted) = self
            .shard(key)
            .claim(key.as_u128(), now, ttl, self.per_shard());
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        claim
    }

    /// Forgets `key`.
    pub fn remove(&self, key: Fingerprint) {
        self.shard(key).remove(key.as_u128());
    }

    /// Keys remembered now (expired keys not yet dropped included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).live()).sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held by the window (ring and index capacity of every shard).
    pub fn heap_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).heap_bytes()).sum()
    }

    /// Sets the bound on remembered keys (split evenly between the shards).
    pub fn set_max_entries(&self, max_entries: usize) {
        let max = max_entries.clamp(1, MAX_PER_SHARD.saturating_mul(self.shards.len()));
        self.max_entries.store(max, Ordering::Relaxed);
    }

    fn per_shard(&self) -> usize {
        self.max_entries
            .load(Ordering::Relaxed)
            .div_ceil(self.shards.len())
    }

    fn shard(&self, key: Fingerprint) -> MutexGuard<'_, Window> {
        // The table uses the low 64 bits; the shard comes from the high ones.
        let idx = ((key.as_u128() >> 96) as usize) & self.shard_mask;
        lock(&self.shards[idx].0)
    }

    fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64
    }
}

fn lock(m: &Mutex<Window>) -> MutexGuard<'_, Window> {
    // A panic while holding a shard cannot leave it inconsistent in a way that matters more than
    // losing the whole window; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DedupStore for MemoryStore {
    fn claim(&self, key: Fingerprint, ttl: Duration) -> ClaimFuture {
        ClaimFuture::ready(Ok(self.check_and_insert(key, ttl)))
    }

    fn release(&self, key: Fingerprint) {
        self.remove(key);
    }

    fn configure(&self, config: &DedupConfig) {
        self.set_max_entries(config.max_entries);
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn remembered(&self) -> Option<usize> {
        Some(self.len())
    }
}
