//! Reducing repeated runs: the median, and how far the runs spread around it.

use serde::Serialize;

/// The median of `xs` (the mean of the two middle values for an even count);
/// `NaN` for an empty slice. NaNs sort last.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median, minimum and maximum of one figure over several runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median over the runs.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
}

impl Spread {
    /// Reduces the values of several runs.
    pub fn of(xs: &[f64]) -> Spread {
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Spread { median: median(xs), min, max }
    }

    /// `(max - min) / median`, as a percentage: how noisy the runs were.
    pub fn range_pct(&self) -> f64 {
        if self.median == 0.0 || !self.median.is_finite() {
            return 0.0;
        }
        (self.max - self.min) / self.median * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn spread() {
        let s = Spread::of(&[90.0, 100.0, 120.0]);
        assert_eq!((s.median, s.min, s.max), (100.0, 90.0, 120.0));
        assert!((s.range_pct() - 30.0).abs() < 1e-9);
    }
}
