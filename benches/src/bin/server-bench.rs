//! `server-bench`: the `gmq-server` binary under load over TCP, next to the
//! bare engine measured in the same run.
//!
//! It builds nothing: it starts a release `gmq-server` (`--server`, by
//! default the one next to this executable, i.e. in the same target
//! directory) on a fresh data directory under `--dir`, waits for its
//! `listening on` line, runs the load generator of `gmq_benches::load`
//! against it, stops it (SIGTERM), and repeats. Per run and per fsync
//! policy:
//!
//! 1. the bare engine, in this process: `--engine-tasks` tasks ×
//!    `--engine-window` one-message publishes in flight;
//! 2. a fresh server: publish throughput and publish → reply latency for
//!    each `--connections` count × `--in-flight` pipelined publishes;
//! 3. consume + manual ack of a pre-filled backlog by K consumers, with
//!    `consume` + `ack` and with `subscribe`;
//! 4. end-to-end latency at a fixed `--rate`: scheduled send → delivery.
//!
//! Prints a markdown report (medians of `--runs` runs, the server's
//! overhead as the ratio to the engine measured in the same run, the
//! machine's load) to stdout, progress to stderr, and optionally every run
//! as JSON. The server is killed if this process stops early (error,
//! SIGINT, SIGTERM).
//!
//! ```text
//! server-bench --runs 5
//! server-bench --runs 1 --duration 1 --workloads publish,engine --policies always
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gmq_benches::append::{run_cell, Cell, CellResult, Load, Settings};
use gmq_benches::fio::shell_quote;
use gmq_benches::load::{
    self, ConsumeMode, ConsumeResult, ConsumeSpec, EndToEndResult, EndToEndSpec, PublishResult, PublishSpec,
};
use gmq_benches::machine::{load_average, runs_table, wait_quiet, CpuSample, CpuUse, MachineInfo, RunLoad};
use gmq_benches::process::{ServerOptions, ServerProcess};
use gmq_benches::report::{range, spread, verdict};
use gmq_benches::stats::{median, Spread};
use gmq_benches::table::{grouped, latency_us, sig3, Align, Table};
use gmq_benches::{parse_size, policy_label, size_label};
use gmq_engine::FsyncPolicy;
use serde::Serialize;

/// Target: 4 connections × 64 publishes in flight, 1 KiB, `always`: msgs/s.
const TARGET_PUBLISH_4X64: f64 = 100_000.0;
/// Target: the bare engine's msgs/s over the server's, same workload, same run.
const TARGET_OVERHEAD: f64 = 2.0;

/// Benchmarks gmq-server over TCP against the bare engine.
#[derive(Debug, Parser)]
#[command(name = "server-bench", version)]
struct Args {
    /// Repeat everything this many times; tables show the medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Directory on the disk to measure: each server (and each bare-engine
    /// cell) gets a fresh data directory inside it, removed afterwards.
    /// Created if missing; tmpfs is refused.
    #[arg(long, default_value = "/work/bench-data")]
    dir: PathBuf,
    /// The gmq-server executable [default: gmq-server next to this
    /// executable, i.e. the release build of the same target directory].
    #[arg(long)]
    server: Option<PathBuf>,
    /// Fsync policies (the server's `--fsync`, and the engine's).
    #[arg(long, value_delimiter = ',', default_value = "always,never")]
    policies: Vec<FsyncPolicy>,
    /// Payload bytes per message.
    #[arg(long, default_value = "1k", value_parser = parse_payload)]
    payload: usize,
    /// Publishing connections (one publish cell each).
    #[arg(long, value_delimiter = ',', default_value = "4,1")]
    connections: Vec<usize>,
    /// Publish requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Messages per publish request (1: plain publishes).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seconds measured per publish cell (and bare-engine cell).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds run before measuring, per publish cell.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Bare-engine reference: tasks, each with `--engine-window` publishes
    /// in flight.
    #[arg(long, default_value_t = 4)]
    engine_tasks: usize,
    /// Bare-engine reference: publishes in flight per task.
    #[arg(long, default_value_t = 64)]
    engine_window: usize,
    /// Messages pre-filled for the consume cells (each cell consumes all of
    /// them in a new group).
    #[arg(long, default_value_t = 200_000)]
    backlog: u64,
    /// Competing consumers (one consume cell per count and mode).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    consumers: Vec<usize>,
    /// `max` per `consume` (and messages per publish of the pre-fill).
    #[arg(long, default_value_t = 64)]
    consume_max: usize,
    /// `prefetch` of the subscribe mode.
    #[arg(long, default_value_t = 256)]
    prefetch: usize,
    /// Consume modes: `pull` (consume + ack), `subscribe`.
    #[arg(long, value_delimiter = ',', default_value = "pull,subscribe")]
    consume_modes: Vec<ModeArg>,
    /// Give up on a consume cell after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    consume_timeout: f64,
    /// Workloads to run.
    #[arg(long, value_delimiter = ',', default_value = "engine,publish,consume,e2e")]
    workloads: Vec<Workload>,
    /// Threads of the load generator's tokio runtime (1: current-thread,
    /// the lightest on a small machine).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Also write every run as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    quiet: gmq_benches::cli::Quiet,
    #[command(flatten)]
    e2e: gmq_benches::cli::EndToEnd,
    /// Times a disturbed cell is run again; the last attempt counts.
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// Before running a disturbed cell again, wait up to this many seconds
    /// for other processes to use at most `--max-others-cpu` CPUs.
    #[arg(long, default_value_t = 15.0)]
    retry_pause: f64,
    /// Measure even when `--dir` is on tmpfs.
    #[arg(long)]
    allow_tmpfs: bool,
    /// Copy the server's log to stderr.
    #[arg(long)]
    server_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Pull,
    Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Engine,
    Publish,
    Consume,
    E2e,
}

fn parse_payload(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    usize::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| format!("payload size {s:?} out of range"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// CPU use during one cell, the server counted apart.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct CellCpu {
    /// CPUs this process (load generator or engine) kept busy.
    bench_cpus: f64,
    /// CPUs the server kept busy.
    server_cpus: f64,
    /// CPUs everything else kept busy.
    others_cpus: f64,
    /// Share of CPU time stolen by the hypervisor, %.
    steal_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Measured<T> {
    #[serde(flatten)]
    result: T,
    cpu: CellCpu,
    /// Attempts made (more than 1 when other processes disturbed it).
    attempts: usize,
}

/// One policy within one run.
#[derive(Debug, Serialize)]
struct PolicyRun {
    policy: String,
    engine: Option<CellResult>,
    /// Attempts the bare-engine cell took.
    engine_attempts: usize,
    server_start_seconds: f64,
    publish: Vec<Measured<PublishResult>>,
    /// Seconds each consume cell's backlog took to publish.
    prefill_seconds: Vec<f64>,
    consume: Vec<Measured<ConsumeResult>>,
    e2e: Option<Measured<EndToEndResult>>,
    /// Server log lines at WARN or ERROR.
    server_warnings: u64,
}

#[derive(Debug, Serialize)]
struct Run {
    started: u64,
    load_before: f64,
    load_after: f64,
    /// The whole run; `others_cpus` leaves the servers out.
    cpu: CpuUse,
    server_cpus: f64,
    policies: Vec<PolicyRun>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    command: &'a str,
    machine: &'a MachineInfo,
    source: Option<String>,
    server_binary: String,
    runs: &'a [Run],
}

/// What to clean up when interrupted: the server running now and its data.
#[derive(Debug, Default)]
struct Cleanup {
    pid: Option<u32>,
    dir: Option<PathBuf>,
    /// A signal came: errors that follow are its doing.
    interrupted: bool,
}

/// On SIGINT or SIGTERM: kill the server, remove its data, exit 130.
fn on_signal(cleanup: Arc<Mutex<Cleanup>>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    })?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        let mut c = cleanup.lock().unwrap_or_else(|e| e.into_inner());
        c.interrupted = true;
        if let Some(pid) = c.pid {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(d) = &c.dir {
            let _ = std::fs::remove_dir_all(d);
        }
        eprintln!("server-bench: interrupted; the server was killed and its data removed");
        std::process::exit(130);
    })?;
    Ok(())
}

/// Everything a run needs.
struct Ctx<'a> {
    a: &'a Args,
    dir: PathBuf,
    machine: &'a MachineInfo,
    binary: PathBuf,
    rt: tokio::runtime::Runtime,
    cleanup: Arc<Mutex<Cleanup>>,
    /// The source tree as the runs started (see [`source_state`]).
    source: Option<String>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let pos = |x: f64| x.is_finite() && x > 0.0;
    if !pos(a.duration) || !pos(a.e2e.e2e_duration) || !pos(a.e2e.rate) || !pos(a.consume_timeout) {
        bail!("--duration, --e2e-duration, --rate and --consume-timeout must be positive");
    }
    if !(a.warmup >= 0.0 && a.e2e.e2e_warmup >= 0.0 && a.quiet.quiet_wait >= 0.0) {
        bail!("--warmup, --e2e-warmup and --quiet-wait must be non-negative");
    }
    if a.connections.contains(&0) || a.consumers.contains(&0) || a.policies.is_empty() || a.backlog == 0 {
        bail!("--connections and --consumers must be positive, --policies non-empty, --backlog positive");
    }
    let created = !a.dir.exists();
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating --dir {}", a.dir.display()))?;
    let dir = a.dir.canonicalize().with_context(|| format!("--dir {}", a.dir.display()))?;
    let machine = MachineInfo::probe(&dir);
    if machine.disk.is_memory() && !a.allow_tmpfs {
        bail!(
            "{} is on {}, which is memory, not a disk; pick a directory on the disk to measure (or pass --allow-tmpfs)",
            dir.display(),
            machine.disk.fs_type
        );
    }
    let binary = match &a.server {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding this executable")?.with_file_name("gmq-server"),
    };
    let binary_note = binary_freshness(&binary);
    if let Some(n) = &binary_note {
        eprintln!("server-bench: warning: {n}");
    }
    let cleanup = Arc::new(Mutex::new(Cleanup::default()));
    on_signal(cleanup.clone()).context("installing the signal handler")?;
    let rt = if a.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(a.client_threads).enable_all().build()
    }
    .context("starting the load generator's runtime")?;
    let command = std::env::args().map(|x| shell_quote(&x)).collect::<Vec<_>>().join(" ");
    eprintln!(
        "server-bench: {} runs × {} policies; server {}; data under {} ({} on {})",
        a.runs,
        a.policies.len(),
        binary.display(),
        dir.display(),
        machine.disk.fs_type,
        machine.disk.device
    );
    let source = source_state();
    let ctx = Ctx { a: &a, dir: dir.clone(), machine: &machine, binary: binary.clone(), rt, cleanup, source };
    let mut runs = Vec::new();
    for i in 1..=a.runs {
        match run(&ctx, i) {
            Ok(r) => runs.push(r),
            Err(e) => {
                if ctx.cleanup.lock().unwrap_or_else(|e| e.into_inner()).interrupted {
                    // The signal thread is cleaning up and exits the process.
                    loop {
                        std::thread::park();
                    }
                }
                return Err(e.context(format!("run {i}")));
            }
        }
    }
    if created {
        let _ = std::fs::remove_dir(&dir);
    }
    print!("{}", render(&command, &ctx, binary_note.as_deref(), &runs));
    if let Some(path) = &a.json {
        let report = Report {
            command: &command,
            machine: &machine,
            source: ctx.source.clone(),
            server_binary: binary.display().to_string(),
            runs: &runs,
        };
        let text = serde_json::to_string_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The commit of the source tree, and which of the crates the server is
/// built from had uncommitted changes (the figures then belong to that
/// working tree).
fn source_state() -> Option<String> {
    let git = gmq_benches::git;
    let head = git(&["log", "-1", "--format=%h %s"])?;
    let dirty: Vec<&str> = ["engine", "protocol", "server"]
        .into_iter()
        .filter(|d| git(&["status", "--porcelain", "--", d]).is_some_and(|s| !s.is_empty()))
        .collect();
    Some(if dirty.is_empty() {
        format!("commit {head}")
    } else {
        format!("commit {head}, plus uncommitted changes under {}", dirty.join("/, ") + "/")
    })
}

/// A warning when the server binary is older than the sources it is built
/// from (the figures would then not be those of the working tree).
fn binary_freshness(binary: &Path) -> Option<String> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    fn newest(p: &Path) -> Option<SystemTime> {
        let m = std::fs::metadata(p).ok()?;
        if m.is_file() {
            return m.modified().ok();
        }
        std::fs::read_dir(p).ok()?.filter_map(|e| e.ok()).filter_map(|e| newest(&e.path())).max()
    }
    let src = ["server/src", "protocol/src", "engine/src"].iter().filter_map(|d| newest(&root.join(d))).max()?;
    (src > built).then(|| {
        format!(
            "{} is older than the newest file under server/, protocol/ or engine/ src: rebuild it",
            binary.display()
        )
    })
}

fn run(ctx: &Ctx<'_>, i: usize) -> Result<Run> {
    let a = ctx.a;
    let waited = wait_quiet(a.quiet.max_others_cpu, secs(a.quiet.quiet_wait), ctx.machine.cpus);
    if waited > Duration::ZERO {
        eprintln!("[run {i}/{}] waited {:.0} s for a quieter machine", a.runs, waited.as_secs_f64());
    }
    let started = unix_now();
    let load_before = load_average();
    let cpu0 = CpuSample::now();
    let mut server_ticks = 0;
    let mut policies = Vec::new();
    for &p in &a.policies {
        policies.push(policy_run(ctx, i, p, &mut server_ticks).with_context(|| format!("fsync {}", policy_label(p)))?);
    }
    let later = CpuSample::now();
    // The servers of the run have been reaped: their CPU time is in this
    // process's (children's) own time already, so others' CPUs are right
    // as they are.
    let cpu = cpu0.until(&later, ctx.machine.cpus);
    let (_, server_cpus) = cpu0.until_with_child(&later, ctx.machine.cpus, server_ticks);
    Ok(Run { started, load_before, load_after: load_average(), cpu, server_cpus, policies })
}

fn has(a: &Args, w: Workload) -> bool {
    a.workloads.contains(&w)
}

/// Runs `f` on the load generator's runtime, with the CPU use of this
/// process, of the server and of everything else.
fn measure<T>(
    ctx: &Ctx<'_>,
    server: &ServerProcess,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<Measured<T>> {
    let s0 = server.cpu_ticks();
    let c0 = CpuSample::now();
    let result = ctx.rt.block_on(f)?;
    let c1 = CpuSample::now();
    let s1 = server.cpu_ticks();
    let (u, server_cpus) = c0.until_with_child(&c1, ctx.machine.cpus, s1.saturating_sub(s0));
    let cpu = CellCpu { bench_cpus: u.own_cpus, server_cpus, others_cpus: u.others_cpus, steal_pct: u.steal_pct };
    Ok(Measured { result, cpu, attempts: 1 })
}

/// Runs a cell (`cell(attempt)` returns it and the CPUs other processes
/// kept busy meanwhile) until it was not disturbed, at most `--retries`
/// more times; the last attempt counts. Returns it and the attempts made.
fn retried<T>(ctx: &Ctx<'_>, at: &str, mut cell: impl FnMut(usize) -> Result<(T, f64)>) -> Result<(T, usize)> {
    let mut attempt = 1;
    loop {
        let (r, others) = cell(attempt)?;
        if others <= ctx.a.quiet.max_others_cpu || attempt > ctx.a.retries {
            return Ok((r, attempt));
        }
        eprintln!("{at} disturbed by other processes ({others:.2} CPUs); running it again");
        wait_quiet(ctx.a.quiet.max_others_cpu, secs(ctx.a.retry_pause), ctx.machine.cpus);
        attempt += 1;
    }
}

fn policy_run(ctx: &Ctx<'_>, i: usize, policy: FsyncPolicy, server_ticks: &mut u64) -> Result<PolicyRun> {
    let a = ctx.a;
    let n = a.runs;
    let pol = policy_label(policy);
    let at = format!("[run {i}/{n}] {pol:<7}");
    let mut out = PolicyRun {
        policy: pol.clone(),
        engine: None,
        engine_attempts: 0,
        server_start_seconds: 0.0,
        publish: Vec::new(),
        prefill_seconds: Vec::new(),
        consume: Vec::new(),
        e2e: None,
        server_warnings: 0,
    };

    if has(a, Workload::Engine) {
        // The engine's defaults are the server's (committer threads,
        // segment and checkpoint sizes).
        let settings = Settings::new(&ctx.dir, secs(a.duration), secs(a.warmup));
        let load = Load::PipelinedTasks { tasks: a.engine_tasks.max(1), window: a.engine_window.max(1) };
        let (c, attempts) = retried(ctx, &at, |_| {
            let c = run_cell(&Cell { policy, payload: a.payload, load }, &settings).context("bare engine")?;
            eprintln!(
                "{at} engine {:<24} {:>9} msgs/s, p50 {} p99 {} p99.9 {}, others {:.2} CPUs",
                load.label(),
                grouped(c.records_per_s),
                latency_us(c.latency.p50_us),
                latency_us(c.latency.p99_us),
                latency_us(c.latency.p999_us),
                c.cpu.others_cpus
            );
            let others = c.cpu.others_cpus;
            Ok((c, others))
        })?;
        out.engine = Some(c);
        out.engine_attempts = attempts;
    }
    if !(has(a, Workload::Publish) || has(a, Workload::Consume) || has(a, Workload::E2e)) {
        return Ok(out);
    }

    let data = tempfile::Builder::new()
        .prefix("gmq-server-")
        .tempdir_in(&ctx.dir)
        .with_context(|| format!("creating a data directory in {}", ctx.dir.display()))?;
    let mut opts = ServerOptions::new(&ctx.binary, data.path().join("data"), &pol);
    opts.echo_log = a.server_log;
    ctx.cleanup.lock().unwrap_or_else(|e| e.into_inner()).dir = Some(data.path().to_path_buf());
    let mut server = ServerProcess::start(&opts)?;
    ctx.cleanup.lock().unwrap_or_else(|e| e.into_inner()).pid = Some(server.pid());
    out.server_start_seconds = server.start_time().as_secs_f64();
    let addr = server.addr();

    if has(a, Workload::Publish) {
        for &c in &a.connections {
            let (mut m, attempts) = retried(ctx, &at, |attempt| {
                let queue = format!("publish-{c}x{}-{attempt}", a.in_flight);
                ctx.rt.block_on(load::create_queue(addr, &queue))?;
                let mut spec =
                    PublishSpec::timed(addr, &queue, c, a.in_flight, a.payload, secs(a.warmup), secs(a.duration));
                spec.batch = a.batch.max(1);
                let m =
                    measure(ctx, &server, load::publish(&spec)).with_context(|| format!("publish, {c} connections"))?;
                let r = &m.result;
                eprintln!(
                "{at} server {:<24} {:>9} msgs/s, p50 {} p99 {} p99.9 {}; CPUs: server {:.2}, bench {:.2}, others {:.2}",
                format!("{c} conns × {} in flight", a.in_flight),
                grouped(r.msgs_per_s),
                latency_us(r.latency.p50_us),
                latency_us(r.latency.p99_us),
                latency_us(r.latency.p999_us),
                m.cpu.server_cpus,
                m.cpu.bench_cpus,
                m.cpu.others_cpus
            );
                let others = m.cpu.others_cpus;
                Ok((m, others))
            })?;
            m.attempts = attempts;
            out.publish.push(m);
            server.check_alive()?;
        }
    }

    if has(a, Workload::Consume) {
        for &mode in &a.consume_modes {
            let mode = match mode {
                ModeArg::Pull => ConsumeMode::Pull { max: a.consume_max.max(1) },
                ModeArg::Subscribe => ConsumeMode::Subscribe { prefetch: a.prefetch.max(1) },
            };
            for &k in &a.consumers {
                // A backlog of its own per cell: once a group has acked a
                // whole segment, retention deletes it, so a second group on
                // the same queue would not find the backlog whole.
                let name = format!("{}-{k}", mode.label().replace(' ', "-"));
                let (mut m, attempts) = retried(ctx, &at, |attempt| {
                    let queue = format!("backlog-{name}-{attempt}");
                    ctx.rt.block_on(load::create_queue(addr, &queue))?;
                    let t = ctx.rt.block_on(load::prefill(addr, &queue, a.backlog, a.payload, a.consume_max))?;
                    eprintln!(
                        "{at} pre-filled {} × {} in {} s",
                        grouped(a.backlog as f64),
                        size_label(a.payload as u64),
                        sig3(t)
                    );
                    out.prefill_seconds.push(t);
                    let group = name.clone();
                    let spec = ConsumeSpec {
                        addr,
                        queue,
                        group,
                        consumers: k,
                        mode,
                        messages: a.backlog,
                        timeout: secs(a.consume_timeout),
                    };
                    let m = measure(ctx, &server, load::consume(&spec))
                        .with_context(|| format!("{}, {k} consumers", mode.label()))?;
                    let r = &m.result;
                    eprintln!(
                    "{at} {:<31} {:>9} msgs/s ({} s), ack p50 {} p99 {}; CPUs: server {:.2}, bench {:.2}, others {:.2}",
                    format!("{} × {k}", mode.label()),
                    grouped(r.msgs_per_s),
                    sig3(r.seconds),
                    latency_us(r.ack_latency.p50_us),
                    latency_us(r.ack_latency.p99_us),
                    m.cpu.server_cpus,
                    m.cpu.bench_cpus,
                    m.cpu.others_cpus
                );
                    let others = m.cpu.others_cpus;
                    Ok((m, others))
                })?;
                m.attempts = attempts;
                out.consume.push(m);
                server.check_alive()?;
            }
        }
    }

    if has(a, Workload::E2e) {
        let (mut m, attempts) = retried(ctx, &at, |attempt| {
            let spec = EndToEndSpec {
                addr,
                queue: format!("e2e-{attempt}"),
                group: "e2e".into(),
                rate: a.e2e.rate,
                payload: a.payload,
                warmup: secs(a.e2e.e2e_warmup),
                measure: secs(a.e2e.e2e_duration),
                prefetch: a.e2e.e2e_prefetch.max(1),
                manual_ack: true,
                drain_timeout: Duration::from_secs(30),
            };
            let m = measure(ctx, &server, load::end_to_end(&spec)).context("end to end")?;
            let r = &m.result;
            eprintln!(
            "{at} end to end at {} msgs/s: p50 {} p99 {} p99.9 {} (publish → reply p50 {} p99 {}; send delay p99 {})",
            grouped(a.e2e.rate),
            latency_us(r.end_to_end.p50_us),
            latency_us(r.end_to_end.p99_us),
            latency_us(r.end_to_end.p999_us),
            latency_us(r.publish.p50_us),
            latency_us(r.publish.p99_us),
            latency_us(r.send_delay.p99_us)
        );
            let others = m.cpu.others_cpus;
            Ok((m, others))
        })?;
        m.attempts = attempts;
        out.e2e = Some(m);
    }

    server.check_alive()?;
    out.server_warnings = server.warnings();
    *server_ticks += server.cpu_ticks();
    ctx.cleanup.lock().unwrap_or_else(|e| e.into_inner()).pid = None;
    let status = server.stop(Duration::from_secs(30))?;
    if !status.success() {
        bail!("gmq-server exited with {status} after SIGTERM");
    }
    data.close().context("removing the server's data directory")?;
    ctx.cleanup.lock().unwrap_or_else(|e| e.into_inner()).dir = None;
    Ok(out)
}

// ---------------------------------------------------------------- report

fn policy<'a>(r: &'a Run, pol: &str) -> Option<&'a PolicyRun> {
    r.policies.iter().find(|p| p.policy == pol)
}

fn publish_cell<'a>(r: &'a Run, pol: &str, conns: usize) -> Option<&'a Measured<PublishResult>> {
    policy(r, pol)?.publish.iter().find(|m| m.result.connections == conns)
}

fn consume_cell<'a>(r: &'a Run, pol: &str, mode: ConsumeMode, k: usize) -> Option<&'a Measured<ConsumeResult>> {
    policy(r, pol)?.consume.iter().find(|m| m.result.mode == mode && m.result.consumers == k)
}

fn cpus(x: f64) -> String {
    format!("{x:.2}")
}

fn modes(a: &Args) -> Vec<ConsumeMode> {
    a.consume_modes
        .iter()
        .map(|m| match m {
            ModeArg::Pull => ConsumeMode::Pull { max: a.consume_max.max(1) },
            ModeArg::Subscribe => ConsumeMode::Subscribe { prefetch: a.prefetch.max(1) },
        })
        .collect()
}

/// Per run, the bare engine's msgs/s over the server's, for `conns`
/// connections under `pol`.
fn overhead(runs: &[Run], pol: &str, conns: usize) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let e = policy(r, pol)?.engine.as_ref()?;
            let s = publish_cell(r, pol, conns)?;
            Some(e.records_per_s / s.result.msgs_per_s)
        })
        .collect()
}

fn render(command: &str, ctx: &Ctx<'_>, binary_note: Option<&str>, runs: &[Run]) -> String {
    let a = ctx.a;
    let n = runs.len();
    let pols: Vec<String> = a.policies.iter().map(|&p| policy_label(p)).collect();
    let mut o = String::new();
    let _ = writeln!(o, "# GMQ server benchmark\n\n```\n{command}\n```\n");
    let _ = writeln!(o, "{}", ctx.machine.describe().trim_end());
    if let Some(v) = &ctx.source {
        let _ = writeln!(o, "- source (when the runs started): {v}");
    }
    let _ =
        writeln!(o, "- server: `{}`{}", ctx.binary.display(), binary_note.map_or(String::new(), |x| format!(" ({x})")));
    let _ = writeln!(
        o,
        "- load generator: this process, a {} tokio runtime; the server is a separate process on the same {} CPUs\n\
         - figures are medians of {n} run{}; each run starts a fresh server per policy on a fresh data directory\n",
        if a.client_threads <= 1 { "current-thread".to_string() } else { format!("{}-thread", a.client_threads) },
        ctx.machine.cpus,
        if n == 1 { "" } else { "s" }
    );

    let payload = size_label(a.payload as u64);
    if has(a, Workload::Publish) || has(a, Workload::Engine) {
        let _ = writeln!(o, "## Publish, {payload} payloads (median of {n})\n");
        let mut t = Table::new([
            ("fsync", Align::Left),
            ("what", Align::Left),
            ("msgs/s", Align::Right),
            ("MB/s", Align::Right),
            ("p50", Align::Right),
            ("p99", Align::Right),
            ("p99.9", Align::Right),
            ("msgs/s, min – max of runs", Align::Right),
            ("server CPUs", Align::Right),
            ("bench CPUs", Align::Right),
            ("others' CPUs", Align::Right),
            ("CPU µs/msg", Align::Right),
        ]);
        for pol in &pols {
            for &c in &a.connections {
                let get = |f: fn(&Measured<PublishResult>) -> f64| spread(runs, |r| publish_cell(r, pol, c).map(f));
                let (Some(rate), Some(mb), Some(p50), Some(p99), Some(p999), Some(sc), Some(bc), Some(oc), Some(per)) = (
                    get(|m| m.result.msgs_per_s),
                    get(|m| m.result.mb_per_s),
                    get(|m| m.result.latency.p50_us),
                    get(|m| m.result.latency.p99_us),
                    get(|m| m.result.latency.p999_us),
                    get(|m| m.cpu.server_cpus),
                    get(|m| m.cpu.bench_cpus),
                    get(|m| m.cpu.others_cpus),
                    get(|m| m.cpu.server_cpus / m.result.msgs_per_s * 1e6),
                ) else {
                    continue;
                };
                let batch = if a.batch > 1 { format!(", {} per publish", a.batch) } else { String::new() };
                t.row([
                    pol.clone(),
                    format!("server, {c} conn{} × {} in flight{batch}", if c == 1 { "" } else { "s" }, a.in_flight),
                    grouped(rate.median),
                    sig3(mb.median),
                    latency_us(p50.median),
                    latency_us(p99.median),
                    latency_us(p999.median),
                    range(&rate, grouped),
                    cpus(sc.median),
                    cpus(bc.median),
                    cpus(oc.median),
                    sig3(per.median),
                ]);
            }
            let get = |f: fn(&CellResult) -> f64| spread(runs, |r| policy(r, pol)?.engine.as_ref().map(f));
            if let (Some(rate), Some(mb), Some(p50), Some(p99), Some(p999), Some(bc), Some(oc), Some(per)) = (
                get(|c| c.records_per_s),
                get(|c| c.mb_per_s),
                get(|c| c.latency.p50_us),
                get(|c| c.latency.p99_us),
                get(|c| c.latency.p999_us),
                get(|c| c.cpu.own_cpus),
                get(|c| c.cpu.others_cpus),
                get(|c| c.cpu.own_cpus / c.records_per_s * 1e6),
            ) {
                t.row([
                    pol.clone(),
                    format!("bare engine, {} tasks × {} in flight", a.engine_tasks, a.engine_window),
                    grouped(rate.median),
                    sig3(mb.median),
                    latency_us(p50.median),
                    latency_us(p99.median),
                    latency_us(p999.median),
                    range(&rate, grouped),
                    "–".into(),
                    cpus(bc.median),
                    cpus(oc.median),
                    sig3(per.median),
                ]);
            }
        }
        let _ = writeln!(o, "{}", t.to_markdown());
        let _ = writeln!(
            o,
            "Server latency: publish request written → its `ok` read by the client (replies come in request \
             order). Engine latency: `Queue::publish` → its completion seen by the task, oldest first. MB/s \
             is payload (10^6 bytes). CPUs: averages over the cell, warm-up included; `bench` is this \
             process (load generator, or the engine itself). CPU µs/msg: the server's CPU time per \
             message (for the bare engine: this process's, i.e. the engine's and its tasks').\n"
        );
        let rows: Vec<(String, usize, Vec<f64>)> = pols
            .iter()
            // Only the server load that is the engine's: as many connections
            // as tasks, as many requests in flight as publishes per task.
            .flat_map(|pol| {
                a.connections
                    .iter()
                    .filter(|&&c| c == a.engine_tasks && a.in_flight == a.engine_window && a.batch <= 1)
                    .map(move |&c| (pol.clone(), c))
            })
            .map(|(pol, c)| {
                let per = overhead(runs, &pol, c);
                (pol, c, per)
            })
            .filter(|(_, _, per)| !per.is_empty())
            .collect();
        if !rows.is_empty() {
            let _ = writeln!(o, "### Server overhead: bare engine msgs/s ÷ server msgs/s, same run (median of {n})\n");
            let mut t = Table::new([
                ("fsync", Align::Left),
                ("server load", Align::Left),
                ("engine ÷ server", Align::Right),
                ("runs", Align::Left),
            ]);
            for (pol, c, per) in rows {
                let each: Vec<String> = per.iter().map(|x| format!("{}×", sig3(*x))).collect();
                t.row([pol, format!("{c} × {}", a.in_flight), format!("{}×", sig3(median(&per))), each.join(", ")]);
            }
            let _ = writeln!(o, "{}", t.to_markdown());
        }
    }

    if has(a, Workload::Consume) {
        let _ = writeln!(
            o,
            "## Consume + manual ack of a {} × {payload} backlog (median of {n})\n",
            grouped(a.backlog as f64)
        );
        let mut t = Table::new([
            ("fsync", Align::Left),
            ("mode", Align::Left),
            ("consumers", Align::Right),
            ("msgs/s", Align::Right),
            ("MB/s", Align::Right),
            ("consume p50", Align::Right),
            ("consume p99", Align::Right),
            ("ack p50", Align::Right),
            ("ack p99", Align::Right),
            ("msgs/s, min – max of runs", Align::Right),
            ("server CPUs", Align::Right),
            ("bench CPUs", Align::Right),
            ("others' CPUs", Align::Right),
            ("server CPU µs/msg", Align::Right),
        ]);
        for pol in &pols {
            for mode in modes(a) {
                for &k in &a.consumers {
                    let get =
                        |f: fn(&Measured<ConsumeResult>) -> f64| spread(runs, |r| consume_cell(r, pol, mode, k).map(f));
                    let (
                        Some(rate),
                        Some(mb),
                        Some(c50),
                        Some(c99),
                        Some(a50),
                        Some(a99),
                        Some(sc),
                        Some(bc),
                        Some(oc),
                        Some(per),
                    ) = (
                        get(|m| m.result.msgs_per_s),
                        get(|m| m.result.mb_per_s),
                        get(|m| m.result.consume_latency.p50_us),
                        get(|m| m.result.consume_latency.p99_us),
                        get(|m| m.result.ack_latency.p50_us),
                        get(|m| m.result.ack_latency.p99_us),
                        get(|m| m.cpu.server_cpus),
                        get(|m| m.cpu.bench_cpus),
                        get(|m| m.cpu.others_cpus),
                        get(|m| m.cpu.server_cpus / m.result.msgs_per_s * 1e6),
                    )
                    else {
                        continue;
                    };
                    let pull = matches!(mode, ConsumeMode::Pull { .. });
                    let opt = |s: Spread| if pull { latency_us(s.median) } else { "–".into() };
                    t.row([
                        pol.clone(),
                        mode.label(),
                        k.to_string(),
                        grouped(rate.median),
                        sig3(mb.median),
                        opt(c50),
                        opt(c99),
                        latency_us(a50.median),
                        latency_us(a99.median),
                        range(&rate, grouped),
                        cpus(sc.median),
                        cpus(bc.median),
                        cpus(oc.median),
                        sig3(per.median),
                    ]);
                }
            }
        }
        let _ = writeln!(o, "{}", t.to_markdown());
        let _ = writeln!(
            o,
            "Each cell publishes its backlog to a queue of its own (in batches of {}, 2 connections × 16 \
             in flight), then K consumers (one connection each) of one group drain it until the server \
             has acked the whole backlog; msgs/s is acked messages over the time to the \
             last ack's reply. `consume max M`: each consumer sends `consume` (manual ack) and, with it, \
             the `ack` of the previous batch, then reads both replies. `subscribe prefetch P`: manual-ack \
             subscription; the offsets of the push frames received are acked in one `ack` each time the \
             frames that arrived together have been handled.\n",
            a.consume_max
        );
    }

    if has(a, Workload::E2e) {
        let _ = writeln!(o, "## End-to-end latency at {} msgs/s, {payload} (median of {n})\n", grouped(a.e2e.rate));
        let mut t = Table::new([
            ("fsync", Align::Left),
            ("delivered/s", Align::Right),
            ("e2e p50", Align::Right),
            ("e2e p99", Align::Right),
            ("e2e p99.9", Align::Right),
            ("e2e max", Align::Right),
            ("publish → ok p50", Align::Right),
            ("p99", Align::Right),
            ("p99.9", Align::Right),
            ("send delay p50", Align::Right),
            ("p99", Align::Right),
            ("e2e p99, min – max of runs", Align::Right),
            ("server CPUs", Align::Right),
        ]);
        for pol in &pols {
            let get = |f: fn(&Measured<EndToEndResult>) -> f64| spread(runs, |r| policy(r, pol)?.e2e.as_ref().map(f));
            let vals = [
                get(|m| m.result.delivered_per_s),
                get(|m| m.result.end_to_end.p50_us),
                get(|m| m.result.end_to_end.p99_us),
                get(|m| m.result.end_to_end.p999_us),
                get(|m| m.result.end_to_end.max_us),
                get(|m| m.result.publish.p50_us),
                get(|m| m.result.publish.p99_us),
                get(|m| m.result.publish.p999_us),
                get(|m| m.result.send_delay.p50_us),
                get(|m| m.result.send_delay.p99_us),
                get(|m| m.cpu.server_cpus),
            ];
            let Some(v) = vals.iter().copied().collect::<Option<Vec<Spread>>>() else { continue };
            t.row([
                pol.clone(),
                grouped(v[0].median),
                latency_us(v[1].median),
                latency_us(v[2].median),
                latency_us(v[3].median),
                latency_us(v[4].median),
                latency_us(v[5].median),
                latency_us(v[6].median),
                latency_us(v[7].median),
                latency_us(v[8].median),
                latency_us(v[9].median),
                range(&v[2], latency_us),
                cpus(v[10].median),
            ]);
        }
        let _ = writeln!(o, "{}", t.to_markdown());
        let _ = writeln!(
            o,
            "One producer connection publishes message i at t0 + i / rate ({} s of warm-up, then {} s \
             measured), whatever is still unanswered; a thread releases each message at its time, as the \
             runtime's timer only has millisecond resolution. One subscriber connection (prefetch {}, \
             manual ack, acks batched per read) receives them. Every latency runs from the message's \
             scheduled time, so a stall delays the figures of every message scheduled during it (no \
             coordinated omission). `send delay` is the generator's own lateness in writing a message \
             after its scheduled time; it is part of both other figures.\n",
            sig3(a.e2e.e2e_warmup),
            sig3(a.e2e.e2e_duration),
            a.e2e.e2e_prefetch
        );
    }

    let _ = writeln!(o, "## Runs\n");
    let extra = [
        ("server CPUs", Align::Right),
        ("cells retried", Align::Right),
        ("still disturbed", Align::Right),
        ("server start", Align::Left),
        ("server warnings", Align::Right),
    ];
    let limit = a.quiet.max_others_cpu;
    let t = runs_table(runs, &extra, |r| {
        // (others' CPUs, attempts) of every cell of the run.
        let cells: Vec<(f64, usize)> = r
            .policies
            .iter()
            .flat_map(|p| {
                p.publish
                    .iter()
                    .map(|m| (m.cpu.others_cpus, m.attempts))
                    .chain(p.consume.iter().map(|m| (m.cpu.others_cpus, m.attempts)))
                    .chain(p.e2e.iter().map(|m| (m.cpu.others_cpus, m.attempts)))
                    .chain(p.engine.iter().map(|c| (c.cpu.others_cpus, p.engine_attempts)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let retried = cells.iter().filter(|c| c.1 > 1).count();
        let disturbed = cells.iter().filter(|c| c.0 > limit).count();
        let starts: Vec<String> =
            r.policies.iter().map(|p| format!("{} {}", p.policy, latency_us(p.server_start_seconds * 1e6))).collect();
        let warnings: u64 = r.policies.iter().map(|p| p.server_warnings).sum();
        let load = RunLoad { before: r.load_before, after: r.load_after, cpu: &r.cpu };
        (
            load,
            vec![
                cpus(r.server_cpus),
                retried.to_string(),
                disturbed.to_string(),
                starts.join(", "),
                warnings.to_string(),
            ],
        )
    });
    let _ = writeln!(o, "{t}");
    let _ = writeln!(
        o,
        "`others' CPUs`: CPUs that other processes kept busy (this process and the server left out; kernel \
         threads writing back our own data count as others). A cell above {limit} was run again, up to {} \
         times, after waiting up to {} s for a quieter machine; `still disturbed` counts the cells above it \
         after their last attempt. The load average counts the benchmark and the server, so it reads high \
         during a run even on a quiet machine.\n",
        a.retries,
        sig3(a.retry_pause)
    );

    let _ = writeln!(o, "## Targets\n");
    let mut t = Table::new([("target", Align::Left), ("measured (median)", Align::Left), ("met", Align::Left)]);
    let always = policy_label(FsyncPolicy::Always);
    let name = format!("`always`, 4 connections × 64 in flight, 1 KiB: ≥ {} msgs/s", grouped(TARGET_PUBLISH_4X64));
    let comparable = a.payload == 1024 && a.in_flight == 64 && a.batch <= 1;
    match spread(runs, |r| publish_cell(r, &always, 4).map(|m| m.result.msgs_per_s)).filter(|_| comparable) {
        Some(s) => t.row([name, format!("{} msgs/s", grouped(s.median)), verdict(s.median >= TARGET_PUBLISH_4X64)]),
        None => t.row([name, "not measured".into(), "–".into()]),
    }
    let name = format!(
        "server overhead over the bare engine, same workload and run: < {}× (`always`, 4 × 64)",
        TARGET_OVERHEAD
    );
    let per = overhead(runs, &always, 4);
    if per.is_empty() || !comparable || a.engine_tasks != 4 || a.engine_window != 64 {
        t.row([name, "not measured".into(), "–".into()]);
    } else {
        let m = median(&per);
        t.row([name, format!("{}×", sig3(m)), verdict(m < TARGET_OVERHEAD)]);
    }
    let _ = writeln!(o, "{}", t.to_markdown());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        let a = Args::parse_from(["server-bench", "--policies", "always", "--workloads", "publish,engine"]);
        assert_eq!(a.policies, [FsyncPolicy::Always]);
        assert_eq!(a.workloads, [Workload::Publish, Workload::Engine]);
        assert_eq!((a.runs, a.in_flight, a.payload, a.engine_tasks, a.engine_window), (5, 64, 1024, 4, 64));
        assert_eq!(a.connections, [4, 1]);
        assert_eq!(a.consume_modes, [ModeArg::Pull, ModeArg::Subscribe]);
    }
}
