//! Group commit: appenders hand encoded records to a committer, which writes
//! the batch, syncs once, and completes every waiter of the batch together.
//!
//! Each queue has a [`GroupCommit`]: a pending [`Batch`] behind the *append
//! lock*, and a [`Sink`] (the active segment writer) behind a lock of its own
//! that only the committer takes, so appends keep landing in the next batch
//! while the sink syncs: the batch is whatever arrived during the previous
//! sync. A queue is in the [`CommitPool`]'s run queue at most once
//! (`scheduled`), so its batches are written in order by one thread at a time,
//! and a small pool of threads serves every queue.
//!
//! Failure is fail-stop: if the sink fails, the batch and everything pending
//! behind it are failed, and the queue refuses appends until it is reopened
//! from disk. Nothing is retried, because after a failed fsync the kernel may
//! have dropped the dirty pages while reporting later syncs as clean.
//!
//! This module takes its mutexes, condition variables and threads from
//! `crate::sync`, so `tests/loom_commit.rs` model-checks this exact code.
//! (Handles stay `std::sync::Arc`: loom's cannot be a method receiver or a
//! `dyn` pointer, and reference counts are not what is under test.)

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::Error;
use std::sync::Arc;

use crate::sync::{lock, thread, Condvar, Mutex};

/// Completion shared by every append of one batch.
#[derive(Debug, Default)]
pub struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct SlotState {
    done: Option<Result<(), Error>>,
    wakers: Vec<Waker>,
}

impl Slot {
    /// Completes the slot once; later calls are ignored.
    pub fn complete(&self, r: Result<(), Error>) {
        let wakers = {
            let mut st = lock(&self.state);
            if st.done.is_some() {
                return;
            }
            st.done = Some(r);
            std::mem::take(&mut st.wakers)
        };
        self.cv.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    fn wait(&self) -> Result<(), Error> {
        let mut st = lock(&self.state);
        loop {
            if let Some(r) = &st.done {
                return r.clone();
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut st = lock(&self.state);
        if let Some(r) = &st.done {
            return Poll::Ready(r.clone());
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_done(&self) -> bool {
        lock(&self.state).done.is_some()
    }

    fn failed(&self) -> bool {
        matches!(lock(&self.state).done, Some(Err(_)))
    }
}

/// An append in flight: its offsets are known at once; it completes when the
/// queue's fsync policy says the records are stored. Wait with
/// [`Append::wait`] on a plain thread or `.await` it from any async runtime
/// (it never blocks the executor).
#[derive(Debug, Clone)]
#[must_use = "an append is not stored until it completes"]
pub struct Append {
    slot: Arc<Slot>,
    offsets: Range<u64>,
}

impl Append {
    /// The offsets given to the appended records.
    pub fn offsets(&self) -> Range<u64> {
        self.offsets.clone()
    }

    /// Blocks until the records are stored (or failed to be).
    pub fn wait(self) -> Result<Range<u64>, Error> {
        self.slot.wait().map(|()| self.offsets)
    }

    /// Whether the append has completed.
    pub fn is_done(&self) -> bool {
        self.slot.is_done()
    }

    /// Whether the append has completed with an error.
    pub fn failed(&self) -> bool {
        self.slot.failed()
    }
}

impl Future for Append {
    type Output = Result<Range<u64>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.slot.poll(cx).map(|r| r.map(|()| self.offsets.clone()))
    }
}

/// Encoded records waiting for the committer.
#[derive(Debug, Default)]
pub struct Batch {
    /// The records, encoded back to back.
    pub buf: Vec<u8>,
    /// `(offset, position in buf)` of the first record and of records at
    /// least one index interval apart: index candidates.
    pub marks: Vec<(u64, usize)>,
    /// Offset of the first record in the batch.
    pub first: u64,
    /// Offset after the last record in the batch.
    pub next: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.next == self.first
    }
}

/// Where batches go: the active segment writer, or a model of it.
pub trait Sink: Send + 'static {
    /// Writes one batch and makes it as durable as the policy demands before
    /// returning. `Ok(Some(t))` asks for [`Sink::tick`] at `t` (an interval
    /// sync is due then).
    fn commit(&mut self, batch: &Batch) -> Result<Option<Instant>, Error>;
    /// Runs a deferred sync. Same contract as `commit`.
    fn tick(&mut self) -> Result<Option<Instant>, Error>;
}

#[derive(Debug)]
struct Pending {
    batch: Batch,
    slot: Arc<Slot>,
    scheduled: bool,
    failed: Option<Error>,
    closed: bool,
    spare: Vec<u8>,
    /// Completion of the batch the committer is writing, if any.
    inflight: Option<Arc<Slot>>,
}

/// What a job wants next from the pool.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do until someone submits it again.
    Idle,
    /// More work arrived: queue it again (behind the others, for fairness).
    Again,
    /// Run its timer at this instant.
    At(Instant),
}

/// Work the pool runs.
pub trait Job: Send + Sync + std::fmt::Debug {
    /// Runs one round; `timer` tells a timer firing from ordinary work.
    fn run(&self, timer: bool) -> Next;
    /// The pool is gone: fail whatever waits.
    fn abandon(&self);
    /// `run` panicked (a bug): fail whatever waits and stop the queue.
    fn panicked(&self);
}

/// One queue's group-commit state.
#[derive(Debug)]
pub struct GroupCommit<S> {
    pending: Mutex<Pending>,
    sink: Mutex<S>,
    pool: CommitPool,
}

impl<S: Sink + std::fmt::Debug> GroupCommit<S> {
    /// A queue whose next record gets `next_offset`.
    pub fn new(sink: S, next_offset: u64, pool: CommitPool) -> Arc<Self> {
        Arc::new(GroupCommit {
            pending: Mutex::new(Pending {
                batch: Batch { first: next_offset, next: next_offset, ..Batch::default() },
                slot: Arc::new(Slot::default()),
                scheduled: false,
                failed: None,
                closed: false,
                spare: Vec::new(),
                inflight: None,
            }),
            sink: Mutex::new(sink),
            pool,
        })
    }

    /// Appends `count` records, which `encode` writes into the batch given the
    /// first offset they get. `encode` must not fail: check records before.
    pub fn append(self: &Arc<Self>, count: u64, encode: impl FnOnce(&mut Batch, u64)) -> Result<Append, Error> {
        let mut p = lock(&self.pending);
        if let Some(e) = &p.failed {
            return Err(e.stopped_by());
        }
        if p.closed {
            return Err(Error::ShuttingDown);
        }
        let first = p.batch.next;
        encode(&mut p.batch, first);
        p.batch.next = first + count;
        let slot = p.slot.clone();
        let submit = !p.scheduled;
        p.scheduled = true;
        drop(p);
        if submit && !self.pool.submit(self.clone()) {
            self.fail_pending(Error::ShuttingDown, false);
        }
        Ok(Append { slot, offsets: first..first + count })
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        lock(&self.pending).batch.next
    }

    /// Refuses further appends and waits until everything appended so far
    /// has completed. Returns the failure that stopped the queue, if any.
    pub fn close(&self) -> Result<(), Error> {
        self.settle(true)
    }

    /// Waits until everything appended so far has completed.
    pub fn drain(&self) -> Result<(), Error> {
        self.settle(false)
    }

    fn settle(&self, close: bool) -> Result<(), Error> {
        let slot = {
            let mut p = lock(&self.pending);
            p.closed |= close;
            if let Some(e) = &p.failed {
                return Err(e.clone());
            }
            if !p.batch.is_empty() {
                p.slot.clone()
            } else if let Some(s) = &p.inflight {
                s.clone()
            } else {
                return Ok(());
            }
        };
        self.pool.run_pending(usize::MAX);
        slot.wait()
    }

    /// Runs `f` on the sink with no commit in progress.
    pub fn with_sink<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut lock(&self.sink))
    }

    /// The error that stopped this queue, if one did.
    pub fn failure(&self) -> Option<Error> {
        lock(&self.pending).failed.clone()
    }

    fn fail_pending(&self, e: Error, poison: bool) {
        let slot = {
            let mut p = lock(&self.pending);
            if poison && p.failed.is_none() {
                p.failed = Some(e.clone());
            }
            p.batch.buf.clear();
            p.batch.marks.clear();
            p.batch.first = p.batch.next;
            p.scheduled = false;
            p.inflight = None;
            std::mem::replace(&mut p.slot, Arc::new(Slot::default()))
        };
        slot.complete(Err(e));
    }

    fn after(&self, r: Result<Option<Instant>, Error>) -> Next {
        let deadline = match r {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "queue stopped after a storage failure");
                self.fail_pending(e, true);
                return Next::Idle;
            }
        };
        let mut p = lock(&self.pending);
        p.inflight = None;
        if !p.batch.is_empty() {
            return Next::Again;
        }
        p.scheduled = false;
        match deadline {
            Some(t) => Next::At(t),
            None => Next::Idle,
        }
    }
}

impl<S: Sink + std::fmt::Debug> Job for GroupCommit<S> {
    fn run(&self, timer: bool) -> Next {
        if timer {
            let r = lock(&self.sink).tick();
            if r.is_err() {
                return self.after(r);
            }
            // A timer must not clear `scheduled` while ordinary work is queued.
            return match r {
                Ok(Some(t)) => Next::At(t),
                _ => Next::Idle,
            };
        }
        let (batch, slot) = {
            let mut p = lock(&self.pending);
            if p.failed.is_some() || p.batch.is_empty() {
                p.scheduled = false;
                return Next::Idle;
            }
            let next = p.batch.next;
            let buf = std::mem::take(&mut p.spare);
            let fresh = Batch { buf, marks: Vec::new(), first: next, next };
            let batch = std::mem::replace(&mut p.batch, fresh);
            let slot = std::mem::replace(&mut p.slot, Arc::new(Slot::default()));
            p.inflight = Some(slot.clone());
            (batch, slot)
        };
        // If the sink panics, the guard fails the batch's waiters instead of
        // leaving them waiting forever; the pool then fail-stops the queue.
        let guard = FailOnUnwind(&slot);
        let r = lock(&self.sink).commit(&batch);
        std::mem::forget(guard);
        match r {
            Err(e) => {
                // Stop the queue before anyone hears of the failure, so no
                // append slips in between.
                let next = self.after(Err(e.clone()));
                slot.complete(Err(e));
                next
            }
            Ok(deadline) => {
                slot.complete(Ok(()));
                let mut buf = batch.buf;
                buf.clear();
                lock(&self.pending).spare = buf;
                self.after(Ok(deadline))
            }
        }
    }

    fn abandon(&self) {
        self.fail_pending(Error::ShuttingDown, false);
    }

    fn panicked(&self) {
        self.fail_pending(internal_error(), true);
    }
}

fn internal_error() -> Error {
    Error::Internal("the committer panicked; the queue is stopped".into())
}

struct FailOnUnwind<'a>(&'a Slot);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        self.0.complete(Err(internal_error()));
    }
}

#[derive(Debug, Default)]
struct PoolState {
    queue: std::collections::VecDeque<Arc<dyn Job>>,
    timers: Vec<(Instant, Arc<dyn Job>)>,
    shutdown: bool,
    live: usize,
    /// No threads: jobs run when [`CommitPool::run_pending`] is called, on
    /// the caller's thread. Deterministic simulation tests use this so that
    /// a seed fixes every I/O and its order.
    manual: bool,
}

#[derive(Debug, Default)]
struct PoolShared {
    state: Mutex<PoolState>,
    cv: Condvar,
}

/// A fixed set of committer threads shared by every queue.
#[derive(Debug, Clone)]
pub struct CommitPool {
    shared: Arc<PoolShared>,
    threads: Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
}

impl CommitPool {
    /// Starts `threads` committers; with 0, a manual pool (see
    /// [`CommitPool::run_pending`]). Fails if the OS refuses a thread (those
    /// already started are stopped again).
    pub fn new(threads: usize) -> std::io::Result<CommitPool> {
        let shared = Arc::new(PoolShared::default());
        let n = threads;
        {
            let mut st = lock(&shared.state);
            st.live = n.max(1);
            st.manual = n == 0;
        }
        let pool = CommitPool { shared, threads: Arc::new(Mutex::new(Vec::with_capacity(n))) };
        for _i in 0..n {
            let s = pool.shared.clone();
            #[cfg(not(loom))]
            let h = thread::Builder::new().name(format!("gmq-commit-{_i}")).spawn(move || worker(&s));
            #[cfg(loom)]
            let h: std::io::Result<_> = Ok(thread::spawn(move || worker(&s)));
            match h {
                Ok(h) => lock(&pool.threads).push(h),
                Err(e) => {
                    lock(&pool.shared.state).live = _i;
                    pool.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Queues a job; `false` once the pool has stopped.
    pub fn submit(&self, job: Arc<dyn Job>) -> bool {
        let mut st = lock(&self.shared.state);
        if st.live == 0 {
            return false;
        }
        st.queue.push_back(job);
        drop(st);
        self.shared.cv.notify_one();
        true
    }

    /// In a manual pool, runs up to `max` queued jobs (and due timers) on
    /// this thread and returns how many ran; a threaded pool runs nothing.
    pub fn run_pending(&self, max: usize) -> usize {
        let mut ran = 0;
        while ran < max {
            let (job, timer) = {
                let mut st = lock(&self.shared.state);
                if !st.manual {
                    return 0;
                }
                let now = Instant::now();
                if let Some(j) = st.queue.pop_front() {
                    (j, false)
                } else if let Some(i) = st.timers.iter().position(|(t, _)| *t <= now) {
                    (st.timers.swap_remove(i).1, true)
                } else {
                    return ran;
                }
            };
            let next = run_job(&job, timer);
            requeue(&self.shared, job, next);
            ran += 1;
        }
        ran
    }

    /// Lets the threads finish queued work, then stops and joins them.
    /// Waiting timers are abandoned: the queues flush themselves on close.
    pub fn shutdown(&self) {
        self.run_pending(usize::MAX);
        lock(&self.shared.state).shutdown = true;
        self.shared.cv.notify_all();
        let handles = std::mem::take(&mut *lock(&self.threads));
        for h in handles {
            let _ = h.join();
        }
        let jobs: Vec<Arc<dyn Job>> = {
            let mut st = lock(&self.shared.state);
            let mut jobs: Vec<Arc<dyn Job>> = st.queue.drain(..).collect();
            jobs.extend(st.timers.drain(..).map(|(_, j)| j));
            jobs
        };
        for j in jobs {
            j.abandon();
        }
    }
}

fn worker(shared: &PoolShared) {
    loop {
        let (job, timer) = {
            let mut st = lock(&shared.state);
            loop {
                if let Some(j) = st.queue.pop_front() {
                    break (j, false);
                }
                let now = Instant::now();
                if let Some(i) = st.timers.iter().position(|(t, _)| *t <= now) {
                    break (st.timers.swap_remove(i).1, true);
                }
                if st.shutdown {
                    st.live -= 1;
                    return;
                }
                st = match st.timers.iter().map(|(t, _)| *t).min() {
                    #[cfg(not(loom))]
                    Some(t) => {
                        shared
                            .cv
                            .wait_timeout(st, t.saturating_duration_since(now))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    _ => shared.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                };
            }
        };
        let next = run_job(&job, timer);
        requeue(shared, job, next);
    }
}

/// Runs a job, containing a panic to its own queue so the committer thread
/// and every other queue keep going.
fn run_job(job: &Arc<dyn Job>, timer: bool) -> Next {
    let j = job.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || j.run(timer))) {
        Ok(next) => next,
        Err(_) => {
            tracing::error!("committer panicked; the queue is stopped");
            job.panicked();
            Next::Idle
        }
    }
}

fn requeue(shared: &PoolShared, job: Arc<dyn Job>, next: Next) {
    match next {
        Next::Idle => {}
        Next::Again => {
            lock(&shared.state).queue.push_back(job);
        }
        Next::At(t) => {
            let mut st = lock(&shared.state);
            let same = |j: &Arc<dyn Job>| std::ptr::addr_eq(Arc::as_ptr(j), Arc::as_ptr(&job));
            match st.timers.iter_mut().find(|(_, j)| same(j)) {
                Some(e) => e.0 = e.0.min(t),
                None => st.timers.push((t, job)),
            }
        }
    }
}
