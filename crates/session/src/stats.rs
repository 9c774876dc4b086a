//! Counters of a registry.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::StoreCounts;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) created: AtomicU64,
    pub(crate) resumed: AtomicU64,
    /// Indexed by `RefusalReason as usize`.
    pub(crate) refused: [AtomicU64; 4],
    pub(crate) replayed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) evicted: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self, counts: Option<StoreCounts>) -> SessionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SessionStats {
            sessions: counts.map(|c| c.sessions),
            detached: counts.map(|c| c.detached),
            bytes: counts.map(|c| c.bytes),
            created: get(&self.created),
            resumed: get(&self.resumed),
            refused: Refused {
                unknown: get(&self.refused[0]),
                expired: get(&self.refused[1]),
                gap: get(&self.refused[2]),
                unavailable: get(&self.refused[3]),
            },
            replayed: get(&self.replayed),
            dropped: get(&self.dropped),
            expired: get(&self.expired),
            evicted: get(&self.evicted),
        }
    }
}

/// A snapshot of a registry's counters (totals since it was made) and its store's sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Sessions held now, attached or detached (`None` if the store cannot count cheaply).
    pub sessions: Option<usize>,
    /// Sessions held now whose client is away.
    pub detached: Option<usize>,
    /// Payload bytes held now in all logs.
    pub bytes: Option<usize>,
    /// Sessions opened (by `hello`, or in place of a refused resume).
    pub created: u64,
    /// Resumes that succeeded.
    pub resumed: u64,
    /// Resumes refused, and opens answered `unavailable`, by reason.
    pub refused: Refused,
    /// Messages sent again on resume.
    pub replayed: u64,
    /// Unacknowledged messages dropped by a bound (`max_messages`, `max_bytes`,
    /// `max_total_bytes`).
    pub dropped: u64,
    /// Sessions freed after the TTL.
    pub expired: u64,
    /// Detached sessions freed early by a global cap (`max_sessions`, `max_total_bytes`).
    pub evicted: u64,
}

/// Refusals by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refused {
    /// Unknown token, or another client's.
    pub unknown: u64,
    /// Expired (or evicted) session.
    pub expired: u64,
    /// Messages after the client's `last` were dropped by a bound.
    pub gap: u64,
    /// No session could be opened.
    pub unavailable: u64,
}
