//! Small helpers the benchmark reports share.

use crate::stats::Spread;

/// The spread of `f` over the runs that have it (`None` if none has).
pub fn spread<T>(items: &[T], f: impl Fn(&T) -> Option<f64>) -> Option<Spread> {
    let xs: Vec<f64> = items.iter().filter_map(f).collect();
    (!xs.is_empty()).then(|| Spread::of(&xs))
}

/// `min – max` of a spread, each formatted by `fmt`.
pub fn range(s: &Spread, fmt: impl Fn(f64) -> String) -> String {
    format!("{} – {}", fmt(s.min), fmt(s.max))
}

/// A target's verdict as the tables print it.
pub fn verdict(ok: bool) -> String {
    if ok { "yes" } else { "**no**" }.into()
}
