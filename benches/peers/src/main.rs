//! `peer-bench`: GMQ against the brokers users would pick instead, and
//! against the machine's own limits, side by side in one run.
//!
//! Per run: fio (fdatasync latency, durable sequential bandwidth) and a
//! loopback echo of GMQ's publish frames; then, for each system, a fresh
//! server on a fresh data directory on loopback and the same four
//! workloads, driven by one load generator through each system's own Rust
//! client:
//!
//! 1. durable publish: `--producers` connections × `--window` in flight;
//! 2. publish with one in flight (per-message durable latency);
//! 3. consume with manual acks from a `--backlog` backlog, `--consumers`
//!    competing consumers;
//! 4. end-to-end latency at a fixed `--rate`, from each message's scheduled
//!    send time to its delivery.
//!
//! Prints a markdown report (medians of `--runs` runs, and each peer as a
//! ratio to GMQ `always` from the same run) to stdout, progress to stderr;
//! optionally every run as JSON and a PNG plot. Missing servers are
//! installed from Debian's packages.
//!
//! ```text
//! peer-bench --runs 3 --json peers.json --plot docs/peers.png
//! peer-bench --runs 1 --systems gmq-always,redis --workloads publish --duration 1
//! ```

mod clients;
mod plot;
mod report;
mod systems;
mod workloads;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use gmq_benches::fio::{FioJob, FioResult};
use gmq_benches::machine::{load_average, wait_quiet, CpuSample, CpuUse, MachineInfo};
use gmq_benches::parse_size;
use serde::Serialize;

use crate::clients::Target;
use crate::systems::{Broker, System};
use crate::workloads::{Drain, EndToEnd, Rate, Until};

/// Compares GMQ with Redis Streams, NATS JetStream and RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "peer-bench", version)]
pub struct Args {
    /// Repeat everything this many times; tables show the medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Systems to measure: gmq-always, gmq-interval:MS, gmq-never, redis,
    /// nats, rabbit-quorum, rabbit-classic.
    #[arg(long, value_delimiter = ',', value_parser = System::parse,
          default_value = "gmq-always,gmq-interval:100,gmq-never,redis,nats,rabbit-quorum,rabbit-classic")]
    systems: Vec<System>,
    /// Workloads: publish (1), latency (2), consume (3), e2e (4).
    #[arg(long, value_delimiter = ',', default_value = "publish,latency,consume,e2e")]
    workloads: Vec<Workload>,
    /// Directory on the disk to measure: each server gets a fresh data
    /// directory inside it, removed afterwards. tmpfs is refused.
    #[arg(long, default_value = "/work/bench-data")]
    dir: PathBuf,
    /// The gmq-server executable [default: gmq-server next to this one].
    #[arg(long)]
    server: Option<PathBuf>,
    /// Payload bytes per message.
    #[arg(long, default_value = "1k", value_parser = parse_size)]
    payload: u64,
    /// Workload 1: publishing connections.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Workload 1: publishes in flight per connection.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Workloads 1 and 2: seconds measured, after `--warmup`.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Workloads 1 and 2: seconds of warm-up.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Workload 3: messages in the backlog.
    #[arg(long, default_value_t = 200_000)]
    backlog: u64,
    /// Workload 3: competing consumers.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Workload 3: unacked deliveries per consumer.
    #[arg(long, default_value_t = 256)]
    prefetch: usize,
    /// Workload 3: most deliveries per ack.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Skip fio and the loopback echo.
    #[arg(long)]
    no_limits: bool,
    /// Do not install missing servers (fail instead).
    #[arg(long)]
    no_install: bool,
    #[command(flatten)]
    quiet: gmq_benches::cli::Quiet,
    #[command(flatten)]
    e2e: gmq_benches::cli::EndToEnd,
    /// Write every run as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the plot (PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The four workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// (1) durable publish, producers × window in flight.
    Publish,
    /// (2) publish with one in flight.
    Latency,
    /// (3) consume + manual ack of a backlog.
    Consume,
    /// (4) end-to-end latency at a fixed rate.
    E2e,
}

/// One system's cells in one run.
#[derive(Debug, Clone, Serialize)]
pub struct SystemRun {
    /// [`System::key`].
    pub system: String,
    /// Seconds until it accepted connections.
    pub start_seconds: f64,
    /// Workload 1.
    pub publish: Option<Cell<Rate>>,
    /// Workload 2.
    pub latency: Option<Cell<Rate>>,
    /// Workload 3.
    pub consume: Option<Cell<Drain>>,
    /// Workload 4.
    pub e2e: Option<Cell<EndToEnd>>,
}

/// A measurement with the CPU it took.
#[derive(Debug, Clone, Serialize)]
pub struct Cell<T> {
    /// What was measured.
    pub result: T,
    /// CPUs the server's processes kept busy, on average.
    pub server_cpus: f64,
    /// The machine's use meanwhile (own = the load generator).
    pub cpu: CpuUse,
}

/// The machine's limits, measured in the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    /// fio: 1 KiB writes, each followed by fdatasync.
    pub fio_sync: Option<FioResult>,
    /// fio: 1 MiB writes, each followed by fdatasync.
    pub fio_seq: Option<FioResult>,
    /// A loopback echo of GMQ publish frames, producers × window in flight.
    pub echo: Option<Rate>,
    /// The same echo with one frame in flight: the round trip under every
    /// one-in-flight publish.
    pub echo_one: Option<Rate>,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Unix seconds at its start.
    pub started: u64,
    /// Load average before and after.
    pub load: (f64, f64),
    /// The machine's CPU use over the run.
    pub cpu: CpuUse,
    /// Seconds waited for quiet before it.
    pub quiet_wait: f64,
    /// The machine's limits.
    pub limits: Limits,
    /// Every system, in the order they ran.
    pub systems: Vec<SystemRun>,
}

/// Live servers' process groups, killed on SIGINT/SIGTERM.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn on_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut i), Ok(mut t)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
            for pid in LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            eprintln!("peer-bench: interrupted; the servers were killed");
            std::process::exit(130);
        });
    })?;
    Ok(())
}

/// CPU ticks of a process and of every process in the group it leads.
fn group_ticks(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut sum = 0;
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let pgrp = f.get(2).and_then(|v| v.parse::<u32>().ok());
        if p == pid || pgrp == Some(pid) {
            sum += f.get(11..13).map_or(0, |t| t.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
        }
    }
    sum
}

struct Ctx<'a> {
    args: &'a Args,
    rt: &'a tokio::runtime::Runtime,
    cpus: usize,
}

impl Ctx<'_> {
    /// Runs `f` against `target`, measuring the CPU of `pid`'s group.
    fn cell<T>(&self, pid: u32, what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<Cell<T>> {
        let (a, ta) = (CpuSample::now(), group_ticks(pid));
        let result = self.rt.block_on(f).with_context(|| what.to_owned())?;
        let (b, tb) = (CpuSample::now(), group_ticks(pid));
        let (cpu, server_cpus) = a.until_with_child(&b, self.cpus, tb.saturating_sub(ta));
        Ok(Cell { result, server_cpus, cpu })
    }

    fn has(&self, w: Workload) -> bool {
        self.args.workloads.contains(&w)
    }

    /// Every workload against one started system.
    fn system(&self, system: &System, target: &Target, pid: u32, start: Duration) -> Result<SystemRun> {
        let a = self.args;
        let payload = a.payload as usize;
        let key = system.key();
        let timed =
            Until::Timed { warmup: Duration::from_secs_f64(a.warmup), measure: Duration::from_secs_f64(a.duration) };
        let mut out = SystemRun {
            system: key.clone(),
            start_seconds: start.as_secs_f64(),
            publish: None,
            latency: None,
            consume: None,
            e2e: None,
        };
        let q = |w: &str| format!("{w}-{}", key.replace(':', "-"));
        if self.has(Workload::Publish) {
            let queue = q("publish");
            self.rt.block_on(target.setup(&queue))?;
            let c = self.cell(
                pid,
                &format!("{key}: publish"),
                workloads::publish(target, &queue, a.producers, a.window, payload, timed),
            )?;
            eprintln!(
                "  {key}: publish {}×{}: {:.0} msgs/s, p99 {:.0} µs",
                a.producers, a.window, c.result.msgs_per_s, c.result.latency.p99_us
            );
            out.publish = Some(c);
        }
        if self.has(Workload::Latency) {
            let queue = q("latency");
            self.rt.block_on(target.setup(&queue))?;
            let c =
                self.cell(pid, &format!("{key}: latency"), workloads::publish(target, &queue, 1, 1, payload, timed))?;
            eprintln!(
                "  {key}: publish 1×1: p50 {:.0} µs, p99 {:.0} µs",
                c.result.latency.p50_us, c.result.latency.p99_us
            );
            out.latency = Some(c);
        }
        if self.has(Workload::Consume) {
            let queue = q("consume");
            self.rt.block_on(target.setup(&queue))?;
            let c = self.cell(
                pid,
                &format!("{key}: consume"),
                workloads::consume(target, &queue, a.consumers, a.backlog, payload, a.prefetch, a.batch),
            )?;
            eprintln!(
                "  {key}: consume {}: {:.0} msgs/s (pre-fill {:.1} s)",
                a.consumers, c.result.msgs_per_s, c.result.prefill_seconds
            );
            out.consume = Some(c);
        }
        if self.has(Workload::E2e) {
            let queue = q("e2e");
            self.rt.block_on(target.setup(&queue))?;
            let c = self.cell(
                pid,
                &format!("{key}: e2e"),
                workloads::end_to_end(
                    target,
                    &queue,
                    a.e2e.rate,
                    payload,
                    Duration::from_secs_f64(a.e2e.e2e_warmup),
                    Duration::from_secs_f64(a.e2e.e2e_duration),
                    a.e2e.e2e_prefetch,
                ),
            )?;
            eprintln!(
                "  {key}: e2e at {}/s: p50 {:.0} µs, p99 {:.0} µs",
                a.e2e.rate, c.result.e2e.p50_us, c.result.e2e.p99_us
            );
            out.e2e = Some(c);
        }
        Ok(out)
    }

    fn limits(&self, dir: &Path) -> Result<Limits> {
        let a = self.args;
        let fio = Path::new("/usr/bin/fio");
        let sync = FioJob::sync_latency(fio, dir, "8m").run().context("fio fdatasync latency")?;
        let seq = FioJob::sequential(fio, dir, "256m").run().context("fio sequential")?;
        let echo = self.rt.block_on(workloads::echo(
            a.producers,
            a.window,
            a.payload as usize,
            Duration::from_secs_f64(a.warmup),
            Duration::from_secs_f64(a.duration),
        ))?;
        let echo_one = self.rt.block_on(workloads::echo(
            1,
            1,
            a.payload as usize,
            Duration::from_secs_f64(a.warmup),
            Duration::from_secs_f64(a.duration),
        ))?;
        eprintln!(
            "  limits: fdatasync p50 {:.0} µs, {:.0} MB/s durable sequential, echo {:.0} frames/s, echo 1×1 p50 {:.0} µs",
            sync.sync_p50_us, seq.mb_per_s, echo.msgs_per_s, echo_one.latency.p50_us
        );
        Ok(Limits { fio_sync: Some(sync), fio_seq: Some(seq), echo: Some(echo), echo_one: Some(echo_one) })
    }

    fn run(&self, index: usize, gmq_server: &Path) -> Result<Run> {
        let a = self.args;
        let quiet = wait_quiet(a.quiet.max_others_cpu, Duration::from_secs_f64(a.quiet.quiet_wait), self.cpus);
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (load0, cpu0) = (load_average(), CpuSample::now());
        let scratch = tempfile::Builder::new().prefix("peers-").tempdir_in(&a.dir)?;
        let limits = if a.no_limits { Limits::default() } else { self.limits(scratch.path())? };
        // Rotate the order from run to run, so that no system always runs
        // on the machine as the previous ones left it. RabbitMQ's two queue
        // types share one node, so they stay together.
        let is_rabbit = |s: &System| matches!(s, System::RabbitQuorum | System::RabbitClassic);
        let mut units: Vec<Vec<&System>> = a.systems.iter().filter(|s| !is_rabbit(s)).map(|s| vec![s]).collect();
        let rabbits: Vec<&System> = a.systems.iter().filter(|s| is_rabbit(s)).collect();
        if !rabbits.is_empty() {
            units.push(rabbits);
        }
        let n = units.len();
        units.rotate_left(index % n.max(1));
        let mut systems = Vec::new();
        for unit in units {
            let dir = tempfile::Builder::new().prefix(&unit[0].key().replace(':', "-")).tempdir_in(scratch.path())?;
            eprintln!("run {}: starting {}", index + 1, unit[0].label());
            let broker = Broker::start(unit[0], gmq_server, dir.path())?;
            LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(broker.pid());
            for s in unit {
                let target = match s {
                    System::RabbitQuorum => broker.rabbit_as(true),
                    System::RabbitClassic => broker.rabbit_as(false),
                    _ => None,
                }
                .unwrap_or_else(|| broker.target().clone());
                systems.push(self.system(s, &target, broker.pid(), broker.start_time)?);
            }
            LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != broker.pid());
            broker.stop()?;
        }
        Ok(Run {
            started,
            load: (load0, load_average()),
            cpu: cpu0.until(&CpuSample::now(), self.cpus),
            quiet_wait: quiet.as_secs_f64(),
            limits,
            systems,
        })
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 || args.systems.is_empty() {
        bail!("nothing to run");
    }
    systems::ensure_installed(&args.systems, !args.no_limits, !args.no_install)?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let machine = MachineInfo::probe(&args.dir);
    if machine.disk.is_memory() {
        bail!("{} is on {}: measure a real disk", args.dir.display(), machine.disk.fs_type);
    }
    let gmq_server = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding this executable")?.with_file_name("gmq-server"),
    };
    if args.systems.iter().any(|s| matches!(s, System::Gmq(_))) && !gmq_server.exists() {
        bail!("{} is missing: cargo build --release -p gmq-server", gmq_server.display());
    }
    on_signal()?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads.max(1)).enable_all().build()?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let ctx = Ctx { args: &args, rt: &rt, cpus };
    let t0 = Instant::now();
    let mut runs = Vec::new();
    for i in 0..args.runs {
        runs.push(ctx.run(i, &gmq_server)?);
        if let Some(path) = &args.json {
            let doc = serde_json::json!({ "args": format!("{args:?}"), "runs": runs });
            std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    eprintln!("done in {:.0} s", t0.elapsed().as_secs_f64());
    let text = report::markdown(&args, &machine, &runs);
    print!("{text}");
    if let Some(path) = &args.plot {
        plot::draw(path, &args.systems, &runs)?;
        eprintln!("plot: {}", path.display());
    }
    Ok(())
}
