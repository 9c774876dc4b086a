//! Error types.

use std::fmt;
use std::time::Duration;

pub use wsguard_config::RateLimitAction;
pub use wsguard_policy::BoxError;

/// Which limit turned a call away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitKind {
    /// Messages per second.
    Messages,
    /// Payload bytes per second.
    Bytes,
    /// The payload is larger than `bytes_burst`: it can never pass, however long the caller
    /// waits.
    LargerThanBurst,
}

impl LimitKind {
    /// `messages`, `bytes` or `larger_than_burst`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Bytes => "bytes",
            Self::LargerThanBurst => "larger_than_burst",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller went over its rate limit; the call did not reach the inner service.
///
/// Only this crate creates it. Find it with `err.is::<RateLimited>()` or
/// `err.downcast_ref::<RateLimited>()`. It carries what the WebSocket adapter needs to answer:
/// the configured [`action`](Self::action) (drop, error frame, close) and the
/// [`retry_after`](Self::retry_after) delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub(crate) limit: LimitKind,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) action: RateLimitAction,
}

impl RateLimited {
    /// Which limit refused the call.
    pub fn limit(&self) -> LimitKind {
        self.limit
    }

    /// When the same call would pass (nanosecond precision), or `None` if it never will
    /// ([`LimitKind::LargerThanBurst`]).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// What the WebSocket client is to hear, as `rate_limit.on_limit` said when the call was
    /// refused.
    pub fn action(&self) -> RateLimitAction {
        self.action
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(wait) => write!(
                f,
                "rate limited ({}); retry after {} ms",
                self.limit,
                wait.as_millis()
            ),
            None => write!(f, "rate limited ({}); never passes", self.limit),
        }
    }
}

impl std::error::Error for RateLimited {}
