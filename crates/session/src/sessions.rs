//! The registry: opening and resuming sessions under the protocol's rules.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;
use wsguard_config::{ConfigSource, SessionConfig, StabilityConfig};

use crate::data::MessageData;
use crate::error::SessionGone;
use crate::future::SendFuture;
use crate::inbound::InboundState;
use crate::protocol::{ClientFrame, RefusalReason, SessionFrame};
use crate::sender::{SenderTarget, SessionSender};
use crate::session::Session;
use crate::stats::{Counters, SessionStats};
use crate::store::{
    Appended, Attached, Created, Logged, MemorySessionStore, RemoteEvent, RemoteListener,
    SessionStore, SessionStoreError, SharedSessionStore, StoreFuture, Target,
};
use crate::token::{SessionToken, TokenMap};
use crate::wake::{Wake, Wakes};

/// Every session of a route (or a process), over a [`SessionStore`].
///
/// Cloning is cheap and shares the registry. Settings are read from the `session` section at
/// each step, so a live [`ConfigHandle`](wsguard_config::ConfigHandle) changes bounds, caps and
/// the TTL for what comes next.
///
/// The store is a [`SharedSessionStore`] unless the registry is made with
/// [`with_store`](Self::with_store) on a concrete type: [`new`](Self::new) puts sessions in
/// memory, [`from_config`](Self::from_config) in the store `session.store` names (memory, or
/// Redis with the `redis` feature, so that several nodes share them).
pub struct Sessions<S = SharedSessionStore> {
    pub(crate) shared: Arc<Shared<S>>,
}

type Locals = Mutex<TokenMap<Arc<Local>>>;

pub(crate) struct Shared<S> {
    pub(crate) store: Arc<S>,
    config: ConfigSource<SessionConfig>,
    /// This node's per-session state: the wake-up of a live connection and the inbound ids.
    /// Entries leave when the store frees their session, when another node takes it over, or
    /// once unused for a `ttl`.
    locals: Arc<Locals>,
    pub(crate) counters: Counters,
}

/// The `session` settings as of the last change, for a caller that reads them on every message:
/// a live config is otherwise loaded through its `ArcSwap` each time.
#[derive(Debug, Default)]
pub(crate) struct CachedConfig(Option<(u64, Arc<StabilityConfig>)>);

impl CachedConfig {
    pub(crate) fn with<S, R>(
        &mut self,
        sessions: &Sessions<S>,
        f: impl FnOnce(&SessionConfig) -> R,
    ) -> R {
        let source = &sessions.shared.config;
        let Some(handle) = source.handle() else {
            // A fixed config is read in place anyway.
            return source.with(f);
        };
        // The generation first: the config loaded after it is at least as new.
        let generation = handle.generation();
        if self.0.as_ref().is_none_or(|(seen, _)| *seen != generation) {
            self.0 = Some((generation, handle.get()));
        }
        f(&self.0.as_ref().expect("set just above").1.session)
    }
}

/// What this node keeps of a session besides the store.
pub(crate) struct Local {
    pub(crate) token: SessionToken,
    pub(crate) store: Arc<dyn SessionStore>,
    inbound: InboundState,
    /// The highest `seq` logged, as far as this node saw.
    pub(crate) last_seq: AtomicU64,
    /// The connections attached here, woken when a message is logged or the session changes.
    pub(crate) wakes: Wakes,
    /// Counts attachments; a connection whose number is not the latest was superseded.
    pub(crate) attachment: AtomicU64,
    /// A resume on another node took the session: the connection here closes, and detaches it
    /// once its calls are done (which lets the other node go on).
    pub(crate) moved_away: AtomicBool,
    /// When its last connection detached it, if none holds it now.
    pub(crate) detached_at: Mutex<Option<Instant>>,
    /// The highest processed mark the store confirmed keeping (with a store that
    /// [`confirms_marks`](SessionStore::confirms_marks)): acks go no further.
    pub(crate) recorded: AtomicU64,
    /// A step of this session failed in the store: the connection closes, and the next resume
    /// starts from the store's marks (this state is forgotten).
    pub(crate) failed: AtomicBool,
    /// The connection reads its log again even if no newer message is known (events may have
    /// been lost).
    pub(crate) reread: AtomicBool,
}

impl Local {
    pub(crate) fn inbound(&self) -> &InboundState {
        &self.inbound
    }

    pub(crate) fn processed(&self, id: u64) {
        if let Some(mark) = self.inbound().processed(id) {
            self.store.record_processed(&self.token, mark);
        }
    }

    pub(crate) fn abandon(&self, id: u64) {
        self.inbound().abandon(id);
    }

    /// Message `seq` was logged: wakes the connections, but not the one that logged it (`by`),
    /// which writes it itself or knows to read it.
    pub(crate) fn logged(&self, seq: u64, by: Option<&Wake>) {
        if self.last_seq.fetch_max(seq, Ordering::AcqRel) < seq {
            match by {
                Some(by) => self.wakes.raise_others(by),
                None => self.wakes.raise(),
            }
        }
    }

    /// Wakes the connection, which reads its log again and checks whether it was superseded.
    fn nudge(&self) {
        self.wakes.raise();
    }

    /// Another node is resuming the session: the connection here is superseded.
    fn moved_away(&self) {
        self.moved_away.store(true, Ordering::Release);
        self.nudge();
    }

    pub(crate) fn set_detached(&self, at: Option<Instant>) {
        *self.detached_at.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    fn detached_before(&self, deadline: Instant) -> bool {
        self.detached_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at <= deadline)
    }
}

/// What the store hears from other nodes, applied to this node's sessions.
fn on_remote(locals: &Locals, event: RemoteEvent) {
    let mut locals = locals.lock().unwrap_or_else(|e| e.into_inner());
    match event {
        RemoteEvent::Logged { session, seq } => {
            if let Some(local) = locals.get(&session) {
                local.logged(seq, None);
            }
        }
        RemoteEvent::Superseded { session } => {
            // Forgotten here: a later resume on this node starts from the store's marks.
            if let Some(local) = locals.remove(&session) {
                local.moved_away();
            }
        }
        RemoteEvent::Missed => locals.values().for_each(|local| {
            local.reread.store(true, Ordering::Release);
            local.nudge();
        }),
        RemoteEvent::Recorded { session, id } => {
            if let Some(local) = locals.get(&session) {
                local.recorded.fetch_max(id, Ordering::AcqRel);
                // The connection acknowledges what is now recorded.
                local.nudge();
            }
        }
        RemoteEvent::Failed { session } => {
            // Forgotten here, as after a move: this node's marks and log position may be ahead
            // of what the store holds; a resume starts from the store's.
            if let Some(local) = locals.remove(&session) {
                local.failed.store(true, Ordering::Release);
                local.nudge();
            }
        }
    }
}

impl<S> Clone for Sessions<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Sessions<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.shared.store)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The outcome of a connection's first frame.
#[derive(Debug)]
pub enum Opened<S = SharedSessionStore> {
    /// The connection has a session: send `frame`, then the `replay` messages, then go on.
    Attached {
        /// The connection's handle on its session.
        session: Session<S>,
        /// The `session` frame to send first.
        frame: SessionFrame,
        /// The messages to send after it, in order (empty unless resumed).
        replay: Vec<Logged>,
    },
    /// No session could be opened (`max_sessions` reached with none detached, or the store
    /// failed): send `frame` (reason `unavailable`, no token) and close with 1013.
    Unavailable {
        /// The `session` frame to send.
        frame: SessionFrame,
    },
}

impl<S> Opened<S> {
    /// The `session` frame to send first.
    pub fn frame(&self) -> &SessionFrame {
        match self {
            Self::Attached { frame, .. } | Self::Unavailable { frame } => frame,
        }
    }
}

impl Sessions {
    /// A registry over a new [`MemorySessionStore`], whatever `session.store` says.
    pub fn new(config: impl Into<ConfigSource<SessionConfig>>) -> Self {
        let store: SharedSessionStore = Arc::new(MemorySessionStore::new());
        Self::with_store(store, config)
    }

    /// A registry over the store `session.store` names: a [`MemorySessionStore`], or (feature
    /// `redis`) a `store::RedisSessionStore` that connects in the
    /// background (until it does, hello and resume are answered `unavailable`).
    ///
    /// Fails if the config names a store this build cannot make (`redis` without the `redis`
    /// feature, or a URL that is not a Redis URL): a server must not run on another store than
    /// the one its config names. A later reload that changes the backend does not move the
    /// sessions.
    pub fn from_config(
        config: impl Into<ConfigSource<SessionConfig>>,
    ) -> Result<Self, SessionStoreError> {
        let config = config.into();
        let store = crate::store::from_config(&config.get())?;
        Ok(Self::with_store(store, config))
    }
}

impl<S: SessionStore> Sessions<S> {
    /// A registry over `store`.
    pub fn with_store(store: S, config: impl Into<ConfigSource<SessionConfig>>) -> Self {
        let locals: Arc<Locals> = Arc::default();
        let heard = Arc::downgrade(&locals);
        let listener: RemoteListener = Arc::new(move |event| {
            if let Some(locals) = heard.upgrade() {
                on_remote(&locals, event);
            }
        });
        store.listen(listener);
        Self {
            shared: Arc::new(Shared {
                store: Arc::new(store),
                config: config.into(),
                locals,
                counters: Counters::default(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The current `session` settings.
    pub fn config(&self) -> SessionConfig {
        self.shared.config.get()
    }

    /// Answers a connection's first frame: `hello` or `resume`. `client` is the route's client
    /// identity, if it has one; a session is bound to it. Any other frame is `None`: the
    /// protocol was not followed (close with 1002).
    pub async fn open(&self, first: &ClientFrame, client: Option<&str>) -> Option<Opened<S>> {
        match first {
            ClientFrame::Hello => Some(self.hello(client).await),
            ClientFrame::Resume { session, last } => {
                Some(self.resume(session, client, *last).await)
            }
            ClientFrame::Msg { .. } | ClientFrame::Ack { .. } => None,
        }
    }

    /// Opens a new session.
    pub async fn hello(&self, client: Option<&str>) -> Opened<S> {
        // A store that cannot sweep cannot open either: answer within one timeout, not two.
        if let Err(err) = self.try_sweep().await {
            return self.unavailable(&err);
        }
        self.create(client, None).await
    }

    /// Resumes session `token` of `client`, whose client holds every message up to `last`.
    ///
    /// Resumed: the frame says so with the highest client id processed, and `replay` holds
    /// every message after `last` with its original `seq`. Refused (unknown token, another
    /// client's token, expired, or messages after `last` dropped by a bound: `gap`): a new
    /// session, and the frame says why.
    pub async fn resume(&self, token: &SessionToken, client: Option<&str>, last: u64) -> Opened<S> {
        if let Err(err) = self.try_sweep().await {
            return self.unavailable(&err);
        }
        let config = self.config();
        let attached = self
            .shared
            .store
            .attach(token, client, last, Instant::now(), &config)
            .await;
        let (state, replay) = match attached {
            Err(err) => return self.unavailable(&err),
            Ok(Attached::Unknown) => return self.refuse(client, RefusalReason::Unknown).await,
            Ok(Attached::Expired) => {
                if self.forget(token) {
                    self.shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                }
                return self.refuse(client, RefusalReason::Expired).await;
            }
            Ok(Attached::Held { state, messages }) => (state, messages),
        };
        if last > state.last_seq {
            // The client claims messages this session never sent: not this session's history.
            self.free(token).await;
            return self.refuse(client, RefusalReason::Unknown).await;
        }
        let lost = state
            .first_held
            .saturating_sub(last.max(state.acked).saturating_add(1));
        if lost > 0 {
            let old_last = state.processed.max(self.mark_of(token));
            self.free(token).await;
            self.shared.counters.refused[RefusalReason::Gap as usize]
                .fetch_add(1, Ordering::Relaxed);
            return self
                .create(client, Some((RefusalReason::Gap, old_last, lost)))
                .await;
        }
        // Resuming with `last` acknowledges everything up to it.
        if let Err(err) = self.shared.store.trim(token, last).await {
            tracing::warn!(%err, "session trim on resume failed");
        }
        let local = self.local(token, state.processed);
        // This node's marks may be older than the store's: the session may have been attached
        // on another node since.
        let processed = local.inbound().raise(state.processed);
        local.recorded.fetch_max(state.processed, Ordering::AcqRel);
        self.shared.counters.resumed.fetch_add(1, Ordering::Relaxed);
        self.shared
            .counters
            .replayed
            .fetch_add(replay.len() as u64, Ordering::Relaxed);
        Opened::Attached {
            session: self.attach_handle(local),
            frame: SessionFrame {
                session: Some(*token),
                resumed: true,
                last: processed,
                reason: None,
                lost: None,
            },
            replay,
        }
    }

    /// A sender that logs messages for the newest session of `client`, connected or not.
    pub fn sender_for_client(&self, client: &str) -> SessionSender<S> {
        SessionSender::new(self.clone(), SenderTarget::Client(client.into()))
    }

    /// A sender that logs messages for session `token`, connected or not.
    pub fn sender_for_session(&self, token: &SessionToken) -> SessionSender<S> {
        SessionSender::new(self.clone(), SenderTarget::Session(*token))
    }

    /// Frees every session detached longer than the TTL; returns how many.
    ///
    /// `hello` and `resume` sweep first; [`sweep_every`](Self::sweep_every) sweeps sessions
    /// nobody resumes.
    pub async fn sweep(&self) -> usize {
        self.try_sweep().await.unwrap_or_else(|err| {
            tracing::warn!(%err, "session sweep failed");
            0
        })
    }

    async fn try_sweep(&self) -> Result<usize, SessionStoreError> {
        let config = self.config();
        let now = Instant::now();
        if let Some(deadline) = now.checked_sub(config.ttl) {
            // Sessions another node freed or took over leave nothing behind here.
            self.locals().retain(|_, local| {
                Arc::strong_count(local) > 1 || !local.detached_before(deadline)
            });
        }
        let expired = self.shared.store.expire(now, &config).await?;
        for token in &expired {
            self.forget(token);
        }
        self.shared
            .counters
            .expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        Ok(expired.len())
    }

    /// Sweeps every `period` until nothing else holds the registry: spawn it once per
    /// registry.
    pub async fn sweep_every(self, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if Arc::strong_count(&self.shared) == 1 {
                return;
            }
            self.sweep().await;
        }
    }

    /// Waits until every step this node asked of the store has reached it (see
    /// [`SessionStore::flush`]): before a node exits, so that its sessions are detached and its
    /// processed marks recorded where other nodes resume them.
    pub async fn flush(&self) -> Result<(), SessionStoreError> {
        self.shared.store.flush().await
    }

    /// Counters and sizes now.
    pub fn stats(&self) -> SessionStats {
        self.shared.counters.snapshot(self.shared.store.counts())
    }

    /// Asks the store to log `payload` (the `session` settings read in place, not copied).
    pub(crate) fn start_append(
        &self,
        to: Target<'_>,
        payload: MessageData,
    ) -> StoreFuture<Option<Appended>> {
        let store = &self.shared.store;
        self.shared
            .config
            .with(|config| store.append(to, payload, config))
    }

    /// Finishes an append without waiting: its `seq` when the store answered at once, `None`
    /// when it answers later (the append then finishes in the background, in its place, and a
    /// failure is logged). `by` is the connection appending, not woken for its own message.
    pub(crate) fn append_now(
        &self,
        mut append: StoreFuture<Option<Appended>>,
        by: Option<(&Local, &Wake)>,
    ) -> Result<Option<u64>, SessionGone> {
        match Pin::new(&mut append).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(appended) => {
                let appended = appended.map_err(SessionGone::store)?;
                self.appended(appended, by).map(Some)
            }
            Poll::Pending => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return Err(SessionGone::store(SessionStoreError::new(
                        "no tokio runtime to wait for the store on",
                    )));
                };
                // Finished later: every connection is woken for it, the appending one too.
                let logged = SendFuture::new(append, self.clone()).logged();
                runtime.spawn(async move {
                    if let Err(err) = logged.await {
                        tracing::warn!(%err, "session message sent without waiting was not logged");
                    }
                });
                Ok(None)
            }
        }
    }

    /// Counts and wakes for an answered append. `by`: the connection that appended, when it
    /// is not to be woken for it.
    pub(crate) fn appended(
        &self,
        appended: Option<Appended>,
        by: Option<(&Local, &Wake)>,
    ) -> Result<u64, SessionGone> {
        let Some(appended) = appended else {
            return Err(SessionGone::no_session());
        };
        // Counters shared by every connection: written only when there is something to count.
        let counters = &self.shared.counters;
        if appended.dropped > 0 {
            counters
                .dropped
                .fetch_add(appended.dropped, Ordering::Relaxed);
        }
        if !appended.evicted.is_empty() {
            counters
                .evicted
                .fetch_add(appended.evicted.len() as u64, Ordering::Relaxed);
            for token in &appended.evicted {
                self.forget(token);
            }
        }
        match by {
            Some((local, wake)) if local.token == appended.session => {
                local.logged(appended.seq, Some(wake));
            }
            _ => {
                if let Some(local) = self.locals().get(&appended.session) {
                    local.logged(appended.seq, None);
                }
            }
        }
        Ok(appended.seq)
    }

    async fn create(
        &self,
        client: Option<&str>,
        refusal: Option<(RefusalReason, u64, u64)>,
    ) -> Opened<S> {
        let config = self.config();
        let token = SessionToken::generate();
        let created = self
            .shared
            .store
            .create(token, client, Instant::now(), &config)
            .await;
        match created {
            Err(err) => self.unavailable(&err),
            Ok(Created::Full) => {
                self.shared.counters.refused[RefusalReason::Unavailable as usize]
                    .fetch_add(1, Ordering::Relaxed);
                Opened::Unavailable {
                    frame: unavailable_frame(),
                }
            }
            Ok(Created::Created { evicted }) => {
                self.shared
                    .counters
                    .evicted
                    .fetch_add(evicted.len() as u64, Ordering::Relaxed);
                for old in &evicted {
                    self.forget(old);
                }
                self.shared.counters.created.fetch_add(1, Ordering::Relaxed);
                let local = self.local(&token, 0);
                let (reason, last, lost) = match refusal {
                    Some((reason, last, lost)) => (
                        Some(reason),
                        last,
                        (reason == RefusalReason::Gap).then_some(lost),
                    ),
                    None => (None, 0, None),
                };
                Opened::Attached {
                    session: self.attach_handle(local),
                    frame: SessionFrame {
                        session: Some(token),
                        resumed: false,
                        last,
                        reason,
                        lost,
                    },
                    replay: Vec::new(),
                }
            }
        }
    }

    async fn refuse(&self, client: Option<&str>, reason: RefusalReason) -> Opened<S> {
        let opened = self.create(client, Some((reason, 0, 0))).await;
        if let Opened::Attached { .. } = opened {
            self.shared.counters.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
        opened
    }

    fn unavailable(&self, err: &SessionStoreError) -> Opened<S> {
        tracing::warn!(%err, "session store failed: answering unavailable");
        self.shared.counters.refused[RefusalReason::Unavailable as usize]
            .fetch_add(1, Ordering::Relaxed);
        Opened::Unavailable {
            frame: unavailable_frame(),
        }
    }

    async fn free(&self, token: &SessionToken) {
        if let Err(err) = self.shared.store.remove(token).await {
            tracing::warn!(%err, "freeing a refused session failed");
        }
        self.forget(token);
    }

    fn locals(&self) -> MutexGuard<'_, TokenMap<Arc<Local>>> {
        self.shared.locals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops this node's state of a freed session; whether it had any.
    fn forget(&self, token: &SessionToken) -> bool {
        self.locals().remove(token).is_some()
    }

    fn mark_of(&self, token: &SessionToken) -> u64 {
        self.locals().get(token).map_or(0, |l| l.inbound().mark())
    }

    fn local(&self, token: &SessionToken, processed: u64) -> Arc<Local> {
        let store: Arc<dyn SessionStore> = self.shared.store.clone();
        Arc::clone(self.locals().entry(*token).or_insert_with(|| {
            Arc::new(Local {
                token: *token,
                store,
                inbound: InboundState::new(processed),
                last_seq: AtomicU64::new(0),
                wakes: Wakes::default(),
                attachment: AtomicU64::new(0),
                moved_away: AtomicBool::new(false),
                detached_at: Mutex::new(None),
                recorded: AtomicU64::new(processed),
                failed: AtomicBool::new(false),
                reread: AtomicBool::new(false),
            })
        }))
    }

    fn attach_handle(&self, local: Arc<Local>) -> Session<S> {
        let attachment = local.attachment.fetch_add(1, Ordering::AcqRel) + 1;
        local.set_detached(None);
        // Wakes the connection this one supersedes, if any, so that it closes.
        local.nudge();
        let wake = local.wakes.add();
        Session::new(self.clone(), local, attachment, wake)
    }
}

fn unavailable_frame() -> SessionFrame {
    SessionFrame {
        session: None,
        resumed: false,
        last: 0,
        reason: Some(RefusalReason::Unavailable),
        lost: None,
    }
}
