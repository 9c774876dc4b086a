use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// Sessions are spread over 32 shards by token, each behind its own lock: a message's steps
/// (append, trim, processed mark, read) take only their session's shard, so that connections
/// on different threads rarely wait on each other or move one lock between their cores. What
/// spans sessions (clients, the order of detached sessions, tombstones) has a lock of its own,
/// taken when a session opens, attaches, detaches or ends, and always before a shard's.
/// Sessions freed by expiry or eviction leave a tombstone (token and client) for another
/// `ttl`, at most `max_sessions` of them, so that their resume is answered `expired` rather
/// than `unknown`.
///
/// `session.max_total_bytes` is checked on every append against a total that each shard
/// brings up to date once its own bytes moved by 1/512 of the cap (64 KiB at most): the cap
/// can be passed by at most that much per shard, 1/16 of it, before the oldest detached
/// sessions are freed.
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
pub struct MemorySessionStore {
    shards: Box<[Shard]>,
    index: Mutex<Index>,
    /// The payload bytes of all logs, as the shards last reported them.
    reported: AtomicUsize,
}

/// Shards of the session table.
const SHARDS: usize = 32;

/// A shard reports its bytes to the total once they moved by `max_total_bytes` divided by
/// this (at most [`MAX_REPORT_STEP`]).
const REPORT_DIVISOR: usize = 16 * SHARDS;

/// The largest move of a shard's bytes that is not yet in the total.
const MAX_REPORT_STEP: usize = 64 * 1024;

/// A shard on its own cache lines, so that two shards' locks never share one.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<ShardState>);

#[derive(Debug, Default)]
struct ShardState {
    sessions: TokenMap<Entry>,
    /// The payload bytes of this shard's logs.
    bytes: usize,
    /// What of them the store's total counts.
    reported: usize,
}

impl ShardState {
    /// Brings the store's total up to date once this shard's bytes moved by `step` or more
    /// since its last report, and returns the total with this shard's bytes exact.
    fn report(&mut self, total: &AtomicUsize, step: usize) -> usize {
        if self.bytes != self.reported && self.bytes.abs_diff(self.reported) >= step {
            if self.bytes > self.reported {
                total.fetch_add(self.bytes - self.reported, Ordering::Relaxed);
            } else {
                total.fetch_sub(self.reported - self.bytes, Ordering::Relaxed);
            }
            self.reported = self.bytes;
        }
        // The total is the sum of every shard's `reported`, ours included.
        total.load(Ordering::Relaxed).saturating_sub(self.reported) + self.bytes
    }
}

/// What spans sessions.
#[derive(Debug, Default)]
struct Index {
    /// Sessions held, in every shard.
    sessions: usize,
    /// The newest session of each client.
    by_client: HashMap<String, SessionToken>,
    /// Detached sessions, oldest first: expiry and eviction take from the front.
    detached: BTreeSet<(Instant, SessionToken)>,
    tombstones: Tombstones,
}

impl Default for MemorySessionStore {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            index: Mutex::default(),
            reported: AtomicUsize::new(0),
        }
    }
}

/// Sizes only: the sessions' messages and tokens stay out of logs.
impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.index();
        f.debug_struct("MemorySessionStore")
            .field("sessions", &index.sessions)
            .field("detached", &index.detached.len())
            .field("bytes", &self.exact_bytes())
            .finish()
    }
}

#[derive(Debug)]
struct Entry {
    client: Option<String>,
    /// Messages `first_held()..=last_seq`: their numbers follow from their place.
    log: VecDeque<MessageData>,
    bytes: usize,
    last_seq: u64,
    acked: u64,
    dropped: u64,
    processed: u64,
    detached_since: Option<Instant>,
}

impl Entry {
    fn first_held(&self) -> u64 {
        self.last_seq + 1 - self.log.len() as u64
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
        let first = self.first_held() + skip as u64;
        (first..)
            .zip(self.log.range(skip..).take(max))
            .map(|(seq, payload)| Logged {
                seq,
                payload: payload.clone(),
            })
            .collect()
    }

    /// Drops the oldest message; the caller keeps the totals.
    fn drop_oldest(&mut self) -> usize {
        let seq = self.first_held();
        match self.log.pop_front() {
            Some(payload) => {
                let len = payload.len();
                self.bytes -= len;
                if seq > self.acked {
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

/// A lock whose holder panicked leaves each entry whole: keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    fn shard(&self, token: &SessionToken) -> MutexGuard<'_, ShardState> {
        // Tokens are random: any of their bytes spreads them.
        lock(&self.shards[usize::from(token.as_bytes()[15]) % SHARDS].0)
    }

    /// The payload bytes of all logs, counted shard by shard.
    fn exact_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).bytes).sum()
    }

    /// Frees a session; `bury` leaves a tombstone so its resume reads `expired`. The caller
    /// holds the index.
    fn free(
        &self,
        index: &mut Index,
        token: &SessionToken,
        bury: Option<(Instant, usize)>,
    ) -> bool {
        let entry = {
            let mut shard = self.shard(token);
            let Some(entry) = shard.sessions.remove(token) else {
                return false;
            };
            shard.bytes -= entry.bytes;
            shrink_if_sparse(&mut shard.sessions);
            entry
        };
        index.sessions -= 1;
        if let Some(since) = entry.detached_since {
            index.detached.remove(&(since, *token));
        }
        if let Some(client) = &entry.client
            && index.by_client.get(client) == Some(token)
        {
            index.by_client.remove(client);
        }
        if let Some((now, max)) = bury {
            index.tombstones.bury(*token, entry.client, now, max);
        }
        shrink_if_sparse(&mut index.by_client);
        true
    }

    /// Logs `payload` to session `token` and, with `processed`, records that mark in the same
    /// step.
    fn log(
        &self,
        token: SessionToken,
        payload: MessageData,
        processed: Option<u64>,
        config: &SessionConfig,
    ) -> Option<Appended> {
        let mut guard = self.shard(&token);
        let shard = &mut *guard;
        let entry = shard.sessions.get_mut(&token)?;
        if let Some(id) = processed {
            entry.processed = entry.processed.max(id);
        }
        let len = payload.len();
        entry.last_seq += 1;
        let seq = entry.last_seq;
        entry.log.push_back(payload);
        entry.bytes += len;
        shard.bytes += len;

        let dropped_before = entry.dropped;
        // The newest message always stays: without it the client would see a gap it cannot
        // be told about.
        while entry.log.len() > 1
            && (entry.log.len() > config.max_messages || entry.bytes > config.max_bytes)
        {
            shard.bytes -= entry.drop_oldest();
        }
        let mut dropped = entry.dropped - dropped_before;
        let step = (config.max_total_bytes / REPORT_DIVISOR).min(MAX_REPORT_STEP);
        let total = shard.report(&self.reported, step);
        let mut evicted = Vec::new();
        if total > config.max_total_bytes {
            drop(guard);
            let (more, freed) = self.enforce_total(&token, config);
            dropped += more;
            evicted = freed;
        }
        Some(Appended {
            session: token,
            seq,
            dropped,
            evicted,
        })
    }

    /// Past `max_total_bytes` (by the reported total): frees the oldest detached sessions
    /// other than `token`, then drops `token`'s oldest messages (its newest always stays),
    /// until the exact total is within the cap. Returns the messages dropped and the sessions
    /// freed.
    fn enforce_total(
        &self,
        token: &SessionToken,
        config: &SessionConfig,
    ) -> (u64, Vec<SessionToken>) {
        let mut index = self.index();
        let mut dropped = 0;
        let mut evicted = Vec::new();
        while self.exact_bytes() > config.max_total_bytes {
            let oldest = index.detached.iter().find(|&&(_, t)| t != *token).copied();
            match oldest {
                Some((since, oldest)) => {
                    // Buried as of its detach: `append` has no "now", and its tombstone then
                    // lasts as long as the session would have.
                    self.free(&mut index, &oldest, Some((since, config.max_sessions)));
                    evicted.push(oldest);
                }
                None => {
                    let mut shard = self.shard(token);
                    let shard = &mut *shard;
                    let Some(entry) = shard.sessions.get_mut(token) else {
                        break;
                    };
                    if entry.log.len() <= 1 {
                        break;
                    }
                    let before = entry.dropped;
                    shard.bytes -= entry.drop_oldest();
                    dropped += entry.dropped - before;
                }
            }
        }
        for shard in self.shards.iter() {
            let mut shard = lock(&shard.0);
            shard.report(&self.reported, 0);
        }
        (dropped, evicted)
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
        let mut index = self.index();
        let mut evicted = Vec::new();
        while index.sessions >= config.max_sessions {
            let Some(&(_, oldest)) = index.detached.first() else {
                return StoreFuture::ready(Ok(Created::Full));
            };
            self.free(&mut index, &oldest, Some((now, config.max_sessions)));
            evicted.push(oldest);
        }
        let entry = Entry {
            client: client.map(str::to_owned),
            log: VecDeque::new(),
            bytes: 0,
            last_seq: 0,
            acked: 0,
            dropped: 0,
            processed: 0,
            detached_since: None,
        };
        let mut shard = self.shard(&token);
        match shard.sessions.insert(token, entry) {
            // A token drawn twice (never, with 128 random bits): the old session is gone.
            Some(old) => shard.bytes -= old.bytes,
            None => index.sessions += 1,
        }
        drop(shard);
        if let Some(client) = client {
            index.by_client.insert(client.to_owned(), token);
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
        let mut index = self.index();
        let mut shard = self.shard(token);
        let Some(entry) = shard.sessions.get_mut(token) else {
            let expired = index
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
                drop(shard);
                self.free(&mut index, token, Some((now, config.max_sessions)));
                return StoreFuture::ready(Ok(Attached::Expired));
            }
            entry.detached_since = None;
            index.detached.remove(&(since, *token));
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
        let token = match to {
            Target::Session(token) => *token,
            Target::Client(client) => match self.index().by_client.get(client) {
                Some(token) => *token,
                None => return StoreFuture::ready(Ok(None)),
            },
        };
        StoreFuture::ready(Ok(self.log(token, payload, None, config)))
    }

    fn append_processed(
        &self,
        token: &SessionToken,
        payload: MessageData,
        id: u64,
        config: &SessionConfig,
    ) -> StoreFuture<Option<Appended>> {
        StoreFuture::ready(Ok(self.log(*token, payload, Some(id), config)))
    }

    fn read_after(&self, token: &SessionToken, after: u64, max: usize) -> StoreFuture<Vec<Logged>> {
        let messages = self
            .shard(token)
            .sessions
            .get(token)
            .map(|entry| entry.after(after, max))
            .unwrap_or_default();
        StoreFuture::ready(Ok(messages))
    }

    fn trim(&self, token: &SessionToken, seq: u64) -> StoreFuture<()> {
        let mut guard = self.shard(token);
        let shard = &mut *guard;
        let Some(entry) = shard.sessions.get_mut(token) else {
            return StoreFuture::ready(Ok(()));
        };
        let seq = seq.min(entry.last_seq);
        entry.acked = entry.acked.max(seq);
        // Acknowledged messages are all before `seq`, none dropped unread: no count to keep.
        let held = usize::try_from(seq.saturating_sub(entry.first_held() - 1))
            .unwrap_or(usize::MAX)
            .min(entry.log.len());
        let freed: Vec<MessageData> = entry.log.drain(..held).collect();
        let len: usize = freed.iter().map(MessageData::len).sum();
        entry.bytes -= len;
        shard.bytes -= len;
        drop(guard);
        // Their memory is given back after the lock.
        drop(freed);
        StoreFuture::ready(Ok(()))
    }

    fn record_processed(&self, token: &SessionToken, id: u64) {
        if let Some(entry) = self.shard(token).sessions.get_mut(token) {
            entry.processed = entry.processed.max(id);
        }
    }

    fn detach(&self, token: &SessionToken, now: Instant) {
        let mut index = self.index();
        let mut shard = self.shard(token);
        if let Some(entry) = shard.sessions.get_mut(token)
            && entry.detached_since.is_none()
        {
            entry.detached_since = Some(now);
            index.detached.insert((now, *token));
        }
    }

    fn remove(&self, token: &SessionToken) -> StoreFuture<()> {
        self.free(&mut self.index(), token, None);
        StoreFuture::ready(Ok(()))
    }

    fn expire(&self, now: Instant, config: &SessionConfig) -> StoreFuture<Vec<SessionToken>> {
        let mut index = self.index();
        let mut expired = Vec::new();
        while let Some(&(since, token)) = index.detached.first() {
            if since + config.ttl > now {
                break;
            }
            self.free(&mut index, &token, Some((now, config.max_sessions)));
            expired.push(token);
        }
        while index
            .tombstones
            .order
            .front()
            .is_some_and(|&(at, _)| at + config.ttl <= now)
        {
            index.tombstones.pop_oldest();
        }
        shrink_if_sparse(&mut index.tombstones.clients);
        let order = &mut index.tombstones.order;
        if order.capacity() > SHRINK_ABOVE_CAPACITY && order.capacity() > 4 * order.len() {
            order.shrink_to(2 * order.len());
        }
        StoreFuture::ready(Ok(expired))
    }

    fn counts(&self) -> Option<StoreCounts> {
        let index = self.index();
        Some(StoreCounts {
            sessions: index.sessions,
            detached: index.detached.len(),
            bytes: self.exact_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest shard's session table, then the index's tables.
    fn capacities(store: &MemorySessionStore) -> [usize; 4] {
        let largest = store
            .shards
            .iter()
            .map(|s| lock(&s.0).sessions.capacity())
            .max()
            .unwrap();
        let index = store.index();
        [
            largest,
            index.by_client.capacity(),
            index.tombstones.clients.capacity(),
            index.tombstones.order.capacity(),
        ]
    }

    #[tokio::test]
    async fn a_reply_appended_with_a_processed_mark_records_both() {
        let store = MemorySessionStore::new();
        let config = SessionConfig::production();
        let token = SessionToken::generate();
        let now = Instant::now();
        store.create(token, None, now, &config).await.unwrap();
        let reply = |text: &str, id| store.append_processed(&token, text.into(), id, &config);
        assert_eq!(reply("\"one\"", 1).await.unwrap().unwrap().seq, 1);
        assert_eq!(reply("\"two\"", 2).await.unwrap().unwrap().seq, 2);
        // A mark never goes back.
        assert_eq!(reply("\"late\"", 1).await.unwrap().unwrap().seq, 3);
        let Attached::Held { state, messages } =
            store.attach(&token, None, 1, now, &config).await.unwrap()
        else {
            panic!("the session is held");
        };
        assert_eq!(state.processed, 2);
        assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
        let gone = SessionToken::generate();
        assert!(
            store
                .append_processed(&gone, "\"x\"".into(), 1, &config)
                .await
                .unwrap()
                .is_none()
        );
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
        assert!(full[0] >= 10_000 / SHARDS && full[1] >= 10_000, "{full:?}");

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

    #[tokio::test]
    async fn the_total_cap_holds_within_the_shards_reporting_steps() {
        let store = MemorySessionStore::new();
        let config = SessionConfig {
            max_sessions: 1_000,
            max_messages: 100_000,
            max_bytes: 1 << 24,
            max_total_bytes: 512 * 1024,
            ..SessionConfig::default()
        };
        let step = config.max_total_bytes / REPORT_DIVISOR;
        assert_eq!(step, 1024);
        let now = Instant::now();
        let tokens: Vec<SessionToken> = (0..64).map(|_| SessionToken::generate()).collect();
        for token in &tokens {
            store.create(*token, None, now, &config).await.unwrap();
        }
        for token in &tokens[..32] {
            store.detach(token, now);
        }
        let payload = MessageData::Binary(vec![0u8; 1000].into());
        let (mut evicted, mut dropped) = (Vec::new(), 0);
        for _ in 0..50 {
            for token in &tokens[32..] {
                let appended = store
                    .append(Target::Session(token), payload.clone(), &config)
                    .await
                    .unwrap()
                    .unwrap();
                evicted.extend(appended.evicted);
                dropped += appended.dropped;
                let held = store.exact_bytes();
                assert!(
                    held <= config.max_total_bytes + SHARDS * step,
                    "{held} B held"
                );
            }
        }
        // The detached sessions are freed first (they hold nothing, but they are what a cap
        // frees), then the attached ones drop their oldest: 1.6 MB went to a 512 KiB cap.
        evicted.sort();
        let mut detached = tokens[..32].to_vec();
        detached.sort();
        assert_eq!(evicted, detached);
        assert!(dropped >= 1_000, "{dropped} dropped");
        let counts = store.counts().unwrap();
        assert_eq!(counts.sessions, 32);
        assert!(counts.bytes <= config.max_total_bytes + SHARDS * step);
        assert!(counts.bytes >= config.max_total_bytes - 32 * 1000);
    }
}
