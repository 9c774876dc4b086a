//! The limiters' clock: tokio time, so that paused-time tests drive the limits.

use governor::clock::Clock;
use governor::nanos::Nanos;
use tokio::time::Instant;

/// Nanoseconds since the layer was built, read from `tokio::time::Instant`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    epoch: Instant,
}

impl TokioClock {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        Nanos::from(Instant::now().saturating_duration_since(self.epoch))
    }
}
