//! The chat's rooms across nodes: every room event goes into one Redis stream, and every node
//! reads the stream in its order and delivers each event to its own members.
//!
//! A stream rather than pub/sub: a node whose connection to Redis breaks reads on from the last
//! entry it applied once it is back, so a short outage loses nothing and repeats nothing; and
//! all nodes see the events in one order, which is what lets a member move from one node to
//! another between two events (see `Chat::apply`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use wsguard::axum::SessionToken;

/// The stream of room events.
const STREAM: &str = "wsguard:chat:events";
/// The dedup fingerprint key the nodes of one Redis share.
const FINGERPRINT_KEY: &str = "wsguard:chat:fingerprint-key";
/// Entries the stream keeps (about: trimmed with `MAXLEN ~`). Memory in Redis stays bounded; a
/// node more than this many events behind would miss the oldest.
const STREAM_LEN: u32 = 10_000;
/// Entries read at once.
const READ_BATCH: u32 = 256;
/// How long one read waits for new entries.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Longest wait for one Redis command.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for an event this node published to come back from the stream.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// An entry's place in the stream (`MS-SEQ`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EntryId(u64, u64);

impl FromStr for EntryId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("not a stream entry id: {s:?}");
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self(
            ms.parse().map_err(|_| bad())?,
            seq.parse().map_err(|_| bad())?,
        ))
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// This node's side of the stream: appends events and learns how far this node has applied it.
pub(crate) struct RedisRooms {
    url: String,
    client: Client,
    publisher: ConnectionManager,
    /// The last entry this node applied; publishers wait on it.
    applied: watch::Sender<EntryId>,
    /// Where the stream ended when this node started: it reads on from there.
    start: EntryId,
}

impl RedisRooms {
    /// Connects to the Redis at `url` and reads where the stream ends; the error says what failed.
    pub(crate) async fn connect(url: &str) -> Result<Self, String> {
        let client = Client::open(url).map_err(|e| format!("not a Redis URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OPERATION_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT))
            .set_number_of_retries(2);
        let mut publisher = timeout(
            OPERATION_TIMEOUT * 5,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
        let last = timeout(
            OPERATION_TIMEOUT,
            redis::cmd("XREVRANGE")
                .arg(STREAM)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async::<Value>(&mut publisher),
        )
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
        let start = entries(last)
            .first()
            .map_or(EntryId::default(), |(id, _)| *id);
        Ok(Self {
            url: url.to_owned(),
            client,
            publisher,
            applied: watch::Sender::new(start),
            start,
        })
    }

    /// The dedup fingerprint key of every node on this Redis: the first node to start draws a
    /// random one and stores it, the others read it.
    pub(crate) async fn shared_fingerprint_key(&self) -> Result<String, String> {
        let drawn = SessionToken::generate().to_string();
        let mut conn = self.publisher.clone();
        let key = timeout(
            OPERATION_TIMEOUT,
            redis::cmd("SET")
                .arg(FINGERPRINT_KEY)
                .arg(&drawn)
                .arg("NX")
                .arg("GET")
                .query_async::<Option<String>>(&mut conn),
        )
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
        Ok(key.unwrap_or(drawn))
    }

    /// Appends `event` and waits until this node has applied it (so a member's next message
    /// finds it in its room, and a busy node slows its own clients down rather than queueing).
    pub(crate) async fn publish(&self, event: String) -> Result<(), String> {
        let id = self.append(event).await?;
        let mut applied = self.applied.subscribe();
        match timeout(APPLY_TIMEOUT, applied.wait_for(|done| *done >= id)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err("the room event was published but has not come back from Redis".to_owned()),
        }
    }

    /// Appends `event` without waiting for anything (from the stream's reader itself).
    pub(crate) fn publish_later(&self, event: String) {
        let mut conn = self.publisher.clone();
        tokio::spawn(async move {
            if let Err(e) = append(&mut conn, event).await {
                tracing::debug!(error = %e, "room event not published");
            }
        });
    }

    async fn append(&self, event: String) -> Result<EntryId, String> {
        append(&mut self.publisher.clone(), event).await
    }

    /// Records that this node applied the stream up to `id`.
    pub(crate) fn applied(&self, id: EntryId) {
        self.applied.send_replace(id);
    }

    /// A reader of the stream from where it ended when this node started.
    pub(crate) fn reader(&self) -> StreamReader {
        StreamReader {
            url: self.url.clone(),
            client: self.client.clone(),
            conn: None,
            last: self.start,
            down_since: None,
            retry: RETRY_MIN,
        }
    }
}

async fn append(conn: &mut ConnectionManager, event: String) -> Result<EntryId, String> {
    let id = timeout(
        OPERATION_TIMEOUT,
        redis::cmd("XADD")
            .arg(STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LEN)
            .arg("*")
            .arg("e")
            .arg(event)
            .query_async::<String>(conn),
    )
    .await
    .map_err(|_| "Redis did not answer in time".to_owned())?
    .map_err(|e| format!("Redis: {e}"))?;
    id.parse()
}

/// Reads the stream in order, reconnecting by itself.
pub(crate) struct StreamReader {
    url: String,
    client: Client,
    conn: Option<MultiplexedConnection>,
    last: EntryId,
    down_since: Option<Instant>,
    retry: Duration,
}

impl StreamReader {
    /// The events after the last one read, in order (none when none came within a second).
    /// When Redis fails it logs once, waits and reconnects, and reads on from the same place.
    pub(crate) async fn next(&mut self) -> Vec<(EntryId, String)> {
        match self.read().await {
            Ok(events) => {
                if let Some(since) = self.down_since.take() {
                    tracing::info!(
                        url = %self.url,
                        after_ms = since.elapsed().as_millis() as u64,
                        "reading room events from Redis again"
                    );
                }
                self.retry = RETRY_MIN;
                if let Some((last, _)) = events.last() {
                    self.last = *last;
                }
                events
            }
            Err(e) => {
                self.conn = None;
                if self.down_since.is_none() {
                    self.down_since = Some(Instant::now());
                    tracing::warn!(
                        url = %self.url,
                        error = %e,
                        "cannot read room events from Redis: members here miss what is said \
                         on other nodes until it is back (retrying)"
                    );
                }
                tokio::time::sleep(self.retry).await;
                self.retry = (self.retry * 2).min(RETRY_MAX);
                Vec::new()
            }
        }
    }

    async fn read(&mut self) -> Result<Vec<(EntryId, String)>, String> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                // The read blocks on the server; its answer may take that long.
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(OPERATION_TIMEOUT))
                    .set_response_timeout(Some(READ_BLOCK + OPERATION_TIMEOUT));
                let conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| e.to_string())?;
                self.conn.insert(conn)
            }
        };
        let reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(self.last.to_string())
            .query_async::<Value>(conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut events = Vec::new();
        let streams = match reply {
            Value::Array(streams) => streams,
            _ => Vec::new(),
        };
        for stream in streams {
            if let Value::Array(mut parts) = stream
                && parts.len() == 2
            {
                events.extend(
                    entries(parts.remove(1))
                        .into_iter()
                        .filter_map(|(id, event)| Some((id, event?))),
                );
            }
        }
        Ok(events)
    }
}

/// The entries of an `XRANGE`-shaped reply: each id and its `e` field.
fn entries(reply: Value) -> Vec<(EntryId, Option<String>)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(entry) = entry else {
                return None;
            };
            let mut entry = entry.into_iter();
            let id = text(entry.next()?)?.parse().ok()?;
            let event = match entry.next() {
                Some(Value::Array(fields)) => fields
                    .chunks(2)
                    .find(|pair| pair.first().cloned().and_then(text).as_deref() == Some("e"))
                    .and_then(|pair| pair.get(1).cloned().and_then(text)),
                _ => None,
            };
            Some((id, event))
        })
        .collect()
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_by_time_then_sequence() {
        let id = |s: &str| s.parse::<EntryId>().unwrap();
        assert!(id("5-0") < id("5-1"));
        assert!(id("5-9") < id("10-0"));
        assert_eq!(id("1700000000000-3").to_string(), "1700000000000-3");
        assert!("5".parse::<EntryId>().is_err());
        assert!("a-1".parse::<EntryId>().is_err());
    }
}
