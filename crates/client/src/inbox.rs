//! In-order, exactly-once delivery of the server's messages, and the acknowledgements.

use std::time::Duration;

use tokio::time::Instant;

/// What to do with a numbered server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The next one: deliver it.
    Next,
    /// Already delivered (a replay overlapping what arrived before the drop): drop it.
    Seen,
    /// A number was skipped: the server broke the protocol.
    Skipped,
}

/// The highest `seq` delivered in order, and what has been acknowledged of it.
#[derive(Debug)]
pub(crate) struct Inbox {
    delivered: u64,
    acked: u64,
    unacked_since: Option<Instant>,
    ack_every: u64,
    ack_interval: Duration,
}

impl Inbox {
    pub(crate) fn new(ack_every: u64, ack_interval: Duration) -> Self {
        Self {
            delivered: 0,
            acked: 0,
            unacked_since: None,
            ack_every: ack_every.max(1),
            ack_interval,
        }
    }

    /// The highest `seq` delivered in order (a resume's `last`).
    pub(crate) fn last(&self) -> u64 {
        self.delivered
    }

    pub(crate) fn arrive(&mut self, seq: u64, now: Instant) -> Arrival {
        if seq <= self.delivered {
            return Arrival::Seen;
        }
        if seq != self.delivered + 1 {
            return Arrival::Skipped;
        }
        self.delivered = seq;
        self.unacked_since.get_or_insert(now);
        Arrival::Next
    }

    /// The `seq` to acknowledge now, if enough arrived.
    pub(crate) fn ack_due(&mut self) -> Option<u64> {
        (self.delivered - self.acked >= self.ack_every).then(|| self.ack())
    }

    /// When the pending acknowledgement must go out at the latest.
    pub(crate) fn ack_deadline(&self) -> Option<Instant> {
        self.unacked_since.map(|since| since + self.ack_interval)
    }

    /// Marks everything delivered as acknowledged; the `seq` to send.
    pub(crate) fn ack(&mut self) -> u64 {
        self.acked = self.delivered;
        self.unacked_since = None;
        self.delivered
    }

    /// A resume acknowledges up to `last()` by itself.
    pub(crate) fn resumed(&mut self) {
        self.ack();
    }

    /// A new session numbers from 1 again.
    pub(crate) fn restart(&mut self) {
        self.delivered = 0;
        self.ack();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_delivered_once_in_order_and_a_skip_is_caught() {
        let now = Instant::now();
        let mut inbox = Inbox::new(10, Duration::from_millis(5));
        assert_eq!(inbox.arrive(1, now), Arrival::Next);
        assert_eq!(inbox.arrive(2, now), Arrival::Next);
        assert_eq!(inbox.arrive(2, now), Arrival::Seen);
        assert_eq!(inbox.arrive(1, now), Arrival::Seen);
        assert_eq!(inbox.arrive(4, now), Arrival::Skipped);
        assert_eq!(inbox.last(), 2);
        assert_eq!(inbox.arrive(3, now), Arrival::Next);
        inbox.restart();
        assert_eq!(inbox.arrive(1, now), Arrival::Next);
    }

    #[test]
    fn acks_are_cumulative_and_batched_by_count_or_time() {
        let now = Instant::now();
        let mut inbox = Inbox::new(3, Duration::from_millis(5));
        assert_eq!(inbox.ack_deadline(), None);
        inbox.arrive(1, now);
        assert_eq!(inbox.ack_deadline(), Some(now + Duration::from_millis(5)));
        inbox.arrive(2, now + Duration::from_millis(1));
        assert_eq!(inbox.ack_due(), None);
        // The deadline runs from the first unacknowledged message.
        assert_eq!(inbox.ack_deadline(), Some(now + Duration::from_millis(5)));
        inbox.arrive(3, now);
        assert_eq!(inbox.ack_due(), Some(3));
        assert_eq!(inbox.ack_deadline(), None);
        inbox.arrive(4, now);
        assert_eq!(inbox.ack(), 4);
        assert_eq!(inbox.ack_due(), None);
    }
}
