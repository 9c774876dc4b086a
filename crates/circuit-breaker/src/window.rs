//! Sliding windows of call outcomes: a count window over the last `n` calls and a time window
//! over the last `n` seconds. Recording is O(1) and lock-free.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use crate::shard::{Padded, shard_hint};

/// What one finished call adds to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

impl Sample {
    const RECORDED: u8 = 1;
    const FAILED: u8 = 2;
    const SLOW: u8 = 4;

    fn bits(self) -> u8 {
        Self::RECORDED
            | if self.failure { Self::FAILED } else { 0 }
            | if self.slow { Self::SLOW } else { 0 }
    }

    fn is_bad(self) -> bool {
        self.failure || self.slow
    }
}

/// Totals of a window at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Figures {
    pub(crate) fn failure_rate(&self) -> f64 {
        percent(self.failures, self.calls)
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        percent(self.slow, self.calls)
    }
}

fn second(nanos: u64) -> u64 {
    nanos / 1_000_000_000
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

// Counters may dip below zero for an instant while two recorders race on one slot; readers see 0.
fn read(counter: &AtomicI64) -> u64 {
    counter.load(Ordering::Acquire).max(0) as u64
}

/// The outcomes of the last `size` calls.
///
/// Each call claims the next slot with one `fetch_add` and swaps its outcome in; the totals move
/// by the difference between the new and the evicted outcome, so they always equal the sum of the
/// slots once recorders have finished.
#[derive(Debug)]
pub(crate) struct CountWindow {
    head: Padded<AtomicU64>,
    slots: Box<[AtomicU8]>,
    filled: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = size.max(1) as usize;
        Self {
            head: Padded(AtomicU64::new(0)),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            filled: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    /// Records `sample`. Returns the figures when the rates may have risen or the number of calls
    /// grew, `None` when they can only have stayed or fallen (no check needed).
    pub(crate) fn record(&self, sample: Sample) -> Option<Figures> {
        let len = self.slots.len() as u64;
        let index = (self.head.0.fetch_add(1, Ordering::Relaxed) % len) as usize;
        let new = sample.bits();
        let old = self.slots[index].swap(new, Ordering::AcqRel);
        if old != new {
            if old & Sample::RECORDED == 0 {
                self.filled.fetch_add(1, Ordering::AcqRel);
            }
            let delta = |bit: u8| i64::from(new & bit != 0) - i64::from(old & bit != 0);
            let failed = delta(Sample::FAILED);
            if failed != 0 {
                self.failures.fetch_add(failed, Ordering::AcqRel);
            }
            let slow = delta(Sample::SLOW);
            if slow != 0 {
                self.slow.fetch_add(slow, Ordering::AcqRel);
            }
        }
        (old == 0 || sample.is_bad()).then(|| self.figures())
    }

    pub(crate) fn figures(&self) -> Figures {
        Figures {
            calls: read(&self.filled),
            failures: read(&self.failures),
            slow: read(&self.slow),
        }
    }
}

/// The outcomes of the calls of the last `secs` whole seconds, in one bucket per second.
///
/// Each thread records into its own shard (the union of the shards is the window, so sharding
/// changes nothing in the figures); a shard drops the buckets that fall out of the window when
/// a later second is first seen. The figures sum the shards.
///
/// Times are nanoseconds since the breaker's base instant.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    secs: u64,
    shards: Box<[Padded<TimeShard>]>,
    // Last second at which the figures were checked, and whether they held enough calls then:
    // until then every call is checked, afterwards only bad calls and the first call of a second.
    checked_sec: AtomicU64,
    primed: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct TimeShard {
    head: AtomicU64,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
    buckets: Box<[Bucket]>,
}

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl TimeShard {
    /// Drops the buckets of seconds that `sec` pushes out of the window.
    fn advance(&self, sec: u64, secs: u64) {
        let mut head = self.head.load(Ordering::Acquire);
        while sec > head {
            match self
                .head
                .compare_exchange_weak(head, sec, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let from = (head + 1).max(sec.saturating_sub(secs - 1));
                    for s in from..=sec {
                        let bucket = &self.buckets[(s % secs) as usize];
                        let calls = bucket.calls.swap(0, Ordering::AcqRel);
                        let failures = bucket.failures.swap(0, Ordering::AcqRel);
                        let slow = bucket.slow.swap(0, Ordering::AcqRel);
                        if calls != 0 {
                            self.calls.fetch_sub(calls, Ordering::AcqRel);
                        }
                        if failures != 0 {
                            self.failures.fetch_sub(failures, Ordering::AcqRel);
                        }
                        if slow != 0 {
                            self.slow.fetch_sub(slow, Ordering::AcqRel);
                        }
                    }
                    return;
                }
                Err(current) => head = current,
            }
        }
    }
}

impl TimeWindow {
    pub(crate) fn new(secs: u64, now: u64, shards: usize) -> Self {
        let secs = secs.max(1);
        let start = second(now);
        Self {
            secs,
            shards: (0..shards.max(1))
                .map(|_| {
                    Padded(TimeShard {
                        head: AtomicU64::new(start),
                        calls: AtomicI64::new(0),
                        failures: AtomicI64::new(0),
                        slow: AtomicI64::new(0),
                        buckets: (0..secs).map(|_| Bucket::default()).collect(),
                    })
                })
                .collect(),
            checked_sec: AtomicU64::new(start),
            primed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records `sample` taken at `now`. Returns the figures when a check is due: a bad call, the
    /// first call of a new second (older calls have left the window), or fewer than `min_calls`
    /// calls at the last check.
    pub(crate) fn record(&self, sample: Sample, now: u64, min_calls: u32) -> Option<Figures> {
        let sec = second(now);
        let shard = &self.shards[shard_hint() & (self.shards.len() - 1)].0;
        shard.advance(sec, self.secs);
        if sec + self.secs <= shard.head.load(Ordering::Acquire) {
            return None;
        }
        let bucket = &shard.buckets[(sec % self.secs) as usize];
        bucket.calls.fetch_add(1, Ordering::AcqRel);
        shard.calls.fetch_add(1, Ordering::AcqRel);
        if sample.failure {
            bucket.failures.fetch_add(1, Ordering::AcqRel);
            shard.failures.fetch_add(1, Ordering::AcqRel);
        }
        if sample.slow {
            bucket.slow.fetch_add(1, Ordering::AcqRel);
            shard.slow.fetch_add(1, Ordering::AcqRel);
        }
        let new_second = self.checked_sec.load(Ordering::Relaxed) < sec;
        if !(sample.is_bad() || new_second || !self.primed.load(Ordering::Relaxed)) {
            return None;
        }
        if new_second {
            self.checked_sec.fetch_max(sec, Ordering::Relaxed);
        }
        let figures = self.figures_at(sec);
        self.primed
            .store(figures.calls >= u64::from(min_calls), Ordering::Relaxed);
        Some(figures)
    }

    pub(crate) fn figures(&self, now: u64) -> Figures {
        self.figures_at(second(now))
    }

    fn figures_at(&self, sec: u64) -> Figures {
        let mut total = Figures::default();
        for shard in self.shards.iter() {
            let shard = &shard.0;
            shard.advance(sec, self.secs);
            total.calls += read(&shard.calls);
            total.failures += read(&shard.failures);
            total.slow += read(&shard.slow);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };
    const SLOW: Sample = Sample {
        failure: false,
        slow: true,
    };

    #[test]
    fn count_window_keeps_only_last_calls() {
        let w = CountWindow::new(3);
        w.record(FAIL);
        w.record(FAIL);
        w.record(OK);
        assert_eq!(
            w.figures(),
            Figures {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        w.record(OK);
        w.record(SLOW);
        assert_eq!(
            w.figures(),
            Figures {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
    }

    #[test]
    fn count_window_skips_check_when_full_and_call_succeeds() {
        let w = CountWindow::new(2);
        assert!(w.record(OK).is_some(), "filling: calls grew");
        assert!(w.record(OK).is_some());
        assert!(
            w.record(OK).is_none(),
            "full window, success: rates cannot rise"
        );
        assert!(w.record(FAIL).is_some());
    }

    #[test]
    fn count_window_totals_match_slots_under_threads() {
        let w = std::sync::Arc::new(CountWindow::new(7));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let s = if (i + t) % 3 == 0 { FAIL } else { OK };
                        w.record(s);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let in_slots = w
            .slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) & Sample::FAILED != 0)
            .count() as u64;
        assert_eq!(w.figures().failures, in_slots);
        assert_eq!(w.figures().calls, 7);
    }

    #[test]
    fn time_window_forgets_calls_older_than_its_span() {
        let w = TimeWindow::new(2, 0, 2);
        w.record(FAIL, 0, 1);
        w.record(OK, SEC, 1);
        assert_eq!(
            w.figures(SEC),
            Figures {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(
            w.figures(2 * SEC + 5),
            Figures {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.figures(12 * SEC), Figures::default());
    }

    #[test]
    fn time_window_checks_until_primed_then_only_bad_or_new_second() {
        let w = TimeWindow::new(10, 0, 1);
        assert!(w.record(OK, 1, 2).is_some());
        assert!(w.record(OK, 2, 2).is_some());
        assert!(w.record(OK, 3, 2).is_none(), "primed, success");
        assert!(w.record(SLOW, 4, 2).is_some());
        assert!(w.record(OK, SEC, 2).is_some(), "new second");
    }
}
