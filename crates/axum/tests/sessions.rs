//! `wsguard.v1` sessions over real sockets, with a small hand-written protocol client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tower::service_fn;
use wsguard_axum::{BoxError, Inbound, Message, Sender, WsRoute};
use wsguard_config::{ClientIdSource, StabilityConfig};
use wsguard_session::SessionToken;
use wsguard_session::protocol::{RefusalReason, SUBPROTOCOL, SessionFrame};

mod support;

use support::serve;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// A frame from the server, as a protocol client reads it.
#[derive(Debug, PartialEq)]
enum Frame {
    Session(SessionFrame),
    /// `seq` and the JSON text of `data`.
    Msg(u64, String),
    Binary(u64, Vec<u8>),
    Ack(u64),
    /// An error frame's kind and the client id it is about.
    Error(String, u64),
    Close(u16),
}

/// A connection of the protocol client.
struct V1 {
    socket: Socket,
}

impl V1 {
    /// Upgrades offering `wsguard.v1`, as `client` (the `x-client` header) if given.
    async fn connect(addr: SocketAddr, client: Option<&str>) -> Self {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        if let Some(client) = client {
            request
                .headers_mut()
                .insert("x-client", HeaderValue::from_str(client).unwrap());
        }
        let (socket, response) = timeout(WAIT, connect_async(request))
            .await
            .expect("connect in time")
            .expect("upgrade accepted");
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            SUBPROTOCOL
        );
        Self { socket }
    }

    async fn send_text(&mut self, text: String) {
        self.socket.send(WsMessage::text(text)).await.unwrap();
    }

    async fn hello(&mut self) -> SessionFrame {
        self.send_text(r#"{"type":"hello"}"#.into()).await;
        self.session_frame().await
    }

    async fn resume(&mut self, token: SessionToken, last: u64) -> SessionFrame {
        self.send_text(format!(
            r#"{{"type":"resume","session":"{token}","last":{last}}}"#
        ))
        .await;
        self.session_frame().await
    }

    async fn session_frame(&mut self) -> SessionFrame {
        match self.frame().await {
            Frame::Session(frame) => frame,
            other => panic!("expected the session frame, got {other:?}"),
        }
    }

    /// Sends message `id` with `data` (JSON text).
    async fn msg(&mut self, id: u64, data: &str) {
        self.send_text(format!(r#"{{"type":"msg","id":{id},"data":{data}}}"#))
            .await;
    }

    async fn ack(&mut self, seq: u64) {
        self.send_text(format!(r#"{{"type":"ack","seq":{seq}}}"#))
            .await;
    }

    /// The next data or close frame within `WAIT`, pings and pongs skipped (they do not
    /// extend the wait).
    async fn frame(&mut self) -> Frame {
        let deadline = Instant::now() + WAIT;
        loop {
            let frame = timeout_at(deadline, self.socket.next())
                .await
                .expect("frame in time")
                .expect("stream open")
                .expect("no error");
            let text = match frame {
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                WsMessage::Close(close) => {
                    return Frame::Close(close.map_or(1005, |c| c.code.into()));
                }
                WsMessage::Binary(bytes) => {
                    let seq = u64::from_be_bytes(bytes[..8].try_into().unwrap());
                    return Frame::Binary(seq, bytes[8..].to_vec());
                }
                WsMessage::Text(text) => text,
                WsMessage::Frame(_) => unreachable!(),
            };
            let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            return match value["type"].as_str().unwrap() {
                "session" => Frame::Session(SessionFrame {
                    session: value["session"].as_str().map(|t| t.parse().unwrap()),
                    resumed: value["resumed"].as_bool().unwrap(),
                    last: value["last"].as_u64().unwrap(),
                    reason: value
                        .get("reason")
                        .map(|r| serde_json::from_value(r.clone()).unwrap()),
                    lost: value["lost"].as_u64(),
                }),
                "msg" => Frame::Msg(value["seq"].as_u64().unwrap(), value["data"].to_string()),
                "ack" => Frame::Ack(value["id"].as_u64().unwrap()),
                "error" => Frame::Error(
                    value["error"].as_str().unwrap().to_owned(),
                    value["id"].as_u64().unwrap(),
                ),
                other => panic!("unexpected frame type {other}: {text}"),
            };
        }
    }

    /// Drops the TCP connection without a close frame (a reset, as a dead network does).
    fn drop_abruptly(self) {
        if let MaybeTlsStream::Plain(tcp) = self.socket.get_ref() {
            tcp.set_zero_linger().unwrap();
        }
        drop(self.socket);
    }
}

fn config(edit: impl FnOnce(&mut StabilityConfig)) -> StabilityConfig {
    let mut config = StabilityConfig::testing();
    config.connection.client_id = ClientIdSource::Header;
    config.connection.client_id_key = "x-client".into();
    edit(&mut config);
    config
}

/// Counts how often each text was handled; answers `r:TEXT` after 2 ms (binary: echoes); the
/// text `fail` fails.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<HashMap<String, usize>>>);

impl Handled {
    fn route(&self, config: StabilityConfig) -> WsRoute<impl Counting + use<>> {
        WsRoute::new(counting(self.clone()), config)
    }

    fn count(&self, text: &str) -> usize {
        self.0.lock().unwrap().get(text).copied().unwrap_or(0)
    }
}

trait Counting:
    tower::Service<Inbound, Response = Option<Message>, Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Counting for S where
    S: tower::Service<
            Inbound,
            Response = Option<Message>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

fn counting(handled: Handled) -> impl Counting {
    service_fn(move |req: Inbound| {
        let handled = handled.0.clone();
        async move {
            let Some(text) = req.text() else {
                return Ok::<_, BoxError>(Some(req.message));
            };
            *handled.lock().unwrap().entry(text.to_owned()).or_default() += 1;
            if text == "fail" {
                return Err("asked to fail".into());
            }
            // Slow enough that a client dropping mid-stream leaves messages unprocessed.
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(Some(Message::text(format!("r:{text}"))))
        }
    })
}

async fn serve_route<S>(route: WsRoute<S>) -> SocketAddr
where
    S: tower::Service<Inbound, Response = Option<Message>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    serve(Router::new().route("/ws", route.into_method_router())).await
}

#[tokio::test]
async fn hello_opens_a_session_whose_replies_are_numbered_from_1_and_acknowledged() {
    let handled = Handled::default();
    let route = handled.route(config(|_| {}));
    let sessions = route.sessions();
    let addr = serve_route(route).await;

    let mut client = V1::connect(addr, Some("alice")).await;
    let frame = client.hello().await;
    assert!(!frame.resumed);
    assert_eq!((frame.last, frame.reason, frame.lost), (0, None, None));
    assert!(frame.session.is_some());

    client.msg(1, r#""a""#).await;
    client.msg(2, r#"{"k":[1,2]}"#).await;
    client.msg(3, r#""plain \"text\"""#).await;
    let mut binary = 4u64.to_be_bytes().to_vec();
    binary.extend_from_slice(&[9, 9]);
    client.socket.send(WsMessage::binary(binary)).await.unwrap();

    let mut msgs = Vec::new();
    let mut acked = 0;
    while msgs.len() < 4 || acked < 4 {
        match client.frame().await {
            Frame::Msg(seq, data) => msgs.push((seq, data)),
            Frame::Binary(seq, payload) => msgs.push((seq, format!("{payload:?}"))),
            Frame::Ack(id) => {
                assert!(id > acked, "acks only grow");
                acked = id;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        msgs,
        [
            (1, r#""r:a""#.to_owned()),
            (2, r#""r:{\"k\":[1,2]}""#.to_owned()),
            (3, r#""r:plain \"text\"""#.to_owned()),
            (4, "[9, 9]".to_owned()),
        ]
    );
    // Handlers saw the plain messages.
    assert_eq!(handled.count("a"), 1);
    assert_eq!(handled.count(r#"{"k":[1,2]}"#), 1);
    assert_eq!(handled.count(r#"plain "text""#), 1);

    client.ack(4).await;
    let stats = sessions.stats();
    assert_eq!((stats.created, stats.sessions), (1, Some(1)));
    timeout(WAIT, async {
        while sessions.stats().bytes != Some(0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the client's ack frees the log");
}

#[tokio::test]
async fn a_client_that_drops_mid_stream_resumes_and_everything_happens_once_in_order() {
    let handled = Handled::default();
    let route = handled.route(config(|c| c.session.max_messages = 1000));
    let sessions = route.sessions();
    let addr = serve_route(route).await;

    let mut client = V1::connect(addr, Some("bob")).await;
    let token = client.hello().await.session.unwrap();
    for id in 1..=60 {
        client.msg(id, &format!(r#""m{id}""#)).await;
    }
    let mut received = Vec::new();
    while received.len() < 30 {
        if let Frame::Msg(seq, data) = client.frame().await {
            received.push((seq, data));
        }
    }
    client.drop_abruptly();

    let mut client = V1::connect(addr, Some("bob")).await;
    let frame = client.resume(token, 30).await;
    assert!(frame.resumed, "{frame:?}");
    assert_eq!(frame.session, Some(token));
    assert!(frame.last >= 30, "{frame:?}");
    assert!(
        frame.last < 60,
        "the drop left messages unprocessed: {frame:?}"
    );
    // A few already processed ones too, as a client unsure of its acks might: skipped.
    for id in frame.last.saturating_sub(4).max(1)..=100 {
        client.msg(id, &format!(r#""m{id}""#)).await;
    }
    let mut acked = 0;
    while received.len() < 100 || acked < 100 {
        match client.frame().await {
            Frame::Msg(seq, data) => received.push((seq, data)),
            Frame::Ack(id) => acked = id,
            other => panic!("{other:?}"),
        }
    }
    let expected: Vec<(u64, String)> = (1..=100).map(|i| (i, format!(r#""r:m{i}""#))).collect();
    assert_eq!(received, expected, "every reply once, in order");
    for i in 1..=100 {
        assert_eq!(handled.count(&format!("m{i}")), 1, "m{i} handled once");
    }
    assert_eq!(sessions.stats().resumed, 1);
}

/// Waits until the server saw the drop: one session detached.
async fn one_detached(sessions: &wsguard_axum::Sessions) {
    timeout(WAIT, async {
        while sessions.stats().detached != Some(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the session detaches");
}

#[tokio::test]
async fn messages_sent_while_the_client_is_away_arrive_on_resume() {
    let kept: Arc<Mutex<Option<Sender>>> = Arc::default();
    let keep = kept.clone();
    let service = service_fn(move |req: Inbound| {
        *keep.lock().unwrap() = Some(req.sender().clone());
        async move { Ok::<_, BoxError>(None) }
    });
    let route = WsRoute::new(service, config(|_| {}));
    let sessions = route.sessions();
    let addr = serve_route(route).await;

    let mut client = V1::connect(addr, Some("carol")).await;
    let token = client.hello().await.session.unwrap();
    client.msg(1, r#""keep my sender""#).await;
    assert_eq!(client.frame().await, Frame::Ack(1));
    client.drop_abruptly();
    one_detached(&sessions).await;

    let sender = kept.lock().unwrap().clone().unwrap();
    assert!(sender.is_closed());
    sender.send("through the connection's sender").unwrap();
    let seq = sessions
        .sender_for_client("carol")
        .send(serde_json::json!({"through": "the client id"}))
        .await
        .unwrap();
    assert_eq!(seq, 2);

    let mut client = V1::connect(addr, Some("carol")).await;
    let frame = client.resume(token, 0).await;
    assert!(frame.resumed);
    assert_eq!(frame.last, 1);
    assert_eq!(
        client.frame().await,
        Frame::Msg(1, r#""through the connection's sender""#.into())
    );
    assert_eq!(
        client.frame().await,
        Frame::Msg(2, r#"{"through":"the client id"}"#.into())
    );
    assert_eq!(sessions.stats().replayed, 2);
}

/// The route's senders by client id and by session are `tower::Service<Message>`s that layers
/// wrap, as a connection's `Sender` is: what they log reaches a client that was away.
#[tokio::test]
async fn the_routes_message_senders_reach_a_client_that_is_away_through_layers() {
    use tower::{Service, ServiceBuilder, ServiceExt};
    use wsguard_axum::NotData;

    let service = service_fn(|_: Inbound| async { Ok::<_, BoxError>(None) });
    let route = WsRoute::new(service, config(|_| {}));
    let sessions = route.sessions();
    let addr = serve_route(route.clone()).await;

    // No session yet: the caller is told, nothing is kept.
    let err = route
        .sender_for_client("erin")
        .oneshot(Message::text("too early"))
        .await
        .unwrap_err();
    assert!(err.is::<wsguard_axum::SessionGone>(), "{err}");

    let mut client = V1::connect(addr, Some("erin")).await;
    let token = client.hello().await.session.unwrap();
    client.drop_abruptly();
    one_detached(&sessions).await;

    // A layer on the sending side, as on a connection's `Sender`.
    let mut by_client = ServiceBuilder::new()
        .map_request(|text: &'static str| Message::text(format!("[news] {text}")))
        .service(route.sender_for_client("erin"));
    assert_eq!(
        by_client.ready().await.unwrap().call("one").await.unwrap(),
        1
    );
    let by_session = route.sender_for_session(&token);
    let bytes = Message::Binary(vec![7u8, 8, 9].into());
    assert_eq!(by_session.clone().oneshot(bytes).await.unwrap(), 2);
    let ping = by_session.oneshot(Message::Ping(Default::default())).await;
    let err = ping.unwrap_err();
    assert!(err.is::<NotData>(), "{err}");
    assert_eq!(
        err.to_string(),
        "a ping message is not logged in a session: only text and binary are"
    );

    let mut client = V1::connect(addr, Some("erin")).await;
    assert!(client.resume(token, 0).await.resumed);
    assert_eq!(
        client.frame().await,
        Frame::Msg(1, r#""[news] one""#.into())
    );
    assert_eq!(client.frame().await, Frame::Binary(2, vec![7, 8, 9]));
    assert_eq!(sessions.stats().replayed, 2);
}

#[tokio::test]
async fn a_resume_after_the_ttl_is_refused_expired_with_a_new_session() {
    let handled = Handled::default();
    let route = handled.route(config(|c| c.session.ttl = Duration::from_millis(200)));
    let sessions = route.sessions();
    let addr = serve_route(route).await;

    let mut client = V1::connect(addr, Some("dave")).await;
    let token = client.hello().await.session.unwrap();
    client.msg(1, r#""x""#).await;
    assert!(matches!(client.frame().await, Frame::Msg(1, _)));
    client.drop_abruptly();
    // The sweep frees it without a resume asking.
    timeout(WAIT, async {
        while sessions.stats().expired != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the session expires");
    assert_eq!(sessions.stats().sessions, Some(0));
    assert_eq!(sessions.stats().bytes, Some(0));

    let mut client = V1::connect(addr, Some("dave")).await;
    let frame = client.resume(token, 0).await;
    assert!(!frame.resumed);
    assert_eq!(frame.reason, Some(RefusalReason::Expired));
    assert_ne!(frame.session, Some(token));
    assert_eq!(frame.last, 0);
    // The new session numbers from 1.
    client.msg(1, r#""y""#).await;
    assert_eq!(client.frame().await, Frame::Msg(1, r#""r:y""#.into()));
}

#[tokio::test]
async fn a_bad_first_frame_closes_1002_and_no_room_answers_unavailable_then_1013() {
    let handled = Handled::default();
    let route = handled.route(config(|c| c.session.max_sessions = 1));
    let addr = serve_route(route).await;

    let mut client = V1::connect(addr, None).await;
    client.msg(1, r#""too early""#).await;
    assert_eq!(client.frame().await, Frame::Close(1002));
    assert_eq!(handled.count("too early"), 0);

    let mut first = V1::connect(addr, None).await;
    first.hello().await;
    let mut second = V1::connect(addr, None).await;
    let frame = second.hello().await;
    assert_eq!(frame.reason, Some(RefusalReason::Unavailable));
    assert_eq!(frame.session, None);
    assert_eq!(second.frame().await, Frame::Close(1013));
}

#[tokio::test]
async fn a_plain_client_on_a_session_route_gets_plain_websocket() {
    let handled = Handled::default();
    let route = handled.route(config(|_| {}));
    let sessions = route.sessions();
    let addr = serve_route(route).await;

    let (mut socket, response) = connect_async(format!("ws://{addr}/ws")).await.unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    // What would be a hello under the protocol is a plain message here.
    socket
        .send(WsMessage::text(r#"{"type":"hello"}"#))
        .await
        .unwrap();
    let reply = timeout(WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, tungstenite::Message::text(r#"r:{"type":"hello"}"#));
    assert_eq!(sessions.stats().created, 0);
}

/// With `session.enabled` false the route does not take `wsguard.v1`: a client offering it is
/// answered without a subprotocol (and the upgrade still succeeds, for clients that accept it).
#[tokio::test]
async fn a_route_with_sessions_disabled_does_not_select_the_subprotocol() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let handled = Handled::default();
    let route = handled.route(config(|c| c.session.enabled = false));
    let sessions = route.sessions();
    let addr = serve_route(route).await;

    let upgrade = |protocol: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        )
    };
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(upgrade(SUBPROTOCOL).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        timeout(WAIT, tcp.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    assert_eq!(sessions.stats().created, 0);
}

#[tokio::test]
async fn a_failed_message_gets_an_unnumbered_error_frame_with_its_id_and_is_acknowledged() {
    let handled = Handled::default();
    let route = handled.route(config(|_| {}));
    let addr = serve_route(route).await;

    let mut client = V1::connect(addr, None).await;
    client.hello().await;
    client.msg(1, r#""fail""#).await;
    client.msg(2, r#""ok""#).await;
    let mut frames = Vec::new();
    while !frames.contains(&Frame::Ack(2)) {
        match client.frame().await {
            // Acks are batched: one for id 1 alone may come first.
            Frame::Ack(1) => {}
            frame => frames.push(frame),
        }
    }
    assert_eq!(
        frames,
        [
            Frame::Error("handler_error".into(), 1),
            Frame::Msg(1, r#""r:ok""#.into()),
            Frame::Ack(2),
        ]
    );
    // A resend of the failed one is acknowledged, not run again.
    client.msg(1, r#""fail""#).await;
    client.msg(3, r#""ok again""#).await;
    assert_eq!(
        client.frame().await,
        Frame::Msg(2, r#""r:ok again""#.into())
    );
    assert_eq!(handled.count("fail"), 1);
}

/// A service whose `slow` message waits for `gate` (after signalling `entered`), counting each
/// run when it starts; it keeps the connection's sender in `kept`. Any other text: `r:TEXT`.
fn gated(
    runs: Arc<Mutex<u32>>,
    entered: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
    kept: Arc<Mutex<Option<Sender>>>,
) -> impl Counting {
    service_fn(move |req: Inbound| {
        let (runs, entered, gate) = (runs.clone(), entered.clone(), gate.clone());
        *kept.lock().unwrap() = Some(req.sender().clone());
        async move {
            let text = req.text().unwrap_or_default().to_owned();
            if text == "slow" {
                *runs.lock().unwrap() += 1;
                entered.notify_one();
                gate.acquire().await.unwrap().forget();
            }
            Ok::<_, BoxError>(Some(Message::text(format!("r:{text}"))))
        }
    })
}

#[tokio::test]
async fn an_application_close_lets_the_call_in_flight_finish_so_the_resend_is_not_run_again() {
    let runs = Arc::new(Mutex::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let kept: Arc<Mutex<Option<Sender>>> = Arc::default();
    let service = gated(runs.clone(), entered.clone(), gate.clone(), kept.clone());
    let addr = serve_route(WsRoute::new(service, config(|_| {}))).await;

    let mut client = V1::connect(addr, Some("erin")).await;
    let token = client.hello().await.session.unwrap();
    client.msg(1, r#""slow""#).await;
    timeout(WAIT, entered.notified())
        .await
        .expect("the call starts");
    // The application closes the connection while the call is in flight, and the call can
    // finish at once: the connection sees both on its next turn (one thread runs both tasks).
    let sender = kept.lock().unwrap().clone().unwrap();
    sender.close(1000, "closing for a test");
    gate.add_permits(1);
    loop {
        match client.frame().await {
            Frame::Close(code) => {
                assert_eq!(code, 1000);
                break;
            }
            Frame::Ack(1) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // The client resends whatever the server says it has not processed.
    let mut client = V1::connect(addr, Some("erin")).await;
    let frame = client.resume(token, 0).await;
    assert!(frame.resumed, "{frame:?}");
    assert_eq!(
        frame.last, 1,
        "the call finished before the close: {frame:?}"
    );
    for id in frame.last + 1..=1 {
        client.msg(id, r#""slow""#).await;
        gate.add_permits(1);
    }
    assert_eq!(client.frame().await, Frame::Msg(1, r#""r:slow""#.into()));
    assert_eq!(*runs.lock().unwrap(), 1, "the handler ran once");
}

#[tokio::test]
async fn abort_drops_the_connection_without_a_close_frame_and_the_session_resumes() {
    let handled = Handled::default();
    let kept: Arc<Mutex<Option<Sender>>> = Arc::default();
    let keep = kept.clone();
    let inner = counting(handled.clone());
    let service = service_fn(move |req: Inbound| {
        *keep.lock().unwrap() = Some(req.sender().clone());
        if req.text() == Some("abort me") {
            req.sender().abort();
        }
        let mut inner = inner.clone();
        async move { tower::ServiceExt::oneshot(&mut inner, req).await }
    });
    let route = WsRoute::new(service, config(|_| {}));
    let stats = route.stats();
    let addr = serve_route(route).await;

    let mut client = V1::connect(addr, Some("frank")).await;
    let token = client.hello().await.session.unwrap();
    client.msg(1, r#""x""#).await;
    assert_eq!(client.frame().await, Frame::Msg(1, r#""r:x""#.into()));
    client.msg(2, r#""abort me""#).await;
    // No close frame: the stream ends, or breaks as a reset.
    let ended = timeout(WAIT, async {
        loop {
            match client.socket.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(WsMessage::Close(frame))) => panic!("a close frame was sent: {frame:?}"),
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    ended.expect("the connection ends");
    assert!(kept.lock().unwrap().as_ref().unwrap().is_closed());
    assert_eq!(stats.closed_protocol_error(), 0);

    let mut client = V1::connect(addr, Some("frank")).await;
    let frame = client.resume(token, 1).await;
    assert!(frame.resumed, "{frame:?}");
    assert_eq!(frame.last, 2, "the call in flight finished: {frame:?}");
    assert_eq!(
        client.frame().await,
        Frame::Msg(2, r#""r:abort me""#.into())
    );
    assert_eq!(handled.count("abort me"), 1);
}
