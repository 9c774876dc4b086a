//! The connection to one Redis server or a cluster, made in the background.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::watch;

use crate::store::SessionStoreError;

/// One server's connection manager, or a cluster's connection.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where to connect.
#[derive(Clone)]
pub(super) enum Endpoint {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// The connection, made in the background until it succeeds (by one task, started on the
/// first command: building the store needs no runtime).
pub(super) struct Pending {
    endpoint: Endpoint,
    timeout: Duration,
    pub(super) made: watch::Sender<Option<Conn>>,
    started: AtomicBool,
}

impl Pending {
    pub(super) fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Self {
            endpoint,
            timeout,
            made: watch::Sender::new(None),
            started: AtomicBool::new(false),
        }
    }

    pub(super) async fn get_within(&self, wait: Duration) -> Result<Conn, SessionStoreError> {
        if let Some(conn) = &*self.made.borrow() {
            return Ok(conn.clone());
        }
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(connect_until_made(
                self.endpoint.clone(),
                self.timeout,
                self.made.clone(),
            ));
        }
        let mut made = self.made.subscribe();
        match tokio::time::timeout(wait, made.wait_for(Option::is_some)).await {
            Ok(Ok(conn)) => conn.clone().ok_or_else(|| timeout_error(wait)),
            _ => Err(SessionStoreError::new(format!(
                "no connection to Redis within {wait:?}"
            ))),
        }
    }
}

async fn open(endpoint: &Endpoint, timeout: Duration) -> Result<Conn, SessionStoreError> {
    let handshake = timeout * 10;
    match endpoint {
        Endpoint::Single(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(handshake))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            let manager = ConnectionManager::new_with_config(client.clone(), config);
            bounded(handshake, manager).await.map(Conn::Single)
        }
        Endpoint::Cluster(client) => bounded(handshake, client.get_async_connection())
            .await
            .map(Conn::Cluster),
    }
}

/// Connects until it succeeds or nobody waits for the connection any more.
async fn connect_until_made(
    endpoint: Endpoint,
    timeout: Duration,
    made: watch::Sender<Option<Conn>>,
) {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        match open(&endpoint, timeout).await {
            Ok(conn) => {
                made.send_replace(Some(conn));
                tracing::info!("session store connected to Redis");
                return;
            }
            Err(error) => {
                failures += 1;
                // Every power of two: a Redis that stays down must not flood the log.
                if failures.is_power_of_two() {
                    tracing::warn!(attempts = failures, %error, "session store cannot reach Redis; retrying");
                }
            }
        }
        // This task's clone is the last: the store is gone.
        if made.sender_count() == 1 {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

pub(super) fn timeout_error(timeout: Duration) -> SessionStoreError {
    SessionStoreError::new(format!("Redis did not answer within {timeout:?}"))
}

pub(super) async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, SessionStoreError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(timeout_error(timeout)),
        Ok(Err(e)) => Err(SessionStoreError::new(format!("Redis: {e}"))),
        Ok(Ok(value)) => Ok(value),
    }
}
