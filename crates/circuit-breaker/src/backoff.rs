//! The open wait of each consecutive open cycle.

use std::time::Duration;

use wsguard_config::{BackoffStrategy, CircuitBreakerConfig};

/// The wait of open cycle `cycle` (1 for the first opening since the breaker last closed).
/// `unit` is a uniform draw in `[0, 1)` used for jitter.
pub(crate) fn open_wait(config: &CircuitBreakerConfig, cycle: u32, unit: f64) -> Duration {
    let b = &config.backoff;
    let base = config.timeout.as_secs_f64();
    let (wait, cap) = match b.strategy {
        BackoffStrategy::Fixed => (base, f64::INFINITY),
        BackoffStrategy::Exponential => {
            let grown = base * b.multiplier.powi(cycle.saturating_sub(1).min(1024) as i32);
            let cap = b.max_wait.as_secs_f64().max(base);
            (grown.min(cap), cap)
        }
    };
    let jittered = if b.jitter > 0.0 {
        wait * (1.0 - b.jitter + 2.0 * b.jitter * unit)
    } else {
        wait
    };
    Duration::try_from_secs_f64(jittered.min(cap)).unwrap_or(Duration::MAX)
}

/// splitmix64: enough randomness for jitter, seeded per breaker.
pub(crate) fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

pub(crate) fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

#[cfg(test)]
mod tests {
    use wsguard_config::OpenBackoff;

    use super::*;

    fn config(strategy: BackoffStrategy, jitter: f64) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            timeout: Duration::from_secs(10),
            backoff: OpenBackoff {
                strategy,
                multiplier: 2.0,
                max_wait: Duration::from_secs(35),
                jitter,
            },
            ..CircuitBreakerConfig::testing()
        }
    }

    #[test]
    fn exponential_wait_grows_per_cycle_up_to_cap() {
        let c = config(BackoffStrategy::Exponential, 0.0);
        let waits: Vec<_> = (1..=4).map(|n| open_wait(&c, n, 0.5).as_secs()).collect();
        assert_eq!(waits, [10, 20, 35, 35]);
    }

    #[test]
    fn fixed_wait_never_grows() {
        let c = config(BackoffStrategy::Fixed, 0.0);
        assert_eq!(open_wait(&c, 1, 0.0), open_wait(&c, 9, 0.0));
    }

    #[test]
    fn jitter_spreads_wait_both_ways() {
        let c = config(BackoffStrategy::Fixed, 0.5);
        assert_eq!(open_wait(&c, 1, 0.0).as_secs(), 5);
        assert_eq!(open_wait(&c, 1, 0.5).as_secs(), 10);
        assert!(open_wait(&c, 1, 0.999).as_secs_f64() > 14.9);
        let mut s = seed();
        for _ in 0..1000 {
            let u = next_unit(&mut s);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
