//! The client against a scripted `wsguard.v1` server over loopback: what it sends after a drop,
//! what it delivers, and what it reports.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{WebSocketStream, accept_hdr_async};
use wsguard_client::{
    Client, ClientOptions, Event, Events, Message, RefusalReason, RetryConfig, StopReason,
};
use wsguard_session::SessionToken;
use wsguard_session::protocol::{ClientFrame, SUBPROTOCOL, ServerFrame, SessionFrame};

const WAIT: Duration = Duration::from_secs(5);

type Conn = WebSocketStream<TcpStream>;

async fn accept(listener: &TcpListener) -> Conn {
    let (tcp, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    accept_hdr_async(tcp, offer_subprotocol).await.unwrap()
}

// tungstenite's `Callback` fixes this signature, large error and all.
#[allow(clippy::result_large_err)]
fn offer_subprotocol(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    response.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

/// The next frame the client sent, acks skipped.
async fn frame(conn: &mut Conn) -> ClientFrame {
    loop {
        let message = timeout(WAIT, conn.next()).await.unwrap().unwrap().unwrap();
        let WsMessage::Text(text) = message else {
            continue;
        };
        match ClientFrame::parse(text.as_str()).unwrap() {
            ClientFrame::Ack { .. } => continue,
            frame => return frame,
        }
    }
}

async fn msg_frame(conn: &mut Conn) -> (u64, String) {
    match frame(conn).await {
        ClientFrame::Msg { id, data } => (id, data.get().to_owned()),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn session(conn: &mut Conn, frame: SessionFrame) {
    conn.send(WsMessage::text(ServerFrame::Session(frame).to_text()))
        .await
        .unwrap();
}

async fn msg(conn: &mut Conn, seq: u64, data: &str) {
    let text = format!(r#"{{"type":"msg","seq":{seq},"data":{data}}}"#);
    conn.send(WsMessage::text(text)).await.unwrap();
}

async fn ack(conn: &mut Conn, id: u64) {
    conn.send(WsMessage::text(ServerFrame::Ack { id }.to_text()))
        .await
        .unwrap();
}

fn drop_abruptly(conn: Conn) {
    conn.get_ref().set_zero_linger().unwrap();
}

async fn event(events: &mut Events) -> Event {
    timeout(WAIT, events.next()).await.unwrap().unwrap()
}

async fn text(events: &mut Events) -> (u64, String) {
    match event(events).await {
        Event::Message {
            seq,
            message: Message::Text(text),
        } => (seq, text),
        other => panic!("expected a text message, got {other:?}"),
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetryConfig::testing()
        },
        ack_interval: Duration::from_millis(5),
        ..ClientOptions::default()
    }
}

/// A client connected through the first scripted connection, which answered `hello`.
async fn opened(options: ClientOptions) -> (TcpListener, Conn, SessionToken, Client, Events) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let token = SessionToken::generate();
    let server = async {
        let mut conn = accept(&listener).await;
        assert_eq!(frame(&mut conn).await, ClientFrame::Hello);
        session(
            &mut conn,
            SessionFrame {
                session: Some(token),
                resumed: false,
                last: 0,
                reason: None,
                lost: None,
            },
        )
        .await;
        conn
    };
    let (conn, connected) = tokio::join!(server, Client::connect(url, options));
    let (client, events) = connected.unwrap();
    (listener, conn, token, client, events)
}

#[tokio::test]
async fn a_dropped_connection_resumes_from_the_last_seq_and_resends_what_was_not_acknowledged() {
    let (listener, mut conn, token, client, mut events) = opened(options()).await;
    msg(&mut conn, 1, r#""a""#).await;
    msg(&mut conn, 2, r#"{"k":2}"#).await;
    assert_eq!(text(&mut events).await, (1, "a".to_owned()));
    assert_eq!(text(&mut events).await, (2, r#"{"k":2}"#.to_owned()));
    client.send("x").await.unwrap();
    client.send("y").await.unwrap();
    assert_eq!(msg_frame(&mut conn).await, (1, r#""x""#.to_owned()));
    assert_eq!(msg_frame(&mut conn).await, (2, r#""y""#.to_owned()));
    ack(&mut conn, 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop_abruptly(conn);

    let mut conn = accept(&listener).await;
    assert_eq!(
        frame(&mut conn).await,
        ClientFrame::Resume {
            session: token,
            last: 2
        }
    );
    session(
        &mut conn,
        SessionFrame {
            session: Some(token),
            resumed: true,
            last: 1,
            reason: None,
            lost: None,
        },
    )
    .await;
    // Only `y` was not acknowledged; it keeps its id.
    assert_eq!(msg_frame(&mut conn).await, (2, r#""y""#.to_owned()));
    // A replay overlapping what arrived is not delivered twice.
    msg(&mut conn, 2, r#"{"k":2}"#).await;
    msg(&mut conn, 3, r#""c""#).await;
    assert!(matches!(
        after_disconnect(&mut events).await,
        Event::Resumed
    ));
    assert_eq!(text(&mut events).await, (3, "c".to_owned()));
    client.send("z").await.unwrap();
    assert_eq!(msg_frame(&mut conn).await, (3, r#""z""#.to_owned()));
}

#[tokio::test]
async fn a_gap_reports_how_many_were_lost_and_resends_the_unprocessed_renumbered() {
    let (listener, mut conn, token, client, mut events) = opened(options()).await;
    msg(&mut conn, 1, r#""a""#).await;
    assert_eq!(text(&mut events).await, (1, "a".to_owned()));
    for m in ["x", "y", "z"] {
        client.send(m).await.unwrap();
    }
    for _ in 0..3 {
        msg_frame(&mut conn).await;
    }
    drop_abruptly(conn);

    let mut conn = accept(&listener).await;
    assert_eq!(
        frame(&mut conn).await,
        ClientFrame::Resume {
            session: token,
            last: 1
        }
    );
    let fresh = SessionToken::generate();
    session(
        &mut conn,
        SessionFrame {
            session: Some(fresh),
            resumed: false,
            last: 1,
            reason: Some(RefusalReason::Gap),
            lost: Some(4),
        },
    )
    .await;
    match after_disconnect(&mut events).await {
        Event::Restarted(restart) => {
            assert_eq!(restart.reason, RefusalReason::Gap);
            assert_eq!(restart.lost, Some(4));
            assert!(restart.unconfirmed.is_empty());
        }
        other => panic!("expected a restart, got {other:?}"),
    }
    // x was processed (old last 1); y and z are resent as 1 and 2 of the new session.
    assert_eq!(msg_frame(&mut conn).await, (1, r#""y""#.to_owned()));
    assert_eq!(msg_frame(&mut conn).await, (2, r#""z""#.to_owned()));
    msg(&mut conn, 1, r#""new""#).await;
    assert_eq!(text(&mut events).await, (1, "new".to_owned()));
    drop_abruptly(conn);

    // The next resume uses the new token.
    let mut conn = accept(&listener).await;
    assert_eq!(
        frame(&mut conn).await,
        ClientFrame::Resume {
            session: fresh,
            last: 1
        }
    );
}

#[tokio::test]
async fn an_expired_session_hands_back_unconfirmed_messages_instead_of_resending_them() {
    let (listener, mut conn, _token, client, mut events) = opened(options()).await;
    client.send("x").await.unwrap();
    msg_frame(&mut conn).await;
    drop_abruptly(conn);

    let mut conn = accept(&listener).await;
    assert!(matches!(frame(&mut conn).await, ClientFrame::Resume { .. }));
    session(
        &mut conn,
        SessionFrame {
            session: Some(SessionToken::generate()),
            resumed: false,
            last: 0,
            reason: Some(RefusalReason::Expired),
            lost: None,
        },
    )
    .await;
    match after_disconnect(&mut events).await {
        Event::Restarted(restart) => {
            assert_eq!(restart.reason, RefusalReason::Expired);
            assert_eq!(restart.lost, None);
            assert_eq!(restart.unconfirmed, [Message::text("x")]);
        }
        other => panic!("expected a restart, got {other:?}"),
    }
    client.send("after").await.unwrap();
    assert_eq!(msg_frame(&mut conn).await, (1, r#""after""#.to_owned()));
}

#[tokio::test]
async fn sending_waits_while_the_unacknowledged_buffer_is_full() {
    let mut options = options();
    options.max_unacknowledged = 2;
    let (_listener, mut conn, _token, client, _events) = opened(options).await;
    client.send("m1").await.unwrap();
    client.send("m2").await.unwrap();
    let third = tokio::spawn({
        let client = client.clone();
        async move { client.send("m3").await }
    });
    msg_frame(&mut conn).await;
    msg_frame(&mut conn).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!third.is_finished());
    ack(&mut conn, 1).await;
    timeout(WAIT, third).await.unwrap().unwrap().unwrap();
    assert_eq!(msg_frame(&mut conn).await, (3, r#""m3""#.to_owned()));
}

#[tokio::test]
async fn close_acknowledges_closes_with_1000_and_ends_the_events() {
    let (_listener, mut conn, _token, client, mut events) = opened(options()).await;
    msg(&mut conn, 1, r#""a""#).await;
    assert_eq!(text(&mut events).await, (1, "a".to_owned()));
    let closing = tokio::spawn({
        let client = client.clone();
        async move { client.close().await }
    });
    let mut acked = 0;
    loop {
        match timeout(WAIT, conn.next()).await.unwrap() {
            Some(Ok(WsMessage::Text(text))) => {
                if let Ok(ClientFrame::Ack { seq }) = ClientFrame::parse(text.as_str()) {
                    acked = seq;
                }
            }
            Some(Ok(WsMessage::Close(frame))) => {
                assert_eq!(u16::from(frame.unwrap().code), 1000);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acked, 1);
    drop(conn);
    timeout(WAIT, closing).await.unwrap().unwrap();
    assert!(matches!(event(&mut events).await, Event::Stopped(_)));
    assert!(timeout(WAIT, events.next()).await.unwrap().is_none());
    assert!(client.send("late").await.is_err());
}

#[tokio::test]
async fn the_service_is_ready_only_while_the_buffer_has_room() {
    use std::future::poll_fn;
    use tower_service::Service;

    let mut options = options();
    options.max_unacknowledged = 1;
    let (_listener, mut conn, _token, client, _events) = opened(options).await;
    let mut service = client.clone();
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    service.call(Message::text("m1")).await.unwrap();
    assert_eq!(msg_frame(&mut conn).await, (1, r#""m1""#.to_owned()));
    let not_ready = timeout(
        Duration::from_millis(50),
        poll_fn(|cx| service.poll_ready(cx)),
    )
    .await;
    assert!(not_ready.is_err(), "ready with a full buffer");
    ack(&mut conn, 1).await;
    timeout(WAIT, poll_fn(|cx| service.poll_ready(cx)))
        .await
        .unwrap()
        .unwrap();
    service.call(Message::binary(vec![1u8, 2])).await.unwrap();
    let binary = timeout(WAIT, conn.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(
        binary,
        WsMessage::binary(vec![0, 0, 0, 0, 0, 0, 0, 2, 1, 2])
    );
}

#[tokio::test]
async fn close_returns_even_when_nobody_reads_the_events() {
    let mut options = options();
    options.event_buffer = 1;
    let (_listener, mut conn, _token, client, events) = opened(options).await;
    for seq in 1..=3 {
        msg(&mut conn, seq, r#""unread""#).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let server = tokio::spawn(async move { while let Some(Ok(_)) = conn.next().await {} });
    timeout(WAIT, client.close()).await.expect("close in time");
    assert!(client.is_closed());
    drop(events);
    timeout(WAIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn unavailable_is_retried_with_the_same_first_frame_and_superseded_stops_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = async {
        let mut conn = accept(&listener).await;
        assert_eq!(frame(&mut conn).await, ClientFrame::Hello);
        session(
            &mut conn,
            SessionFrame {
                session: None,
                resumed: false,
                last: 0,
                reason: Some(RefusalReason::Unavailable),
                lost: None,
            },
        )
        .await;
        conn.close(Some(close_frame(1013, "try again later")))
            .await
            .unwrap();
        let mut conn = accept(&listener).await;
        assert_eq!(frame(&mut conn).await, ClientFrame::Hello);
        session(
            &mut conn,
            SessionFrame {
                session: Some(SessionToken::generate()),
                resumed: false,
                last: 0,
                reason: None,
                lost: None,
            },
        )
        .await;
        conn
    };
    let (mut conn, connected) = tokio::join!(server, Client::connect(url, options()));
    let (client, mut events) = connected.unwrap();
    client.send("x").await.unwrap();
    msg_frame(&mut conn).await;
    conn.close(Some(close_frame(1008, "superseded")))
        .await
        .unwrap();
    match event(&mut events).await {
        Event::Stopped(stopped) => {
            assert!(
                matches!(stopped.reason, StopReason::ServerClosed { code: 1008, .. }),
                "{stopped:?}"
            );
            assert_eq!(stopped.unconfirmed, [Message::text("x")]);
        }
        other => panic!("expected the client to stop, got {other:?}"),
    }
    assert!(client.send("late").await.is_err());
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }
}

fn opened_frame(token: SessionToken, resumed: bool) -> SessionFrame {
    SessionFrame {
        session: Some(token),
        resumed,
        last: 0,
        reason: None,
        lost: None,
    }
}

/// The next event that is not a [`Event::Disconnected`].
async fn after_disconnect(events: &mut Events) -> Event {
    loop {
        match event(events).await {
            Event::Disconnected(_) => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn connect_any_goes_to_the_next_endpoint_at_each_attempt_and_resumes_there() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let urls = [&a, &b].map(|l| format!("ws://{}/ws", l.local_addr().unwrap()));
    let token = SessionToken::generate();
    let server = async {
        let mut conn = accept(&a).await;
        assert_eq!(frame(&mut conn).await, ClientFrame::Hello);
        session(&mut conn, opened_frame(token, false)).await;
        conn
    };
    let (conn, connected) = tokio::join!(server, Client::connect_any(urls, options()));
    let (client, mut events) = connected.unwrap();
    drop_abruptly(conn);

    // The drop sends the client to the other node, with its session.
    let mut conn = accept(&b).await;
    assert_eq!(
        frame(&mut conn).await,
        ClientFrame::Resume {
            session: token,
            last: 0
        }
    );
    session(&mut conn, opened_frame(token, true)).await;
    match event(&mut events).await {
        Event::Disconnected(disconnect) => assert_eq!(disconnect.code, None, "{disconnect:?}"),
        other => panic!("expected the disconnect first, got {other:?}"),
    }
    assert!(matches!(event(&mut events).await, Event::Resumed));
    client.send("on b").await.unwrap();
    assert_eq!(msg_frame(&mut conn).await, (1, r#""on b""#.to_owned()));
    drop_abruptly(conn);

    // And back.
    let mut conn = accept(&a).await;
    assert!(matches!(frame(&mut conn).await, ClientFrame::Resume { .. }));
    assert!(
        Client::connect_any(Vec::<String>::new(), options())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_draining_servers_reconnect_hint_is_waited_instead_of_the_backoff() {
    let (listener, mut conn, token, _client, mut events) = opened(options()).await;
    conn.close(Some(close_frame(
        1001,
        "server going away; reconnect in 400 ms",
    )))
    .await
    .unwrap();
    let closed = std::time::Instant::now();
    let mut conn = accept(&listener).await;
    let waited = closed.elapsed();
    // The backoff alone would have come back within a few milliseconds.
    assert!(
        waited >= Duration::from_millis(400),
        "reconnected after {waited:?}"
    );
    assert!(
        matches!(frame(&mut conn).await, ClientFrame::Resume { session, .. } if session == token)
    );
    match event(&mut events).await {
        Event::Disconnected(disconnect) => {
            assert_eq!(disconnect.code, Some(1001));
            assert!(disconnect.reason.contains("reconnect in 400 ms"));
        }
        other => panic!("expected the disconnect, got {other:?}"),
    }
}

#[tokio::test]
async fn a_429_upgrade_is_retried_after_its_retry_after() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = async {
        let (tcp, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        #[allow(clippy::result_large_err)]
        fn too_many(_: &Request, _: Response) -> Result<Response, ErrorResponse> {
            let mut refusal = ErrorResponse::new(Some("slow down".into()));
            *refusal.status_mut() =
                tokio_tungstenite::tungstenite::http::StatusCode::TOO_MANY_REQUESTS;
            refusal
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            Err(refusal)
        }
        let _ = accept_hdr_async(tcp, too_many).await;
        let refused = std::time::Instant::now();
        let mut conn = accept(&listener).await;
        let waited = refused.elapsed();
        assert_eq!(frame(&mut conn).await, ClientFrame::Hello);
        session(&mut conn, opened_frame(SessionToken::generate(), false)).await;
        (conn, waited)
    };
    let ((_conn, waited), connected) = tokio::join!(server, Client::connect(url, options()));
    connected.expect("a 429 is retried, not fatal");
    assert!(
        waited >= Duration::from_millis(900),
        "came back after {waited:?}, before Retry-After"
    );
}
