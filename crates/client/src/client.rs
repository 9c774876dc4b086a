use std::fmt;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use crate::connection::{Command, Connection};
use crate::error::{Closed, ConnectError};
use crate::event::Event;
use crate::message::Message;
use crate::options::ClientOptions;
use crate::outbox::Outgoing;

type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send + Sync>>;

/// A handle on a `wsguard.v1` connection that survives disconnects; cheap to clone.
///
/// It sends with [`send`](Self::send) or as a `tower::Service<Message>`; both wait while
/// [`max_unacknowledged`](ClientOptions::max_unacknowledged) messages are unacknowledged. What
/// the server sends arrives on the [`Events`] stream returned with it. A background task owns
/// the socket; it stops on [`close`](Self::close) or when every handle is dropped.
pub struct Client {
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
    acquiring: Option<Acquire>,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    room: Arc<Semaphore>,
}

impl Client {
    /// Connects to `request` (a `ws://` URL, or a request with headers) offering `wsguard.v1`,
    /// opens a session and starts the background task.
    ///
    /// Failed attempts are retried as [`ClientOptions::retry`] says; an answer that retrying
    /// cannot fix (a refused upgrade, a server that does not speak `wsguard.v1`) fails at once.
    pub async fn connect(
        request: impl IntoClientRequest,
        options: ClientOptions,
    ) -> Result<(Client, Events), ConnectError> {
        let request = request.into_client_request().map_err(|e| ConnectError {
            attempts: 0,
            source: e.into(),
        })?;
        Self::start(vec![request], options).await
    }

    /// Connects to the first of several endpoints (nodes of one service sharing a session
    /// store) and, at each later attempt, to the next one in turn: a reconnection after a drop
    /// or a drain goes to another node, and a node that does not answer is skipped after one
    /// attempt. Fails at once if `requests` is empty or one of them is not a valid request.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), wsguard_client::error::ConnectError> {
    /// use wsguard_client::{Client, ClientOptions};
    ///
    /// let nodes = ["ws://10.0.0.1:3000/ws", "ws://10.0.0.2:3000/ws"];
    /// let (client, events) = Client::connect_any(nodes, ClientOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_any<R: IntoClientRequest>(
        requests: impl IntoIterator<Item = R>,
        options: ClientOptions,
    ) -> Result<(Client, Events), ConnectError> {
        let requests = requests
            .into_iter()
            .map(|r| r.into_client_request())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConnectError {
                attempts: 0,
                source: e.into(),
            })?;
        if requests.is_empty() {
            return Err(ConnectError {
                attempts: 0,
                source: "no endpoint to connect to".into(),
            });
        }
        Self::start(requests, options).await
    }

    async fn start(
        requests: Vec<Request>,
        options: ClientOptions,
    ) -> Result<(Client, Events), ConnectError> {
        let room = Arc::new(Semaphore::new(options.max_unacknowledged.max(1)));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::channel(options.event_buffer.max(1));
        let (connection, socket) =
            Connection::open(requests, options, commands_rx, events_tx, room.clone()).await?;
        tokio::spawn(connection.run(socket));
        let client = Client {
            shared: Arc::new(Shared { commands, room }),
            permit: None,
            acquiring: None,
        };
        Ok((client, Events { events }))
    }

    /// Sends `message`, waiting while the unacknowledged buffer is full. `Ok` means the client
    /// holds it until the server acknowledges it, across reconnects.
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), Closed> {
        let permit = self
            .shared
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Closed(()))?;
        self.enqueue(message.into(), permit)
    }

    fn enqueue(&self, message: Message, permit: OwnedSemaphorePermit) -> Result<(), Closed> {
        self.shared
            .commands
            .send(Command::Send(Outgoing { message, permit }))
            .map_err(|_| Closed(()))
    }

    /// Acknowledges what was received, closes the connection with `1000` and stops the
    /// background task; the events stream ends with [`Event::Stopped`]. Messages still
    /// unacknowledged are listed there.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.shared.commands.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }

    /// Whether the background task has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.commands.is_closed()
    }
}

impl Clone for Client {
    /// Another handle on the same connection; readiness is not cloned.
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            permit: None,
            acquiring: None,
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("room", &self.shared.room.available_permits())
            .field("ready", &self.permit.is_some())
            .finish()
    }
}

/// Ready once the unacknowledged buffer has room for one message, which `call` then uses.
impl tower_service::Service<Message> for Client {
    type Response = ();
    type Error = Closed;
    type Future = Ready<Result<(), Closed>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        if self.acquiring.is_none() {
            match self.shared.room.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.permit = Some(permit);
                    return Poll::Ready(Ok(()));
                }
                Err(TryAcquireError::Closed) => return Poll::Ready(Err(Closed(()))),
                Err(TryAcquireError::NoPermits) => {
                    self.acquiring = Some(Box::pin(self.shared.room.clone().acquire_owned()));
                }
            }
        }
        let acquiring = self.acquiring.as_mut().expect("set above");
        let permit = std::task::ready!(acquiring.as_mut().poll(cx));
        self.acquiring = None;
        match permit {
            Ok(permit) => {
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Err(Closed(()))),
        }
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let permit = self
            .permit
            .take()
            .expect("poll_ready must return Ready(Ok) before call");
        ready(self.enqueue(message, permit))
    }
}

/// The server's messages and the connection's news, in order; ends after [`Event::Stopped`].
#[derive(Debug)]
pub struct Events {
    events: mpsc::Receiver<Event>,
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}
