//! The wsguard demo: a chat server whose every WebSocket message goes through the circuit
//! breaker, the dedup window and the metrics layer, with a browser page showing them at work.
//!
//! ```text
//! cargo run --release --example chat      # then open http://127.0.0.1:3000
//! ```
//!
//! Address from `--addr` or `WSGUARD_ADDR` (default `127.0.0.1:3000`); configuration from
//! `--config FILE` (watched: valid edits apply live) or the `development` preset. No external
//! service: the dedup window and the sessions are in memory.
//!
//! `--redis URL` makes the node one of several sharing that Redis (it refuses to start when the
//! Redis does not answer): sessions and the dedup window go there (the first node draws the
//! fingerprint key and stores it, the others read it; a key in the config wins), and the rooms
//! span the nodes: every room event goes into one Redis stream, which each node reads in order
//! and delivers to its own members (see [`Chat`]).
//!
//! ```text
//! cargo run --release --example chat -- --redis redis://127.0.0.1:6379 --addr 127.0.0.1:3001
//! cargo run --release --example chat -- --redis redis://127.0.0.1:6379 --addr 127.0.0.1:3002
//! ```
//!
//! - `/` the page: join a room, send messages, see them broadcast to the room. "Resend last"
//!   sends the last message again byte for byte; the dedup layer drops it and the panel's
//!   duplicates figure goes up. "Fail the next N" makes the handler fail, so the breaker opens
//!   (clients get `{"type":"error","error":"circuit_open",..}` frames), then recovers after the
//!   open wait when probes succeed. "Drop my connection" has the server cut the page's TCP
//!   connection without a close frame, as a network would: the page reconnects, resumes its
//!   `wsguard.v1` session and shows what was said while it was away, once each and in order;
//!   the panel's resumed and replayed figures go up. `?backoff=MS` on the page's address sets
//!   its first reconnection delay (250 ms by default), to have time to talk while it is away.
//!   "Flood" sends 200 messages at once: the per-client rate limit (10 a second after a burst
//!   of 50, `RateLimitLayer`) passes the burst and answers the rest with `rate_limited` error
//!   frames, which the page counts on one line; the panel's rate-limited figure goes up, and the
//!   other members' pages stay responsive.
//! - `/wsguard.js` the JavaScript client of `wsguard.v1` the page uses (an ES module, no build
//!   step; its API is at the top of the file and in `docs/protocol.md`), `/app.js` the page.
//! - `/ws` the chat socket, with sessions for clients that offer `wsguard.v1` (the page does)
//!   and plain WebSocket for the others. Frames: `{"type":"join","room":..,"name":..}`,
//!   `{"type":"say","id":..,"text":..}` and `{"type":"leave"}`; the server sends `joined`,
//!   `message` and `left` frames to the room through the sending side's stack
//!   (`SendToConnection` under an outbound metrics layer; with `--redis`, a member away is sent
//!   to through `SendToSession` under the same layer), so that the panel's "out" figures count
//!   them. A member with a session stays in its room while the session lives, so
//!   what is said while it is away waits in its session log; joining again under the same name
//!   (as the page does after every reconnect) is silent.
//! - `/stats` JSON figures for the panel (breaker, dedup, rate limit, metrics, per-client
//!   table, sessions),
//!   `/metrics` Prometheus text, `/health` 200, `POST /fail?n=N` the failure switch,
//!   `POST /drop?session=TOKEN` (or `?client=ID`) the connection cutter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::join_all;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::{Layer, ServiceBuilder, ServiceExt};
use wsguard::axum::{
    ConnInfo, OutgoingMessage, SendToConnection, SendToSession, SessionGone, SessionToken, Sessions,
};
use wsguard::metrics::{Direction, Metrics};
use wsguard::prelude::*;
use wsguard_config::{
    ClientIdSource, ConfigHandle, Preset, RateLimitAction, RateLimitScope, SessionBackend,
    StabilityConfig, StoreBackend,
};
use wsguard_examples::{ServerArgs, init_tracing, prometheus, serve, sessions_json};

#[path = "chat/redis_rooms.rs"]
mod redis_rooms;

use redis_rooms::{RedisRooms, StreamReader};

const INDEX: &str = include_str!("chat/index.html");
const APP_JS: &str = include_str!("chat/app.js");
const CLIENT_JS: &str = include_str!("chat/wsguard.js");
const STYLE: &str = include_str!("chat/style.css");

/// What the chat sends to a member: through the outbound metrics layer, then the member's queue.
type Outbound = Metrics<SendToConnection, MessageClassifier>;

/// What the chat sends to a member away with Redis: through the same metrics, into its session.
type OutboundAway = Metrics<LogInSession, MessageClassifier>;

/// Logs each message in the session of its connection, closed or not, and answers once the
/// store has it: how a node sends to members away when sessions live in Redis.
#[derive(Clone)]
struct LogInSession(Arc<OnceLock<Sessions>>);

impl tower::Service<OutgoingMessage> for LogInSession {
    type Response = u64;
    type Error = wsguard::axum::BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<u64, wsguard::axum::BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: OutgoingMessage) -> Self::Future {
        let to = self.0.get().zip(request.conn.sender().session());
        let to =
            to.map(|(sessions, token)| SendToSession::from(sessions.sender_for_session(&token)));
        Box::pin(async move {
            match to {
                Some(to) => to.oneshot(request.message).await,
                None => Err("the member has no session".into()),
            }
        })
    }
}

/// Members a node keeps track of, across all nodes; past it joins are refused.
const MAX_MEMBERS: usize = 100_000;

/// Rooms and their members.
///
/// Every change and every message is an [`Event`], applied in one order by [`Chat::apply`]:
/// directly on a single node, or, with `--redis`, as each node reads it back from the Redis
/// stream all nodes share (its own events included), so the local and the remote paths are one.
/// Each node knows every member but delivers only to the members connected to it.
struct Chat {
    /// This process among the nodes (random).
    node: NodeId,
    rooms: Mutex<Rooms>,
    /// The connections of joins this node published and has not applied yet, by ticket.
    joining: Mutex<HashMap<u64, Arc<ConnInfo>>>,
    next_ticket: AtomicU64,
    /// The Redis stream the nodes share; `None`: this process only.
    redis: Option<Arc<RedisRooms>>,
    /// The route's sessions (set once the route is made).
    sessions: Arc<OnceLock<Sessions>>,
    outbound: Outbound,
    outbound_away: OutboundAway,
    fail_next: AtomicU32,
    handled: AtomicU64,
}

/// A node's random id.
type NodeId = u64;

fn new_node_id() -> NodeId {
    let token = SessionToken::generate();
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&token.as_bytes()[..8]);
    u64::from_le_bytes(bytes)
}

/// Who a member is: its `wsguard.v1` session, which outlives its connections and may move from
/// node to node, or else its connection on the node that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MemberKey {
    Session(SessionToken),
    Connection { node: NodeId, conn: u64 },
}

impl MemberKey {
    fn of(conn: &ConnInfo, node: NodeId) -> Self {
        match conn.sender().session() {
            Some(token) => Self::Session(token),
            None => Self::Connection {
                node,
                conn: conn.id().get(),
            },
        }
    }
}

impl std::fmt::Display for MemberKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Session(token) => write!(f, "s:{token}"),
            Self::Connection { node, conn } => write!(f, "c:{node:016x}:{conn}"),
        }
    }
}

impl std::str::FromStr for MemberKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("not a member: {s:?}");
        if let Some(token) = s.strip_prefix("s:") {
            return token.parse().map(Self::Session).map_err(|_| bad());
        }
        let (node, conn) = s
            .strip_prefix("c:")
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(bad)?;
        Ok(Self::Connection {
            node: NodeId::from_str_radix(node, 16).map_err(|_| bad())?,
            conn: conn.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for MemberKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemberKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A change of the rooms, or something said in one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    /// `member` is in `room` as `name`, delivered to by `node` (which holds its connection under
    /// `ticket`); `announce`: the room hears of it (not when the member was there already).
    Join {
        member: MemberKey,
        room: String,
        name: String,
        node: NodeId,
        ticket: u64,
        announce: bool,
    },
    Say {
        room: String,
        from: String,
        text: String,
        id: Option<String>,
    },
    Leave {
        member: MemberKey,
        room: String,
        name: String,
    },
    /// `member` cannot be sent to any more (connection closed, session expired): forgotten
    /// without a word.
    Gone { member: MemberKey },
}

/// Each room's members, and each member's room, so that a message finds its room without a scan.
#[derive(Default)]
struct Rooms {
    members: HashMap<String, HashMap<MemberKey, Member>>,
    room_of: HashMap<MemberKey, String>,
}

impl Rooms {
    fn len(&self) -> usize {
        self.room_of.len()
    }

    fn contains(&self, key: MemberKey) -> bool {
        self.room_of.contains_key(&key)
    }

    /// Whether `key` is in `room` as `name` already (a page joins again after every reconnect).
    fn is_in(&self, key: MemberKey, room: &str, name: &str) -> bool {
        self.room_of.get(&key).is_some_and(|r| r == room)
            && self
                .members
                .get(room)
                .and_then(|m| m.get(&key))
                .is_some_and(|m| m.name == name)
    }

    /// The room of `key` and its name there.
    fn place_of(&self, key: MemberKey) -> Option<(String, String)> {
        let room = self.room_of.get(&key)?;
        let member = self.members.get(room)?.get(&key)?;
        Some((room.clone(), member.name.clone()))
    }

    /// Puts `key` in `room`, out of the room it was in.
    fn place(&mut self, key: MemberKey, room: String, member: Member) {
        if let Some(old) = self.room_of.insert(key, room.clone()) {
            self.remove_from(&old, key);
        }
        self.members.entry(room).or_default().insert(key, member);
    }

    /// Takes `key` out of its room.
    fn remove(&mut self, key: MemberKey) {
        if let Some(room) = self.room_of.remove(&key) {
            self.remove_from(&room, key);
        }
    }

    /// The room of `key` and its name there; when this node delivers to it, it does so through
    /// `conn` from now on, its newest connection.
    fn speak(&mut self, key: MemberKey, conn: &Arc<ConnInfo>) -> Option<(String, String)> {
        let room = self.room_of.get(&key)?.clone();
        let member = self.members.get_mut(&room)?.get_mut(&key)?;
        if member.conn.is_some() {
            member.conn = Some(Arc::clone(conn));
        }
        let name = member.name.clone();
        Some((room, name))
    }

    /// The members of `room` this node delivers to, and the ones it took out because they
    /// cannot be sent to any more: a member with a session stays while the session lives (sends
    /// to it fail once it expired), any other while its connection is open (the handler hears of
    /// no disconnect, so closed ones are found here, the next time their room is used).
    fn local_members(&mut self, room: &str) -> (Vec<(MemberKey, Arc<ConnInfo>)>, Vec<MemberKey>) {
        let Some(members) = self.members.get_mut(room) else {
            return (Vec::new(), Vec::new());
        };
        let mut gone = Vec::new();
        let mut live = Vec::new();
        for (key, member) in members.iter() {
            let Some(conn) = &member.conn else { continue };
            if matches!(key, MemberKey::Session(_)) || !conn.sender().is_closed() {
                live.push((*key, Arc::clone(conn)));
            } else {
                gone.push(*key);
            }
        }
        for key in &gone {
            self.remove(*key);
        }
        (live, gone)
    }

    /// This node's connections to the members `which` picks.
    fn connections(&self, which: impl Fn(MemberKey, &ConnInfo) -> bool) -> Vec<Arc<ConnInfo>> {
        self.members
            .values()
            .flat_map(|members| members.iter())
            .filter_map(|(key, m)| m.conn.as_ref().filter(|conn| which(*key, conn)))
            .cloned()
            .collect()
    }

    fn remove_from(&mut self, room: &str, key: MemberKey) {
        if let Some(members) = self.members.get_mut(room) {
            members.remove(&key);
            if members.is_empty() {
                self.members.remove(room);
            }
        }
    }
}

struct Member {
    name: String,
    /// This node's newest connection to the member; `None` when another node delivers to it.
    /// Under a session, sends through an older connection still reach the session's log.
    conn: Option<Arc<ConnInfo>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame {
    Join {
        room: String,
        name: String,
    },
    Say {
        text: String,
        #[serde(default)]
        id: Option<String>,
    },
    Leave,
}

impl Chat {
    fn new(registry: &MetricsRegistry, redis: Option<Arc<RedisRooms>>) -> Arc<Self> {
        let metrics = MetricsLayer::new(registry.clone())
            .route("/ws")
            .direction(Direction::Outbound)
            .classifier(MessageClassifier);
        let sessions = Arc::new(OnceLock::new());
        let outbound = metrics.layer(SendToConnection);
        let outbound_away = metrics.layer(LogInSession(Arc::clone(&sessions)));
        let chat = Arc::new(Self {
            node: new_node_id(),
            rooms: Mutex::default(),
            joining: Mutex::default(),
            next_ticket: AtomicU64::new(0),
            redis,
            sessions,
            outbound,
            outbound_away,
            fail_next: AtomicU32::new(0),
            handled: AtomicU64::new(0),
        });
        if let Some(redis) = &chat.redis {
            tokio::spawn(follow(Arc::downgrade(&chat), redis.reader()));
        }
        chat
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn joining(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnInfo>>> {
        self.joining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one inbound message (after the breaker, dedup and metrics layers).
    async fn handle(self: Arc<Self>, inbound: Inbound) -> Result<Option<Message>, BoxError> {
        let Some(text) = inbound.text() else {
            return Ok(Some(error_frame(
                "binary frames are not part of the chat protocol",
            )));
        };
        let frame: Frame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            // Bad input is the client's problem, not a failure of this service: answered, and
            // recorded by the breaker as a success.
            Err(e) => return Ok(Some(error_frame(&format!("bad frame: {e}")))),
        };
        let key = MemberKey::of(&inbound.conn, self.node);
        let event = match frame {
            Frame::Join { room, name } => {
                let name = clip(&name, 32);
                let room = clip(&room, 32);
                let (announce, full) = {
                    let rooms = self.rooms();
                    let full = !rooms.contains(key) && rooms.len() >= MAX_MEMBERS;
                    (!rooms.is_in(key, &room, &name), full)
                };
                if full {
                    return Ok(Some(error_frame("the chat is full")));
                }
                let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
                self.joining().insert(ticket, Arc::clone(&inbound.conn));
                let event = Event::Join {
                    member: key,
                    room,
                    name,
                    node: self.node,
                    ticket,
                    announce,
                };
                let published = self.publish(event).await;
                self.joining().remove(&ticket);
                return Ok(published.err().map(|e| error_frame(&e)));
            }
            Frame::Say { text, id } => {
                if self
                    .fail_next
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err("injected failure (fail next N)".into());
                }
                let spoken = self.rooms().speak(key, &inbound.conn);
                let Some((room, from)) = spoken else {
                    return Ok(Some(error_frame("join a room first")));
                };
                self.handled.fetch_add(1, Ordering::Relaxed);
                let text = clip(&text, 500);
                Event::Say {
                    room,
                    from,
                    text,
                    id,
                }
            }
            Frame::Leave => {
                let Some((room, name)) = self.rooms().place_of(key) else {
                    return Ok(None);
                };
                Event::Leave {
                    member: key,
                    room,
                    name,
                }
            }
        };
        Ok(self.publish(event).await.err().map(|e| error_frame(&e)))
    }

    /// Applies `event` on every node: here directly, or through the Redis stream (then it
    /// returns once this node has applied it).
    async fn publish(&self, event: Event) -> Result<(), String> {
        let Some(redis) = &self.redis else {
            self.apply(event).await;
            return Ok(());
        };
        let json = serde_json::to_string(&event).map_err(|e| e.to_string())?;
        redis.publish(json).await.map_err(|e| {
            tracing::debug!(error = %e, "room event not published");
            format!("rooms unavailable: {e}")
        })
    }

    /// Applies one event: the rooms change, and this node's members of the room hear of it.
    ///
    /// Every node applies the same events in the same order, so a member that joins again
    /// through another node (a page that reconnected elsewhere) moves between two events: the
    /// old node delivers everything before its join, the new node everything after, and the
    /// member gets each message once.
    async fn apply(&self, event: Event) {
        let (frame, targets, mut gone) = {
            let mut rooms = self.rooms();
            let (room, frame) = match event {
                Event::Join {
                    member,
                    room,
                    name,
                    node,
                    ticket,
                    announce,
                } => {
                    if !rooms.contains(member) && rooms.len() >= MAX_MEMBERS {
                        tracing::warn!(%member, "member not tracked: the chat is full");
                        return;
                    }
                    let conn = (node == self.node)
                        .then(|| self.joining().remove(&ticket))
                        .flatten();
                    let member_there = Member {
                        name: name.clone(),
                        conn,
                    };
                    rooms.place(member, room.clone(), member_there);
                    if !announce {
                        return;
                    }
                    let frame = json!({"type": "joined", "room": room, "name": name});
                    (room, frame)
                }
                Event::Say {
                    room,
                    from,
                    text,
                    id,
                } => {
                    let frame = json!({"type": "message", "room": room, "from": from, "text": text, "id": id});
                    (room, frame)
                }
                Event::Leave { member, room, name } => {
                    rooms.remove(member);
                    let frame = json!({"type": "left", "room": room, "name": name});
                    (room, frame)
                }
                Event::Gone { member } => {
                    rooms.remove(member);
                    return;
                }
            };
            let (targets, gone) = rooms.local_members(&room);
            (frame, targets, gone)
        };
        gone.extend(self.deliver(targets, frame).await);
        if !gone.is_empty() {
            self.forget(gone);
        }
    }

    /// Sends `frame` to each of `members` through the outbound stack, which counts it for the
    /// member's client and queues it on the member's connection (a bounded queue; a slow reader's
    /// overflow policy applies there, not here), or logs it in the member's session. Returns the
    /// members that cannot be sent to any more.
    ///
    /// With Redis, a connection only logs in its session without waiting and cannot tell that the
    /// session expired; so a member away (its connection here closed) is sent to through its
    /// session, waiting for the answer, and leaves when the session is gone.
    async fn deliver(
        &self,
        members: Vec<(MemberKey, Arc<ConnInfo>)>,
        frame: serde_json::Value,
    ) -> Vec<MemberKey> {
        let text = frame.to_string();
        let mut gone = Vec::new();
        let mut away = Vec::new();
        for (key, conn) in members {
            let message = OutgoingMessage::new(Message::text(text.clone()), conn);
            if matches!(key, MemberKey::Session(_))
                && self.redis.is_some()
                && message.conn.sender().is_closed()
            {
                away.push((key, message));
                continue;
            }
            if self.outbound.clone().oneshot(message).await.is_err() {
                gone.push(key);
            }
        }
        let logged = join_all(away.into_iter().map(|(key, message)| {
            let logged = self.outbound_away.clone().oneshot(message);
            async move { (key, logged.await) }
        }))
        .await;
        for (key, result) in logged {
            // A store failure is not the session's end.
            let ended = |e: &wsguard::axum::BoxError| {
                e.downcast_ref::<SessionGone>()
                    .is_some_and(|gone| gone.store_error().is_none())
            };
            if result.is_err_and(|e| ended(&e)) {
                gone.push(key);
            }
        }
        gone
    }

    /// Takes out members that cannot be sent to, here and on the other nodes.
    fn forget(&self, keys: Vec<MemberKey>) {
        let mut rooms = self.rooms();
        for key in &keys {
            rooms.remove(*key);
        }
        drop(rooms);
        if let Some(redis) = &self.redis {
            for member in keys {
                if let Ok(json) = serde_json::to_string(&Event::Gone { member }) {
                    redis.publish_later(json);
                }
            }
        }
    }
}

/// Applies the Redis stream's events on this node, in order, for as long as the chat lives.
async fn follow(chat: Weak<Chat>, mut reader: StreamReader) {
    loop {
        let events = reader.next().await;
        let Some(chat) = chat.upgrade() else { return };
        let Some(redis) = chat.redis.clone() else {
            return;
        };
        for (id, json) in events {
            match serde_json::from_str::<Event>(&json) {
                Ok(event) => chat.apply(event).await,
                Err(e) => tracing::warn!(%id, error = %e, "room event not understood: skipped"),
            }
            redis.applied(id);
        }
    }
}

fn clip(s: &str, max_chars: usize) -> String {
    s.trim().chars().take(max_chars).collect()
}

fn error_frame(reason: &str) -> Message {
    Message::text(json!({"type": "error", "error": reason}).to_string())
}

#[derive(Clone)]
struct App {
    chat: Arc<Chat>,
    breaker: wsguard::circuit_breaker::Handle,
    dedup: wsguard::dedup::DedupHandle,
    rate_limit: wsguard::rate_limit::RateLimitHandle,
    registry: MetricsRegistry,
    sessions: Sessions,
    prometheus: PrometheusHandle,
}

async fn stats(State(app): State<App>) -> impl IntoResponse {
    let breaker = app.breaker.snapshot();
    let dedup = app.dedup.stats();
    let metrics = app.registry.snapshot();
    let clients: Vec<_> = metrics
        .clients
        .top
        .iter()
        .map(|c| {
            json!({
                "client": c.client_id, "connections": c.connections,
                "messages_in": c.messages_in, "messages_out": c.messages_out,
                "duplicates": c.duplicates, "rejections": c.rejections, "errors": c.errors,
            })
        })
        .collect();
    Json(json!({
        "breaker": {
            "state": state_name(breaker.state),
            "failure_rate": breaker.failure_rate,
            "consecutive_failures": breaker.consecutive_failures,
            "rejected": breaker.rejected,
            "retry_after_ms": breaker.retry_after.map(|d| d.as_millis() as u64),
        },
        "duplicates": dedup.duplicates,
        "rate_limited": app.rate_limit.stats().limited(),
        "rejected": breaker.rejected,
        "handled": app.chat.handled.load(Ordering::Relaxed),
        "errors": metrics.calls.error,
        "connections": metrics.connections_active,
        "fail_next": app.chat.fail_next.load(Ordering::Relaxed),
        "node": format!("{:016x}", app.chat.node),
        "members": app.chat.rooms().len(),
        "rooms": if app.chat.redis.is_some() { "redis" } else { "this node" },
        "clients": clients,
        "sessions": sessions_json(&app.sessions.stats()),
        "metrics": metrics,
    }))
}

fn state_name(state: wsguard::circuit_breaker::State) -> &'static str {
    use wsguard::circuit_breaker::State as S;
    match state {
        S::Closed => "closed",
        S::Open => "open",
        S::HalfOpen => "half_open",
        S::Disabled => "disabled",
        S::ForcedOpen => "forced_open",
        S::MetricsOnly => "metrics_only",
    }
}

/// Prometheus text; the registry's call counts are published first so that they are current.
async fn metrics(State(app): State<App>) -> String {
    app.registry.publish();
    app.prometheus.render()
}

#[derive(Deserialize)]
struct FailQuery {
    n: Option<u32>,
}

async fn fail(State(app): State<App>, Query(q): Query<FailQuery>) -> impl IntoResponse {
    let n = q.n.unwrap_or(1).min(1000);
    app.chat.fail_next.store(n, Ordering::Release);
    Json(json!({"fail_next": n}))
}

#[derive(Deserialize)]
struct DropQuery {
    session: Option<String>,
    client: Option<String>,
}

/// Aborts the connections of the members named by session token or client id: the TCP
/// connection is dropped without a close frame, as when a network path breaks. A `wsguard.v1`
/// page reconnects and resumes; a plain one reconnects and joins again.
async fn drop_connection(State(app): State<App>, Query(q): Query<DropQuery>) -> impl IntoResponse {
    let session = match q.session.as_deref().map(str::parse::<SessionToken>) {
        Some(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            );
        }
        Some(Ok(token)) => Some(MemberKey::Session(token)),
        None => None,
    };
    if session.is_none() && q.client.is_none() {
        let error = "name the member: ?session=TOKEN or ?client=ID";
        return (StatusCode::BAD_REQUEST, Json(json!({"error": error})));
    }
    let conns = app.chat.rooms().connections(|key, conn| {
        Some(key) == session || q.client.as_deref() == Some(conn.client_id())
    });
    let mut dropped = 0;
    for conn in conns {
        if !conn.sender().is_closed() {
            conn.sender().abort();
            dropped += 1;
        }
    }
    if dropped == 0 {
        let error =
            "no open connection of that member (not joined, or not seen since it reconnected)";
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"dropped": 0, "error": error})),
        );
    }
    (StatusCode::OK, Json(json!({"dropped": dropped})))
}

/// The development preset with client ids taken from the page's `?client=NAME`, and a chat's
/// rate limit: 10 messages a second per client after a burst of 50, each refusal answered at
/// once with an error frame (the page's "Flood" shows them).
fn base_config() -> StabilityConfig {
    let mut base = StabilityConfig::development();
    base.connection.client_id = ClientIdSource::Query;
    base.connection.client_id_key = "client".to_owned();
    base.rate_limit.scope = RateLimitScope::Client;
    base.rate_limit.messages_per_second = 10;
    base.rate_limit.messages_burst = 50;
    base.rate_limit.on_limit = RateLimitAction::ErrorFrame;
    base.rate_limit.hold_refused = std::time::Duration::ZERO;
    base
}

/// Sessions and the dedup window in the Redis at `url`, messages fingerprinted with the same
/// `key` on every node (a shared window needs the same fingerprints everywhere).
fn over_redis(config: &mut StabilityConfig, url: &str, key: String) {
    config.session.store.backend = SessionBackend::Redis;
    config.session.store.redis.url = url.to_owned();
    config.dedup.store.backend = StoreBackend::Redis;
    config.dedup.store.redis.url = url.to_owned();
    config.dedup.fingerprint_key = Some(key);
}

/// The chat's routes; with `redis`, its rooms span every node on that Redis.
fn app(
    config: &ConfigHandle,
    prometheus: PrometheusHandle,
    redis: Option<Arc<RedisRooms>>,
) -> Router {
    let registry = MetricsRegistry::new(config);
    let chat = Chat::new(&registry, redis);
    let breaker = CircuitBreakerLayer::new(config).classifier(MessageClassifier);
    let dedup = DedupLayer::new(config).classifier(MessageClassifier);
    let rate_limit = RateLimitLayer::new(config).route("/ws");
    wsguard::watch_rate_limit(&registry, rate_limit.handle());
    let stack = ServiceBuilder::new()
        .layer(
            MetricsLayer::new(registry.clone())
                .route("/ws")
                .classifier(MessageClassifier),
        )
        // Before dedup: a flood of duplicates is a flood all the same.
        .layer(rate_limit.clone())
        .layer(dedup.clone())
        .layer(breaker.clone())
        .service_fn({
            let chat = Arc::clone(&chat);
            move |inbound| Arc::clone(&chat).handle(inbound)
        });
    let ws = WsRoute::new(stack, config).metrics(registry.clone());
    let _ = chat.sessions.set(ws.sessions());
    let state = App {
        chat,
        breaker: breaker.handle(),
        dedup: dedup.handle(),
        rate_limit: rate_limit.handle(),
        registry,
        sessions: ws.sessions(),
        prometheus,
    };
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], APP_JS) }),
        )
        .route(
            "/wsguard.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], CLIENT_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
        )
        .route("/ws", ws.into_method_router())
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .route("/fail", post(fail))
        .route("/drop", post(drop_connection))
        .with_state(state)
}

/// The chat's command line: the servers' own, plus `--redis URL`.
#[derive(Debug)]
struct ChatArgs {
    server: ServerArgs,
    redis: Option<String>,
}

impl ChatArgs {
    fn parse(
        args: impl IntoIterator<Item = String>,
        env_addr: Option<String>,
    ) -> Result<Self, String> {
        let mut redis = None;
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--redis" {
                redis = Some(args.next().ok_or("--redis needs a URL")?);
            } else if let Some(url) = arg.strip_prefix("--redis=") {
                redis = Some(url.to_owned());
            } else {
                rest.push(arg);
            }
        }
        let server = ServerArgs::parse(rest, env_addr).map_err(|e| {
            if e.starts_with("usage:") {
                format!("{e} [--redis redis://HOST:PORT]")
            } else {
                e
            }
        })?;
        Ok(Self { server, redis })
    }
}

#[tokio::main]
async fn main() {
    init_tracing();
    let args = ChatArgs::parse(std::env::args().skip(1), std::env::var("WSGUARD_ADDR").ok())
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        });
    let mut base = args.server.preset.map_or_else(base_config, Preset::config);
    let redis = match &args.redis {
        None => None,
        Some(url) => {
            // Refusing to start beats running as a node of one while the others believe it is
            // sharing their rooms.
            let redis = match RedisRooms::connect(url).await {
                Ok(redis) => redis,
                Err(e) => {
                    eprintln!("cannot use Redis at {url} (--redis): {e}");
                    std::process::exit(1)
                }
            };
            let key = redis.shared_fingerprint_key().await.unwrap_or_else(|e| {
                eprintln!("cannot use Redis at {url} (--redis): {e}");
                std::process::exit(1)
            });
            over_redis(&mut base, url, key);
            tracing::info!(%url, "rooms, sessions and the dedup window in Redis");
            Some(Arc::new(redis))
        }
    };
    // The preset, if any, is the base already; a `--config` file and the environment go over it.
    let server = ServerArgs {
        preset: None,
        ..args.server
    };
    let (config, _watcher) = server.config_from(base).unwrap_or_else(|e| {
        eprintln!("configuration refused:\n{e}");
        std::process::exit(1)
    });
    // Before any registry: its series bind to the recorder installed when they are made.
    let prometheus = prometheus();
    tracing::info!("open http://{}", server.addr);
    if let Err(e) = serve(app(&config, prometheus, redis), server.addr).await {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use futures_util::{SinkExt, StreamExt};
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio::time::timeout;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

    use super::*;

    type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

    async fn start() -> (std::net::SocketAddr, Router) {
        let config = ConfigHandle::new(base_config()).unwrap();
        let prometheus = PrometheusBuilder::new().build_recorder().handle();
        let router = app(&config, prometheus, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = router.clone();
        tokio::spawn(async move { axum::serve(listener, serving).await.unwrap() });
        (addr, router)
    }

    async fn stats(router: &Router) -> serde_json::Value {
        let request = Request::get("/stats").body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Reads frames until one contains `needle`.
    async fn read_until(ws: &mut Socket, needle: &str) -> String {
        loop {
            let frame = timeout(Duration::from_secs(10), ws.next()).await.unwrap();
            let text = frame.unwrap().unwrap().into_text().unwrap().to_string();
            if text.contains(needle) {
                return text;
            }
        }
    }

    /// A connection offering the `wsguard.v1` subprotocol.
    async fn connect_v1(addr: std::net::SocketAddr) -> Socket {
        connect_v1_as(addr, "carol").await
    }

    async fn connect_v1_as(addr: std::net::SocketAddr, client: &str) -> Socket {
        let mut request = format!("ws://{addr}/ws?client={client}")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "wsguard.v1".parse().unwrap());
        connect_async(request).await.unwrap().0
    }

    fn messages_out(stats: &serde_json::Value, client: &str) -> u64 {
        stats["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client"] == client)
            .map_or(0, |c| c["messages_out"].as_u64().unwrap())
    }

    /// A plain connection of client `name` that joined room `r` and saw its own join.
    async fn member_of_r(addr: std::net::SocketAddr, name: &str) -> Socket {
        let (mut ws, _) = connect_async(format!("ws://{addr}/ws?client={name}"))
            .await
            .unwrap();
        let join = json!({"type": "join", "room": "r", "name": name}).to_string();
        ws.send(WsMessage::text(join)).await.unwrap();
        read_until(&mut ws, &format!(r#""name":"{name}""#)).await;
        ws
    }

    #[tokio::test]
    async fn broadcasts_count_as_messages_out_of_each_receiving_client() {
        let (addr, router) = start().await;
        let mut alice = member_of_r(addr, "alice").await;
        let mut bob = member_of_r(addr, "bob").await;
        let say = json!({"type": "say", "text": "hello room"}).to_string();
        alice.send(WsMessage::text(say)).await.unwrap();
        read_until(&mut bob, "hello room").await;
        read_until(&mut alice, "hello room").await;

        // Alice received three broadcasts (both joins, her message), Bob two. The count is
        // recorded as the send is queued, which may trail the frame by a moment.
        let mut stats_now = stats(&router).await;
        for _ in 0..100 {
            if (
                messages_out(&stats_now, "alice"),
                messages_out(&stats_now, "bob"),
            ) == (3, 2)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            stats_now = stats(&router).await;
        }
        assert_eq!(messages_out(&stats_now, "alice"), 3, "{stats_now}");
        assert_eq!(messages_out(&stats_now, "bob"), 2, "{stats_now}");
        assert_eq!(stats_now["metrics"]["messages_out"], 5, "{stats_now}");
    }

    #[tokio::test]
    async fn a_flood_is_limited_per_client_and_the_panel_counts_it() {
        let (addr, router) = start().await;
        let mut alice = member_of_r(addr, "alice").await;
        let mut bob = member_of_r(addr, "bob").await;
        read_until(&mut alice, r#""name":"bob""#).await;

        // What the page's "Flood" does: 200 messages at once.
        for i in 0..200 {
            let say = json!({"type": "say", "id": format!("f{i}"), "text": format!("flood {i}")});
            alice.feed(WsMessage::text(say.to_string())).await.unwrap();
        }
        alice.flush().await.unwrap();
        // Each one is either in the room (back to Alice too) or refused to her alone.
        let (mut passed, mut limited) = (Vec::new(), 0);
        while passed.len() + limited < 200 {
            let frame = timeout(Duration::from_secs(10), alice.next())
                .await
                .unwrap();
            let frame: serde_json::Value =
                serde_json::from_str(frame.unwrap().unwrap().to_text().unwrap()).unwrap();
            match frame["type"].as_str() {
                Some("message") => passed.push(frame["text"].as_str().unwrap().to_owned()),
                Some("error") => {
                    assert_eq!(frame["error"], "rate_limited", "{frame}");
                    assert!(frame["retry_after_ms"].as_u64().is_some(), "{frame}");
                    limited += 1;
                }
                _ => panic!("unexpected frame {frame}"),
            }
        }
        // The burst of 50 less her join passes, and what refilled (10 a second) meanwhile.
        assert!((49..100).contains(&passed.len()), "{} passed", passed.len());
        assert_eq!(
            passed[..49],
            (0..49).map(|i| format!("flood {i}")).collect::<Vec<_>>()
        );
        let now = stats_when(&router, |s| s["rate_limited"] == limited as u64).await;
        assert_eq!(now["rate_limited"], limited as u64, "{now}");

        // Bob has his own limit: he is heard at once, and heard only what passed before.
        let say = json!({"type": "say", "id": "b1", "text": "still here"}).to_string();
        bob.send(WsMessage::text(say)).await.unwrap();
        let mut heard = Vec::new();
        loop {
            let frame = timeout(Duration::from_secs(10), bob.next()).await.unwrap();
            let frame: serde_json::Value =
                serde_json::from_str(frame.unwrap().unwrap().to_text().unwrap()).unwrap();
            assert_eq!(frame["type"], "message", "{frame}");
            let text = frame["text"].as_str().unwrap().to_owned();
            if text == "still here" {
                break;
            }
            heard.push(text);
        }
        assert_eq!(heard, passed);
        read_until(&mut alice, "still here").await;
    }

    #[tokio::test]
    async fn stats_show_the_route_sessions() {
        let (addr, router) = start().await;
        let before = stats(&router).await;
        assert_eq!(before["sessions"]["created"], 0, "{before}");

        let mut ws = connect_v1(addr).await;
        ws.send(WsMessage::text(r#"{"type":"hello"}"#))
            .await
            .unwrap();
        read_until(&mut ws, r#""type":"session""#).await;
        // A well-formed token no session has: refused as `unknown`, and a new session opened.
        let mut again = connect_v1(addr).await;
        let token = "0123456789abcdef0123456789abcdef";
        let resume = json!({"type": "resume", "session": token, "last": 0});
        again
            .send(WsMessage::text(resume.to_string()))
            .await
            .unwrap();
        let answer = read_until(&mut again, r#""type":"session""#).await;
        assert!(answer.contains(r#""reason":"unknown""#), "{answer}");

        let after = stats(&router).await;
        let sessions = &after["sessions"];
        assert_eq!(sessions["created"], 2, "{after}");
        assert_eq!(sessions["live"], 2, "{after}");
        assert_eq!(sessions["refused"]["unknown"], 1, "{after}");
        // The same figures reach the registry's snapshot, labelled with the route.
        let reported = &after["metrics"]["sessions"][0];
        assert_eq!(reported["route"], "/ws", "{after}");
        assert_eq!(reported["created"], 2, "{after}");
        assert_eq!(reported["refused"]["unknown"], 1, "{after}");
    }

    async fn post(router: &Router, uri: &str) -> (StatusCode, serde_json::Value) {
        let request = Request::post(uri).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn text(value: serde_json::Value) -> WsMessage {
        WsMessage::text(value.to_string())
    }

    fn join(name: &str) -> serde_json::Value {
        json!({"type": "join", "room": "r", "name": name})
    }

    /// Reads until the connection ends; fails on a close frame.
    async fn ends_without_close_frame(ws: &mut Socket) {
        loop {
            match timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
                Some(Ok(WsMessage::Close(frame))) => panic!("a close frame: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    }

    /// Polls `/stats` until `ready` holds.
    async fn stats_when(
        router: &Router,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut now = stats(router).await;
        for _ in 0..200 {
            if ready(&now) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            now = stats(router).await;
        }
        now
    }

    #[tokio::test]
    async fn a_member_cut_off_gets_what_was_said_meanwhile_when_it_resumes() {
        let (addr, router) = start().await;
        let mut alice = connect_v1_as(addr, "alice").await;
        alice.send(text(json!({"type": "hello"}))).await.unwrap();
        let opened = read_until(&mut alice, r#""type":"session""#).await;
        let opened: serde_json::Value = serde_json::from_str(&opened).unwrap();
        let token = opened["session"].as_str().unwrap().to_owned();
        let msg = |id: u64, data: serde_json::Value| json!({"type": "msg", "id": id, "data": data});
        alice.send(text(msg(1, join("alice")))).await.unwrap();
        read_until(&mut alice, r#""seq":1,"data":{"name":"alice""#).await;
        let (mut bob, _) = connect_async(format!("ws://{addr}/ws?client=bob"))
            .await
            .unwrap();
        bob.send(text(join("bob"))).await.unwrap();
        read_until(&mut bob, r#""name":"bob""#).await;
        read_until(&mut alice, r#""seq":2,"data":{"name":"bob""#).await;

        let (status, dropped) = post(&router, &format!("/drop?session={token}")).await;
        assert_eq!((status, &dropped), (StatusCode::OK, &json!({"dropped": 1})));
        ends_without_close_frame(&mut alice).await;
        let away = stats_when(&router, |s| s["sessions"]["detached"] == 1).await;
        assert_eq!(away["sessions"]["detached"], 1, "{away}");

        let said = json!({"type": "say", "text": "while you were away"});
        bob.send(text(said)).await.unwrap();
        read_until(&mut bob, "while you were away").await;
        // What went into Alice's session while she was away counts as sent, like the rest:
        // both joins to each (3 of them), then the line to each.
        let counted = stats_when(&router, |s| s["metrics"]["messages_out"] == 5).await;
        assert_eq!(counted["metrics"]["messages_out"], 5, "{counted}");

        let mut again = connect_v1_as(addr, "alice").await;
        let resume = json!({"type": "resume", "session": token, "last": 2});
        again.send(text(resume)).await.unwrap();
        let answer = read_until(&mut again, r#""type":"session""#).await;
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["resumed"], true, "{answer}");
        assert_eq!(answer["last"], 1, "{answer}");
        let replayed = read_until(&mut again, "while you were away").await;
        assert!(replayed.contains(r#""seq":3"#), "{replayed}");

        // Joining again under the same name, as the page does after every reconnect, is silent.
        again.send(text(msg(2, join("alice")))).await.unwrap();
        read_until(&mut again, r#"{"type":"ack","id":2}"#).await;
        bob.send(text(json!({"type": "say", "text": "fence"})))
            .await
            .unwrap();
        loop {
            let frame = read_until(&mut bob, r#""type""#).await;
            assert!(!frame.contains("joined"), "{frame}");
            if frame.contains("fence") {
                break;
            }
        }
        let fence = read_until(&mut again, "fence").await;
        assert!(fence.contains(r#""seq":4"#), "{fence}");

        let after = stats(&router).await;
        assert_eq!(after["sessions"]["resumed"], 1, "{after}");
        assert_eq!(after["sessions"]["replayed"], 1, "{after}");
    }

    #[tokio::test]
    async fn drop_cuts_the_named_member_without_a_close_frame_or_says_why_not() {
        let (addr, router) = start().await;
        let (mut bob, _) = connect_async(format!("ws://{addr}/ws?client=bob"))
            .await
            .unwrap();
        bob.send(text(join("bob"))).await.unwrap();
        read_until(&mut bob, r#""name":"bob""#).await;

        let (status, _) = post(&router, "/drop?client=nobody").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = post(&router, "/drop?session=not-a-token").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = post(&router, "/drop").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, dropped) = post(&router, "/drop?client=bob").await;
        assert_eq!((status, dropped), (StatusCode::OK, json!({"dropped": 1})));
        ends_without_close_frame(&mut bob).await;
        // Gone for good without a session: nothing left to cut.
        let (status, _) = post(&router, "/drop?client=bob").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// A chat node whose rooms, sessions and dedup window are in the Redis at `url`, as
    /// `--redis url` makes it.
    async fn start_node(url: &str) -> (std::net::SocketAddr, Router) {
        start_node_with(url, base_config()).await
    }

    async fn start_node_with(
        url: &str,
        mut base: StabilityConfig,
    ) -> (std::net::SocketAddr, Router) {
        let redis = RedisRooms::connect(url).await.unwrap();
        over_redis(
            &mut base,
            url,
            redis.shared_fingerprint_key().await.unwrap(),
        );
        let config = ConfigHandle::new(base).unwrap();
        let prometheus = PrometheusBuilder::new().build_recorder().handle();
        let router = app(&config, prometheus, Some(Arc::new(redis)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = router.clone();
        tokio::spawn(async move { axum::serve(listener, serving).await.unwrap() });
        (addr, router)
    }

    fn say(text: &str) -> serde_json::Value {
        json!({"type": "say", "text": text})
    }

    /// The chat frames a connection reads until one says `fence` (which is included): `(seq,
    /// frame)`, the seq of a `wsguard.v1` message or `None` on a plain connection. Protocol
    /// frames (acks) are skipped.
    async fn frames_until(ws: &mut Socket, fence: &str) -> Vec<(Option<u64>, serde_json::Value)> {
        frames_until_frame(ws, |frame| frame["text"] == fence).await
    }

    /// As [`frames_until`], until a frame for which `last` holds (a chat frame or a protocol
    /// frame; a chat frame is included).
    async fn frames_until_frame(
        ws: &mut Socket,
        last: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<(Option<u64>, serde_json::Value)> {
        let mut frames = Vec::new();
        loop {
            let text = read_until(ws, r#""type""#).await;
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            let done = last(&frame);
            match frame["type"].as_str() {
                Some("msg") => {
                    let done = done || last(&frame["data"]);
                    frames.push((frame["seq"].as_u64(), frame["data"].clone()));
                    if done {
                        return frames;
                    }
                }
                Some("ack") if done => return frames,
                Some("ack") => {}
                _ => {
                    frames.push((None, frame));
                    if done {
                        return frames;
                    }
                }
            }
        }
    }

    /// The texts of the room messages among `frames`.
    fn texts(frames: &[(Option<u64>, serde_json::Value)]) -> Vec<String> {
        frames
            .iter()
            .filter(|(_, f)| f["type"] == "message")
            .map(|(_, f)| f["text"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_room_spans_nodes_once_each_in_order_also_across_a_resume_on_the_other_node() {
        let redis = wsguard_test_support::RedisServer::start();
        let (a_addr, a) = start_node(&redis.url()).await;
        let (b_addr, _b) = start_node(&redis.url()).await;
        let msg = |id: u64, data: serde_json::Value| json!({"type": "msg", "id": id, "data": data});

        // Alice on node A, under a session; Bob on node B, plain.
        let mut alice = connect_v1_as(a_addr, "alice").await;
        alice.send(text(json!({"type": "hello"}))).await.unwrap();
        let opened = read_until(&mut alice, r#""type":"session""#).await;
        let opened: serde_json::Value = serde_json::from_str(&opened).unwrap();
        let token = opened["session"].as_str().unwrap().to_owned();
        alice.send(text(msg(1, join("alice")))).await.unwrap();
        read_until(&mut alice, r#""seq":1,"data":{"name":"alice""#).await;
        let (mut bob, _) = connect_async(format!("ws://{b_addr}/ws?client=bob"))
            .await
            .unwrap();
        bob.send(text(join("bob"))).await.unwrap();
        read_until(&mut bob, r#""name":"bob""#).await;
        // Bob's join, published on B, reaches Alice through A.
        read_until(&mut alice, r#""seq":2,"data":{"name":"bob""#).await;

        let said: Vec<String> = (1..=20).map(|i| format!("from alice {i}")).collect();
        for (id, line) in (2..).zip(&said) {
            alice.send(text(msg(id, say(line)))).await.unwrap();
        }
        assert_eq!(texts(&frames_until(&mut bob, "from alice 20").await), said);
        let answered: Vec<String> = (1..=20).map(|i| format!("from bob {i}")).collect();
        for line in &answered {
            bob.send(text(say(line))).await.unwrap();
        }
        let frames = frames_until(&mut alice, "from bob 20").await;
        let mut expected = said.clone();
        expected.extend(answered.iter().cloned());
        assert_eq!(texts(&frames), expected);
        let seqs: Vec<u64> = frames.iter().map(|(seq, _)| seq.unwrap()).collect();
        assert_eq!(seqs, (3..3 + 40).collect::<Vec<_>>());
        let last = *seqs.last().unwrap();

        // Alice's connection to A is cut; what Bob says meanwhile waits in her session (A
        // delivers it there), and she resumes on B.
        let (status, _) = post(&a, &format!("/drop?session={token}")).await;
        assert_eq!(status, StatusCode::OK);
        ends_without_close_frame(&mut alice).await;
        let away = ["away 1", "away 2", "away 3"];
        for line in away {
            bob.send(text(say(line))).await.unwrap();
        }
        frames_until(&mut bob, "away 3").await;
        // A sends what it logs for Alice, away, through its outbound metrics too: the 42 lines
        // she got there, then these 3.
        let counted = stats_when(&a, |s| s["metrics"]["messages_out"] == 45).await;
        assert_eq!(counted["metrics"]["messages_out"], 45, "{counted}");
        let mut again = connect_v1_as(b_addr, "alice").await;
        let resume = json!({"type": "resume", "session": token, "last": last});
        again.send(text(resume)).await.unwrap();
        let answer = read_until(&mut again, r#""type":"session""#).await;
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["resumed"], true, "{answer}");
        // Joining again, as the page does after every reconnect, moves her to B (silently):
        // from then on B delivers to her and A does not.
        again.send(text(msg(22, join("alice")))).await.unwrap();
        let mut frames =
            frames_until_frame(&mut again, |f| f["type"] == "ack" && f["id"] == 22).await;
        bob.send(text(say("fence"))).await.unwrap();
        frames.extend(frames_until(&mut again, "fence").await);
        assert_eq!(texts(&frames), ["away 1", "away 2", "away 3", "fence"]);
        let seqs: Vec<u64> = frames.iter().map(|(seq, _)| seq.unwrap()).collect();
        assert_eq!(seqs, (last + 1..=last + 4).collect::<Vec<_>>());
        let bob_saw = frames_until(&mut bob, "fence").await;
        assert_eq!(texts(&bob_saw), ["fence"], "{bob_saw:?}");

        // Alice speaks on B now; Bob hears her once.
        again.send(text(msg(23, say("back")))).await.unwrap();
        assert_eq!(texts(&frames_until(&mut bob, "back").await), ["back"]);
        let frames = frames_until(&mut again, "back").await;
        assert_eq!(texts(&frames), ["back"]);
        assert_eq!(frames[0].0, Some(last + 5));

        // Bob leaves on B; Alice, on B too now, hears it, and so would members on A.
        bob.send(text(json!({"type": "leave"}))).await.unwrap();
        let left = read_until(&mut again, r#""type":"left""#).await;
        assert!(left.contains(r#""name":"bob""#), "{left}");
        let known = stats_when(&a, |s| s["members"] == 1).await;
        assert_eq!(known["members"], 1, "{known}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_say_why_while_redis_is_down_and_carry_on_when_it_is_back() {
        let mut redis = wsguard_test_support::RedisServer::start();
        let (a_addr, _a) = start_node(&redis.url()).await;
        let (b_addr, _b) = start_node(&redis.url()).await;
        let (mut alice, _) = connect_async(format!("ws://{a_addr}/ws?client=alice"))
            .await
            .unwrap();
        alice.send(text(join("alice"))).await.unwrap();
        read_until(&mut alice, r#""name":"alice""#).await;
        let (mut bob, _) = connect_async(format!("ws://{b_addr}/ws?client=bob"))
            .await
            .unwrap();
        bob.send(text(join("bob"))).await.unwrap();
        read_until(&mut bob, r#""name":"bob""#).await;
        read_until(&mut alice, r#""name":"bob""#).await;

        redis.stop();
        alice.send(text(say("lost"))).await.unwrap();
        let refused = read_until(&mut alice, r#""type":"error""#).await;
        assert!(refused.contains("rooms unavailable"), "{refused}");

        redis.restart();
        // Each node reconnects by itself; Alice retries until Bob hears her.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        let heard = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message crossed nodes within 20 s of Redis coming back"
            );
            n += 1;
            alice.send(text(say(&format!("retry {n}")))).await.unwrap();
            match timeout(Duration::from_millis(300), bob.next()).await {
                Ok(Some(Ok(frame))) => {
                    let frame = frame.into_text().unwrap().to_string();
                    assert!(frame.contains("retry"), "{frame}");
                    break frame;
                }
                Ok(other) => panic!("bob's connection ended: {other:?}"),
                Err(_) => {}
            }
        };
        let first: serde_json::Value = serde_json::from_str(&heard).unwrap();
        let first: u32 = first["text"].as_str().unwrap()["retry ".len()..]
            .parse()
            .unwrap();
        alice.send(text(say("after"))).await.unwrap();
        // Everything Alice said from then on arrives once, in order.
        let mut expected: Vec<String> = (first + 1..=n).map(|i| format!("retry {i}")).collect();
        expected.push("after".to_owned());
        assert_eq!(texts(&frames_until(&mut bob, "after").await), expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_whose_session_expired_leaves_the_rooms_of_every_node() {
        let redis = wsguard_test_support::RedisServer::start();
        let mut base = base_config();
        base.session.ttl = Duration::from_secs(1);
        let (a_addr, a) = start_node_with(&redis.url(), base.clone()).await;
        let (b_addr, b) = start_node_with(&redis.url(), base).await;
        let mut alice = connect_v1_as(a_addr, "alice").await;
        alice.send(text(json!({"type": "hello"}))).await.unwrap();
        let opened = read_until(&mut alice, r#""type":"session""#).await;
        let opened: serde_json::Value = serde_json::from_str(&opened).unwrap();
        let token = opened["session"].as_str().unwrap().to_owned();
        let join_alice = json!({"type": "msg", "id": 1, "data": join("alice")});
        alice.send(text(join_alice)).await.unwrap();
        read_until(&mut alice, r#""name":"alice""#).await;
        let (mut bob, _) = connect_async(format!("ws://{b_addr}/ws?client=bob"))
            .await
            .unwrap();
        bob.send(text(join("bob"))).await.unwrap();
        read_until(&mut bob, r#""name":"bob""#).await;
        for node in [&a, &b] {
            let known = stats_when(node, |s| s["members"] == 2).await;
            assert_eq!(known["members"], 2, "{known}");
        }

        // Alice goes away for good; once her session has expired, what is said in the room
        // finds it gone and both nodes forget her.
        let (status, _) = post(&a, &format!("/drop?session={token}")).await;
        assert_eq!(status, StatusCode::OK);
        ends_without_close_frame(&mut alice).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while stats(&a).await["members"] != 1 || stats(&b).await["members"] != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "alice still a member: {} / {} members",
                stats(&a).await["members"],
                stats(&b).await["members"]
            );
            n += 1;
            bob.send(text(say(&format!("anyone {n}")))).await.unwrap();
            frames_until(&mut bob, &format!("anyone {n}")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
