//! The outbound direction of a connection: a bounded queue drained by the connection's task.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::extract::ws::Message;
use tokio::sync::{Notify, watch};
use tower_service::Service;
use wsguard_config::OverflowPolicy;

use crate::BoxError;
use crate::close::Ending;

/// The sending half of one connection: cheap to clone, safe to use from any task.
///
/// Messages go into a bounded queue of `send_queue_capacity` that the connection's task drains,
/// writing everything queued before it flushes once. When the client reads too slowly and the
/// queue is full, the configured [`OverflowPolicy`] applies: drop the new message, drop the
/// oldest queued one, or close the connection with `1008 Policy Violation`. Memory per connection
/// stays bounded either way.
///
/// `Outbound` is a `tower::Service<Message>` too, so layers can wrap the sending side.
#[derive(Clone)]
pub struct Outbound {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    capacity: usize,
    policy: OverflowPolicy,
    ending: watch::Sender<Option<Ending>>,
}

#[derive(Default)]
struct State {
    items: VecDeque<Message>,
    closed: bool,
    sent: u64,
    dropped: u64,
    high_water: usize,
}

/// What happened to a message given to [`Outbound::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queued {
    /// It waits in the queue to be written.
    Queued,
    /// The queue was full and the policy is `drop_newest`: this message was dropped.
    DroppedNewest,
    /// The queue was full and the policy is `drop_oldest`: the oldest queued message was dropped
    /// to make room for this one.
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

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Outbound")
            .field("queued", &state.items.len())
            .field("capacity", &self.shared.capacity)
            .field("policy", &self.shared.policy)
            .field("closed", &state.closed)
            .finish()
    }
}

impl Outbound {
    pub(crate) fn new(capacity: usize, policy: OverflowPolicy) -> Self {
        let (ending, _) = watch::channel(None);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                capacity: capacity.max(1),
                policy,
                ending,
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
    pub fn send(&self, message: impl Into<Message>) -> Result<Queued, ConnectionClosed> {
        let message = message.into();
        let mut state = self.state();
        if state.closed {
            return Err(ConnectionClosed(()));
        }
        let outcome = if state.items.len() < self.shared.capacity {
            state.items.push_back(message);
            Queued::Queued
        } else {
            match self.shared.policy {
                OverflowPolicy::DropNewest => {
                    state.dropped += 1;
                    Queued::DroppedNewest
                }
                OverflowPolicy::DropOldest => {
                    state.items.pop_front();
                    state.items.push_back(message);
                    state.dropped += 1;
                    Queued::DroppedOldest
                }
                OverflowPolicy::Close => {
                    state.closed = true;
                    state.items.clear();
                    state.dropped += 1;
                    drop(state);
                    self.end(Ending::close(
                        crate::close::POLICY,
                        "send queue overflow (slow reader)",
                    ));
                    return Err(ConnectionClosed(()));
                }
            }
        };
        state.high_water = state.high_water.max(state.items.len());
        drop(state);
        self.shared.wake.notify_one();
        Ok(outcome)
    }

    /// Asks the connection to close with `code` and `reason` after the messages already queued.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.end(Ending::close(code, reason.into()));
    }

    /// Messages waiting in the queue now.
    pub fn len(&self) -> usize {
        self.state().items.len()
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

    /// Drops whatever is still queued (the connection has ended).
    pub(crate) fn discard(&self) {
        let mut state = self.state();
        state.closed = true;
        state.items = VecDeque::new();
    }

    pub(crate) fn pop(&self) -> Option<Message> {
        let mut state = self.state();
        let message = state.items.pop_front();
        if message.is_some() {
            state.sent += 1;
        }
        message
    }

    pub(crate) async fn queued(&self) {
        self.shared.wake.notified().await;
    }
}

impl Service<Message> for Outbound {
    type Response = Queued;
    type Error = BoxError;
    type Future = Ready<Result<Queued, BoxError>>;

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
    use crate::close::POLICY;

    fn texts(out: &Outbound) -> Vec<String> {
        std::iter::from_fn(|| out.pop())
            .map(|m| m.into_text().unwrap().to_string())
            .collect()
    }

    #[test]
    fn drop_newest_keeps_the_first_messages() {
        let out = Outbound::new(2, OverflowPolicy::DropNewest);
        assert_eq!(out.send("a").unwrap(), Queued::Queued);
        assert_eq!(out.send("b").unwrap(), Queued::Queued);
        assert_eq!(out.send("c").unwrap(), Queued::DroppedNewest);
        assert_eq!(out.len(), 2);
        assert_eq!(out.dropped(), 1);
        assert_eq!(texts(&out), ["a", "b"]);
    }

    #[test]
    fn drop_oldest_keeps_the_latest_messages() {
        let out = Outbound::new(2, OverflowPolicy::DropOldest);
        for m in ["a", "b", "c", "d"] {
            out.send(m).unwrap();
        }
        assert_eq!(out.high_water(), 2);
        assert_eq!(out.dropped(), 2);
        assert_eq!(texts(&out), ["c", "d"]);
    }

    #[test]
    fn overflow_with_close_policy_ends_the_connection_with_1008() {
        let out = Outbound::new(1, OverflowPolicy::Close);
        out.send("a").unwrap();
        assert!(out.send("b").is_err());
        assert!(out.is_closed());
        assert!(out.is_empty());
        assert!(out.send("c").is_err());
        let ending = out.ending().borrow().clone().unwrap();
        assert_eq!(ending.code(), Some(POLICY));
    }

    #[test]
    fn first_ending_wins() {
        let out = Outbound::new(1, OverflowPolicy::Close);
        out.close(4000, "first");
        out.close(4001, "second");
        assert_eq!(out.ending().borrow().clone().unwrap().code(), Some(4000));
    }

    #[tokio::test]
    async fn outbound_is_a_tower_service() {
        use tower::ServiceExt;
        let out = Outbound::new(4, OverflowPolicy::DropNewest);
        let queued = out.clone().oneshot(Message::text("hi")).await.unwrap();
        assert_eq!(queued, Queued::Queued);
        assert_eq!(out.len(), 1);
    }
}
