use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use tokio::time::Instant;
use wsguard_config::SessionConfig;

use super::{
    Appended, Attached, Created, Logged, SessionState, SessionStore, StoreCounts, StoreFuture,
    Target,
};
use crate::data::MessageData;
use crate::token::{SessionToken, TokenMap};

/// Sessions in this process's memory: the embedded default.
///
/// One lock guards every session; each method holds it for a map lookup and a few deque
/// operations. Sessions freed by expiry or eviction leave a tombstone (token and client) for
/// another `ttl`, at most `max_sessions` of them, so that their resume is answered `expired`
/// rather than `unknown`.
///
/// ```
/// use tokio::time::Instant;
/// use wsguard_config::SessionConfig;
/// use wsguard_session::store::{Created, SessionStore, Target};
/// use wsguard_session::{MemorySessionStore, SessionToken};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemorySessionStore::new();
/// let config = SessionConfig::testing();
/// let token = SessionToken::generate();
/// let created = store.create(token, Some("alice"), Instant::now(), &config).await.unwrap();
/// assert_eq!(created, Created::Created { evicted: vec![] });
/// let appended = store.append(Target::Client("alice"), "hi".into(), &config).await.unwrap();
/// assert_eq!(appended.unwrap().seq, 1);
/// assert_eq!(store.read_after(&token, 0, 10).await.unwrap().len(), 1);
/// # }
/// ```
#[derive(Default)]
pub struct MemorySessionStore {
    state: Mutex<State>,
}

/// Sizes only: the sessions' messages and tokens stay out of logs.
impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemorySessionStore")
            .field("sessions", &state.sessions.len())
            .field("detached", &state.detached.len())
            .field("bytes", &state.bytes)
            .finish()
    }
}

#[derive(Debug, Default)]
struct State {
    sessions: TokenMap<Entry>,
    /// The newest session of each client.
    by_client: HashMap<String, SessionToken>,
    /// Detached sessions, oldest first: expiry and eviction take from the front.
    detached: BTreeSet<(Instant, SessionToken)>,
    tombstones: Tombstones,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    client: Option<String>,
    log: VecDeque<Logged>,
    bytes: usize,
    last_seq: u64,
    acked: u64,
    dropped: u64,
    processed: u64,
    detached_since: Option<Instant>,
}

impl Entry {
    fn first_held(&self) -> u64 {
        self.log.front().map_or(self.last_seq + 1, |m| m.seq)
    }

    fn state(&self) -> SessionState {
        SessionState {
            client: self.client.clone(),
            last_seq: self.last_seq,
            acked: self.acked,
            dropped: self.dropped,
            first_held: self.first_held(),
            processed: self.processed,
        }
    }

    fn after(&self, after: u64, max: usize) -> Vec<Logged> {
        let skip = usize::try_from(after.saturating_sub(self.first_held() - 1))
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        self.log.range(skip..).take(max).cloned().collect()
    }

    /// Drops the oldest message; the caller keeps the total.
    fn drop_oldest(&mut self) -> usize {
        match self.log.pop_front() {
            Some(m) => {
                let len = m.payload.len();
                self.bytes -= len;
                if m.seq > self.acked {
                    self.dropped += 1;
                }
                len
            }
            None => 0,
        }
    }
}

/// Tokens of freed sessions, with their client, oldest first.
#[derive(Debug, Default)]
struct Tombstones {
    order: VecDeque<(Instant, SessionToken)>,
    clients: TokenMap<Option<String>>,
}

impl Tombstones {
    fn bury(&mut self, token: SessionToken, client: Option<String>, now: Instant, max: usize) {
        while self.order.len() >= max.max(1) {
            self.pop_oldest();
        }
        self.order.push_back((now, token));
        self.clients.insert(token, client);
    }

    fn pop_oldest(&mut self) {
        if let Some((_, token)) = self.order.pop_front() {
            self.clients.remove(&token);
        }
    }
}

/// A table whose capacity is above this and over four times its length gives the rest back.
const SHRINK_ABOVE_CAPACITY: usize = 64;

/// After sessions are freed: a table under a quarter of its capacity keeps twice its length and
/// gives the rest back, so a burst of sessions that ended no longer holds its room, and removals
/// stay amortized constant time (the next shrink needs the table to halve again).
fn shrink_if_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    let (len, capacity) = (map.len(), map.capacity());
    if capacity > SHRINK_ABOVE_CAPACITY && capacity > 4 * len {
        map.shrink_to(2 * len);
    }
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves each entry whole: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Frees a session; `bury` leaves a tombstone so its resume reads `expired`.
    fn free(&mut self, token: &SessionToken, bury: Option<(Instant, usize)>) -> bool {
        let Some(entry) = self.sessions.remove(token) else {
            return false;
        };
        self.bytes -= entry.bytes;
        if let Some(since) = entry.detached_since {
            self.detached.remove(&(since, *token));
        }
        if let Some(client) = &entry.client
            && self.by_client.get(client) == Some(token)
        {
            self.by_client.remove(client);
        }
        if let Some((now, max)) = bury {
            self.tombstones.bury(*token, entry.client, now, max);
        }
        shrink_if_sparse(&mut self.sessions);
        shrink_if_sparse(&mut self.by_client);
        true
    }

    fn resolve(&self, to: Target<'_>) -> Option<SessionToken> {
        match to {
            Target::Session(token) => self.sessions.contains_key(token).then_some(*token),
            Target::Client(client) => self.by_client.get(client).copied(),
        }
    }
}

impl SessionStore for MemorySessionStore {
    fn create(
        &self,
        token: SessionToken,
        client: Option<&str>,
        now: Instant,
        config: &SessionConfig,
    ) -> StoreFuture<Created> {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        while state.sessions.len() >= config.max_sessions {
            let Some(&(_, oldest)) = state.detached.first() else {
                return StoreFuture::ready(Ok(Created::Full));
            };
            state.free(&oldest, Some((now, config.max_sessions)));
            evicted.push(oldest);
        }
        state.sessions.insert(
            token,
            Entry {
                client: client.map(str::to_owned),
                log: VecDeque::new(),
                bytes: 0,
                last_seq: 0,
                acked: 0,
                dropped: 0,
                processed: 0,
                detached_since: None,
            },
        );
        if let Some(client) = client {
            state.by_client.insert(client.to_owned(), token);
        }
        StoreFuture::ready(Ok(Created::Created { evicted }))
    }

    fn attach(
        &self,
        token: &SessionToken,
        client: Option<&str>,
        after: u64,
        now: Instant,
        config: &SessionConfig,
    ) -> StoreFuture<Attached> {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(entry) = state.sessions.get_mut(token) else {
            let expired = state
                .tombstones
                .clients
                .get(token)
                .is_some_and(|c| c.as_deref() == client);
            return StoreFuture::ready(Ok(if expired {
                Attached::Expired
            } else {
                Attached::Unknown
            }));
        };
        if entry.client.as_deref() != client {
            return StoreFuture::ready(Ok(Attached::Unknown));
        }
        if let Some(since) = entry.detached_since {
            if since + config.ttl <= now {
                state.free(token, Some((now, config.max_sessions)));
                return StoreFuture::ready(Ok(Attached::Expired));
            }
            entry.detached_since = None;
            state.detached.remove(&(since, *token));
        }
        StoreFuture::ready(Ok(Attached::Held {
            state: entry.state(),
            messages: entry.after(after, usize::MAX),
        }))
    }

    fn append(
        &self,
        to: Target<'_>,
        payload: MessageData,
        config: &SessionConfig,
    ) -> StoreFuture<Option<Appended>> {
        let mut state = self.lock();
        let state = &mut *state;
        let found = match to {
            // One lookup for the usual case.
            Target::Session(token) => state.sessions.get_mut(token).map(|e| (*token, e)),
            Target::Client(_) => match state.resolve(to) {
                Some(token) => state.sessions.get_mut(&token).map(|e| (token, e)),
                None => None,
            },
        };
        let Some((token, entry)) = found else {
            return StoreFuture::ready(Ok(None));
        };
        let len = payload.len();
        entry.last_seq += 1;
        let seq = entry.last_seq;
        entry.log.push_back(Logged { seq, payload });
        entry.bytes += len;
        state.bytes += len;

        let dropped_before = entry.dropped;
        // The newest message always stays: without it the client would see a gap it cannot
        // be told about.
        while entry.log.len() > 1
            && (entry.log.len() > config.max_messages || entry.bytes > config.max_bytes)
        {
            state.bytes -= entry.drop_oldest();
        }

        let mut dropped = entry.dropped - dropped_before;
        let mut evicted = Vec::new();
        while state.bytes > config.max_total_bytes {
            let oldest = state.detached.iter().map(|&(_, t)| t).find(|t| *t != token);
            match oldest {
                Some(oldest) => {
                    // Buried as of its detach: `append` has no "now", and its tombstone then
                    // lasts as long as the session would have.
                    let buried_at = state.sessions[&oldest].detached_since;
                    state.free(&oldest, buried_at.map(|t| (t, config.max_sessions)));
                    evicted.push(oldest);
                }
                None => {
                    let entry = state.sessions.get_mut(&token).expect("resolved above");
                    if entry.log.len() <= 1 {
                        break;
                    }
                    let before = entry.dropped;
                    state.bytes -= entry.drop_oldest();
                    dropped += entry.dropped - before;
                }
            }
        }
        StoreFuture::ready(Ok(Some(Appended {
            session: token,
            seq,
            dropped,
            evicted,
        })))
    }

    fn read_after(&self, token: &SessionToken, after: u64, max: usize) -> StoreFuture<Vec<Logged>> {
        let state = self.lock();
        let messages = state
            .sessions
            .get(token)
            .map(|entry| entry.after(after, max))
            .unwrap_or_default();
        StoreFuture::ready(Ok(messages))
    }

    fn trim(&self, token: &SessionToken, seq: u64) -> StoreFuture<()> {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(entry) = state.sessions.get_mut(token) {
            let seq = seq.min(entry.last_seq);
            entry.acked = entry.acked.max(seq);
            while entry.log.front().is_some_and(|m| m.seq <= seq) {
                state.bytes -= entry.drop_oldest();
            }
        }
        StoreFuture::ready(Ok(()))
    }

    fn record_processed(&self, token: &SessionToken, id: u64) {
        if let Some(entry) = self.lock().sessions.get_mut(token) {
            entry.processed = entry.processed.max(id);
        }
    }

    fn detach(&self, token: &SessionToken, now: Instant) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(entry) = state.sessions.get_mut(token)
            && entry.detached_since.is_none()
        {
            entry.detached_since = Some(now);
            state.detached.insert((now, *token));
        }
    }

    fn remove(&self, token: &SessionToken) -> StoreFuture<()> {
        self.lock().free(token, None);
        StoreFuture::ready(Ok(()))
    }

    fn expire(&self, now: Instant, config: &SessionConfig) -> StoreFuture<Vec<SessionToken>> {
        let mut state = self.lock();
        let mut expired = Vec::new();
        while let Some(&(since, token)) = state.detached.first() {
            if since + config.ttl > now {
                break;
            }
            state.free(&token, Some((now, config.max_sessions)));
            expired.push(token);
        }
        while state
            .tombstones
            .order
            .front()
            .is_some_and(|&(at, _)| at + config.ttl <= now)
        {
            state.tombstones.pop_oldest();
        }
        shrink_if_sparse(&mut state.tombstones.clients);
        let order = &mut state.tombstones.order;
        if order.capacity() > SHRINK_ABOVE_CAPACITY && order.capacity() > 4 * order.len() {
            order.shrink_to(2 * order.len());
        }
        StoreFuture::ready(Ok(expired))
    }

    fn counts(&self) -> Option<StoreCounts> {
        let state = self.lock();
        Some(StoreCounts {
            sessions: state.sessions.len(),
            detached: state.detached.len(),
            bytes: state.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacities(store: &MemorySessionStore) -> [usize; 4] {
        let state = store.lock();
        [
            state.sessions.capacity(),
            state.by_client.capacity(),
            state.tombstones.clients.capacity(),
            state.tombstones.order.capacity(),
        ]
    }

    #[tokio::test]
    async fn the_tables_give_back_the_room_of_sessions_that_ended() {
        let store = MemorySessionStore::new();
        let config = SessionConfig {
            max_sessions: 100_000,
            ..SessionConfig::default()
        };
        let now = Instant::now();
        let mut tokens = Vec::new();
        for i in 0..10_000 {
            let token = SessionToken::generate();
            let client = format!("client-{i}");
            store
                .create(token, Some(&client), now, &config)
                .await
                .unwrap();
            tokens.push(token);
        }
        let full = capacities(&store);
        assert!(full[0] >= 10_000 && full[1] >= 10_000, "{full:?}");

        // Half removed, half expired (leaving tombstones until their own expiry).
        for token in &tokens[..5_000] {
            store.remove(token).await.unwrap();
        }
        for token in &tokens[5_000..] {
            store.detach(token, now);
        }
        let later = now + config.ttl;
        assert_eq!(store.expire(later, &config).await.unwrap().len(), 5_000);
        let [sessions, by_client, ..] = capacities(&store);
        assert!(sessions <= SHRINK_ABOVE_CAPACITY, "{full:?} -> {sessions}");
        assert!(
            by_client <= SHRINK_ABOVE_CAPACITY,
            "{full:?} -> {by_client}"
        );

        store.expire(later + config.ttl, &config).await.unwrap();
        let [_, _, buried, order] = capacities(&store);
        assert!(buried <= SHRINK_ABOVE_CAPACITY, "{buried}");
        assert!(order <= SHRINK_ABOVE_CAPACITY, "{order}");
    }
}
