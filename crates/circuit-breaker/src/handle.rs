//! Manual control and observation of a breaker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::breaker::Core;

/// State of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Calls flow and are recorded.
    Closed = 0,
    /// Calls are rejected until the open wait has passed.
    Open = 1,
    /// A few probe calls decide whether to close again.
    HalfOpen = 2,
    /// Every call is permitted and nothing is recorded (through the handle, or `enabled = false`).
    Disabled = 3,
    /// Every call is rejected until the handle changes the state; never times out.
    ForcedOpen = 4,
    /// Calls flow and are recorded; a threshold reached emits an event but never opens.
    MetricsOnly = 5,
}

/// Something a breaker reports to [`Handle::subscribe`] receivers. Every event is also a `tracing`
/// event (target `wsguard::circuit_breaker`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The state changed.
    Transition {
        /// State before.
        from: State,
        /// State after.
        to: State,
        /// Why, in a few words.
        reason: &'static str,
    },
    /// The failure rate, in percent, reached its threshold.
    FailureRateExceeded {
        /// The rate.
        rate: f64,
    },
    /// The slow-call rate, in percent, reached its threshold.
    SlowCallRateExceeded {
        /// The rate.
        rate: f64,
    },
    /// Failures in a row reached `failure_threshold`.
    ConsecutiveFailuresReached {
        /// Failures in a row.
        count: u32,
    },
}

/// Figures of a breaker at one moment, since its last transition: an open breaker shows the
/// figures that opened it, as they stood then; a half-open one its probes.
///
/// Like [`Handle::state`], a snapshot shows what the next call would find: an open breaker past
/// its wait reads half-open with no probes yet, a half-open one past `half_open_max_wait` reads
/// open, with its probes' figures and the wait its next call will start.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// State the next call would find.
    pub state: State,
    /// Calls in the window; half-open, the probes recorded. The consecutive mode keeps no
    /// window, so while closed it reports 0 calls and no rates, and counts only `failures` and
    /// `consecutive_failures`.
    pub calls: u64,
    /// Failed calls among them (consecutive mode: failures since the last transition).
    pub failures: u64,
    /// Slow calls among them (rate modes).
    pub slow_calls: u64,
    /// `failures / calls`, in percent; `None` while there are too few calls to judge: fewer
    /// than `minimum_calls` (half-open, than the probes needed for a verdict), and always in
    /// consecutive mode, which judges no rate.
    pub failure_rate: Option<f64>,
    /// `slow_calls / calls`, in percent; `None` when `failure_rate` is.
    pub slow_call_rate: Option<f64>,
    /// Calls rejected since the breaker was built or last reset.
    pub rejected: u64,
    /// Current run of failures (consecutive mode; half-open, the failed probe).
    pub consecutive_failures: u32,
    /// Consecutive open cycles since the breaker last closed (drives the backoff).
    pub open_cycles: u32,
    /// Time until the next probe, when open.
    pub retry_after: Option<Duration>,
}

/// A cloneable handle on a breaker's shared state, from
/// [`CircuitBreakerLayer::handle`](crate::CircuitBreakerLayer::handle) or
/// [`CircuitBreaker::handle`](crate::CircuitBreaker::handle).
///
/// ```
/// use wsguard_circuit_breaker::{CircuitBreakerLayer, State};
/// use wsguard_config::CircuitBreakerConfig;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::testing());
/// let handle = layer.handle();
/// let mut events = handle.subscribe();
/// handle.force_open();
/// assert_eq!(handle.state(), State::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.snapshot().state, State::Closed);
/// assert!(events.recv().await.is_ok());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) core: Arc<Core>,
}

impl Handle {
    /// The state the next call would find. Nothing moves the state between calls, so this works
    /// it out: an open breaker past its wait reads [`HalfOpen`](State::HalfOpen), a half-open one
    /// whose probes are past `half_open_max_wait` reads [`Open`](State::Open).
    pub fn state(&self) -> State {
        self.core.state()
    }

    /// Rejects every call until [`reset`](Self::reset) (or another state is chosen).
    pub fn force_open(&self) {
        self.core
            .force(State::ForcedOpen, "forced open through the handle");
    }

    /// Permits every call and records nothing until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.core
            .force(State::Disabled, "disabled through the handle");
    }

    /// Records calls and emits threshold events, but never opens, until [`reset`](Self::reset).
    pub fn metrics_only(&self) {
        self.core
            .force(State::MetricsOnly, "metrics only through the handle");
    }

    /// Closes the breaker with empty metrics, zero open cycles and zero rejections.
    pub fn reset(&self) {
        self.core.reset();
    }

    /// Figures of the current window, and the state they belong to.
    pub fn snapshot(&self) -> Snapshot {
        self.core.snapshot()
    }

    /// A receiver of every later [`Event`]; a receiver that falls more than 64 events behind
    /// skips the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.core.subscribe()
    }
}
