//! Loom model of the group-commit handoff: appenders, the committer pool and
//! shutdown, over the real `commit` module (built with `--cfg loom`).
//!
//! Guards against: a waiter told "stored" before a sync covering its record;
//! a lost wake-up (an append that nobody commits, or a waiter nobody
//! completes: loom reports the deadlock); shutdown that leaves a waiter
//! hanging; a failed sync acknowledging anything.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p gmq-engine --test loom_commit --release`
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
#![cfg(loom)]

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Instant;

// The durability marker must be loom's: loom only reorders operations it
// can see, and the check "acknowledged after the sync" is between these two.
use loom::sync::atomic::AtomicU64;

use gmq_engine::commit::{Batch, CommitPool, GroupCommit, Sink};
use gmq_engine::Error;

/// Records how far the log is durable; optionally fails every sync.
#[derive(Debug)]
struct ModelSink {
    durable: Arc<AtomicU64>,
    fail: bool,
}

impl Sink for ModelSink {
    fn commit(&mut self, b: &Batch) -> Result<Option<Instant>, Error> {
        assert_eq!(b.buf.len() as u64, b.next - b.first, "a batch holds exactly its records");
        assert_eq!(self.durable.load(SeqCst), b.first, "batches are committed in order, none skipped");
        if self.fail {
            return Err(Error::ShuttingDown);
        }
        // loom sees this as the sync: the waiter check below must observe it.
        self.durable.store(b.next, SeqCst);
        Ok(None)
    }
    fn tick(&mut self) -> Result<Option<Instant>, Error> {
        Ok(None)
    }
}

/// Explores interleavings with at most `LOOM_MAX_PREEMPTIONS` (default 3)
/// preemptions per run: every bug that needs fewer is found, and the
/// search stays within CI's time.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// A one-thread pool, the durability marker, and a queue over the model sink.
fn setup(fail: bool) -> (CommitPool, Arc<AtomicU64>, Arc<GroupCommit<ModelSink>>) {
    let pool = CommitPool::new(1).unwrap();
    let durable = Arc::new(AtomicU64::new(0));
    let gc = GroupCommit::new(ModelSink { durable: durable.clone(), fail }, 0, pool.clone());
    (pool, durable, gc)
}

fn appender(gc: Arc<GroupCommit<ModelSink>>, durable: Arc<AtomicU64>, fail: bool) -> loom::thread::JoinHandle<()> {
    loom::thread::spawn(move || {
        let Ok(a) = gc.append(1, |b, first| b.buf.push(first as u8)) else { return };
        if let Ok(r) = a.wait() {
            assert!(!fail, "a failed sync acknowledged an append");
            assert!(durable.load(SeqCst) >= r.end, "acknowledged before a covering sync");
        }
    })
}

#[test]
fn waiters_complete_only_after_a_covering_sync() {
    model(|| {
        let (pool, durable, gc) = setup(false);
        let hs: Vec<_> = (0..2).map(|_| appender(gc.clone(), durable.clone(), false)).collect();
        for h in hs {
            h.join().unwrap();
        }
        gc.close().unwrap();
        assert_eq!(durable.load(SeqCst), 2);
        pool.shutdown();
    });
}

#[test]
fn shutdown_completes_or_fails_every_waiter() {
    model(|| {
        let (pool, durable, gc) = setup(false);
        let h = appender(gc.clone(), durable.clone(), false);
        pool.shutdown();
        h.join().unwrap();
        // Whatever the interleaving, nothing is left waiting: an append after
        // shutdown fails at once.
        if let Ok(a) = gc.append(1, |b, first| b.buf.push(first as u8)) {
            let _ = a.wait();
        }
    });
}

#[test]
fn a_failed_sync_fails_its_batch_and_stops_the_queue() {
    model(|| {
        let (pool, durable, gc) = setup(true);
        let hs: Vec<_> = (0..2).map(|_| appender(gc.clone(), durable.clone(), true)).collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(gc.failure().is_some());
        assert!(gc.append(1, |b, first| b.buf.push(first as u8)).is_err(), "no retry after a failure");
        pool.shutdown();
    });
}
