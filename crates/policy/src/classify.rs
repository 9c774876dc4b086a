//! What a finished call means: [`Outcome`] and the [`Classify`] policy.

use std::fmt;

/// What a finished call means to the layers around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The service did its job.
    Success,
    /// The service failed: an error, or a response that says it failed (a 5xx).
    Failure,
    /// The call was turned away for a reason that says nothing about the service's health: an
    /// open breaker, a dedup store that fails closed, a request the service refused as bad.
    Rejected,
    /// The call was a duplicate and was not handled again.
    Duplicate,
}

impl Outcome {
    /// `success`, `failure`, `rejected` or `duplicate`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Rejected => "rejected",
            Self::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Says what a finished call means.
///
/// Implemented by [`DefaultClassifier`] (errors are failures), by [`StatusClassifier`] for
/// `http::Response`s, by tower-http's `SharedClassifier` (its `ClassifyResponse` decides what
/// fails), and by any `Fn(Result<&T, &E>) -> Outcome`.
pub trait Classify<T, E> {
    /// The outcome of a call that ended with `result`.
    fn classify(&self, result: Result<&T, &E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(Result<&T, &E>) -> Outcome,
{
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        self(result)
    }
}

/// `Ok` is a success and `Err` a failure. The default of every layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<T, E> Classify<T, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Classifies `http::Response`s by status: `503` with `Retry-After` and `429` are rejections
/// (another layer turned the call away), other 5xx are failures, everything else succeeds;
/// errors are failures.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusClassifier;

#[cfg(feature = "http")]
impl<B, E> Classify<http::Response<B>, E> for StatusClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        use http::StatusCode;
        match result {
            Ok(res)
                if res.status() == StatusCode::TOO_MANY_REQUESTS
                    || (res.status() == StatusCode::SERVICE_UNAVAILABLE
                        && res.headers().contains_key(http::header::RETRY_AFTER)) =>
            {
                Outcome::Rejected
            }
            Ok(res) if res.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// tower-http's classifiers (`ServerErrorsAsFailures`, `StatusInRangeAsFailures`, ...), shared:
/// what they call a failure is a failure, the rest succeeds.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_errors_as_failures() {
        let c = DefaultClassifier;
        assert_eq!(Classify::<u8, ()>::classify(&c, Ok(&1)), Outcome::Success);
        assert_eq!(Classify::<u8, ()>::classify(&c, Err(&())), Outcome::Failure);
    }

    #[test]
    fn closures_classify() {
        let c = |r: Result<&u8, &()>| match r {
            Ok(0) => Outcome::Rejected,
            Ok(_) => Outcome::Failure,
            Err(_) => Outcome::Success,
        };
        assert_eq!(c.classify(Ok(&0)), Outcome::Rejected);
        assert_eq!(c.classify(Ok(&1)), Outcome::Failure);
        assert_eq!(c.classify(Err(&())), Outcome::Success);
    }

    #[cfg(feature = "http")]
    #[test]
    fn statuses_classify() {
        let response = |status: u16, retry: bool| {
            let mut res = http::Response::new(());
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
            if retry {
                res.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(1));
            }
            res
        };
        let c = StatusClassifier;
        let of = |status, retry| Classify::<_, ()>::classify(&c, Ok(&response(status, retry)));
        assert_eq!(of(200, false), Outcome::Success);
        assert_eq!(of(404, false), Outcome::Success);
        assert_eq!(of(429, false), Outcome::Rejected);
        assert_eq!(of(503, true), Outcome::Rejected);
        assert_eq!(of(503, false), Outcome::Failure);
        assert_eq!(of(500, false), Outcome::Failure);

        let tower_http = tower_http::classify::SharedClassifier::new(
            tower_http::classify::ServerErrorsAsFailures::new(),
        );
        assert_eq!(
            Classify::<_, ()>::classify(&tower_http, Ok(&response(502, false))),
            Outcome::Failure
        );
        assert_eq!(
            Classify::<_, ()>::classify(&tower_http, Ok(&response(404, false))),
            Outcome::Success
        );
    }
}
