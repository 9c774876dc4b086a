//! Sessions for wsguard WebSocket services: a client that drops and reconnects loses nothing and
//! sees nothing twice.
//!
//! This crate is the protocol and the session logic, without sockets: `wsguard-axum` drives it
//! from its connection loop when a client offers the `wsguard.v1` subprotocol. The protocol is
//! specified in `docs/protocol.md`; in short:
//!
//! - The client's first frame is `hello` or `resume` (token and the highest `seq` it holds); the
//!   server answers with a [`SessionFrame`](protocol::SessionFrame): the token, whether it resumed, the highest client
//!   `id` it processed, and on refusal a [`RefusalReason`](protocol::RefusalReason) (`unknown`, `expired`, `gap` with
//!   `lost`, `unavailable`).
//! - Every outbound message is logged in its session ([`Session::append`], or a
//!   [`SessionSender`] from anywhere in the application, connected client or not) and sent as
//!   `{"type":"msg","seq":N,"data":V}`; the client's cumulative `ack` frees it
//!   ([`Session::ack`]). A resume replays everything after the client's `last`, with the
//!   original `seq`s.
//! - Every inbound `{"type":"msg","id":N,"data":V}` is admitted once ([`Session::accept`]): a
//!   resend after a reconnect never runs the handler twice, and the server's cumulative `ack`
//!   ([`Session::ack_to_send`]) tells the client what it need not resend.
//! - Bounds (`max_messages`, `max_bytes` per session; `max_sessions`, `max_total_bytes` per
//!   process) and the TTL of detached sessions come from the `session` section of the
//!   configuration ([`SessionConfig`](wsguard_config::SessionConfig)), fixed or live.
//!
//! Sessions live in a [`SessionStore`](store::SessionStore): in this process's memory by default
//! ([`MemorySessionStore`]), or (feature `redis`) in Redis
//! (`store::RedisSessionStore`, one server or a cluster) so that every
//! node on the same Redis shares them: a client resumes on any node, and a message sent on one
//! node reaches the client on another. [`Sessions::from_config`] builds the store
//! `session.store` names.
//!
//! Application code sends to a client whether or not it is connected at the moment; a route
//! that notifies one:
//!
//! ```
//! use axum::{Router, extract::{Path, State}, http::StatusCode, routing::post};
//! use wsguard_config::SessionConfig;
//! use wsguard_session::Sessions;
//!
//! async fn notify(
//!     State(sessions): State<Sessions>,
//!     Path(client): Path<String>,
//!     body: String,
//! ) -> StatusCode {
//!     // Logged in the client's newest session: sent at once if it is connected, on resume if
//!     // it comes back within the TTL.
//!     match sessions.sender_for_client(&client).send(body).await {
//!         Ok(_seq) => StatusCode::ACCEPTED,
//!         Err(_no_session) => StatusCode::NOT_FOUND,
//!     }
//! }
//!
//! let sessions = Sessions::new(SessionConfig::production());
//! let app: Router = Router::new()
//!     .route("/notify/{client}", post(notify))
//!     .with_state(sessions);
//! # let _ = app;
//! ```
//!
//! The connection's side of a session, step by step (the socket is left out; see
//! `docs/protocol.md` for where each step sits in a connection loop):
//!
//! ```
//! use wsguard_config::SessionConfig;
//! use wsguard_session::protocol::{ClientFrame, WireFrame};
//! use wsguard_session::{Accept, Opened, Sessions};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let sessions = Sessions::new(SessionConfig::testing());
//!
//! // First connection: hello, one message each way.
//! let hello = ClientFrame::parse(r#"{"type":"hello"}"#).unwrap();
//! let Some(Opened::Attached { mut session, frame, .. }) = sessions.open(&hello, Some("alice")).await
//! else { panic!("a hello opens a session") };
//! let token = frame.session.unwrap();
//! assert_eq!(session.append(r#"{"text":"welcome"}"#).await.unwrap(), 1);
//! let ClientFrame::Msg { id, .. } = ClientFrame::parse(r#"{"type":"msg","id":1,"data":"hi"}"#).unwrap()
//! else { unreachable!() };
//! if let Accept::New(processing) = session.accept(id) {
//!     // ... the service stack handles "hi" ...
//!     processing.processed();
//! }
//! assert_eq!(session.ack_to_send(), Some(1));
//! drop(session); // the connection died before the client received seq 1
//!
//! // Meanwhile the application sends to alice, who is away.
//! sessions.sender_for_client("alice").send("while you were away").await.unwrap();
//!
//! // Second connection: resume; seq 1 and 2 are replayed, id 1 is not run again.
//! let resume = format!(r#"{{"type":"resume","session":"{token}","last":0}}"#);
//! let resume = ClientFrame::parse(&resume).unwrap();
//! let Some(Opened::Attached { mut session, frame, replay }) = sessions.open(&resume, Some("alice")).await
//! else { panic!("the session is held") };
//! assert!(frame.resumed);
//! assert_eq!(frame.last, 1);
//! let replayed: Vec<WireFrame> = replay.iter().map(|m| m.to_wire()).collect();
//! assert_eq!(replayed, [
//!     WireFrame::Text(r#"{"type":"msg","seq":1,"data":{"text":"welcome"}}"#.into()),
//!     WireFrame::Text(r#"{"type":"msg","seq":2,"data":"while you were away"}"#.into()),
//! ]);
//! assert!(matches!(session.accept(1), Accept::AlreadyProcessed));
//! # }
//! ```

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod data;
pub mod error;
pub mod future;
mod inbound;
pub mod protocol;
mod sender;
mod session;
mod sessions;
mod stats;
pub mod store;
mod token;
mod wake;

pub use self::data::{CheckedJson, JsonText, MessageData};
pub use self::error::SessionGone;
pub use self::inbound::{Accept, Processing};
pub use self::sender::SessionSender;
pub use self::session::Session;
pub use self::sessions::{Opened, Sessions};
pub use self::stats::{Refused, SessionStats};
pub use self::store::MemorySessionStore;
pub use self::token::{InvalidToken, SessionToken};
