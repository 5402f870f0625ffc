//! A histogram of durations with fixed buckets, updated with atomics so that observing never
//! takes a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::text::{format_value, Page};

/// Upper bounds, in seconds, of the buckets of store operation durations: from half a
/// millisecond (a read from SQLite's page cache) to five seconds (a stalled disk).
pub const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds, in seconds, of the buckets of in-memory work such as handling one heartbeat:
/// from five microseconds (an uncontended lock) to a quarter second (a starved runtime).
pub const FAST_BUCKETS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25,
];

/// Counts of observed durations per bucket, with their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for durations above the last bound; not cumulative.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Number of durations observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of `name` with `labels`; the family
    /// must be open already.
    pub fn write(&self, page: &mut Page, name: &str, labels: &[(&str, &str)]) {
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(bound) => format_value(*bound),
                None => "+Inf".into(),
            };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            page.sample(&bucket_name, &with_le, cumulative as f64);
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        page.sample(&format!("{name}_sum"), labels, sum);
        // The count is the +Inf bucket, so that both always agree.
        page.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::text::Kind;

    #[test]
    fn buckets_are_cumulative_and_the_count_matches_the_last_bucket() {
        let histogram = Histogram::new(&[0.01, 0.1]);
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(50));
        histogram.observe(Duration::from_secs(2));

        let mut page = Page::new();
        page.family("opi_d_seconds", Kind::Histogram, "d");
        histogram.write(&mut page, "opi_d_seconds", &[("operation", "get")]);
        let text = page.finish();

        assert!(text.contains("opi_d_seconds_bucket{operation=\"get\",le=\"0.01\"} 1\n"));
        assert!(text.contains("opi_d_seconds_bucket{operation=\"get\",le=\"0.1\"} 2\n"));
        assert!(text.contains("opi_d_seconds_bucket{operation=\"get\",le=\"+Inf\"} 3\n"));
        assert!(
            text.contains("opi_d_seconds_sum{operation=\"get\"} 2.055\n"),
            "{text}"
        );
        assert!(text.contains("opi_d_seconds_count{operation=\"get\"} 3\n"));
        assert_eq!(histogram.count(), 3);
    }
}
