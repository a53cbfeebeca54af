//! The markdown report: medians over runs, and every peer as a ratio to
//! GMQ `always` measured in the same run.

use std::fmt::Write as _;

use gmq_benches::machine::MachineInfo;
use gmq_benches::stats::{median, Spread};
use gmq_benches::table::{grouped, latency_us, pct, sig3, Align, Table};

use crate::systems::System;
use crate::{Args, Run, SystemRun};

/// The configuration every peer is compared with.
pub const REFERENCE: &str = "gmq-always";

/// `system`'s part of `run`.
pub fn of<'a>(run: &'a Run, key: &str) -> Option<&'a SystemRun> {
    run.systems.iter().find(|s| s.system == key)
}

/// `f` of `key` in every run that has it.
pub fn values(runs: &[Run], key: &str, f: impl Fn(&SystemRun) -> Option<f64>) -> Vec<f64> {
    runs.iter().filter_map(|r| of(r, key).and_then(&f)).filter(|x| x.is_finite()).collect()
}

/// The median of `f` over runs, if any run has it.
pub fn med(runs: &[Run], key: &str, f: impl Fn(&SystemRun) -> Option<f64>) -> Option<f64> {
    let v = values(runs, key, f);
    (!v.is_empty()).then(|| median(&v))
}

/// Per run, `f(GMQ always) / f(key)` (or the inverse when lower is better);
/// the median of those ratios: above 1 means GMQ `always` did better.
pub fn advantage(runs: &[Run], key: &str, lower_is_better: bool, f: impl Fn(&SystemRun) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|r| {
            let (g, p) = (f(of(r, REFERENCE)?)?, f(of(r, key)?)?);
            let x = if lower_is_better { p / g } else { g / p };
            x.is_finite().then_some(x)
        })
        .collect();
    (!v.is_empty()).then(|| median(&v))
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "–".into(), f)
}

fn ratio(x: Option<f64>) -> String {
    opt(x, |r| format!("{}×", sig3(r)))
}

fn spread(runs: &[Run], key: &str, f: impl Fn(&SystemRun) -> Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    let v = values(runs, key, f);
    if v.is_empty() {
        return "–".into();
    }
    let s = Spread::of(&v);
    format!("{} – {}", fmt(s.min), fmt(s.max))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The whole report.
pub fn markdown(args: &Args, machine: &MachineInfo, runs: &[Run]) -> String {
    let mut out = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    let _ = writeln!(out, "```\n{}\n```\n", cmd.join(" "));
    let _ = writeln!(out, "{}\n", machine.describe());
    let versions: Vec<String> = crate::systems::versions().iter().map(|(p, v)| format!("{p} {v}")).collect();
    let _ = writeln!(
        out,
        "Packages: {}. GMQ at {}.\n",
        versions.join(", "),
        gmq_benches::git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "{} run(s); figures are medians, ranges are min – max over runs. Ratios are taken per run against GMQ \
         `always` from the same run, then the median is shown; above 1× means GMQ `always` did better.\n",
        runs.len()
    );
    let payload = args.payload as usize;

    // What the acknowledgements promise.
    let mut t = Table::new([
        ("system", Align::Left),
        ("fsync before the publish ack", Align::Left),
        ("a publish acknowledgement means", Align::Left),
        ("a consumer's ack", Align::Left),
    ]);
    for s in &args.systems {
        t.row([s.label(), yes_no(s.fsyncs_before_ack()).into(), s.promise(), s.ack_kind().into()]);
    }
    let _ = writeln!(out, "### What each acknowledgement promises\n\n{}", t.to_markdown());

    // The machine's limits.
    let lim = |f: &dyn Fn(&Run) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    let mut t = Table::new([
        ("limit", Align::Left),
        ("rate", Align::Right),
        ("MB/s", Align::Right),
        ("p50", Align::Right),
        ("p99", Align::Right),
    ]);
    t.row([
        "fio: 1 KiB write + fdatasync, one at a time".into(),
        opt(lim(&|r| r.limits.fio_sync.as_ref().map(|f| f.syncs_per_s)), |x| format!("{} syncs/s", grouped(x))),
        opt(lim(&|r| r.limits.fio_sync.as_ref().map(|f| f.mb_per_s)), sig3),
        opt(lim(&|r| r.limits.fio_sync.as_ref().map(|f| f.sync_p50_us)), latency_us),
        opt(lim(&|r| r.limits.fio_sync.as_ref().map(|f| f.sync_p99_us)), latency_us),
    ]);
    t.row([
        "fio: 1 MiB write + fdatasync (durable sequential bandwidth)".into(),
        opt(lim(&|r| r.limits.fio_seq.as_ref().map(|f| f.syncs_per_s)), |x| format!("{} syncs/s", grouped(x))),
        opt(lim(&|r| r.limits.fio_seq.as_ref().map(|f| f.mb_per_s)), sig3),
        opt(lim(&|r| r.limits.fio_seq.as_ref().map(|f| f.sync_p50_us)), latency_us),
        opt(lim(&|r| r.limits.fio_seq.as_ref().map(|f| f.sync_p99_us)), latency_us),
    ]);
    t.row([
        format!("loopback echo of the publish frames, {} × {} in flight", args.producers, args.window),
        opt(lim(&|r| r.limits.echo.as_ref().map(|e| e.msgs_per_s)), |x| format!("{} frames/s", grouped(x))),
        opt(lim(&|r| r.limits.echo.as_ref().map(|e| e.mb_per_s)), sig3),
        opt(lim(&|r| r.limits.echo.as_ref().map(|e| e.latency.p50_us)), latency_us),
        opt(lim(&|r| r.limits.echo.as_ref().map(|e| e.latency.p99_us)), latency_us),
    ]);
    t.row([
        "loopback echo of the publish frames, 1 in flight".into(),
        opt(lim(&|r| r.limits.echo_one.as_ref().map(|e| e.msgs_per_s)), |x| format!("{} frames/s", grouped(x))),
        opt(lim(&|r| r.limits.echo_one.as_ref().map(|e| e.mb_per_s)), sig3),
        opt(lim(&|r| r.limits.echo_one.as_ref().map(|e| e.latency.p50_us)), latency_us),
        opt(lim(&|r| r.limits.echo_one.as_ref().map(|e| e.latency.p99_us)), latency_us),
    ]);
    let _ = writeln!(out, "### The machine's limits\n\n{}", t.to_markdown());

    let keys: Vec<(String, &System)> = args.systems.iter().map(|s| (s.key(), s)).collect();

    // (1) durable publish.
    let mut t = Table::new([
        ("system", Align::Left),
        ("fsync", Align::Left),
        ("msgs/s", Align::Right),
        ("MB/s", Align::Right),
        ("p50", Align::Right),
        ("p99", Align::Right),
        ("p99.9", Align::Right),
        ("msgs/s, min – max", Align::Right),
        ("server CPUs", Align::Right),
        ("GMQ always ÷ this", Align::Right),
    ]);
    for (k, s) in &keys {
        let pubc = |r: &SystemRun| r.publish.as_ref().map(|c| c.result.clone());
        t.row([
            s.label(),
            yes_no(s.fsyncs_before_ack()).into(),
            opt(med(runs, k, |r| pubc(r).map(|x| x.msgs_per_s)), grouped),
            opt(med(runs, k, |r| pubc(r).map(|x| x.mb_per_s)), sig3),
            opt(med(runs, k, |r| pubc(r).map(|x| x.latency.p50_us)), latency_us),
            opt(med(runs, k, |r| pubc(r).map(|x| x.latency.p99_us)), latency_us),
            opt(med(runs, k, |r| pubc(r).map(|x| x.latency.p999_us)), latency_us),
            spread(runs, k, |r| pubc(r).map(|x| x.msgs_per_s), grouped),
            opt(med(runs, k, |r| r.publish.as_ref().map(|c| c.server_cpus)), |x| format!("{x:.2}")),
            ratio(advantage(runs, k, false, |r| pubc(r).map(|x| x.msgs_per_s))),
        ]);
    }
    let _ = writeln!(
        out,
        "### (1) Durable publish: {} producers × {} in flight, {payload} B\n\n{}",
        args.producers,
        args.window,
        t.to_markdown()
    );

    // (2) one in flight.
    let fio_p50 = lim(&|r| r.limits.fio_sync.as_ref().map(|f| f.sync_p50_us));
    let mut t = Table::new([
        ("system", Align::Left),
        ("fsync", Align::Left),
        ("p50", Align::Right),
        ("p99", Align::Right),
        ("p99.9", Align::Right),
        ("msgs/s", Align::Right),
        ("p50, min – max", Align::Right),
        ("p50 ÷ fio fdatasync p50", Align::Right),
        ("this p50 ÷ GMQ always p50", Align::Right),
    ]);
    for (k, s) in &keys {
        let c = |r: &SystemRun| r.latency.as_ref().map(|c| c.result.clone());
        let per_run_fio: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some(c(of(r, k)?)?.latency.p50_us / r.limits.fio_sync.as_ref()?.sync_p50_us))
            .collect();
        t.row([
            s.label(),
            yes_no(s.fsyncs_before_ack()).into(),
            opt(med(runs, k, |r| c(r).map(|x| x.latency.p50_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.latency.p99_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.latency.p999_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.msgs_per_s)), grouped),
            spread(runs, k, |r| c(r).map(|x| x.latency.p50_us), latency_us),
            ratio((!per_run_fio.is_empty()).then(|| median(&per_run_fio))),
            ratio(advantage(runs, k, true, |r| c(r).map(|x| x.latency.p50_us))),
        ]);
    }
    let _ = writeln!(
        out,
        "### (2) Publish with one in flight: per-message durable latency, {payload} B\n\n{}\nfio's fdatasync p50 (median of runs): {}.\n",
        t.to_markdown(),
        opt(fio_p50, latency_us)
    );

    // (3) consume.
    let mut t = Table::new([
        ("system", Align::Left),
        ("msgs/s", Align::Right),
        ("MB/s", Align::Right),
        ("drain", Align::Right),
        ("pre-fill", Align::Right),
        ("msgs/s, min – max", Align::Right),
        ("server CPUs", Align::Right),
        ("GMQ always ÷ this", Align::Right),
    ]);
    for (k, s) in &keys {
        let c = |r: &SystemRun| r.consume.as_ref().map(|c| c.result.clone());
        t.row([
            s.label(),
            opt(med(runs, k, |r| c(r).map(|x| x.msgs_per_s)), grouped),
            opt(med(runs, k, |r| c(r).map(|x| x.mb_per_s)), sig3),
            opt(med(runs, k, |r| c(r).map(|x| x.seconds)), |x| format!("{x:.2} s")),
            opt(med(runs, k, |r| c(r).map(|x| x.prefill_seconds)), |x| format!("{x:.1} s")),
            spread(runs, k, |r| c(r).map(|x| x.msgs_per_s), grouped),
            opt(med(runs, k, |r| r.consume.as_ref().map(|c| c.server_cpus)), |x| format!("{x:.2}")),
            ratio(advantage(runs, k, false, |r| c(r).map(|x| x.msgs_per_s))),
        ]);
    }
    let _ = writeln!(
        out,
        "### (3) Consume with manual ack: {} backlog, {} consumers, prefetch {}, up to {} per ack\n\n{}",
        grouped(args.backlog as f64),
        args.consumers,
        args.prefetch,
        args.batch,
        t.to_markdown()
    );

    // (4) end to end.
    let mut t = Table::new([
        ("system", Align::Left),
        ("e2e p50", Align::Right),
        ("e2e p99", Align::Right),
        ("e2e p99.9", Align::Right),
        ("e2e max", Align::Right),
        ("publish ack p50", Align::Right),
        ("publish ack p99", Align::Right),
        ("send delay p99", Align::Right),
        ("e2e p99, min – max", Align::Right),
        ("this p99 ÷ GMQ always p99", Align::Right),
    ]);
    for (k, s) in &keys {
        let c = |r: &SystemRun| r.e2e.as_ref().map(|c| c.result.clone());
        t.row([
            s.label(),
            opt(med(runs, k, |r| c(r).map(|x| x.e2e.p50_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.e2e.p99_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.e2e.p999_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.e2e.max_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.publish.p50_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.publish.p99_us)), latency_us),
            opt(med(runs, k, |r| c(r).map(|x| x.send_delay.p99_us)), latency_us),
            spread(runs, k, |r| c(r).map(|x| x.e2e.p99_us), latency_us),
            ratio(advantage(runs, k, true, |r| c(r).map(|x| x.e2e.p99_us))),
        ]);
    }
    let _ = writeln!(
        out,
        "### (4) End to end at {} msgs/s, {payload} B: scheduled send → delivery\n\n{}",
        grouped(args.e2e.rate),
        t.to_markdown()
    );

    out.push_str(&targets(args, runs));

    // Runs.
    let mut t = Table::new([
        ("run", Align::Right),
        ("load avg before → after", Align::Left),
        ("others' CPUs, mean of cells (max)", Align::Right),
        ("steal", Align::Right),
        ("waited for quiet", Align::Right),
        ("server start", Align::Left),
    ]);
    for (i, r) in runs.iter().enumerate() {
        let starts: Vec<String> = r.systems.iter().map(|s| format!("{} {:.2} s", s.system, s.start_seconds)).collect();
        t.row([
            (i + 1).to_string(),
            format!("{:.2} → {:.2}", r.load.0, r.load.1),
            others_in_cells(r),
            pct(r.cpu.steal_pct),
            format!("{:.0} s", r.quiet_wait),
            starts.join(", "),
        ]);
    }
    let _ = writeln!(out, "### Runs\n\n{}", t.to_markdown());
    out
}

/// The CPUs other processes kept busy during each measurement of a run,
/// leaving out the measured server (unlike the run's own total, where the
/// peers' servers count as "others": they are not our waited-for children).
fn others_in_cells(r: &Run) -> String {
    let v: Vec<f64> = r
        .systems
        .iter()
        .flat_map(|s| {
            [
                s.publish.as_ref().map(|c| c.cpu.others_cpus),
                s.latency.as_ref().map(|c| c.cpu.others_cpus),
                s.consume.as_ref().map(|c| c.cpu.others_cpus),
                s.e2e.as_ref().map(|c| c.cpu.others_cpus),
            ]
        })
        .flatten()
        .collect();
    if v.is_empty() {
        return "–".into();
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!("{mean:.2} ({:.2})", v.iter().copied().fold(0.0, f64::max))
}

/// The four targets of the comparison, each decided from per-run ratios.
fn targets(args: &Args, runs: &[Run]) -> String {
    let peers: Vec<&System> = args.systems.iter().filter(|s| !matches!(s, System::Gmq(_))).collect();
    let mut t = Table::new([
        ("target", Align::Left),
        ("measured (median of per-run ratios)", Align::Left),
        ("met", Align::Left),
    ]);
    let per_run = |f: &dyn Fn(&Run) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = runs.iter().filter_map(f).filter(|x| x.is_finite()).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    let verdict = |x: Option<f64>, ok: &dyn Fn(f64) -> bool| match x {
        Some(x) if ok(x) => "yes",
        Some(_) => "**no**",
        None => "not measured",
    };
    let tput = |s: &SystemRun| s.publish.as_ref().map(|c| c.result.msgs_per_s);
    // Best fsync-before-ack peer, per run.
    let best = |r: &Run, fsync: bool, f: &dyn Fn(&SystemRun) -> Option<f64>| -> Option<(f64, String)> {
        peers
            .iter()
            .filter(|p| p.fsyncs_before_ack() == fsync)
            .filter_map(|p| Some((f(of(r, &p.key())?)?, p.label())))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    let g = |r: &Run, f: &dyn Fn(&SystemRun) -> Option<f64>| of(r, REFERENCE).and_then(f);
    let x = per_run(&|r| Some(g(r, &tput)? / best(r, true, &tput)?.0));
    let who = runs.last().and_then(|r| best(r, true, &tput)).map(|b| b.1).unwrap_or_default();
    t.row([
        "(1) GMQ `always` ≥ 2× the best peer that fsyncs before acking".into(),
        format!("{} (best peer in the last run: {who})", ratio(x)),
        verdict(x, &|v| v >= 2.0).into(),
    ]);
    let x = per_run(&|r| Some(g(r, &tput)? / best(r, false, &tput)?.0));
    t.row([
        "(1) GMQ `always` ≥ every peer that does not fsync before acking".into(),
        ratio(x),
        verdict(x, &|v| v >= 1.0).into(),
    ]);
    let cons = |s: &SystemRun| s.consume.as_ref().map(|c| c.result.msgs_per_s);
    let x = per_run(&|r| {
        let b = peers.iter().filter_map(|p| cons(of(r, &p.key())?)).fold(f64::NAN, f64::max);
        Some(g(r, &cons)? / b)
    });
    t.row([
        "(3) consume + manual ack: GMQ `always` ≥ 2× the best peer".into(),
        ratio(x),
        verdict(x, &|v| v >= 2.0).into(),
    ]);
    let x = per_run(&|r| {
        Some(
            g(r, &|s: &SystemRun| s.latency.as_ref().map(|c| c.result.latency.p50_us))?
                / r.limits.fio_sync.as_ref()?.sync_p50_us,
        )
    });
    t.row([
        "(2) GMQ `always` one-in-flight p50 ≤ 1.5× fio's fdatasync p50".into(),
        ratio(x),
        verdict(x, &|v| v <= 1.5).into(),
    ]);
    let e2e = |s: &SystemRun| s.e2e.as_ref().map(|c| c.result.e2e.p99_us);
    let x = per_run(&|r| {
        let lowest = peers.iter().filter_map(|p| e2e(of(r, &p.key())?)).fold(f64::NAN, f64::min);
        Some(lowest / g(r, &e2e)?)
    });
    t.row([
        "(4) GMQ `always` end-to-end p99 below every peer's (lowest peer p99 ÷ GMQ's)".into(),
        ratio(x),
        verdict(x, &|v| v > 1.0).into(),
    ]);
    format!("### Targets\n\n{}", t.to_markdown())
}
