//! Latency histograms: HDR histograms of nanoseconds, from 1 ns to 10 min,
//! three significant digits, merged across threads.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Recorded latencies of one thread or, merged, of one measurement.
#[derive(Debug, Clone)]
pub struct Latency {
    h: Histogram<u64>,
}

/// A latency distribution reduced to the figures reports show, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest sample, µs.
    pub max_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
}

const MAX_NS: u64 = 600_000_000_000;

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // 1 ns ..= 10 min at 3 significant digits is always a valid range.
        let h = Histogram::new_with_bounds(1, MAX_NS, 3)
            .unwrap_or_else(|e| unreachable!("fixed histogram bounds are valid: {e}"));
        Latency { h }
    }

    /// Records one latency (clamped into the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).clamp(1, MAX_NS);
        self.h.saturating_record(ns);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot go out of range.
        let _ = self.h.add(&other.h);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The value at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.h.value_at_quantile(q))
    }

    /// The summary reports show.
    pub fn summary(&self) -> LatencySummary {
        if self.h.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: self.h.len(),
            p50_us: us(self.h.value_at_quantile(0.50)),
            p99_us: us(self.h.value_at_quantile(0.99)),
            p999_us: us(self.h.value_at_quantile(0.999)),
            max_us: us(self.h.max()),
            mean_us: self.h.mean() / 1000.0,
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_merge() {
        let mut a = Latency::new();
        for us in 1..=100 {
            a.record(Duration::from_micros(us));
        }
        let mut b = Latency::new();
        b.record(Duration::from_secs(1));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 101);
        assert!((s.p50_us - 51.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_us - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.max_us - 1_000_000.0).abs() / 1_000_000.0 < 0.001, "{s:?}");
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }

    #[test]
    fn out_of_range_is_clamped() {
        let mut a = Latency::new();
        a.record(Duration::ZERO);
        a.record(Duration::from_secs(100_000));
        assert_eq!(a.count(), 2);
    }
}
