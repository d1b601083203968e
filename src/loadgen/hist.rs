//! A small log-bucketed latency histogram (HDR-like, about 1.6 % relative error).
//!
//! Values are recorded in microseconds. Values below 128 are kept exactly; above that each
//! power of two is split into 64 linear sub-buckets. Histograms are per worker task and
//! merged at the end, so recording is a plain array increment.

use std::time::Duration;

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are recorded exactly.
const LINEAR: u64 = 2 * SUB;
/// Values are clamped below `2^MAX_EXP` µs (about 12.7 days).
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (LINEAR + (MAX_EXP - SUB_BITS - 1) as u64 * SUB) as usize;

/// Latency histogram in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

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

fn index(v: u64) -> usize {
    let v = v.min((1u64 << MAX_EXP) - 1);
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let shift = e - SUB_BITS;
    let mant = v >> shift;
    (LINEAR + (shift as u64 - 1) * SUB + (mant - SUB)) as usize
}

/// The largest value that falls into bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let j = i - LINEAR;
    let shift = j / SUB + 1;
    let mant = j % SUB + SUB;
    ((mant + 1) << shift) - 1
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }

    /// Records one value in microseconds.
    pub fn record_us(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.max = self.max.max(v);
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1): the highest value equivalent to the bucket that
    /// holds the `ceil(q * count)`-th smallest value, capped at the exact maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return bucket_high(i).min(self.max);
            }
        }
        self.max
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count,
            mean: if self.count == 0 {
                0.0
            } else {
                self.sum as f64 / self.count as f64
            },
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut prev_high = None;
        for i in 0..BUCKETS {
            let hi = bucket_high(i);
            if let Some(p) = prev_high {
                assert_eq!(index(p + 1), i, "bucket {i}");
            }
            assert_eq!(index(hi), i);
            prev_high = Some(hi);
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_small() {
        for v in [1u64, 127, 128, 1000, 12_345, 999_999, 123_456_789] {
            let hi = bucket_high(index(v));
            assert!(hi >= v);
            assert!((hi - v) as f64 <= v as f64 / 60.0 + 1.0, "{v} -> {hi}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record_us(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max, 1000);
        assert!((495..=510).contains(&s.p50), "{}", s.p50);
        assert!((895..=915).contains(&s.p90), "{}", s.p90);
        assert!((985..=1000).contains(&s.p99), "{}", s.p99);
        let mut h2 = Histogram::new();
        h2.record_us(5000);
        h.merge(&h2);
        assert_eq!(h.summary().max, 5000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
