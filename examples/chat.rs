//! The wsguard demo: a chat server whose every WebSocket message goes through the circuit
//! breaker, the dedup window and the metrics layer, with a browser page showing them at work.
//!
//! ```text
//! cargo run --release --example chat      # then open http://127.0.0.1:3000
//! ```
//!
//! Address from `--addr` or `WSGUARD_ADDR` (default `127.0.0.1:3000`); configuration from
//! `--config FILE` (watched: valid edits apply live) or the `development` preset. No external
//! service: the dedup window is in memory.
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
//! - `/wsguard.js` the JavaScript client of `wsguard.v1` the page uses (an ES module, no build
//!   step; its API is at the top of the file and in `docs/protocol.md`), `/app.js` the page.
//! - `/ws` the chat socket, with sessions for clients that offer `wsguard.v1` (the page does)
//!   and plain WebSocket for the others. Frames: `{"type":"join","room":..,"name":..}`,
//!   `{"type":"say","id":..,"text":..}` and `{"type":"leave"}`; the server sends `joined`,
//!   `message` and `left` frames to the room through the sending side's stack
//!   (`SendToConnection` under an outbound metrics layer), so that the panel's per-client "out"
//!   column counts them. A member with a session stays in its room while the session lives, so
//!   what is said while it is away waits in its session log; joining again under the same name
//!   (as the page does after every reconnect) is silent.
//! - `/stats` JSON figures for the panel (breaker, dedup, metrics, per-client table, sessions),
//!   `/metrics` Prometheus text, `/health` 200, `POST /fail?n=N` the failure switch,
//!   `POST /drop?session=TOKEN` (or `?client=ID`) the connection cutter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use tower::{Layer, ServiceBuilder, ServiceExt};
use wsguard::axum::{
    ConnInfo, ConnectionId, OutgoingMessage, SendToConnection, SessionToken, Sessions,
};
use wsguard::metrics::{Direction, Metrics};
use wsguard::prelude::*;
use wsguard_config::{ClientIdSource, ConfigHandle, StabilityConfig};
use wsguard_examples::{ServerArgs, init_tracing, prometheus, serve, sessions_json};

const INDEX: &str = include_str!("chat/index.html");
const APP_JS: &str = include_str!("chat/app.js");
const CLIENT_JS: &str = include_str!("chat/wsguard.js");
const STYLE: &str = include_str!("chat/style.css");

/// What the chat sends to a member: through the outbound metrics layer, then the member's queue.
type Outbound = Metrics<SendToConnection, MessageClassifier>;

/// Rooms and their members' connections.
struct Chat {
    rooms: Mutex<Rooms>,
    outbound: Outbound,
    fail_next: AtomicU32,
    handled: AtomicU64,
}

/// Who a member is: its `wsguard.v1` session, which outlives its connections, or else its
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MemberKey {
    Session(SessionToken),
    Connection(ConnectionId),
}

impl MemberKey {
    fn of(conn: &ConnInfo) -> Self {
        match conn.sender().session() {
            Some(token) => Self::Session(token),
            None => Self::Connection(conn.id()),
        }
    }
}

/// Each room's members, and each member's room, so that a message finds its room without a scan.
#[derive(Default)]
struct Rooms {
    members: HashMap<String, HashMap<MemberKey, Member>>,
    room_of: HashMap<MemberKey, String>,
}

impl Rooms {
    /// Moves `member` into `room` and returns the room's live members, itself included, and
    /// whether it is new there: joining the same room again under the same name (a page that
    /// reconnected) only takes the member's newest connection.
    fn join(&mut self, room: String, member: Member) -> (Vec<Member>, bool) {
        let key = member.key;
        if self.room_of.get(&key) == Some(&room)
            && let Some(known) = self.members.get_mut(&room).and_then(|m| m.get_mut(&key))
            && known.name == member.name
        {
            known.conn = member.conn;
            return (self.live_members(&room), false);
        }
        if let Some(old) = self.room_of.insert(key, room.clone()) {
            self.remove_from(&old, key);
        }
        self.members
            .entry(room.clone())
            .or_default()
            .insert(key, member);
        (self.live_members(&room), true)
    }

    /// The room of `conn`'s member, its name there, and the room's live members; the member
    /// now sends through `conn`, its newest connection.
    fn speak(&mut self, conn: &Arc<ConnInfo>) -> Option<(String, String, Vec<Member>)> {
        let key = MemberKey::of(conn);
        let room = self.room_of.get(&key)?.clone();
        let member = self.members.get_mut(&room)?.get_mut(&key)?;
        member.conn = Arc::clone(conn);
        let from = member.name.clone();
        let members = self.live_members(&room);
        Some((room, from, members))
    }

    /// Takes `key` out of its room; its room, its name there and the members left.
    fn leave(&mut self, key: MemberKey) -> Option<(String, String, Vec<Member>)> {
        let room = self.room_of.remove(&key)?;
        let member = self.remove_from(&room, key)?;
        let members = self.live_members(&room);
        Some((room, member.name, members))
    }

    /// The members of `room` that can still be sent to: a member with a session while the
    /// session lives (sends to it fail once it expired, and [`Rooms::forget`] takes it out), any
    /// other while its connection is open. Closed ones are dropped here, the next time their
    /// room is used (the handler hears of no disconnect).
    fn live_members(&mut self, room: &str) -> Vec<Member> {
        let Some(members) = self.members.get_mut(room) else {
            return Vec::new();
        };
        let room_of = &mut self.room_of;
        members.retain(|key, m| {
            let live = matches!(key, MemberKey::Session(_)) || !m.conn.sender().is_closed();
            if !live {
                room_of.remove(key);
            }
            live
        });
        members.values().cloned().collect()
    }

    /// Takes out the members that could not be sent to.
    fn forget(&mut self, keys: &[MemberKey]) {
        for key in keys {
            if let Some(room) = self.room_of.remove(key) {
                self.remove_from(&room, *key);
            }
        }
    }

    /// The connections of the members `which` picks.
    fn connections(&self, which: impl Fn(&Member) -> bool) -> Vec<Arc<ConnInfo>> {
        self.members
            .values()
            .flat_map(HashMap::values)
            .filter(|m| which(m))
            .map(|m| Arc::clone(&m.conn))
            .collect()
    }

    fn remove_from(&mut self, room: &str, key: MemberKey) -> Option<Member> {
        let members = self.members.get_mut(room)?;
        let member = members.remove(&key);
        if members.is_empty() {
            self.members.remove(room);
        }
        member
    }
}

#[derive(Clone)]
struct Member {
    key: MemberKey,
    name: String,
    /// The member's newest connection known; under a session, sends through an older one still
    /// reach the session's log.
    conn: Arc<ConnInfo>,
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
    fn new(registry: &MetricsRegistry) -> Self {
        let outbound = MetricsLayer::new(registry.clone())
            .route("/ws")
            .direction(Direction::Outbound)
            .classifier(MessageClassifier)
            .layer(SendToConnection);
        Self {
            rooms: Mutex::default(),
            outbound,
            fail_next: AtomicU32::new(0),
            handled: AtomicU64::new(0),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
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
        match frame {
            Frame::Join { room, name } => {
                let name = clip(&name, 32);
                let room = clip(&room, 32);
                let member = Member {
                    key: MemberKey::of(&inbound.conn),
                    name: name.clone(),
                    conn: Arc::clone(&inbound.conn),
                };
                let (members, new) = self.rooms().join(room.clone(), member);
                if new {
                    self.broadcast(
                        members,
                        json!({"type": "joined", "room": room, "name": name}),
                    )
                    .await;
                }
                Ok(None)
            }
            Frame::Say { text, id } => {
                if self
                    .fail_next
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err("injected failure (fail next N)".into());
                }
                let spoken = self.rooms().speak(&inbound.conn);
                let Some((room, from, members)) = spoken else {
                    return Ok(Some(error_frame("join a room first")));
                };
                self.handled.fetch_add(1, Ordering::Relaxed);
                let text = clip(&text, 500);
                self.broadcast(
                    members,
                    json!({"type": "message", "room": room, "from": from, "text": text, "id": id}),
                )
                .await;
                Ok(None)
            }
            Frame::Leave => {
                let left = self.rooms().leave(MemberKey::of(&inbound.conn));
                if let Some((room, name, members)) = left {
                    self.broadcast(members, json!({"type": "left", "room": room, "name": name}))
                        .await;
                }
                Ok(None)
            }
        }
    }

    /// Sends `frame` to every member through the outbound stack, which counts it for the
    /// member's client and queues it on the member's connection (a bounded queue; a slow reader's
    /// overflow policy applies there, not here), or logs it in the member's session. Members
    /// that cannot be sent to any more (closed, or their session expired) leave the room.
    async fn broadcast(&self, members: Vec<Member>, frame: serde_json::Value) {
        let text = frame.to_string();
        let mut gone = Vec::new();
        for member in members {
            let message = OutgoingMessage::new(Message::text(text.clone()), member.conn);
            if self.outbound.clone().oneshot(message).await.is_err() {
                gone.push(member.key);
            }
        }
        if !gone.is_empty() {
            self.rooms().forget(&gone);
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
        "rejected": breaker.rejected,
        "handled": app.chat.handled.load(Ordering::Relaxed),
        "errors": metrics.calls.error,
        "connections": metrics.connections_active,
        "fail_next": app.chat.fail_next.load(Ordering::Relaxed),
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
    let conns = app
        .chat
        .rooms()
        .connections(|m| Some(m.key) == session || q.client.as_deref() == Some(m.conn.client_id()));
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

/// The development preset with client ids taken from the page's `?client=NAME`.
fn base_config() -> StabilityConfig {
    let mut base = StabilityConfig::development();
    base.connection.client_id = ClientIdSource::Query;
    base.connection.client_id_key = "client".to_owned();
    base
}

fn app(config: &ConfigHandle, prometheus: PrometheusHandle) -> Router {
    let registry = MetricsRegistry::new(config);
    let chat = Arc::new(Chat::new(&registry));
    let breaker = CircuitBreakerLayer::new(config).classifier(MessageClassifier);
    let dedup = DedupLayer::new(config).classifier(MessageClassifier);
    let stack = ServiceBuilder::new()
        .layer(
            MetricsLayer::new(registry.clone())
                .route("/ws")
                .classifier(MessageClassifier),
        )
        .layer(dedup.clone())
        .layer(breaker.clone())
        .service_fn({
            let chat = Arc::clone(&chat);
            move |inbound| Arc::clone(&chat).handle(inbound)
        });
    let ws = WsRoute::new(stack, config).metrics(registry.clone());
    let state = App {
        chat,
        breaker: breaker.handle(),
        dedup: dedup.handle(),
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

#[tokio::main]
async fn main() {
    init_tracing();
    let args = ServerArgs::from_env().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let (config, _watcher) = args.config_from(base_config()).unwrap_or_else(|e| {
        eprintln!("configuration refused:\n{e}");
        std::process::exit(1)
    });
    // Before any registry: its series bind to the recorder installed when they are made.
    let prometheus = prometheus();
    tracing::info!("open http://{}", args.addr);
    if let Err(e) = serve(app(&config, prometheus), args.addr).await {
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
        let router = app(&config, prometheus);
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

    #[tokio::test]
    async fn broadcasts_count_as_messages_out_of_each_receiving_client() {
        let (addr, router) = start().await;
        let join = |name: &str| {
            WsMessage::text(json!({"type": "join", "room": "r", "name": name}).to_string())
        };
        let (mut alice, _) = connect_async(format!("ws://{addr}/ws?client=alice"))
            .await
            .unwrap();
        alice.send(join("alice")).await.unwrap();
        read_until(&mut alice, r#""name":"alice""#).await;
        let (mut bob, _) = connect_async(format!("ws://{addr}/ws?client=bob"))
            .await
            .unwrap();
        bob.send(join("bob")).await.unwrap();
        read_until(&mut bob, r#""name":"bob""#).await;
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
}
