//! Errors of the client.

use std::fmt;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client has stopped: [`Client::close`](crate::Client::close) was called, it gave up
/// reconnecting, or the server ended the session. The stream of events says which.
#[derive(Debug, Clone)]
pub struct Closed(pub(crate) ());

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the wsguard client has stopped")
    }
}

impl std::error::Error for Closed {}

/// No connection could be made (the first one, or a reconnection that gave up).
#[derive(Debug)]
pub struct ConnectError {
    pub(crate) attempts: u32,
    pub(crate) source: BoxError,
}

impl ConnectError {
    /// How many connection attempts failed.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no wsguard.v1 connection after {} attempt(s): {}",
            self.attempts, self.source
        )
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
