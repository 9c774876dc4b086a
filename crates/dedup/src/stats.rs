//! Counters for metrics and `/stats` pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shared::Shared;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) checked: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) rejected_unavailable: AtomicU64,
    pub(crate) released: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A snapshot of a [`DedupLayer`](crate::DedupLayer)'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DedupStats {
    /// Requests that had a key and were checked against the window.
    pub checked: u64,
    /// Duplicates dropped (they never reached the inner service).
    pub duplicates: u64,
    /// Live keys the store evicted to stay within `max_entries`.
    pub evictions: u64,
    /// Store errors and timeouts (delivered when failing open, rejected when failing closed).
    pub store_errors: u64,
    /// Requests rejected because the store failed and `on_error = "fail_closed"`.
    pub rejected_unavailable: u64,
    /// Keys released because the inner service failed or its call was dropped unfinished.
    pub released: u64,
    /// Keys remembered now, if the store knows cheaply.
    pub remembered: Option<usize>,
}

/// A cheap, cloneable view of a layer's state, for metrics and status pages; shared by the
/// layer and every service it built.
#[derive(Clone)]
pub struct DedupHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for DedupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl DedupHandle {
    /// The counters now.
    pub fn stats(&self) -> DedupStats {
        let c = &self.shared.counters;
        DedupStats {
            checked: c.checked.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            evictions: self.shared.store.evictions(),
            store_errors: c.store_errors.load(Ordering::Relaxed),
            rejected_unavailable: c.rejected_unavailable.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            remembered: self.shared.store.remembered(),
        }
    }

    /// The store holding the window.
    pub fn store(&self) -> &dyn crate::DedupStore {
        &*self.shared.store
    }
}
