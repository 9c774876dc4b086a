//! What a duplicate or a store failure turns into, and which outcomes count as failures.

use wsguard_config::DedupConfig;

use crate::error::{BoxError, Duplicate, StoreUnavailable};

/// Turns the rejections of [`Dedup`](crate::Dedup) into the service's output, and classifies
/// the inner service's outcomes: a failure releases the key (with `release_on_failure`), so a
/// retry of the same message can pass.
///
/// Built in: [`BoxErrors`] (rejections are errors) and, with the `http` feature, [`HttpStatus`]
/// (rejections are responses). A WebSocket adapter implements it to answer a duplicate with an
/// acknowledgement frame or with nothing.
pub trait DedupPolicy<Res, E>: Clone {
    /// The service's error type.
    type Error;

    /// The output for a duplicate request.
    fn duplicate(&self, duplicate: Duplicate, config: &DedupConfig) -> Result<Res, Self::Error>;

    /// The output when the store failed and `on_error = "fail_closed"`.
    fn unavailable(
        &self,
        error: StoreUnavailable,
        config: &DedupConfig,
    ) -> Result<Res, Self::Error>;

    /// Converts an error of the inner service.
    fn inner_error(&self, error: E) -> Self::Error;

    /// Whether this outcome of the inner service is a failure. Default: an error.
    fn is_failure(&self, outcome: &Result<Res, E>) -> bool {
        outcome.is_err()
    }
}

/// Rejections are errors: [`Duplicate`] or [`StoreUnavailable`], boxed with the inner service's
/// errors into a [`BoxError`]. Errors of the inner service are failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxErrors;

impl<Res, E: Into<BoxError>> DedupPolicy<Res, E> for BoxErrors {
    type Error = BoxError;

    fn duplicate(&self, duplicate: Duplicate, _: &DedupConfig) -> Result<Res, BoxError> {
        Err(duplicate.into())
    }

    fn unavailable(&self, error: StoreUnavailable, _: &DedupConfig) -> Result<Res, BoxError> {
        Err(error.into())
    }

    fn inner_error(&self, error: E) -> BoxError {
        error.into()
    }
}

/// Rejections are responses and the inner error type is kept (axum needs `Infallible`): a
/// duplicate answers `duplicate_status` (default `409 Conflict`), a fail-closed store failure
/// `503 Service Unavailable`. Errors and `5xx` responses of the inner service are failures.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpStatus;

#[cfg(feature = "http")]
impl<B: Default, E> DedupPolicy<http::Response<B>, E> for HttpStatus {
    type Error = E;

    fn duplicate(&self, _: Duplicate, config: &DedupConfig) -> Result<http::Response<B>, E> {
        let status = http::StatusCode::from_u16(config.duplicate_status)
            .unwrap_or(http::StatusCode::CONFLICT);
        Ok(response(status))
    }

    fn unavailable(&self, _: StoreUnavailable, _: &DedupConfig) -> Result<http::Response<B>, E> {
        Ok(response(http::StatusCode::SERVICE_UNAVAILABLE))
    }

    fn inner_error(&self, error: E) -> E {
        error
    }

    fn is_failure(&self, outcome: &Result<http::Response<B>, E>) -> bool {
        match outcome {
            Ok(res) => res.status().is_server_error(),
            Err(_) => true,
        }
    }
}

#[cfg(feature = "http")]
fn response<B: Default>(status: http::StatusCode) -> http::Response<B> {
    let mut res = http::Response::new(B::default());
    *res.status_mut() = status;
    res
}
