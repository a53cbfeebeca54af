//! The engine's append path, one benchmark cell at a time.
//!
//! A cell is an fsync policy, a payload size and a load shape:
//!
//! - **closed loop** ([`Load::Closed`]): `n` appender threads, each issuing
//!   one append, waiting for it to complete, then issuing the next — what
//!   `n` publishers that each wait for their `ok` do;
//! - **pipelined** ([`Load::Pipelined`]): one thread keeping up to `window`
//!   appends in flight, issuing a new one whenever fewer are outstanding —
//!   what one publisher pipelining its requests does. A closed-loop single
//!   appender pays a thread handoff to the committer and back per record;
//!   a pipelined one does not.
//! - **async tasks** ([`Load::Tasks`]): `n` tasks on one current-thread
//!   tokio runtime, each awaiting its append before issuing the next — the
//!   closed loop as the server runs it. Completion wakes a task (a queue
//!   push) instead of a thread (a futex wake and a context switch each).
//! - **pipelined async tasks** ([`Load::PipelinedTasks`]): `n` tasks on one
//!   current-thread tokio runtime, each keeping up to `window` publishes in
//!   flight and awaiting the oldest first — what `n` server connections with
//!   `window` pipelined requests each ask of the engine (`Queue::publish` of
//!   one message, completions seen in request order). `server-bench` runs it
//!   as the bare-engine reference for the server's overhead.
//!
//! Every cell opens a fresh engine in a fresh directory, appends to one
//! queue for `warmup + duration`, and counts only the appends that complete
//! inside the measured `duration`. Latency is from just before `append` to
//! the moment the appender sees the completion (in pipelined mode, it looks
//! at the oldest outstanding append first, so a later one that completed
//! earlier is seen with it).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use gmq_engine::{Append, Engine, EngineConfig, FsyncPolicy, LogConfig, Message, Pending, Published, Queue, QueueLog};
use serde::Serialize;

use crate::latency::{Latency, LatencySummary};
use crate::machine::{CpuSample, CpuUse};
use crate::{policy_label, size_label};

/// How the appends are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// This many threads, each waiting for its append before the next.
    Closed {
        /// Appender threads.
        appenders: usize,
    },
    /// One thread with up to this many appends in flight.
    Pipelined {
        /// Appends in flight at most.
        window: usize,
    },
    /// This many async tasks on one current-thread tokio runtime, each
    /// awaiting its append before the next.
    Tasks {
        /// Appender tasks.
        tasks: usize,
    },
    /// This many async tasks on one current-thread tokio runtime, each with
    /// up to `window` one-message publishes in flight, awaited oldest first.
    PipelinedTasks {
        /// Publisher tasks.
        tasks: usize,
        /// Publishes in flight per task at most.
        window: usize,
    },
}

impl Load {
    /// `8`, or `1 (window 1024)`.
    pub fn label(&self) -> String {
        match self {
            Load::Closed { appenders } => appenders.to_string(),
            Load::Pipelined { window } => format!("1 (window {window})"),
            Load::Tasks { tasks } => format!("{tasks} tasks"),
            Load::PipelinedTasks { tasks, window } => format!("{tasks} tasks × {window} in flight"),
        }
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// The queue's fsync policy.
    pub policy: FsyncPolicy,
    /// Payload bytes per record.
    pub payload: usize,
    /// How appends are issued.
    pub load: Load,
}

impl Cell {
    /// `always / 1 KiB / 64`.
    pub fn label(&self) -> String {
        format!("{} / {} / {}", policy_label(self.policy), size_label(self.payload as u64), self.load.label())
    }
}

/// How every cell runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Fresh data directories are made inside this one.
    pub base_dir: PathBuf,
    /// Time measured.
    pub duration: Duration,
    /// Time run before measuring (the queue's first segment, page cache,
    /// committer threads warming up).
    pub warmup: Duration,
    /// Log settings; each cell sets `fsync` to its own policy.
    pub log: LogConfig,
    /// Engine committer threads.
    pub committer_threads: usize,
}

impl Settings {
    /// Engine defaults, the given directory and times.
    pub fn new(base_dir: impl Into<PathBuf>, duration: Duration, warmup: Duration) -> Self {
        let d = EngineConfig::new(".");
        Settings {
            base_dir: base_dir.into(),
            duration,
            warmup,
            log: LogConfig {
                fsync: d.defaults.fsync,
                segment_bytes: d.defaults.segment_bytes,
                checkpoint_bytes: d.checkpoint_bytes,
            },
            committer_threads: d.committer_threads,
        }
    }
}

/// What one cell measured.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    /// `always`, `interval:10`, `never`.
    pub policy: String,
    /// Payload bytes per record.
    pub payload: usize,
    /// Bytes per record in the log (header, offset, timestamp, payload).
    pub record_bytes: usize,
    /// How appends were issued.
    pub load: Load,
    /// Appends completed in the measured time.
    pub records: u64,
    /// The measured time, seconds.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Payload MB per second (10^6 bytes).
    pub mb_per_s: f64,
    /// Log MB per second, record framing included.
    pub log_mb_per_s: f64,
    /// Append → completion latency.
    pub latency: LatencySummary,
    /// How busy the machine was meanwhile (warm-up included): a cell that
    /// other processes took CPU from is disturbed.
    pub cpu: CpuUse,
}

/// Runs one cell in a fresh engine under `settings.base_dir`.
pub fn run_cell(cell: &Cell, settings: &Settings) -> Result<CellResult> {
    let dir = tempfile::Builder::new()
        .prefix("gmq-bench-")
        .tempdir_in(&settings.base_dir)
        .with_context(|| format!("creating a data directory in {}", settings.base_dir.display()))?;
    let mut cfg = EngineConfig::new(dir.path().join("data"));
    cfg.defaults.fsync = cell.policy;
    cfg.defaults.segment_bytes = settings.log.segment_bytes;
    cfg.checkpoint_bytes = settings.log.checkpoint_bytes;
    cfg.committer_threads = settings.committer_threads;
    let engine = Engine::open(cfg).context("opening the engine")?;
    let queue = engine.queue("bench").context("creating the queue")?;
    let q = queue.log().clone();
    let msg = Message::new(Bytes::from(vec![0x5a_u8; cell.payload]));
    let record_bytes = gmq_engine::format::encoded_len(&msg).map_err(|e| anyhow!("payload does not fit: {e}"))?;

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let before = CpuSample::now();
    let (records, latency, seconds) = match cell.load {
        Load::Closed { appenders } => closed(&q, &msg, appenders, settings)?,
        Load::Pipelined { window } => pipelined(&q, &msg, window, settings)?,
        Load::Tasks { tasks: n } => tasks(&q, &msg, n, settings)?,
        Load::PipelinedTasks { tasks: n, window } => pipelined_tasks(&queue, &msg, n, window, settings)?,
    };
    let cpu = before.until(&CpuSample::now(), cpus);
    drop(q);
    drop(queue);
    engine.close().context("closing the engine")?;
    dir.close().context("removing the data directory")?;

    let rate = records as f64 / seconds;
    Ok(CellResult {
        policy: policy_label(cell.policy),
        payload: cell.payload,
        record_bytes,
        load: cell.load,
        records,
        seconds,
        records_per_s: rate,
        mb_per_s: rate * cell.payload as f64 / 1e6,
        log_mb_per_s: rate * record_bytes as f64 / 1e6,
        latency: latency.summary(),
        cpu,
    })
}

/// The measured window, fixed once every appender is ready.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    end: Instant,
}

impl Window {
    fn starting_now(s: &Settings) -> Window {
        let from = Instant::now() + s.warmup;
        Window { from, end: from + s.duration }
    }

    fn counts(&self, done: Instant) -> bool {
        done >= self.from && done < self.end
    }
}

fn closed(q: &Arc<QueueLog>, msg: &Message, appenders: usize, s: &Settings) -> Result<(u64, Latency, f64)> {
    let n = appenders.max(1);
    let ready = Barrier::new(n + 1);
    let window: OnceLock<Window> = OnceLock::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (ready, window) = (&ready, &window);
                std::thread::Builder::new()
                    .name(format!("appender-{i}"))
                    .spawn_scoped(scope, move || -> Result<(u64, Latency)> {
                        let mut lat = Latency::new();
                        let mut count = 0u64;
                        ready.wait();
                        let w = *window.get_or_init(|| Window::starting_now(s));
                        loop {
                            let t0 = Instant::now();
                            if t0 >= w.end {
                                break;
                            }
                            q.append(msg).context("append")?.wait().context("append completion")?;
                            let t1 = Instant::now();
                            if w.counts(t1) {
                                count += 1;
                                lat.record(t1 - t0);
                            }
                        }
                        Ok((count, lat))
                    })
                    .context("starting an appender thread")
            })
            .collect::<Result<_>>()?;
        // Fix the window before releasing the appenders, so that none of
        // them can start it late.
        window.get_or_init(|| Window::starting_now(s));
        ready.wait();
        let mut total = 0;
        let mut lat = Latency::new();
        for h in handles {
            let (c, l) = h.join().map_err(|_| anyhow!("an appender thread panicked"))??;
            total += c;
            lat.merge(&l);
        }
        Ok((total, lat, s.duration.as_secs_f64()))
    })
}

fn pipelined(q: &Arc<QueueLog>, msg: &Message, window: usize, s: &Settings) -> Result<(u64, Latency, f64)> {
    let cap = window.max(1);
    let mut lat = Latency::new();
    let mut count = 0u64;
    let mut inflight: VecDeque<(Instant, Append)> = VecDeque::with_capacity(cap);
    let w = Window::starting_now(s);
    loop {
        let mut now = Instant::now();
        if now >= w.end {
            break;
        }
        // Reap what has completed; when the window is full, wait for the
        // oldest append first.
        while let Some((issued, a)) = inflight.pop_front() {
            if inflight.len() + 1 < cap && !a.is_done() {
                inflight.push_front((issued, a));
                break;
            }
            a.wait().context("append completion")?;
            if inflight.len() + 1 >= cap {
                now = Instant::now();
            }
            if w.counts(now) {
                count += 1;
                lat.record(now - issued);
            }
        }
        inflight.push_back((now, q.append(msg).context("append")?));
    }
    // Whatever is still in flight completes after the window: not counted.
    for (_, a) in inflight {
        a.wait().context("append completion")?;
    }
    Ok((count, lat, s.duration.as_secs_f64()))
}

fn tasks(q: &Arc<QueueLog>, msg: &Message, n: usize, s: &Settings) -> Result<(u64, Latency, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread().build().context("starting a tokio runtime")?;
    rt.block_on(async {
        // Tasks start only once this function awaits, all within one poll.
        let w = Window::starting_now(s);
        let handles: Vec<_> = (0..n.max(1))
            .map(|_| {
                let (q, msg) = (q.clone(), msg.clone());
                tokio::spawn(async move {
                    let mut lat = Latency::new();
                    let mut count = 0u64;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= w.end {
                            break;
                        }
                        q.append(&msg).context("append")?.await.context("append completion")?;
                        let t1 = Instant::now();
                        if w.counts(t1) {
                            count += 1;
                            lat.record(t1 - t0);
                        }
                    }
                    Ok::<_, anyhow::Error>((count, lat))
                })
            })
            .collect();
        let mut total = 0;
        let mut lat = Latency::new();
        for h in handles {
            let (c, l) = h.await.context("an appender task failed")??;
            total += c;
            lat.merge(&l);
        }
        Ok((total, lat, s.duration.as_secs_f64()))
    })
}

fn pipelined_tasks(
    q: &Arc<Queue>,
    msg: &Message,
    n: usize,
    window: usize,
    s: &Settings,
) -> Result<(u64, Latency, f64)> {
    let cap = window.max(1);
    let rt = tokio::runtime::Builder::new_current_thread().build().context("starting a tokio runtime")?;
    rt.block_on(async {
        let w = Window::starting_now(s);
        let handles: Vec<_> = (0..n.max(1))
            .map(|_| {
                let (q, batch) = (q.clone(), [msg.clone()]);
                tokio::spawn(async move {
                    let mut lat = Latency::new();
                    let mut count = 0u64;
                    let mut inflight: VecDeque<(Instant, Pending<Published>)> = VecDeque::with_capacity(cap);
                    loop {
                        let now = Instant::now();
                        if now >= w.end {
                            break;
                        }
                        while inflight.len() < cap {
                            inflight.push_back((now, q.publish(&batch).context("publish")?));
                        }
                        // The oldest first, as a connection's replies go out
                        // in request order; then every later one already done.
                        let Some((issued, p)) = inflight.pop_front() else { break };
                        p.await.context("publish completion")?;
                        let done = Instant::now();
                        let mut seen = |issued: Instant| {
                            if w.counts(done) {
                                count += 1;
                                lat.record(done - issued);
                            }
                        };
                        seen(issued);
                        while inflight.front().is_some_and(|(_, p)| p.is_done()) {
                            let Some((issued, p)) = inflight.pop_front() else { break };
                            p.await.context("publish completion")?;
                            seen(issued);
                        }
                    }
                    // Whatever is still in flight completes after the window.
                    for (_, p) in inflight {
                        p.await.context("publish completion")?;
                    }
                    Ok::<_, anyhow::Error>((count, lat))
                })
            })
            .collect();
        let mut total = 0;
        let mut lat = Latency::new();
        for h in handles {
            let (c, l) = h.await.context("a publisher task failed")??;
            total += c;
            lat.merge(&l);
        }
        Ok((total, lat, s.duration.as_secs_f64()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Result<(tempfile::TempDir, Settings)> {
        let base = tempfile::tempdir()?;
        let s = Settings::new(base.path(), Duration::from_millis(150), Duration::from_millis(20));
        Ok((base, s))
    }

    #[test]
    fn closed_loop_cells_append_and_clean_up() -> Result<()> {
        let (base, s) = quick()?;
        for policy in [FsyncPolicy::Always, FsyncPolicy::Interval(5), FsyncPolicy::Never] {
            let cell = Cell { policy, payload: 100, load: Load::Closed { appenders: 4 } };
            let r = run_cell(&cell, &s)?;
            assert!(r.records > 0, "{r:?}");
            assert!(r.records_per_s > 0.0 && r.mb_per_s > 0.0, "{r:?}");
            assert_eq!(r.latency.count, r.records);
            assert!(r.latency.p50_us > 0.0 && r.latency.p99_us >= r.latency.p50_us, "{r:?}");
            assert!(r.record_bytes > 100);
        }
        assert_eq!(std::fs::read_dir(base.path())?.count(), 0, "data directories are removed");
        Ok(())
    }

    #[test]
    fn pipelined_cells_keep_appends_in_flight() -> Result<()> {
        let (_base, s) = quick()?;
        let cell = Cell { policy: FsyncPolicy::Never, payload: 1024, load: Load::Pipelined { window: 64 } };
        let r = run_cell(&cell, &s)?;
        assert!(r.records > 0, "{r:?}");
        assert_eq!(r.latency.count, r.records);
        assert_eq!(cell.label(), "never / 1 KiB / 1 (window 64)");
        Ok(())
    }

    #[test]
    fn pipelined_task_cells_keep_publishes_in_flight() -> Result<()> {
        let (_base, s) = quick()?;
        let cell =
            Cell { policy: FsyncPolicy::Always, payload: 1024, load: Load::PipelinedTasks { tasks: 4, window: 64 } };
        let r = run_cell(&cell, &s)?;
        assert!(r.records > 0, "{r:?}");
        assert_eq!(r.latency.count, r.records);
        assert_eq!(cell.label(), "always / 1 KiB / 4 tasks × 64 in flight");
        Ok(())
    }

    #[test]
    fn async_task_cells_await_appends() -> Result<()> {
        let (_base, s) = quick()?;
        let cell = Cell { policy: FsyncPolicy::Always, payload: 100, load: Load::Tasks { tasks: 8 } };
        let r = run_cell(&cell, &s)?;
        assert!(r.records > 0, "{r:?}");
        assert_eq!(r.latency.count, r.records);
        assert_eq!(cell.label(), "always / 100 B / 8 tasks");
        Ok(())
    }
}
