//! What a call turned away returns: [`Rejection`] and the [`Reject`] policy.

use std::fmt;
use std::time::Duration;

use tower::BoxError;

/// Why a layer turned a call away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The circuit breaker is open (or forced open).
    CircuitOpen,
    /// The call repeats one already seen within the dedup window.
    Duplicate,
    /// A store the layer needs (the dedup window's Redis) failed, and the layer fails closed.
    Unavailable,
    /// The caller sent more than its rate limit allows; the rejection's
    /// [`retry_after`](Rejection::retry_after) says when the next call may pass.
    RateLimited,
}

impl Reason {
    /// `circuit_open`, `duplicate`, `unavailable` or `rate_limited`: the names clients see in
    /// error frames.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit_open",
            Self::Duplicate => "duplicate",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
        }
    }

    /// The HTTP status that suits the reason: `503` for an open breaker or an unavailable
    /// store, `409 Conflict` for a duplicate, `429 Too Many Requests` for a rate limit.
    pub const fn default_status(self) -> u16 {
        match self {
            Self::CircuitOpen | Self::Unavailable => 503,
            Self::Duplicate => 409,
            Self::RateLimited => 429,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call a layer turned away: why, when to retry, the HTTP status that suits it, and the
/// layer's marker error (`CircuitOpen`, `Duplicate`, `StoreUnavailable`, `RateLimited`).
#[derive(Debug)]
pub struct Rejection {
    reason: Reason,
    retry_after: Option<Duration>,
    status: u16,
    error: BoxError,
}

impl Rejection {
    /// A rejection for `reason`, carrying the layer's `error`, with the reason's
    /// [default status](Reason::default_status) and no retry delay.
    pub fn new(reason: Reason, error: impl Into<BoxError>) -> Self {
        Self {
            reason,
            retry_after: None,
            status: reason.default_status(),
            error: error.into(),
        }
    }

    /// The same, telling the caller to retry after `wait`.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The same, with another HTTP status (such as the configured `dedup.duplicate_status`).
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Why the call was turned away.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// When a retry may succeed, if the layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The HTTP status that suits this rejection.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The layer's marker error; find the concrete one with `downcast_ref`.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The layer's marker error, owned.
    pub fn into_error(self) -> BoxError {
        self.error
    }
}

/// What a service returns for a call its layer turned away, and for its inner service's errors.
///
/// Implemented by [`ReturnError`] (an error, for services whose error is a `BoxError`) and
/// [`RespondWithStatus`] (a response, for axum routes whose error is `Infallible`).
pub trait Reject<T, E> {
    /// The error type of the wrapped service.
    type Error;

    /// The result for a call turned away.
    fn reject(&self, rejection: Rejection) -> Result<T, Self::Error>;

    /// The inner service's error, as the wrapped service's.
    fn map_error(&self, error: E) -> Self::Error;
}

/// Returns the layer's marker error, boxed: `err.is::<CircuitOpen>()`, `err.is::<Duplicate>()`.
/// Inner errors are boxed too. The default of every layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReturnError;

impl<T, E: Into<BoxError>> Reject<T, E> for ReturnError {
    type Error = BoxError;

    fn reject(&self, rejection: Rejection) -> Result<T, BoxError> {
        Err(rejection.into_error())
    }

    fn map_error(&self, error: E) -> BoxError {
        error.into()
    }
}

/// Answers a rejection with an empty response of its [status](Rejection::status) and, when a
/// retry delay is known, `Retry-After` in whole seconds (rounded up, at least 1); the
/// [`Reason`] goes in the response's extensions. Inner errors pass through unchanged, so an
/// axum route keeps its `Infallible`.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct RespondWithStatus;

#[cfg(feature = "http")]
impl<B: Default, E> Reject<http::Response<B>, E> for RespondWithStatus {
    type Error = E;

    fn reject(&self, rejection: Rejection) -> Result<http::Response<B>, E> {
        let mut response = http::Response::new(B::default());
        *response.status_mut() = http::StatusCode::from_u16(rejection.status)
            .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
        if let Some(wait) = rejection.retry_after {
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        response.extensions_mut().insert(rejection.reason);
        Ok(response)
    }

    fn map_error(&self, error: E) -> E {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Marker;

    impl fmt::Display for Marker {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("marker")
        }
    }

    impl std::error::Error for Marker {}

    #[test]
    fn return_error_returns_the_marker() {
        let rejection = Rejection::new(Reason::Duplicate, Marker);
        let err = Reject::<(), std::io::Error>::reject(&ReturnError, rejection).unwrap_err();
        assert!(err.is::<Marker>());
    }

    #[cfg(feature = "http")]
    #[test]
    fn respond_with_status_rounds_retry_after_up_to_whole_seconds() {
        for (ms, header) in [(0, "1"), (1, "1"), (1000, "1"), (1001, "2"), (30_000, "30")] {
            let rejection = Rejection::new(Reason::CircuitOpen, Marker)
                .with_retry_after(Duration::from_millis(ms));
            let resp: http::Response<()> =
                Reject::<_, ()>::reject(&RespondWithStatus, rejection).expect("a response");
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()[http::header::RETRY_AFTER], header, "{ms} ms");
            assert_eq!(
                resp.extensions().get::<Reason>(),
                Some(&Reason::CircuitOpen)
            );
        }
        let duplicate = Rejection::new(Reason::Duplicate, Marker).with_status(208);
        let resp: http::Response<()> =
            Reject::<_, ()>::reject(&RespondWithStatus, duplicate).unwrap();
        assert_eq!(resp.status(), 208);
        assert!(!resp.headers().contains_key(http::header::RETRY_AFTER));
    }

    #[cfg(feature = "http")]
    #[test]
    fn rate_limited_answers_429_with_retry_after() {
        assert_eq!(Reason::RateLimited.as_str(), "rate_limited");
        let rejection = Rejection::new(Reason::RateLimited, Marker)
            .with_retry_after(Duration::from_millis(1500));
        let resp: http::Response<()> =
            Reject::<_, ()>::reject(&RespondWithStatus, rejection).unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "2");
        assert_eq!(
            resp.extensions().get::<Reason>(),
            Some(&Reason::RateLimited)
        );
    }
}
