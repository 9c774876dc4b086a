//! Graceful drain of WebSocket connections, for shutdowns and rolling restarts.
//!
//! A graceful HTTP shutdown does not see upgraded WebSockets: their tasks are not HTTP
//! connections anymore, so clients would get no close frame and lose what was queued for them.
//! A [`Drain`] reaches them: once [started](Drain::run), routes refuse new upgrades with `503`
//! and `Retry-After`, and every connection stops reading, lets its calls in flight finish, writes
//! what is queued for it and closes with `1001 Going Away` and a reason that carries a reconnect
//! delay, spread over a window so that clients do not all come back at the same moment.
//! [`wsguard_axum::serve`](crate::serve()) runs it on its shutdown signal; the report says what
//! happened.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The handle that drains the WebSocket connections of the routes that see it; clones share it.
///
/// [`serve`](crate::serve()) makes one and gives it to every request (as a request extension),
/// so its routes take part without wiring; [`Serve::drain`](crate::Serve::drain) returns it.
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `Some(window)` once draining: the window reconnect delays are spread over.
    started: watch::Sender<Option<Duration>>,
    open: AtomicUsize,
    closed: AtomicU64,
    flushed: AtomicU64,
    dropped: AtomicU64,
    all_closed: Notify,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections closed with `1001` by the drain.
    pub connections_closed: u64,
    /// Messages written to those connections after the drain started (what was queued).
    pub messages_flushed: u64,
    /// Messages still queued when their connection ended (the client did not take them in time).
    pub messages_dropped: u64,
    /// Connections still open when the drain's timeout ran out.
    pub still_open: usize,
    /// How long the drain took.
    pub elapsed: Duration,
}

impl Drain {
    /// A drain that has not started, with no connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the drain has started: routes refuse upgrades, connections are closing.
    pub fn is_draining(&self) -> bool {
        self.inner.started.borrow().is_some()
    }

    /// WebSocket connections open now on the routes this drain reaches.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Starts the drain and waits until every connection has closed, for at most `timeout`.
    /// Each connection is told to reconnect after a delay spread over `reconnect_window`. Never
    /// waits past `timeout`; what is still open then is in the report.
    pub async fn run(&self, timeout: Duration, reconnect_window: Duration) -> DrainReport {
        let started = Instant::now();
        self.inner.started.send_replace(Some(reconnect_window));
        let inner = &self.inner;
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let closed = inner.all_closed.notified();
                if inner.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                closed.await;
            }
        })
        .await;
        DrainReport {
            connections_closed: inner.closed.load(Ordering::Relaxed),
            messages_flushed: inner.flushed.load(Ordering::Relaxed),
            messages_dropped: inner.dropped.load(Ordering::Relaxed),
            still_open: inner.open.load(Ordering::Acquire),
            elapsed: started.elapsed(),
        }
    }

    /// Counts a connection in until its ticket is dropped.
    pub(crate) fn ticket(&self) -> DrainTicket {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        DrainTicket {
            inner: Arc::clone(&self.inner),
            started: self.inner.started.subscribe(),
        }
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("draining", &self.is_draining())
            .field("open", &self.open_connections())
            .finish()
    }
}

/// One connection's place in a drain.
pub(crate) struct DrainTicket {
    inner: Arc<Inner>,
    started: watch::Receiver<Option<Duration>>,
}

impl DrainTicket {
    /// Whether the drain has started.
    pub(crate) fn is_draining(&self) -> bool {
        self.started.borrow().is_some()
    }

    /// Resolves when the drain starts, with the reconnect window.
    pub(crate) async fn started(&mut self) -> Duration {
        let window = match self.started.wait_for(Option::is_some).await {
            Ok(window) => *window,
            Err(_) => None,
        };
        match window {
            Some(window) => window,
            // The drain's sender lives as long as this ticket's `inner`; never reached.
            None => std::future::pending().await,
        }
    }

    /// Records how the connection ended: closed by the drain or not, what it wrote after the
    /// drain started and what was left unsent.
    pub(crate) fn finish(&self, closed_by_drain: bool, flushed: u64, dropped: u64) {
        if closed_by_drain {
            self.inner.closed.fetch_add(1, Ordering::Relaxed);
        }
        if self.inner.started.borrow().is_some() {
            self.inner.flushed.fetch_add(flushed, Ordering::Relaxed);
            self.inner.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

impl Drop for DrainTicket {
    fn drop(&mut self) {
        if self.inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.all_closed.notify_waiters();
        }
    }
}

/// A reconnect delay in `[0, window)`, spread over connections by their id, so that clients
/// told to reconnect at once come back over the whole window.
pub(crate) fn reconnect_delay(connection: u64, window: Duration) -> Duration {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
    // Fibonacci hashing: consecutive ids land far apart in the window.
    let spread = connection.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    Duration::from_millis(spread % window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_spread_over_the_window() {
        let window = Duration::from_secs(5);
        let delays: Vec<_> = (1..=1000).map(|id| reconnect_delay(id, window)).collect();
        assert!(delays.iter().all(|d| *d < window));
        // Every tenth of the window gets some of them.
        for tenth in 0..10 {
            let (from, to) = (window * tenth / 10, window * (tenth + 1) / 10);
            let n = delays.iter().filter(|d| **d >= from && **d < to).count();
            assert!((50..=150).contains(&n), "{n} delays in tenth {tenth}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_its_connections_but_never_past_its_timeout() {
        let drain = Drain::new();
        let mut ticket = drain.ticket();
        let running = tokio::spawn({
            let drain = drain.clone();
            async move {
                drain
                    .run(Duration::from_secs(10), Duration::from_secs(1))
                    .await
            }
        });
        assert_eq!(ticket.started().await, Duration::from_secs(1));
        assert!(drain.is_draining());
        tokio::time::sleep(Duration::from_secs(2)).await;
        ticket.finish(true, 3, 1);
        drop(ticket);
        let report = running.await.unwrap();
        assert_eq!(
            (
                report.connections_closed,
                report.messages_flushed,
                report.messages_dropped
            ),
            (1, 3, 1)
        );
        assert_eq!(
            (report.still_open, report.elapsed),
            (0, Duration::from_secs(2))
        );

        // A connection that never closes: the drain returns at its timeout.
        let stuck = Drain::new();
        let _ticket = stuck.ticket();
        let report = stuck.run(Duration::from_secs(3), Duration::ZERO).await;
        assert_eq!(
            (report.still_open, report.elapsed),
            (1, Duration::from_secs(3))
        );
    }
}
