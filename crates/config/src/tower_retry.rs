//! `RetryConfig` as a `tower::retry` policy, on tower's `Backoff` / `MakeBackoff` traits and its
//! `HasherRng` random source.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::retry::Policy;
use tower::retry::backoff::{Backoff, MakeBackoff};
use tower::util::rng::{HasherRng, Rng};

use crate::RetryConfig;

/// Makes one [`ConfigBackoff`] per call from a [`RetryConfig`].
#[derive(Debug, Clone)]
pub struct ConfigBackoffMaker {
    config: RetryConfig,
}

impl ConfigBackoffMaker {
    /// A maker for the given settings.
    pub fn new(config: RetryConfig) -> Self {
        Self { config }
    }
}

impl MakeBackoff for ConfigBackoffMaker {
    type Backoff = ConfigBackoff;

    fn make_backoff(&mut self) -> ConfigBackoff {
        ConfigBackoff {
            config: self.config.clone(),
            // A fresh random source per call, so concurrent calls do not retry in lockstep.
            rng: HasherRng::default(),
            retries: 0,
        }
    }
}

/// The waits of one call: `initial_backoff * multiplier^n`, jittered, capped at `max_backoff`.
#[derive(Debug, Clone)]
pub struct ConfigBackoff {
    config: RetryConfig,
    rng: HasherRng,
    retries: u32,
}

impl ConfigBackoff {
    /// The next wait, advancing the retry count.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.config.base_backoff(self.retries);
        self.retries = self.retries.saturating_add(1);
        let jitter = self.config.jitter;
        if jitter <= 0.0 {
            return base;
        }
        let factor = 1.0 + jitter * (2.0 * self.rng.next_f64() - 1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(base)
            .min(self.config.max_backoff)
    }
}

impl Backoff for ConfigBackoff {
    type Future = tokio::time::Sleep;

    fn next_backoff(&mut self) -> Self::Future {
        tokio::time::sleep(self.next_wait())
    }
}

/// A `tower::retry::Policy` that retries errors up to `max_attempts` tries, waiting per
/// [`ConfigBackoff`] between tries. Requests must be `Clone`.
///
/// ```
/// use tower::{ServiceBuilder, retry::RetryLayer};
/// use wsguard_config::RetryConfig;
///
/// let policy = RetryConfig::production().policy();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(policy))
///     .service_fn(|req: u32| async move { Ok::<_, std::io::Error>(req) });
/// # let _ = svc;
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    attempts_left: u32,
    backoff: ConfigBackoff,
}

impl RetryConfig {
    /// This config as a `tower::retry` policy. A disabled config never retries.
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn policy(&self) -> RetryPolicy {
        let tries = if self.enabled { self.max_attempts } else { 1 };
        RetryPolicy {
            attempts_left: tries.saturating_sub(1),
            backoff: ConfigBackoffMaker::new(self.clone()).make_backoff(),
        }
    }
}

impl<Req: Clone, Res, E> Policy<Req, Res, E> for RetryPolicy {
    type Future = RetryWait;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if result.is_ok() || self.attempts_left == 0 {
            return None;
        }
        self.attempts_left -= 1;
        Some(RetryWait {
            sleep: Box::pin(self.backoff.next_backoff()),
        })
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// The wait before a retry.
#[derive(Debug)]
pub struct RetryWait {
    // Boxed because `Sleep` is `!Unpin`; one allocation per retry, never on the success path.
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for RetryWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}
