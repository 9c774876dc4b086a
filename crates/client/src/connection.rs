//! The background task that owns the socket: handshake, reconnection, sending, receiving.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use wsguard_session::SessionToken;
use wsguard_session::protocol::{
    ClientFrame, RefusalReason, SUBPROTOCOL, ServerFrame, SessionFrame, decode_binary,
};

use crate::error::{BoxError, ConnectError};
use crate::event::{Disconnect, Event, Restart, StopReason, Stopped};
use crate::inbox::{Arrival, Inbox};
use crate::message::Message;
use crate::options::{ClientOptions, unit_draw};
use crate::outbox::{Outbox, Outgoing};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a [`Client`](crate::Client) asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    Send(Outgoing),
    Close(oneshot::Sender<()>),
}

/// Why a connection ended.
enum Ending {
    /// Stop: `close()` (with whom to tell) or every handle dropped.
    Close(Option<oneshot::Sender<()>>),
    /// Gone without a word that forbids coming back: reconnect.
    Lost(BoxError),
    /// The server said not to come back.
    Final { code: u16, reason: String },
}

/// Why one connection attempt failed.
enum AttemptError {
    Retry(BoxError),
    Fatal(BoxError),
}

pub(crate) struct Connection {
    /// The endpoints, tried in turn: each new attempt goes to the next one.
    requests: Vec<Request>,
    /// The endpoint of the current or last attempt.
    endpoint: usize,
    /// How long the server asked the client to wait before its next attempt: a draining
    /// server's `1001` reason ("reconnect in N ms") or a `Retry-After` header.
    server_wait: Option<Duration>,
    /// The close frame of the connection that just ended, if the server sent one.
    last_close: Option<(u16, String)>,
    options: ClientOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    room: Arc<Semaphore>,
    token: Option<SessionToken>,
    inbox: Inbox,
    outbox: Outbox,
    closing: Option<oneshot::Sender<()>>,
}

impl Connection {
    /// The first connection and session.
    pub(crate) async fn open(
        requests: Vec<Request>,
        options: ClientOptions,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<Event>,
        room: Arc<Semaphore>,
    ) -> Result<(Self, Socket), ConnectError> {
        let inbox = Inbox::new(options.ack_every, options.ack_interval);
        let mut connection = Self {
            requests,
            endpoint: 0,
            server_wait: None,
            last_close: None,
            options,
            commands,
            events,
            room,
            token: None,
            inbox,
            outbox: Outbox::new(),
            closing: None,
        };
        let mut failed = 0;
        loop {
            match connection.attempt().await {
                Ok(socket) => return Ok((connection, socket)),
                Err(AttemptError::Fatal(source)) => {
                    return Err(ConnectError {
                        attempts: failed + 1,
                        source,
                    });
                }
                Err(AttemptError::Retry(source)) => {
                    failed += 1;
                    if connection.options.gives_up_after(failed) {
                        return Err(ConnectError {
                            attempts: failed,
                            source,
                        });
                    }
                    let wait = connection.wait_before(failed - 1);
                    sleep(wait).await;
                    connection.next_endpoint();
                }
            }
        }
    }

    pub(crate) async fn run(mut self, mut socket: Socket) {
        let (reason, done) = loop {
            match self.serve(&mut socket).await {
                Ending::Close(done) => {
                    self.close_socket(socket).await;
                    break (StopReason::Closed, done);
                }
                Ending::Final { code, reason } => {
                    break (StopReason::ServerClosed { code, reason }, None);
                }
                Ending::Lost(error) => {
                    tracing::debug!(%error, "wsguard.v1 connection lost; reconnecting");
                    drop(socket);
                    let (code, reason) = match self.last_close.take() {
                        Some((code, reason)) => (Some(code), reason),
                        None => (None, error.to_string()),
                    };
                    self.emit(Event::Disconnected(Disconnect { code, reason }))
                        .await;
                    match self.reconnect(error).await {
                        Ok(next) => socket = next,
                        Err(Ending::Close(done)) => break (StopReason::Closed, done),
                        Err(Ending::Final { code, reason }) => {
                            break (StopReason::ServerClosed { code, reason }, None);
                        }
                        Err(Ending::Lost(error)) => {
                            let gave_up = match error.downcast::<ConnectError>() {
                                Ok(error) => *error,
                                Err(source) => ConnectError {
                                    attempts: 0,
                                    source,
                                },
                            };
                            break (StopReason::GaveUp(gave_up), None);
                        }
                    }
                }
            }
        };
        self.stop(reason, done).await;
    }

    /// Releases every waiting sender, tells `close()` it is done, then reports the end (which
    /// waits for room in the events buffer, so it comes last).
    async fn stop(&mut self, reason: StopReason, done: Option<oneshot::Sender<()>>) {
        self.room.close();
        self.commands.close();
        let mut unconfirmed = self.outbox.take();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Send(out) => unconfirmed.push(out.message),
                Command::Close(done) => drop(done.send(())),
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        let _ = self
            .events
            .send(Event::Stopped(Stopped {
                reason,
                unconfirmed,
            }))
            .await;
    }

    /// Reconnects with backoff until a session is open; an `Err` is why the client stops.
    async fn reconnect(&mut self, mut error: BoxError) -> Result<Socket, Ending> {
        let mut failed = 0;
        loop {
            if self.options.gives_up_after(failed) {
                return Err(Ending::Lost(
                    ConnectError {
                        attempts: failed,
                        source: error,
                    }
                    .into(),
                ));
            }
            let wake = Instant::now() + self.wait_before(failed);
            loop {
                tokio::select! {
                    biased;
                    command = self.commands.recv() => match command {
                        // Numbered now, sent with the resend once a session is open.
                        Some(Command::Send(out)) => drop(self.outbox.push(out)),
                        Some(Command::Close(done)) => return Err(Ending::Close(Some(done))),
                        None => return Err(Ending::Close(None)),
                    },
                    () = sleep_until(wake) => break,
                }
            }
            self.next_endpoint();
            match self.attempt().await {
                Ok(socket) => return Ok(socket),
                Err(AttemptError::Fatal(source)) => {
                    return Err(Ending::Lost(
                        ConnectError {
                            attempts: failed + 1,
                            source,
                        }
                        .into(),
                    ));
                }
                Err(AttemptError::Retry(source)) => {
                    failed += 1;
                    error = source;
                }
            }
        }
    }

    /// One connection: upgrade, `hello` or `resume`, the `session` frame, the resend.
    async fn attempt(&mut self) -> Result<Socket, AttemptError> {
        let first = match self.token {
            Some(session) => ClientFrame::Resume {
                session,
                last: self.inbox.last(),
            },
            None => ClientFrame::Hello,
        };
        let mut retry_after = None;
        let handshake = async {
            let (mut socket, response) = connect_async(self.request()).await.map_err(|e| {
                retry_after = retry_after_header(&e);
                upgrade_error(e)
            })?;
            if response.headers().get("sec-websocket-protocol")
                != Some(&HeaderValue::from_static(SUBPROTOCOL))
            {
                return Err(AttemptError::Fatal(
                    "the server does not speak wsguard.v1".into(),
                ));
            }
            socket
                .send(WsMessage::text(first.to_text()))
                .await
                .map_err(|e| AttemptError::Retry(e.into()))?;
            let frame = session_frame(&mut socket).await?;
            Ok((socket, frame))
        };
        let answered = timeout(self.options.connect_timeout, handshake).await;
        self.server_wait = retry_after;
        let (mut socket, frame) =
            answered.map_err(|_| AttemptError::Retry("connection attempt timed out".into()))??;
        self.begin(&first, frame).await?;
        for frame in self.outbox.frames().collect::<Vec<_>>() {
            socket
                .feed(frame)
                .await
                .map_err(|e| AttemptError::Retry(e.into()))?;
        }
        socket
            .flush()
            .await
            .map_err(|e| AttemptError::Retry(e.into()))?;
        Ok(socket)
    }

    /// Applies the server's answer to the first frame.
    async fn begin(
        &mut self,
        first: &ClientFrame,
        frame: SessionFrame,
    ) -> Result<(), AttemptError> {
        let Some(token) = frame.session else {
            // `unavailable`: the server closes with 1013; try again later with the same frame.
            return Err(AttemptError::Retry("no session available (1013)".into()));
        };
        let resuming = matches!(first, ClientFrame::Resume { .. });
        self.token = Some(token);
        if frame.resumed {
            self.outbox.acknowledge(frame.last);
            self.inbox.resumed();
            self.emit(Event::Resumed).await;
            return Ok(());
        }
        self.inbox.restart();
        if !resuming {
            return Ok(());
        }
        let reason = frame.reason.unwrap_or(RefusalReason::Unknown);
        let unconfirmed = if reason == RefusalReason::Gap {
            self.outbox.acknowledge(frame.last);
            self.outbox.renumber();
            Vec::new()
        } else if self.options.resend_unconfirmed {
            self.outbox.renumber();
            Vec::new()
        } else {
            self.outbox.take()
        };
        tracing::debug!(%reason, lost = ?frame.lost, "wsguard.v1 resume refused; new session");
        self.emit(Event::Restarted(Restart {
            reason,
            lost: frame.lost,
            unconfirmed,
        }))
        .await;
        Ok(())
    }

    async fn emit(&self, event: Event) {
        // A dropped `Events` stream means nobody listens; the client keeps working.
        let _ = self.events.send(event).await;
    }

    /// The wait before attempt number `retry` (0 for the first) of a reconnection: what the
    /// server asked for if it did, otherwise the backoff.
    fn wait_before(&mut self, retry: u32) -> Duration {
        let backoff = self.options.backoff(retry, unit_draw());
        match self.server_wait.take() {
            Some(asked) => asked,
            None => backoff,
        }
    }

    /// Moves to the next endpoint, if there are several.
    fn next_endpoint(&mut self) {
        self.endpoint = (self.endpoint + 1) % self.requests.len().max(1);
    }

    /// The upgrade request of one attempt, offering `wsguard.v1`.
    fn request(&self) -> Request {
        let template = &self.requests[self.endpoint % self.requests.len()];
        let mut request = Request::new(());
        *request.method_mut() = template.method().clone();
        *request.uri_mut() = template.uri().clone();
        *request.version_mut() = template.version();
        *request.headers_mut() = template.headers().clone();
        // A fresh key and the defaults tungstenite adds, for anything the template lacks.
        if let Ok(fresh) = template.uri().clone().into_client_request() {
            for (name, value) in fresh.headers() {
                if name == "sec-websocket-key" || !request.headers().contains_key(name) {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
            }
        }
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        request
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, socket: &mut Socket) -> Ending {
        loop {
            if let Some(done) = self.closing.take() {
                return Ending::Close(Some(done));
            }
            let listening = self.events.is_closed() || self.events.capacity() > 0;
            let deadline = self.inbox.ack_deadline();
            let full = (!listening).then(|| self.events.clone());
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Send(out)) => {
                        if let Err(e) = self.send_batch(socket, out).await {
                            return Ending::Lost(e.into());
                        }
                    }
                    Some(Command::Close(done)) => return Ending::Close(Some(done)),
                    None => return Ending::Close(None),
                },
                frame = socket.next(), if listening => {
                    if let Some(ending) = self.receive(socket, frame).await {
                        return ending;
                    }
                }
                // Wakes the loop once the application takes an event.
                permit = async { full.as_ref().expect("not listening").reserve().await }, if !listening => {
                    drop(permit);
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let seq = self.inbox.ack();
                    if let Err(e) = socket.send(ack(seq)).await {
                        return Ending::Lost(e.into());
                    }
                }
            }
        }
    }

    /// Sends `first` and whatever else is already queued, with one flush. A close found in the
    /// queue is kept for the serving loop.
    async fn send_batch(
        &mut self,
        socket: &mut Socket,
        first: Outgoing,
    ) -> Result<(), tungstenite::Error> {
        socket.feed(self.outbox.push(first)).await?;
        for _ in 0..64 {
            match self.commands.try_recv() {
                Ok(Command::Send(out)) => socket.feed(self.outbox.push(out)).await?,
                Ok(Command::Close(done)) => {
                    self.closing = Some(done);
                    break;
                }
                Err(_) => break,
            }
        }
        socket.flush().await
    }

    /// Handles one read from the socket; `Some` ends the connection.
    async fn receive(
        &mut self,
        socket: &mut Socket,
        frame: Option<Result<WsMessage, tungstenite::Error>>,
    ) -> Option<Ending> {
        let frame = match frame {
            None => return Some(Ending::Lost("the connection ended".into())),
            Some(Err(e)) => return Some(Ending::Lost(e.into())),
            Some(Ok(frame)) => frame,
        };
        let (seq, message) = match frame {
            WsMessage::Text(text) => match ServerFrame::parse(text.as_str()) {
                Ok(ServerFrame::Msg { seq, data }) => (seq, Message::from_data(&data)),
                Ok(ServerFrame::Ack { id }) => {
                    self.outbox.acknowledge(id);
                    return None;
                }
                Ok(ServerFrame::Session(_)) => {
                    return Some(Ending::Lost("a second session frame".into()));
                }
                Err(_) => {
                    let _ = self.events.try_send(Event::Unnumbered(text.to_string()));
                    return None;
                }
            },
            WsMessage::Binary(bytes) => match decode_binary(&bytes) {
                Ok((seq, payload)) => (seq, Message::Binary(payload)),
                Err(e) => return Some(Ending::Lost(e.into())),
            },
            WsMessage::Close(frame) => {
                if let Some(frame) = &frame {
                    self.server_wait = reconnect_hint(u16::from(frame.code), &frame.reason);
                    self.last_close = Some((u16::from(frame.code), frame.reason.to_string()));
                }
                return Some(closed_by_server(frame));
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return None,
        };
        match self.inbox.arrive(seq, Instant::now()) {
            Arrival::Seen => return None,
            Arrival::Skipped => {
                return Some(Ending::Lost(
                    format!(
                        "server seq {seq} skipped a number after {}",
                        self.inbox.last()
                    )
                    .into(),
                ));
            }
            Arrival::Next => {}
        }
        let _ = self.events.try_send(Event::Message { seq, message });
        if let Some(seq) = self.inbox.ack_due()
            && let Err(e) = socket.send(ack(seq)).await
        {
            return Some(Ending::Lost(e.into()));
        }
        None
    }

    /// Acknowledges what arrived and closes with 1000, waiting briefly for the server's answer.
    async fn close_socket(&mut self, mut socket: Socket) {
        let seq = self.inbox.ack();
        let _ = socket.feed(ack(seq)).await;
        let _ = socket
            .send(WsMessage::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = timeout(self.options.connect_timeout, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}

fn ack(seq: u64) -> WsMessage {
    WsMessage::text(ClientFrame::Ack { seq }.to_text())
}

/// Reads up to the `session` frame.
async fn session_frame(socket: &mut Socket) -> Result<SessionFrame, AttemptError> {
    loop {
        match socket.next().await {
            None => {
                return Err(AttemptError::Retry(
                    "closed before the session frame".into(),
                ));
            }
            Some(Err(e)) => return Err(AttemptError::Retry(e.into())),
            Some(Ok(WsMessage::Text(text))) => match ServerFrame::parse(text.as_str()) {
                Ok(ServerFrame::Session(frame)) => return Ok(frame),
                _ => {
                    return Err(AttemptError::Fatal(
                        format!("expected the session frame, got {text}").into(),
                    ));
                }
            },
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(match closed_by_server(frame) {
                    Ending::Final { code, reason } => AttemptError::Fatal(
                        format!("the server closed with {code}: {reason}").into(),
                    ),
                    _ => AttemptError::Retry("closed before the session frame".into()),
                });
            }
            Some(Ok(_)) => {}
        }
    }
}

/// A close frame from the server: final if its code says not to come back.
fn closed_by_server(frame: Option<CloseFrame>) -> Ending {
    let Some(frame) = frame else {
        return Ending::Lost("closed without a code".into());
    };
    let code = u16::from(frame.code);
    let reason = frame.reason.to_string();
    if is_final(code, &reason) {
        Ending::Final { code, reason }
    } else {
        Ending::Lost(format!("the server closed with {code}: {reason}").into())
    }
}

/// Codes after which reconnecting would only repeat the failure, or the server ended the
/// session on purpose; everything else (going away, a slow reader's 1008, try again later,
/// internal errors) is reconnected.
fn is_final(code: u16, reason: &str) -> bool {
    matches!(code, 1000 | 1002 | 1003 | 1007 | 1009 | 1010)
        || (code == 1008 && reason == "superseded")
}

/// The delay a draining wsguard server puts in its `1001` close reason: "... reconnect in N ms".
fn reconnect_hint(code: u16, reason: &str) -> Option<Duration> {
    if code != 1001 {
        return None;
    }
    let (_, after) = reason.rsplit_once("reconnect in ")?;
    let millis = after.strip_suffix(" ms")?.trim().parse::<u64>().ok()?;
    // A hint is a spread over the drain's reconnect window, never more than a minute.
    Some(Duration::from_millis(millis.min(60_000)))
}

/// A refused upgrade's `Retry-After` in seconds (429 and 503 carry one), at most a minute.
fn retry_after_header(error: &tungstenite::Error) -> Option<Duration> {
    let tungstenite::Error::Http(response) = error else {
        return None;
    };
    let seconds = response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(seconds.min(60)))
}

fn upgrade_error(error: tungstenite::Error) -> AttemptError {
    match error {
        // Too many requests: the server limits how fast clients come; wait and come back.
        tungstenite::Error::Http(response) if response.status().as_u16() == 429 => {
            AttemptError::Retry(format!("upgrade refused: {}", response.status()).into())
        }
        tungstenite::Error::Http(response) if response.status().is_client_error() => {
            AttemptError::Fatal(format!("upgrade refused: {}", response.status()).into())
        }
        tungstenite::Error::Url(e) => AttemptError::Fatal(e.into()),
        other => AttemptError::Retry(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_hint_is_read_only_from_a_1001_reason_and_capped() {
        let hint = |code, reason| reconnect_hint(code, reason);
        assert_eq!(
            hint(1001, "server going away; reconnect in 1234 ms"),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            hint(1001, "reconnect in 99999999 ms"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(hint(1011, "reconnect in 10 ms"), None);
        assert_eq!(hint(1001, "idle timeout"), None);
        assert_eq!(hint(1001, "reconnect in soon ms"), None);
        assert_eq!(hint(1001, "reconnect in -5 ms"), None);
    }

    #[test]
    fn only_closes_that_say_do_not_come_back_are_final() {
        for (code, reason) in [
            (1000, ""),
            (1002, "bad frame"),
            (1009, "too big"),
            (1008, "superseded"),
        ] {
            assert!(is_final(code, reason), "{code} {reason}");
        }
        for (code, reason) in [
            (1001, "reconnect in 2s"),
            (1008, "send queue overflow (slow reader)"),
            (1011, "session store failed"),
            (1013, "try again"),
            (4000, "app"),
        ] {
            assert!(!is_final(code, reason), "{code} {reason}");
        }
    }
}
