use std::time::Duration;

use wsguard_config::RetryConfig;

/// Settings of a [`Client`](crate::Client).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Backoff between connection attempts: `initial_backoff` before the first reconnection
    /// attempt, times `multiplier` after each failed one, at most `max_backoff`, each wait drawn
    /// from `wait * (1 ± jitter)`. `max_attempts` counts the attempts of one (re)connection, the
    /// first included; **0 means never give up**. With `enabled` false a dropped connection
    /// stops the client.
    pub retry: RetryConfig,
    /// Messages sent and not yet acknowledged by the server, at most. When the buffer is full,
    /// sending waits until acknowledgements free room.
    pub max_unacknowledged: usize,
    /// Events received and not yet taken from the [`Events`](crate::Events) stream, at most.
    /// When full, the client stops reading the socket (the server's log keeps what it sends).
    pub event_buffer: usize,
    /// Acknowledge after this many messages received...
    pub ack_every: u64,
    /// ...or this long after the first unacknowledged one, whichever comes first.
    pub ack_interval: Duration,
    /// The longest a connection attempt may take, up to the server's `session` frame.
    pub connect_timeout: Duration,
    /// After a resume refused with `unknown` or `expired`, resend the messages the old session
    /// had not acknowledged (only if they are safe to repeat); otherwise they are reported in
    /// [`Restart::unconfirmed`](crate::Restart::unconfirmed).
    pub resend_unconfirmed: bool,
}

impl Default for ClientOptions {
    /// Production retry settings, reconnecting forever; 1000 unacknowledged messages (the
    /// server's default session log); acknowledgements every 32 messages or 50 ms.
    fn default() -> Self {
        Self {
            retry: RetryConfig {
                max_attempts: 0,
                ..RetryConfig::production()
            },
            max_unacknowledged: 1000,
            event_buffer: 1024,
            ack_every: 32,
            ack_interval: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(10),
            resend_unconfirmed: false,
        }
    }
}

impl ClientOptions {
    /// Whether `failed` failed attempts exhaust the retry settings.
    pub(crate) fn gives_up_after(&self, failed: u32) -> bool {
        !self.retry.enabled || (self.retry.max_attempts != 0 && failed >= self.retry.max_attempts)
    }

    /// The wait before retry number `retry` (0 for the first), with jitter from `unit`, a draw
    /// in `0.0..1.0`.
    pub(crate) fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let base = self.retry.base_backoff(retry);
        let jitter = self.retry.jitter.clamp(0.0, 1.0);
        base.mul_f64(1.0 + jitter * (2.0 * unit - 1.0))
    }
}

/// A uniform draw in `0.0..1.0` from the OS's random source (0.5, no jitter, if it fails).
pub(crate) fn unit_draw() -> f64 {
    use rand::TryRngCore;
    match rand::rngs::OsRng.try_next_u64() {
        Ok(bits) => (bits >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(jitter: f64, max_attempts: u32) -> ClientOptions {
        ClientOptions {
            retry: RetryConfig {
                enabled: true,
                max_attempts,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(1000),
                multiplier: 2.0,
                jitter,
            },
            ..ClientOptions::default()
        }
    }

    #[test]
    fn backoff_grows_by_the_multiplier_up_to_the_cap() {
        let o = options(0.0, 0);
        let waits: Vec<_> = (0..6).map(|r| o.backoff(r, 0.9).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_spreads_the_wait_around_the_base() {
        let o = options(0.2, 0);
        assert_eq!(o.backoff(0, 0.0), Duration::from_millis(80));
        assert_eq!(o.backoff(0, 0.5), Duration::from_millis(100));
        assert!(o.backoff(0, 0.999_999) <= Duration::from_millis(120));
        let draw = unit_draw();
        assert!((0.0..1.0).contains(&draw));
    }

    #[test]
    fn zero_max_attempts_never_gives_up_and_disabled_always_does() {
        assert!(!options(0.0, 0).gives_up_after(1_000_000));
        assert!(!options(0.0, 3).gives_up_after(2));
        assert!(options(0.0, 3).gives_up_after(3));
        let mut disabled = options(0.0, 0);
        disabled.retry.enabled = false;
        assert!(disabled.gives_up_after(1));
    }
}
