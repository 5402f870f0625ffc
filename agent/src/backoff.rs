//! Exponential backoff with full jitter: each delay is drawn uniformly between zero and a
//! ceiling that doubles after every failure up to a cap, so that nodes cut off together do
//! not come back together.

use std::time::Duration;

use rand::Rng;

/// Growth factor of the ceiling after each failure.
pub const FACTOR: u32 = 2;

/// Delays between attempts of one operation.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays starting below `base`, growing by [`FACTOR`] and never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// [`Backoff::next_delay`] drawing from `rng`.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(rng.random_range(0.0..=1.0))
    }

    /// The largest delay the next attempt may wait.
    pub fn ceiling(&self) -> Duration {
        let growth = FACTOR.checked_pow(self.failures).unwrap_or(u32::MAX);
        self.base.saturating_mul(growth).min(self.cap)
    }

    /// Starts again from `base`, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(60);

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn delays_never_exceed_the_ceiling_even_after_many_failures() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay_with(&mut rng);
            assert!(delay <= ceiling && delay <= CAP, "{delay:?} > {ceiling:?}");
        }
    }

    #[test]
    fn delays_are_jittered_across_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(11);
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut backoff = Backoff::new(BASE, CAP);
                for _ in 0..8 {
                    backoff.next_delay_with(&mut rng);
                }
                backoff.next_delay_with(&mut rng)
            })
            .collect();
        let low = delays.iter().filter(|d| **d < CAP / 4).count();
        let high = delays.iter().filter(|d| **d > CAP * 3 / 4).count();
        assert!(low > 20 && high > 20, "low {low}, high {high}");
    }

    #[test]
    fn reset_starts_again_from_the_base() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE);
    }
}
