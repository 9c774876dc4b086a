//! What a rejected call returns.

use crate::{BoxError, error::CircuitOpen};

/// Turns a rejection into the service's output, and inner errors into the service's error type.
pub trait Reject<T, E> {
    /// The error type of the wrapped service.
    type Error;

    /// The output of a call the breaker refused.
    fn reject(&self, open: CircuitOpen) -> Result<T, Self::Error>;

    /// Converts an error of the inner service.
    fn map_error(&self, error: E) -> Self::Error;
}

/// Rejects with a [`BoxError`] holding [`CircuitOpen`]; inner errors are boxed too.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReturnError {
    _p: (),
}

impl ReturnError {
    /// The default rejection.
    pub const fn new() -> Self {
        Self { _p: () }
    }
}

impl<T, E> Reject<T, E> for ReturnError
where
    E: Into<BoxError>,
{
    type Error = BoxError;

    fn reject(&self, open: CircuitOpen) -> Result<T, BoxError> {
        Err(Box::new(open))
    }

    fn map_error(&self, error: E) -> BoxError {
        error.into()
    }
}

/// Rejects with `503 Service Unavailable` and `Retry-After` (whole seconds, at least 1) and an
/// empty body; the inner error type is kept, so axum's `Infallible` holds.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct RespondUnavailable {
    _p: (),
}

#[cfg(feature = "http")]
impl RespondUnavailable {
    /// The HTTP rejection.
    pub const fn new() -> Self {
        Self { _p: () }
    }
}

#[cfg(feature = "http")]
impl<B, E> Reject<http::Response<B>, E> for RespondUnavailable
where
    B: Default,
{
    type Error = E;

    fn reject(&self, open: CircuitOpen) -> Result<http::Response<B>, E> {
        let wait = open.retry_after();
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        let mut response = http::Response::new(B::default());
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        response.extensions_mut().insert(open);
        Ok(response)
    }

    fn map_error(&self, error: E) -> E {
        error
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn unavailable_rounds_retry_after_up_to_whole_seconds() {
        let open = |ms| CircuitOpen {
            retry_after: Duration::from_millis(ms),
            forced: false,
        };
        let r = RespondUnavailable::new();
        for (ms, header) in [(0, "1"), (1, "1"), (1000, "1"), (1001, "2"), (30_000, "30")] {
            let resp: http::Response<()> =
                Reject::<_, ()>::reject(&r, open(ms)).expect("a response");
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()[http::header::RETRY_AFTER], header, "{ms} ms");
        }
    }
}
