//! Commands on a data directory, straight on the engine's files: inspect,
//! verify, repair, compact, export, import.
//!
//! Read-only commands (inspect, verify, `repair --dry-run`, export) may run
//! while a server holds the directory, with a warning; the others refuse.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use gmq_engine::io::{RealFs, Vfs};
use gmq_engine::recovery::{self, SegmentItem};
use gmq_engine::{format, state, Engine, EngineConfig, QueueSettings, QueueSpec};
use serde_json::{json, Map, Value};

use crate::args::{self, Cli, Command};
use crate::out::{human_bytes, local, now_ms, progress, table, utc, Fail, Out, Res};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Runs an offline command.
pub fn run(cli: &Cli, cmd: &Command) -> Res {
    let mut out = Out::new();
    let r = match cmd {
        Command::Inspect(a) => inspect(cli, a, &mut out),
        Command::Verify(a) => verify(cli, a, &mut out),
        Command::Repair(a) => repair(cli, a, &mut out),
        Command::Compact(a) => compact(cli, a, &mut out),
        Command::Export(a) => export(a, &mut out),
        Command::Import(a) => import(cli, a, &mut out),
        _ => Err(Fail::Usage("not an offline command".into())),
    };
    let flushed = out.flush();
    r.and(flushed)
}

/// The data directory must exist: a typo must not look like an empty one.
fn data_dir(dir: &Path) -> Res {
    if !dir.is_dir() {
        return Err(Fail::Other(format!("{} is not a directory", dir.display())));
    }
    Ok(())
}

/// For read-only commands: warns when a server holds the directory.
fn warn_if_live(dir: &Path) {
    let lock = dir.join(format::LOCK_FILE);
    if lock.exists() && RealFs.lock(&lock).is_err() {
        eprintln!(
            "gmq: warning: a running server holds {}; reading files it is writing (the newest records may look torn)",
            dir.display()
        );
    }
}

/// The queues to work on: all, or the one named (which must exist).
fn queues(dir: &Path, only: Option<&str>) -> Res<Vec<(String, PathBuf)>> {
    let all = recovery::queue_dirs(&RealFs, dir).map_err(local(format!("listing {}", dir.display())))?;
    match only {
        None => Ok(all),
        Some(q) => match all.into_iter().find(|(n, _)| n == q) {
            Some(x) => Ok(vec![x]),
            None => Err(Fail::Other(format!("no queue {q:?} in {}", dir.display()))),
        },
    }
}

/// A queue's segment files in offset order: `(base, path, length)`.
fn segments(qdir: &Path) -> Res<Vec<(u64, PathBuf, u64)>> {
    let mut segs = Vec::new();
    for n in RealFs.read_dir(qdir).map_err(local(format!("listing {}", qdir.display())))? {
        if let Some(base) = format::parse_file_name(&n, format::SEGMENT_SUFFIX) {
            let p = qdir.join(&n);
            let len = std::fs::metadata(&p).map_err(local(format!("reading {}", p.display())))?.len();
            segs.push((base, p, len));
        }
    }
    segs.sort_unstable_by_key(|s| s.0);
    Ok(segs)
}

/// Bytes of a queue's segments (0 if they cannot be listed).
fn queue_bytes(qdir: &Path) -> u64 {
    segments(qdir).map_or(0, |s| s.iter().map(|x| x.2).sum())
}

fn total_bytes(qs: &[(String, PathBuf)]) -> u64 {
    qs.iter().map(|(_, d)| queue_bytes(d)).sum()
}

/// The queue's settings file, as text and parsed.
fn settings(qdir: &Path) -> (Option<String>, Option<(QueueSettings, u64)>) {
    let text = std::fs::read_to_string(qdir.join(gmq_engine::SETTINGS_FILE)).ok();
    let parsed = text.as_deref().and_then(|t| QueueSettings::decode(t).ok());
    (text, parsed)
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// One record of a segment as a JSON line.
fn record_json(queue: &str, segment: &str, position: u64, r: &gmq_engine::Record) -> Value {
    let mut v = Map::new();
    v.insert("queue".into(), json!(queue));
    v.insert("segment".into(), json!(segment));
    v.insert("position".into(), json!(position));
    v.insert("offset".into(), json!(r.offset));
    v.insert("timestamp_ms".into(), json!(r.timestamp_ms));
    message_fields(&mut v, &r.message);
    v.insert("crc".into(), json!("ok"));
    v.insert("payload".into(), json!(B64.encode(&r.message.payload)));
    Value::Object(v)
}

fn message_fields(v: &mut Map<String, Value>, m: &gmq_engine::Message) {
    if let Some(e) = &m.event {
        v.insert("event".into(), json!(e));
    }
    if let Some(k) = &m.key {
        v.insert("key".into(), json!(k));
    }
    if !m.headers.is_empty() {
        let h: Map<String, Value> = m.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        v.insert("headers".into(), Value::Object(h));
    }
    if let Some(t) = m.ttl_ms {
        v.insert("ttl_ms".into(), json!(t));
    }
    if let Some(id) = &m.msg_id {
        v.insert("msg_id".into(), json!(id));
    }
}

/// What a segment holds.
#[derive(Default)]
struct SegmentSummary {
    records: u64,
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    damage: Vec<(u64, u64, String)>,
}

fn summarize(path: &Path, base: u64) -> Res<SegmentSummary> {
    let mut s = SegmentSummary::default();
    recovery::walk_segment(&RealFs, path, base, |item| match item {
        SegmentItem::Record { record, .. } => {
            s.records += 1;
            let at = (record.offset, record.timestamp_ms);
            s.first.get_or_insert(at);
            s.last = Some(at);
        }
        SegmentItem::Damage { start, end, reason } => s.damage.push((start, end, reason)),
    })
    .map_err(local(format!("reading {}", path.display())))?;
    Ok(s)
}

/// A group as the state log leaves it.
struct GroupPos {
    name: String,
    /// Every offset below is done.
    position: u64,
    /// Done ranges above the position.
    acked: Vec<(u64, u64)>,
}

/// What the group state log says.
#[derive(Default)]
struct GroupInfo {
    groups: Vec<GroupPos>,
    /// The queue's low mark: offsets below it are gone for every group.
    low: u64,
    /// Why the log could not be read fully.
    note: Option<String>,
}

/// Group positions from the state log.
fn groups(qdir: &Path, incarnation: Option<u64>) -> GroupInfo {
    let Ok(b) = std::fs::read(qdir.join(state::STATE_FILE)) else {
        return GroupInfo::default();
    };
    let problem = |n: String| GroupInfo { note: Some(n), ..GroupInfo::default() };
    match state::check_header(&b, incarnation.unwrap_or(0)) {
        state::HeaderCheck::Bad(r) => return problem(format!("group state unreadable: {r}")),
        state::HeaderCheck::Stale(_) if incarnation.is_some() => {
            return problem("group state belongs to an earlier queue of this name".into())
        }
        _ => {}
    }
    let r = state::replay(&b);
    GroupInfo {
        groups: r
            .groups
            .iter()
            .map(|(n, g)| GroupPos {
                name: n.clone(),
                position: g.floor.max(r.low),
                acked: g.acked.ranges().map(|x| (x.start, x.end)).collect(),
            })
            .collect(),
        low: r.low,
        note: r.damage.as_ref().map(|(p, why, _)| format!("group state damaged at byte {p}: {why}")),
    }
}

fn inspect(cli: &Cli, a: &args::Inspect, out: &mut Out) -> Res {
    let dir = &a.at.data_dir;
    data_dir(dir)?;
    warn_if_live(dir);
    let qs = queues(dir, a.at.queue.as_deref())?;
    let bar = progress(total_bytes(&qs), "inspecting");
    if a.records {
        for (name, qdir) in &qs {
            for (base, path, len) in segments(qdir)? {
                let seg = file_name(&path);
                let mut res = Ok(());
                recovery::walk_segment(&RealFs, &path, base, |item| {
                    if res.is_err() {
                        return;
                    }
                    res = out.json(&match item {
                        SegmentItem::Record { position, record, .. } => record_json(name, &seg, position, &record),
                        SegmentItem::Damage { start, end, reason } => json!({
                            "queue": name, "segment": seg, "position": start, "end": end, "crc": "bad", "detail": reason
                        }),
                    });
                })
                .map_err(local(format!("reading {}", path.display())))?;
                res?;
                bar.inc(len);
            }
        }
        bar.finish_and_clear();
        return Ok(());
    }
    let mut report = Vec::new();
    for (name, qdir) in &qs {
        let (text, parsed) = settings(qdir);
        let mut segs = Vec::new();
        for (base, path, len) in segments(qdir)? {
            let s = summarize(&path, base)?;
            let index = qdir.join(format::index_file_name(base)).exists();
            segs.push((file_name(&path), base, len, s, index));
            bar.inc(len);
        }
        let gs = groups(qdir, parsed.as_ref().map(|p| p.1));
        let ckpt = std::fs::read(qdir.join(format::CHECKPOINT_FILE)).ok().map(|b| format::decode_checkpoint(&b));
        report.push((name, qdir, text, parsed, segs, gs, ckpt));
    }
    bar.finish_and_clear();
    if cli.json {
        let list: Vec<Value> = report
            .iter()
            .map(|(name, _, _, parsed, segs, gs, ckpt)| {
                json!({
                    "name": name,
                    "settings": parsed.as_ref().map(|(s, _)| s.encode(0).lines().skip(3).map(str::to_owned).collect::<Vec<_>>()),
                    "segments": segs.iter().map(|(file, base, len, s, index)| json!({
                        "file": file, "base": base, "bytes": len, "records": s.records,
                        "first_offset": s.first.map(|f| f.0), "last_offset": s.last.map(|l| l.0),
                        "first_timestamp_ms": s.first.map(|f| f.1), "last_timestamp_ms": s.last.map(|l| l.1),
                        "index": index,
                        "damage": s.damage.iter().map(|(a, b, r)| json!({"start": a, "end": b, "reason": r})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "low": gs.low,
                    "groups": gs.groups.iter().map(|g| json!({"name": g.name, "position": g.position, "acked_above": g.acked})).collect::<Vec<_>>(),
                    "group_state_problem": gs.note,
                    "checkpoint": match ckpt {
                        None => Value::Null,
                        Some(None) => json!("unreadable"),
                        Some(Some(c)) => json!({"segment": c.segment, "valid_len": c.valid_len, "next_offset": c.next_offset, "clean": c.clean}),
                    },
                })
            })
            .collect();
        return out.json(&json!({ "data_dir": dir, "queues": list }));
    }
    if report.is_empty() {
        return out.line(format!("{}: no queues", dir.display()));
    }
    for (name, qdir, text, parsed, segs, gs, ckpt) in &report {
        let records: u64 = segs.iter().map(|s| s.3.records).sum();
        let bytes: u64 = segs.iter().map(|s| s.2).sum();
        let first = segs.iter().find_map(|s| s.3.first.map(|f| f.0));
        let last = segs.iter().rev().find_map(|s| s.3.last.map(|l| l.0));
        let range = match (first, last) {
            (Some(a), Some(b)) => format!(", offsets {a}..={b}"),
            _ => String::new(),
        };
        out.line(format!("queue {name}: {} segments, {records} records{range}, {}", segs.len(), human_bytes(bytes)))?;
        match (text, parsed) {
            (_, Some((s, _))) => {
                let kv: Vec<String> = s.encode(0).lines().skip(3).map(|l| l.replace(" = ", "=")).collect();
                out.line(format!("  settings: {}", kv.join(", ")))?;
            }
            (Some(_), None) => out.line(format!("  settings: UNREADABLE ({})", qdir.join("queue").display()))?,
            (None, None) => out.line("  settings: MISSING")?,
        }
        let rows: Vec<Vec<String>> = segs
            .iter()
            .map(|(file, _, len, s, index)| {
                vec![
                    format!("  {file}"),
                    len.to_string(),
                    s.records.to_string(),
                    match (s.first, s.last) {
                        (Some(a), Some(b)) => format!("{}..={}", a.0, b.0),
                        _ => "-".into(),
                    },
                    s.first.map_or("-".into(), |f| utc(f.1)),
                    s.last.map_or("-".into(), |l| utc(l.1)),
                    if *index { "yes" } else { "no" }.into(),
                    if s.damage.is_empty() {
                        "-".into()
                    } else {
                        s.damage.iter().map(|(a, b, r)| format!("bytes {a}..{b}: {r}")).collect::<Vec<_>>().join("; ")
                    },
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.line(table(&["  SEGMENT", "BYTES", "RECORDS", "OFFSETS", "FIRST", "LAST", "INDEX", "DAMAGE"], &rows))?;
        }
        let rows: Vec<Vec<String>> = gs
            .groups
            .iter()
            .map(|g| {
                let above: u64 = g.acked.iter().map(|(a, b)| b - a).sum();
                vec![format!("  {}", g.name), g.position.to_string(), above.to_string()]
            })
            .collect();
        if rows.is_empty() {
            out.line("  groups: none")?;
        } else {
            out.line(table(&["  GROUP", "POSITION", "ACKED ABOVE POSITION"], &rows))?;
        }
        if let Some(n) = &gs.note {
            out.line(format!("  PROBLEM: {n}"))?;
        }
        out.line(match ckpt {
            None => "  checkpoint: none".to_owned(),
            Some(None) => "  checkpoint: UNREADABLE".to_owned(),
            Some(Some(c)) => format!(
                "  checkpoint: segment {}, {} bytes synced, next offset {}{}",
                c.segment,
                c.valid_len,
                c.next_offset,
                if c.clean { ", clean shutdown" } else { "" }
            ),
        })?;
    }
    Ok(())
}

fn finding_json(f: &recovery::Finding) -> Value {
    json!({
        "queue": f.queue,
        "file": f.file,
        "position": f.position,
        "kind": format!("{:?}", f.kind),
        "detail": f.detail,
    })
}

fn verify_report(dir: &Path, qs: &[(String, PathBuf)]) -> Res<recovery::VerifyReport> {
    // Listed once: for the bar's total and its steps.
    let sizes: Vec<u64> = qs.iter().map(|(_, d)| queue_bytes(d)).collect();
    let bar = progress(sizes.iter().sum(), "verifying");
    let mut all = recovery::VerifyReport::default();
    for ((name, qdir), size) in qs.iter().zip(sizes) {
        let r = recovery::verify(&RealFs, dir, Some(name)).map_err(local(format!("reading {}", qdir.display())))?;
        all.queues += r.queues;
        all.segments += r.segments;
        all.records += r.records;
        all.findings.extend(r.findings);
        bar.inc(size);
    }
    bar.finish_and_clear();
    Ok(all)
}

fn verify(cli: &Cli, a: &args::Offline, out: &mut Out) -> Res {
    data_dir(&a.data_dir)?;
    warn_if_live(&a.data_dir);
    let qs = queues(&a.data_dir, a.queue.as_deref())?;
    let r = verify_report(&a.data_dir, &qs)?;
    if cli.json {
        out.json(&json!({
            "clean": r.findings.is_empty(),
            "queues": r.queues,
            "segments": r.segments,
            "records": r.records,
            "findings": r.findings.iter().map(finding_json).collect::<Vec<_>>(),
        }))?;
    } else {
        for f in &r.findings {
            out.line(f)?;
        }
        let what = format!("{} queues, {} segments, {} records", r.queues, r.segments, r.records);
        if r.findings.is_empty() {
            out.line(format!("clean: {what}"))?;
        } else {
            out.line(format!("DAMAGED: {} problems in {what}", r.findings.len()))?;
        }
    }
    if r.findings.is_empty() {
        Ok(())
    } else {
        out.flush()?;
        Err(Fail::Damage(format!(
            "{} problems found; `gmq repair --dry-run` shows what repair would do",
            r.findings.len()
        )))
    }
}

fn repair(cli: &Cli, a: &args::Repair, out: &mut Out) -> Res {
    let dir = &a.at.data_dir;
    data_dir(dir)?;
    queues(dir, a.at.queue.as_deref())?;
    // A dry run writes nothing, so it may look at a live directory.
    let _lock = if a.dry_run {
        warn_if_live(dir);
        None
    } else {
        Some(recovery::lock_data_dir(&RealFs, dir)?)
    };
    let r = recovery::repair(&RealFs, dir, a.at.queue.as_deref(), a.dry_run)
        .map_err(local(format!("repairing {}", dir.display())))?;
    let after = if a.dry_run { None } else { Some(verify_report(dir, &queues(dir, a.at.queue.as_deref())?)?) };
    // A dry run predicts what repair cannot fix (a settings file).
    let left = match &after {
        Some(v) => v.findings.len(),
        None => r.actions.iter().filter(|a| a.starts_with("cannot repair")).count(),
    };
    if cli.json {
        out.json(&json!({
            "dry_run": a.dry_run,
            "actions": r.actions,
            "records_kept": r.records_kept,
            "bytes_dropped": r.bytes_dropped,
            "remaining": after.as_ref().map(|v| v.findings.iter().map(finding_json).collect::<Vec<_>>()),
        }))?;
    } else {
        let verb = if a.dry_run { "would: " } else { "" };
        for act in &r.actions {
            out.line(format!("{verb}{act}"))?;
        }
        if r.actions.is_empty() {
            out.line("nothing to repair")?;
        } else {
            out.line(format!(
                "{}: {} records kept in rewritten segments, {} bytes dropped as unreadable",
                if a.dry_run { "dry run, nothing written" } else { "repaired" },
                r.records_kept,
                r.bytes_dropped
            ))?;
        }
        for f in after.iter().flat_map(|v| &v.findings) {
            out.line(format!("still damaged: {f}"))?;
        }
    }
    if left > 0 {
        out.flush()?;
        let when = if a.dry_run { "would remain" } else { "remain" };
        return Err(Fail::Damage(format!("{left} problems {when} after repair")));
    }
    Ok(())
}

/// Bytes of a queue directory's files.
fn dir_bytes(qdir: &Path) -> u64 {
    std::fs::read_dir(qdir).map(|it| it.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn open_engine(dir: &Path) -> Res<Engine> {
    let engine = Engine::open(EngineConfig::new(dir))?;
    for (q, e) in engine.quarantined() {
        eprintln!("gmq: warning: queue {q} is quarantined ({e}); run `gmq verify` and `gmq repair`");
    }
    Ok(engine)
}

fn compact(cli: &Cli, a: &args::Compact, out: &mut Out) -> Res {
    let dir = &a.at.data_dir;
    data_dir(dir)?;
    if !(a.threshold > 0.0 && a.threshold <= 1.0) {
        return Err(Fail::Usage(format!("--threshold must be in (0, 1], not {}", a.threshold)));
    }
    let qs = queues(dir, a.at.queue.as_deref())?;
    let engine = open_engine(dir)?;
    let bar = progress(total_bytes(&qs), "compacting");
    let mut rows = Vec::new();
    let (mut failed, mut damaged) = (0, 0);
    for (name, qdir) in &qs {
        let before = dir_bytes(qdir);
        // Segments every group is done with go entirely first; what is left
        // is rewritten where it pays.
        let done = (|| {
            let deleted = if a.dry_run { 0 } else { engine.existing(name)?.maintain()? };
            Ok::<_, gmq_engine::Error>((engine.compact(name, a.threshold, a.dry_run)?, deleted))
        })();
        bar.inc(before);
        match done {
            Ok((rep, deleted)) => {
                let reclaimed =
                    if a.dry_run { rep.bytes_before - rep.bytes_after } else { before.saturating_sub(dir_bytes(qdir)) };
                rows.push((name.clone(), rep, deleted, reclaimed));
            }
            Err(e) => {
                if matches!(e, gmq_engine::Error::Corrupt { .. }) {
                    damaged += 1;
                } else {
                    failed += 1;
                }
                eprintln!("gmq: {name}: {e}");
            }
        }
    }
    bar.finish_and_clear();
    engine.close()?;
    if cli.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(n, r, d, b)| {
                json!({"queue": n, "segments_checked": r.segments_checked, "segments_rewritten": r.segments_rewritten,
                       "segments_deleted": d, "records_dropped": r.records_dropped, "bytes_reclaimed": b})
            })
            .collect();
        out.json(&json!({ "dry_run": a.dry_run, "queues": list }))?;
    } else {
        let t: Vec<Vec<String>> = rows
            .iter()
            .map(|(n, r, d, b)| {
                vec![
                    n.clone(),
                    r.segments_checked.to_string(),
                    r.segments_rewritten.to_string(),
                    d.to_string(),
                    r.records_dropped.to_string(),
                    human_bytes(*b),
                ]
            })
            .collect();
        let head = if a.dry_run { "WOULD RECLAIM" } else { "RECLAIMED" };
        out.line(table(&["QUEUE", "SEALED", "REWRITTEN", "DELETED", "RECORDS DROPPED", head], &t))?;
        let total: u64 = rows.iter().map(|r| r.3).sum();
        let verb = if a.dry_run { "would reclaim" } else { "reclaimed" };
        out.line(format!("{verb} {} in all", human_bytes(total)))?;
    }
    if damaged > 0 {
        return Err(Fail::Damage(format!("{damaged} queues are damaged; run `gmq verify`")));
    }
    if failed > 0 {
        return Err(Fail::Other(format!("{failed} queues could not be compacted")));
    }
    Ok(())
}

const EXPORT_VERSION: u64 = 1;

fn export(a: &args::Export, stdout: &mut Out) -> Res {
    let dir = &a.data_dir;
    data_dir(dir)?;
    warn_if_live(dir);
    let (_, qdir) = queues(dir, Some(&a.queue))?.remove(0);
    let (text, parsed) = settings(&qdir);
    let low = groups(&qdir, parsed.as_ref().map(|p| p.1)).low;
    // Bytes a checkpoint says were synced are never an unfinished write.
    let ckpt = std::fs::read(qdir.join(format::CHECKPOINT_FILE)).ok().and_then(|b| format::decode_checkpoint(&b));
    let mut file = match &a.output {
        Some(p) => {
            Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(local(format!("creating {}", p.display())))?))
        }
        None => None,
    };
    let mut emit = |v: &Value| -> Res {
        match &mut file {
            Some(f) => writeln!(f, "{v}").map_err(local("writing the export")),
            None => stdout.json(v),
        }
    };
    emit(&json!({"gmq_export": EXPORT_VERSION, "queue": a.queue, "settings": text, "exported_at_ms": now_ms()}))?;
    let segs = segments(&qdir)?;
    let bar = progress(segs.iter().map(|s| s.2).sum(), "exporting");
    let (mut records, mut damage) = (0u64, 0u64);
    let mut res: Res = Ok(());
    let last = segs.last().map(|s| s.0);
    for (base, path, len) in segs {
        // Records of a batch whose end is not written were never acknowledged.
        let mut batch: Vec<gmq_engine::Record> = Vec::new();
        recovery::walk_segment(&RealFs, &path, base, |item| {
            if res.is_err() {
                return;
            }
            match item {
                SegmentItem::Record { record, batch_continues, .. } => {
                    batch.push(record);
                    if !batch_continues {
                        for r in batch.drain(..).filter(|r| r.offset >= low) {
                            let mut v = Map::new();
                            v.insert("offset".into(), json!(r.offset));
                            v.insert("timestamp_ms".into(), json!(r.timestamp_ms));
                            message_fields(&mut v, &r.message);
                            v.insert("payload".into(), json!(B64.encode(&r.message.payload)));
                            records += 1;
                            if res.is_ok() {
                                res = emit(&Value::Object(v));
                            }
                        }
                    }
                }
                // The end of the active segment may be a write in progress
                // (or one a crash cut short): never acknowledged either way.
                SegmentItem::Damage { start, end, .. }
                    if Some(base) == last
                        && end == len
                        && ckpt.is_none_or(|c| c.segment != base || start >= c.valid_len) =>
                {
                    eprintln!(
                        "gmq: {}: the last {} bytes are an unfinished write, not exported",
                        path.display(),
                        end - start
                    )
                }
                SegmentItem::Damage { start, end, reason } => {
                    damage += 1;
                    eprintln!("gmq: {}: bytes {start}..{end} unreadable, not exported: {reason}", path.display());
                }
            }
        })
        .map_err(local(format!("reading {}", path.display())))?;
        std::mem::replace(&mut res, Ok(()))?;
        bar.inc(len);
    }
    bar.finish_and_clear();
    if let Some(f) = &mut file {
        f.flush().map_err(local("writing the export"))?;
        f.get_ref().sync_all().map_err(local("syncing the export"))?;
    }
    eprintln!("gmq: exported {records} records of {}", a.queue);
    if damage > 0 {
        return Err(Fail::Damage(format!("{damage} damaged ranges could not be exported; run `gmq verify`")));
    }
    Ok(())
}

/// One exported record, checked.
fn import_record(v: &Value, now: u64) -> Result<Option<gmq_engine::Message>, String> {
    let o = v.as_object().ok_or("not a JSON object")?;
    let text = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{k} must be a string")),
        }
    };
    let num = |k: &str| -> Result<Option<u64>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(format!("{k} must be a non-negative integer")),
        }
    };
    let payload = o.get("payload").and_then(Value::as_str).ok_or("payload (base64) is missing")?;
    let payload = B64.decode(payload).map_err(|e| format!("payload is not base64: {e}"))?;
    let headers = match o.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())).ok_or(format!("header {k} must be a string")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("headers must be an object".into()),
    };
    // A lifetime runs from when the record was first stored.
    let ttl_ms = match (num("ttl_ms")?, num("timestamp_ms")?) {
        (Some(ttl), Some(ts)) => match ts.saturating_add(ttl).checked_sub(now) {
            Some(left) if left > 0 => Some(left),
            _ => return Ok(None),
        },
        (ttl, _) => ttl,
    };
    Ok(Some(gmq_engine::Message {
        payload: Bytes::from(payload),
        event: text("event")?,
        key: text("key")?,
        headers,
        ttl_ms,
        msg_id: text("msg_id")?,
    }))
}

fn import(cli: &Cli, a: &args::Import, out: &mut Out) -> Res {
    let dir = &a.data_dir;
    data_dir(dir)?;
    if !gmq_engine::valid_name(&a.queue) {
        return Err(Fail::Usage(format!("invalid queue name {:?}", a.queue)));
    }
    let input: Box<dyn BufRead> = match &a.input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(local(format!("opening {}", p.display())))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let engine = open_engine(dir)?;
    let now = now_ms();
    let (mut imported, mut expired, mut first, mut last) = (0u64, 0u64, None, None);
    let mut batch = Vec::new();
    let mut created = false;
    let flush = |batch: &mut Vec<gmq_engine::Message>, first: &mut Option<u64>, last: &mut Option<u64>| -> Res<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let p = engine.publish(&a.queue, batch)?.wait()?;
        first.get_or_insert(p.offsets[0]);
        *last = p.offsets.last().copied();
        let n = p.duplicate.iter().filter(|d| !**d).count() as u64;
        batch.clear();
        Ok(n)
    };
    let mut result = Ok(());
    for (i, line) in input.lines().enumerate() {
        let lineno = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                result = Err(Fail::Other(format!("reading line {lineno}: {e}")));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                result = Err(Fail::Other(format!("line {lineno}: not JSON: {e}")));
                break;
            }
        };
        if let Some(version) = v.get("gmq_export") {
            if version.as_u64() != Some(EXPORT_VERSION) {
                result = Err(Fail::Other(format!("line {lineno}: export format {version} is not {EXPORT_VERSION}")));
                break;
            }
            if engine.get(&a.queue)?.is_none() {
                let spec = match v.get("settings").and_then(Value::as_str).map(QueueSettings::decode) {
                    Some(Ok((s, _))) => QueueSpec::exactly(&s),
                    Some(Err(e)) => {
                        eprintln!("gmq: the export's settings do not parse ({e}); using the defaults");
                        QueueSpec::default()
                    }
                    None => QueueSpec::default(),
                };
                engine.create_queue(&a.queue, &spec)?;
                created = true;
            }
            continue;
        }
        match import_record(&v, now) {
            Ok(Some(m)) => batch.push(m),
            Ok(None) => expired += 1,
            Err(e) => {
                result = Err(Fail::Other(format!("line {lineno}: {e}")));
                break;
            }
        }
        if batch.len() >= 1000 {
            match flush(&mut batch, &mut first, &mut last) {
                Ok(n) => imported += n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    // What was read before a bad line is stored; the report says so.
    let stored = flush(&mut batch, &mut first, &mut last);
    if let Ok(n) = &stored {
        imported += n;
    }
    engine.close()?;
    let result = result.and(stored.map(|_| ()));
    let range = match (first, last) {
        (Some(a), Some(b)) => format!(" at offsets {a}..={b}"),
        _ => String::new(),
    };
    let what = format!(
        "imported {imported} records into {}{range}{}, skipped {expired} expired",
        a.queue,
        if created { " (created it with the export's settings)" } else { "" }
    );
    if result.is_err() {
        eprintln!("gmq: {what} before the failure");
        return result;
    }
    if cli.json {
        return out.json(&json!({
            "imported": imported, "expired": expired, "created": created, "first_offset": first, "last_offset": last
        }));
    }
    out.line(what)
}
