//! Sorting finished calls into success, failure or ignored.

use std::fmt;

/// How a finished call counts for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Counts as a success.
    Success,
    /// Counts as a failure.
    Failure,
    /// Counts as nothing: the call is not recorded and a half-open probe slot is given back.
    Ignored,
}

/// Sorts the result of a call (an `Ok` response or an error) into an [`Outcome`].
///
/// Implemented by [`DefaultClassifier`] (errors fail, responses succeed), by closures
/// `Fn(Result<&T, &E>) -> Outcome`, and with the `http` feature by tower-http's
/// [`SharedClassifier`](tower_http::classify::SharedClassifier) (for example
/// [`HttpClassifier`]: `5xx` responses fail).
///
/// ```
/// use wsguard_circuit_breaker::{CircuitBreakerLayer, classify::Outcome};
/// use wsguard_config::CircuitBreakerConfig;
///
/// // Timeouts fail, "not found" is the caller's problem, anything else succeeds.
/// let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::testing()).classifier(
///     |result: Result<&String, &std::io::Error>| match result {
///         Ok(_) => Outcome::Success,
///         Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Ignored,
///         Err(_) => Outcome::Failure,
///     },
/// );
/// # let _ = layer;
/// ```
pub trait Classify<T, E> {
    /// The outcome of a call that returned `result`.
    fn classify(&self, result: Result<&T, &E>) -> Outcome;
}

/// Errors are failures, `Ok` responses are successes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier {
    _p: (),
}

impl DefaultClassifier {
    /// The default classifier.
    pub const fn new() -> Self {
        Self { _p: () }
    }
}

impl<T, E> Classify<T, E> for DefaultClassifier {
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(Result<&T, &E>) -> Outcome,
{
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        self(result)
    }
}

/// tower-http's classifier for HTTP: `5xx` responses and errors fail, everything else succeeds.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub type HttpClassifier =
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>;

/// Any tower-http response classifier works: `Ready(Ok)` is a success, `Ready(Err)` a failure and
/// errors are failures. A classifier that needs the end of the body (gRPC trailers) cannot be
/// waited for here, as the breaker judges the response head; such responses count as successes.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl<B, E, C> Classify<http::Response<B>, E> for tower_http::classify::SharedClassifier<C>
where
    C: tower_http::classify::ClassifyResponse + Clone,
{
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        use tower_http::classify::{ClassifiedResponse, MakeClassifier};
        match result {
            Ok(response) => {
                // `make_classifier` ignores the request for a `SharedClassifier`.
                let classifier = self.make_classifier(&http::Request::new(()));
                match classifier.classify_response(response) {
                    ClassifiedResponse::Ready(Err(_)) => Outcome::Failure,
                    ClassifiedResponse::Ready(Ok(())) | ClassifiedResponse::RequiresEos(_) => {
                        Outcome::Success
                    }
                }
            }
            Err(_) => Outcome::Failure,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Ignored => "ignored",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_errors_as_failures() {
        let c = DefaultClassifier::new();
        assert_eq!(Classify::<u8, ()>::classify(&c, Ok(&1)), Outcome::Success);
        assert_eq!(Classify::<u8, ()>::classify(&c, Err(&())), Outcome::Failure);
    }

    #[test]
    fn closures_classify() {
        let c = |r: Result<&u8, &()>| match r {
            Ok(0) => Outcome::Ignored,
            Ok(_) => Outcome::Failure,
            Err(_) => Outcome::Success,
        };
        assert_eq!(c.classify(Ok(&0)), Outcome::Ignored);
        assert_eq!(c.classify(Ok(&1)), Outcome::Failure);
        assert_eq!(c.classify(Err(&())), Outcome::Success);
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_classifier_fails_5xx_only() {
        let c = HttpClassifier::new(Default::default());
        let resp = |code: u16| http::Response::builder().status(code).body(()).unwrap();
        let classify = |r: Result<&http::Response<()>, &()>| c.classify(r);
        assert_eq!(classify(Ok(&resp(200))), Outcome::Success);
        assert_eq!(classify(Ok(&resp(404))), Outcome::Success);
        assert_eq!(classify(Ok(&resp(500))), Outcome::Failure);
        assert_eq!(classify(Ok(&resp(503))), Outcome::Failure);
        assert_eq!(classify(Err(&())), Outcome::Failure);
    }
}
