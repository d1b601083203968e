//! Latency histograms: [HdrHistogram](https://hdrhistogram.github.io/HdrHistogram/) (the
//! `hdrhistogram` crate) in microseconds, two significant digits (values within 1 %),
//! resized as larger values arrive. Each worker task records into its own and they are merged
//! at the end, so recording takes no lock.

use std::time::Duration;

/// Percentile summary of a histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Latency histogram in microseconds.
#[derive(Clone)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram(hdrhistogram::Histogram::new(2).expect("2 significant digits are valid"))
    }

    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        // `record` grows the histogram as needed; only a value it cannot index saturates.
        if self.0.record(us).is_err() {
            self.0.saturating_record(us);
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        self.0
            .add(&other.0)
            .expect("an auto-resizing histogram takes any other");
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(Duration::from_millis(v));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.01;
        assert!(near(s.p50, 500_000), "{}", s.p50);
        assert!(near(s.p90, 900_000), "{}", s.p90);
        assert!(near(s.p99, 990_000), "{}", s.p99);
        assert!(near(s.max, 1_000_000), "{}", s.max);
        assert!((s.mean - 500_500.0).abs() < 5_005.0, "{}", s.mean);
    }

    #[test]
    fn merge_keeps_both_sides_and_empty_is_zero() {
        let mut a = Histogram::new();
        a.record(Duration::from_millis(2));
        let mut b = Histogram::new();
        // Far beyond what `a` was sized for: it grows.
        b.record(Duration::from_secs(600));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 2);
        assert!(s.max >= 594_000_000, "{}", s.max);
        assert!(s.p50 <= 2_100, "{}", s.p50);
        assert_eq!(Histogram::new().summary().p99, 0);
    }
}
