//! Helpers shared by the engine's integration tests.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
#![allow(dead_code)]

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use gmq_engine::{Message, SystemClock};

/// splitmix64: small, seedable, the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.range(0, 100) < pct
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A message with random payload and, sometimes, every optional field.
pub fn random_message(rng: &mut Rng, max_payload: u64) -> Message {
    let n = rng.range(0, max_payload + 1) as usize;
    let mut m = Message::new(rng.bytes(n));
    if rng.pct(30) {
        m.event = Some(format!("ev{}", rng.range(0, 5)));
        m.key = Some(format!("k{}", rng.range(0, 1000)));
        m.headers = vec![("reply_to".into(), format!("r{}", rng.range(0, 9))), ("h".into(), String::new())];
        m.ttl_ms = Some(rng.range(1, 1 << 40));
        m.msg_id = Some(format!("id-{}", rng.next_u64()));
    }
    m
}

pub fn clock() -> Arc<SystemClock> {
    Arc::new(SystemClock)
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Minimal executor: polls a future on this thread, parking between wakes.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Seeds to run: `GMQ_SEED` replays one, `GMQ_SEEDS` sets how many.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("GMQ_SEED") {
        return vec![s.parse().expect("GMQ_SEED must be an integer")];
    }
    let n = std::env::var("GMQ_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_count);
    let base = std::env::var("GMQ_SEED_BASE").ok().and_then(|s| s.parse().ok()).unwrap_or(0u64);
    (base..base + n).collect()
}

/// Runs `f` for each seed, and on a panic names the seed and how to replay it.
pub fn for_seeds(test: &str, default_count: u64, f: impl Fn(u64) + std::panic::RefUnwindSafe) {
    for seed in seeds(default_count) {
        if let Err(e) = std::panic::catch_unwind(|| f(seed)) {
            eprintln!("{test}: failed with seed {seed}; replay with GMQ_SEED={seed} cargo test -p gmq-engine --test <file> {test}");
            std::panic::resume_unwind(e);
        }
    }
}
