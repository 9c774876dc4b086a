//! Error types.

use std::fmt;
use std::time::Duration;

pub use wsguard_policy::BoxError;

/// The request is a duplicate of one seen within the window; it did not reach the inner service.
///
/// Only this crate creates it. Find it with `err.is::<Duplicate>()` or
/// `err.downcast_ref::<Duplicate>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    pub(crate) age: Duration,
}

impl Duplicate {
    /// How long ago the first copy was seen (millisecond precision; for the Redis store, as far
    /// as the nodes' clocks agree).
    pub fn age(&self) -> Duration {
        self.age
    }
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "duplicate request (first seen {} ms ago)",
            self.age.as_millis()
        )
    }
}

impl std::error::Error for Duplicate {}

/// The store failed and `on_error = "fail_closed"`: the request was rejected unseen.
///
/// Only this crate creates it. Find it with `err.is::<StoreUnavailable>()`.
#[derive(Debug)]
pub struct StoreUnavailable(pub(crate) StoreError);

impl StoreUnavailable {
    /// What went wrong with the store.
    pub fn cause(&self) -> &StoreError {
        &self.0
    }
}

impl fmt::Display for StoreUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deduplication store unavailable: {}", self.0)
    }
}

impl std::error::Error for StoreUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A store could not answer (an error, or no answer within its timeout).
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
}

#[derive(Debug)]
enum StoreErrorKind {
    Timeout(Duration),
    Backend(BoxError),
}

impl StoreError {
    /// The store failed with `error`.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self {
            kind: StoreErrorKind::Backend(error.into()),
        }
    }

    /// The store did not answer within `after`.
    pub fn timeout(after: Duration) -> Self {
        Self {
            kind: StoreErrorKind::Timeout(after),
        }
    }

    /// Whether the store did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Timeout(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreErrorKind::Timeout(after) => {
                write!(f, "no answer within {} ms", after.as_millis())
            }
            StoreErrorKind::Backend(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StoreErrorKind::Timeout(_) => None,
            StoreErrorKind::Backend(e) => Some(&**e),
        }
    }
}
