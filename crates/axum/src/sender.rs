//! The sending half of a connection: a bounded queue drained by the connection's task.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use axum::extract::ws::Message;
use tokio::sync::{Notify, watch};
use tower_service::Service;
use wsguard_config::OverflowPolicy;
use wsguard_session::{SessionSender, SessionToken};

use wsguard_metrics::ConnectionSlot;

use crate::BoxError;
use crate::close::Ending;
use crate::inbound::ConnectionId;
use crate::route::ConnectionStats;
use crate::to_session;
use crate::warn_limit::{WarnLimit, limited_warn};

/// The sending half of one connection: cheap to clone, safe to use from any task.
///
/// Messages go into a queue bounded by `send_queue_capacity` messages and `send_queue_bytes`
/// payload bytes, which the connection's task drains, writing everything queued before it
/// flushes once. When the client reads too slowly and the queue is full, the configured
/// [`OverflowPolicy`] applies: drop the new message, drop the oldest queued ones, or close the
/// connection with `1008 Policy Violation`. A message larger than `send_queue_bytes` never fits:
/// it is dropped, or closes the connection under `close`. Memory per connection stays bounded
/// either way. Dropped messages are counted ([`dropped`](Self::dropped), the route's
/// [`ConnectionStats::send_dropped`](crate::ConnectionStats::send_dropped), and a `MetricsLayer`'s
/// registry per route and per client) and logged (rate-limited).
///
/// Under a `wsguard.v1` session the queue is the session's log instead: text and binary
/// messages are logged (numbered, held until the client acknowledges them, replayed on resume)
/// and never dropped by the overflow policy; the log's bounds apply. Sends keep working while
/// the client is away, until the session expires: the messages wait in the log for the resume.
///
/// `Sender` is a `tower::Service<Message>` too, so layers can wrap the sending side.
#[derive(Clone)]
pub struct Sender {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    capacity: usize,
    max_bytes: usize,
    policy: OverflowPolicy,
    ending: watch::Sender<Option<Ending>>,
    /// Where dropped messages are counted besides this queue.
    drops: Option<DropReport>,
    /// The session log data messages go to, once the connection has a session.
    session: OnceLock<(SessionToken, SessionSender)>,
}

/// The counters a connection's dropped messages go to.
pub(crate) struct DropReport {
    pub(crate) stats: ConnectionStats,
    pub(crate) slot: Arc<ConnectionSlot>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) conn: ConnectionId,
    pub(crate) client: Arc<str>,
}

#[derive(Default)]
struct State {
    items: VecDeque<Message>,
    /// Payload bytes of `items`.
    bytes: usize,
    closed: bool,
    sent: u64,
    dropped: u64,
    high_water: usize,
}

impl State {
    /// Queues `message` of `size` payload bytes.
    fn push(&mut self, message: Message, size: usize) {
        self.bytes += size;
        self.items.push_back(message);
        self.high_water = self.high_water.max(self.items.len());
    }
}

/// What happened to a message given to [`Sender::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendStatus {
    /// It waits in the queue to be written.
    Queued,
    /// The queue was full and the policy is `drop_newest`: this message was dropped.
    DroppedNewest,
    /// The queue was full and the policy is `drop_oldest`: the oldest queued messages were
    /// dropped to make room for this one.
    DroppedOldest,
}

/// The connection is closing or closed; the message was not queued.
#[derive(Debug)]
pub struct ConnectionClosed(pub(crate) ());

impl fmt::Display for ConnectionClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("websocket connection closed")
    }
}

impl std::error::Error for ConnectionClosed {}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Sender")
            .field("queued", &state.items.len())
            .field("bytes", &state.bytes)
            .field("capacity", &self.shared.capacity)
            .field("max_bytes", &self.shared.max_bytes)
            .field("policy", &self.shared.policy)
            .field("closed", &state.closed)
            .finish()
    }
}

impl Sender {
    #[cfg(test)]
    pub(crate) fn new(capacity: usize, policy: OverflowPolicy) -> Self {
        Self::with_limits(capacity, usize::MAX, policy, None)
    }

    pub(crate) fn with_limits(
        capacity: usize,
        max_bytes: usize,
        policy: OverflowPolicy,
        drops: Option<DropReport>,
    ) -> Self {
        let (ending, _) = watch::channel(None);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                capacity: capacity.max(1),
                max_bytes: max_bytes.max(1),
                policy,
                ending,
                drops,
                session: OnceLock::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data; a panic while holding it leaves that data consistent.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `message` for the client, applying the overflow policy when the queue is full.
    ///
    /// Never waits. Fails only when the connection is closing or closed (including when this very
    /// message overflowed a queue whose policy is `close`).
    ///
    /// Under a session, a text or binary message is logged in the session instead; it fails
    /// only once the session is gone (expired or evicted).
    pub fn send(&self, message: impl Into<Message>) -> Result<SendStatus, ConnectionClosed> {
        let mut message = message.into();
        if let Some((_, session)) = self.shared.session.get() {
            match to_session::data(message) {
                Ok(payload) => {
                    return match session.send_now(payload) {
                        Ok(_seq) => Ok(SendStatus::Queued),
                        Err(_gone) => Err(ConnectionClosed(())),
                    };
                }
                // Ping, pong and close go to the connection.
                Err(control) => message = control,
            }
        }
        let size = payload_len(&message);
        let (capacity, max_bytes) = (self.shared.capacity, self.shared.max_bytes);
        let fits = |state: &State| state.items.len() < capacity && state.bytes + size <= max_bytes;
        let mut state = self.state();
        if state.closed {
            return Err(ConnectionClosed(()));
        }
        let (outcome, dropped) = if fits(&state) {
            (SendStatus::Queued, 0)
        } else {
            match self.shared.policy {
                OverflowPolicy::DropOldest if size <= max_bytes => {
                    let mut dropped = 0;
                    while !fits(&state) {
                        let oldest = state.items.pop_front().expect("a full queue is not empty");
                        state.bytes -= payload_len(&oldest);
                        dropped += 1;
                    }
                    (SendStatus::DroppedOldest, dropped)
                }
                // A message larger than the whole queue never fits: drop it.
                OverflowPolicy::DropNewest | OverflowPolicy::DropOldest => {
                    state.dropped += 1;
                    drop(state);
                    self.report_dropped(1);
                    return Ok(SendStatus::DroppedNewest);
                }
                OverflowPolicy::Close => {
                    state.closed = true;
                    state.items.clear();
                    state.bytes = 0;
                    state.dropped += 1;
                    drop(state);
                    self.end(Ending::close(
                        crate::close::POLICY_VIOLATION,
                        "send queue overflow (slow reader)",
                    ));
                    return Err(ConnectionClosed(()));
                }
            }
        };
        state.push(message, size);
        state.dropped += dropped;
        drop(state);
        if dropped > 0 {
            self.report_dropped(dropped);
        }
        self.shared.wake.notify_one();
        Ok(outcome)
    }

    fn report_dropped(&self, count: u64) {
        static WARN: WarnLimit = WarnLimit::new();
        let Some(report) = &self.shared.drops else {
            return;
        };
        report.stats.count_send_dropped(count);
        report
            .slot
            .record_send_dropped(report.route.as_deref().unwrap_or(""), count);
        limited_warn!(
            WARN,
            conn = %report.conn,
            client = %report.client,
            dropped = count,
            policy = ?self.shared.policy,
            "send queue full (slow reader): messages dropped"
        );
    }

    /// The `wsguard.v1` session this connection's messages are logged in, if it has one.
    pub fn session(&self) -> Option<SessionToken> {
        self.shared.session.get().map(|(token, _)| *token)
    }

    /// From now on data messages are logged in this session.
    pub(crate) fn log_to(&self, token: SessionToken, session: SessionSender) {
        let _ = self.shared.session.set((token, session));
    }

    /// Queues a frame the connection itself produced (a protocol frame, or one read from the
    /// session log): no overflow policy, the connection bounds what it queues.
    pub(crate) fn push_frame(&self, message: Message) {
        let size = payload_len(&message);
        self.state().push(message, size);
    }

    /// [`push_frame`](Self::push_frame) if fewer than `max` messages are queued; whether it did.
    pub(crate) fn push_frame_below(&self, message: Message, max: usize) -> bool {
        let size = payload_len(&message);
        let mut state = self.state();
        let room = state.items.len() < max;
        if room {
            state.push(message, size);
        }
        room
    }

    /// Asks the connection to close with `code` and `reason` after the messages already queued.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.end(Ending::close(code, reason.into()));
    }

    /// Drops the connection at once: the TCP connection is closed without a WebSocket close
    /// frame and the messages still queued are discarded, as when a network path breaks.
    ///
    /// For tests and demonstrations of what clients do when a connection dies (a `wsguard.v1`
    /// client resumes its session and gets every message it missed). Calls in flight under a
    /// session still finish, their replies kept in the session log. Nothing happens if the
    /// connection is already ending.
    pub fn abort(&self) {
        self.end(Ending::Abort);
    }

    /// Messages waiting in the queue now.
    pub fn len(&self) -> usize {
        self.state().items.len()
    }

    /// Messages and payload bytes waiting in the queue now.
    pub(crate) fn backlog(&self) -> (usize, usize) {
        let state = self.state();
        (state.items.len(), state.bytes)
    }

    /// Payload bytes of the messages waiting in the queue now.
    pub fn queued_bytes(&self) -> usize {
        self.state().bytes
    }

    /// Most payload bytes the queue holds.
    pub fn max_bytes(&self) -> usize {
        self.shared.max_bytes
    }

    /// Whether no message waits in the queue.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most messages the queue holds.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// What happens when the queue is full.
    pub fn overflow_policy(&self) -> OverflowPolicy {
        self.shared.policy
    }

    /// Most messages ever waiting in the queue at once.
    pub fn high_water(&self) -> usize {
        self.state().high_water
    }

    /// Messages dropped by the overflow policy so far.
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }

    /// Messages handed to the socket so far.
    pub fn written(&self) -> u64 {
        self.state().sent
    }

    /// Whether the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.state().closed || self.shared.ending.borrow().is_some()
    }

    /// Records why the connection ends; the first reason wins.
    pub(crate) fn end(&self, ending: Ending) {
        self.shared.ending.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(ending);
            true
        });
    }

    pub(crate) fn ending(&self) -> watch::Receiver<Option<Ending>> {
        self.shared.ending.subscribe()
    }

    /// Stops accepting messages (the connection is ending).
    pub(crate) fn shut(&self) {
        self.state().closed = true;
    }

    /// Drops whatever is still queued (the connection has ended); returns how many.
    pub(crate) fn discard(&self) -> usize {
        let mut state = self.state();
        state.closed = true;
        let dropped = state.items.len();
        state.items = VecDeque::new();
        state.bytes = 0;
        dropped
    }

    pub(crate) fn pop(&self) -> Option<Message> {
        let mut state = self.state();
        let message = state.items.pop_front();
        if let Some(message) = &message {
            state.bytes -= payload_len(message);
            state.sent += 1;
        }
        message
    }

    pub(crate) async fn queued(&self) {
        self.shared.wake.notified().await;
    }
}

/// Bytes a message takes in the queue: its payload.
fn payload_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) | Message::Ping(bytes) | Message::Pong(bytes) => bytes.len(),
        Message::Close(frame) => frame.as_ref().map_or(0, |f| 2 + f.reason.len()),
    }
}

impl Service<Message> for Sender {
    type Response = SendStatus;
    type Error = BoxError;
    type Future = Ready<Result<SendStatus, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A full queue is handled by the overflow policy, never by waiting.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        ready(self.send(message).map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::POLICY_VIOLATION;

    fn texts(out: &Sender) -> Vec<String> {
        std::iter::from_fn(|| out.pop())
            .map(|m| m.into_text().unwrap().to_string())
            .collect()
    }

    #[test]
    fn drop_newest_keeps_the_first_messages() {
        let out = Sender::new(2, OverflowPolicy::DropNewest);
        assert_eq!(out.send("a").unwrap(), SendStatus::Queued);
        assert_eq!(out.send("b").unwrap(), SendStatus::Queued);
        assert_eq!(out.send("c").unwrap(), SendStatus::DroppedNewest);
        assert_eq!(out.len(), 2);
        assert_eq!(out.dropped(), 1);
        assert_eq!(texts(&out), ["a", "b"]);
    }

    #[test]
    fn drop_oldest_keeps_the_latest_messages() {
        let out = Sender::new(2, OverflowPolicy::DropOldest);
        for m in ["a", "b", "c", "d"] {
            out.send(m).unwrap();
        }
        assert_eq!(out.high_water(), 2);
        assert_eq!(out.dropped(), 2);
        assert_eq!(texts(&out), ["c", "d"]);
    }

    #[test]
    fn overflow_with_close_policy_ends_the_connection_with_1008() {
        let out = Sender::new(1, OverflowPolicy::Close);
        out.send("a").unwrap();
        assert!(out.send("b").is_err());
        assert!(out.is_closed());
        assert!(out.is_empty());
        assert!(out.send("c").is_err());
        let ending = out.ending().borrow().clone().unwrap();
        assert_eq!(ending.code(), Some(POLICY_VIOLATION));
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let out = Sender::with_limits(100, 10, OverflowPolicy::DropNewest, None);
        assert_eq!(out.send("aaaa").unwrap(), SendStatus::Queued);
        assert_eq!(out.send("bbbb").unwrap(), SendStatus::Queued);
        assert_eq!(out.queued_bytes(), 8);
        assert_eq!(
            out.send("ccc").unwrap(),
            SendStatus::DroppedNewest,
            "11 bytes > 10"
        );
        assert_eq!(
            out.send("dd").unwrap(),
            SendStatus::Queued,
            "exactly 10 fits"
        );
        assert_eq!(out.dropped(), 1);
        assert_eq!(texts(&out), ["aaaa", "bbbb", "dd"]);
        assert_eq!(out.queued_bytes(), 0, "popping gives the bytes back");
    }

    #[test]
    fn drop_oldest_drops_as_many_as_the_new_message_needs() {
        let out = Sender::with_limits(100, 10, OverflowPolicy::DropOldest, None);
        for m in ["aaa", "bbb", "ccc"] {
            out.send(m).unwrap();
        }
        assert_eq!(out.send("dddddddd").unwrap(), SendStatus::DroppedOldest);
        assert_eq!(out.dropped(), 3, "9 queued bytes + 8 > 10: all three go");
        assert_eq!(out.queued_bytes(), 8);
        assert_eq!(texts(&out), ["dddddddd"]);
    }

    #[test]
    fn a_message_larger_than_the_queue_is_dropped_or_closes() {
        for policy in [OverflowPolicy::DropNewest, OverflowPolicy::DropOldest] {
            let out = Sender::with_limits(100, 10, policy, None);
            out.send("a").unwrap();
            assert_eq!(out.send("x".repeat(11)).unwrap(), SendStatus::DroppedNewest);
            assert_eq!(out.dropped(), 1);
            assert_eq!(texts(&out), ["a"], "{policy:?} keeps what was queued");
        }
        let out = Sender::with_limits(100, 10, OverflowPolicy::Close, None);
        assert!(out.send("x".repeat(11)).is_err());
        assert_eq!(
            out.ending().borrow().clone().unwrap().code(),
            Some(POLICY_VIOLATION)
        );
    }

    #[test]
    fn drops_are_reported_to_the_route_and_the_metrics_slot() {
        use wsguard_metrics::MetricsRegistry;
        let registry = MetricsRegistry::new(wsguard_config::MetricsConfig::testing());
        let slot = Arc::new(ConnectionSlot::new());
        slot.register(&registry, Some("alice"));
        let stats = ConnectionStats::default();
        let out = Sender::with_limits(
            1,
            usize::MAX,
            OverflowPolicy::DropNewest,
            Some(DropReport {
                stats: stats.clone(),
                slot: slot.clone(),
                route: Some(Arc::from("/ws")),
                conn: ConnectionId::next(),
                client: Arc::from("alice"),
            }),
        );
        out.send("kept").unwrap();
        out.send("dropped").unwrap();
        out.send("dropped too").unwrap();
        assert_eq!(stats.send_dropped(), 2);
        assert_eq!(registry.client("alice").unwrap().send_dropped, 2);
        let snapshot = registry.snapshot();
        let route = snapshot
            .routes
            .iter()
            .find(|r| r.route == "/ws" && r.direction == "out")
            .expect("the route's outbound figures");
        assert_eq!(route.send_dropped, 2);
    }

    #[test]
    fn first_ending_wins() {
        let out = Sender::new(1, OverflowPolicy::Close);
        out.close(4000, "first");
        out.close(4001, "second");
        assert_eq!(out.ending().borrow().clone().unwrap().code(), Some(4000));
    }

    #[tokio::test]
    async fn outbound_is_a_tower_service() {
        use tower::ServiceExt;
        let out = Sender::new(4, OverflowPolicy::DropNewest);
        let queued = out.clone().oneshot(Message::text("hi")).await.unwrap();
        assert_eq!(queued, SendStatus::Queued);
        assert_eq!(out.len(), 1);
    }
}
