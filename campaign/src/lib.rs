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

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gmq_client::{Client, ConsumeOptions, Options};

/// The ledger, shared by the campaign's client tasks.
pub type Shared = Arc<Mutex<ledger::Ledger>>;

/// Locks the ledger (a panicked task does not hide what it recorded).
pub fn lock(l: &Shared) -> MutexGuard<'_, ledger::Ledger> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client with the campaign's timeouts.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let opts = Options { connect_timeout: Duration::from_secs(10), request_timeout: Some(Duration::from_secs(60)) };
    Ok(Client::connect_with(addr, opts).await?)
}

/// A single-threaded runtime for a step that talks to the server.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// One round of a manual-ack consumer: consume with `o`, record the
/// deliveries, record the ack as sent, ack, record it as confirmed. Returns
/// how many messages came (0: none within `o.wait_ms`).
pub async fn take_and_ack(
    c: &Client,
    ledger: &Shared,
    queue: &str,
    consumer: u64,
    o: &ConsumeOptions,
) -> Result<usize, gmq_client::Error> {
    let got = c.consume(queue, o).await?;
    if got.is_empty() {
        return Ok(0);
    }
    let offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
    {
        let mut l = lock(ledger);
        for d in &got {
            l.delivered(queue, &o.group, consumer, d.offset, &d.payload, d.deliveries);
        }
        l.acking(queue, &o.group, &offsets);
    }
    c.ack(queue, &o.group, &offsets).await?;
    lock(ledger).acked(queue, &o.group, &offsets);
    Ok(offsets.len())
}

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
