//! The example servers' allocator: jemalloc, its figures, and giving memory back after a burst.
//!
//! jemalloc keeps recently freed blocks in a per-thread cache (tcache) for fast reuse, and a
//! thread's cache is trimmed only as that thread allocates. After thousands of connections close
//! at once, a runtime worker goes idle with its cache full of blocks from the closed
//! connections, scattered over pages that are otherwise empty: each keeps a whole page (or slab)
//! in memory. [`runtime`] gives the example servers a runtime whose workers return their cache
//! when they next go idle after the heap has shrunk to under half of its height (watched by a
//! task every [`WATCH_PERIOD`]); jemalloc's background thread then returns the emptied pages to
//! the system within a second (`dirty_decay_ms:1000` in `.cargo/config.toml`). A worker that
//! stays busy trims its cache as it allocates, so nothing runs on the hot path but one atomic
//! load when a worker parks.
//!
//! This is the examples' choice of allocator settings, not the library's: the library crates set
//! no allocator. A service that wants the same can copy this module.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tikv_jemalloc_ctl::{Access, AsName, epoch, stats};

/// How often [`runtime`]'s watch reads how much the program holds (jemalloc's
/// `stats.allocated`).
pub const WATCH_PERIOD: Duration = Duration::from_millis(500);

/// The heap must shrink by at least this much (as well as to under half of its height) before
/// the workers return their caches.
pub const MIN_SHRINK: usize = 1 << 20;

/// Bumped to ask every worker to return its cache when it next parks.
static RETURN_REQUESTS: AtomicU64 = AtomicU64::new(0);
/// Caches returned so far, by any thread.
static RETURNED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The last request this thread has answered.
    static ANSWERED: Cell<u64> = const { Cell::new(0) };
}

/// A multi-thread tokio runtime (all drivers on) whose workers return their allocator cache when
/// they park after [`request_cache_return`], with a task that asks for it whenever the heap has
/// shrunk to under half of its height since the last time ([`ShrinkWatch`]).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(on_thread_park)
        .build()?;
    let workers = runtime.metrics().num_workers();
    runtime.spawn(watch_heap(WATCH_PERIOD, workers));
    Ok(runtime)
}

/// Runs `main` as a task of [`runtime`] (so that everything it spawns and awaits runs on the
/// workers, whose caches are returned) and returns its output.
pub fn block_on<F>(main: F) -> std::io::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = runtime()?;
    runtime
        .block_on(runtime.spawn(main))
        .map_err(std::io::Error::other)
}

/// What [`runtime`]'s workers run when they park: return the cache once per request.
pub fn on_thread_park() {
    let requested = RETURN_REQUESTS.load(Ordering::Relaxed);
    ANSWERED.with(|answered| {
        if answered.get() != requested {
            answered.set(requested);
            return_thread_cache();
        }
    });
}

/// Asks every worker of a [`runtime`] to return its cache when it next parks, and wakes up to
/// `wake` parked workers (with empty tasks) so that they do so now rather than at their next
/// wake-up. Outside a runtime only the request is made.
pub fn request_cache_return(wake: usize) {
    RETURN_REQUESTS.fetch_add(1, Ordering::Relaxed);
    if tokio::runtime::Handle::try_current().is_ok() {
        for _ in 0..wake {
            tokio::spawn(async {});
        }
    }
}

/// Returns the calling thread's allocator cache to the arenas (jemalloc: `thread.tcache.enabled`
/// off and on again). `false` when the thread has no cache.
pub fn return_thread_cache() -> bool {
    let enabled = b"thread.tcache.enabled\0".name();
    let returned = matches!(Access::<bool>::read(enabled), Ok(true))
        && enabled.write(false).is_ok()
        && enabled.write(true).is_ok();
    if returned {
        RETURNED.fetch_add(1, Ordering::Relaxed);
    }
    returned
}

/// How many thread caches have been returned since the process started.
pub fn caches_returned() -> u64 {
    RETURNED.load(Ordering::Relaxed)
}

/// Bytes the program holds now (jemalloc's `stats.allocated`, after an epoch advance).
pub fn allocated() -> Option<usize> {
    epoch::advance().ok()?;
    stats::allocated::read().ok()
}

/// Decides when the heap has shrunk enough for the caches to be worth returning: below half of
/// the highest figure seen since the last time, and by at least [`MIN_SHRINK`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShrinkWatch {
    high: usize,
}

impl ShrinkWatch {
    /// Takes the allocated bytes now; `true` when the caches should be returned (the watch then
    /// measures from this figure).
    pub fn observe(&mut self, allocated: usize) -> bool {
        self.high = self.high.max(allocated);
        if allocated < self.high / 2 && self.high - allocated >= MIN_SHRINK {
            self.high = allocated;
            true
        } else {
            false
        }
    }
}

async fn watch_heap(period: Duration, workers: usize) {
    let mut watch = ShrinkWatch::default();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(allocated) = allocated() else { return };
        if watch.observe(allocated) {
            request_cache_return(workers);
        }
    }
}

/// The allocator's figures in bytes, as `/stats` shows them under `allocator` (jemalloc's
/// `stats.*`, refreshed by an epoch advance): `allocated` is what the program holds, `active`
/// the pages its blocks sit in, `metadata` jemalloc's own, `resident` what of all that is in
/// physical memory (freed pages not yet returned count here), `mapped` and `retained` the
/// address space jemalloc holds (retained: returned to the system, kept for reuse);
/// `caches_returned` counts [`return_thread_cache`].
pub fn allocator_json() -> serde_json::Value {
    if epoch::advance().is_err() {
        return serde_json::Value::Null;
    }
    let read = |r: tikv_jemalloc_ctl::Result<usize>| r.map_or(serde_json::Value::Null, Into::into);
    serde_json::json!({
        "allocated": read(stats::allocated::read()),
        "active": read(stats::active::read()),
        "metadata": read(stats::metadata::read()),
        "resident": read(stats::resident::read()),
        "mapped": read(stats::mapped::read()),
        "retained": read(stats::retained::read()),
        "caches_returned": caches_returned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_fires_when_the_heap_halves_and_measures_from_there() {
        let mut watch = ShrinkWatch::default();
        assert!(!watch.observe(10 << 20));
        assert!(!watch.observe(90 << 20), "growing");
        assert!(!watch.observe(50 << 20), "above half of the height");
        assert!(watch.observe(40 << 20), "under half");
        assert!(
            !watch.observe(30 << 20),
            "the next half is measured from 40 MB"
        );
        assert!(watch.observe(19 << 20));
        assert!(!watch.observe(19 << 20), "steady");
    }

    #[test]
    fn the_watch_ignores_small_heaps() {
        let mut watch = ShrinkWatch::default();
        assert!(!watch.observe(MIN_SHRINK - 1));
        assert!(!watch.observe(MIN_SHRINK / 4), "a shrink under MIN_SHRINK");
        assert!(!watch.observe(0), "all of it, still under MIN_SHRINK");
        assert!(!watch.observe(MIN_SHRINK));
        assert!(watch.observe(0), "MIN_SHRINK");
    }
}
