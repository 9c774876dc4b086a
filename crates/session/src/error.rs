//! Error types.

use std::fmt;

use crate::store::SessionStoreError;

/// The error of services whose rejections are errors: tower's `BoxError`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A message could not be logged: the session (or the client's session) does not exist (never
/// did, expired or was evicted), or the store failed.
///
/// Only this crate creates it. Find it with `err.is::<SessionGone>()`.
#[derive(Debug, Clone)]
pub struct SessionGone {
    store: Option<SessionStoreError>,
}

impl SessionGone {
    pub(crate) fn no_session() -> Self {
        Self { store: None }
    }

    pub(crate) fn store(err: SessionStoreError) -> Self {
        Self { store: Some(err) }
    }

    /// The store's error, if the store failed (rather than the session being absent).
    pub fn store_error(&self) -> Option<&SessionStoreError> {
        self.store.as_ref()
    }
}

impl fmt::Display for SessionGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.store {
            None => f.write_str("no such session"),
            Some(err) => write!(f, "message not logged: {err}"),
        }
    }
}

impl std::error::Error for SessionGone {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.store.as_ref().map(|e| e as _)
    }
}
