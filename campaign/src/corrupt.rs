//! Corruption of a stopped data directory, seeded: a bit flip in a random
//! 4 KiB chunk of a segment, index or group-state file; a truncation to a
//! random length; an older copy of a chunk written back.
//!
//! What must hold: the server starts (no panic, no hang) and serves every
//! healthy queue exactly; a damaged queue is either served with intact
//! records only or refused as quarantined; `gmq verify` names the damaged
//! file; after `gmq repair`, verify is clean and the server serves every
//! record whose bytes the damage did not touch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};
use gmq_client::{Client, ConsumeOptions, Message};
use serde_json::{json, Value};

use crate::ledger::{check_payload, payload};
use crate::process::{binary, Server};
use crate::{connect, runtime, Rng};

/// Queues of the fixture.
pub const QUEUES: [&str; 4] = ["k.a", "k.b", "k.c", "k.d"];

/// What one seed did and saw.
#[derive(Debug, Clone, Default)]
pub struct CorruptOutcome {
    /// The damage, described.
    pub damage: String,
    /// Whether verify named the damaged file.
    pub verify_named_it: bool,
    /// Whether the fault changed any byte.
    pub changed: bool,
    /// The fault wrote back an older, valid group-state log: no checksum can
    /// tell it from the current one (its effect is redelivery).
    pub valid_rollback: bool,
    /// Queues quarantined at the first start.
    pub quarantined: Vec<String>,
    /// Records the damage did not touch.
    pub intact: u64,
    /// Intact records missing after repair (must be 0).
    pub lost: u64,
    /// Deliveries that are not an original record (must be 0).
    pub corrupted: u64,
}

impl std::fmt::Display for CorruptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; verify named it: {}; quarantined {:?}; intact {}, lost {}, corrupted {}",
            self.damage, self.verify_named_it, self.quarantined, self.intact, self.lost, self.corrupted
        )
    }
}

/// Every file of a directory, by relative path, with its bytes.
pub type Files = BTreeMap<PathBuf, Vec<u8>>;

/// What a drain saw: payload ids, or why a payload did not check out.
type Drained = Vec<Result<String, String>>;

/// Every file under `root`, with its bytes.
fn snapshot(root: &Path) -> anyhow::Result<Files> {
    let mut all = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                all.insert(e.path().strip_prefix(root)?.to_path_buf(), std::fs::read(e.path())?);
            }
        }
    }
    Ok(all)
}

fn restore(files: &Files, to: &Path) -> anyhow::Result<()> {
    for (p, b) in files {
        let at = to.join(p);
        std::fs::create_dir_all(at.parent().context("parent")?)?;
        std::fs::write(at, b)?;
    }
    Ok(())
}

/// Builds the fixture: the state after half the publishes (`older`) and at
/// the end (`newer`), both cleanly stopped.
fn fixture(dir: &Path, per_queue: u64) -> anyhow::Result<(Files, Files)> {
    let mut older = BTreeMap::new();
    for half in 0..2 {
        let server = Server::start(dir, &[], &[])?;
        runtime()?.block_on(async {
            let c = connect(&server.addr).await?;
            for q in QUEUES {
                // Stream retention: acks are kept in the group state, but no
                // segment is deleted, so a new group always starts at 0.
                c.create(q, json!({"segment_bytes": 8192, "retention": {"max_age_ms": 3_600_000}})).await?;
                for i in 0..per_queue / 2 {
                    let n = half * per_queue / 2 + i;
                    let id = format!("{q}/{n}");
                    c.publish(q, Message::new(payload(&id, 100 + (n as usize * 37) % 400, n))).await?;
                }
                // Some acked, so group state has something to lose.
                let got = c.consume(q, &ConsumeOptions::manual(per_queue / 4).group("g")).await?;
                let offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
                c.ack(q, "g", &offsets).await?;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        ensure!(server.term()? == Some(0), "clean stop");
        if half == 0 {
            older = snapshot(dir)?;
        }
    }
    Ok((older, snapshot(dir)?))
}

/// The records of a queue as `inspect --records` reads them from `dir`:
/// `(segment file, position, end)` → payload id.
fn records(dir: &Path, queue: &str) -> anyhow::Result<BTreeMap<(String, u64, u64), String>> {
    let out = Command::new(binary("gmq")?).args(["inspect", "--records", "-d"]).arg(dir).arg(queue).output()?;
    ensure!(out.status.success(), "inspect: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let mut m = BTreeMap::new();
    for (i, v) in lines.iter().enumerate() {
        let seg = v["segment"].as_str().context("segment")?.to_owned();
        let pos = v["position"].as_u64().context("position")?;
        let end = match lines.get(i + 1) {
            Some(n) if n["segment"] == v["segment"] => n["position"].as_u64().context("position")?,
            _ => u64::MAX,
        };
        let payload = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v["payload"].as_str().context("payload")?,
        )?;
        m.insert((seg, pos, end), check_payload(&payload).map_err(anyhow::Error::msg)?);
    }
    Ok(m)
}

/// Drains `queue` from the oldest message in a fresh group: the payload ids,
/// or the error that refused it.
async fn drain(c: &Client, queue: &str, group: &str) -> Result<Drained, gmq_client::Error> {
    let mut all = Vec::new();
    loop {
        let got = c.consume(queue, &ConsumeOptions::auto(1000).group(group)).await?;
        if got.is_empty() {
            return Ok(all);
        }
        all.extend(got.iter().map(|d| check_payload(&d.payload)));
    }
}

/// What a fresh group gets from each queue of an undamaged directory.
pub type Baseline = BTreeMap<String, Vec<String>>;

fn baseline(work: &Path, newer: &Files) -> anyhow::Result<Baseline> {
    let dir = work.join("baseline");
    restore(newer, &dir)?;
    let server = Server::start(&dir, &[], &[])?;
    let b = runtime()?.block_on(async {
        let c = connect(&server.addr).await?;
        let mut out = BTreeMap::new();
        for q in QUEUES {
            let ids =
                drain(&c, q, "x").await?.into_iter().collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
            out.insert(q.to_owned(), ids);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    ensure!(server.term()? == Some(0), "clean stop");
    Ok(b)
}

/// One seed: damage a copy of `newer`, then start, verify, repair, check.
pub fn corrupt_once(
    work: &Path,
    seed: u64,
    older: &Files,
    newer: &Files,
    base: &Baseline,
) -> anyhow::Result<CorruptOutcome> {
    let mut rng = Rng::new(seed);
    let dir = work.join(format!("seed{seed}"));
    restore(newer, &dir)?;
    let before: BTreeMap<&str, BTreeMap<(String, u64, u64), String>> =
        QUEUES.iter().map(|q| Ok((*q, records(&dir, q)?))).collect::<anyhow::Result<_>>()?;
    // The victim: a segment, index or group state file of one queue.
    let queue = QUEUES[rng.below(QUEUES.len() as u64) as usize];
    let candidates: Vec<&PathBuf> = newer
        .keys()
        .filter(|p| p.starts_with(Path::new("queues").join(queue)))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.ends_with(".seg") || n.ends_with(".idx") || n == "groups"
        })
        .collect();
    let victim = candidates[rng.below(candidates.len() as u64) as usize].clone();
    let path = dir.join(&victim);
    let mut bytes = newer[&victim].clone();
    let len = bytes.len() as u64;
    let chunk = rng.below(len.div_ceil(4096).max(1)) * 4096;
    let (what, damaged) = match rng.below(3) {
        0 => {
            let at = (chunk + rng.below(4096)).min(len.saturating_sub(1));
            bytes[at as usize] ^= 1 << rng.below(8);
            (format!("bit flip at byte {at}"), at..at + 1)
        }
        1 => {
            let to = rng.below(len);
            bytes.truncate(to as usize);
            (format!("truncated to {to} of {len} bytes"), to..u64::MAX)
        }
        _ => {
            let old = older.get(&victim).cloned().unwrap_or_default();
            let end = (chunk + 4096).min(len);
            let mut changed = None::<(u64, u64)>;
            for i in chunk..end {
                let b = old.get(i as usize).copied().unwrap_or(0);
                if bytes[i as usize] != b {
                    bytes[i as usize] = b;
                    changed = Some(changed.map_or((i, i + 1), |(a, _)| (a, i + 1)));
                }
            }
            let (a, b) = changed.unwrap_or((0, 0));
            (format!("older copy of bytes {chunk}..{end} written back ({a}..{b} differ)"), a..b)
        }
    };
    std::fs::write(&path, &bytes)?;
    let mut o = CorruptOutcome { damage: format!("{}: {what}", victim.display()), ..CorruptOutcome::default() };
    let touched = |seg: &str, pos: u64, end: u64| {
        victim.file_name().is_some_and(|n| n.to_string_lossy() == seg)
            && victim.starts_with(Path::new("queues").join(queue))
            && pos < damaged.end
            && damaged.start < end
    };

    // verify names the file when anything changed.
    let v = Command::new(binary("gmq")?).args(["verify", "--json", "-d"]).arg(&dir).output()?;
    let report: Value =
        serde_json::from_slice(&v.stdout).with_context(|| String::from_utf8_lossy(&v.stderr).into_owned())?;
    let named: BTreeSet<String> = report["findings"]
        .as_array()
        .context("findings")?
        .iter()
        .filter_map(|f| f["file"].as_str().map(str::to_owned))
        .collect();
    o.verify_named_it = named.iter().any(|f| f.ends_with(&victim.to_string_lossy().into_owned()));
    o.changed = damaged.start < damaged.end && bytes != newer[&victim];
    o.valid_rollback = victim.ends_with("groups") && what.starts_with("older copy");

    // The server starts; healthy queues serve exactly; the damaged one
    // serves intact records only, or is refused.
    let server = Server::start(&dir, &[], &[])?;
    let addr = server.addr.clone();
    let first: Vec<(String, Result<Drained, gmq_client::Error>)> = runtime()?.block_on(async {
        let c = connect(&addr).await?;
        let mut out = Vec::new();
        for q in QUEUES {
            out.push((q.to_owned(), drain(&c, q, "x").await));
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    for (q, r) in &first {
        let originals: BTreeSet<&String> = base[q.as_str()].iter().collect();
        match r {
            Ok(ids) => {
                for id in ids {
                    match id {
                        Ok(id) if originals.contains(id) => {}
                        other => {
                            o.corrupted += 1;
                            eprintln!("seed {seed}: {q} delivered {other:?}");
                        }
                    }
                }
                if q != queue && ids.len() != originals.len() {
                    bail!(
                        "seed {seed}: healthy queue {q} served {} of {} records ({})",
                        ids.len(),
                        originals.len(),
                        o.damage
                    );
                }
            }
            Err(e) => {
                ensure!(q == queue, "seed {seed}: healthy queue {q} refused: {e} ({})", o.damage);
                // The refusal names the damaged file (and, for records, the byte).
                let file = victim.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ensure!(e.to_string().contains(&file), "seed {seed}: the refusal does not name {file}: {e}");
                o.quarantined.push(q.clone());
            }
        }
    }
    ensure!(server.term()? == Some(0), "seed {seed}: clean stop ({})", o.damage);

    // Repair, verify, and every untouched record is served.
    let r = Command::new(binary("gmq")?).args(["repair", "-d"]).arg(&dir).output()?;
    ensure!(
        r.status.success(),
        "seed {seed}: repair ({}): {}{}",
        o.damage,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    let v = Command::new(binary("gmq")?).args(["verify", "-d"]).arg(&dir).output()?;
    ensure!(
        v.status.success(),
        "seed {seed}: verify after repair ({}): {}",
        o.damage,
        String::from_utf8_lossy(&v.stdout)
    );
    let server = Server::start(&dir, &[], &[])?;
    let after: BTreeMap<String, Drained> = runtime()?.block_on(async {
        let c = connect(&server.addr).await?;
        let mut out = BTreeMap::new();
        for q in QUEUES {
            out.insert(q.to_owned(), drain(&c, q, "y").await?);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    ensure!(server.term()? == Some(0), "seed {seed}: clean stop after repair");
    for q in QUEUES {
        let got: BTreeSet<&String> = after[q].iter().filter_map(|r| r.as_ref().ok()).collect();
        o.corrupted += after[q].iter().filter(|r| r.is_err()).count() as u64;
        let served: BTreeSet<&String> = base[q].iter().collect();
        for ((seg, pos, end), id) in &before[q] {
            if !served.contains(id) || (q == queue && touched(seg, *pos, *end)) {
                continue;
            }
            o.intact += 1;
            if !got.contains(id) {
                o.lost += 1;
                eprintln!("seed {seed}: {q}: intact record {id} ({seg} at {pos}) missing after repair ({})", o.damage);
            }
        }
    }
    if o.changed && !o.verify_named_it {
        // Damage verify cannot see: bytes no reader looks at (the unused
        // part of a file, or a record the group state no longer needs).
        eprintln!("seed {seed}: verify did not name {} ({})", victim.display(), o.damage);
    }
    Ok(o)
}

/// Runs `seeds` seeds on one fixture.
pub fn corrupt_campaign(
    work: &Path,
    first_seed: u64,
    seeds: u64,
    per_queue: u64,
) -> anyhow::Result<Vec<CorruptOutcome>> {
    let (older, newer) = fixture(&work.join("fixture"), per_queue)?;
    let base = baseline(work, &newer)?;
    (first_seed..first_seed + seeds)
        .map(|s| {
            let o = corrupt_once(work, s, &older, &newer, &base);
            if std::env::var_os("GMQ_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(work.join(format!("seed{s}")));
            }
            o
        })
        .collect()
}
