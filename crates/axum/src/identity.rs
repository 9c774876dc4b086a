//! The client identity an application's authentication establishes.

use std::fmt;
use std::sync::Arc;

/// Who the client of an upgrade request is, as the application's own authentication decided:
/// put it in the request's extensions (from a middleware or an extractor that checked a token)
/// and set `connection.client_id = "authenticated"`. The route then uses it as the connection's
/// client id — for the metrics' client table, the dedup `client` scope, per-client rate limits,
/// and the binding of `wsguard.v1` sessions (a session resumes only under the same identity) —
/// and refuses an upgrade without one with `401 Unauthorized`.
///
/// Unlike a header or a query parameter the client cannot choose it, so it is trusted without
/// `connection.client_id_trusted`.
///
/// Browsers cannot set headers on a WebSocket: a browser client can offer its token as a
/// subprotocol (`new WebSocket(url, ["wsguard.v1", "auth." + token])`), which the middleware
/// reads from `Sec-WebSocket-Protocol`. The server answers with `wsguard.v1` only, so the token
/// is not echoed. `examples/auth.rs` does this.
///
/// ```
/// use axum::{Router, extract::Request, http::StatusCode, middleware::{self, Next}, response::Response};
/// use wsguard_axum::{ClientIdentity, WsRoute};
/// use wsguard_config::{ClientIdSource, StabilityConfig};
///
/// async fn authenticate(mut request: Request, next: Next) -> Result<Response, StatusCode> {
///     let user = request
///         .headers()
///         .get("authorization")
///         .and_then(|v| v.to_str().ok())
///         .and_then(|v| v.strip_prefix("Bearer user-"))
///         .map(str::to_owned)
///         .ok_or(StatusCode::UNAUTHORIZED)?;
///     request.extensions_mut().insert(ClientIdentity::new(user));
///     Ok(next.run(request).await)
/// }
///
/// let mut config = StabilityConfig::production();
/// config.connection.client_id = ClientIdSource::Authenticated;
/// let echo = tower::service_fn(|req: wsguard_axum::Inbound| async move {
///     Ok::<_, wsguard_axum::BoxError>(Some(req.message))
/// });
/// let app: Router = Router::new()
///     .route("/ws", WsRoute::new(echo, config).into_method_router())
///     .layer(middleware::from_fn(authenticate));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientIdentity(Arc<str>);

impl ClientIdentity {
    /// The identity `id` (a user id, an account, a device: whatever the application limits and
    /// binds sessions by).
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The identity as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientIdentity").field(&self.0).finish()
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
