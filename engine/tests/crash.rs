//! Crash consistency of the whole engine on the simulated disk.
//!
//! Guards against: an append acknowledged under `fsync = always` that is
//! missing, reordered or altered after a power cut (at any point, with the
//! last write torn at a sector boundary and unsynced directory operations
//! dropped); recovery that panics, quarantines a queue that only crashed, or
//! surfaces bytes nobody appended; fail-stop after EIO/ENOSPC that
//! acknowledges part of a failed batch or loses earlier acknowledged ones.
//!
//! Each seed is a deterministic simulation: the committer pool is manual
//! (driven from this thread) and every random choice, the disk's included,
//! comes from the seed, so a failing seed replays exactly:
//! `GMQ_SEED=<n> cargo test -p gmq-engine --test crash`.
//! CI runs 500 seeds; `GMQ_SEEDS=20000 cargo test --release -p gmq-engine
//! --test crash` is the long run.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use common::{for_seeds, random_message, Rng};
use gmq_engine::sim::{FaultKind, SimFs};
use gmq_engine::{Append, Engine, EngineConfig, Error, FsyncPolicy, Message};

const QUEUES: [&str; 3] = ["alpha", "beta", "gamma.dlq"];

#[derive(Default)]
struct QueueModel {
    /// Records that must be present (acknowledged, or seen after recovery).
    durable: BTreeMap<u64, Message>,
    /// Latest message appended at each offset, acknowledged or not.
    appended: HashMap<u64, Message>,
    /// Records below this offset may be gone (segments deleted).
    floor: u64,
}

struct InFlight {
    queue: usize,
    append: Append,
    msgs: Vec<Message>,
}

fn config(rng: &mut Rng, policy: FsyncPolicy) -> EngineConfig {
    let mut cfg = EngineConfig::new("/data");
    cfg.committer_threads = 0;
    cfg.max_open_files = rng.range(1, 5) as usize;
    cfg.defaults.fsync = policy;
    cfg.defaults.segment_bytes = rng.range(4096, 20_000);
    cfg.checkpoint_bytes = rng.range(4096, 12_000);
    cfg
}

/// Reads every queue and checks it against the model; what is present now
/// was recovered from the durable image, so it becomes durable in the model.
fn check(engine: &Engine, models: &mut [QueueModel], strict: bool, seed: u64) {
    for (i, name) in QUEUES.iter().enumerate() {
        let m = &mut models[i];
        let Some(q) =
            engine.get(name).unwrap_or_else(|e| panic!("seed {seed}: queue {name}: {e}")).map(|q| q.log().clone())
        else {
            assert!(m.durable.range(m.floor..).next().is_none(), "seed {seed}: queue {name} vanished");
            continue;
        };
        let recs = q.read(0, usize::MAX, usize::MAX).unwrap_or_else(|e| panic!("seed {seed}: read {name}: {e}"));
        let mut prev = None;
        for r in &recs {
            assert!(prev.is_none_or(|p| r.offset > p), "seed {seed}: {name}: offsets out of order");
            prev = Some(r.offset);
            let want = m.appended.get(&r.offset);
            assert_eq!(
                want,
                Some(&r.message),
                "seed {seed}: {name}: offset {} holds bytes nobody appended there",
                r.offset
            );
        }
        if trace() {
            eprintln!("check {name}: present {:?}", recs.iter().map(|r| r.offset).collect::<Vec<_>>());
        }
        if strict {
            let present: BTreeMap<u64, &Message> = recs.iter().map(|r| (r.offset, &r.message)).collect();
            for (off, msg) in m.durable.range(m.floor..) {
                assert_eq!(present.get(off), Some(&msg), "seed {seed}: {name}: acknowledged offset {off} lost");
            }
        }
        m.durable = recs.into_iter().map(|r| (r.offset, r.message)).collect();
        assert_eq!(q.next_offset(), m.durable.keys().next_back().map_or(q.next_offset(), |o| o + 1));
    }
}

fn trace() -> bool {
    std::env::var_os("GMQ_TRACE").is_some()
}

fn harvest(inflight: &mut Vec<InFlight>, models: &mut [QueueModel]) {
    let mut i = 0;
    while i < inflight.len() {
        if inflight[i].append.is_done() {
            let f = inflight.swap_remove(i);
            let r = f.append.wait();
            if trace() {
                eprintln!("  done {} {:?}", QUEUES[f.queue], r);
            }
            if let Err(e) = &r {
                assert!(e.is_storage() || matches!(e, Error::ShuttingDown), "append failed with {e}");
            }
            if let Ok(offs) = r {
                for (o, m) in offs.zip(f.msgs) {
                    models[f.queue].durable.insert(o, m);
                }
            }
        } else {
            i += 1;
        }
    }
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let policy = if rng.pct(80) { FsyncPolicy::Always } else { FsyncPolicy::Never };
    let strict = policy == FsyncPolicy::Always;
    let mut fs = SimFs::new(seed.wrapping_mul(31).wrapping_add(7));
    let mut models: Vec<QueueModel> = QUEUES.iter().map(|_| QueueModel::default()).collect();
    let lives = rng.range(1, 5);
    for _life in 0..lives {
        let cfg = config(&mut rng, policy);
        let engine = Engine::open_with(cfg, Arc::new(fs.clone()), common::clock())
            .unwrap_or_else(|e| panic!("seed {seed}: open failed: {e}"));
        assert!(
            engine.open_report().quarantined.is_empty(),
            "seed {seed}: a crash must never look like corruption: {:?}",
            engine.open_report().quarantined
        );
        check(&engine, &mut models, strict, seed);
        let mut inflight: Vec<InFlight> = Vec::new();
        for _ in 0..rng.range(10, 150) {
            let qi = rng.range(0, QUEUES.len() as u64) as usize;
            let name = QUEUES[qi];
            let op = rng.range(0, 100);
            if trace() {
                eprintln!(
                    "op {op} on {name}; durable tail {:?}",
                    models[qi].durable.keys().rev().take(4).collect::<Vec<_>>()
                );
            }
            match op {
                0..=44 => {
                    let msgs = if rng.pct(25) {
                        (0..rng.range(2, 6)).map(|_| random_message(&mut rng, 600)).collect()
                    } else {
                        let max = if rng.pct(5) { 9000 } else { 300 };
                        vec![random_message(&mut rng, max)]
                    };
                    let q = match engine.queue(name) {
                        Ok(q) => q.log().clone(),
                        Err(e) => {
                            assert!(e.is_storage(), "seed {seed}: {e}");
                            continue;
                        }
                    };
                    match q.append_batch(&msgs) {
                        Ok(a) => {
                            for (o, m) in a.offsets().zip(&msgs) {
                                models[qi].appended.insert(o, m.clone());
                            }
                            inflight.push(InFlight { queue: qi, append: a, msgs });
                        }
                        Err(e) => {
                            assert!(e.is_storage(), "seed {seed}: unexpected append error {e}");
                            // Fail-stop: reopen from disk, as an operator or the server would.
                            harvest(&mut inflight, &mut models);
                            let r = engine.reopen(name);
                            if trace() {
                                eprintln!(
                                    "  reopen {name}: {:?}",
                                    r.map(|q| (q.log().first_offset(), q.log().next_offset()))
                                );
                            }
                        }
                    }
                }
                45..=74 => {
                    engine.run_committers(rng.range(1, 4) as usize);
                }
                75..=79 => {
                    engine.run_committers(usize::MAX);
                }
                80..=84 => {
                    harvest(&mut inflight, &mut models);
                    if let Ok(Some(q)) = engine.get(name).map(|o| o.map(|q| q.log().clone())) {
                        if q.failure().is_none() {
                            let recs = q.read(0, usize::MAX, usize::MAX).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                            for r in &recs {
                                assert_eq!(
                                    models[qi].appended.get(&r.offset),
                                    Some(&r.message),
                                    "seed {seed}: live read"
                                );
                            }
                        }
                    }
                }
                85..=87 => {
                    let kind = if rng.pct(50) { FaultKind::Sync } else { FaultKind::Write };
                    fs.fail_after(kind, rng.range(0, 6));
                }
                88..=89 => fs.set_full(rng.pct(50)),
                90..=92 => {
                    harvest(&mut inflight, &mut models);
                    if let Ok(Some(q)) = engine.get(name).map(|o| o.map(|q| q.log().clone())) {
                        if q.failure().is_some() {
                            let _ = engine.reopen(name);
                        }
                    }
                }
                93..=95 => {
                    if let Ok(Some(q)) = engine.get(name).map(|o| o.map(|q| q.log().clone())) {
                        let upto = models[qi].durable.keys().copied().nth(rng.range(0, 40) as usize);
                        if let Some(upto) = upto {
                            let r = q.delete_segments_below(upto);
                            if let Err(e) = &r {
                                // A queue whose reopen failed stays shut.
                                assert!(e.is_storage() || matches!(e, Error::ShuttingDown), "seed {seed}: {e}");
                            }
                            let m = &mut models[qi];
                            m.floor = m.floor.max(q.first_offset());
                            if trace() {
                                eprintln!("  delete below {upto}: {r:?}, floor now {}", m.floor);
                            }
                        }
                    }
                }
                _ => {
                    if let Ok(Some(q)) = engine.get(name).map(|o| o.map(|q| q.log().clone())) {
                        match q.flush() {
                            Ok(()) | Err(Error::Io { .. } | Error::Poisoned { .. }) => {}
                            Err(e) => panic!("seed {seed}: flush: {e}"),
                        }
                    }
                }
            }
            harvest(&mut inflight, &mut models);
        }
        harvest(&mut inflight, &mut models);
        // Power cut. The dead process's handles fail, so dropping the engine
        // afterwards cannot write anything.
        fs.clear_faults();
        if trace() {
            eprintln!("crash");
        }
        fs = fs.crash();
        if trace() {
            for f in fs.files() {
                eprintln!("  file {} {:?}", f.display(), fs.contents(&f).map(|c| c.len()));
            }
            let rep = gmq_engine::recovery::verify(&fs, Path::new("/data"), None);
            eprintln!("  verify: {rep:?}");
        }
        drop(inflight);
        drop(engine);
    }
    let engine = Engine::open_with(config(&mut rng, policy), Arc::new(fs.clone()), common::clock())
        .unwrap_or_else(|e| panic!("seed {seed}: final open: {e}"));
    assert!(engine.open_report().quarantined.is_empty(), "seed {seed}");
    check(&engine, &mut models, strict, seed);
    engine.close().unwrap_or_else(|e| panic!("seed {seed}: close: {e}"));
    let rep = gmq_engine::recovery::verify(&fs, Path::new("/data"), None).expect("verify");
    assert!(rep.findings.is_empty(), "seed {seed}: verify after a clean close: {:?}", rep.findings);
}

#[test]
fn acknowledged_appends_survive_random_crashes() {
    for_seeds("acknowledged_appends_survive_random_crashes", 500, run);
}
