//! A WebSocket route whose clients are who the application's authentication says they are.
//!
//! ```text
//! cargo run --example auth            # then open http://127.0.0.1:3000, token "secret-alice"
//! ```
//!
//! Browsers cannot set headers on a WebSocket, so the page offers its token as a second
//! subprotocol: `new WebSocket(url, ["wsguard.v1", "auth." + token])`. A middleware reads it from
//! `Sec-WebSocket-Protocol` before the upgrade and, for a known token, puts a
//! [`ClientIdentity`] on the request; with `connection.client_id = "authenticated"` the route
//! refuses any upgrade without one (`401`) and uses the identity as the client id: in the metrics'
//! client table, for dedup's `client` scope and rate limits, and to bind `wsguard.v1` sessions (a
//! session resumes only under the identity that opened it). The server answers the subprotocol
//! `wsguard.v1` only: the token is never echoed.
//!
//! The tokens here are a fixed table (`secret-alice`, `secret-bob`); a real service checks a
//! signed token or asks its identity provider in the same place.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{Html, Response};
use axum::routing::get;
use tower::service_fn;
use wsguard::axum::{BoxError, ClientIdentity, Inbound, Message, WsRoute};
use wsguard::config::{ClientIdSource, StabilityConfig};
use wsguard_examples::{ServerArgs, init_tracing, serve};

/// Who a token belongs to.
fn user_of(token: &str) -> Option<&'static str> {
    match token {
        "secret-alice" => Some("alice"),
        "secret-bob" => Some("bob"),
        _ => None,
    }
}

/// The application's authentication: a token offered as the subprotocol `auth.TOKEN`. A request
/// without a valid one goes on without an identity, and the WebSocket route refuses it.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("auth."))
        .and_then(user_of);
    if let Some(user) = user {
        request.extensions_mut().insert(ClientIdentity::new(user));
    }
    next.run(request).await
}

/// The app: `/` a page to try tokens on, `/ws` the authenticated route.
fn app() -> Router {
    let mut config = StabilityConfig::development();
    config.connection.client_id = ClientIdSource::Authenticated;
    config.session.enabled = true;
    let whoami = service_fn(|req: Inbound| async move {
        let text = req.text().unwrap_or_default().to_owned();
        Ok::<_, BoxError>(Some(Message::text(format!(
            "{} says: {text}",
            req.conn.client_id()
        ))))
    });
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/ws",
            WsRoute::new(whoami, config)
                .into_method_router()
                .layer(middleware::from_fn(authenticate)),
        )
}

#[tokio::main]
async fn main() {
    init_tracing();
    let args = ServerArgs::from_env().unwrap_or_else(|err| {
        eprintln!("{err}");
        std::process::exit(2);
    });
    let addr: SocketAddr = args.addr;
    println!("open http://{addr} and connect with the token secret-alice or secret-bob");
    if let Err(err) = serve(app(), addr).await {
        eprintln!("server failed: {err}");
        std::process::exit(1);
    }
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>wsguard: an authenticated WebSocket</title>
<p>Token: <input id="token" value="secret-alice"> <button id="go">Connect</button></p>
<pre id="log"></pre>
<script>
const log = (line) => { document.getElementById("log").textContent += line + "\n"; };
document.getElementById("go").onclick = () => {
  const token = document.getElementById("token").value;
  const url = `ws://${location.host}/ws`;
  // The token rides as a subprotocol: browsers cannot set headers on a WebSocket.
  const ws = new WebSocket(url, ["wsguard.v1", "auth." + token]);
  ws.onopen = () => {
    log(`open, protocol ${ws.protocol}`);
    ws.send(JSON.stringify({ type: "hello" }));
    ws.send(JSON.stringify({ type: "msg", id: 1, data: "hello" }));
  };
  ws.onmessage = (event) => log(event.data);
  ws.onclose = (event) => log(`closed ${event.code}`);
  ws.onerror = () => log("refused (a bad token is answered 401 before the upgrade)");
};
</script>
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::{Error, Message as WsMessage};

    async fn start() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { wsguard::axum::serve(listener, app()).await });
        addr
    }

    fn request(addr: SocketAddr, protocols: &'static str) -> axum::http::Request<()> {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(protocols),
        );
        request
    }

    #[tokio::test]
    async fn a_bad_token_is_refused_401_and_a_good_one_names_the_client() {
        let addr = start().await;
        match tokio_tungstenite::connect_async(request(addr, "wsguard.v1, auth.nope")).await {
            Err(Error::Http(response)) => assert_eq!(response.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
        }
        let (mut ws, response) =
            tokio_tungstenite::connect_async(request(addr, "wsguard.v1, auth.secret-bob"))
                .await
                .unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "wsguard.v1"
        );
        ws.send(WsMessage::text(r#"{"type":"hello"}"#))
            .await
            .unwrap();
        ws.send(WsMessage::text(r#"{"type":"msg","id":1,"data":"hi"}"#))
            .await
            .unwrap();
        loop {
            let frame = ws.next().await.unwrap().unwrap();
            if let WsMessage::Text(text) = frame
                && text.contains(r#""type":"msg""#)
            {
                assert!(text.contains("bob says: hi"), "{text}");
                break;
            }
        }
    }
}
