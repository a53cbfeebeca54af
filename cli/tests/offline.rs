//! Offline commands on data directories made by the engine: inspect shows
//! what was published, verify names the file and offset of injected damage,
//! repair keeps every intact record (and a dry run writes nothing), compact
//! reclaims acked space, export and import move a queue, and writers refuse
//! a directory a live server holds.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{b64, run, unb64, Server};
use gmq_engine::{AckMode, ConsumeOptions, Engine, EngineConfig, Message, QueueSpec};
use serde_json::{json, Value};

const SEG: &str = "00000000000000000000.seg";

/// The `i`-th message of the fixture: every field on some of them.
fn message(i: u64) -> Message {
    let mut m = Message::new(format!("payload {i} {}", "x".repeat(150)));
    if i.is_multiple_of(3) {
        m.event = Some(format!("event-{}", i % 2));
    }
    if i.is_multiple_of(4) {
        m.key = Some(format!("key-{i}"));
        m.headers = vec![("trace".into(), format!("t-{i}")), ("n".into(), i.to_string())];
    }
    if i.is_multiple_of(5) {
        m.msg_id = Some(format!("id-{i}"));
    }
    m
}

/// A data directory with queue `q`: `n` messages in 4 KiB segments (several
/// sealed), group `g` done with the first `acked`.
fn fixture(dir: &Path, n: u64, acked: u64) {
    let engine = Engine::open(EngineConfig::new(dir)).unwrap();
    engine.create_queue("q", &QueueSpec { segment_bytes: Some(4096), ..QueueSpec::default() }).unwrap();
    for i in 0..n {
        engine.publish("q", &[message(i)]).unwrap().wait().unwrap();
    }
    if acked > 0 {
        let opts = ConsumeOptions { max: acked as usize, ack: AckMode::Manual, ..ConsumeOptions::default() };
        let got = engine.consume("q", "g", 1, &opts).unwrap().wait().unwrap();
        let offsets: Vec<u64> = got.iter().map(|d| d.record.offset).collect();
        engine.ack("q", "g", &offsets).unwrap().wait().unwrap();
    }
    engine.close().unwrap();
}

fn gmq(args: &[&str]) -> common::Run {
    run(args, None)
}

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `root` with its bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                all.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    all
}

fn seg_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("queues/q").join(name)
}

/// `(offset, payload)` of every readable record, as `inspect --records` gives them.
fn readable(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    gmq(&["inspect", "-d", d(dir), "q", "--records"])
        .json_lines()
        .iter()
        .filter(|v| v["crc"] == json!("ok"))
        .map(|v| (v["offset"].as_u64().unwrap(), unb64(&v["payload"])))
        .collect()
}

#[test]
fn inspect_shows_what_was_published_segment_by_segment_with_group_positions() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 60, 10);
    let records = gmq(&["inspect", "-d", d(dir.path()), "q", "--records"]).json_lines();
    assert_eq!(records.len(), 60);
    for (i, r) in records.iter().enumerate() {
        let m = message(i as u64);
        assert_eq!((r["offset"].as_u64(), unb64(&r["payload"])), (Some(i as u64), m.payload.to_vec()));
        assert_eq!(r["event"].as_str(), m.event.as_deref(), "{r}");
        assert_eq!(r["key"].as_str(), m.key.as_deref());
        assert_eq!(r["msg_id"].as_str(), m.msg_id.as_deref());
        let headers: Vec<(String, String)> = r["headers"]
            .as_object()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect())
            .unwrap_or_default();
        let mut want = m.headers.clone();
        want.sort();
        assert_eq!(headers, want);
        assert_eq!((&r["crc"], &r["queue"]), (&json!("ok"), &json!("q")));
        assert!(r["timestamp_ms"].as_u64().unwrap() > 0 && r["position"].as_u64().unwrap() >= 32);
    }
    let v = gmq(&["inspect", "-d", d(dir.path()), "--json"]).json();
    let q = &v["queues"][0];
    let segs = q["segments"].as_array().unwrap();
    assert!(segs.len() > 2, "{q}");
    assert_eq!(segs.iter().map(|s| s["records"].as_u64().unwrap()).sum::<u64>(), 60);
    assert_eq!(segs[0]["first_offset"], json!(0));
    assert!(segs.iter().all(|s| s["damage"] == json!([])));
    assert!(segs[..segs.len() - 1].iter().all(|s| s["index"] == json!(true)), "sealed segments have indexes");
    assert_eq!(q["groups"], json!([{"name": "g", "position": 10, "acked_above": []}]));
    assert_eq!(q["checkpoint"]["clean"], json!(true));
    let human = gmq(&["inspect", "-d", d(dir.path())]).ok();
    assert!(human.contains("queue q: ") && human.contains("60 records, offsets 0..=59"), "{human}");
    assert!(human.contains(SEG) && human.contains("  g "), "{human}");
}

/// One injected fault: what it does to the directory, and where verify
/// must point.
struct Fault {
    name: &'static str,
    /// Damages the directory; returns (file, position) verify must name.
    inject: fn(&Path, &[Value]) -> (PathBuf, Option<u64>),
    kinds: &'static [&'static str],
}

fn record_at(records: &[Value], offset: u64) -> (String, u64) {
    let r = records.iter().find(|r| r["offset"] == json!(offset)).unwrap();
    (r["segment"].as_str().unwrap().to_owned(), r["position"].as_u64().unwrap())
}

const FAULTS: &[Fault] = &[
    Fault {
        name: "a flipped bit in a sealed segment",
        inject: |dir, recs| {
            let (seg, pos) = record_at(recs, 5);
            let p = seg_path(dir, &seg);
            let mut b = std::fs::read(&p).unwrap();
            b[pos as usize + 30] ^= 0x04;
            std::fs::write(&p, b).unwrap();
            (p, Some(pos))
        },
        kinds: &["Corrupt"],
    },
    Fault {
        name: "a sealed segment truncated mid-record",
        inject: |dir, recs| {
            let (seg, pos) = record_at(recs, 7);
            let p = seg_path(dir, &seg);
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(pos + 10).unwrap();
            (p, Some(pos))
        },
        kinds: &["Corrupt"],
    },
    Fault {
        name: "a deleted index",
        inject: |dir, _| {
            let p = seg_path(dir, "00000000000000000000.idx");
            std::fs::remove_file(&p).unwrap();
            (p, None)
        },
        kinds: &["Index"],
    },
    Fault {
        name: "garbage appended to the active segment",
        inject: |dir, recs| {
            let last = recs.last().unwrap()["segment"].as_str().unwrap().to_owned();
            let p = seg_path(dir, &last);
            let len = std::fs::metadata(&p).unwrap().len();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let garbage: Vec<u8> = (0..300)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            let mut b = std::fs::read(&p).unwrap();
            b.extend_from_slice(&garbage);
            std::fs::write(&p, b).unwrap();
            (p, Some(len))
        },
        kinds: &["Corrupt", "TornTail"],
    },
];

#[test]
fn verify_names_each_injected_fault_and_repair_keeps_every_intact_record() {
    let clean = tempfile::tempdir().unwrap();
    fixture(clean.path(), 60, 0);
    let ok = gmq(&["verify", "-d", d(clean.path())]);
    assert!(ok.ok().starts_with("clean: 1 queues, "), "{}", ok.out());
    let records = gmq(&["inspect", "-d", d(clean.path()), "q", "--records"]).json_lines();
    for fault in FAULTS {
        let dir = tempfile::tempdir().unwrap();
        for (p, bytes) in snapshot(clean.path()) {
            let to = dir.path().join(p.strip_prefix(clean.path()).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, bytes).unwrap();
        }
        let (file, position) = (fault.inject)(dir.path(), &records);
        let v = gmq(&["verify", "-d", d(dir.path()), "--json"]);
        assert_eq!(v.code, 5, "{}: {v:?}", fault.name);
        let report: Value = serde_json::from_slice(&v.stdout).unwrap();
        let found = report["findings"].as_array().unwrap();
        assert!(
            found.iter().any(|f| f["file"] == json!(file)
                && f["position"] == json!(position)
                && fault.kinds.contains(&f["kind"].as_str().unwrap())),
            "{}: want {file:?} at {position:?}, got {found:?}",
            fault.name
        );
        // The human report names them too.
        let human = gmq(&["verify", "-d", d(dir.path())]);
        assert_eq!(human.code, 5);
        assert!(human.out().contains(file.to_str().unwrap()) && human.out().contains("DAMAGED"), "{}", human.out());

        let intact = readable(dir.path());
        let before = snapshot(dir.path());
        let dry = gmq(&["repair", "-d", d(dir.path()), "--dry-run"]);
        assert!(dry.ok().lines().all(|l| l.starts_with("would: ") || l.starts_with("dry run")), "{}", dry.out());
        assert_eq!(snapshot(dir.path()), before, "{}: a dry run writes nothing", fault.name);

        gmq(&["repair", "-d", d(dir.path())]).ok();
        gmq(&["verify", "-d", d(dir.path())]).ok();
        // Every record readable before repair is kept (those of a batch
        // whose end is gone excepted: there are none in this fixture).
        assert_eq!(readable(dir.path()), intact, "{}", fault.name);
        let lost = records.len() - intact.len();
        assert!(lost <= 1 || fault.name.contains("truncated"), "{}: {lost} lost", fault.name);

        // The server then serves exactly those records, in order.
        let s = Server::start(dir.path());
        let got = s.gmq(&["consume", "q", "--max", "1000", "--json"]).json_lines();
        let served: Vec<(u64, Vec<u8>)> =
            got.iter().map(|v| (v["offset"].as_u64().unwrap(), unb64(&v["payload"]))).collect();
        assert_eq!(served, intact, "{}", fault.name);
        s.stop();
    }
}

#[test]
fn compact_reclaims_acked_space_and_the_server_serves_the_rest_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    // Offset 0 is stuck (leased, never acked); 1..150 acked.
    {
        let engine = Engine::open(EngineConfig::new(data)).unwrap();
        engine.create_queue("q", &QueueSpec { segment_bytes: Some(4096), ..QueueSpec::default() }).unwrap();
        for i in 0..200 {
            engine.publish("q", &[message(i)]).unwrap().wait().unwrap();
        }
        let opts = ConsumeOptions { max: 150, ack: AckMode::Manual, ..ConsumeOptions::default() };
        let got = engine.consume("q", "g", 1, &opts).unwrap().wait().unwrap();
        let offsets: Vec<u64> = got.iter().map(|d| d.record.offset).filter(|&o| o > 0).collect();
        engine.ack("q", "g", &offsets).unwrap().wait().unwrap();
        engine.close().unwrap();
    }
    let before = snapshot(data);
    let dry = gmq(&["compact", "-d", d(data), "--dry-run", "--json"]).json();
    let would = dry["queues"][0]["bytes_reclaimed"].as_u64().unwrap();
    assert!(would > 4 * 4096, "{dry}");
    let segs = |s: &BTreeMap<PathBuf, Vec<u8>>| -> BTreeMap<PathBuf, Vec<u8>> {
        s.iter().filter(|(p, _)| p.extension() == Some("seg".as_ref())).map(|(p, b)| (p.clone(), b.clone())).collect()
    };
    assert_eq!(segs(&snapshot(data)), segs(&before), "a dry run rewrites no segment");
    let size = |s: &BTreeMap<PathBuf, Vec<u8>>| s.values().map(Vec::len).sum::<usize>() as u64;

    let done = gmq(&["compact", "-d", d(data), "--json"]).json();
    let reclaimed = done["queues"][0]["bytes_reclaimed"].as_u64().unwrap();
    assert!(reclaimed >= would, "{done}");
    assert!(size(&snapshot(data)) + reclaimed <= size(&before) + 4096, "{done}");
    assert!(done["queues"][0]["records_dropped"].as_u64().unwrap() > 0);
    gmq(&["verify", "-d", d(data)]).ok();
    let human = gmq(&["compact", "-d", d(data)]).ok();
    assert!(human.starts_with("QUEUE") && human.contains("reclaimed 0 B in all"), "{human}");

    let s = Server::start(data);
    let got = s.gmq(&["consume", "q", "--group", "g", "--max", "1000", "--json"]).json_lines();
    let served: Vec<(u64, Vec<u8>)> =
        got.iter().map(|v| (v["offset"].as_u64().unwrap(), unb64(&v["payload"]))).collect();
    let want: Vec<(u64, Vec<u8>)> = [0].into_iter().chain(150..200).map(|i| (i, message(i).payload.to_vec())).collect();
    assert_eq!(served, want, "the stuck message and the unacked ones, in order");
}

#[test]
fn export_and_import_move_a_queue_with_its_settings_skipping_expired_records() {
    let from = tempfile::tempdir().unwrap();
    fixture(from.path(), 30, 0);
    {
        let engine = Engine::open(EngineConfig::new(from.path())).unwrap();
        let mut short = Message::new("short-lived");
        short.ttl_ms = Some(1);
        let mut long = Message::new("long-lived");
        long.ttl_ms = Some(3_600_000);
        engine.publish("q", &[short, long]).unwrap().wait().unwrap();
        engine.close().unwrap();
    }
    let file = from.path().join("q.jsonl");
    let e = gmq(&["export", "-d", d(from.path()), "q", "-o", d(&file)]);
    e.ok();
    assert!(e.stderr.contains("exported 32 records"), "{}", e.stderr);
    let lines: Vec<Value> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["gmq_export"], json!(1));
    assert!(lines[0]["settings"].as_str().unwrap().contains("segment_bytes = 4096"));
    assert_eq!(lines.len(), 33);
    // Export to stdout gives the same records.
    let piped = gmq(&["export", "-d", d(from.path()), "q"]).json_lines();
    assert_eq!(piped[1..], lines[1..]);

    let to = tempfile::tempdir().unwrap();
    let input = std::fs::read(&file).unwrap();
    let r = run(&["import", "-d", d(to.path()), "moved", "--json"], Some(&input));
    assert_eq!(r.json(), json!({"imported": 31, "expired": 1, "created": true, "first_offset": 0, "last_offset": 30}));
    let moved = gmq(&["inspect", "-d", d(to.path()), "moved", "--records"]).json_lines();
    let want: Vec<Vec<u8>> = (0..30).map(|i| message(i).payload.to_vec()).chain([b"long-lived".to_vec()]).collect();
    assert_eq!(moved.iter().map(|v| unb64(&v["payload"])).collect::<Vec<_>>(), want);
    assert_eq!(moved[4]["key"], json!("key-4"));
    assert_eq!(moved[4]["headers"], json!({"trace": "t-4", "n": "4"}));
    let ttl = moved[30]["ttl_ms"].as_u64().unwrap();
    assert!(ttl <= 3_600_000 && ttl > 3_500_000, "the lifetime runs from the first store: {ttl}");
    let settings = gmq(&["inspect", "-d", d(to.path()), "--json"]).json()["queues"][0]["settings"].clone();
    assert!(settings.to_string().contains("segment_bytes = 4096"), "{settings}");
    // Importing again stores the msg_id records once (dedup window).
    let again = run(&["import", "-d", d(to.path()), "moved", "--json"], Some(&input)).json();
    assert_eq!((&again["imported"], &again["created"]), (&json!(31 - 6), &json!(false)), "{again}");
    // A bad line stops the import with its number; what came before is kept.
    let bad = format!("{}\n{{\"payload\":\"{}\"}}\n{{\"payload\":42}}\n", lines[0], b64(b"kept"));
    let r = run(&["import", "-d", d(to.path()), "other"], Some(bad.as_bytes()));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("line 3") && r.stderr.contains("imported 1 records"), "{}", r.stderr);
}

#[test]
fn writers_refuse_a_directory_a_live_server_holds_and_readers_warn() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 5, 0);
    let s = Server::start(dir.path());
    for args in [&["repair"][..], &["compact"], &["import", "q"]] {
        let r = run(&[args, &["-d", d(dir.path())]].concat(), Some(b""));
        assert_eq!(r.code, 6, "{args:?}: {r:?}");
        assert!(r.stderr.contains("held by a running server"), "{}", r.stderr);
    }
    for args in [&["verify"][..], &["inspect"], &["repair", "--dry-run"], &["export", "q"]] {
        let r = gmq(&[args, &["-d", d(dir.path())]].concat());
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stderr.contains("warning: a running server holds"), "{args:?}: {}", r.stderr);
    }
    s.stop();
    gmq(&["repair", "-d", d(dir.path())]).ok();
    let missing = gmq(&["verify", "-d", d(&dir.path().join("nope"))]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("is not a directory"), "{}", missing.stderr);
    let no_queue = gmq(&["inspect", "-d", d(dir.path()), "nope"]);
    assert_eq!(no_queue.code, 1);
    assert!(no_queue.stderr.contains("no queue \"nope\""), "{}", no_queue.stderr);
}

#[test]
fn export_leaves_out_an_unfinished_tail_and_a_dry_run_exits_5_for_what_repair_cannot_fix() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 40, 0);
    let records = gmq(&["inspect", "-d", d(dir.path()), "q", "--records"]).json_lines();
    let last = seg_path(dir.path(), records.last().unwrap()["segment"].as_str().unwrap());
    let mut b = std::fs::read(&last).unwrap();
    let whole = b.len();
    // Half of a copy of the last record: a write a crash (or a live server) cut short.
    let start = records.last().unwrap()["position"].as_u64().unwrap() as usize;
    let half: Vec<u8> = b[start..start + (whole - start) / 2].to_vec();
    b.extend_from_slice(&half);
    std::fs::write(&last, b).unwrap();
    let e = gmq(&["export", "-d", d(dir.path()), "q"]);
    assert_eq!(e.json_lines().len(), 41, "every acknowledged record");
    assert!(e.stderr.contains("unfinished write"), "{}", e.stderr);
    // Damage in bytes the checkpoint says were synced is damage, not an
    // unfinished write.
    let mut flipped = std::fs::read(&last).unwrap();
    flipped[start + 20] ^= 1;
    flipped.truncate(whole);
    std::fs::write(&last, &flipped).unwrap();
    let e = gmq(&["export", "-d", d(dir.path()), "q"]);
    assert_eq!(e.code, 5, "{e:?}");
    assert!(e.stderr.contains("unreadable"), "{}", e.stderr);

    std::fs::write(dir.path().join("queues/q/queue"), "version = 1\ngarbage\n").unwrap();
    let dry = gmq(&["repair", "-d", d(dir.path()), "--dry-run"]);
    assert_eq!(dry.code, 5, "{dry:?}");
    assert!(dry.out().contains("would: cannot repair"), "{}", dry.out());
    assert!(dry.stderr.contains("would remain after repair"), "{}", dry.stderr);
}
