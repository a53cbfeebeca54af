//! `engine-bench`: the engine's append path per fsync policy, payload size
//! and concurrency, next to the machine's own limits measured with fio in
//! the same run. Prints a markdown report (medians of `--runs` runs) to
//! stdout, progress to stderr, and optionally every run as JSON.
//!
//! ```text
//! engine-bench --runs 3 --duration 2 --dir /work
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use gmq_benches::append::{run_cell, Cell, CellResult, Load, Settings};
use gmq_benches::fio::{shell_quote, FioJob, FioResult};
use gmq_benches::machine::{load_average, runs_table, wait_quiet, CpuSample, CpuUse, MachineInfo, RunLoad};
use gmq_benches::report::{range, verdict};
use gmq_benches::stats::{median, Spread};
use gmq_benches::table::{grouped, latency_us, pct, sig3, Align, Table};
use gmq_benches::{engine_version, parse_size, policy_label, size_label};
use gmq_engine::FsyncPolicy;
use serde::Serialize;

/// Target: `always`, 64 appenders of 1 KiB records, records/s.
const TARGET_ALWAYS_1K_64: f64 = 150_000.0;
/// Target: `always`, 64 KiB records, share of fio's sequential durable bandwidth.
const TARGET_ALWAYS_64K_PCT: f64 = 70.0;
/// Target: `never`, one appender of 100 B records, records/s (strictly more).
const TARGET_NEVER_100B_1: f64 = 1_000_000.0;

/// Benchmarks the engine's append path against the machine's fio limits.
#[derive(Debug, Parser)]
#[command(name = "engine-bench", version)]
struct Args {
    /// Repeat everything this many times; tables show the medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds measured per cell.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Seconds run before measuring, per cell.
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
    /// Directory on the disk to measure; fresh data directories (and fio's
    /// files) are made inside it and removed afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Fsync policies: always, never, interval:MS.
    #[arg(long, value_delimiter = ',', default_value = "always,interval:10,never")]
    policies: Vec<FsyncPolicy>,
    /// Payload sizes (bytes; k/m suffixes are powers of 1024).
    #[arg(long, value_delimiter = ',', default_value = "100,1k,64k", value_parser = parse_payload)]
    sizes: Vec<usize>,
    /// Closed-loop appender counts: each appender waits for its append
    /// before issuing the next.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    appenders: Vec<usize>,
    /// Closed-loop async appender counts: tasks on one current-thread tokio
    /// runtime, each awaiting its append before issuing the next (how the
    /// server waits). 0 for none.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    tasks: Vec<usize>,
    /// Appends one pipelined appender keeps in flight.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Cells also run pipelined (one appender, `--window` in flight), as
    /// POLICY/SIZE pairs; `all` for every policy and size, `none` for none.
    #[arg(long, value_delimiter = ',', default_value = "never/100")]
    pipelined: Vec<String>,
    /// Engine committer threads.
    #[arg(long, default_value_t = 2)]
    committer_threads: usize,
    /// The fio executable.
    #[arg(long, default_value = "fio")]
    fio: PathBuf,
    /// Skip the fio measurements (and the ratios that need them).
    #[arg(long)]
    no_fio: bool,
    /// Bytes fio writes in 1 KiB fdatasync'd appends.
    #[arg(long, default_value = "8m")]
    fio_sync_size: String,
    /// Bytes fio writes in 1 MiB fdatasync'd appends.
    #[arg(long, default_value = "512m")]
    fio_seq_size: String,
    /// Also write every run and the medians as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A cell during which other processes kept more than this many CPUs
    /// busy on average is disturbed: it is run again (see `--retries`).
    #[arg(long, default_value_t = 0.5)]
    max_others_cpu: f64,
    /// Times a disturbed cell is run again; the last attempt counts.
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// Before running a disturbed cell again, wait up to this many seconds
    /// for other processes to use at most `--max-others-cpu` CPUs.
    #[arg(long, default_value_t = 15.0)]
    retry_pause: f64,
    /// Before each run, wait up to this many seconds for other processes to
    /// use at most `--max-others-cpu` CPUs.
    #[arg(long, default_value_t = 120.0)]
    quiet_wait: f64,
    /// Measure even when the directory is on tmpfs (figures then say
    /// nothing about a disk).
    #[arg(long)]
    allow_tmpfs: bool,
}

fn parse_payload(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    usize::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| format!("payload size {s:?} out of range"))
}

/// One run of the whole matrix.
#[derive(Debug, Serialize)]
struct Run {
    /// Unix time the run started, seconds.
    started: u64,
    /// 1-minute load average before and after.
    load_before: f64,
    load_after: f64,
    /// CPU use over the whole run.
    cpu: CpuUse,
    /// Cells run again because they were disturbed.
    retried: usize,
    /// Cells still disturbed after their last attempt.
    disturbed: usize,
    fio_sync: Option<FioResult>,
    fio_seq: Option<FioResult>,
    cells: Vec<CellResult>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    command: &'a str,
    machine: &'a MachineInfo,
    fio_commands: Vec<String>,
    runs: &'a [Run],
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let valid = |x: f64| x.is_finite() && x >= 0.0;
    if !valid(args.duration)
        || args.duration == 0.0
        || !valid(args.warmup)
        || !valid(args.retry_pause)
        || !valid(args.quiet_wait)
    {
        bail!("--duration must be positive, --warmup, --retry-pause and --quiet-wait non-negative");
    }
    let dir = args.dir.canonicalize().with_context(|| format!("--dir {}", args.dir.display()))?;
    let machine = MachineInfo::probe(&dir);
    if machine.disk.is_memory() && !args.allow_tmpfs {
        bail!(
            "{} is on {}, which is memory, not a disk; pick a directory on the disk to measure \
             (or pass --allow-tmpfs)",
            dir.display(),
            machine.disk.fs_type
        );
    }
    let cells = cells(&args)?;
    let command = std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" ");
    let fio_sync = FioJob::sync_latency(&args.fio, &dir, &args.fio_sync_size);
    let fio_seq = FioJob::sequential(&args.fio, &dir, &args.fio_seq_size);
    let fio_jobs = if args.no_fio { vec![] } else { vec![&fio_sync, &fio_seq] };

    let mut settings = Settings::new(&dir, secs(args.duration), secs(args.warmup));
    settings.committer_threads = args.committer_threads;
    let per_run = cells.len() as f64 * (args.duration + args.warmup);
    eprintln!(
        "engine-bench: {} cells × {} runs, about {:.0} s of appending per run plus fio",
        cells.len(),
        args.runs,
        per_run
    );

    let mut runs = Vec::with_capacity(args.runs);
    for i in 1..=args.runs {
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let waited = wait_quiet(args.max_others_cpu, secs(args.quiet_wait), machine.cpus);
        if waited > Duration::ZERO {
            eprintln!("[run {i}/{}] waited {:.0} s for a quieter machine", args.runs, waited.as_secs_f64());
        }
        let load_before = load_average();
        let cpu_before = CpuSample::now();
        let t = Instant::now();
        let mut fio_results = Vec::new();
        for job in &fio_jobs {
            let dirs =
                tempfile::Builder::new().prefix("gmq-fio-").tempdir_in(&dir).context("creating fio's directory")?;
            let job = FioJob { directory: dirs.path().to_path_buf(), ..(*job).clone() };
            let r = job.run()?;
            eprintln!(
                "[run {i}/{}] fio {} (bs {}): {} syncs/s, {} MB/s, fdatasync p50 {} p99 {}",
                args.runs,
                job.name,
                job.bs,
                grouped(r.syncs_per_s),
                sig3(r.mb_per_s),
                latency_us(r.sync_p50_us),
                latency_us(r.sync_p99_us)
            );
            fio_results.push(r);
            dirs.close().context("removing fio's directory")?;
        }
        let mut results = Vec::with_capacity(cells.len());
        let (mut retried, mut disturbed) = (0, 0);
        for cell in &cells {
            let mut attempt = 0;
            let r = loop {
                let r = run_cell(cell, &settings).with_context(|| format!("cell {}", cell.label()))?;
                eprintln!(
                    "[run {i}/{}] {:<34} {:>11} rec/s {:>8} MB/s  p50 {:>9}  p99 {:>9}  others {:.2} CPUs",
                    args.runs,
                    cell.label(),
                    grouped(r.records_per_s),
                    sig3(r.mb_per_s),
                    latency_us(r.latency.p50_us),
                    latency_us(r.latency.p99_us),
                    r.cpu.others_cpus
                );
                if r.cpu.others_cpus <= args.max_others_cpu {
                    break r;
                }
                if attempt >= args.retries {
                    disturbed += 1;
                    break r;
                }
                attempt += 1;
                retried += 1;
                eprintln!("[run {i}/{}] disturbed by other processes; running it again", args.runs);
                wait_quiet(args.max_others_cpu, secs(args.retry_pause), machine.cpus);
            };
            results.push(r);
        }
        let load_after = load_average();
        let cpu = cpu_before.until(&CpuSample::now(), machine.cpus);
        eprintln!(
            "[run {i}/{}] done in {:.0} s; load average {load_before:.2} → {load_after:.2}; \
             other processes kept {:.2} CPUs busy; {retried} cells retried, {disturbed} still disturbed",
            args.runs,
            t.elapsed().as_secs_f64(),
            cpu.others_cpus
        );
        let mut fio_results = fio_results.into_iter();
        runs.push(Run {
            started,
            load_before,
            load_after,
            cpu,
            retried,
            disturbed,
            fio_sync: fio_results.next(),
            fio_seq: fio_results.next(),
            cells: results,
        });
    }

    let fio_commands: Vec<String> = fio_jobs.iter().map(|j| j.command_line()).collect();
    print!("{}", render(&command, &machine, &fio_commands, &cells, &runs, &args));
    if let Some(path) = &args.json {
        let report = Report { command: &command, machine: &machine, fio_commands, runs: &runs };
        let text = serde_json::to_string_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The matrix in the order it runs and is shown: per policy and size, the
/// closed-loop appender counts, then the pipelined cell if asked for.
fn cells(args: &Args) -> Result<Vec<Cell>> {
    let mut piped: BTreeSet<(String, usize)> = BTreeSet::new();
    let mut all = false;
    for p in &args.pipelined {
        match p.trim() {
            "none" | "" => {}
            "all" => all = true,
            pair => {
                let (pol, size) =
                    pair.split_once('/').with_context(|| format!("--pipelined {pair:?}: expected POLICY/SIZE"))?;
                let pol: FsyncPolicy = pol.parse().map_err(anyhow::Error::msg)?;
                let size = parse_payload(size).map_err(anyhow::Error::msg)?;
                piped.insert((policy_label(pol), size));
            }
        }
    }
    let mut out = Vec::new();
    for &policy in &args.policies {
        for &payload in &args.sizes {
            for load in closed_loads(args) {
                out.push(Cell { policy, payload, load });
            }
            if all || piped.remove(&(policy_label(policy), payload)) {
                out.push(Cell { policy, payload, load: Load::Pipelined { window: args.window.max(1) } });
            }
        }
    }
    if let Some((p, s)) = piped.into_iter().next() {
        bail!("--pipelined {p}/{s}: that policy and size are not in --policies and --sizes");
    }
    if out.is_empty() {
        bail!("nothing to measure");
    }
    Ok(out)
}

/// The cell of `run` for this policy, payload and load.
fn find<'a>(run: &'a Run, policy: &str, payload: usize, load: Load) -> Option<&'a CellResult> {
    run.cells.iter().find(|c| c.policy == policy && c.payload == payload && c.load == load)
}

/// One figure over every run that has it.
fn over_runs(runs: &[Run], f: impl Fn(&Run) -> Option<f64>) -> Option<Spread> {
    let xs: Vec<f64> = runs.iter().filter_map(f).collect();
    (!xs.is_empty()).then(|| Spread::of(&xs))
}

fn render(
    command: &str,
    machine: &MachineInfo,
    fio_commands: &[String],
    cells: &[Cell],
    runs: &[Run],
    args: &Args,
) -> String {
    let mut o = String::new();
    let n = runs.len();
    let _ = writeln!(o, "# GMQ engine append benchmark\n\n```\n{command}\n```\n");
    let _ = writeln!(o, "{}", machine.describe());
    if let Some(v) = engine_version() {
        let _ = writeln!(o, "- engine: {v}");
    }
    let _ = writeln!(
        o,
        "- each cell: fresh engine and queue, {} s warm-up, {} s measured; {} committer threads; \
         figures are medians of {n} run{}\n",
        args.warmup,
        args.duration,
        args.committer_threads,
        if n == 1 { "" } else { "s" }
    );

    let _ = writeln!(o, "## Append path (median of {n})\n");
    let _ = writeln!(
        o,
        "Appenders: closed-loop threads, each waiting for its append before the next; \
         `N tasks`: async tasks on one current-thread tokio runtime, each awaiting its append before the next; \
         `1 (window W)`: one thread keeping up to W appends in flight. MB/s counts payload bytes (10^6). \
         Latency: `append` → completion seen by the appender.\n"
    );
    let mut t = Table::new([
        ("fsync", Align::Left),
        ("payload", Align::Right),
        ("appenders", Align::Right),
        ("records/s", Align::Right),
        ("MB/s", Align::Right),
        ("p50", Align::Right),
        ("p99", Align::Right),
        ("records/s, min – max of runs", Align::Right),
        ("others' CPUs", Align::Right),
    ]);
    for c in cells {
        let (pol, pay) = (policy_label(c.policy), c.payload);
        let get = |f: fn(&CellResult) -> f64| over_runs(runs, |r| find(r, &pol, pay, c.load).map(f));
        let (Some(rate), Some(mb), Some(p50), Some(p99), Some(busy)) = (
            get(|r| r.records_per_s),
            get(|r| r.mb_per_s),
            get(|r| r.latency.p50_us),
            get(|r| r.latency.p99_us),
            get(|r| r.cpu.others_cpus),
        ) else {
            continue;
        };
        t.row([
            pol.clone(),
            size_label(pay as u64),
            c.load.label(),
            grouped(rate.median),
            sig3(mb.median),
            latency_us(p50.median),
            latency_us(p99.median),
            range(&rate, grouped),
            format!("{:.2}", busy.median),
        ]);
    }
    let _ = writeln!(o, "{}", t.to_markdown());
    let _ = writeln!(
        o,
        "`others' CPUs`: CPUs that other processes kept busy during the cell, on average (median over runs); \
         a cell above {} was run again, up to {} times.\n",
        args.max_others_cpu, args.retries
    );

    if !fio_commands.is_empty() {
        let _ = writeln!(o, "## Machine limits: fio on the same disk (median of {n})\n");
        let _ = writeln!(o, "```");
        for c in fio_commands {
            let _ = writeln!(o, "{c}");
        }
        let _ = writeln!(o, "```\n");
        let mut t = Table::new([
            ("fio job", Align::Left),
            ("syncs/s", Align::Right),
            ("MB/s", Align::Right),
            ("fdatasync p50", Align::Right),
            ("fdatasync p99", Align::Right),
            ("syncs/s, min – max", Align::Right),
        ]);
        for (name, pick) in [
            ("1 KiB write + fdatasync", (|r: &Run| r.fio_sync) as fn(&Run) -> Option<FioResult>),
            ("1 MiB write + fdatasync", |r: &Run| r.fio_seq),
        ] {
            let get = |f: fn(&FioResult) -> f64| over_runs(runs, |r| pick(r).map(|x| f(&x)));
            if let (Some(sps), Some(mb), Some(p50), Some(p99)) =
                (get(|x| x.syncs_per_s), get(|x| x.mb_per_s), get(|x| x.sync_p50_us), get(|x| x.sync_p99_us))
            {
                t.row([
                    name.to_string(),
                    grouped(sps.median),
                    sig3(mb.median),
                    latency_us(p50.median),
                    latency_us(p99.median),
                    range(&sps, grouped),
                ]);
            }
        }
        let _ = writeln!(o, "{}", t.to_markdown());
    }

    let ratios = ratios(runs, args);
    if !ratios.is_empty() {
        let _ = writeln!(o, "## Ratios to the machine's limits (each run against its own fio, median of {n})\n");
        let mut t = Table::new([("ratio", Align::Left), ("median", Align::Right), ("runs", Align::Right)]);
        for r in &ratios {
            let per: Vec<String> = r.per_run.iter().map(|&x| (r.fmt)(x)).collect();
            t.row([r.name.clone(), (r.fmt)(median(&r.per_run)), per.join(", ")]);
        }
        let _ = writeln!(o, "{}", t.to_markdown());
    }

    let _ = writeln!(o, "## Runs\n");
    let extra = [("cells retried", Align::Right), ("still disturbed", Align::Right)];
    let t = runs_table(runs, &extra, |r| {
        let load = RunLoad { before: r.load_before, after: r.load_after, cpu: &r.cpu };
        (load, vec![r.retried.to_string(), r.disturbed.to_string()])
    });
    let _ = writeln!(o, "{t}");

    let _ = writeln!(o, "## Targets\n");
    let mut t = Table::new([("target", Align::Left), ("measured (median)", Align::Right), ("met", Align::Left)]);
    for tg in targets(runs, &ratios) {
        t.row([tg.name, tg.measured, tg.verdict]);
    }
    let _ = writeln!(o, "{}", t.to_markdown());
    o
}

/// A ratio computed per run (GMQ against that run's own fio).
struct Ratio {
    key: &'static str,
    name: String,
    per_run: Vec<f64>,
    fmt: fn(f64) -> String,
}

/// A load in words: `8 threads`, `64 tasks`, `1 thread, window 1024`.
fn load_words(load: Load) -> String {
    match load {
        Load::Closed { appenders: 1 } => "1 thread".into(),
        Load::Closed { appenders } => format!("{appenders} threads"),
        Load::Pipelined { window } => format!("1 thread, window {window}"),
        Load::Tasks { tasks: 1 } => "1 task".into(),
        Load::Tasks { tasks } => format!("{tasks} tasks"),
        Load::PipelinedTasks { tasks, window } => format!("{tasks} tasks, window {window} each"),
    }
}

/// The closed-loop loads asked for: appender threads, then async tasks.
fn closed_loads(args: &Args) -> Vec<Load> {
    let mut out: Vec<Load> = Vec::new();
    let threads = args.appenders.iter().filter(|&&a| a > 0).map(|&a| Load::Closed { appenders: a });
    let tasks = args.tasks.iter().filter(|&&t| t > 0).map(|&t| Load::Tasks { tasks: t });
    for l in threads.chain(tasks) {
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

fn ratios(runs: &[Run], args: &Args) -> Vec<Ratio> {
    let always = policy_label(FsyncPolicy::Always);
    let mut out = Vec::new();
    let loads = closed_loads(args);
    for &load in &loads {
        let per: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some(find(r, &always, 64 << 10, load)?.mb_per_s / r.fio_seq?.mb_per_s * 100.0))
            .collect();
        if !per.is_empty() {
            out.push(Ratio {
                key: "seq",
                name: format!("always / 64 KiB / {}: MB/s as % of fio 1 MiB+fdatasync MB/s", load_words(load)),
                per_run: per,
                fmt: pct,
            });
        }
    }
    for load in [Load::Closed { appenders: 64 }, Load::Tasks { tasks: 64 }] {
        let per: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some(find(r, &always, 1 << 10, load)?.records_per_s / r.fio_sync?.syncs_per_s))
            .collect();
        if !per.is_empty() {
            out.push(Ratio {
                key: "per_sync",
                name: format!(
                    "always / 1 KiB / {}: records/s ÷ fio 1 KiB fdatasyncs/s (records per sync)",
                    load_words(load)
                ),
                per_run: per,
                fmt: sig3,
            });
        }
    }
    out
}

struct Target {
    name: String,
    measured: String,
    verdict: String,
}

fn targets(runs: &[Run], ratios: &[Ratio]) -> Vec<Target> {
    let always = policy_label(FsyncPolicy::Always);
    let never = policy_label(FsyncPolicy::Never);
    let rate =
        |pol: &str, pay: usize, load: Load| over_runs(runs, |r| find(r, pol, pay, load).map(|c| c.records_per_s));
    let mut out = Vec::new();

    let name = format!("always, 64 appenders, 1 KiB: ≥ {} records/s", grouped(TARGET_ALWAYS_1K_64));
    let mut measured = Vec::new();
    let mut verdicts = Vec::new();
    for load in [Load::Closed { appenders: 64 }, Load::Tasks { tasks: 64 }] {
        if let Some(s) = rate(&always, 1 << 10, load) {
            measured.push(format!("{} records/s ({})", grouped(s.median), load_words(load)));
            verdicts.push((load_words(load), s.median >= TARGET_ALWAYS_1K_64));
        }
    }
    out.push(match verdicts.as_slice() {
        [] => Target { name, measured: "not measured".into(), verdict: "–".into() },
        [(_, ok)] => Target { name, measured: measured.join("; "), verdict: verdict(*ok) },
        many => Target {
            name,
            measured: measured.join("; "),
            verdict: many.iter().map(|(w, ok)| format!("{}: {w}", verdict(*ok))).collect::<Vec<_>>().join("; "),
        },
    });

    let name = format!("always, 64 KiB: ≥ {TARGET_ALWAYS_64K_PCT:.0} % of fio's sequential durable bandwidth");
    let best = ratios
        .iter()
        .filter(|r| r.key == "seq")
        .map(|r| (median(&r.per_run), r.name.clone()))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    out.push(match best {
        Some((p, which)) => Target {
            name,
            measured: format!(
                "{} (best: {})",
                pct(p),
                which.split(':').next().unwrap_or_default().trim_start_matches("always / 64 KiB / ")
            ),
            verdict: verdict(p >= TARGET_ALWAYS_64K_PCT),
        },
        None => Target { name, measured: "not measured".into(), verdict: "–".into() },
    });

    let name = format!("never, one appender, 100 B: > {} records/s", grouped(TARGET_NEVER_100B_1));
    let closed = rate(&never, 100, Load::Closed { appenders: 1 });
    let piped = runs
        .first()
        .and_then(|r| {
            r.cells.iter().find(|c| c.policy == never && c.payload == 100 && matches!(c.load, Load::Pipelined { .. }))
        })
        .and_then(|c| rate(&never, 100, c.load).map(|s| (c.load, s)));
    let mut measured = Vec::new();
    let mut ok = false;
    if let Some((load, s)) = &piped {
        measured.push(format!("{} records/s pipelined ({})", grouped(s.median), load.label()));
        ok |= s.median > TARGET_NEVER_100B_1;
    }
    if let Some(s) = &closed {
        measured.push(format!("{} records/s closed loop", grouped(s.median)));
        ok |= s.median > TARGET_NEVER_100B_1;
    }
    out.push(if measured.is_empty() {
        Target { name, measured: "not measured".into(), verdict: "–".into() }
    } else {
        Target { name, measured: measured.join("; "), verdict: verdict(ok) }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmq_benches::latency::LatencySummary;

    fn args(extra: &[&str]) -> Args {
        Args::parse_from(std::iter::once("engine-bench").chain(extra.iter().copied()))
    }

    #[test]
    fn default_matrix() -> Result<()> {
        let cells = cells(&args(&[]))?;
        assert_eq!(cells.len(), 3 * 3 * 4 + 1);
        let piped: Vec<String> =
            cells.iter().filter(|c| matches!(c.load, Load::Pipelined { .. })).map(Cell::label).collect();
        assert_eq!(piped, ["never / 100 B / 1 (window 1024)"]);
        // Shown right after the closed-loop cells of the same policy and size.
        let at = cells.iter().position(|c| matches!(c.load, Load::Pipelined { .. })).unwrap_or_default();
        assert_eq!(cells[at - 2].label(), "never / 100 B / 64");
        assert_eq!(cells[at - 1].label(), "never / 100 B / 64 tasks");
        Ok(())
    }

    #[test]
    fn pipelined_selection() -> Result<()> {
        assert_eq!(cells(&args(&["--pipelined", "all", "--window", "8"]))?.len(), 36 + 9);
        assert_eq!(cells(&args(&["--pipelined", "none", "--tasks", "0"]))?.len(), 27);
        assert_eq!(cells(&args(&["--pipelined", "none", "--tasks", "8,64", "--appenders", "1"]))?.len(), 27);
        assert!(cells(&args(&["--pipelined", "always/7"])).is_err());
        assert!(cells(&args(&["--pipelined", "sometimes/100"])).is_err());
        let one = cells(&args(&[
            "--policies",
            "always",
            "--sizes",
            "1k",
            "--appenders",
            "64",
            "--pipelined",
            "none",
            "--tasks",
            "0",
        ]))?;
        assert_eq!(one.iter().map(Cell::label).collect::<Vec<_>>(), ["always / 1 KiB / 64"]);
        Ok(())
    }

    fn cell(policy: &str, payload: usize, load: Load, rate: f64) -> CellResult {
        CellResult {
            policy: policy.into(),
            payload,
            record_bytes: payload + 25,
            load,
            records: rate as u64,
            seconds: 1.0,
            records_per_s: rate,
            mb_per_s: rate * payload as f64 / 1e6,
            log_mb_per_s: rate * (payload + 25) as f64 / 1e6,
            latency: LatencySummary::default(),
            cpu: CpuUse::default(),
        }
    }

    fn fio(syncs_per_s: f64, mb_per_s: f64) -> FioResult {
        FioResult {
            bytes: 0,
            seconds: 1.0,
            writes: 0,
            syncs: 0,
            syncs_per_s,
            mb_per_s,
            sync_p50_us: 200.0,
            sync_p99_us: 500.0,
        }
    }

    fn run(always_1k_64: f64, always_64k_8: f64, never_piped: f64) -> Run {
        Run {
            started: 0,
            load_before: 0.0,
            load_after: 0.0,
            cpu: CpuUse::default(),
            retried: 0,
            disturbed: 0,
            fio_sync: Some(fio(4000.0, 4.0)),
            fio_seq: Some(fio(200.0, 200.0)),
            cells: vec![
                cell("always", 1024, Load::Closed { appenders: 64 }, always_1k_64),
                cell("always", 65536, Load::Closed { appenders: 8 }, always_64k_8),
                cell("never", 100, Load::Closed { appenders: 1 }, 30_000.0),
                cell("never", 100, Load::Pipelined { window: 1024 }, never_piped),
            ],
        }
    }

    #[test]
    fn targets_use_medians_and_same_run_ratios() {
        let a = args(&["--appenders", "1,8,64"]);
        // 64 KiB at 8 appenders: 2000 rec/s = 131 MB/s = 65.5 % of 200 MB/s;
        // 2200 rec/s = 72 %.
        let runs = vec![
            run(160_000.0, 2000.0, 900_000.0),
            run(140_000.0, 2200.0, 1_100_000.0),
            run(155_000.0, 2200.0, 1_200_000.0),
        ];
        let r = ratios(&runs, &a);
        let seq = r.iter().find(|r| r.key == "seq").map(|r| median(&r.per_run)).unwrap_or_default();
        assert!((seq - 2200.0 * 65536.0 / 1e6 / 200.0 * 100.0).abs() < 1e-9, "{seq}");
        let per_sync = r.iter().find(|r| r.key == "per_sync").map(|r| median(&r.per_run)).unwrap_or_default();
        assert!((per_sync - 155_000.0 / 4000.0).abs() < 1e-9);
        let t = targets(&runs, &r);
        let verdicts: Vec<&str> = t.iter().map(|t| t.verdict.as_str()).collect();
        assert_eq!(verdicts, ["yes", "yes", "yes"], "{:?}", t.iter().map(|t| &t.measured).collect::<Vec<_>>());
        assert!(t[2].measured.contains("1 100 000 records/s pipelined"), "{}", t[2].measured);

        let mut mixed = vec![run(100_000.0, 1000.0, 500_000.0)];
        mixed[0].cells.push(cell("always", 1024, Load::Tasks { tasks: 64 }, 151_000.0));
        let t = targets(&mixed, &ratios(&mixed, &a));
        assert_eq!(t[0].verdict, "**no**: 64 threads; yes: 64 tasks");
        assert_eq!(t[0].measured, "100 000 records/s (64 threads); 151 000 records/s (64 tasks)");

        let slow = vec![run(100_000.0, 1000.0, 500_000.0)];
        let t = targets(&slow, &ratios(&slow, &a));
        assert!(t.iter().all(|t| t.verdict == "**no**"));
        let none: Vec<Run> = Vec::new();
        assert!(targets(&none, &ratios(&none, &a)).iter().all(|t| t.measured == "not measured"));
    }
}
