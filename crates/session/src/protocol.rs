//! The frames of the `wsguard.v1` protocol (`docs/protocol.md`).
//!
//! Text frames are JSON objects with a `type` field. [`ClientFrame::parse`] reads one a client
//! sent and never panics, whatever the input; [`ServerFrame::to_text`] writes one for the client.
//! A message's `data` is kept as raw JSON ([`RawValue`]) both ways, so the handler's JSON is
//! neither parsed into a tree nor re-encoded. Binary messages travel in binary frames that start
//! with their number ([`encode_binary`], [`decode_binary`]).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::token::SessionToken;

/// The WebSocket subprotocol that turns sessions on.
pub const SUBPROTOCOL: &str = "wsguard.v1";

/// Bytes of the big-endian number in front of a binary message.
pub const BINARY_HEADER_LEN: usize = 8;

/// Bytes a `msg` frame adds to its `data` at most: `{"type":"msg","seq":`, a `seq` of up to 20
/// digits, `,"data":` and `}`.
pub const MSG_FRAME_OVERHEAD: usize = 49;

/// A text frame a client sends.
#[derive(Debug, Clone)]
pub enum ClientFrame {
    /// `{"type":"hello"}`: the first frame of a new session.
    Hello,
    /// `{"type":"resume","session":TOKEN,"last":N}`: the first frame of a resumed session; `last`
    /// is the highest server `seq` the client received in order (0 if none).
    Resume {
        /// The token the server gave.
        session: SessionToken,
        /// The highest server `seq` the client holds.
        last: u64,
    },
    /// `{"type":"msg","id":N,"data":V}`: an inbound message.
    Msg {
        /// The client's number for the message: 1, 2, 3... in each session.
        id: u64,
        /// The message, as the JSON text the client sent.
        data: Box<RawValue>,
    },
    /// `{"type":"ack","seq":N}`: the client holds every server message up to `seq`.
    Ack {
        /// The highest server `seq` the client holds.
        seq: u64,
    },
}

/// Frames are equal when their `data` is the same JSON text.
impl PartialEq for ClientFrame {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Hello, Self::Hello) => true,
            (
                Self::Resume {
                    session: a,
                    last: b,
                },
                Self::Resume {
                    session: c,
                    last: d,
                },
            ) => a == c && b == d,
            (Self::Msg { id: a, data: b }, Self::Msg { id: c, data: d }) => {
                a == c && b.get() == d.get()
            }
            (Self::Ack { seq: a }, Self::Ack { seq: b }) => a == b,
            _ => false,
        }
    }
}

/// Why a text frame is not a [`ClientFrame`].
///
/// Only this crate creates it; its `Display` says what is wrong in words fit for a close reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    kind: FrameErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FrameErrorKind {
    NotJson(String),
    UnknownType(String),
    Missing(&'static str, &'static str),
    BadToken,
    ZeroId,
    ShortBinary(usize),
}

impl FrameError {
    fn new(kind: FrameErrorKind) -> Self {
        Self { kind }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FrameErrorKind::NotJson(err) => write!(f, "not a wsguard.v1 frame: {err}"),
            FrameErrorKind::UnknownType(t) => write!(f, "unknown frame type {t:?}"),
            FrameErrorKind::Missing(t, field) => write!(f, "a {t} frame needs `{field}`"),
            FrameErrorKind::BadToken => f.write_str("`session` is not a session token"),
            FrameErrorKind::ZeroId => f.write_str("message ids start at 1"),
            FrameErrorKind::ShortBinary(len) => write!(
                f,
                "a binary frame needs {BINARY_HEADER_LEN} bytes of number, got {len} bytes"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// A client frame read without copying its `data`: what a connection does with each frame it
/// receives ([`ClientFrame`] owns its `data`).
#[derive(Debug, Clone, Copy)]
pub enum ClientFrameRef<'a> {
    /// `{"type":"hello"}`.
    Hello,
    /// `{"type":"resume","session":TOKEN,"last":N}`.
    Resume {
        /// The token the server gave.
        session: SessionToken,
        /// The highest server `seq` the client holds.
        last: u64,
    },
    /// `{"type":"msg","id":N,"data":V}`.
    Msg {
        /// The client's number for the message.
        id: u64,
        /// The message, as the JSON text the client sent: a slice of the frame.
        data: &'a RawValue,
    },
    /// `{"type":"ack","seq":N}`.
    Ack {
        /// The highest server `seq` the client holds.
        seq: u64,
    },
}

/// The start of a `msg` frame as clients write it, fields in the protocol's order.
const MSG_PREFIX: &str = r#"{"type":"msg","id":"#;

impl<'a> ClientFrameRef<'a> {
    /// Reads a text frame, as [`ClientFrame::parse`] does (the same frames, the same errors).
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        // Most frames are messages written field by field as the protocol lists them: read
        // those without going through the general reader (the same answer, checked in tests).
        if let Some(msg) = text.strip_prefix(MSG_PREFIX).and_then(msg_in_order) {
            return Ok(msg);
        }
        parse_any(text)
    }

    /// The frame with its `data` copied.
    pub fn into_owned(self) -> ClientFrame {
        match self {
            Self::Hello => ClientFrame::Hello,
            Self::Resume { session, last } => ClientFrame::Resume { session, last },
            Self::Msg { id, data } => ClientFrame::Msg {
                id,
                data: data.to_owned(),
            },
            Self::Ack { seq } => ClientFrame::Ack { seq },
        }
    }
}

/// `N,"data":V}` after [`MSG_PREFIX`]; `None` for anything else (other fields, another order,
/// whitespace, an id the general reader refuses), which that reader then handles.
fn msg_in_order(rest: &str) -> Option<ClientFrameRef<'_>> {
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    // JSON numbers have no leading zero; 0 itself is refused below.
    if digits == 0 || (digits > 1 && rest.starts_with('0')) {
        return None;
    }
    let id: u64 = rest[..digits].parse().ok().filter(|&id| id > 0)?;
    let data = rest[digits..]
        .strip_prefix(r#","data":"#)?
        .strip_suffix('}')?;
    let data: &RawValue = serde_json::from_str(data).ok()?;
    Some(ClientFrameRef::Msg { id, data })
}

/// Every field any client frame has; which ones a frame needs depends on its `type`.
#[derive(Deserialize)]
struct AnyClientFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    session: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    last: Option<u64>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    // `Option<&RawValue>` alone would read `"data":null` as absent.
    #[serde(default, deserialize_with = "present", borrow)]
    data: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Any client frame, by the general reader.
fn parse_any(text: &str) -> Result<ClientFrameRef<'_>, FrameError> {
    let any: AnyClientFrame<'_> = serde_json::from_str(text)
        .map_err(|e| FrameError::new(FrameErrorKind::NotJson(e.to_string())))?;
    let missing = |t, field| FrameError::new(FrameErrorKind::Missing(t, field));
    match &*any.kind {
        "hello" => Ok(ClientFrameRef::Hello),
        "resume" => {
            let session = any.session.ok_or_else(|| missing("resume", "session"))?;
            let session = session
                .parse()
                .map_err(|_| FrameError::new(FrameErrorKind::BadToken))?;
            let last = any.last.ok_or_else(|| missing("resume", "last"))?;
            Ok(ClientFrameRef::Resume { session, last })
        }
        "msg" => {
            let id = any.id.ok_or_else(|| missing("msg", "id"))?;
            if id == 0 {
                return Err(FrameError::new(FrameErrorKind::ZeroId));
            }
            let data = any.data.ok_or_else(|| missing("msg", "data"))?;
            Ok(ClientFrameRef::Msg { id, data })
        }
        "ack" => {
            let seq = any.seq.ok_or_else(|| missing("ack", "seq"))?;
            Ok(ClientFrameRef::Ack { seq })
        }
        other => Err(FrameError::new(FrameErrorKind::UnknownType(
            other.chars().take(32).collect(),
        ))),
    }
}

impl ClientFrame {
    /// Reads a text frame. Unknown fields are ignored (fields may be added to the protocol);
    /// a missing or malformed required field is an error.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        ClientFrameRef::parse(text).map(ClientFrameRef::into_owned)
    }

    /// The frame as JSON text (what a client sends; the server side only reads these).
    pub fn to_text(&self) -> String {
        match self {
            Self::Hello => r#"{"type":"hello"}"#.to_owned(),
            Self::Resume { session, last } => {
                format!(r#"{{"type":"resume","session":"{session}","last":{last}}}"#)
            }
            Self::Msg { id, data } => {
                format!(r#"{{"type":"msg","id":{id},"data":{}}}"#, data.get())
            }
            Self::Ack { seq } => format!(r#"{{"type":"ack","seq":{seq}}}"#),
        }
    }
}

/// Why a resume was refused, or a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The token is not known here, or belongs to another client (both get this answer).
    Unknown,
    /// The session was detached longer than the TTL and has been freed.
    Expired,
    /// The server no longer holds some messages after the client's `last` (a bound dropped them).
    Gap,
    /// No session can be opened now (`max_sessions` reached and none detached); no token given.
    Unavailable,
}

impl RefusalReason {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Gap => "gap",
            Self::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The server's answer to `hello` or `resume`, the first frame it sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionFrame {
    /// The session the connection now belongs to; `None` only with
    /// [`RefusalReason::Unavailable`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionToken>,
    /// Whether the session asked for was resumed.
    pub resumed: bool,
    /// The highest client `id` the server processed in the session: the resumed one, or for
    /// `gap` the old one (the client resends only what comes after). 0 otherwise.
    pub last: u64,
    /// Why a resume was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RefusalReason>,
    /// With `gap`: how many messages after the client's `last` the server could not replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
}

/// A text frame the server sends.
#[derive(Debug, Clone)]
pub enum ServerFrame {
    /// `{"type":"session",...}`: the answer to `hello` or `resume`.
    Session(SessionFrame),
    /// `{"type":"msg","seq":N,"data":V}`: an outbound message.
    Msg {
        /// The message's number in the session: 1, 2, 3... with no gaps.
        seq: u64,
        /// The message, as JSON text.
        data: Box<RawValue>,
    },
    /// `{"type":"ack","id":N}`: every client message up to `id` is processed; do not resend.
    Ack {
        /// The highest client id processed, with all before it.
        id: u64,
    },
}

/// Frames are equal when their `data` is the same JSON text.
impl PartialEq for ServerFrame {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Session(a), Self::Session(b)) => a == b,
            (Self::Msg { seq: a, data: b }, Self::Msg { seq: c, data: d }) => {
                a == c && b.get() == d.get()
            }
            (Self::Ack { id: a }, Self::Ack { id: b }) => a == b,
            _ => false,
        }
    }
}

impl ServerFrame {
    /// The frame as JSON text. `data` is copied as it is, not re-encoded.
    pub fn to_text(&self) -> String {
        match self {
            Self::Session(frame) => {
                #[derive(Serialize)]
                struct Tagged<'a> {
                    #[serde(rename = "type")]
                    kind: &'static str,
                    #[serde(flatten)]
                    frame: &'a SessionFrame,
                }
                serde_json::to_string(&Tagged {
                    kind: "session",
                    frame,
                })
                .expect("a session frame always serialises")
            }
            Self::Msg { seq, data } => msg_text(*seq, data),
            Self::Ack { id } => format!(r#"{{"type":"ack","id":{id}}}"#),
        }
    }

    /// Reads a server frame (what a client does; here for clients and tests).
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        #[derive(Deserialize)]
        struct AnyServerFrame {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            session: Option<String>,
            #[serde(default)]
            resumed: Option<bool>,
            #[serde(default)]
            last: Option<u64>,
            #[serde(default)]
            reason: Option<RefusalReason>,
            #[serde(default)]
            lost: Option<u64>,
            #[serde(default)]
            seq: Option<u64>,
            #[serde(default)]
            id: Option<u64>,
            #[serde(default, deserialize_with = "present_owned")]
            data: Option<Box<RawValue>>,
        }
        fn present_owned<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Box<RawValue>>, D::Error> {
            Box::<RawValue>::deserialize(d).map(Some)
        }
        let any: AnyServerFrame = serde_json::from_str(text)
            .map_err(|e| FrameError::new(FrameErrorKind::NotJson(e.to_string())))?;
        let missing = |t, field| FrameError::new(FrameErrorKind::Missing(t, field));
        match any.kind.as_str() {
            "session" => {
                let session = match any.session {
                    Some(s) => Some(
                        s.parse()
                            .map_err(|_| FrameError::new(FrameErrorKind::BadToken))?,
                    ),
                    None => None,
                };
                Ok(Self::Session(SessionFrame {
                    session,
                    resumed: any.resumed.ok_or_else(|| missing("session", "resumed"))?,
                    last: any.last.ok_or_else(|| missing("session", "last"))?,
                    reason: any.reason,
                    lost: any.lost,
                }))
            }
            "msg" => Ok(Self::Msg {
                seq: any.seq.ok_or_else(|| missing("msg", "seq"))?,
                data: any.data.ok_or_else(|| missing("msg", "data"))?,
            }),
            "ack" => Ok(Self::Ack {
                id: any.id.ok_or_else(|| missing("ack", "id"))?,
            }),
            other => Err(FrameError::new(FrameErrorKind::UnknownType(
                other.chars().take(32).collect(),
            ))),
        }
    }
}

/// A WebSocket frame to send, in the socket layer's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

/// `{"type":"msg","seq":N,"data":V}` without building a [`ServerFrame`], in one allocation of
/// exactly its length (so that a `Bytes` made from it needs no second one).
pub fn msg_text(seq: u64, data: &RawValue) -> String {
    msg_frame(seq, data.get())
}

/// [`msg_text`] for `data` known to be JSON.
pub(crate) fn msg_frame(seq: u64, data: &str) -> String {
    const HEAD: &str = r#"{"type":"msg","seq":"#;
    const DATA: &str = r#","data":"#;
    let mut digits = [0u8; 20];
    let seq = decimal(seq, &mut digits);
    let mut text = String::with_capacity(HEAD.len() + seq.len() + DATA.len() + data.len() + 1);
    text.push_str(HEAD);
    text.push_str(seq);
    text.push_str(DATA);
    text.push_str(data);
    text.push('}');
    text
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[start..]).expect("ASCII digits")
}

/// The `data` of an outbound text message: the text itself if it is JSON, else the text as a
/// JSON string.
pub fn text_to_data(text: &str) -> Box<RawValue> {
    match serde_json::from_str::<Box<RawValue>>(text) {
        Ok(raw) => raw,
        Err(_) => {
            RawValue::from_string(serde_json::to_string(text).expect("a string always serialises"))
                .expect("a serialised string is JSON")
        }
    }
}

/// The inbound message a handler sees for `data`: a JSON string's content, any other value's
/// JSON text. The inverse of [`text_to_data`] for text that is not itself a JSON string.
pub fn data_to_text(data: &RawValue) -> String {
    let json = data.get();
    match json.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        // Any value but a string is its own text, and so is a string's content without escapes.
        None => json.to_owned(),
        Some(content) if !content.contains('\\') => content.to_owned(),
        Some(_) => serde_json::from_str(json).expect("a RawValue string is JSON"),
    }
}

/// A binary frame carrying message number `n` (server `seq` or client `id`) and `payload`.
pub fn encode_binary(n: u64, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(BINARY_HEADER_LEN + payload.len());
    frame.put_u64(n);
    frame.put_slice(payload);
    frame.freeze()
}

/// The number and payload of a binary frame.
pub fn decode_binary(frame: &Bytes) -> Result<(u64, Bytes), FrameError> {
    if frame.len() < BINARY_HEADER_LEN {
        return Err(FrameError::new(FrameErrorKind::ShortBinary(frame.len())));
    }
    let mut number = [0u8; BINARY_HEADER_LEN];
    number.copy_from_slice(&frame[..BINARY_HEADER_LEN]);
    let n = u64::from_be_bytes(number);
    if n == 0 {
        return Err(FrameError::new(FrameErrorKind::ZeroId));
    }
    Ok((n, frame.slice(BINARY_HEADER_LEN..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn every_client_frame_parses() {
        let token = SessionToken::generate();
        assert_eq!(
            ClientFrame::parse(r#"{"type":"hello"}"#),
            Ok(ClientFrame::Hello)
        );
        assert_eq!(
            ClientFrame::parse(&format!(
                r#"{{"type":"resume","session":"{token}","last":7}}"#
            )),
            Ok(ClientFrame::Resume {
                session: token,
                last: 7
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"msg","id":3,"data":{"a": [1, 2]}}"#),
            Ok(ClientFrame::Msg {
                id: 3,
                data: raw(r#"{"a": [1, 2]}"#)
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ack","seq":9,"extra":true}"#),
            Ok(ClientFrame::Ack { seq: 9 })
        );
    }

    #[test]
    fn null_data_is_a_message_not_a_missing_field() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"msg","id":1,"data":null}"#),
            Ok(ClientFrame::Msg {
                id: 1,
                data: raw("null")
            })
        );
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let err = |t: &str| ClientFrame::parse(t).unwrap_err().to_string();
        assert!(err("hello").starts_with("not a wsguard.v1 frame"));
        assert_eq!(err(r#"{"type":"bye"}"#), r#"unknown frame type "bye""#);
        assert_eq!(err(r#"{"type":"msg","data":1}"#), "a msg frame needs `id`");
        assert_eq!(err(r#"{"type":"msg","id":1}"#), "a msg frame needs `data`");
        assert_eq!(
            err(r#"{"type":"msg","id":0,"data":1}"#),
            "message ids start at 1"
        );
        assert_eq!(
            err(r#"{"type":"resume","session":"x","last":0}"#),
            "`session` is not a session token"
        );
        assert!(err(r#"{"type":"ack","seq":-1}"#).starts_with("not a wsguard.v1 frame"));
    }

    #[test]
    fn server_frames_round_trip_without_re_encoding_data() {
        let data = r#"{"b":1,  "a":"x"}"#;
        let text = ServerFrame::Msg {
            seq: 4,
            data: raw(data),
        }
        .to_text();
        assert_eq!(text, format!(r#"{{"type":"msg","seq":4,"data":{data}}}"#));
        assert_eq!(
            ServerFrame::Ack { id: 2 }.to_text(),
            r#"{"type":"ack","id":2}"#
        );

        let token = SessionToken::generate();
        let refused = ServerFrame::Session(SessionFrame {
            session: Some(token),
            resumed: false,
            last: 5,
            reason: Some(RefusalReason::Gap),
            lost: Some(3),
        });
        assert_eq!(
            refused.to_text(),
            format!(
                r#"{{"type":"session","session":"{token}","resumed":false,"last":5,"reason":"gap","lost":3}}"#
            )
        );
        assert_eq!(ServerFrame::parse(&refused.to_text()), Ok(refused));
    }

    #[test]
    fn non_json_text_travels_as_a_json_string() {
        assert_eq!(text_to_data("hi \"you\"").get(), r#""hi \"you\"""#);
        assert_eq!(text_to_data(r#"{"a":1}"#).get(), r#"{"a":1}"#);
        assert_eq!(data_to_text(&text_to_data("hi \"you\"")), "hi \"you\"");
        assert_eq!(data_to_text(&raw("[1,2]")), "[1,2]");
    }

    #[test]
    fn a_message_in_protocol_order_reads_as_the_general_reader_reads_it() {
        let text = r#"{"type":"msg","id":12,"data":{"a":[1,"x"]}}"#;
        let Ok(ClientFrameRef::Msg { id, data }) = ClientFrameRef::parse(text) else {
            panic!("a message")
        };
        assert_eq!((id, data.get()), (12, r#"{"a":[1,"x"]}"#));
        assert!(
            std::ptr::eq(data.get().as_ptr(), text[29..].as_ptr()),
            "a slice of the frame"
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"msg","id":0,"data":1}"#).unwrap_err(),
            FrameError::new(FrameErrorKind::ZeroId)
        );
    }

    proptest::proptest! {
        #[test]
        fn the_message_fast_path_agrees_with_the_general_reader(
            id in proptest::sample::select(vec![
                "0", "1", "7", "01", "00", "18446744073709551615", "18446744073709551616",
                "-1", "1.0", "1e3", " 5", "", "\"3\"",
            ]),
            sep in proptest::sample::select(vec![r#","data":"#, r#", "data":"#, r#","data" :"#, r#","x":1,"data":"#]),
            data in proptest::sample::select(vec![
                "null", "1", "-2.5e3", "true", r#""plain""#, r#""esc\"aped\n""#, r#""\u00e9""#,
                r#"{"a":[1,{}]}"#, " [1, 2] ", "{", "}", r#""unterminated"#, "nul", "01", "[1,]",
                r#"{"a":1}}"#, "",
            ]),
            tail in proptest::sample::select(vec!["}", " }", "} ", "}}", r#","id":2}"#, r#","type":"ack"}"#, ""]),
        ) {
            let text = format!("{MSG_PREFIX}{id}{sep}{data}{tail}");
            proptest::prop_assert_eq!(
                ClientFrameRef::parse(&text).map(ClientFrameRef::into_owned),
                parse_any(&text).map(ClientFrameRef::into_owned),
                "{}", text
            );
        }
    }

    #[test]
    fn a_msg_frame_is_written_in_one_allocation_of_its_exact_length() {
        for seq in [0, 1, 9, 10, 12_345, u64::MAX] {
            let text = msg_text(seq, &raw(r#"{"a":1}"#));
            assert_eq!(
                text,
                format!(r#"{{"type":"msg","seq":{seq},"data":{{"a":1}}}}"#)
            );
            assert_eq!(text.capacity(), text.len());
        }
    }

    #[test]
    fn a_string_reaches_the_handler_unescaped_and_anything_else_as_its_text() {
        assert_eq!(data_to_text(&raw(r#""plain""#)), "plain");
        assert_eq!(data_to_text(&raw(r#""""#)), "");
        assert_eq!(data_to_text(&raw(r#""a\"b\u00e9""#)), "a\"bé");
        assert_eq!(data_to_text(&raw(r#"{"a":"\n"}"#)), r#"{"a":"\n"}"#);
        assert_eq!(data_to_text(&raw("-1.5")), "-1.5");
    }

    #[test]
    fn binary_frames_carry_a_big_endian_number() {
        let frame = encode_binary(258, b"xyz");
        assert_eq!(&frame[..], b"\0\0\0\0\0\0\x01\x02xyz");
        assert_eq!(decode_binary(&frame), Ok((258, Bytes::from_static(b"xyz"))));
        assert!(decode_binary(&Bytes::from_static(b"\0\0\x01")).is_err());
        assert!(decode_binary(&encode_binary(0, b"")).is_err());
    }
}
