//! Per-thread sharding: counters that every call writes live in one shard per thread, so that
//! two cores do not fight over one cache line.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Keeps a value on its own cache lines (128 bytes covers adjacent-line prefetch).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A small number fixed per thread; callers mask it with a power-of-two shard count.
#[inline]
pub(crate) fn shard_hint() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HINT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    HINT.with(|hint| *hint)
}

/// The most shards a breaker has.
pub(crate) const MAX_SHARDS: usize = 64;

/// Shards per breaker: the number of cores, rounded up to a power of two, at most
/// [`MAX_SHARDS`].
pub(crate) fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .next_power_of_two()
        .min(MAX_SHARDS)
}
