//! `broker-bench`: the broker paths above the append path, in-process.
//!
//! - `consume`: consume + manual ack throughput of competing consumer
//!   threads of one group over a pre-filled backlog, per fsync policy (the
//!   ack-state persistence cost under `always` is the ratio to `never`,
//!   measured in the same run).
//! - `restart`: how long `Engine::open` takes on a data directory of many
//!   queues and gigabytes, after a clean `close()` and after a crash
//!   (SIGKILL of a writer process) with unsynced tails of several sizes.
//!
//! Prints a markdown report (medians of `--runs` runs) to stdout, progress
//! to stderr, and optionally everything as JSON.
//!
//! ```text
//! broker-bench consume --runs 3
//! broker-bench restart --runs 3 --total-gib 10 --queues 1000
//! ```

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use gmq_benches::fio::shell_quote;
use gmq_benches::latency::{Latency, LatencySummary};
use gmq_benches::machine::{load_average, runs_table, wait_quiet, CpuSample, CpuUse, MachineInfo, RunLoad};
use gmq_benches::report::{range, spread, verdict};
use gmq_benches::stats::median;
use gmq_benches::table::{grouped, latency_us, pct, sig3, Align, Table};
use gmq_benches::{engine_version, parse_size, policy_label, size_label};
use gmq_engine::{AckMode, ConsumeOptions, Engine, EngineConfig, FsyncPolicy, Message, Pending, Queue, QueueSpec};
use serde::{Deserialize, Serialize};

/// Target: 4 consumers, acks batched per 64, messages/s.
const TARGET_CONSUME_4: f64 = 500_000.0;
/// Target: `Engine::open` after a clean close, seconds.
const TARGET_CLEAN_OPEN_S: f64 = 1.0;

/// Broker benchmarks: consume + ack throughput, restart time.
#[derive(Debug, Parser)]
#[command(name = "broker-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Consume + manual ack throughput of competing consumers of one group.
    Consume(ConsumeArgs),
    /// `Engine::open` time after a clean close and after a crash.
    Restart(RestartArgs),
    /// (internal) The writer process `restart` starts and kills.
    #[command(name = "__writer", hide = true)]
    Writer(WriterArgs),
}

/// Options every measuring subcommand takes.
#[derive(Debug, Args)]
struct Common {
    /// Repeat everything this many times; tables show the medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory on the disk to measure; fresh data directories are made
    /// inside it and removed afterwards. Created if missing.
    #[arg(long, default_value = "/work/bench-data")]
    dir: PathBuf,
    /// Also write every run and the medians as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    quiet: gmq_benches::cli::Quiet,
    /// Measure even when the directory is on tmpfs.
    #[arg(long)]
    allow_tmpfs: bool,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Competing consumer threads of the one group.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    consumers: Vec<usize>,
    /// Fsync policies of the queue (log and group state).
    #[arg(long, value_delimiter = ',', default_value = "never,always")]
    policies: Vec<FsyncPolicy>,
    /// Messages published to each policy's queue before consuming starts
    /// (every cell consumes all of them).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Payload bytes per message.
    #[arg(long, default_value = "1k", value_parser = parse_payload)]
    payload: usize,
    /// `max` per consume call, and offsets per ack call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Messages per publish while pre-filling.
    #[arg(long, default_value_t = 64)]
    publish_batch: usize,
    /// Engine committer threads.
    #[arg(long, default_value_t = 2)]
    committer_threads: usize,
    /// Times a disturbed cell is run again; the last attempt counts.
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// Give up on a cell that has not consumed its backlog after this many
    /// seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

#[derive(Debug, Args)]
struct RestartArgs {
    #[command(flatten)]
    common: Common,
    /// GiB of payload in the data directory (spread evenly over the queues).
    #[arg(long, default_value_t = 10.0)]
    total_gib: f64,
    /// Queues in the data directory.
    #[arg(long, default_value_t = 1000)]
    queues: usize,
    /// Payload bytes per message while filling and for the unsynced tails.
    #[arg(long, default_value = "64k", value_parser = parse_payload)]
    msg_size: usize,
    /// Messages per publish while filling.
    #[arg(long, default_value_t = 16)]
    publish_batch: usize,
    /// Unsynced tails to crash with: payload bytes written (fsync never,
    /// spread over the queues) after every queue was flushed and before the
    /// SIGKILL.
    #[arg(long, value_delimiter = ',', default_value = "0,64m,1g", value_parser = parse_size)]
    tails: Vec<u64>,
    /// Before each crash, every queue gets one message of this many bytes and
    /// is flushed (synced, checkpointed), as on a server where every queue
    /// is in use. 0 to touch none.
    #[arg(long, default_value = "1k", value_parser = parse_size)]
    touch_size: u64,
    /// Close the filling process cleanly instead of killing it right after
    /// it wrote everything (which measures a crash with the whole fill
    /// unsynced, once).
    #[arg(long)]
    no_fill_crash: bool,
    /// Drop the page cache (`/proc/sys/vm/drop_caches`, needs root) before
    /// each clean open, and measure a cold open as well.
    #[arg(long)]
    drop_caches: bool,
    /// Skip the crashes whose tail is written back (`sync`) between the
    /// SIGKILL and the open, which separate the cost of scanning a tail from
    /// the cost of writing it back.
    #[arg(long)]
    no_synced_tails: bool,
}

#[derive(Debug, Args)]
struct WriterArgs {
    /// The data directory.
    #[arg(long)]
    data: PathBuf,
    /// Queues `q00000`… to create (if missing) and write.
    #[arg(long)]
    queues: usize,
    /// Payload bytes written to each queue first.
    #[arg(long, default_value_t = 0)]
    fill_bytes: u64,
    /// Payload bytes per message.
    #[arg(long)]
    msg_size: usize,
    /// Messages per publish.
    #[arg(long, default_value_t = 16)]
    publish_batch: usize,
    /// Then one message of this many bytes to every queue (0: none).
    #[arg(long, default_value_t = 0)]
    touch_size: u64,
    /// Then flush every queue (sync and checkpoint).
    #[arg(long)]
    flush: bool,
    /// Then this many payload bytes spread over the queues, not flushed.
    #[arg(long, default_value_t = 0)]
    tail_bytes: u64,
    /// Close the engine at the end (else: report, then wait to be killed).
    #[arg(long)]
    close: bool,
}

fn parse_payload(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    usize::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| format!("payload size {s:?} out of range"))
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Consume(a) => consume_main(&a),
        Cmd::Restart(a) => restart_main(&a),
        Cmd::Writer(a) => writer_main(&a),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn command_line() -> String {
    std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" ")
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A payload that is not all zeros.
fn pattern(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i.wrapping_mul(31).wrapping_add(7) % 251) as u8 + 1).collect::<Vec<u8>>())
}

/// The base directory: created if missing, on a disk unless allowed.
struct Base {
    dir: PathBuf,
    created: bool,
    machine: MachineInfo,
}

impl Base {
    fn prepare(c: &Common) -> Result<Base> {
        if c.runs == 0 {
            bail!("--runs must be at least 1");
        }
        if !(c.quiet.quiet_wait.is_finite() && c.quiet.quiet_wait >= 0.0) {
            bail!("--quiet-wait must be non-negative");
        }
        let created = !c.dir.exists();
        std::fs::create_dir_all(&c.dir).with_context(|| format!("creating --dir {}", c.dir.display()))?;
        let dir = c.dir.canonicalize().with_context(|| format!("--dir {}", c.dir.display()))?;
        let machine = MachineInfo::probe(&dir);
        if machine.disk.is_memory() && !c.allow_tmpfs {
            if created {
                let _ = std::fs::remove_dir(&dir);
            }
            bail!(
                "{} is on {}, which is memory, not a disk; pick a directory on the disk to measure \
                 (or pass --allow-tmpfs)",
                dir.display(),
                machine.disk.fs_type
            );
        }
        Ok(Base { dir, created, machine })
    }

    /// A fresh directory inside the base one, removed when dropped.
    fn tempdir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.dir)
            .with_context(|| format!("creating a directory in {}", self.dir.display()))
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        if self.created {
            // Only if empty: anything else in it is not ours.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

fn write_json<T: Serialize>(path: &Option<PathBuf>, value: &T) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value).context("encoding the JSON report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn header(o: &mut String, title: &str, command: &str, machine: &MachineInfo) {
    let _ = writeln!(o, "# {title}\n\n```\n{command}\n```\n");
    let _ = writeln!(o, "{}", machine.describe().trim_end());
    if let Some(v) = engine_version() {
        let _ = writeln!(o, "- engine: {v}");
    }
}

// ---------------------------------------------------------------- consume

/// One cell: a policy and a consumer count.
#[derive(Debug, Clone, Serialize)]
struct ConsumeCell {
    policy: String,
    consumers: usize,
    /// Messages of the backlog (the group consumes all of them).
    backlog: u64,
    /// Messages acked (must equal the backlog).
    acked: u64,
    /// Consume calls, and those that returned nothing.
    consume_calls: u64,
    empty_consumes: u64,
    /// Messages delivered more than once.
    redelivered: u64,
    /// Seconds from the start signal to the last ack stored.
    seconds: f64,
    /// Acked messages per second.
    msgs_per_s: f64,
    /// Payload MB/s (10^6) consumed.
    mb_per_s: f64,
    /// Latency of a consume call (it never waits under manual ack).
    consume_latency: LatencySummary,
    /// Latency of an ack call plus the wait for its `Pending`.
    ack_latency: LatencySummary,
    cpu: CpuUse,
    /// Attempts made (1 unless disturbed).
    attempts: usize,
}

#[derive(Debug, Serialize)]
struct ConsumeRun {
    started: u64,
    load_before: f64,
    load_after: f64,
    cpu: CpuUse,
    /// Seconds each policy's queue took to pre-fill (publish, then flush).
    prefill: Vec<(String, f64)>,
    cells: Vec<ConsumeCell>,
}

#[derive(Debug, Serialize)]
struct ConsumeReport<'a> {
    command: &'a str,
    machine: &'a MachineInfo,
    engine: Option<String>,
    runs: &'a [ConsumeRun],
}

fn consume_main(a: &ConsumeArgs) -> Result<()> {
    let base = Base::prepare(&a.common)?;
    if a.consumers.is_empty() || a.consumers.contains(&0) || a.policies.is_empty() {
        bail!("--consumers and --policies need at least one value, and consumer counts must be positive");
    }
    if a.backlog == 0 || a.batch == 0 || a.publish_batch == 0 {
        bail!("--backlog, --batch and --publish-batch must be positive");
    }
    let command = command_line();
    let machine = &base.machine;
    eprintln!(
        "broker-bench consume: {} cells × {} runs, backlog {} × {} per policy",
        a.consumers.len() * a.policies.len(),
        a.common.runs,
        grouped(a.backlog as f64),
        size_label(a.payload as u64)
    );
    let mut runs = Vec::new();
    for i in 1..=a.common.runs {
        runs.push(consume_run(&base, a, i).with_context(|| format!("run {i}"))?);
    }
    print!("{}", render_consume(&command, machine, a, &runs));
    write_json(&a.common.json, &ConsumeReport { command: &command, machine, engine: engine_version(), runs: &runs })?;
    Ok(())
}

/// One run: a fresh engine with one queue per policy, each pre-filled with
/// the backlog; then every cell consumes the whole backlog of its policy's
/// queue in a group of its own.
fn consume_run(base: &Base, a: &ConsumeArgs, i: usize) -> Result<ConsumeRun> {
    let machine = &base.machine;
    let n = a.common.runs;
    let dir = base.tempdir("gmq-consume-")?;
    let mut cfg = EngineConfig::new(dir.path());
    cfg.committer_threads = a.committer_threads;
    let engine = Engine::open(cfg).context("opening the engine")?;
    let mut queues = Vec::new();
    let mut prefill = Vec::new();
    for (k, &policy) in a.policies.iter().enumerate() {
        let name = format!("bench{k}");
        let (q, _) = engine
            .create_queue(&name, &QueueSpec { fsync: Some(policy), ..QueueSpec::default() })
            .context("creating a queue")?;
        let t = Instant::now();
        fill_backlog(&q, a)?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("[run {i}/{n}] pre-filled the {} queue in {} s", policy_label(policy), sig3(secs));
        prefill.push((policy_label(policy), secs));
        queues.push((policy, name));
    }
    let waited = wait_quiet(a.common.quiet.max_others_cpu, secs(a.common.quiet.quiet_wait), machine.cpus);
    if waited > Duration::ZERO {
        eprintln!("[run {i}/{n}] waited {:.0} s for a quieter machine", waited.as_secs_f64());
    }
    let started = unix_now();
    let load_before = load_average();
    let cpu_before = CpuSample::now();
    let mut cells = Vec::new();
    // Policies interleaved per consumer count, so each ratio compares
    // measurements made close together.
    for &consumers in &a.consumers {
        for (policy, queue) in &queues {
            let mut attempt = 1;
            let cell = loop {
                let group = format!("c{consumers}-try{attempt}");
                let c = consume_cell(&engine, machine, a, queue, &group, *policy, consumers, attempt)
                    .with_context(|| format!("cell {} / {consumers}", policy_label(*policy)))?;
                eprintln!(
                    "[run {i}/{n}] {:<7} {:>2} consumers: {:>10} msgs/s ({} s), consume p50 {} p99 {}, \
                     ack p50 {} p99 {}, others {:.2} CPUs",
                    c.policy,
                    consumers,
                    grouped(c.msgs_per_s),
                    sig3(c.seconds),
                    latency_us(c.consume_latency.p50_us),
                    latency_us(c.consume_latency.p99_us),
                    latency_us(c.ack_latency.p50_us),
                    latency_us(c.ack_latency.p99_us),
                    c.cpu.others_cpus
                );
                if c.cpu.others_cpus <= a.common.quiet.max_others_cpu || attempt > a.retries {
                    break c;
                }
                attempt += 1;
                eprintln!("[run {i}/{n}] disturbed by other processes; running it again");
                wait_quiet(a.common.quiet.max_others_cpu, secs(15.0), machine.cpus);
            };
            cells.push(cell);
        }
    }
    let cpu = cpu_before.until(&CpuSample::now(), machine.cpus);
    let load_after = load_average();
    engine.close().context("closing the engine")?;
    dir.close().context("removing the data directory")?;
    Ok(ConsumeRun { started, load_before, load_after, cpu, prefill, cells })
}

/// Publishes the backlog, up to 64 publishes in flight, then flushes: under
/// `never`, the kernel's writeback then does not run during the measurement.
fn fill_backlog(q: &Queue, a: &ConsumeArgs) -> Result<()> {
    let payload = pattern(a.payload);
    let batch: Vec<Message> = (0..a.publish_batch).map(|_| Message::new(payload.clone())).collect();
    let mut window = Window::new(64);
    let mut left = a.backlog;
    while left > 0 {
        let n = left.min(a.publish_batch as u64) as usize;
        window.push(q.publish(&batch[..n])?)?;
        left -= n as u64;
    }
    window.drain()?;
    q.log().flush()?;
    Ok(())
}

/// What one consumer thread saw.
#[derive(Debug, Default)]
struct ConsumerStats {
    acked: u64,
    bytes: u64,
    calls: u64,
    empty: u64,
    redelivered: u64,
    consume: Latency,
    ack: Latency,
}

#[allow(clippy::too_many_arguments)]
fn consume_cell(
    engine: &Engine,
    machine: &MachineInfo,
    a: &ConsumeArgs,
    queue: &str,
    group: &str,
    policy: FsyncPolicy,
    consumers: usize,
    attempt: usize,
) -> Result<ConsumeCell> {
    // A new group starts at the oldest message: the whole backlog.
    engine.existing(queue)?.create_group(group, None)?.wait()?;
    let delivered = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // The consumers start together: each waits for a read lock that is
    // write-locked until every one of them was spawned.
    let gate = RwLock::new(());
    let deadline = secs(a.timeout);
    let opts = ConsumeOptions { max: a.batch, ack: AckMode::Manual, ..ConsumeOptions::default() };
    let backlog = a.backlog;
    let (elapsed, cpu, stats) = std::thread::scope(|s| {
        let closed = gate.write().unwrap_or_else(|e| e.into_inner());
        let handles: Vec<_> = (0..consumers)
            .map(|id| {
                let (opts, delivered, failed, gate) = (&opts, &delivered, &failed, &gate);
                let thread = std::thread::Builder::new().name(format!("consumer-{id}"));
                thread.spawn_scoped(s, move || -> Result<ConsumerStats> {
                    drop(gate.read().unwrap_or_else(|e| e.into_inner()));
                    let began = Instant::now();
                    let r = consumer_loop(
                        engine, queue, group, id as u64, opts, backlog, delivered, failed, began, deadline,
                    );
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        if handles.iter().any(|h| h.is_err()) {
            failed.store(true, Ordering::Relaxed);
        }
        let cpu0 = CpuSample::now();
        let t0 = Instant::now();
        drop(closed);
        let stats: Vec<Result<ConsumerStats>> = handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a consumer thread panicked"))),
                Err(e) => Err(anyhow::Error::new(e).context("starting a consumer thread")),
            })
            .collect();
        (t0.elapsed(), cpu0.until(&CpuSample::now(), machine.cpus), stats)
    });
    let mut all = ConsumerStats::default();
    for st in stats {
        let st = st?;
        all.acked += st.acked;
        all.bytes += st.bytes;
        all.calls += st.calls;
        all.empty += st.empty;
        all.redelivered += st.redelivered;
        all.consume.merge(&st.consume);
        all.ack.merge(&st.ack);
    }
    if all.acked != backlog {
        bail!("acked {} messages of a backlog of {backlog}", all.acked);
    }
    let seconds = elapsed.as_secs_f64();
    Ok(ConsumeCell {
        policy: policy_label(policy),
        consumers,
        backlog,
        acked: all.acked,
        consume_calls: all.calls,
        empty_consumes: all.empty,
        redelivered: all.redelivered,
        seconds,
        msgs_per_s: all.acked as f64 / seconds,
        mb_per_s: all.bytes as f64 / seconds / 1e6,
        consume_latency: all.consume.summary(),
        ack_latency: all.ack.summary(),
        cpu,
        attempts: attempt,
    })
}

/// Consumes up to `max` per call and acks the offsets of each call in one
/// `ack`, waiting for it to be stored, until the whole backlog was delivered.
#[allow(clippy::too_many_arguments)]
fn consumer_loop(
    engine: &Engine,
    queue: &str,
    group: &str,
    id: u64,
    opts: &ConsumeOptions,
    backlog: u64,
    delivered: &AtomicU64,
    failed: &AtomicBool,
    began: Instant,
    deadline: Duration,
) -> Result<ConsumerStats> {
    let mut st = ConsumerStats::default();
    let mut offsets = Vec::with_capacity(opts.max);
    while delivered.load(Ordering::Acquire) < backlog && !failed.load(Ordering::Relaxed) {
        let t = Instant::now();
        let got = engine.consume(queue, group, id, opts)?.wait()?;
        st.consume.record(t.elapsed());
        st.calls += 1;
        if got.is_empty() {
            st.empty += 1;
            if began.elapsed() > deadline {
                bail!("consumer {id}: backlog not consumed after {} s", deadline.as_secs_f64());
            }
            std::thread::yield_now();
            continue;
        }
        delivered.fetch_add(got.len() as u64, Ordering::AcqRel);
        offsets.clear();
        for d in &got {
            offsets.push(d.record.offset);
            st.bytes += d.record.message.payload.len() as u64;
            st.redelivered += u64::from(d.deliveries > 1);
        }
        let t = Instant::now();
        let n = engine.ack(queue, group, &offsets)?.wait()?;
        st.ack.record(t.elapsed());
        st.acked += n as u64;
    }
    Ok(st)
}

/// Appends in flight, oldest first; waits for the oldest beyond `max`.
struct Window<T> {
    max: usize,
    q: VecDeque<Pending<T>>,
}

impl<T> Window<T> {
    fn new(max: usize) -> Self {
        Window { max: max.max(1), q: VecDeque::new() }
    }

    fn push(&mut self, p: Pending<T>) -> Result<()> {
        self.q.push_back(p);
        while self.q.len() > self.max {
            if let Some(p) = self.q.pop_front() {
                p.wait()?;
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(p) = self.q.pop_front() {
            p.wait()?;
        }
        Ok(())
    }
}

fn find_cell<'a>(run: &'a ConsumeRun, policy: &str, consumers: usize) -> Option<&'a ConsumeCell> {
    run.cells.iter().find(|c| c.policy == policy && c.consumers == consumers)
}

fn render_consume(command: &str, machine: &MachineInfo, a: &ConsumeArgs, runs: &[ConsumeRun]) -> String {
    let mut o = String::new();
    let n = runs.len();
    header(&mut o, "GMQ consume + ack benchmark", command, machine);
    let _ = writeln!(
        o,
        "- each run: fresh engine, one queue per policy (log and group state under that policy), each \
         pre-filled with a backlog of {} × {} published in batches of {} and flushed; then each cell \
         creates a new group at the oldest message and N consumer threads each `consume(max = {})` \
         (manual ack) and `ack` the offsets of each call in one call, waiting for its `Pending`, until \
         the whole backlog is acked; {} committer threads; figures are medians of {n} run{}\n",
        grouped(a.backlog as f64),
        size_label(a.payload as u64),
        a.publish_batch,
        a.batch,
        a.committer_threads,
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(o, "## Consume + ack (median of {n})\n");
    let mut t = Table::new([
        ("fsync", Align::Left),
        ("consumers", Align::Right),
        ("msgs/s", Align::Right),
        ("MB/s", Align::Right),
        ("consume p50", Align::Right),
        ("consume p99", Align::Right),
        ("ack p50", Align::Right),
        ("ack p99", Align::Right),
        ("msgs/s, min – max of runs", Align::Right),
        ("others' CPUs", Align::Right),
    ]);
    for &c in &a.consumers {
        for &p in &a.policies {
            let pol = policy_label(p);
            let get = |f: fn(&ConsumeCell) -> f64| spread(runs, |r| find_cell(r, &pol, c).map(f));
            let (Some(rate), Some(mb), Some(c50), Some(c99), Some(a50), Some(a99), Some(busy)) = (
                get(|x| x.msgs_per_s),
                get(|x| x.mb_per_s),
                get(|x| x.consume_latency.p50_us),
                get(|x| x.consume_latency.p99_us),
                get(|x| x.ack_latency.p50_us),
                get(|x| x.ack_latency.p99_us),
                get(|x| x.cpu.others_cpus),
            ) else {
                continue;
            };
            t.row([
                pol.clone(),
                c.to_string(),
                grouped(rate.median),
                sig3(mb.median),
                latency_us(c50.median),
                latency_us(c99.median),
                latency_us(a50.median),
                latency_us(a99.median),
                range(&rate, grouped),
                format!("{:.2}", busy.median),
            ]);
        }
    }
    let _ = writeln!(o, "{}", t.to_markdown());
    let _ = writeln!(
        o,
        "`ack` latency is the `ack` call plus the wait for its `Pending` (an fdatasync of the group state \
         under `always`). `others' CPUs`: CPUs other processes kept busy during the cell; a cell above {} \
         was run again, up to {} times.\n",
        a.common.quiet.max_others_cpu, a.retries
    );

    let never = policy_label(FsyncPolicy::Never);
    let always = policy_label(FsyncPolicy::Always);
    let ratios: Vec<(usize, Vec<f64>)> = a
        .consumers
        .iter()
        .map(|&c| {
            let per: Vec<f64> = runs
                .iter()
                .filter_map(|r| Some(find_cell(r, &always, c)?.msgs_per_s / find_cell(r, &never, c)?.msgs_per_s))
                .collect();
            (c, per)
        })
        .filter(|(_, per)| !per.is_empty())
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(o, "## Ack-state persistence cost: `always` ÷ `never`, same run (median of {n})\n");
        let mut t = Table::new([("consumers", Align::Right), ("always ÷ never", Align::Right), ("runs", Align::Right)]);
        for (c, per) in &ratios {
            let each: Vec<String> = per.iter().map(|&x| pct(x * 100.0)).collect();
            t.row([c.to_string(), pct(median(per) * 100.0), each.join(", ")]);
        }
        let _ = writeln!(o, "{}", t.to_markdown());
    }

    let _ = writeln!(o, "## Runs\n");
    let extra = [("cells retried", Align::Right), ("pre-fill", Align::Left)];
    let t = runs_table(runs, &extra, |r| {
        let prefill: Vec<String> = r.prefill.iter().map(|(p, s)| format!("{p} {} s", sig3(*s))).collect();
        let load = RunLoad { before: r.load_before, after: r.load_after, cpu: &r.cpu };
        (load, vec![r.cells.iter().filter(|c| c.attempts > 1).count().to_string(), prefill.join(", ")])
    });
    let _ = writeln!(o, "{t}");

    let _ = writeln!(o, "## Target\n");
    let mut t = Table::new([("target", Align::Left), ("measured (median)", Align::Left), ("met", Align::Left)]);
    let name = format!("4 consumers, acks batched per {}: ≥ {} msgs/s", a.batch, grouped(TARGET_CONSUME_4));
    let mut measured = Vec::new();
    let mut verdicts = Vec::new();
    for &p in &a.policies {
        let pol = policy_label(p);
        if let Some(s) = spread(runs, |r| find_cell(r, &pol, 4).map(|c| c.msgs_per_s)) {
            measured.push(format!("{pol}: {} msgs/s", grouped(s.median)));
            verdicts.push(format!("{}: {pol}", verdict(s.median >= TARGET_CONSUME_4)));
        }
    }
    if measured.is_empty() {
        t.row([name, "not measured".into(), "–".into()]);
    } else {
        t.row([name, measured.join("; "), verdicts.join("; ")]);
    }
    let _ = writeln!(o, "{}", t.to_markdown());
    o
}

// ---------------------------------------------------------------- restart

/// What the writer process reports on its stdout (one JSON line).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WriterReport {
    /// Seconds its own (clean) `Engine::open` took.
    open_seconds: f64,
    /// Payload bytes of the fill, and seconds it took.
    fill_bytes: u64,
    fill_seconds: f64,
    /// Seconds the touch messages and the flush of every queue took.
    flush_seconds: f64,
    /// Payload bytes and messages of the unsynced tail.
    tail_bytes: u64,
    tail_messages: u64,
    /// Seconds `close()` took (clean mode only).
    close_seconds: Option<f64>,
}

fn queue_name(i: usize) -> String {
    format!("q{i:05}")
}

fn writer_main(a: &WriterArgs) -> Result<()> {
    let t = Instant::now();
    let engine = Engine::open(EngineConfig::new(&a.data)).context("opening the engine")?;
    let mut rep = WriterReport { open_seconds: t.elapsed().as_secs_f64(), ..WriterReport::default() };
    let spec = QueueSpec { fsync: Some(FsyncPolicy::Never), ..QueueSpec::default() };
    let queues: Vec<Arc<Queue>> = (0..a.queues)
        .map(|i| engine.create_queue(&queue_name(i), &spec).map(|(q, _)| q))
        .collect::<std::result::Result<_, _>>()
        .context("creating the queues")?;
    let payload = pattern(a.msg_size);
    let batch: Vec<Message> = (0..a.publish_batch.max(1)).map(|_| Message::new(payload.clone())).collect();
    let mut window = Window::new(32);
    let publish = |window: &mut Window<_>, q: &Queue, mut msgs: u64| -> Result<()> {
        while msgs > 0 {
            let n = msgs.min(batch.len() as u64) as usize;
            window.push(q.publish(&batch[..n])?)?;
            msgs -= n as u64;
        }
        Ok(())
    };

    let t = Instant::now();
    let per_queue = a.fill_bytes.div_ceil(a.msg_size as u64);
    for q in &queues {
        publish(&mut window, q, per_queue)?;
    }
    rep.fill_bytes = per_queue * a.msg_size as u64 * queues.len() as u64;

    if a.touch_size > 0 {
        let touch = [Message::new(pattern(usize::try_from(a.touch_size)?))];
        for q in &queues {
            window.push(q.publish(&touch)?)?;
        }
    }
    window.drain()?;
    rep.fill_seconds = t.elapsed().as_secs_f64();
    if a.flush {
        let t = Instant::now();
        for q in &queues {
            q.log().flush()?;
        }
        rep.flush_seconds = t.elapsed().as_secs_f64();
    }

    // The tail: whole messages, round robin over the queues.
    let msgs = a.tail_bytes.div_ceil(a.msg_size as u64);
    let nq = queues.len().max(1) as u64;
    for (i, q) in queues.iter().enumerate() {
        let i = i as u64;
        publish(&mut window, q, msgs / nq + u64::from(i < msgs % nq))?;
    }
    window.drain()?;
    rep.tail_messages = msgs;
    rep.tail_bytes = msgs * a.msg_size as u64;

    drop(queues);
    if a.close {
        let t = Instant::now();
        engine.close().context("closing the engine")?;
        rep.close_seconds = Some(t.elapsed().as_secs_f64());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&rep)?)?;
    out.flush()?;
    drop(out);
    if !a.close {
        // Wait to be killed. If the parent goes away first, stdin closes:
        // leave without closing the engine all the same.
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(3);
    }
    Ok(())
}

/// A child process that is killed (SIGKILL) if still running when dropped.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn take(&mut self) -> Result<Child> {
        self.0.take().context("child process already taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts this binary as the writer, waits for its report, then either
/// kills it with SIGKILL (`close == false`) or waits for it to exit.
fn run_writer(
    data: &Path,
    a: &RestartArgs,
    fill_bytes: u64,
    touch: u64,
    flush: bool,
    tail: u64,
    close: bool,
) -> Result<WriterReport> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("__writer")
        .arg("--data")
        .arg(data)
        .args(["--queues", &a.queues.to_string()])
        .args(["--fill-bytes", &fill_bytes.to_string()])
        .args(["--msg-size", &a.msg_size.to_string()])
        .args(["--publish-batch", &a.publish_batch.to_string()])
        .args(["--touch-size", &touch.to_string()])
        .args(["--tail-bytes", &tail.to_string()]);
    if flush {
        cmd.arg("--flush");
    }
    if close {
        cmd.arg("--close");
    }
    let mut guard = ChildGuard(Some(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the writer")?,
    ));
    let mut line = String::new();
    {
        let child = guard.0.as_mut().context("no writer")?;
        let stdout = child.stdout.take().context("writer's stdout")?;
        BufReader::new(stdout).read_line(&mut line).context("reading the writer's report")?;
    }
    let mut child = guard.take()?;
    if line.trim().is_empty() {
        let status = child.wait()?;
        bail!("the writer exited ({status}) without a report");
    }
    let rep: WriterReport =
        serde_json::from_str(line.trim()).with_context(|| format!("the writer's report {line:?}"))?;
    if close {
        let status = child.wait()?;
        if !status.success() {
            bail!("the writer exited with {status}");
        }
    } else {
        // The crash: no close, no flush, no destructor.
        child.kill().context("killing the writer")?;
        child.wait()?;
    }
    Ok(rep)
}

/// One `Engine::open` of the data directory, then a clean `close()`.
#[derive(Debug, Clone, Serialize)]
struct OpenMeasure {
    /// `clean`, `cold`, `crash` or `fill-crash`.
    kind: String,
    /// Unsynced payload bytes the killed writer left (crashes).
    tail_bytes: u64,
    open_seconds: f64,
    close_seconds: f64,
    queues: usize,
    quarantined: usize,
    scanned_bytes: u64,
    torn_bytes: u64,
    /// Bytes of every file in the data directory before the open.
    dir_bytes: u64,
    cpu: CpuUse,
    /// What the writer reported (crashes).
    writer: Option<WriterReport>,
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn sync_all() -> Result<()> {
    let s = Command::new("sync").status().context("running sync")?;
    if !s.success() {
        bail!("sync failed: {s}");
    }
    Ok(())
}

fn drop_caches() -> Result<()> {
    sync_all()?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("writing /proc/sys/vm/drop_caches (needs root)")
}

fn measure_open(
    data: &Path,
    machine: &MachineInfo,
    kind: &str,
    tail_bytes: u64,
    writer: Option<WriterReport>,
) -> Result<OpenMeasure> {
    let bytes = dir_bytes(data);
    let cpu0 = CpuSample::now();
    let t = Instant::now();
    let engine = Engine::open(EngineConfig::new(data)).context("opening the data directory")?;
    let open_seconds = t.elapsed().as_secs_f64();
    let cpu = cpu0.until(&CpuSample::now(), machine.cpus);
    let r = engine.open_report().clone();
    let t = Instant::now();
    engine.close().context("closing the engine")?;
    let close_seconds = t.elapsed().as_secs_f64();
    if !r.quarantined.is_empty() {
        bail!("{} queues quarantined after {kind} open, first: {:?}", r.quarantined.len(), r.quarantined[0]);
    }
    Ok(OpenMeasure {
        kind: kind.into(),
        tail_bytes,
        open_seconds,
        close_seconds,
        queues: r.queues,
        quarantined: r.quarantined.len(),
        scanned_bytes: r.scanned_bytes,
        torn_bytes: r.torn_bytes,
        dir_bytes: bytes,
        cpu,
        writer,
    })
}

fn log_open(at: &str, m: &OpenMeasure) {
    eprintln!(
        "[{at}] {:<10} tail {:>9}: open {:>8} (scanned {}, torn {}, {} queues, dir {}), close {}, others {:.2} CPUs",
        m.kind,
        size_label(m.tail_bytes),
        latency_us(m.open_seconds * 1e6),
        size_label(m.scanned_bytes),
        size_label(m.torn_bytes),
        m.queues,
        size_label(m.dir_bytes),
        latency_us(m.close_seconds * 1e6),
        m.cpu.others_cpus
    );
}

#[derive(Debug, Serialize)]
struct RestartRun {
    started: u64,
    load_before: f64,
    load_after: f64,
    cpu: CpuUse,
    opens: Vec<OpenMeasure>,
}

#[derive(Debug, Serialize)]
struct RestartReport<'a> {
    command: &'a str,
    machine: &'a MachineInfo,
    engine: Option<String>,
    fill: &'a WriterReport,
    /// The open right after the killed fill (nothing flushed), if measured.
    fill_crash: Option<&'a OpenMeasure>,
    runs: &'a [RestartRun],
}

fn restart_main(a: &RestartArgs) -> Result<()> {
    let base = Base::prepare(&a.common)?;
    if a.queues == 0 || !(a.total_gib.is_finite() && a.total_gib > 0.0) {
        bail!("--queues and --total-gib must be positive");
    }
    let machine = &base.machine;
    let command = command_line();
    let total = (a.total_gib * (1u64 << 30) as f64) as u64;
    let per_queue = total / a.queues as u64;
    let work = base.tempdir("gmq-restart-")?;
    let data = work.path().join("data");
    let runs_n = a.common.runs;
    eprintln!(
        "broker-bench restart: filling {} queues with {} each ({} in all) in {} messages",
        a.queues,
        size_label(per_queue),
        size_label(per_queue * a.queues as u64),
        size_label(a.msg_size as u64)
    );
    let close = a.no_fill_crash;
    let fill = run_writer(&data, a, per_queue, 0, false, 0, close)?;
    eprintln!(
        "filled {} in {} s ({} MB/s){}",
        size_label(fill.fill_bytes),
        sig3(fill.fill_seconds),
        sig3(fill.fill_bytes as f64 / fill.fill_seconds / 1e6),
        fill.close_seconds.map_or(String::new(), |c| format!(", closed in {} s", sig3(c)))
    );
    let fill_crash = if close {
        None
    } else {
        let m = measure_open(&data, machine, "fill-crash", fill.fill_bytes, None)?;
        log_open("fill", &m);
        Some(m)
    };

    let mut runs = Vec::new();
    for i in 1..=runs_n {
        sync_all()?;
        let waited = wait_quiet(a.common.quiet.max_others_cpu, secs(a.common.quiet.quiet_wait), machine.cpus);
        if waited > Duration::ZERO {
            eprintln!("[run {i}/{runs_n}] waited {:.0} s for a quieter machine", waited.as_secs_f64());
        }
        let started = unix_now();
        let load_before = load_average();
        let cpu0 = CpuSample::now();
        let mut opens = Vec::new();
        if a.drop_caches {
            drop_caches()?;
            let m = measure_open(&data, machine, "cold", 0, None)?;
            log_open(&format!("run {i}/{runs_n}"), &m);
            opens.push(m);
            sync_all()?;
        }
        let m = measure_open(&data, machine, "clean", 0, None)?;
        log_open(&format!("run {i}/{runs_n}"), &m);
        opens.push(m);
        for &tail in &a.tails {
            let w = run_writer(&data, a, 0, a.touch_size, true, tail, false)?;
            let m = measure_open(&data, machine, "crash", w.tail_bytes, Some(w))?;
            log_open(&format!("run {i}/{runs_n}"), &m);
            opens.push(m);
        }
        for &tail in a.tails.iter().filter(|&&t| t > 0 && !a.no_synced_tails) {
            let w = run_writer(&data, a, 0, a.touch_size, true, tail, false)?;
            // As if the kernel had written the tail back before the restart:
            // the open still scans it, but its sync has nothing to write.
            sync_all()?;
            let m = measure_open(&data, machine, "crash-synced", w.tail_bytes, Some(w))?;
            log_open(&format!("run {i}/{runs_n}"), &m);
            opens.push(m);
        }
        let cpu = cpu0.until(&CpuSample::now(), machine.cpus);
        runs.push(RestartRun { started, load_before, load_after: load_average(), cpu, opens });
    }
    print!("{}", render_restart(&command, machine, a, &fill, fill_crash.as_ref(), &runs));
    write_json(
        &a.common.json,
        &RestartReport {
            command: &command,
            machine,
            engine: engine_version(),
            fill: &fill,
            fill_crash: fill_crash.as_ref(),
            runs: &runs,
        },
    )?;
    work.close().context("removing the data directory")?;
    Ok(())
}

/// The measurements of one kind (and tail) over every run.
fn opens_of<'a>(runs: &'a [RestartRun], kind: &str, tail: Option<u64>) -> Vec<&'a OpenMeasure> {
    runs.iter()
        .filter_map(|r| r.opens.iter().find(|m| m.kind == kind && tail.is_none_or(|t| m.tail_bytes == t)))
        .collect()
}

/// `bytes` rounded up to whole messages of `msg_size`, as the writer writes them.
fn whole_messages(bytes: u64, msg_size: usize) -> u64 {
    bytes.div_ceil(msg_size as u64) * msg_size as u64
}

/// A duration given in seconds, in the unit that reads best (signed).
fn seconds(s: f64) -> String {
    if s < 0.0 {
        format!("-{}", latency_us(-s * 1e6))
    } else {
        latency_us(s * 1e6)
    }
}

fn render_restart(
    command: &str,
    machine: &MachineInfo,
    a: &RestartArgs,
    fill: &WriterReport,
    fill_crash: Option<&OpenMeasure>,
    runs: &[RestartRun],
) -> String {
    let mut o = String::new();
    let n = runs.len();
    header(&mut o, "GMQ restart benchmark", command, machine);
    let _ = writeln!(
        o,
        "- data directory: {} queues × {} of payload ({} in all, {} messages, fsync `never`, default 64 MiB \
         segments and 16 MiB checkpoints), written by a child process in {} s ({} MB/s){}\n\
         - each crash: a child process opens the directory, writes one {} message to every queue, flushes \
         every queue (sync + checkpoint), writes the unsynced tail (whole {} messages, round robin over the \
         queues, every publish waited for, so it sits in the page cache) and is killed with SIGKILL; the \
         parent then times `Engine::open`, and closes cleanly\n\
         - page cache warm (a process restart, not a reboot){}; figures are medians of {n} run{}\n",
        a.queues,
        size_label(fill.fill_bytes / a.queues.max(1) as u64),
        size_label(fill.fill_bytes),
        size_label(a.msg_size as u64),
        sig3(fill.fill_seconds),
        sig3(fill.fill_bytes as f64 / fill.fill_seconds / 1e6),
        fill.close_seconds.map_or(String::new(), |c| format!(", then closed in {} s", sig3(c))),
        size_label(a.touch_size),
        size_label(a.msg_size as u64),
        if a.drop_caches { " except `cold`, after dropping the page cache" } else { "" },
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(o, "## Engine::open (median of {n})\n");
    let mut t = Table::new([
        ("stop", Align::Left),
        ("unsynced tail", Align::Right),
        ("open", Align::Right),
        ("open, min – max", Align::Right),
        ("scanned", Align::Right),
        ("torn", Align::Right),
        ("data dir", Align::Right),
        ("then close", Align::Right),
        ("others' CPUs", Align::Right),
    ]);
    let mut row = |label: String, tail: String, ms: &[&OpenMeasure]| {
        let get = |f: fn(&OpenMeasure) -> f64| spread(ms, |m| Some(f(m)));
        let (Some(open), Some(scanned), Some(torn), Some(dir), Some(close), Some(busy)) = (
            get(|m| m.open_seconds),
            get(|m| m.scanned_bytes as f64),
            get(|m| m.torn_bytes as f64),
            get(|m| m.dir_bytes as f64),
            get(|m| m.close_seconds),
            get(|m| m.cpu.others_cpus),
        ) else {
            return;
        };
        t.row([
            label,
            tail,
            seconds(open.median),
            range(&open, seconds),
            size_label(scanned.median as u64),
            size_label(torn.median as u64),
            size_label(dir.median as u64),
            seconds(close.median),
            format!("{:.2}", busy.median),
        ]);
    };
    let cold = opens_of(runs, "cold", None);
    if !cold.is_empty() {
        row("clean close, cold page cache".into(), "–".into(), &cold);
    }
    row("clean close".into(), "–".into(), &opens_of(runs, "clean", None));
    for &tail in &a.tails {
        let tail = whole_messages(tail, a.msg_size);
        row("SIGKILL after flushing every queue".into(), size_label(tail), &opens_of(runs, "crash", Some(tail)));
    }
    for &tail in a.tails.iter().filter(|&&t| t > 0) {
        let tail = whole_messages(tail, a.msg_size);
        row(
            "SIGKILL after flushing every queue, `sync` before the open".into(),
            size_label(tail),
            &opens_of(runs, "crash-synced", Some(tail)),
        );
    }
    if let Some(m) = fill_crash {
        row("SIGKILL right after the fill, nothing flushed (1 run)".into(), size_label(m.tail_bytes), &[m]);
    }
    let _ = writeln!(o, "{}", t.to_markdown());
    let _ = writeln!(
        o,
        "`scanned`: `open_report().scanned_bytes`, bytes of active segments read past their checkpoint; \
         `torn`: bytes truncated. `unsynced tail`: payload bytes written after the last flush (records on \
         disk are 25 bytes larger each). `sync` before the open: the tail was written back by a `sync` \
         after the SIGKILL (as the kernel does within about 30 s), so the open still scans it but its \
         fdatasync has little to write. `then close`: the clean `close()` after the measured open. \
         `others' CPUs` also counts the kernel threads writing back our own data.\n"
    );

    // Open time against tail: what each GiB of tail costs.
    let open_median = |kind: &str, tail: u64| {
        spread(&opens_of(runs, kind, Some(whole_messages(tail, a.msg_size))), |m| Some(m.open_seconds))
    };
    let clean = spread(&opens_of(runs, "clean", None), |m| Some(m.open_seconds));
    let zero = open_median("crash", 0);
    if let (Some(clean), Some(zero)) = (clean, zero) {
        let _ = writeln!(o, "## What a crash adds (medians)\n");
        let mut t = Table::new([("comparison", Align::Left), ("median", Align::Right)]);
        t.row([
            "crash with no tail (every queue flushed) ÷ clean open".to_string(),
            format!("{}×", sig3(zero.median / clean.median)),
        ]);
        for (kind, words) in [("crash", "unsynced"), ("crash-synced", "written back")] {
            for &tail in a.tails.iter().filter(|&&t| t > 0) {
                let tail = whole_messages(tail, a.msg_size);
                if let Some(s) = open_median(kind, tail) {
                    let gib = tail as f64 / (1u64 << 30) as f64;
                    t.row([
                        format!("open time per GiB of tail, {} {words}, over the crash with no tail", size_label(tail)),
                        format!("{} /GiB", seconds((s.median - zero.median) / gib)),
                    ]);
                }
            }
        }
        let _ = writeln!(o, "{}", t.to_markdown());
    }

    let _ = writeln!(o, "## Runs\n");
    let t =
        runs_table(runs, &[], |r| (RunLoad { before: r.load_before, after: r.load_after, cpu: &r.cpu }, Vec::new()));
    let _ = writeln!(o, "{t}");

    let _ = writeln!(o, "## Target\n");
    let mut t = Table::new([("target", Align::Left), ("measured (median)", Align::Left), ("met", Align::Left)]);
    let name =
        format!("clean open of {} in {} queues: < {} s", size_label(fill.fill_bytes), a.queues, TARGET_CLEAN_OPEN_S);
    match spread(&opens_of(runs, "clean", None), |m| Some(m.open_seconds)) {
        Some(s) => t.row([name, seconds(s.median), verdict(s.median < TARGET_CLEAN_OPEN_S)]),
        None => t.row([name, "not measured".into(), "–".into()]),
    }
    let _ = writeln!(o, "{}", t.to_markdown());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands_parse() {
        let c = Cli::parse_from(["broker-bench", "consume", "--consumers", "1,4", "--policies", "always"]);
        let Cmd::Consume(a) = c.cmd else { panic!("not consume") };
        assert_eq!(a.consumers, [1, 4]);
        assert_eq!(a.policies, [FsyncPolicy::Always]);
        assert_eq!((a.common.runs, a.batch, a.payload), (3, 64, 1024));
        let c = Cli::parse_from(["broker-bench", "restart", "--tails", "0,1m"]);
        let Cmd::Restart(a) = c.cmd else { panic!("not restart") };
        assert_eq!((a.total_gib, a.queues), (10.0, 1000));
        assert_eq!(a.tails, [0, 1 << 20]);
    }

    #[test]
    fn windows_wait_for_the_oldest() -> Result<()> {
        let mut w = Window::new(2);
        for i in 0..5 {
            w.push(Pending::ready(i))?;
        }
        assert_eq!(w.q.len(), 2);
        w.drain()?;
        assert!(w.q.is_empty());
        Ok(())
    }
}
