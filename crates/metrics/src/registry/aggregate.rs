//! Exact aggregate counters, one set per thread so that cores do not fight over one cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::Direction;
use wsguard_policy::Outcome;

use crate::classify;

/// The counters of the threads whose index maps here (one thread each, up to the count), alone
/// on their cache lines.
#[repr(align(128))]
#[derive(Default)]
struct ThreadCounters {
    /// Calls started, by direction.
    calls: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    outcomes: [AtomicU64; 4],
    cancelled: AtomicU64,
}

pub(crate) struct Counters {
    per_thread: Box<[ThreadCounters]>,
    mask: usize,
}

/// Totals summed over every thread's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub(crate) calls: [u64; 2],
    pub(crate) bytes: [u64; 2],
    pub(crate) outcomes: [u64; 4],
    pub(crate) cancelled: u64,
}

impl Totals {
    pub(crate) fn add(&mut self, other: &Totals) {
        for d in 0..2 {
            self.calls[d] += other.calls[d];
            self.bytes[d] += other.bytes[d];
        }
        for (a, b) in self.outcomes.iter_mut().zip(&other.outcomes) {
            *a += b;
        }
        self.cancelled += other.cancelled;
    }

    pub(crate) fn in_flight(&self) -> u64 {
        let started = self.calls[0] + self.calls[1];
        let finished: u64 = self.outcomes.iter().sum::<u64>() + self.cancelled;
        started.saturating_sub(finished)
    }
}

fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        let v = i.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed);
        i.set(v);
        v
    })
}

impl Counters {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let n = (cores * 2).next_power_of_two().clamp(4, 64);
        Self {
            per_thread: (0..n).map(|_| ThreadCounters::default()).collect(),
            mask: n - 1,
        }
    }

    #[inline]
    fn local(&self) -> &ThreadCounters {
        &self.per_thread[thread_index() & self.mask]
    }

    #[inline]
    pub(crate) fn start(&self, direction: Direction, bytes: Option<u64>) {
        let s = self.local();
        let d = direction.index();
        s.calls[d].fetch_add(1, Ordering::Relaxed);
        if let Some(b) = bytes {
            s.bytes[d].fetch_add(b, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn finish(&self, outcome: Outcome) {
        self.local().outcomes[classify::index(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn cancel(&self) {
        self.local().cancelled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.per_thread.iter() {
            for d in 0..2 {
                t.calls[d] += s.calls[d].load(Ordering::Relaxed);
                t.bytes[d] += s.bytes[d].load(Ordering::Relaxed);
            }
            for (o, c) in t.outcomes.iter_mut().zip(&s.outcomes) {
                *o += c.load(Ordering::Relaxed);
            }
            t.cancelled += s.cancelled.load(Ordering::Relaxed);
        }
        t
    }
}

/// Latency histogram over the configured bucket bounds (seconds), plus an overflow bucket.
pub(crate) struct LatencyHistogram {
    bounds: Box<[f64]>,
    // bounds.len() + 1 counts; the last one is above every bound.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.into(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    pub(crate) fn record(&self, seconds: f64, nanos: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative), the overflow count last, and the sum in nanoseconds.
    pub(crate) fn read(&self) -> (Vec<u64>, u64) {
        (
            self.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            self.sum_nanos.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_values_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::new(&[0.001, 0.01, 0.1]);
        h.record(0.0005, 500_000);
        h.record(0.001, 1_000_000);
        h.record(0.05, 50_000_000);
        h.record(3.0, 3_000_000_000);
        let (counts, sum) = h.read();
        assert_eq!(counts, vec![2, 0, 1, 1]);
        assert_eq!(sum, 3_051_500_000);
    }

    #[test]
    fn totals_sum_every_thread() {
        let c = std::sync::Arc::new(Counters::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.start(Direction::Inbound, Some(3));
                        c.finish(Outcome::Success);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let t = c.totals();
        assert_eq!(t.calls, [4000, 0]);
        assert_eq!(t.bytes, [12_000, 0]);
        assert_eq!(t.outcomes, [4000, 0, 0, 0]);
        assert_eq!(t.in_flight(), 0);
    }
}
