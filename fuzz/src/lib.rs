//! The bodies of GMQ's fuzz targets, kept in a library so that unit tests on
//! stable can run them over the seed corpus (and a crash reproduces with
//! `cargo test` as well as with `cargo fuzz run`).
//!
//! * [`record_decode`]: every decoder of `gmq_engine::format` on arbitrary
//!   bytes: no panics, and what decodes re-encodes to the same bytes.
//! * [`segment_recovery`]: a queue directory on the simulated disk whose only
//!   segment holds the input; the engine must open it, classify the damage
//!   exactly as the format's rules say, read back exactly the records that an
//!   independent scan of the bytes finds, and keep working afterwards.
//! * [`protocol::request_parse`] and [`protocol::session`]: the wire
//!   protocol's parser and framer, and a whole server session, on arbitrary
//!   bytes.

pub mod protocol;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gmq_engine::format::{self, attrs, Checkpoint, DecodeError, HeaderError, Message, Record, SEGMENT_HEADER_LEN};
use gmq_engine::io::{OpenMode, VFile, Vfs};
use gmq_engine::sim::SimFs;
use gmq_engine::{Clock, Engine, EngineConfig, Error};

/// Inputs longer than this are ignored (the scripts also pass `-max_len`).
pub const MAX_INPUT: usize = 1 << 20;

/// Data directory of the simulated disk.
pub const DATA_DIR: &str = "/d";
/// The queue the segment belongs to.
pub const QUEUE: &str = "q";

/// Path of the queue's first segment.
pub fn segment_path() -> PathBuf {
    Path::new(DATA_DIR).join(format::QUEUES_DIR).join(QUEUE).join(format::segment_file_name(0))
}

/// `created_ms` of generated segment headers and base of generated timestamps.
pub const EPOCH_MS: u64 = 1_763_800_000_000;

/// A clock that never moves, so that a fuzz input replays byte for byte.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

/// A read-only file over bytes in memory, for scanning without the engine.
#[derive(Debug)]
pub struct MemFile<'a>(pub &'a [u8]);

impl VFile for MemFile<'_> {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let Ok(pos) = usize::try_from(pos) else { return Ok(0) };
        if pos >= self.0.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.0.len() - pos);
        buf[..n].copy_from_slice(&self.0[pos..pos + n]);
        Ok(n)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
}

// ---------------------------------------------------------------------------
// record_decode

/// The `record_decode` target: the record, checkpoint, index and segment
/// header decoders on arbitrary bytes, each also on a copy whose checksum has
/// been fixed up, so the fuzzer reaches the checks behind the CRC.
pub fn record_decode(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    check_record(data);
    if data.len() >= format::RECORD_HEADER_LEN {
        let len = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
        let total = format::RECORD_HEADER_LEN.saturating_add(len);
        if total <= data.len() {
            let mut fixed = data.to_vec();
            let crc = crc32fast::hash(&fixed[4..total]);
            fixed[..4].copy_from_slice(&crc.to_le_bytes());
            check_record(&fixed);
        }
    }

    check_checkpoint(data);
    if data.len() == format::CHECKPOINT_LEN {
        let mut fixed = data.to_vec();
        let crc = crc32fast::hash(&fixed[..40]);
        fixed[40..44].copy_from_slice(&crc.to_le_bytes());
        check_checkpoint(&fixed);
    }

    check_index(data);
    if data.len() >= format::INDEX_HEADER_LEN + 4 {
        let mut fixed = data.to_vec();
        let body = fixed.len() - 4;
        let crc = crc32fast::hash(&fixed[..body]);
        fixed[body..].copy_from_slice(&crc.to_le_bytes());
        check_index(&fixed);
    }

    check_segment_header(data);
    if data.len() >= SEGMENT_HEADER_LEN as usize {
        let mut fixed = data.to_vec();
        let crc = crc32fast::hash(&fixed[..28]);
        fixed[28..32].copy_from_slice(&crc.to_le_bytes());
        check_segment_header(&fixed);
    }
}

fn check_record(data: &[u8]) {
    let r = match format::decode_record(data) {
        Ok(r) => r,
        Err(DecodeError::End) => {
            let n = data.len().min(format::RECORD_HEADER_LEN);
            assert!(data[..n].iter().all(|&b| b == 0), "End for a non-zero header");
            return;
        }
        Err(DecodeError::Short { needed }) => {
            if let Some(n) = needed {
                assert!(n > data.len(), "Short {{ needed: {n} }} with {} bytes at hand", data.len());
            }
            return;
        }
        Err(DecodeError::Invalid(_) | DecodeError::Malformed(_)) => return,
    };
    assert!(r.size >= format::RECORD_HEADER_LEN + format::RECORD_FIXED_LEN && r.size <= data.len());
    assert!(r.size - format::RECORD_HEADER_LEN <= format::MAX_RECORD_BODY);
    assert_eq!(r.attrs & !attrs::KNOWN, 0, "unknown attribute bits accepted");
    // decode_record checks every field, so what it accepts always reads.
    let rec = match r.to_record() {
        Ok(rec) => rec,
        Err(e) => panic!("decode_record accepted a record that does not read: {e:?}"),
    };
    assert_eq!((rec.offset, rec.timestamp_ms), (r.offset, r.timestamp_ms));
    let mut buf = Vec::with_capacity(r.size);
    format::encode_record(&mut buf, rec.offset, rec.timestamp_ms, &rec.message, r.attrs & attrs::BATCH_CONT);
    assert_eq!(format::encoded_len(&rec.message), Ok(r.size), "encoded_len disagrees with the decoded size");
    assert!(
        buf == data[..r.size],
        "re-encoding a decoded record changed its bytes\n input: {:02x?}\noutput: {:02x?}",
        &data[..r.size],
        buf
    );
}

fn check_checkpoint(data: &[u8]) {
    if let Some(c) = format::decode_checkpoint(data) {
        assert_eq!(format::decode_checkpoint(&format::encode_checkpoint(&c)), Some(c));
    }
}

fn check_index(data: &[u8]) {
    // The base the bytes name, so the fuzzer gets past the base check.
    let base = if data.len() >= 24 { u64::from_le_bytes(data[16..24].try_into().unwrap_or_default()) } else { 0 };
    let _ = format::check_index(data, base.wrapping_add(1));
    let count = format::check_index_header(data);
    let Ok((n, covered)) = format::check_index(data, base) else { return };
    assert_eq!(count, Some(n), "check_index_header disagrees with check_index");
    let entries: Vec<(u64, u64)> = (0..n).map(|i| format::index_entry(data, i)).collect();
    for (i, &(o, p)) in entries.iter().enumerate() {
        assert!(o >= base && p >= SEGMENT_HEADER_LEN && p < covered, "entry {i} out of range");
        if i > 0 {
            assert!(o > entries[i - 1].0 && p > entries[i - 1].1, "entry {i} out of order");
        }
    }
    let again = format::encode_index(base, covered, &entries);
    assert_eq!(again.len(), data.len());
    assert_eq!(format::check_index(&again, base), Ok((n, covered)));
}

fn check_segment_header(data: &[u8]) {
    let base = if data.len() >= 20 { u64::from_le_bytes(data[12..20].try_into().unwrap_or_default()) } else { 0 };
    let _ = format::decode_segment_header(data, base.wrapping_add(1));
    match format::decode_segment_header(data, base) {
        Ok(created) => {
            let h = format::encode_segment_header(base, created);
            // Flags (bytes 10..12) are written as zero and not interpreted by
            // this version; every other field must read back as written.
            assert_eq!(h[..10], data[..10]);
            assert_eq!(h[12..28], data[12..28]);
            if data[10..12] == [0, 0] {
                assert_eq!(h[..], data[..32]);
            }
        }
        Err(HeaderError::Missing) => {
            assert!(data.len() < 32 || data[..32].iter().all(|&b| b == 0), "Missing for a present header");
        }
        Err(HeaderError::Bad(_)) => {}
    }
}

// ---------------------------------------------------------------------------
// segment_recovery

/// The segment file for a `segment_recovery` input, and the checkpoint to
/// store beside it, if any.
///
/// Odd (or absent) first byte: the input itself, no checkpoint. Even first
/// byte `b`: a valid header for base 0, then `(b >> 1) % 16` generated
/// records, then the rest of the input as raw bytes. Each generated record
/// takes four input bytes: a little-endian u16 payload length (clipped to
/// what is left; the payload bytes follow in the input), `flags` and `gap`:
///
/// * `flags & 1`: BATCH_CONT (the batch goes on in the next record);
/// * `flags & 2, 4, 8, 16`: ttl, event, key, msg_id; `flags & 32`: headers;
/// * `gap & 3`: offsets skipped before this record (offsets may have gaps).
///
/// Missing control bytes end the records early. Then, in `b`:
///
/// * `b & 0x20`: a checkpoint as the engine writes it, covering the generated
///   records up to the end of their last complete batch (no index file, so
///   recovery still scans from byte 32); `b & 0x40`: its CLEAN flag;
/// * `b & 0x80`: damage: three more input bytes, a u16 position (modulo the
///   generated records' length) and a bit number, flip one bit of the
///   generated records (bit rot in synced bytes).
pub fn build_segment(data: &[u8]) -> (Vec<u8>, Option<Checkpoint>) {
    let Some(&first) = data.first() else { return (Vec::new(), None) };
    if first % 2 == 1 {
        return (data.to_vec(), None);
    }
    let mut out = format::encode_segment_header(0, EPOCH_MS).to_vec();
    let mut rest = &data[1..];
    let mut next = 0u64;
    let (mut synced_len, mut synced_next) = (out.len(), 0);
    for i in 0..usize::from(first >> 1) % 16 {
        let [l0, l1, flags, gap, tail @ ..] = rest else { break };
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        let offset = next + u64::from(gap & 3);
        let m = generated_message(i, payload, *flags);
        let cont = if flags & 1 != 0 { attrs::BATCH_CONT } else { 0 };
        format::encode_record(&mut out, offset, EPOCH_MS + offset, &m, cont);
        next = offset + 1;
        if cont == 0 {
            (synced_len, synced_next) = (out.len(), next);
        }
    }
    let checkpoint = (first & 0x20 != 0).then_some(Checkpoint {
        segment: 0,
        valid_len: synced_len as u64,
        next_offset: synced_next,
        clean: first & 0x40 != 0,
    });
    if first & 0x80 != 0 {
        if let [p0, p1, bit, tail @ ..] = rest {
            rest = tail;
            let generated = out.len() - SEGMENT_HEADER_LEN as usize;
            if generated > 0 {
                let at = SEGMENT_HEADER_LEN as usize + usize::from(u16::from_le_bytes([*p0, *p1])) % generated;
                out[at] ^= 1 << (bit & 7);
            }
        }
    }
    out.extend_from_slice(rest);
    (out, checkpoint)
}

fn generated_message(i: usize, payload: &[u8], flags: u8) -> Message {
    Message {
        ttl_ms: (flags & 2 != 0).then_some(1000 * (i as u64 + 1)),
        event: (flags & 4 != 0).then(|| format!("event.{i}")),
        key: (flags & 8 != 0).then(|| format!("key-{i}")),
        msg_id: (flags & 16 != 0).then(|| format!("id-{i}")),
        headers: if flags & 32 != 0 {
            vec![("h".into(), format!("v{i}")), ("empty".into(), String::new())]
        } else {
            vec![]
        },
        ..Message::new(payload.to_vec())
    }
}

/// A record as the oracle walked over it.
#[derive(Debug, Clone)]
struct Seen {
    pos: u64,
    offset: u64,
    size: usize,
    cont: bool,
}

/// What opening the segment must do, worked out from the bytes alone with the
/// format's rules (docs/storage-format.md, "Recovery").
#[derive(Debug)]
enum Expect {
    /// The queue opens; the segment keeps `keep` bytes of the original
    /// (`None`: the header is rewritten), holding `records`.
    Open { records: Vec<Record>, keep: Option<usize>, torn: u64 },
    /// The queue is quarantined, naming the segment and this byte.
    Corrupt { position: u64 },
}

/// The first position at or after `from` where a whole valid record with an
/// offset of at least `min_offset` starts.
fn naive_find_valid(seg: &[u8], from: usize, min_offset: u64) -> Option<usize> {
    (from..seg.len()).find(|&i| format::decode_record(&seg[i..]).is_ok_and(|r| r.offset >= min_offset))
}

/// Walks the records of `seg` after its header the simple way: every record
/// whole in memory. Returns what was seen and where (and whether) it stopped.
fn naive_walk(seg: &[u8]) -> (Vec<Seen>, Option<usize>) {
    let mut seen: Vec<Seen> = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN as usize;
    while pos < seg.len() {
        match format::decode_record(&seg[pos..]) {
            Ok(r) if seen.last().is_none_or(|s| r.offset > s.offset) => {
                seen.push(Seen { pos: pos as u64, offset: r.offset, size: r.size, cont: r.batch_continues() });
                pos += r.size;
            }
            _ => return (seen, Some(pos)),
        }
    }
    (seen, None)
}

fn expect(seg: &[u8], checkpoint: Option<Checkpoint>) -> Expect {
    // A checkpoint that names this segment says its first `valid_len` bytes
    // were synced: a shorter segment, or a missing header under it, is
    // corruption, never a torn write.
    let checkpoint = checkpoint.filter(|c| c.segment == 0 && c.valid_len >= SEGMENT_HEADER_LEN);
    if checkpoint.is_some_and(|c| c.valid_len > seg.len() as u64) {
        return Expect::Corrupt { position: seg.len() as u64 };
    }
    let hlen = seg.len().min(SEGMENT_HEADER_LEN as usize);
    match format::decode_segment_header(&seg[..hlen], 0) {
        Ok(_) => {}
        Err(HeaderError::Bad(_)) => return Expect::Corrupt { position: 0 },
        Err(HeaderError::Missing) => {
            return if checkpoint.is_some_and(|c| c.valid_len > SEGMENT_HEADER_LEN)
                || naive_find_valid(seg, SEGMENT_HEADER_LEN as usize, 0).is_some()
            {
                Expect::Corrupt { position: 0 }
            } else {
                Expect::Open { records: Vec::new(), keep: None, torn: (seg.len() as u64).saturating_sub(32) }
            };
        }
    }

    // The engine's own scanner over the same bytes, cross-checked against the
    // naive walk (it reads in chunks; the walk has everything in memory).
    let mut visited = Vec::new();
    let s = gmq_engine::recovery::scan(&MemFile(seg), SEGMENT_HEADER_LEN, seg.len() as u64, 0, |pos, r| {
        visited.push(Seen { pos, offset: r.offset, size: r.size, cont: r.batch_continues() })
    })
    .expect("scanning bytes in memory cannot fail");
    let (walked, stop) = naive_walk(seg);
    let same = |a: &[Seen], b: &[Seen]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| (x.pos, x.offset, x.size, x.cont) == (y.pos, y.offset, y.size, y.cont))
    };
    assert!(same(&visited, &walked), "scan visited {visited:?}, the naive walk saw {walked:?}");
    assert_eq!(s.stop.as_ref().map(|(p, _)| *p as usize), stop, "scan stopped elsewhere: {s:?}");
    let complete = walked.iter().rposition(|r| !r.cont).map_or(0, |i| i + 1);
    let valid_end = walked[..complete].last().map_or(SEGMENT_HEADER_LEN, |r| r.pos + r.size as u64);
    assert_eq!(s.records as usize, complete, "scan counted other complete records: {s:?}");
    assert_eq!(s.valid_end, valid_end, "scan ended the valid prefix elsewhere: {s:?}");
    assert_eq!(s.last_offset, walked[..complete].last().map(|r| r.offset));

    if let Some(p) = stop {
        // A whole checksummed record (out of offset order, or whose fields do
        // not parse) is no torn write.
        if matches!(format::decode_record(&seg[p..]), Ok(_) | Err(DecodeError::Malformed(_))) {
            return Expect::Corrupt { position: p as u64 };
        }
        // Bytes a checkpoint covers were synced: damage there is corruption,
        // whatever follows it.
        if checkpoint.is_some_and(|c| (p as u64) < c.valid_len) {
            return Expect::Corrupt { position: p as u64 };
        }
        let resume = s.last_offset.map_or(0, |o| o + 1);
        if naive_find_valid(seg, p + 1, resume).is_some() {
            return Expect::Corrupt { position: p as u64 };
        }
    } else if (valid_end as usize) < seg.len() && checkpoint.is_some_and(|c| valid_end < c.valid_len) {
        // An unfinished batch at the end, in bytes a checkpoint says were
        // synced: not a torn write either.
        return Expect::Corrupt { position: valid_end };
    }
    let mut records = Vec::with_capacity(complete);
    for w in &walked[..complete] {
        match format::decode_record(&seg[w.pos as usize..]).and_then(|r| r.to_record()) {
            Ok(r) => records.push(r),
            Err(e) => panic!("the walk saw a record at byte {} that does not read: {e:?}", w.pos),
        }
    }
    Expect::Open { records, keep: Some(valid_end as usize), torn: seg.len() as u64 - valid_end }
}

fn open(fs: &SimFs) -> Engine {
    let mut cfg = EngineConfig::new(DATA_DIR);
    cfg.committer_threads = 0;
    match Engine::open_with(cfg, Arc::new(fs.clone()), Arc::new(FixedClock(EPOCH_MS + 1))) {
        Ok(e) => e,
        Err(e) => panic!("open failed on a fault-free disk: {e}"),
    }
}

fn read_all(engine: &Engine) -> Vec<Record> {
    let q = match engine.get(QUEUE) {
        Ok(Some(q)) => q.log().clone(),
        Ok(None) => panic!("queue {QUEUE} is gone"),
        Err(e) => panic!("queue {QUEUE} did not open: {e}"),
    };
    q.read(0, usize::MAX, usize::MAX).unwrap_or_else(|e| panic!("reading back an opened queue failed: {e}"))
}

fn same_records(got: &[Record], want: &[Record], when: &str) {
    if got != want {
        let show = |r: &[Record]| r.iter().map(|r| (r.offset, r.message.payload.len())).collect::<Vec<_>>();
        panic!("{when}: read (offset, payload len) {:?}, expected {:?}", show(got), show(want));
    }
}

/// The `segment_recovery` target. See [`build_segment`] for the input.
pub fn segment_recovery(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let (seg, checkpoint) = build_segment(data);
    let want = expect(&seg, checkpoint);

    let fs = SimFs::new(u64::from(crc32fast::hash(data)));
    let path = segment_path();
    let qdir = path.parent().expect("segment path has a parent").to_path_buf();
    let ok = |r: io::Result<()>| r.expect("the simulated disk has no faults here");
    ok(fs.create_dir_all(&qdir));
    let f = fs.open(&path, OpenMode::CreateNew).expect("create the segment");
    ok(f.write_at(&seg, 0));
    ok(f.sync_data());
    drop(f);
    if let Some(c) = checkpoint {
        let f = fs.open(&qdir.join(format::CHECKPOINT_FILE), OpenMode::CreateNew).expect("create the checkpoint");
        ok(f.write_at(&format::encode_checkpoint(&c), 0));
        ok(f.sync_data());
    }
    for d in ["/", DATA_DIR, "/d/queues", "/d/queues/q"] {
        ok(fs.sync_dir(Path::new(d)));
    }

    let engine = open(&fs);
    match want {
        Expect::Corrupt { position } => {
            match engine.get(QUEUE) {
                Err(Error::Corrupt { queue, file, position: p, .. }) => {
                    assert_eq!((queue.as_str(), file.as_path(), p), (QUEUE, path.as_path(), position))
                }
                other => panic!("expected quarantine at byte {position}, got {other:?}"),
            }
            let q = engine.quarantined();
            assert!(
                q.len() == 1 && q[0].0 == QUEUE && matches!(q[0].1, Error::Corrupt { .. }),
                "quarantined() says {q:?}"
            );
            assert_eq!(fs.contents(&path).as_deref(), Some(&seg[..]), "a quarantined segment was modified");
            after_repair(&fs, &engine, &seg);
        }
        Expect::Open { records, keep, torn } => {
            assert!(engine.quarantined().is_empty(), "quarantined {:?}", engine.quarantined());
            assert_eq!(engine.open_report().torn_bytes, torn, "torn bytes reported");
            same_records(&read_all(&engine), &records, "after recovery");
            let on_disk = fs.contents(&path).expect("segment still exists");
            match keep {
                Some(n) => {
                    assert!(on_disk == seg[..n], "recovery left {} bytes, expected the first {n}", on_disk.len())
                }
                None => assert_eq!(format::decode_segment_header(&on_disk, 0), Ok(EPOCH_MS + 1)),
            }
            keeps_working(&fs, engine, records);
        }
    }
}

/// After recovery: an append lands after the recovered records, and a clean
/// close and reopen give the same log without scanning.
fn keeps_working(fs: &SimFs, engine: Engine, mut records: Vec<Record>) {
    let q = engine.get(QUEUE).ok().flatten().expect("queue is open").log().clone();
    let next = records.last().map_or(0, |r| r.offset + 1);
    assert_eq!(q.next_offset(), next);
    let m = Message::new(&b"appended after recovery"[..]);
    let a = q.append(&m).expect("append after recovery");
    engine.run_committers(usize::MAX);
    let got = a.wait().expect("append after recovery is stored");
    assert_eq!(got, next..next + 1);
    records.push(Record { offset: next, timestamp_ms: EPOCH_MS + 1, message: m });
    same_records(&read_all(&engine), &records, "after an append");
    drop(q);
    engine.close().expect("clean close");

    let engine = open(fs);
    assert_eq!(engine.open_report().scanned_bytes, 0, "a clean reopen scanned the log");
    same_records(&read_all(&engine), &records, "after a clean reopen");
    engine.close().expect("clean close");
}

/// A quarantined queue: verify names the damage, repair keeps every record
/// before it, and the repaired queue reopens and reads cleanly.
fn after_repair(fs: &SimFs, engine: &Engine, seg: &[u8]) {
    let data = Path::new(DATA_DIR);
    let v = gmq_engine::recovery::verify(fs, data, Some(QUEUE)).expect("verify");
    assert!(
        v.findings.iter().any(|f| f.kind == gmq_engine::recovery::FindingKind::Corrupt),
        "verify missed the corruption that quarantined the queue: {:?}",
        v.findings
    );
    gmq_engine::recovery::repair(fs, data, Some(QUEUE), false).expect("repair");
    // Repair keeps every valid record and drops an unfinished batch at the
    // very end (never complete, so never acknowledged): verify is clean.
    let v = gmq_engine::recovery::verify(fs, data, Some(QUEUE)).expect("verify");
    assert!(v.findings.is_empty(), "findings after repair: {:?}", v.findings);
    engine.reopen(QUEUE).unwrap_or_else(|e| panic!("reopen after repair: {e}"));
    let got = read_all(engine);
    // Every record of a complete batch before the damage survives repair.
    let (walked, _) = if format::decode_segment_header(&seg[..seg.len().min(32)], 0).is_ok() {
        naive_walk(seg)
    } else {
        (Vec::new(), None)
    };
    let complete = walked.iter().rposition(|r| !r.cont).map_or(0, |i| i + 1);
    assert!(got.len() >= complete, "repair kept {} records, {complete} came before the damage", got.len());
    for (g, w) in got.iter().zip(&walked[..complete]) {
        assert_eq!(g.offset, w.offset, "repair lost or reordered a record before the damage");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            out.push((p.display().to_string(), std::fs::read(&p).expect("read corpus file")));
        }
        assert!(!out.is_empty(), "empty corpus {}", dir.display());
        out
    }

    /// The seeds reach every outcome the oracle knows.
    #[test]
    fn seed_outcomes() {
        let want = [
            ("raw_engine_segment", "open"),
            ("raw_header_only", "open"),
            ("raw_torn_mid_record", "open"),
            ("raw_unfinished_batch", "open"),
            ("raw_zero_padded_tail", "open"),
            ("raw_bit_flip_last_record", "open"),
            ("raw_offset_goes_back_at_tail", "corrupt"),
            ("raw_bit_flip_mid_log", "corrupt"),
            ("raw_bad_magic", "corrupt"),
            ("raw_bad_magic_then_unparsable_body", "corrupt"),
            ("raw_checksummed_unparsable_body", "corrupt"),
            ("gen_unfinished_batch", "open"),
            ("gen_torn_large_record", "open"),
            ("gen_garbage_then_valid_record", "corrupt"),
            ("gen_checkpoint_then_bit_flip_under_it", "corrupt"),
            ("gen_checkpoint_then_torn_record", "open"),
        ];
        let seeds = corpus("segment_recovery");
        for (name, kind) in want {
            let (_, data) = seeds.iter().find(|(p, _)| p.ends_with(name)).unwrap_or_else(|| panic!("no seed {name}"));
            let (seg, ck) = build_segment(data);
            let got = match expect(&seg, ck) {
                Expect::Open { .. } => "open",
                Expect::Corrupt { .. } => "corrupt",
            };
            assert_eq!(got, kind, "{name}");
        }
    }

    #[test]
    fn record_decode_seed_corpus() {
        for (name, data) in corpus("record_decode") {
            eprintln!("{name}");
            record_decode(&data);
        }
    }

    #[test]
    fn segment_recovery_seed_corpus() {
        for (name, data) in corpus("segment_recovery") {
            eprintln!("{name}");
            segment_recovery(&data);
        }
    }

    #[test]
    fn request_parse_seed_corpus() {
        for (name, data) in corpus("request_parse") {
            eprintln!("{name}");
            crate::protocol::request_parse(&data);
        }
    }

    #[test]
    fn session_seed_corpus() {
        for (name, data) in corpus("session") {
            eprintln!("{name}");
            crate::protocol::session(&data);
        }
    }

    #[test]
    fn group_state_seed_corpus() {
        for (name, data) in corpus("group_state") {
            eprintln!("{name}");
            group_state(&data);
        }
    }

    fn doc() -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/storage-format.md");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The worked example in docs/storage-format.md is what the encoder writes.
    #[test]
    fn doc_example_record_matches_the_encoder() {
        let doc = doc();
        let block = doc.split("<!-- example-record -->").nth(1).expect("example marker in the doc");
        let block = block.split("```text").nth(1).and_then(|b| b.split("```").next()).expect("hex block");
        let bytes: Vec<u8> = block.split_whitespace().map(|h| u8::from_str_radix(h, 16).expect("hex byte")).collect();
        let m = Message { key: Some("k1".into()), headers: vec![("a".into(), "b".into())], ..Message::new(&b"hi"[..]) };
        let mut want = Vec::new();
        format::encode_record(&mut want, 5, EPOCH_MS, &m, 0);
        assert_eq!(bytes, want, "the doc's example record is out of date");
        let header = format::encode_segment_header(0, EPOCH_MS);
        let hex: Vec<String> = header.iter().map(|b| format!("{b:02x}")).collect();
        let lines = format!("{}\n{}", hex[..16].join(" "), hex[16..].join(" "));
        assert!(doc.contains(&lines), "the doc's example segment header is out of date:\n{lines}");
    }

    /// The Python reader in docs/storage-format.md reads what the engine
    /// writes (several segments, indexes, a batch, every optional field).
    #[test]
    fn doc_python_reader_reads_engine_files() {
        let python = std::process::Command::new("python3").arg("--version").output();
        if !python.is_ok_and(|o| o.status.success()) {
            eprintln!("python3 not found: skipped");
            return;
        }
        let dir = std::env::temp_dir().join(format!("gmq-fuzz-doc-reader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = EngineConfig::new(&dir);
        cfg.defaults.segment_bytes = 8192;
        let engine =
            Engine::open_with(cfg, Arc::new(gmq_engine::io::RealFs), Arc::new(FixedClock(EPOCH_MS))).expect("open");
        let q = engine.queue("orders").expect("queue").log().clone();
        for i in 0..120u32 {
            let m = generated_message(i as usize, &vec![i as u8; (i as usize * 37) % 500], (i % 64) as u8);
            if i % 10 == 9 {
                q.append_batch(&[m.clone(), m]).expect("append").wait().expect("stored");
            } else {
                q.append(&m).expect("append").wait().expect("stored");
            }
        }
        let want: String = q
            .read(0, usize::MAX, usize::MAX)
            .expect("read")
            .iter()
            .map(|r| {
                let m = &r.message;
                let hex: String = m.payload.iter().map(|b| format!("{b:02x}")).collect();
                format!("{} {:?} {:?} {:?} {:?} {:?} {hex}\n", r.offset, m.ttl_ms, m.event, m.key, m.msg_id, m.headers)
            })
            .collect();
        assert!(q.segment_count() > 2, "want several segments");
        drop(q);
        engine.close().expect("close");

        let doc = doc();
        let code = doc
            .split("## Reference reader (Python)")
            .nth(1)
            .and_then(|s| s.split("```python\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("python block in the doc");
        let harness = r#"
def opt(v):
    return "None" if v is None else ("Some(%d)" % v if isinstance(v, int) else 'Some("%s")' % v)
for r in read_queue(QDIR):
    hs = "[" + ", ".join('("%s", "%s")' % kv for kv in r["headers"]) + "]"
    print(r["offset"], opt(r["ttl_ms"]), opt(r["event"]), opt(r["key"]), opt(r["msg_id"]), hs, r["payload"].hex())
import os
for n in sorted(os.listdir(QDIR)):
    if n.endswith(".idx"):
        assert read_index(os.path.join(QDIR, n), int(n[:20])) is not None, n
assert read_checkpoint(os.path.join(QDIR, "checkpoint"))["clean"]
"#;
        let qdir = dir.join("queues").join("orders");
        // Run as a module would be imported: not its command-line entry point.
        let code = code.replace("if __name__ == \"__main__\":", "if False:");
        let script = format!("{code}\nQDIR = {:?}\n{harness}", qdir.display().to_string());
        let out = std::process::Command::new("python3").arg("-c").arg(&script).output().expect("run python3");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "python reader failed:\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }

    #[test]
    fn generated_segment_is_valid() {
        // Even first byte: 3 records; payload lengths 2, 0, 1; the second
        // record continues its batch, the third has every optional field.
        let input = [6u8, 2, 0, 0, 0, b'h', b'i', 0, 0, 1, 1, 1, 0, 62, 0, b'x', 0xde, 0xad];
        let (seg, checkpoint) = build_segment(&input);
        assert_eq!(checkpoint, None);
        let (walked, stop) = naive_walk(&seg);
        assert_eq!(walked.iter().map(|w| w.offset).collect::<Vec<_>>(), vec![0, 2, 3]);
        assert_eq!(stop, Some(seg.len() - 2));
        segment_recovery(&input);
    }
}

/// The group state log's replay on arbitrary bytes (behind a valid header,
/// or raw when the first byte is odd). Never panics; replay is monotonic
/// (a prefix cut at any record boundary never has a group further along
/// than the whole file); a snapshot of the result replays to the same state.
pub fn group_state(data: &[u8]) {
    use gmq_engine::state;
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        let mut b = state::encode_header(7);
        b.extend_from_slice(rest);
        b
    };
    let _ = state::check_header(&bytes, 7);
    let full = state::replay(&bytes);
    let valid = usize::try_from(full.valid_len).unwrap_or(usize::MAX).min(bytes.len());
    // Record boundaries of the valid prefix.
    let mut at = state::STATE_HEADER_LEN.min(valid);
    let mut cuts = vec![at];
    while at < valid {
        match state::decode(&bytes[at..valid]) {
            Ok(Some((_, size))) => {
                at += size;
                cuts.push(at);
            }
            _ => break,
        }
    }
    assert_eq!(at, valid, "the valid prefix ends on a record boundary");
    let done = |r: &state::Replay, g: &str, o: u64| {
        r.groups.get(g).is_some_and(|s| o < s.floor.max(r.low) || s.acked.contains(o)) || o < r.low
    };
    for &cut in cuts.iter().step_by((cuts.len() / 16).max(1)) {
        let part = state::replay(&bytes[..cut]);
        assert!(part.low <= full.low);
        for (name, g) in &part.groups {
            let f = &full.groups[name];
            assert!(g.floor <= f.floor.max(full.low), "group {name} further along in a prefix");
            for r in g.acked.ranges() {
                for o in r.take(64) {
                    assert!(done(&full, name, o), "group {name}: offset {o} done in a prefix only");
                }
            }
        }
    }
    if full.groups.keys().any(|n| n.len() > u16::MAX as usize) {
        return;
    }
    let snap = state::snapshot(7, full.low, full.groups.iter().map(|(n, g)| (n.as_str(), g.gid, g.floor, &g.acked)));
    let again = state::replay(&snap);
    assert_eq!(again.damage, None);
    assert_eq!(again.low, full.low);
    assert_eq!(again.groups.len(), full.groups.len());
    for (name, g) in &full.groups {
        let a = &again.groups[name];
        assert_eq!((a.floor, a.acked.ranges().collect::<Vec<_>>()), (g.floor, g.acked.ranges().collect::<Vec<_>>()));
    }
}
