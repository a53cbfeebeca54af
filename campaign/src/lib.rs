//! GMQ's fault campaign: the real `gmq-server` binary under faults, checked
//! end to end against a [`ledger`] of what clients were told.
//!
//! - [`crash`]: `kill -9` at random moments under mixed load, with the
//!   offline compaction killed between some cycles.
//! - [`corrupt`]: seeded damage to a stopped data directory, then start,
//!   verify, repair.
//! - [`disk`]: `fdatasync` EIO and `pwrite` ENOSPC injected with strace, and
//!   a genuinely full tmpfs.
//! - [`hostile`]: thousands of connections and every kind of bad client
//!   against a live server under load.
//!
//! `tests/` runs the short version of each in CI; `campaign` (the binary)
//! runs them long. Results are in `docs/reliability.md`.

pub mod corrupt;
pub mod crash;
pub mod disk;
pub mod hostile;
pub mod ledger;
pub mod process;

/// A small seeded generator (xorshift64*), so a campaign replays exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The seed of a test: `GMQ_SEED` if set, else `default`; printed so a
/// failure can be replayed.
pub fn seed(name: &str, default: u64) -> u64 {
    let s = std::env::var("GMQ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    eprintln!("{name}: seed {s} (replay with GMQ_SEED={s})");
    s
}
