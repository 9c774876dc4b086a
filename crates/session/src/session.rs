//! A connection's handle on its session.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;
use wsguard_config::SessionConfig;

use crate::data::MessageData;
use crate::error::SessionGone;
use crate::inbound::{Accept, Admit, Processing};
use crate::sessions::{CachedConfig, Local, Sessions};
use crate::store::{
    Appended, Logged, SessionStore, SessionStoreError, SharedSessionStore, StoreFuture, Target,
};
use crate::token::SessionToken;
use crate::wake::Wake;

/// A connection's handle on its session. Dropping it detaches the session (unless a newer
/// connection attached it since), which then expires after the TTL unless resumed.
pub struct Session<S = SharedSessionStore> {
    sessions: Sessions<S>,
    local: Arc<Local>,
    attachment: u64,
    wake: Arc<Wake>,
    ack_sent: AtomicU64,
    config: CachedConfig,
    /// A count on `local` that a processed message gave back, for the next one to hold: one
    /// count moves back and forth instead of one taken and released per message.
    spare: Option<Arc<Local>>,
}

impl<S> fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &self.local.token)
            .field("attachment", &self.attachment)
            .finish_non_exhaustive()
    }
}

impl<S> Session<S> {
    pub(crate) fn new(
        sessions: Sessions<S>,
        local: Arc<Local>,
        attachment: u64,
        wake: Arc<Wake>,
    ) -> Self {
        Self {
            sessions,
            local,
            attachment,
            wake,
            ack_sent: AtomicU64::new(0),
            config: CachedConfig::default(),
            spare: None,
        }
    }
}

impl<S: SessionStore> Session<S> {
    /// The session's token.
    pub fn token(&self) -> SessionToken {
        self.local.token
    }

    /// Logs an outbound message and returns its `seq`; the connection sends it when
    /// [`changed`](Self::changed) wakes it, like any other logged message.
    pub async fn append(&self, payload: impl Into<MessageData>) -> Result<u64, SessionGone> {
        let token = self.local.token;
        let appended = self
            .sessions
            .start_append(Target::Session(&token), payload.into())
            .await
            .map_err(SessionGone::store)?;
        self.sessions.appended(appended, None)
    }

    /// Logs a message this connection writes itself if it can (a reply it produced): as
    /// [`append`](Self::append), but without waiting and without waking this handle for it.
    ///
    /// `Some(seq)` when the store answered at once (the memory store): the connection writes
    /// the message if `seq` is the next one it owes its client, else reads it from the log.
    /// `None` when the store answers later (a network store): the append finishes in the
    /// background in its place, and this handle is woken for it like for any other message
    /// (a failure is logged). Needs a tokio runtime for that case.
    pub fn append_own(
        &mut self,
        payload: impl Into<MessageData>,
    ) -> Result<Option<u64>, SessionGone> {
        let token = self.local.token;
        let payload = payload.into();
        self.append_here(|store, config| store.append(Target::Session(&token), payload, config))
    }

    /// Logs the reply to a client message and marks that message processed: as
    /// [`append_own`](Self::append_own) then [`Processing::processed`], in one store step
    /// when the mark moves ([`SessionStore::append_processed`]; the memory store takes its
    /// lock once).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use wsguard_config::SessionConfig;
    /// use wsguard_session::protocol::ClientFrame;
    /// use wsguard_session::{Accept, Opened, Sessions};
    ///
    /// let sessions = Sessions::new(SessionConfig::production());
    /// let Some(Opened::Attached { mut session, .. }) = sessions.open(&ClientFrame::Hello, None).await
    /// else {
    ///     unreachable!("a hello opens a session")
    /// };
    /// let Accept::New(processing) = session.accept(1) else { unreachable!("id 1 is new") };
    /// // The handler ran; its reply is logged and message 1 is processed.
    /// assert_eq!(session.append_reply("pong", processing).unwrap(), Some(1));
    /// assert_eq!(session.processed(), 1);
    /// assert_eq!(session.ack_to_send(), Some(1));
    /// # }
    /// ```
    pub fn append_reply(
        &mut self,
        payload: impl Into<MessageData>,
        processing: Processing,
    ) -> Result<Option<u64>, SessionGone> {
        if !processing.is_of(&self.local) {
            // A message of another session: two steps, each on its own session.
            let seq = self.append_own(payload);
            processing.processed();
            return seq;
        }
        let (mark, local) = processing.finish();
        self.spare = local;
        // A mark that did not move (an earlier id is still in flight) has nothing to record.
        let Some(mark) = mark else {
            return self.append_own(payload);
        };
        let token = self.local.token;
        let payload = payload.into();
        self.append_here(|store, config| store.append_processed(&token, payload, mark, config))
    }

    /// Starts `append` on the store with the current settings and takes its answer if it is
    /// there at once, without waking this handle (see [`append_own`](Self::append_own)).
    fn append_here(
        &mut self,
        append: impl FnOnce(&S, &SessionConfig) -> StoreFuture<Option<Appended>>,
    ) -> Result<Option<u64>, SessionGone> {
        let (sessions, local, wake) = (&self.sessions, &self.local, &self.wake);
        self.config.with(sessions, |config| {
            sessions.append_now(append(&sessions.shared.store, config), Some((local, wake)))
        })
    }

    /// At most `max` logged messages after `seq`, in order: what the connection sends next.
    pub async fn read_after(&self, seq: u64, max: usize) -> Result<Vec<Logged>, SessionStoreError> {
        self.sessions
            .shared
            .store
            .read_after(&self.local.token, seq, max)
            .await
    }

    /// The highest `seq` logged while this connection held the session, as far as this node
    /// saw.
    pub fn last_logged(&self) -> u64 {
        self.local.last_seq.load(Ordering::Acquire)
    }

    /// Waits until the session changed since the last call: a message was logged (other than
    /// by [`append_own`](Self::append_own) answered at once), a newer connection superseded
    /// this one (check [`is_superseded`](Self::is_superseded)), or the store reported on it.
    /// Cancel-safe.
    pub async fn changed(&mut self) {
        poll_fn(|cx| self.wake.poll_take(cx)).await
    }

    /// The client acknowledged every message up to `seq`: frees them.
    pub async fn ack(&self, seq: u64) -> Result<(), SessionStoreError> {
        self.sessions
            .shared
            .store
            .trim(&self.local.token, seq)
            .await
    }

    /// Admits client message `id`: new (run the handler), already processed (skip it), or out
    /// of order.
    pub fn accept(&mut self, id: u64) -> Accept {
        match self.local.inbound().admit(id) {
            Admit::New => Accept::New(Processing {
                id,
                local: Some(self.spare.take().unwrap_or_else(|| Arc::clone(&self.local))),
            }),
            Admit::AlreadyProcessed => Accept::AlreadyProcessed,
            Admit::OutOfOrder { expected } => Accept::OutOfOrder { expected },
        }
    }

    /// The highest client id processed with every one before it.
    pub fn processed(&self) -> u64 {
        self.local.inbound().mark()
    }

    /// The `ack` to send now, if the mark moved since the last one this handle returned. Call it
    /// every `ack_interval` (acks are batched) and before closing.
    ///
    /// With a store that confirms marks later ([`SessionStore::confirms_marks`]: Redis) the
    /// ack covers only the marks the store confirmed keeping, so that a client resuming on
    /// another node, or after the store lost a step, is never asked for what it dropped.
    pub fn ack_to_send(&self) -> Option<u64> {
        let mut mark = self.processed();
        if self.local.store.confirms_marks() {
            mark = mark.min(self.local.recorded.load(Ordering::Acquire));
        }
        let sent = self.ack_sent.fetch_max(mark, Ordering::AcqRel);
        (mark > sent).then_some(mark)
    }

    /// Whether the log should be read again although no newer message is known (the store's
    /// events may have been lost); clears the request.
    pub fn take_reread(&self) -> bool {
        self.local.reread.swap(false, Ordering::AcqRel)
    }

    /// Whether a step of this session failed in the store (an append or a processed mark did
    /// not reach it): this connection should close, so that the client resumes from what the
    /// store holds and resends the rest.
    pub fn has_failed(&self) -> bool {
        self.local.failed.load(Ordering::Acquire)
    }

    /// Whether a newer connection resumed this session, here or on another node: this one
    /// should close (after its calls in flight).
    pub fn is_superseded(&self) -> bool {
        self.local.attachment.load(Ordering::Acquire) != self.attachment
            || self.local.moved_away.load(Ordering::Acquire)
    }
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        self.local.wakes.remove(&self.wake);
        if self.local.attachment.load(Ordering::Acquire) == self.attachment {
            let now = Instant::now();
            self.local.set_detached(Some(now));
            self.local.store.detach(&self.local.token, now);
        }
    }
}
