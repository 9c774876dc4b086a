//! Where sessions and their logs live.
//!
//! [`MemorySessionStore`] is the embedded default. With the `redis` feature,
//! `RedisSessionStore` keeps them in Redis (one server or a cluster), so that a client resumes
//! on any node: each method is one atomic step on a session's keys there (a Lua script): `XADD`
//! for [`append`](SessionStore::append), `XRANGE` for [`read_after`](SessionStore::read_after),
//! `XTRIM MINID` for [`trim`](SessionStore::trim), a hash per session for its client, marks and
//! attachment, key expiry for detached sessions.

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use wsguard_config::{SessionBackend, SessionConfig};

use crate::data::MessageData;
use crate::protocol::WireFrame;
use crate::token::SessionToken;

pub use self::memory::MemorySessionStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisSessionStore;

/// A store shared behind a trait object: what [`Sessions`](crate::Sessions) holds unless told
/// otherwise, so that a route's type does not depend on where its sessions live.
pub type SharedSessionStore = Arc<dyn SessionStore>;

/// What another node tells this one about a session attached here (see
/// [`SessionStore::listen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteEvent {
    /// A message was logged in `session` on another node: the connection reads it from the
    /// store.
    Logged {
        /// The session.
        session: SessionToken,
        /// The message's number.
        seq: u64,
    },
    /// `session` was attached on another node: this node's connection to it closes.
    Superseded {
        /// The session.
        session: SessionToken,
    },
    /// Events may have been lost (the store's subscription was made again): every connection
    /// reads its log again.
    Missed,
    /// The processed mark `id` of `session` reached the store (a store that
    /// [`confirms_marks`](SessionStore::confirms_marks)): acks may now cover it.
    Recorded {
        /// The session.
        session: SessionToken,
        /// The mark, every client id up to it processed.
        id: u64,
    },
    /// A step of `session` this node asked of the store failed (an append or a processed mark
    /// that did not reach it): what the store holds is all that can be trusted. The connection
    /// closes; the client resumes from the store's marks and resends the rest.
    Failed {
        /// The session.
        session: SessionToken,
    },
}

/// Receives [`RemoteEvent`]s; given to [`SessionStore::listen`] by the registry.
pub type RemoteListener = Arc<dyn Fn(RemoteEvent) + Send + Sync>;

/// The store `config.store` names (see [`Sessions::from_config`](crate::Sessions::from_config)).
pub(crate) fn from_config(config: &SessionConfig) -> Result<SharedSessionStore, SessionStoreError> {
    match config.store.backend {
        SessionBackend::Memory => Ok(Arc::new(MemorySessionStore::new())),
        #[cfg(feature = "redis")]
        SessionBackend::Redis => Ok(Arc::new(RedisSessionStore::lazy(&config.store.redis)?)),
        #[cfg(not(feature = "redis"))]
        SessionBackend::Redis => Err(SessionStoreError::new(
            "session.store.backend is \"redis\", but wsguard-session was built without its \
             `redis` feature: enable it (wsguard-axum's `redis` feature) or use backend = \"memory\"",
        )),
    }
}

/// A message in a session log.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// Its number in the session.
    pub seq: u64,
    /// The message.
    pub payload: MessageData,
}

impl Logged {
    /// The WebSocket frame that carries it: `{"type":"msg","seq":N,"data":V}`, or a binary frame
    /// starting with the big-endian `seq`.
    pub fn to_wire(&self) -> WireFrame {
        self.payload.to_wire(self.seq)
    }
}

/// Who an appended message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// One session.
    Session(&'a SessionToken),
    /// The newest session of a client id.
    Client(&'a str),
}

/// The answer of [`SessionStore::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The session exists; `evicted` lists the detached sessions freed to make room for it.
    Created {
        /// Sessions freed for `max_sessions`, oldest detached first.
        evicted: Vec<SessionToken>,
    },
    /// `max_sessions` sessions exist and none is detached.
    Full,
}

/// A session's state as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// The client it is bound to, if the route identifies clients.
    pub client: Option<String>,
    /// The highest `seq` given so far (0 before the first message).
    pub last_seq: u64,
    /// The highest `seq` the client acknowledged.
    pub acked: u64,
    /// How many unacknowledged messages were dropped by a bound so far; a resume needs none of
    /// them only if its `last` is past all of them.
    pub dropped: u64,
    /// The lowest `seq` still held (`last_seq + 1` when the log is empty).
    pub first_held: u64,
    /// The highest client `id` processed with every one before it.
    pub processed: u64,
}

/// The answer of [`SessionStore::attach`].
#[derive(Debug, Clone, PartialEq)]
pub enum Attached {
    /// No such session, or it belongs to another client.
    Unknown,
    /// The session expired (and was freed) while detached.
    Expired,
    /// The session, now attached, and the messages it holds after the `after` asked for.
    Held {
        /// Its state when attached.
        state: SessionState,
        /// Every held message with `seq > after`, in order.
        messages: Vec<Logged>,
    },
}

/// The answer of [`SessionStore::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The session the message went to.
    pub session: SessionToken,
    /// The message's number.
    pub seq: u64,
    /// Unacknowledged messages of this session dropped to respect `max_messages`, `max_bytes`
    /// or `max_total_bytes`.
    pub dropped: u64,
    /// Detached sessions freed to respect `max_total_bytes`.
    pub evicted: Vec<SessionToken>,
}

/// Sizes a store can report cheaply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Sessions held, attached or detached.
    pub sessions: usize,
    /// Sessions held whose client is away.
    pub detached: usize,
    /// Payload bytes held in all logs.
    pub bytes: usize,
}

/// A store failed (a network store's error or timeout). Hello and resume are then answered
/// `unavailable`.
#[derive(Debug, Clone)]
pub struct SessionStoreError(Arc<str>);

impl SessionStoreError {
    /// An error with this description.
    pub fn new(message: impl Into<String>) -> Self {
        Self(Arc::from(message.into()))
    }
}

impl fmt::Display for SessionStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session store: {}", self.0)
    }
}

impl std::error::Error for SessionStoreError {}

/// Sessions, their logs and their marks.
///
/// Each method is one atomic step. A store that answers without waiting returns
/// [`StoreFuture::ready`]; one that waits on a network returns [`StoreFuture::boxed`]. Methods
/// that return nothing must not block (spawn if they have to wait): connections call them from
/// `Drop`. Times are `tokio::time::Instant`, so tests run on paused time; a shared store keeps
/// its own clock for expiry and uses these only as "now" on this node.
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// Creates an attached session bound to `client`. Past `config.max_sessions` it frees the
    /// oldest detached session first, and answers [`Created::Full`] if none is detached.
    fn create(
        &self,
        token: SessionToken,
        client: Option<&str>,
        now: Instant,
        config: &SessionConfig,
    ) -> StoreFuture<Created>;

    /// Attaches the session `token` of `client` and reads what it holds after `after`. A session
    /// detached longer than `config.ttl` is freed and answered [`Attached::Expired`]; a token of
    /// another client is answered [`Attached::Unknown`], as an unknown one.
    fn attach(
        &self,
        token: &SessionToken,
        client: Option<&str>,
        after: u64,
        now: Instant,
        config: &SessionConfig,
    ) -> StoreFuture<Attached>;

    /// Logs an outbound message and gives it the next `seq`; `None` if there is no such
    /// session. Past `max_messages` or `max_bytes` the oldest unacknowledged messages are
    /// dropped; past `max_total_bytes` detached sessions are freed, oldest first, and then this
    /// session's oldest messages are dropped.
    ///
    /// A message's place is fixed when `append` is called, not when its future is first
    /// polled: messages appended to a session one call after another get increasing `seq`s
    /// whatever order their futures run in, and a future dropped unpolled does not cancel its
    /// append (`SessionSender::send_now` relies on both).
    fn append(
        &self,
        to: Target<'_>,
        payload: MessageData,
        config: &SessionConfig,
    ) -> StoreFuture<Option<Appended>>;

    /// At most `max` held messages with `seq > after`, in order.
    fn read_after(&self, token: &SessionToken, after: u64, max: usize) -> StoreFuture<Vec<Logged>>;

    /// Frees the messages up to `seq`: the client acknowledged them. Beyond `last_seq` is
    /// clamped to it.
    fn trim(&self, token: &SessionToken, seq: u64) -> StoreFuture<()>;

    /// Records that every client message up to `id` is processed. Must not block.
    fn record_processed(&self, token: &SessionToken, id: u64);

    /// [`append`](Self::append) to session `token`, then
    /// [`record_processed`](Self::record_processed) up to `id`: a reply, and the mark of the
    /// message it answers, in that order. The default makes the two calls; a store that can
    /// makes them one step (the memory store takes its lock once).
    fn append_processed(
        &self,
        token: &SessionToken,
        payload: MessageData,
        id: u64,
        config: &SessionConfig,
    ) -> StoreFuture<Option<Appended>> {
        let appended = self.append(Target::Session(token), payload, config);
        self.record_processed(token, id);
        appended
    }

    /// Marks the session detached from `now` on: it expires after `ttl` unless attached again.
    /// Must not block.
    fn detach(&self, token: &SessionToken, now: Instant);

    /// Frees a session and everything it holds.
    fn remove(&self, token: &SessionToken) -> StoreFuture<()>;

    /// Frees every session detached longer than `ttl` and returns their tokens.
    fn expire(&self, now: Instant, config: &SessionConfig) -> StoreFuture<Vec<SessionToken>>;

    /// Sizes, or `None` if the store cannot count them cheaply (a shared store would have to
    /// ask the network).
    fn counts(&self) -> Option<StoreCounts> {
        None
    }

    /// Waits until every step this node asked for so far has reached the store: a network
    /// store sends detaches and processed marks in the background (they are called from
    /// `Drop`). Call it before a node exits, so that its sessions are detached (and expire) and
    /// other nodes see its processed marks. The default answers at once.
    fn flush(&self) -> StoreFuture<()> {
        StoreFuture::ready(Ok(()))
    }

    /// Whether the store answers a processed mark later (a network store), telling the
    /// registry with [`RemoteEvent::Recorded`] once it is kept: acks then cover only recorded
    /// marks, so that a client never drops a message the store does not know was processed.
    /// `false` (the default): marks are kept when [`record_processed`](Self::record_processed)
    /// returns.
    fn confirms_marks(&self) -> bool {
        false
    }

    /// Hands the store the registry's listener for what other nodes do to sessions attached on
    /// this one (a message logged there, a resume there), and for what became of this node's
    /// own steps ([`RemoteEvent::Recorded`], [`RemoteEvent::Failed`]). A store no other node
    /// writes to never calls it: the default does nothing.
    fn listen(&self, listener: RemoteListener) {
        let _ = listener;
    }
}

/// A store shared by several registries.
impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    fn create(
        &self,
        token: SessionToken,
        client: Option<&str>,
        now: Instant,
        config: &SessionConfig,
    ) -> StoreFuture<Created> {
        (**self).create(token, client, now, config)
    }

    fn attach(
        &self,
        token: &SessionToken,
        client: Option<&str>,
        after: u64,
        now: Instant,
        config: &SessionConfig,
    ) -> StoreFuture<Attached> {
        (**self).attach(token, client, after, now, config)
    }

    fn append(
        &self,
        to: Target<'_>,
        payload: MessageData,
        config: &SessionConfig,
    ) -> StoreFuture<Option<Appended>> {
        (**self).append(to, payload, config)
    }

    fn read_after(&self, token: &SessionToken, after: u64, max: usize) -> StoreFuture<Vec<Logged>> {
        (**self).read_after(token, after, max)
    }

    fn trim(&self, token: &SessionToken, seq: u64) -> StoreFuture<()> {
        (**self).trim(token, seq)
    }

    fn record_processed(&self, token: &SessionToken, id: u64) {
        (**self).record_processed(token, id)
    }

    fn append_processed(
        &self,
        token: &SessionToken,
        payload: MessageData,
        id: u64,
        config: &SessionConfig,
    ) -> StoreFuture<Option<Appended>> {
        (**self).append_processed(token, payload, id, config)
    }

    fn detach(&self, token: &SessionToken, now: Instant) {
        (**self).detach(token, now)
    }

    fn remove(&self, token: &SessionToken) -> StoreFuture<()> {
        (**self).remove(token)
    }

    fn expire(&self, now: Instant, config: &SessionConfig) -> StoreFuture<Vec<SessionToken>> {
        (**self).expire(now, config)
    }

    fn counts(&self) -> Option<StoreCounts> {
        (**self).counts()
    }

    fn flush(&self) -> StoreFuture<()> {
        (**self).flush()
    }

    fn confirms_marks(&self) -> bool {
        (**self).confirms_marks()
    }

    fn listen(&self, listener: RemoteListener) {
        (**self).listen(listener)
    }
}

/// The boxed future of a store that waits.
pub type BoxStoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, SessionStoreError>> + Send>>;

/// The answer of a [`SessionStore`] method: ready at once, or a future.
pub struct StoreFuture<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Ready(Option<Result<T, SessionStoreError>>),
    Boxed(BoxStoreFuture<T>),
}

impl<T> StoreFuture<T> {
    /// An answer known at once.
    pub fn ready(result: Result<T, SessionStoreError>) -> Self {
        Self {
            inner: Inner::Ready(Some(result)),
        }
    }

    /// An answer that needs waiting.
    pub fn boxed<F>(future: F) -> Self
    where
        F: Future<Output = Result<T, SessionStoreError>> + Send + 'static,
    {
        Self {
            inner: Inner::Boxed(Box::pin(future)),
        }
    }
}

impl<T> Unpin for StoreFuture<T> {}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Ready(_) => f.write_str("StoreFuture::Ready"),
            Inner::Boxed(_) => f.write_str("StoreFuture::Boxed"),
        }
    }
}

impl<T> Future for StoreFuture<T> {
    type Output = Result<T, SessionStoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Inner::Ready(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err(SessionStoreError::new("polled after completion"))),
            ),
            Inner::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}
