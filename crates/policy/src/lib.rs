//! The two policies every wsguard layer takes, with one name and one shape across the layers.
//!
//! - A **classifier** ([`Classify`]) says what a finished call means: [`Outcome::Success`],
//!   [`Outcome::Failure`], [`Outcome::Rejected`] (turned away for a reason that says nothing about
//!   the service's health) or [`Outcome::Duplicate`]. Each layer reads the outcome in its own
//!   terms: the circuit breaker counts failures and ignores rejections and duplicates, the metrics
//!   layer counts all four, the dedup layer forgets a message whose call failed or was rejected so
//!   that a retry is not taken for a duplicate.
//! - A **rejection** ([`Reject`]) says what a call a layer turns away returns, from a
//!   [`Rejection`] that tells why (open breaker, duplicate, store unavailable, rate limited), when
//!   to retry and which HTTP status suits it. [`ReturnError`] returns the layer's marker error
//!   (for WebSocket message services, whose error is a `BoxError`); [`RespondWithStatus`] answers
//!   an HTTP response (for axum routes, whose error is `Infallible`).
//!
//! Every layer sets them with the same builder methods, `.classifier(..)` and `.rejection(..)`, so
//! one classifier serves the whole stack:
//!
//! ```
//! use wsguard_policy::{Classify, Outcome};
//!
//! /// 4xx answers are the client's fault: not a failure of the service.
//! fn by_status(result: Result<&u16, &std::io::Error>) -> Outcome {
//!     match result {
//!         Ok(status) if *status >= 500 => Outcome::Failure,
//!         Ok(status) if *status >= 400 => Outcome::Rejected,
//!         Ok(_) => Outcome::Success,
//!         Err(_) => Outcome::Failure,
//!     }
//! }
//! assert_eq!(by_status.classify(Ok(&404)), Outcome::Rejected);
//! ```

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
pub mod reject;

#[cfg(feature = "http")]
pub use self::classify::StatusClassifier;
pub use self::classify::{Classify, DefaultClassifier, Outcome};
#[cfg(feature = "http")]
pub use self::reject::RespondWithStatus;
pub use self::reject::{Reason, Reject, Rejection, ReturnError};
/// The error of services whose rejections are errors: tower's `BoxError`, the one type every
/// wsguard crate names.
pub use tower::BoxError;
