//! How a finished call is counted: [`Outcome`] and the [`ClassifyOutcome`] policy.

use serde::{Deserialize, Serialize};

/// What became of a call, as the metrics count it.
///
/// The layer crates do not depend on each other, so this crate cannot name the circuit
/// breaker's or the dedup layer's marker errors: a [`ClassifyOutcome`] policy maps them to
/// [`Outcome::Rejected`] and [`Outcome::Duplicate`] (the `wsguard-axum` adapter supplies one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Handled.
    Ok,
    /// Failed in the inner service.
    Error,
    /// Refused before reaching the handler, e.g. by an open circuit breaker.
    Rejected,
    /// Dropped as a duplicate of an earlier message.
    Duplicate,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Rejected,
        Outcome::Duplicate,
    ];

    /// The label value used in exported metrics (`ok`, `error`, `rejected`, `duplicate`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Rejected => "rejected",
            Outcome::Duplicate => "duplicate",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// Maps the result of a call to an [`Outcome`].
///
/// Implemented by [`DefaultClassifier`] and by closures `Fn(&Result<Res, E>) -> Outcome`;
/// swap it with [`MetricsLayer::classifier`](crate::MetricsLayer::classifier).
///
/// ```
/// use wsguard_metrics::{ClassifyOutcome, Outcome};
///
/// #[derive(Debug)]
/// struct Busy;
/// impl std::fmt::Display for Busy {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("busy") }
/// }
/// impl std::error::Error for Busy {}
///
/// let classify = |r: &Result<(), Box<dyn std::error::Error + Send + Sync>>| match r {
///     Ok(()) => Outcome::Ok,
///     Err(e) if e.is::<Busy>() => Outcome::Rejected,
///     Err(_) => Outcome::Error,
/// };
/// assert_eq!(classify.classify(&Err(Box::new(Busy))), Outcome::Rejected);
/// ```
pub trait ClassifyOutcome<Res, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;
}

/// `Ok` is [`Outcome::Ok`], `Err` is [`Outcome::Error`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<Res, E> ClassifyOutcome<Res, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Error,
        }
    }
}

impl<F, Res, E> ClassifyOutcome<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        self(result)
    }
}

/// For HTTP services, which answer failures with a response: a `5xx` status or an `Err` is
/// [`Outcome::Error`], except `503` with a `Retry-After` header (how the circuit breaker
/// rejects at route level), which is [`Outcome::Rejected`].
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusClassifier;

#[cfg(feature = "http")]
impl<B, E> ClassifyOutcome<http::Response<B>, E> for StatusClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(res)
                if res.status() == http::StatusCode::SERVICE_UNAVAILABLE
                    && res.headers().contains_key(http::header::RETRY_AFTER) =>
            {
                Outcome::Rejected
            }
            Ok(res) if res.status().is_server_error() => Outcome::Error,
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_err_as_error() {
        let c = DefaultClassifier;
        assert_eq!(c.classify(&Ok::<_, ()>(1)), Outcome::Ok);
        assert_eq!(c.classify(&Err::<(), _>(1)), Outcome::Error);
    }

    #[cfg(feature = "http")]
    #[test]
    fn status_classifier_reads_5xx_and_breaker_rejections() {
        let res = |status: u16, retry: bool| {
            let mut b = http::Response::builder().status(status);
            if retry {
                b = b.header("retry-after", "3");
            }
            Ok::<_, ()>(b.body(()).unwrap())
        };
        let c = StatusClassifier;
        assert_eq!(c.classify(&res(200, false)), Outcome::Ok);
        assert_eq!(c.classify(&res(404, false)), Outcome::Ok);
        assert_eq!(c.classify(&res(500, false)), Outcome::Error);
        assert_eq!(c.classify(&res(503, false)), Outcome::Error);
        assert_eq!(c.classify(&res(503, true)), Outcome::Rejected);
    }
}
