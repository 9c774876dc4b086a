use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retry settings for calls a service makes on a client's behalf (upstream requests, reconnects).
///
/// With the `tower` feature, `RetryConfig::policy` turns them into a `tower::retry` policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// When off a call is tried once.
    pub enabled: bool,
    /// Most tries of one call, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry.
    #[serde(with = "crate::duration")]
    pub initial_backoff: Duration,
    /// Upper bound of any wait between tries.
    #[serde(with = "crate::duration")]
    pub max_backoff: Duration,
    /// Factor applied to the wait after each retry, `>= 1.0`.
    pub multiplier: f64,
    /// Randomisation factor in `0.0..=1.0`: the wait is drawn uniformly from `wait * (1 ± jitter)`.
    pub jitter: f64,
}

impl RetryConfig {
    /// Production settings: 3 tries, 100 ms doubling to at most 10 s, 20% jitter.
    pub fn production() -> Self {
        Self {
            enabled: true,
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }

    /// Development settings: as production, shorter waits.
    pub fn development() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            ..Self::production()
        }
    }

    /// Testing settings: 2 tries, 10 ms waits, no jitter (deterministic).
    pub fn testing() -> Self {
        Self {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            jitter: 0.0,
            ..Self::production()
        }
    }

    /// The wait before retry number `retry` (0 for the first retry), before jitter: the initial
    /// backoff times `multiplier^retry`, capped at `max_backoff`.
    pub fn base_backoff(&self, retry: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(i32::try_from(retry).unwrap_or(i32::MAX));
        let secs = self.initial_backoff.as_secs_f64() * factor;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

impl Default for RetryConfig {
    /// Same as [`RetryConfig::production`].
    fn default() -> Self {
        Self::production()
    }
}
