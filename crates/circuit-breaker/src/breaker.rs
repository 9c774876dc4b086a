//! The state machine shared by every clone of a breaker.
//!
//! The closed path reads one state word at admission; at completion the consecutive mode reads
//! the failure run (and writes it only when a run ends or grows), the rate modes record into a
//! lock-free window. The mutex below is taken only to change state and to take a snapshot.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::broadcast;
use tokio::time::Instant;
use wsguard_config::{CircuitBreakerConfig, ConfigSource, TripMode};

use crate::backoff;
use crate::error::CircuitOpen;
use crate::handle::{Event, Snapshot, State};
use crate::service::Recorder;
use crate::shard::{Padded, shard_count};
use crate::window::{CountWindow, Figures, Sample, TimeWindow};
use wsguard_policy::Outcome;

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// `Admitted::start` of a call whose duration does not matter (consecutive mode).
const NOT_TIMED: u64 = u64::MAX;

const CONSECUTIVE: u8 = 0;
const COUNT: u8 = 1;
const TIME: u8 = 2;

// The state's code in the low bits of the state word. The order makes each check on the closed
// path one comparison: codes up to `METRICS_ONLY` admit and record calls, codes up to `DISABLED`
// admit them.
const CLOSED: u64 = 0;
const METRICS_ONLY: u64 = 1;
const DISABLED: u64 = 2;
const HALF_OPEN: u64 = 3;
const OPEN: u64 = 4;
const FORCED_OPEN: u64 = 5;

#[inline]
fn code_of(state: State) -> u64 {
    match state {
        State::Closed => CLOSED,
        State::MetricsOnly => METRICS_ONLY,
        State::Disabled => DISABLED,
        State::HalfOpen => HALF_OPEN,
        State::Open => OPEN,
        State::ForcedOpen => FORCED_OPEN,
    }
}

#[inline]
fn state_of(word: u64) -> State {
    match word & STATE_MASK {
        CLOSED => State::Closed,
        METRICS_ONLY => State::MetricsOnly,
        DISABLED => State::Disabled,
        HALF_OPEN => State::HalfOpen,
        OPEN => State::Open,
        _ => State::ForcedOpen,
    }
}

/// What a service holds for its next call when `poll_ready` decided to reject it. Its state code
/// (7), like `NOT_POLLED`'s (6), is none of the states'.
pub(crate) const REJECTING: u64 = u64::MAX;

/// What a service holds for its next call before `poll_ready` has answered.
pub(crate) const NOT_POLLED: u64 = u64::MAX - 1;

/// Whether a call admitted at `start` is timed (rate modes and probes), that is whether
/// recording it costs atomic read-modify-writes besides its reference count.
#[inline]
pub(crate) fn is_timed(start: u64) -> bool {
    start != NOT_TIMED
}

/// Whether `word` (as `poll_ready` saw it) is a disabled breaker's: the call goes through and
/// records nothing.
#[inline]
pub(crate) fn is_disabled(word: u64) -> bool {
    word & STATE_MASK == DISABLED
}

/// Whether a call admitted under `word` is a half-open probe: only probes are admitted while
/// half-open, and each holds a recorder of its own with its probe slot.
#[inline]
pub(crate) fn is_probe(word: u64) -> bool {
    word & STATE_MASK == HALF_OPEN
}

fn mode_code(mode: TripMode) -> u8 {
    match mode {
        TripMode::ConsecutiveFailures => CONSECUTIVE,
        TripMode::CountWindow => COUNT,
        TripMode::TimeWindow => TIME,
    }
}

/// Shared state of one breaker.
pub(crate) struct Core {
    /// State in the low bits, a count of transitions above: a call admitted under one word is
    /// recorded only if the word is unchanged when it finishes.
    word: AtomicU64,
    source: ConfigSource<CircuitBreakerConfig>,
    /// The source can change (a `ConfigHandle`); a fixed one is never checked again.
    live: bool,
    applied: AtomicU64,
    // Copies of the fields read on every call, refreshed when the config generation changes.
    mode: AtomicU8,
    failure_threshold: AtomicU32,
    minimum_calls: AtomicU32,
    failure_rate: AtomicU64,
    slow_rate: AtomicU64,
    slow_nanos: AtomicU64,
    base: Instant,
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    consecutive: Padded<AtomicU32>,
    /// Failures since the last transition (consecutive mode, which keeps no window).
    failures: Padded<AtomicU64>,
    /// Shards of the per-thread structures (windows, recorders).
    shards: usize,
    period: ArcSwap<Period>,
    rejected: Padded<AtomicU64>,
    transitions: Mutex<TransitionState>,
    events: broadcast::Sender<Event>,
}

/// What only transitions (and snapshots) read and write, under the lock that serializes them.
#[derive(Debug)]
struct TransitionState {
    open_cycles: u32,
    rng: u64,
    disabled_by_config: bool,
    shape: Shape,
    /// State word of the metrics-only period whose threshold event was emitted.
    reported: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    mode: TripMode,
    window_size: u32,
    window_secs: u64,
}

impl Shape {
    fn of(config: &CircuitBreakerConfig) -> Self {
        Self {
            mode: config.mode,
            window_size: config.window_size,
            window_secs: config.window_duration.as_secs(),
        }
    }
}

/// Metrics of the time since the last transition.
#[derive(Debug)]
pub(crate) struct Period {
    word: u64,
    window: Arc<Window>,
    probes: Option<Probes>,
    /// An open period's snapshot figures: those of the period it ended, as they stood then.
    tripped_by: Option<Reading>,
}

/// What a snapshot reports of a period's calls.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    figures: Figures,
    /// Whether the figures hold enough calls for their rates to mean anything: never in
    /// consecutive mode, else from `minimum_calls` calls (probes: their own minimum).
    rated: bool,
    consecutive_failures: u32,
}

// One per period, behind an `Arc`: the size of the padded count window does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Window {
    /// No window: consecutive mode, and open and half-open periods, which keep none.
    Consecutive,
    Count(CountWindow),
    Time(TimeWindow),
}

/// The probe calls of one half-open period.
#[derive(Debug)]
struct Probes {
    in_flight: AtomicU32,
    /// Consecutive mode: the probes that succeeded, and the one that failed (and reopened).
    successes: AtomicU32,
    failures: AtomicU32,
    consecutive: bool,
    window: CountWindow,
    min_calls: u32,
}

/// What admission hands the service for a call the breaker let through: the state word and
/// start time to record it by (through [`Core::complete`]) and, for a half-open probe, its slot.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) word: u64,
    /// Nanoseconds since `Core::base` at admission, or `NOT_TIMED`.
    pub(crate) start: u64,
    /// A half-open call's probe slot.
    pub(crate) probe: Option<ProbeSlot>,
}

/// One of the `half_open_max_calls` probe slots of a half-open period, held by the probe's call
/// record; dropping it (the call finished, was ignored or was dropped unfinished) gives the slot
/// back.
#[derive(Debug)]
pub(crate) struct ProbeSlot {
    period: Arc<Period>,
}

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        if let Some(probes) = &self.period.probes {
            probes.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Exceeded {
    Consecutive(u32),
    FailureRate(f64),
    SlowRate(f64),
}

impl Exceeded {
    fn reason(self) -> &'static str {
        match self {
            Self::Consecutive(_) => "consecutive failures reached the threshold",
            Self::FailureRate(_) => "failure rate reached the threshold",
            Self::SlowRate(_) => "slow-call rate reached the threshold",
        }
    }

    fn event(self) -> Event {
        match self {
            Self::Consecutive(count) => Event::ConsecutiveFailuresReached { count },
            Self::FailureRate(rate) => Event::FailureRateExceeded { rate },
            Self::SlowRate(rate) => Event::SlowCallRateExceeded { rate },
        }
    }
}

impl Core {
    pub(crate) fn new(source: ConfigSource<CircuitBreakerConfig>) -> Self {
        let config = source.get();
        let base = Instant::now();
        let state = if config.enabled {
            State::Closed
        } else {
            State::Disabled
        };
        let word = code_of(state);
        let shards = shard_count();
        let core = Self {
            word: AtomicU64::new(word),
            live: source.handle().is_some(),
            applied: AtomicU64::new(source.generation()),
            mode: AtomicU8::new(0),
            failure_threshold: AtomicU32::new(0),
            minimum_calls: AtomicU32::new(0),
            failure_rate: AtomicU64::new(0),
            slow_rate: AtomicU64::new(0),
            slow_nanos: AtomicU64::new(0),
            base,
            open_until: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            consecutive: Padded(AtomicU32::new(0)),
            failures: Padded(AtomicU64::new(0)),
            shards,
            period: ArcSwap::from_pointee(Period {
                word,
                window: Arc::new(Window::Consecutive),
                probes: None,
                tripped_by: None,
            }),
            rejected: Padded(AtomicU64::new(0)),
            transitions: Mutex::new(TransitionState {
                open_cycles: 0,
                rng: backoff::seed(),
                disabled_by_config: !config.enabled,
                shape: Shape::of(&config),
                reported: u64::MAX,
            }),
            events: broadcast::channel(64).0,
            source,
        };
        core.store_hot(&config);
        core.period.store(Arc::new(Period {
            word,
            window: core.fresh_window(&config),
            probes: None,
            tripped_by: None,
        }));
        core
    }

    fn store_hot(&self, config: &CircuitBreakerConfig) {
        let r = Ordering::Relaxed;
        self.mode.store(mode_code(config.mode), r);
        self.failure_threshold.store(config.failure_threshold, r);
        self.minimum_calls.store(config.minimum_calls, r);
        self.failure_rate
            .store(config.failure_rate_threshold.to_bits(), r);
        self.slow_rate
            .store(config.slow_call_rate_threshold.to_bits(), r);
        self.slow_nanos.store(
            u64::try_from(config.slow_call_duration.as_nanos()).unwrap_or(u64::MAX),
            r,
        );
    }

    fn fresh_window(&self, config: &CircuitBreakerConfig) -> Arc<Window> {
        Arc::new(match config.mode {
            TripMode::ConsecutiveFailures => Window::Consecutive,
            TripMode::CountWindow => {
                Window::Count(CountWindow::new(config.window_size, self.shards))
            }
            TripMode::TimeWindow => Window::Time(TimeWindow::new(
                config.window_duration.as_secs(),
                self.nanos(Instant::now()),
                self.shards,
            )),
        })
    }

    #[inline]
    fn nanos(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base);
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()))
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    fn lock(&self) -> MutexGuard<'_, TransitionState> {
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state the next call would find. No timer moves the state word, so the reader works
    /// out what a call would: an open breaker past its wait is half-open, a half-open one past
    /// `half_open_max_wait` open again.
    pub(crate) fn state(&self) -> State {
        self.state_at(self.word.load(Ordering::Acquire), Instant::now())
    }

    fn state_at(&self, word: u64, now: Instant) -> State {
        match state_of(word) {
            State::Open if now > self.instant(self.open_until.load(Ordering::Acquire)) => {
                State::HalfOpen
            }
            State::HalfOpen if self.half_open_expired(now) => State::Open,
            state => state,
        }
    }

    /// Whether the probes of the current half-open period are past `half_open_max_wait`.
    fn half_open_expired(&self, now: Instant) -> bool {
        let max_wait = self.source.with(|c| c.half_open_max_wait);
        let since = self.instant(self.half_open_since.load(Ordering::Acquire));
        !max_wait.is_zero() && now >= since + max_wait
    }

    /// Applies a changed live config: one atomic load when nothing changed.
    #[inline]
    fn sync_config(&self) {
        if !self.live {
            return;
        }
        let generation = self.source.generation();
        if generation != self.applied.load(Ordering::Acquire) {
            self.reconfigure(generation);
        }
    }

    #[cold]
    fn reconfigure(&self, generation: u64) {
        let mut locked = self.lock();
        if self.applied.load(Ordering::Acquire) == generation {
            return;
        }
        let config = self.source.get();
        self.store_hot(&config);
        let word = self.word.load(Ordering::Acquire);
        let state = state_of(word);
        let shape = Shape::of(&config);
        if !config.enabled && state != State::Disabled {
            locked.disabled_by_config = true;
            self.transition_locked(
                &mut locked,
                word,
                State::Disabled,
                "disabled by configuration",
            );
        } else if config.enabled && state == State::Disabled && locked.disabled_by_config {
            locked.disabled_by_config = false;
            self.transition_locked(&mut locked, word, State::Closed, "enabled by configuration");
        } else if shape != locked.shape && matches!(state, State::Closed | State::MetricsOnly) {
            // A new window shape cannot keep the old outcomes; the state and open cycles stay.
            self.reset_counters();
            self.period.store(Arc::new(Period {
                word,
                window: self.fresh_window(&config),
                probes: None,
                tripped_by: None,
            }));
        }
        locked.shape = shape;
        self.applied.store(generation, Ordering::Release);
        tracing::debug!(
            target: "wsguard::circuit_breaker",
            generation,
            state = ?self.state(),
            "circuit breaker configuration applied"
        );
    }

    /// What `poll_ready` tells the next call: [`REJECTING`] if a call made now would be rejected
    /// (the inner service is then left alone), else the state word.
    #[inline]
    pub(crate) fn readiness(&self) -> u64 {
        self.sync_config();
        let word = self.word.load(Ordering::Acquire);
        if word & STATE_MASK > DISABLED && self.would_reject_slow(word) {
            REJECTING
        } else {
            word
        }
    }

    #[cold]
    #[inline(never)]
    fn would_reject_slow(&self, word: u64) -> bool {
        match state_of(word) {
            State::Closed | State::MetricsOnly | State::Disabled => false,
            State::ForcedOpen => true,
            State::Open => Instant::now() <= self.instant(self.open_until.load(Ordering::Acquire)),
            State::HalfOpen => {
                if self.half_open_expired(Instant::now()) {
                    return false;
                }
                let max_calls = self.source.with(|c| c.half_open_max_calls);
                let period = self.period.load();
                period.word == word
                    && period
                        .probes
                        .as_ref()
                        .is_some_and(|p| p.in_flight.load(Ordering::Acquire) >= max_calls)
            }
        }
    }

    /// The fast path of [`admit`](Self::admit), for the state word `poll_ready` saw: the start
    /// time of a call admitted by a closed (or metrics-only) breaker, `None` for every other
    /// state and for [`REJECTING`] and [`NOT_POLLED`].
    #[inline]
    pub(crate) fn admit_closed(&self, word: u64) -> Option<u64> {
        if word & STATE_MASK > METRICS_ONLY {
            return None;
        }
        Some(self.start_time())
    }

    /// The start time of a call admitted now by a closed breaker: untimed in consecutive mode.
    #[inline]
    fn start_time(&self) -> u64 {
        if self.mode.load(Ordering::Relaxed) == CONSECUTIVE {
            NOT_TIMED
        } else {
            self.nanos(Instant::now())
        }
    }

    /// Decides whether a call may go through now. `Ok(None)`: permitted and not recorded. The
    /// path of every call that [`admit_closed`](Self::admit_closed) does not admit.
    #[cold]
    #[inline(never)]
    pub(crate) fn admit(&self) -> Result<Option<Admitted>, CircuitOpen> {
        self.sync_config();
        loop {
            let word = self.word.load(Ordering::Acquire);
            match state_of(word) {
                State::Closed | State::MetricsOnly => {
                    return Ok(Some(Admitted {
                        word,
                        start: self.start_time(),
                        probe: None,
                    }));
                }
                State::Disabled => return Ok(None),
                State::ForcedOpen => {
                    let retry_after = self.source.with(|c| c.timeout);
                    return Err(self.reject(retry_after, true));
                }
                State::Open => {
                    let now = Instant::now();
                    let until = self.instant(self.open_until.load(Ordering::Acquire));
                    if now <= until {
                        return Err(self.reject(until - now, false));
                    }
                    self.transition(Some(word), State::HalfOpen, "open wait elapsed");
                }
                State::HalfOpen => {
                    let now = Instant::now();
                    if self.half_open_expired(now) {
                        self.transition(
                            Some(word),
                            State::Open,
                            "half-open probes undecided within the max wait",
                        );
                        continue;
                    }
                    let period = self.period.load_full();
                    let Some(probes) = period.probes.as_ref().filter(|_| period.word == word)
                    else {
                        continue;
                    };
                    let max_calls = self.source.with(|c| c.half_open_max_calls);
                    let taken =
                        probes
                            .in_flight
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                (n < max_calls).then_some(n + 1)
                            });
                    if taken.is_err() {
                        return Err(self.reject(Duration::ZERO, false));
                    }
                    return Ok(Some(Admitted {
                        word,
                        start: self.nanos(now),
                        probe: Some(ProbeSlot { period }),
                    }));
                }
            }
        }
    }

    /// The rejection of a call that `poll_ready` already decided to refuse.
    pub(crate) fn rejection(&self) -> CircuitOpen {
        match state_of(self.word.load(Ordering::Acquire)) {
            State::ForcedOpen => self.reject(self.source.with(|c| c.timeout), true),
            State::Open => {
                let until = self.instant(self.open_until.load(Ordering::Acquire));
                self.reject(until.saturating_duration_since(Instant::now()), false)
            }
            _ => self.reject(Duration::ZERO, false),
        }
    }

    fn reject(&self, retry_after: Duration, forced: bool) -> CircuitOpen {
        self.rejected.0.fetch_add(1, Ordering::Relaxed);
        CircuitOpen {
            retry_after,
            forced,
        }
    }

    /// Records a finished call admitted under `word` at `start`, through `recorder`
    /// (a probe's own, or one of the per-thread ones: its index picks the window's shard).
    /// Ignored outcomes and calls admitted before the last transition record nothing.
    #[inline]
    pub(crate) fn complete(&self, word: u64, start: u64, outcome: Outcome, recorder: &Recorder) {
        // Rejections and duplicates say nothing about the service's health.
        let counted = matches!(outcome, Outcome::Success | Outcome::Failure);
        if !counted || self.word.load(Ordering::Acquire) != word {
            return;
        }
        let failure = outcome == Outcome::Failure;
        // Only consecutive mode admits untimed calls, and never as probes.
        if !is_timed(start) {
            if failure {
                self.consecutive_failure(word);
            } else if self.consecutive.0.load(Ordering::Relaxed) != 0 {
                self.consecutive.0.store(0, Ordering::Relaxed);
            }
            return;
        }
        self.complete_slow(word, start, failure, recorder);
    }

    #[inline(never)]
    fn consecutive_failure(&self, word: u64) {
        // Admitted in consecutive mode, finished after a reload to a rate mode: not recorded.
        if self.mode.load(Ordering::Relaxed) != CONSECUTIVE {
            return;
        }
        self.failures.0.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive.0.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.failure_threshold.load(Ordering::Relaxed) {
            self.exceeded(word, Exceeded::Consecutive(n));
        }
    }

    #[inline(never)]
    fn complete_slow(&self, word: u64, start: u64, failure: bool, recorder: &Recorder) {
        match &recorder.probe {
            Some(slot) => self.complete_probe(word, start, &slot.period, failure),
            None => self.complete_window(word, start, failure, recorder.index),
        }
    }

    fn complete_window(&self, word: u64, start: u64, failure: bool, shard: usize) {
        let now = self.nanos(Instant::now());
        let sample = Sample {
            failure,
            slow: self.is_slow(start, now),
        };
        let period = self.period.load();
        if period.word != word {
            return;
        }
        let min_calls = self.minimum_calls.load(Ordering::Relaxed);
        let figures = match &*period.window {
            Window::Count(w) => w.record(sample, shard),
            Window::Time(w) => w.record(sample, shard, now, min_calls),
            Window::Consecutive => None,
        };
        if let Some(exceeded) = figures.and_then(|f| self.judge(f, min_calls)) {
            self.exceeded(word, exceeded);
        }
    }

    fn complete_probe(&self, word: u64, start: u64, period: &Period, failure: bool) {
        let Some(probes) = &period.probes else {
            return;
        };
        let word = Some(word);
        if probes.consecutive {
            if failure {
                probes.failures.fetch_add(1, Ordering::AcqRel);
                self.transition(word, State::Open, "half-open probe failed");
            } else {
                let successes = probes.successes.fetch_add(1, Ordering::AcqRel) + 1;
                if successes >= self.source.with(|c| c.success_threshold) {
                    self.transition(word, State::Closed, "half-open probes succeeded");
                }
            }
            return;
        }
        let sample = Sample {
            failure,
            slow: self.is_slow(start, self.nanos(Instant::now())),
        };
        let figures = probes
            .window
            .record(sample, 0)
            .unwrap_or_else(|| probes.window.figures());
        if figures.calls < u64::from(probes.min_calls) {
            return;
        }
        match self.judge(figures, probes.min_calls) {
            Some(exceeded) => self.transition(word, State::Open, exceeded.reason()),
            None => self.transition(word, State::Closed, "half-open probes below thresholds"),
        };
    }

    #[inline]
    /// `now` in nanoseconds since `base`.
    fn is_slow(&self, start: u64, now: u64) -> bool {
        is_timed(start) && now.saturating_sub(start) > self.slow_nanos.load(Ordering::Relaxed)
    }

    /// Thresholds are inclusive: exactly 50% with a 50% threshold trips.
    fn judge(&self, figures: Figures, min_calls: u32) -> Option<Exceeded> {
        if figures.calls == 0 || figures.calls < u64::from(min_calls) {
            return None;
        }
        let failure_rate = figures.failure_rate();
        if failure_rate >= f64::from_bits(self.failure_rate.load(Ordering::Relaxed)) {
            return Some(Exceeded::FailureRate(failure_rate));
        }
        let slow_rate = figures.slow_rate();
        if slow_rate >= f64::from_bits(self.slow_rate.load(Ordering::Relaxed)) {
            return Some(Exceeded::SlowRate(slow_rate));
        }
        None
    }

    #[cold]
    fn exceeded(&self, word: u64, exceeded: Exceeded) {
        match state_of(word) {
            State::Closed => {
                let _ = self.events.send(exceeded.event());
                self.transition(Some(word), State::Open, exceeded.reason());
            }
            State::MetricsOnly => {
                let mut locked = self.lock();
                if locked.reported != word && self.word.load(Ordering::Acquire) == word {
                    locked.reported = word;
                    tracing::warn!(
                        target: "wsguard::circuit_breaker",
                        event = ?exceeded.event(),
                        "circuit breaker threshold exceeded (metrics only, no transition)"
                    );
                    let _ = self.events.send(exceeded.event());
                }
            }
            _ => {}
        }
    }

    /// Moves to `to` if the state word is still `expected` (any state when `None`).
    #[cold]
    pub(crate) fn transition(
        &self,
        expected: Option<u64>,
        to: State,
        reason: &'static str,
    ) -> bool {
        let mut locked = self.lock();
        let word = self.word.load(Ordering::Acquire);
        if expected.is_some_and(|e| e != word) {
            return false;
        }
        self.transition_locked(&mut locked, word, to, reason);
        true
    }

    fn transition_locked(
        &self,
        locked: &mut TransitionState,
        word: u64,
        to: State,
        reason: &'static str,
    ) {
        let now = Instant::now();
        let from = state_of(word);
        let config = self.source.get();
        let next = (((word >> STATE_BITS) + 1) << STATE_BITS) | code_of(to);
        let current = self.period.load_full();
        let mut probes = None;
        let mut tripped_by = None;
        let window = match to {
            State::Open => {
                locked.open_cycles = locked.open_cycles.saturating_add(1);
                let unit = backoff::next_unit(&mut locked.rng);
                let wait = backoff::open_wait(&config, locked.open_cycles, unit);
                let until = now
                    .checked_add(wait)
                    .unwrap_or(now + Duration::from_secs(86_400 * 365));
                self.open_until.store(self.nanos(until), Ordering::Release);
                tripped_by = Some(self.reading(&current, self.nanos(now)));
                Arc::new(Window::Consecutive)
            }
            State::HalfOpen => {
                self.half_open_since
                    .store(self.nanos(now), Ordering::Release);
                self.reset_counters();
                let permitted = config.half_open_max_calls;
                probes = Some(Probes {
                    in_flight: AtomicU32::new(0),
                    successes: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    consecutive: config.mode == TripMode::ConsecutiveFailures,
                    window: CountWindow::new(permitted, 1),
                    min_calls: config.minimum_calls.min(permitted),
                });
                Arc::new(Window::Consecutive)
            }
            State::Closed => {
                locked.open_cycles = 0;
                self.reset_counters();
                self.fresh_window(&config)
            }
            State::Disabled | State::ForcedOpen | State::MetricsOnly => {
                self.reset_counters();
                self.fresh_window(&config)
            }
        };
        self.period.store(Arc::new(Period {
            word: next,
            window,
            probes,
            tripped_by,
        }));
        self.word.store(next, Ordering::Release);
        tracing::info!(
            target: "wsguard::circuit_breaker",
            from = ?from,
            to = ?to,
            reason,
            open_cycles = locked.open_cycles,
            "circuit breaker state transition"
        );
        let _ = self.events.send(Event::Transition { from, to, reason });
    }

    fn reset_counters(&self) {
        self.consecutive.0.store(0, Ordering::Relaxed);
        self.failures.0.store(0, Ordering::Relaxed);
    }

    pub(crate) fn reset(&self) {
        let mut locked = self.lock();
        let word = self.word.load(Ordering::Acquire);
        locked.disabled_by_config = false;
        self.rejected.0.store(0, Ordering::Relaxed);
        self.transition_locked(&mut locked, word, State::Closed, "reset");
    }

    pub(crate) fn force(&self, to: State, reason: &'static str) {
        let mut locked = self.lock();
        let word = self.word.load(Ordering::Acquire);
        locked.disabled_by_config = false;
        self.transition_locked(&mut locked, word, to, reason);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The figures of the calls of `period` at `now` (nanoseconds since `base`).
    fn reading(&self, period: &Period, now: u64) -> Reading {
        if let Some(reading) = period.tripped_by {
            return reading;
        }
        let run = self.consecutive.0.load(Ordering::Relaxed);
        let min_calls = Some(self.minimum_calls.load(Ordering::Relaxed));
        // `rated_from`: the calls needed for rates to count; `None` where no rate is judged.
        let (figures, rated_from, consecutive_failures) = match (&period.probes, &*period.window) {
            (Some(probes), _) if probes.consecutive => {
                let successes = probes.successes.load(Ordering::Acquire);
                let failures = probes.failures.load(Ordering::Acquire);
                let figures = Figures {
                    calls: u64::from(successes) + u64::from(failures),
                    failures: u64::from(failures),
                    slow: 0,
                };
                (figures, None, failures)
            }
            (Some(probes), _) => (probes.window.figures(), Some(probes.min_calls), 0),
            (None, Window::Consecutive) => {
                let figures = Figures {
                    calls: 0,
                    failures: self.failures.0.load(Ordering::Relaxed),
                    slow: 0,
                };
                (figures, None, run)
            }
            (None, Window::Count(w)) => (w.figures(), min_calls, run),
            (None, Window::Time(w)) => (w.figures(now), min_calls, run),
        };
        Reading {
            figures,
            rated: rated_from
                .is_some_and(|min| figures.calls > 0 && figures.calls >= u64::from(min)),
            consecutive_failures,
        }
    }

    /// What the breaker would show the next call: see [`state`](Self::state). Taken under the
    /// transition lock, so that the state, the period and the open cycles agree.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.sync_config();
        let locked = self.lock();
        let now = Instant::now();
        let word = self.word.load(Ordering::Acquire);
        let period = self.period.load_full();
        let state = self.state_at(word, now);
        let mut reading = self.reading(&period, self.nanos(now));
        let mut open_cycles = locked.open_cycles;
        let retry_after = match (state_of(word), state) {
            // The open wait has passed: the next call is the first probe of a new period.
            (State::Open, State::HalfOpen) => {
                reading = Reading::default();
                None
            }
            // The probes are past their max wait: the next call reopens the breaker with these
            // figures, for the wait the transition will draw.
            (State::HalfOpen, State::Open) => {
                open_cycles = open_cycles.saturating_add(1);
                let config = self.source.get();
                let unit = backoff::next_unit(&mut locked.rng.clone());
                Some(backoff::open_wait(&config, open_cycles, unit))
            }
            (_, State::Open) => Some(
                self.instant(self.open_until.load(Ordering::Acquire))
                    .saturating_duration_since(now),
            ),
            _ => None,
        };
        let figures = reading.figures;
        Snapshot {
            state,
            calls: figures.calls,
            failures: figures.failures,
            slow_calls: figures.slow,
            failure_rate: reading.rated.then(|| figures.failure_rate()),
            slow_call_rate: reading.rated.then(|| figures.slow_rate()),
            rejected: self.rejected.0.load(Ordering::Relaxed),
            consecutive_failures: reading.consecutive_failures,
            open_cycles,
            retry_after,
        }
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("state", &self.state())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}
