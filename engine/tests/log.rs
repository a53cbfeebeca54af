//! The log layer's behaviour, one property per test: reads by offset across
//! segments, checkpointed recovery, group commit, fsync policies, fail-stop
//! on EIO and ENOSPC, torn tails at every byte, bit flips, verify and repair,
//! many queues with few files.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{block_on, random_message, Rng};
use gmq_engine::io::{OpenMode, Vfs};
use gmq_engine::recovery::{self, FindingKind};
use gmq_engine::sim::{FaultKind, SimFs};
use gmq_engine::{Engine, EngineConfig, Error, FsyncPolicy, LogConfig, Message, Record};

fn sim_config(threads: usize) -> EngineConfig {
    let mut c = EngineConfig::new("/data");
    c.committer_threads = threads;
    c
}

fn open(fs: &SimFs, cfg: &EngineConfig) -> Engine {
    Engine::open_with(cfg.clone(), Arc::new(fs.clone()), common::clock()).expect("open")
}

fn seg_path(queue: &str, base: u64) -> PathBuf {
    PathBuf::from(format!("/data/queues/{queue}/{base:020}.seg"))
}

fn payloads(recs: &[Record]) -> Vec<Vec<u8>> {
    recs.iter().map(|r| r.message.payload.to_vec()).collect()
}

/// Waits for `cond` with a deadline instead of sleeping for a guessed time.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn every_field_round_trips_on_the_real_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
    let q = engine.queue("orders").unwrap().log().clone();
    let mut rng = Rng::new(1);
    let msgs: Vec<Message> = (0..50).map(|_| random_message(&mut rng, 3000)).collect();
    let a = q.append(&msgs[0]).unwrap().wait().unwrap();
    assert_eq!(a, 0..1);
    let b = q.append_batch(&msgs[1..]).unwrap().wait().unwrap();
    assert_eq!(b, 1..50);
    let got = q.read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|r| r.message.clone()).collect::<Vec<_>>(), msgs);
    assert!(got.windows(2).all(|w| w[0].offset + 1 == w[1].offset));
    engine.close().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(engine.open_report().scanned_bytes, 0, "a clean restart scans nothing");
    let again = engine.get("orders").unwrap().unwrap().log().clone().read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(again, got);
}

#[test]
fn reads_by_offset_across_segments_and_after_reopen() {
    let fs = SimFs::new(3);
    let mut cfg = sim_config(1);
    cfg.defaults.segment_bytes = 4096;
    let engine = open(&fs, &cfg);
    let q = engine.queue("q").unwrap().log().clone();
    let mut rng = Rng::new(3);
    let mut model = Vec::new();
    for _ in 0..300 {
        let batch: Vec<Message> = (0..rng.range(1, 8))
            .map(|_| {
                let n = rng.range(0, 700) as usize;
                Message::new(rng.bytes(n))
            })
            .collect();
        q.append_batch(&batch).unwrap().wait().unwrap();
        model.extend(batch.into_iter().map(|m| m.payload.to_vec()));
    }
    assert!(q.segment_count() > 20, "segments: {}", q.segment_count());
    let check = |q: &gmq_engine::QueueLog, rng: &mut Rng| {
        for _ in 0..300 {
            let from = rng.range(0, model.len() as u64 + 3);
            let max = rng.range(1, 50) as usize;
            let got = q.read(from, max, usize::MAX).unwrap();
            let want: Vec<Vec<u8>> = model.iter().skip(from as usize).take(max).cloned().collect();
            assert_eq!(payloads(&got), want, "read({from}, {max})");
            assert!(got.iter().zip(from..).all(|(r, o)| r.offset == o));
        }
        let few = q.read(0, usize::MAX, 2000).unwrap();
        assert!(!few.is_empty() && few.iter().map(|r| r.message.payload.len()).sum::<usize>() < 2000 + 700);
    };
    check(&q, &mut rng);
    engine.close().unwrap();
    // Indexes are derived: without them, reads still work (they are rebuilt).
    for f in fs.files() {
        if f.extension().is_some_and(|e| e == "idx") {
            fs.remove_file(&f).unwrap();
        }
    }
    let engine = open(&fs, &cfg);
    check(&engine.get("q").unwrap().unwrap().log().clone(), &mut rng);
    assert!(fs.files().iter().any(|f| f.extension().is_some_and(|e| e == "idx")), "indexes rebuilt");
}

#[test]
fn a_crash_rescans_only_the_tail_after_the_checkpoint() {
    let fs = SimFs::new(5);
    let mut cfg = sim_config(1);
    cfg.checkpoint_bytes = 8192;
    cfg.defaults.segment_bytes = 64 << 20;
    let engine = open(&fs, &cfg);
    let q = engine.queue("q").unwrap().log().clone();
    for i in 0..2000u32 {
        q.append(&Message::new(vec![i as u8; 100])).unwrap().wait().unwrap();
    }
    let total = q.bytes();
    let fs = fs.crash();
    drop(engine);
    let engine = open(&fs, &cfg);
    let scanned = engine.open_report().scanned_bytes;
    assert!(total > 200_000);
    assert!(scanned <= 8192 + 200, "scanned {scanned} of {total} bytes after a crash");
    assert_eq!(engine.get("q").unwrap().unwrap().log().clone().next_offset(), 2000);
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let fs = SimFs::new(7);
    let engine = Arc::new(open(&fs, &sim_config(1)));
    let q = engine.queue("q").unwrap().log().clone();
    let before = fs.syncs();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| q.append(&Message::new(format!("{t}-{i}"))).unwrap().wait().unwrap().start)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut offsets: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..800).collect::<Vec<_>>(), "every append got its own offset");
    let syncs = fs.syncs() - before;
    assert!(syncs < 800, "800 appends took {syncs} syncs: no group commit");
    assert_eq!(q.read(0, usize::MAX, usize::MAX).unwrap().len(), 800);
}

#[test]
fn an_append_is_a_future() {
    let fs = SimFs::new(8);
    let engine = open(&fs, &sim_config(2));
    let q = engine.queue("q").unwrap().log().clone();
    let offs = block_on(async { q.append(&Message::new("a")).unwrap().await }).unwrap();
    assert_eq!(offs, 0..1);
    let futs: Vec<_> = (0..10).map(|i| q.append(&Message::new(vec![i])).unwrap()).collect();
    let got: Vec<u64> = futs.into_iter().map(|f| block_on(f).unwrap().start).collect();
    assert_eq!(got, (1..11).collect::<Vec<_>>());
}

#[test]
fn interval_policy_syncs_within_its_interval_and_never_leaves_it_to_the_os() {
    let fs = SimFs::new(9);
    let mut cfg = sim_config(1);
    cfg.defaults.fsync = FsyncPolicy::Interval(20);
    let engine = open(&fs, &cfg);
    let q = engine.queue("q").unwrap().log().clone();
    q.append(&Message::new("x")).unwrap().wait().unwrap();
    let s0 = fs.syncs();
    // Acknowledged after the write; the interval sync follows by itself.
    q.append(&Message::new("y")).unwrap().wait().unwrap();
    assert_eq!(q.read(0, 10, usize::MAX).unwrap().len(), 2);
    wait_until("the interval sync", || fs.syncs() > s0);
    drop(engine);

    let fs = SimFs::new(10);
    let mut cfg = sim_config(1);
    cfg.defaults.fsync = FsyncPolicy::Never;
    let engine = open(&fs, &cfg);
    let q = engine.queue("q").unwrap().log().clone();
    let s0 = fs.syncs();
    for i in 0..100u8 {
        q.append(&Message::new(vec![i])).unwrap().wait().unwrap();
    }
    assert_eq!(fs.syncs(), s0, "never: no sync per append");
    assert_eq!(q.read(0, 1000, usize::MAX).unwrap().len(), 100, "visible once written");
}

#[test]
fn a_failed_fsync_acknowledges_nothing_and_stops_the_queue() {
    for crash in [false, true] {
        let fs = SimFs::new(11);
        let engine = open(&fs, &sim_config(1));
        let q = engine.queue("q").unwrap().log().clone();
        let other = engine.queue("other").unwrap().log().clone();
        for i in 0..10u8 {
            q.append(&Message::new(vec![i])).unwrap().wait().unwrap();
        }
        fs.fail_after(FaultKind::Sync, 0);
        let err = q.append(&Message::new("lost")).unwrap().wait().unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let err = q.append(&Message::new("refused")).unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "no retry on the same file: {err}");
        other.append(&Message::new("fine")).unwrap().wait().expect("other queues keep working");
        let (engine, fs) = if crash {
            let fs = fs.crash();
            drop(engine);
            (open(&fs, &sim_config(1)), fs)
        } else {
            engine.reopen("q").unwrap();
            (engine, fs)
        };
        let q = engine.get("q").unwrap().unwrap().log().clone();
        let got = payloads(&q.read(0, 100, usize::MAX).unwrap());
        assert_eq!(got, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>(), "crash={crash}");
        assert_eq!(q.append(&Message::new("after")).unwrap().wait().unwrap(), 10..11);
        drop(engine);
        drop(fs);
    }
}

#[test]
fn a_full_disk_fails_appends_and_keeps_serving_reads() {
    let fs = SimFs::new(12);
    let engine = open(&fs, &sim_config(1));
    let q = engine.queue("q").unwrap().log().clone();
    for i in 0..5u8 {
        q.append(&Message::new(vec![i; 1000])).unwrap().wait().unwrap();
    }
    fs.set_full(true);
    let err = q.append(&Message::new(vec![9; 5000])).unwrap().wait().unwrap_err();
    assert!(err.is_storage(), "{err}");
    assert_eq!(
        engine.get("q").unwrap().unwrap().log().clone().read(0, 100, usize::MAX).unwrap().len(),
        5,
        "reads go on"
    );
    // Housekeeping reopens the stopped queue: while the disk is full, the
    // next write fails again; once there is space, writes go on.
    engine.maintain();
    let q = engine.get("q").unwrap().unwrap().log().clone();
    assert!(q.append(&Message::new(vec![9; 5000])).unwrap().wait().unwrap_err().is_storage());
    fs.set_full(false);
    engine.maintain();
    let q = engine.get("q").unwrap().unwrap().log().clone();
    assert_eq!(q.next_offset(), 5, "the half-written batches are gone");
    assert_eq!(q.append(&Message::new("more")).unwrap().wait().unwrap(), 5..6);
    let rep = recovery::verify(&fs, Path::new("/data"), None).unwrap();
    assert!(rep.findings.iter().all(|f| f.kind != FindingKind::Corrupt), "{:?}", rep.findings);
}

/// Copies every file of `src` into a fresh simulated disk, durably, with
/// `edit` applied to each file's bytes.
fn clone_disk(src: &SimFs, seed: u64, mut edit: impl FnMut(&Path, Vec<u8>) -> Vec<u8>) -> SimFs {
    let fs = SimFs::new(seed);
    for f in src.files() {
        let parent = f.parent().unwrap();
        fs.create_dir_all(parent).unwrap();
        let data = edit(&f, src.contents(&f).unwrap());
        fs.open(&f, OpenMode::CreateNew).unwrap();
        fs.set_contents(&f, data).unwrap();
    }
    let dirs: std::collections::BTreeSet<PathBuf> =
        src.files().iter().flat_map(|f| f.ancestors().skip(1).map(Path::to_path_buf).collect::<Vec<_>>()).collect();
    for d in dirs {
        fs.sync_dir(&d).unwrap();
    }
    fs
}

/// Builds a queue whose last records are single appends and one batch, closed
/// cleanly. Returns the disk and the (offset, end position) of every record.
fn built_queue() -> (SimFs, Vec<Message>, Vec<(u64, u64)>) {
    let fs = SimFs::new(13);
    let engine = open(&fs, &sim_config(1));
    let q = engine.queue("q").unwrap().log().clone();
    let mut rng = Rng::new(13);
    let mut msgs = Vec::new();
    for _ in 0..6 {
        let m = random_message(&mut rng, 200);
        q.append(&m).unwrap().wait().unwrap();
        msgs.push(m);
    }
    let batch: Vec<Message> = (0..3).map(|_| random_message(&mut rng, 200)).collect();
    q.append_batch(&batch).unwrap().wait().unwrap();
    msgs.extend(batch);
    engine.close().unwrap();
    let (recs, _) = recovery::read_segment_file(&fs, &seg_path("q", 0), 0).unwrap();
    let data = fs.contents(&seg_path("q", 0)).unwrap();
    let mut ends: Vec<(u64, u64)> = recs.windows(2).map(|w| (w[0].1.offset, w[1].0)).collect();
    ends.push((recs.last().unwrap().1.offset, data.len() as u64));
    (fs, msgs, ends)
}

#[test]
fn a_torn_tail_at_every_byte_keeps_every_earlier_record() {
    let (fs, msgs, ends) = built_queue();
    let full = fs.contents(&seg_path("q", 0)).unwrap();
    let from = ends[2].1 as usize;
    for cut in from..full.len() {
        let disk = clone_disk(&fs, cut as u64, |p, d| if p == seg_path("q", 0) { d[..cut].to_vec() } else { d });
        // A torn write lies past the last checkpoint (one covering it would
        // make the cut corruption: see the next tests).
        drop_checkpoint(&disk, "q");
        let engine = open(&disk, &sim_config(1));
        assert!(engine.open_report().quarantined.is_empty(), "cut {cut}: a torn tail is not corruption");
        let q = engine.get("q").unwrap().unwrap().log().clone();
        // Whole records before the cut survive, but a batch only as a whole.
        let mut survive = ends.iter().filter(|&&(_, end)| end as usize <= cut).count();
        if survive > 6 && survive < 9 {
            survive = 6;
        }
        let got: Vec<Message> = q.read(0, 100, usize::MAX).unwrap().into_iter().map(|r| r.message).collect();
        assert_eq!(got, msgs[..survive], "cut at byte {cut}");
        assert_eq!(q.append(&Message::new("new")).unwrap().wait().unwrap(), survive as u64..survive as u64 + 1);
        assert_eq!(&q.read(survive as u64, 1, usize::MAX).unwrap()[0].message.payload[..], b"new");
        let kept_end = if survive == 0 { 32 } else { ends[survive - 1].1 as usize };
        assert_eq!(engine.open_report().torn_bytes as usize, cut - kept_end, "cut {cut}: bytes truncated");
    }
}

fn drop_checkpoint(fs: &SimFs, queue: &str) {
    let dir = PathBuf::from(format!("/data/queues/{queue}"));
    fs.remove_file(&dir.join("checkpoint")).unwrap();
    fs.sync_dir(&dir).unwrap();
}

fn flip(data: &mut [u8], pos: usize) {
    data[pos] ^= 0x10;
}

#[test]
fn a_bit_flip_mid_log_quarantines_only_that_queue_and_repair_keeps_the_rest() {
    let (fs, msgs, ends) = built_queue();
    {
        let engine = open(&fs, &sim_config(1));
        engine.queue("healthy").unwrap().log().clone().append(&Message::new("ok")).unwrap().wait().unwrap();
    }
    let damaged_at = ends[1].1; // start of the record with offset 2
    let disk = clone_disk(&fs, 1, |p, mut d| {
        if p == seg_path("q", 0) {
            flip(&mut d, damaged_at as usize + 20);
        }
        d
    });
    // As after a crash before any checkpoint: open scans the whole segment.
    drop_checkpoint(&disk, "q");
    let before: Vec<(PathBuf, Vec<u8>)> =
        disk.files().into_iter().map(|f| (f.clone(), disk.contents(&f).unwrap())).collect();
    {
        let engine = open(&disk, &sim_config(1));
        let quarantined = &engine.open_report().quarantined;
        assert_eq!(quarantined.len(), 1);
        match &quarantined[0].1 {
            Error::Corrupt { queue, file, position, .. } => {
                assert_eq!((queue.as_str(), file.clone(), *position), ("q", seg_path("q", 0), damaged_at));
            }
            e => panic!("{e}"),
        }
        assert!(matches!(engine.queue("q"), Err(Error::Corrupt { .. })));
        assert_eq!(engine.get("healthy").unwrap().unwrap().log().clone().read(0, 9, usize::MAX).unwrap().len(), 1);
    }
    let rep = recovery::verify(&disk, Path::new("/data"), None).unwrap();
    let corrupt: Vec<_> = rep.findings.iter().filter(|f| f.kind == FindingKind::Corrupt).collect();
    assert_eq!(corrupt.len(), 1, "{:?}", rep.findings);
    assert_eq!((corrupt[0].file.clone(), corrupt[0].position), (seg_path("q", 0), Some(damaged_at)));

    let dry = recovery::repair(&disk, Path::new("/data"), None, true).unwrap();
    assert!(!dry.actions.is_empty());
    let after: Vec<(PathBuf, Vec<u8>)> =
        disk.files().into_iter().map(|f| (f.clone(), disk.contents(&f).unwrap())).collect();
    assert_eq!(before, after, "a dry run writes nothing");

    let done = recovery::repair(&disk, Path::new("/data"), None, false).unwrap();
    assert_eq!(done.records_kept, 8);
    assert!(recovery::verify(&disk, Path::new("/data"), None).unwrap().findings.is_empty());
    let engine = open(&disk, &sim_config(1));
    let q = engine.get("q").unwrap().unwrap().log().clone();
    let got: Vec<(u64, Message)> =
        q.read(0, 100, usize::MAX).unwrap().into_iter().map(|r| (r.offset, r.message)).collect();
    let want: Vec<(u64, Message)> =
        msgs.iter().cloned().enumerate().map(|(i, m)| (i as u64, m)).filter(|(o, _)| *o != 2).collect();
    assert_eq!(got, want, "every valid record kept, the damaged one alone dropped");
    assert_eq!(q.append(&Message::new("z")).unwrap().wait().unwrap(), 9..10);
}

#[test]
fn a_bit_flip_in_a_sealed_segment_is_caught_by_reads_and_verify() {
    let fs = SimFs::new(14);
    let mut cfg = sim_config(1);
    cfg.defaults.segment_bytes = 4096;
    {
        let engine = open(&fs, &cfg);
        let q = engine.queue("q").unwrap().log().clone();
        for i in 0..100u8 {
            q.append(&Message::new(vec![i; 200])).unwrap().wait().unwrap();
        }
        assert!(q.segment_count() > 3);
    }
    let victim = seg_path("q", 0);
    let disk = clone_disk(&fs, 2, |p, mut d| {
        if p == victim {
            flip(&mut d, 600);
        }
        d
    });
    let engine = open(&disk, &cfg);
    assert!(engine.open_report().quarantined.is_empty(), "sealed segments are trusted at open");
    let q = engine.get("q").unwrap().unwrap().log().clone();
    let err = q.read(0, 100, usize::MAX).unwrap_err();
    assert!(matches!(&err, Error::Corrupt { file, .. } if *file == victim), "{err}");
    assert_eq!(engine.quarantined().len(), 1);
    assert!(q.append(&Message::new("x")).is_err(), "a quarantined queue refuses appends");
    let rep = recovery::verify(&disk, Path::new("/data"), None).unwrap();
    assert!(rep.findings.iter().any(|f| f.kind == FindingKind::Corrupt && f.file == victim), "{:?}", rep.findings);
    drop(engine);

    // A damaged header of a sealed segment is caught by the first read too.
    let disk = clone_disk(&fs, 3, |p, mut d| {
        if p == victim {
            flip(&mut d, 3);
        }
        d
    });
    let engine = open(&disk, &cfg);
    let q = engine.get("q").unwrap().unwrap().log().clone();
    let err = q.read(0, 1, usize::MAX).unwrap_err();
    assert!(matches!(&err, Error::Corrupt { file, position: 0, .. } if *file == victim), "{err}");
}

#[test]
fn a_bit_flip_in_the_last_record_is_corruption_under_a_checkpoint_and_a_torn_tail_without() {
    let (fs, msgs, ends) = built_queue();
    let last_start = ends[ends.len() - 2].1;
    let damage = |seed| {
        clone_disk(&fs, seed, |p, mut d| {
            if p == seg_path("q", 0) {
                flip(&mut d, last_start as usize + 12);
            }
            d
        })
    };
    // The clean close's checkpoint says those bytes were synced: bit rot, not
    // a torn write. Reads find it and quarantine; verify reports it.
    let disk = damage(3);
    let rep = recovery::verify(&disk, Path::new("/data"), None).unwrap();
    assert!(
        rep.findings.iter().any(|f| f.kind == FindingKind::Corrupt && f.position == Some(last_start)),
        "{:?}",
        rep.findings
    );
    let engine = open(&disk, &sim_config(1));
    let err = engine.get("q").unwrap().unwrap().log().clone().read(0, 100, usize::MAX).unwrap_err();
    assert!(matches!(err, Error::Corrupt { position, .. } if position == last_start), "{err}");
    drop(engine);
    // Without a checkpoint nothing tells it from a write the crash cut off:
    // nothing valid follows, so it is dropped as a torn tail, and its whole
    // batch with it. (docs/storage-format.md states this limit.)
    let disk = damage(4);
    drop_checkpoint(&disk, "q");
    let rep = recovery::verify(&disk, Path::new("/data"), None).unwrap();
    assert!(rep.findings.iter().all(|f| f.kind == FindingKind::TornTail), "{:?}", rep.findings);
    let engine = open(&disk, &sim_config(1));
    assert!(engine.open_report().quarantined.is_empty());
    let got = engine.get("q").unwrap().unwrap().log().clone().read(0, 100, usize::MAX).unwrap();
    assert_eq!(got.into_iter().map(|r| r.message).collect::<Vec<_>>(), msgs[..6]);
}

#[test]
fn a_segment_shorter_than_its_checkpoint_is_corruption_not_a_torn_tail() {
    let (fs, _, ends) = built_queue();
    let full = fs.contents(&seg_path("q", 0)).unwrap().len();
    let disk = clone_disk(&fs, 6, |p, d| if p == seg_path("q", 0) { d[..full - 40].to_vec() } else { d });
    let engine = open(&disk, &sim_config(1));
    let q = &engine.open_report().quarantined;
    assert_eq!(q.len(), 1, "synced records went missing: that is not a torn write");
    assert!(matches!(&q[0].1, Error::Corrupt { position, .. } if *position as usize == full - 40), "{:?}", q[0].1);
    let rep = recovery::verify(&disk, Path::new("/data"), None).unwrap();
    assert!(
        rep.findings.iter().any(|f| f.kind == FindingKind::Corrupt && f.position == Some(full as u64 - 40)),
        "verify agrees with open: {:?}",
        rep.findings
    );
    assert_eq!(ends.len(), 9);
}

#[test]
fn a_whole_record_out_of_offset_order_at_the_tail_is_corruption() {
    let (fs, _, ends) = built_queue();
    // Append a copy of record 1 (valid checksum, offset going backwards).
    let disk = clone_disk(&fs, 7, |p, mut d| {
        if p == seg_path("q", 0) {
            let rec = d[ends[0].1 as usize..ends[1].1 as usize].to_vec();
            d.extend_from_slice(&rec);
        }
        d
    });
    drop_checkpoint(&disk, "q");
    let engine = open(&disk, &sim_config(1));
    assert_eq!(engine.open_report().quarantined.len(), 1, "a checksummed record is never a torn write");
    let rep = recovery::verify(&disk, Path::new("/data"), None).unwrap();
    assert!(rep.findings.iter().any(|f| f.kind == FindingKind::Corrupt), "{:?}", rep.findings);
}

#[test]
fn damage_found_by_a_read_after_a_clean_open_quarantines_the_queue() {
    let (fs, _, ends) = built_queue();
    let disk = clone_disk(&fs, 5, |p, mut d| {
        if p == seg_path("q", 0) {
            flip(&mut d, ends[0].1 as usize + 9);
        }
        d
    });
    let engine = open(&disk, &sim_config(1));
    assert!(engine.open_report().quarantined.is_empty(), "a clean restart does not rescan");
    let q = engine.get("q").unwrap().unwrap().log().clone();
    assert_eq!(q.read(0, 1, usize::MAX).unwrap().len(), 1, "records before the damage are readable");
    assert!(matches!(q.read(0, 100, usize::MAX), Err(Error::Corrupt { .. })));
    assert_eq!(engine.quarantined().len(), 1);
}

#[test]
fn segments_below_an_offset_are_deleted_oldest_first_and_stay_deleted() {
    let fs = SimFs::new(15);
    let mut cfg = sim_config(1);
    cfg.defaults.segment_bytes = 4096;
    let engine = open(&fs, &cfg);
    let q = engine.queue("q").unwrap().log().clone();
    for i in 0..200u8 {
        q.append(&Message::new(vec![i; 100])).unwrap().wait().unwrap();
    }
    let n = q.segment_count();
    let deleted = q.delete_segments_below(120).unwrap();
    assert!(deleted > 0 && q.segment_count() == n - deleted);
    let first = q.first_offset();
    assert!(first <= 120 && first > 0);
    let recs = q.read(0, 1000, usize::MAX).unwrap();
    assert_eq!(recs[0].offset, first);
    assert_eq!(recs.last().unwrap().offset, 199);
    let before = q.segment_count();
    assert_eq!(q.delete_segments_below(u64::MAX).unwrap(), before - 1);
    assert_eq!(q.segment_count(), 1, "the active segment stays");
    let fs = fs.crash();
    drop(engine);
    let engine = open(&fs, &cfg);
    let q = engine.get("q").unwrap().unwrap().log().clone();
    assert_eq!(q.segment_count(), 1);
    assert_eq!(q.next_offset(), 200);
}

#[test]
fn names_records_and_the_directory_lock_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
    for bad in ["", "..", "../x", ".q", "a/b", &"x".repeat(201)] {
        assert!(matches!(engine.queue(bad), Err(Error::InvalidName(_))), "{bad:?}");
    }
    let q = engine.queue("q").unwrap().log().clone();
    let huge = Message { key: Some("k".repeat(70_000)), ..Message::new("x") };
    assert!(matches!(q.append(&huge), Err(Error::InvalidRecord(_))));
    assert!(matches!(Engine::open(EngineConfig::new(dir.path())), Err(Error::Locked(_))));
    engine.close().unwrap();
    Engine::open(EngineConfig::new(dir.path())).expect("the lock is released on close");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn ten_thousand_queues_with_a_bounded_number_of_open_files() {
    // tmpfs where there is one: this is about descriptors, not fsync speed.
    let dir = tempfile::TempDir::new_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.max_open_files = 64;
    cfg.defaults.fsync = FsyncPolicy::Never;
    let base = open_fds();
    let engine = Engine::open(cfg.clone()).unwrap();
    let mut peak = 0;
    for i in 0..10_000 {
        let q = engine.queue(&format!("q{i}")).unwrap().log().clone();
        q.append(&Message::new(format!("m{i}"))).unwrap().wait().unwrap();
        if i % 500 == 0 {
            peak = peak.max(open_fds());
        }
    }
    peak = peak.max(open_fds());
    assert!(peak <= base + 64 + 16, "{peak} descriptors open (started with {base})");
    engine.close().unwrap();
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(engine.queue_names().len(), 10_000);
    assert_eq!(engine.open_report().scanned_bytes, 0);
    let q = engine.get("q9999").unwrap().unwrap().log().clone();
    assert_eq!(&q.read(0, 1, usize::MAX).unwrap()[0].message.payload[..], b"m9999");
    assert!(open_fds() <= base + 64 + 16);
}

#[test]
fn log_config_is_validated() {
    let bad = [
        LogConfig { segment_bytes: 10, ..LogConfig::default() },
        LogConfig { checkpoint_bytes: 0, ..LogConfig::default() },
        LogConfig { fsync: FsyncPolicy::Interval(0), ..LogConfig::default() },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
    }
    assert_eq!("interval:5".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Interval(5)));
    assert!("interval:0".parse::<FsyncPolicy>().is_err());
    assert!("sometimes".parse::<FsyncPolicy>().is_err());
}

#[test]
fn a_crash_after_a_flush_opens_without_scanning_or_syncing() {
    let fs = SimFs::new(11);
    let cfg = sim_config(1);
    let engine = open(&fs, &cfg);
    let q = engine.queue("q").unwrap().log().clone();
    for i in 0..50u32 {
        q.append(&Message::new(i.to_le_bytes().to_vec())).unwrap().wait().unwrap();
    }
    q.flush().unwrap(); // a synced checkpoint that covers the whole segment
    drop(q);
    drop(engine);
    let fs = fs.crash();
    let before = fs.syncs();
    let engine = open(&fs, &cfg);
    assert_eq!(engine.open_report().scanned_bytes, 0, "the checkpoint covers everything");
    let q = engine.get("q").unwrap().unwrap().log().clone();
    assert_eq!(q.read(0, usize::MAX, usize::MAX).unwrap().len(), 50);
    // Appends after such an open are scanned after the next crash.
    q.append(&Message::new("more")).unwrap().wait().unwrap();
    drop(q);
    drop(engine);
    assert_eq!(fs.syncs() - before, 1, "only the new append's fsync: none at open");
    let fs = fs.crash();
    let engine = open(&fs, &cfg);
    assert!(engine.open_report().scanned_bytes > 0);
    assert_eq!(engine.get("q").unwrap().unwrap().log().next_offset(), 51);
    engine.close().unwrap();
    // Opening after the clean close scans nothing either.
    let engine = open(&fs, &cfg);
    assert_eq!(engine.open_report().scanned_bytes, 0);
    engine.close().unwrap();
}

#[test]
fn walk_segment_reads_past_damage_and_a_missing_index_is_reported_then_rebuilt() {
    let fs = SimFs::new(21);
    let mut cfg = sim_config(1);
    cfg.defaults.segment_bytes = 4096;
    {
        let engine = open(&fs, &cfg);
        let q = engine.queue("q").unwrap().log().clone();
        for i in 0..60u8 {
            q.append(&Message::new(vec![i; 200])).unwrap().wait().unwrap();
        }
        assert!(q.segment_count() > 2);
    }
    let victim = seg_path("q", 0);
    let index = PathBuf::from("/data/queues/q/00000000000000000000.idx");
    let original_index = fs.contents(&index).expect("sealed segments have an index");
    let disk = clone_disk(&fs, 2, |p, mut d| {
        if p == victim {
            flip(&mut d, 600);
        }
        d
    });
    disk.remove_file(&index).unwrap();
    let mut items = Vec::new();
    recovery::walk_segment(&disk, &victim, 0, |i| items.push(i)).unwrap();
    let damage: Vec<(u64, u64)> = items
        .iter()
        .filter_map(|i| match i {
            recovery::SegmentItem::Damage { start, end, .. } => Some((*start, *end)),
            _ => None,
        })
        .collect();
    let offsets: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            recovery::SegmentItem::Record { record, .. } => Some(record.offset),
            _ => None,
        })
        .collect();
    assert_eq!(damage.len(), 1, "{items:?}");
    assert!(damage[0].0 <= 600 && 600 < damage[0].1, "{damage:?}");
    assert!(!offsets.is_empty() && offsets.windows(2).all(|w| w[0] < w[1]));
    assert!(offsets.len() < 19 && offsets.last() > Some(&2), "records after the damage are read: {offsets:?}");

    let rep = recovery::verify(&disk, Path::new("/data"), None).unwrap();
    assert!(rep.findings.iter().any(|f| f.kind == FindingKind::Index && f.file == index), "{:?}", rep.findings);
    let done = recovery::repair(&disk, Path::new("/data"), None, false).unwrap();
    assert!(done.actions.iter().any(|a| a.contains("00000000000000000000.idx")), "{:?}", done.actions);
    // The rewritten segment keeps its creation time (stream retention ages
    // the segment before it by it).
    let created = |fs: &SimFs| gmq_engine::format::decode_segment_header(&fs.contents(&victim).unwrap()[..32], 0);
    assert_eq!(created(&disk), created(&fs));
    assert!(created(&fs).unwrap() > 0);
    assert!(recovery::verify(&disk, Path::new("/data"), None).unwrap().findings.is_empty());

    // With the segment intact, the rebuilt index is the one the engine wrote.
    let intact = clone_disk(&fs, 3, |_, d| d);
    intact.remove_file(&index).unwrap();
    recovery::repair(&intact, Path::new("/data"), None, false).unwrap();
    assert_eq!(intact.contents(&index).unwrap(), original_index);
}
