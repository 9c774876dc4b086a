use wsguard_session::protocol::RefusalReason;

use crate::error::ConnectError;
use crate::message::Message;

/// What the client's [`Events`](crate::Events) stream yields.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A server message: in `seq` order and exactly once within a session (`seq` starts again
    /// at 1 after [`Event::Restarted`]).
    Message {
        /// The message's number in the session.
        seq: u64,
        /// The message.
        message: Message,
    },
    /// A text frame outside the numbered sequence, such as the server's error frames
    /// (`{"type":"error",...}`): not numbered and not replayed after a reconnect.
    Unnumbered(String),
    /// The connection ended and the client is reconnecting (an [`Event::Resumed`] or
    /// [`Event::Restarted`] follows once it is back).
    Disconnected(Disconnect),
    /// The connection dropped and the client reconnected and resumed its session: nothing was
    /// lost either way.
    Resumed,
    /// The server refused to resume the session and a new one started.
    Restarted(Restart),
    /// The client stopped; the last event.
    Stopped(Stopped),
}

/// Why a connection ended before a reconnection ([`Event::Disconnected`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct Disconnect {
    /// The server's close code, if it closed the connection (`1001` from a draining server,
    /// whose reconnect hint the client follows); `None` if the connection broke.
    pub code: Option<u16>,
    /// The close reason, or what broke.
    pub reason: String,
}

/// A new session after a refused resume ([`Event::Restarted`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct Restart {
    /// Why the server refused (`unknown`, `expired` or `gap`).
    pub reason: RefusalReason,
    /// With `gap`: how many server messages after the last one delivered are lost. With
    /// `unknown` and `expired` the number is not known (`None`): resynchronise.
    pub lost: Option<u64>,
    /// Messages the old session had not acknowledged and that may or may not have been
    /// processed (after `unknown` and `expired`, unless
    /// [`ClientOptions::resend_unconfirmed`](crate::ClientOptions::resend_unconfirmed)). They
    /// are not resent. After `gap` nothing is uncertain: the unprocessed messages are resent.
    pub unconfirmed: Vec<Message>,
}

/// Why the client stopped ([`Event::Stopped`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct Stopped {
    /// Why.
    pub reason: StopReason,
    /// Messages sent but not acknowledged by the server when the client stopped.
    pub unconfirmed: Vec<Message>,
}

/// Why the client stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum StopReason {
    /// [`Client::close`](crate::Client::close) was called or every handle was dropped.
    Closed,
    /// Reconnection gave up (`retry.max_attempts` failed attempts, reconnection disabled, or an
    /// error that retrying cannot fix).
    GaveUp(ConnectError),
    /// The server closed with a code that means "do not come back" (`1000`, a protocol error,
    /// a message too big, or `1008 superseded`: another connection resumed the session).
    ServerClosed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}
