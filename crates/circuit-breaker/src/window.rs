//! Sliding windows of call outcomes: a count window over the last `n` calls and a time window
//! over the last `n` seconds. Recording is O(1) and lock-free.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use crate::shard::Padded;

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
/// Each call claims a slot and swaps its outcome in; the totals move by the difference between
/// the new and the evicted outcome, so they equal the sum of the slots once recorders finish.
///
/// Slots are handed out in blocks of `block` consecutive slots, one block per shard at a time,
/// and each block lives on its own cache line: threads on different shards share no line while
/// they record. A block is claimed with one `fetch_add` on the shared head every `block` calls.
/// With one thread this is exactly the last `size` calls; with several, up to `block - 1` slots
/// per shard still hold an outcome from one lap earlier until their thread gets to them.
#[derive(Debug)]
pub(crate) struct CountWindow {
    head: Padded<AtomicU64>,
    cursors: Box<[Padded<AtomicU64>]>,
    size: u64,
    block: u64,
    slots: Box<[AtomicU8]>,
    filled: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

/// A cursor that holds no block.
const NO_BLOCK: u64 = u64::MAX;
const LINE: u64 = 64;

impl CountWindow {
    /// A window over `size` calls recorded from up to `shards` threads at once.
    pub(crate) fn new(size: u32, shards: usize) -> Self {
        let size = u64::from(size.max(1));
        let shards = shards.max(1) as u64;
        // Blocks small enough that unfinished ones are at most a quarter of the window; none
        // for one shard, which every thread shares (the probes of a half-open breaker).
        let block = if shards == 1 {
            1
        } else {
            (size / (4 * shards)).clamp(1, LINE)
        };
        let block = if block.is_power_of_two() {
            block
        } else {
            block.next_power_of_two() / 2
        };
        let len = if block == 1 {
            size
        } else {
            size.div_ceil(block) * LINE
        };
        Self {
            head: Padded(AtomicU64::new(0)),
            cursors: (0..shards)
                .map(|_| Padded(AtomicU64::new(NO_BLOCK)))
                .collect(),
            size,
            block,
            slots: (0..len).map(|_| AtomicU8::new(0)).collect(),
            filled: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    /// The next slot for a thread of `shard`, as a position in the ring.
    #[inline]
    fn claim(&self, shard: usize) -> usize {
        let slot = if self.block == 1 {
            self.head.0.fetch_add(1, Ordering::Relaxed)
        } else {
            let cursor = &self.cursors[shard % self.cursors.len()].0;
            let mut current = cursor.load(Ordering::Relaxed);
            loop {
                let exhausted = current == NO_BLOCK || current.is_multiple_of(self.block);
                let (slot, next) = if exhausted {
                    let start = self.head.0.fetch_add(self.block, Ordering::Relaxed);
                    (start, start + 1)
                } else {
                    (current, current + 1)
                };
                // Only threads sharing a shard race here; a block lost to the race is skipped.
                match cursor.compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break slot,
                    Err(actual) => current = actual,
                }
            }
        };
        let position = slot % self.size;
        if self.block == 1 {
            position as usize
        } else {
            ((position / self.block) * LINE + position % self.block) as usize
        }
    }

    /// Records `sample` from a thread of `shard`. Returns the figures when the rates may have
    /// risen or the number of calls grew, `None` when they can only have stayed or fallen (no
    /// check needed).
    #[inline]
    pub(crate) fn record(&self, sample: Sample, shard: usize) -> Option<Figures> {
        let index = self.claim(shard);
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

    /// Records `sample` taken at `now` by a thread of `shard`. Returns the figures when a check
    /// is due: a bad call, the first call of a new second (older calls have left the window), or
    /// fewer than `min_calls` calls at the last check.
    pub(crate) fn record(
        &self,
        sample: Sample,
        shard: usize,
        now: u64,
        min_calls: u32,
    ) -> Option<Figures> {
        let sec = second(now);
        let shard = &self.shards[shard % self.shards.len()].0;
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
        let w = CountWindow::new(3, 1);
        w.record(FAIL, 0);
        w.record(FAIL, 0);
        w.record(OK, 0);
        assert_eq!(
            w.figures(),
            Figures {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        w.record(OK, 0);
        w.record(SLOW, 0);
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
        let w = CountWindow::new(2, 1);
        assert!(w.record(OK, 0).is_some(), "filling: calls grew");
        assert!(w.record(OK, 0).is_some());
        assert!(
            w.record(OK, 0).is_none(),
            "full window, success: rates cannot rise"
        );
        assert!(w.record(FAIL, 0).is_some());
    }

    fn totals_match_slots_under_threads(size: u32, shards: usize) {
        let w = std::sync::Arc::new(CountWindow::new(size, shards));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let s = if (i + t) % 3 == 0 { FAIL } else { OK };
                        w.record(s, t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let count = |bit: u8| {
            w.slots
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) & bit != 0)
                .count() as u64
        };
        assert_eq!(w.figures().failures, count(Sample::FAILED));
        assert_eq!(w.figures().calls, count(Sample::RECORDED));
        assert_eq!(w.figures().calls, u64::from(size));
    }

    #[test]
    fn count_window_totals_match_slots_under_threads() {
        totals_match_slots_under_threads(7, 4);
    }

    #[test]
    fn count_window_in_blocks_totals_match_slots_under_threads() {
        totals_match_slots_under_threads(256, 4);
    }

    #[test]
    fn count_window_in_blocks_is_exact_for_one_thread() {
        let w = CountWindow::new(100, 2);
        assert_eq!(w.block, 8);
        assert_eq!(CountWindow::new(100, 1).block, 1);
        for _ in 0..100 {
            w.record(FAIL, 1);
        }
        for i in 0..99 {
            w.record(OK, 1);
            assert_eq!(w.figures().failures, 99 - i, "oldest failure evicted first");
        }
        assert_eq!(w.figures().calls, 100);
    }

    #[test]
    fn time_window_forgets_calls_older_than_its_span() {
        let w = TimeWindow::new(2, 0, 2);
        w.record(FAIL, 0, 0, 1);
        w.record(OK, 0, SEC, 1);
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
        assert!(w.record(OK, 0, 1, 2).is_some());
        assert!(w.record(OK, 0, 2, 2).is_some());
        assert!(w.record(OK, 0, 3, 2).is_none(), "primed, success");
        assert!(w.record(SLOW, 0, 4, 2).is_some());
        assert!(w.record(OK, 0, SEC, 2).is_some(), "new second");
    }
}
