//! A client identity set by the application's authentication (`ClientIdentity`, with
//! `connection.client_id = "authenticated"`): a browser-style token offered as a subprotocol,
//! checked by a middleware before the upgrade, over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tower::service_fn;
use wsguard_axum::{BoxError, ClientIdentity, Inbound, Message, WsRoute};
use wsguard_config::{ClientIdSource, StabilityConfig};

mod support;

const WAIT: Duration = Duration::from_secs(10);

/// The application's authentication: a token offered as the subprotocol `auth.TOKEN`.
async fn authenticate(mut request: Request, next: Next) -> Result<Response, StatusCode> {
    let user = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("auth."))
        .and_then(|token| match token {
            "secret-alice" => Some("alice"),
            "secret-bob" => Some("bob"),
            _ => None,
        });
    if let Some(user) = user {
        request.extensions_mut().insert(ClientIdentity::new(user));
    }
    // A bad or missing token goes on without an identity: the route refuses it with 401.
    Ok(next.run(request).await)
}

async fn server() -> SocketAddr {
    let mut config = StabilityConfig::testing();
    config.connection.client_id = ClientIdSource::Authenticated;
    config.session.enabled = true;
    // The handler answers with the client id the route gave the message.
    let whoami = service_fn(|req: Inbound| async move {
        Ok::<_, BoxError>(Some(Message::text(format!("\"{}\"", req.conn.client_id()))))
    });
    let app = Router::new()
        .route("/ws", WsRoute::new(whoami, config).into_method_router())
        .layer(middleware::from_fn(authenticate));
    support::serve(app).await
}

async fn upgrade(
    addr: SocketAddr,
    protocols: &'static str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Option<String>,
    ),
    WsError,
> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(protocols),
    );
    let (socket, response) = timeout(WAIT, connect_async(request)).await.unwrap()?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((socket, chosen))
}

async fn text(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    loop {
        match timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WsMessage::Text(text) => return text.to_string(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_upgrade_without_an_identity_is_refused_401() {
    let addr = server().await;
    for protocols in ["wsguard.v1", "wsguard.v1, auth.wrong"] {
        match upgrade(addr, protocols).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 401, "{protocols}"),
            other => panic!("{protocols}: expected 401, got {:?}", other.map(|(_, p)| p)),
        }
    }
}

#[tokio::test]
async fn the_identity_is_the_client_id_and_the_token_is_not_echoed() {
    let addr = server().await;
    let (mut socket, chosen) = upgrade(addr, "wsguard.v1, auth.secret-alice")
        .await
        .unwrap();
    assert_eq!(
        chosen.as_deref(),
        Some("wsguard.v1"),
        "only the protocol is echoed"
    );
    socket
        .send(WsMessage::text(r#"{"type":"hello"}"#))
        .await
        .unwrap();
    assert!(text(&mut socket).await.contains(r#""type":"session""#));
    socket
        .send(WsMessage::text(r#"{"type":"msg","id":1,"data":"who"}"#))
        .await
        .unwrap();
    loop {
        let frame = text(&mut socket).await;
        if frame.contains(r#""type":"msg""#) {
            assert!(frame.contains(r#""data":"alice""#), "{frame}");
            break;
        }
    }
}

#[tokio::test]
async fn a_session_resumes_only_under_the_identity_it_was_opened_with() {
    let addr = server().await;
    let (mut alice, _) = upgrade(addr, "wsguard.v1, auth.secret-alice")
        .await
        .unwrap();
    alice
        .send(WsMessage::text(r#"{"type":"hello"}"#))
        .await
        .unwrap();
    let frame: serde_json::Value = serde_json::from_str(&text(&mut alice).await).unwrap();
    let token = frame["session"].as_str().unwrap().to_owned();
    drop(alice);

    // Bob holding Alice's token: refused as unknown, with a session of his own.
    let (mut bob, _) = upgrade(addr, "wsguard.v1, auth.secret-bob").await.unwrap();
    bob.send(WsMessage::text(format!(
        r#"{{"type":"resume","session":"{token}","last":0}}"#
    )))
    .await
    .unwrap();
    let frame: serde_json::Value = serde_json::from_str(&text(&mut bob).await).unwrap();
    assert_eq!(frame["resumed"], false, "{frame}");
    assert_eq!(frame["reason"], "unknown", "{frame}");

    // Alice herself resumes it.
    let (mut alice, _) = upgrade(addr, "wsguard.v1, auth.secret-alice")
        .await
        .unwrap();
    alice
        .send(WsMessage::text(format!(
            r#"{{"type":"resume","session":"{token}","last":0}}"#
        )))
        .await
        .unwrap();
    let frame: serde_json::Value = serde_json::from_str(&text(&mut alice).await).unwrap();
    assert_eq!(frame["resumed"], true, "{frame}");
}
