use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a closed breaker decides to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripMode {
    /// Open after `failure_threshold` failures in a row (the original design's rule).
    ConsecutiveFailures,
    /// Open when the failure or slow-call rate over the last `window_size` calls reaches its threshold.
    CountWindow,
    /// Open when the failure or slow-call rate over the calls of the last `window_duration` reaches
    /// its threshold.
    TimeWindow,
}

/// How the open wait grows over consecutive open cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffStrategy {
    /// Every open cycle waits `timeout`.
    Fixed,
    /// Cycle `n` (from 0) waits `timeout * multiplier^n`, capped at `max_wait`.
    Exponential,
}

/// Growth of the open wait across consecutive open cycles. The count of cycles resets when the
/// breaker closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenBackoff {
    /// Fixed or exponential.
    pub strategy: BackoffStrategy,
    /// Factor applied per consecutive open cycle (exponential only), `>= 1.0`.
    pub multiplier: f64,
    /// Upper bound of the open wait (exponential only).
    #[serde(with = "crate::duration")]
    pub max_wait: Duration,
    /// Randomisation factor in `0.0..1.0`: the wait is drawn uniformly from `wait * (1 ± jitter)`.
    pub jitter: f64,
}

impl Default for OpenBackoff {
    fn default() -> Self {
        Self {
            strategy: BackoffStrategy::Exponential,
            multiplier: 1.5,
            max_wait: Duration::from_secs(300),
            jitter: 0.0,
        }
    }
}

/// Settings of `CircuitBreakerLayer`.
///
/// The breaker is closed (calls flow), open (calls are rejected at once) or half-open (a few probe
/// calls decide whether to close again). Rates are percentages and thresholds are inclusive: a 50%
/// threshold trips at exactly 50%.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// When off the breaker permits every call and records nothing.
    pub enabled: bool,
    /// How a closed breaker decides to open.
    pub mode: TripMode,
    /// Failures in a row that open the breaker (`consecutive_failures` mode).
    pub failure_threshold: u32,
    /// Number of most recent calls the rates are computed over (`count_window` mode).
    pub window_size: u32,
    /// Span of time the rates are computed over (`time_window` mode), whole seconds.
    #[serde(with = "crate::duration")]
    pub window_duration: Duration,
    /// Calls the window must hold before a rate can open the breaker (rate modes).
    pub minimum_calls: u32,
    /// Failure rate, in percent, at or above which the breaker opens (rate modes).
    pub failure_rate_threshold: f64,
    /// Slow-call rate, in percent, at or above which the breaker opens (rate modes).
    pub slow_call_rate_threshold: f64,
    /// A call taking longer than this is slow.
    #[serde(with = "crate::duration")]
    pub slow_call_duration: Duration,
    /// How long the breaker stays open before it lets probes through (first open cycle).
    #[serde(with = "crate::duration", alias = "timeout_seconds")]
    pub timeout: Duration,
    /// Growth of the open wait over consecutive open cycles.
    pub backoff: OpenBackoff,
    /// Probe calls admitted at once while half-open.
    pub half_open_max_calls: u32,
    /// Successful probes that close a half-open breaker (`consecutive_failures` mode; the rate modes
    /// judge the failure rate over `half_open_max_calls` probes).
    pub success_threshold: u32,
    /// A half-open breaker whose probes have not decided within this time opens again. `0s`: wait
    /// for the probes however long they take.
    #[serde(with = "crate::duration")]
    pub half_open_max_wait: Duration,
}

impl CircuitBreakerConfig {
    /// Production settings: failure rate over the last 100 calls, 60 s open wait growing 1.5x per
    /// cycle up to 5 minutes.
    pub fn production() -> Self {
        Self {
            enabled: true,
            mode: TripMode::CountWindow,
            failure_threshold: 10,
            window_size: 100,
            window_duration: Duration::from_secs(60),
            minimum_calls: 20,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            backoff: OpenBackoff {
                jitter: 0.2,
                ..OpenBackoff::default()
            },
            half_open_max_calls: 10,
            success_threshold: 5,
            half_open_max_wait: Duration::from_secs(120),
        }
    }

    /// Development settings: open after 5 failures in a row, 10 s open wait.
    pub fn development() -> Self {
        Self {
            mode: TripMode::ConsecutiveFailures,
            failure_threshold: 5,
            window_size: 20,
            minimum_calls: 5,
            timeout: Duration::from_secs(10),
            backoff: OpenBackoff {
                max_wait: Duration::from_secs(60),
                ..OpenBackoff::default()
            },
            half_open_max_calls: 3,
            success_threshold: 2,
            half_open_max_wait: Duration::from_secs(30),
            ..Self::production()
        }
    }

    /// Testing settings: open after 2 failures in a row, 1 s open wait, no backoff growth.
    pub fn testing() -> Self {
        Self {
            mode: TripMode::ConsecutiveFailures,
            failure_threshold: 2,
            window_size: 4,
            window_duration: Duration::from_secs(1),
            minimum_calls: 2,
            slow_call_duration: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            backoff: OpenBackoff {
                strategy: BackoffStrategy::Fixed,
                multiplier: 1.0,
                max_wait: Duration::from_secs(1),
                jitter: 0.0,
            },
            half_open_max_calls: 1,
            success_threshold: 1,
            half_open_max_wait: Duration::from_secs(5),
            ..Self::production()
        }
    }
}

impl Default for CircuitBreakerConfig {
    /// Same as [`CircuitBreakerConfig::production`].
    fn default() -> Self {
        Self::production()
    }
}
