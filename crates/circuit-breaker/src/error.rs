//! Error types.

use std::fmt;
use std::time::Duration;

/// A call refused because the breaker is open, forced open, or half-open with every probe slot
/// taken.
///
/// Generic services ([`CircuitBreakerLayer::new`](crate::CircuitBreakerLayer::new)) return it
/// inside their [`BoxError`](crate::BoxError); find it with `err.is::<CircuitOpen>()` or
/// `err.downcast_ref::<CircuitOpen>()`. Users cannot construct it.
#[derive(Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    pub(crate) retry_after: Duration,
    pub(crate) forced: bool,
}

impl CircuitOpen {
    /// Time until the breaker lets the next probe through. Zero when it is half-open with every
    /// probe slot taken (the next call may be admitted once a probe finishes). For a forced-open
    /// breaker, which never times out, the configured open wait as a hint.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Whether the breaker was forced open through its [`Handle`](crate::Handle).
    pub fn is_forced(&self) -> bool {
        self.forced
    }
}

impl fmt::Debug for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitOpen")
            .field("retry_after", &self.retry_after)
            .field("forced", &self.forced)
            .finish()
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.forced {
            f.write_str("circuit breaker forced open")
        } else {
            write!(
                f,
                "circuit breaker open, next probe in {:.3}s",
                self.retry_after.as_secs_f64()
            )
        }
    }
}

impl std::error::Error for CircuitOpen {}
