//! Why a connection ends, and the close codes the adapter uses.

use std::borrow::Cow;
use std::fmt;

/// `1000 Normal Closure`.
pub const NORMAL_CLOSURE: u16 = 1000;
/// `1001 Going Away`: the server closes an idle connection.
pub const GOING_AWAY: u16 = 1001;
/// `1002 Protocol Error`: the client broke RFC 6455 (unmasked or reserved-bit frames, unknown
/// opcodes, fragmented or oversized control frames, continuation without a start).
pub const PROTOCOL_ERROR: u16 = 1002;
/// `1005 No Status Received`: logged when a peer's close frame carried no code.
pub const NO_STATUS_RECEIVED: u16 = 1005;
/// `1006 Abnormal Closure`: logged when a peer vanished without a close frame.
pub const ABNORMAL_CLOSURE: u16 = 1006;
/// `1007 Invalid Frame Payload Data`: a text message that is not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// `1008 Policy Violation`: the client does not read (its send queue overflowed under the
/// `close` policy, too many pongs wait for it, or its write buffer is full).
pub const POLICY_VIOLATION: u16 = 1008;
/// `1009 Message Too Big`: an inbound message exceeded `max_message_size`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// `1011 Internal Error`: the message service panicked or failed to become ready.
pub const INTERNAL_ERROR: u16 = 1011;
/// `1013 Try Again Later`: an open breaker rejected a message and `on_rejection = "close"`.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Why a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The server closes with this code and reason.
    Close {
        code: u16,
        reason: Cow<'static, str>,
    },
    /// The peer closed (with its code, if any) or vanished; nothing more is sent.
    Peer {
        code: Option<u16>,
        detail: Cow<'static, str>,
    },
    /// The server drops the TCP connection without a close frame ([`Sender::abort`]).
    ///
    /// [`Sender::abort`]: crate::Sender::abort
    Abort,
}

impl Ending {
    pub(crate) fn close(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Close {
            code,
            reason: reason.into(),
        }
    }

    pub(crate) fn peer(code: Option<u16>, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::Peer {
            code,
            detail: detail.into(),
        }
    }

    #[cfg(test)]
    pub(crate) fn code(&self) -> Option<u16> {
        match self {
            Self::Close { code, .. } => Some(*code),
            Self::Peer { code, .. } => *code,
            Self::Abort => None,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Close { code, reason } => write!(f, "server closed with {code}: {reason}"),
            Self::Peer {
                code: Some(code),
                detail,
            } => write!(f, "client closed with {code}: {detail}"),
            Self::Peer { code: None, detail } => write!(f, "client gone: {detail}"),
            Self::Abort => f.write_str("server dropped the connection without a close frame"),
        }
    }
}
