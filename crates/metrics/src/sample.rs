//! Sampling decisions for latency timing and per-client detail.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Where the registry draws the randomness for its sampling decisions.
///
/// Each call is sampled independently with probability `sample_rate` (a Bernoulli trial), so
/// sampled figures are unbiased. The default, [`Sampler::thread_local`], keeps one small RNG
/// per thread, seeded once from the OS, so a decision touches no shared state and makes no
/// syscall.
/// [`Sampler::seeded`] gives a reproducible sequence for tests.
pub struct Sampler {
    kind: Kind,
}

enum Kind {
    ThreadLocal,
    // SplitMix64 over a shared counter: deterministic for a given call order.
    Seeded(AtomicU64),
}

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl Sampler {
    /// A per-thread `SmallRng` seeded from the OS; the default.
    pub fn thread_local() -> Self {
        Self {
            kind: Kind::ThreadLocal,
        }
    }

    /// A reproducible sequence starting from `seed`, shared by every thread of the registry (one
    /// atomic add per decision; meant for tests).
    pub fn seeded(seed: u64) -> Self {
        Self {
            kind: Kind::Seeded(AtomicU64::new(seed)),
        }
    }

    fn next_u64(&self) -> u64 {
        match &self.kind {
            Kind::ThreadLocal => RNG.with(|rng| rng.borrow_mut().random()),
            Kind::Seeded(state) => {
                let mut z = state
                    .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
                    .wrapping_add(GOLDEN_GAMMA);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            }
        }
    }

    /// Whether this call is sampled, for a threshold from [`threshold`].
    #[inline]
    pub(crate) fn sample(&self, threshold: u64) -> bool {
        match threshold {
            ALWAYS => true,
            0 => false,
            t => self.next_u64() < t,
        }
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::thread_local()
    }
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::ThreadLocal => f.write_str("Sampler::ThreadLocal"),
            Kind::Seeded(_) => f.write_str("Sampler::Seeded"),
        }
    }
}

pub(crate) const ALWAYS: u64 = u64::MAX;

/// The threshold a uniform `u64` must fall below to be sampled at `rate`.
pub(crate) fn threshold(rate: f64) -> u64 {
    if rate.is_nan() || rate <= 0.0 {
        0
    } else if rate >= 1.0 {
        ALWAYS
    } else {
        // 2^64 * rate, below 2^64 since rate < 1.
        (rate * 18_446_744_073_709_551_616.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_one_and_zero_skip_the_rng() {
        let s = Sampler::seeded(1);
        assert!((0..1000).all(|_| s.sample(threshold(1.0))));
        assert!((0..1000).all(|_| !s.sample(threshold(0.0))));
    }

    #[test]
    fn seeded_sampler_is_reproducible() {
        let a = Sampler::seeded(7);
        let b = Sampler::seeded(7);
        let t = threshold(0.5);
        let xs: Vec<bool> = (0..64).map(|_| a.sample(t)).collect();
        let ys: Vec<bool> = (0..64).map(|_| b.sample(t)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().any(|x| *x) && xs.iter().any(|x| !*x));
    }

    #[test]
    fn thread_local_rate_is_close() {
        let s = Sampler::thread_local();
        let t = threshold(0.25);
        let n = 100_000;
        let hits = (0..n).filter(|_| s.sample(t)).count() as f64;
        // 6 standard deviations of a binomial(n, 0.25).
        let sd = (n as f64 * 0.25 * 0.75).sqrt();
        assert!((hits - n as f64 * 0.25).abs() < 6.0 * sd, "{hits}");
    }
}
