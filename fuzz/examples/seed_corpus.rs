//! Writes the seed corpus of both fuzz targets into `fuzz/corpus/`.
//!
//! `cargo run --example seed_corpus` (from `fuzz/`). The files are
//! deterministic: a segment written by the engine itself (on the simulated
//! disk, with a fixed clock) and damaged copies of it, single records, and
//! inputs in the generated form that `gmq_fuzz::build_segment` reads.

use std::path::Path;
use std::sync::Arc;

use gmq_engine::format::{self, attrs, Checkpoint, Message};
use gmq_engine::sim::SimFs;
use gmq_engine::{Engine, EngineConfig};
use gmq_fuzz::{FixedClock, EPOCH_MS, QUEUE};

fn full_message() -> Message {
    Message {
        ttl_ms: Some(5000),
        event: Some("order.created".into()),
        key: Some("order-17".into()),
        msg_id: Some("m-1".into()),
        headers: vec![("reply_to".into(), "replies.abc".into()), ("x".into(), String::new())],
        ..Message::new(&b"{\"id\":17}"[..])
    }
}

/// A segment as the engine writes it: three single appends (one with every
/// optional field) and an atomic batch of three.
fn engine_segment() -> Vec<u8> {
    let fs = SimFs::new(1);
    let mut cfg = EngineConfig::new(gmq_fuzz::DATA_DIR);
    cfg.committer_threads = 0;
    let engine = Engine::open_with(cfg, Arc::new(fs.clone()), Arc::new(FixedClock(EPOCH_MS))).expect("open");
    let q = engine.queue(QUEUE).expect("queue").log().clone();
    let mut pending = vec![
        q.append(&Message::new(&b"hello"[..])).expect("append"),
        q.append(&full_message()).expect("append"),
        q.append(&Message::new(vec![0xa5u8; 300])).expect("append"),
    ];
    let batch: Vec<Message> = (0..3).map(|i| Message::new(format!("batch item {i}").into_bytes())).collect();
    pending.push(q.append_batch(&batch).expect("append batch"));
    engine.run_committers(usize::MAX);
    for a in pending {
        a.wait().expect("stored");
    }
    drop(q);
    engine.close().expect("close");
    fs.contents(&gmq_fuzz::segment_path()).expect("segment exists")
}

/// Byte positions of the records of a valid segment.
fn record_starts(seg: &[u8]) -> Vec<usize> {
    let mut pos = format::SEGMENT_HEADER_LEN as usize;
    let mut out = Vec::new();
    while let Ok(r) = format::decode_record(&seg[pos..]) {
        out.push(pos);
        pos += r.size;
    }
    assert_eq!(pos, seg.len(), "engine segment has trailing bytes");
    out
}

fn record(offset: u64, m: &Message, extra: u8) -> Vec<u8> {
    let mut b = Vec::new();
    format::encode_record(&mut b, offset, EPOCH_MS, m, extra);
    b
}

/// A record around any body, with a correct length and checksum.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(body);
    let crc = crc32fast::hash(&b[4..]);
    b[..4].copy_from_slice(&crc.to_le_bytes());
    b
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).expect("write corpus file");
    println!("{}/{name}: {} bytes", dir.display(), data.len());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    let dir = root.join("record_decode");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let hello = record(0, &Message::new(&b"hello"[..]), 0);
    write(&dir, "record_empty_payload", &record(0, &Message::new(&b""[..]), 0));
    write(&dir, "record_hello", &hello);
    write(&dir, "record_every_field", &record(42, &full_message(), 0));
    write(&dir, "record_batch_cont", &record(7, &Message::new(&b"part 1 of 2"[..]), attrs::BATCH_CONT));
    write(&dir, "record_torn", &hello[..hello.len() - 1]);
    let mut flipped = hello.clone();
    flipped[20] ^= 0x10;
    write(&dir, "record_bit_flipped", &flipped);
    write(&dir, "end_of_log_zero_header", &[0; 8]);
    let ck = Checkpoint { segment: 0, valid_len: 4242, next_offset: 17, clean: true };
    write(&dir, "checkpoint_clean", &format::encode_checkpoint(&ck));
    write(&dir, "index_two_entries", &format::encode_index(100, 9000, &[(100, 32), (150, 4200)]));
    write(&dir, "segment_header", &format::encode_segment_header(0, EPOCH_MS));

    let dir = root.join("segment_recovery");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // Raw segments (their first byte, 0x89, is odd: used as they are).
    let seg = engine_segment();
    let starts = record_starts(&seg);
    write(&dir, "raw_engine_segment", &seg);
    write(&dir, "raw_header_only", &seg[..32]);
    write(&dir, "raw_torn_mid_record", &seg[..seg.len() - 5]);
    write(&dir, "raw_unfinished_batch", &seg[..starts[5]]);
    let mut padded = seg[..starts[3]].to_vec();
    padded.resize(padded.len() + 600, 0);
    write(&dir, "raw_zero_padded_tail", &padded);
    let mut bad = seg.clone();
    bad[starts[1] + 20] ^= 0x04;
    write(&dir, "raw_bit_flip_mid_log", &bad);
    let mut bad = seg.clone();
    bad[starts[5] + 12] ^= 0x80;
    write(&dir, "raw_bit_flip_last_record", &bad);
    let mut bad = seg.clone();
    bad[3] ^= 0x01;
    write(&dir, "raw_bad_magic", &bad);
    //   A record whose checksum holds but whose event field runs past its body.
    let mut bad = seg[..starts[1]].to_vec();
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&EPOCH_MS.to_le_bytes());
    body.push(attrs::EVENT);
    body.extend_from_slice(&100u16.to_le_bytes());
    body.extend_from_slice(b"xy");
    bad.extend_from_slice(&framed(&body));
    write(&dir, "raw_checksummed_unparsable_body", &bad);
    //   The same behind a bad magic: quarantined, then repaired.
    bad[5] ^= 0x20;
    write(&dir, "raw_bad_magic_then_unparsable_body", &bad);
    //   A well-formed record at the tail whose offset goes backwards.
    let mut bad = seg[..starts[2]].to_vec();
    bad.extend_from_slice(&record(1, &Message::new(&b"offset 1 again"[..]), 0));
    write(&dir, "raw_offset_goes_back_at_tail", &bad);
    // Generated form (even first byte): header, records from the control
    // bytes, then raw bytes.
    //   4 records: "hi"; an empty one continuing its batch (gap 1); "x" with
    //   every optional field; 3 bytes continuing a batch that never ends.
    let mut gen = vec![8u8];
    gen.extend_from_slice(&[2, 0, 0, 0, b'h', b'i']);
    gen.extend_from_slice(&[0, 0, 1, 1]);
    gen.extend_from_slice(&[1, 0, 62, 0, b'x']);
    gen.extend_from_slice(&[3, 0, 1, 2, 1, 2, 3]);
    write(&dir, "gen_unfinished_batch", &gen);
    //   2 records then garbage, then a valid record with a higher offset:
    //   corruption with a valid record after it.
    let mut gen = vec![4u8, 5, 0, 0, 0, b'a', b'b', b'c', b'd', b'e', 4, 0, 0, 0, b'w', b'x', b'y', b'z'];
    gen.extend_from_slice(&[0xff; 13]);
    gen.extend_from_slice(&record(9, &Message::new(&b"after the damage"[..]), 0));
    write(&dir, "gen_garbage_then_valid_record", &gen);
    //   1 record of 1000 bytes then a torn copy of the same record header.
    let mut gen = vec![2u8, 0xe8, 0x03, 0, 0];
    gen.extend_from_slice(&[0x5a; 1000]);
    gen.extend_from_slice(&record(1, &Message::new(vec![0x5au8; 1000]), 0)[..300]);
    write(&dir, "gen_torn_large_record", &gen);
    //   The unfinished-batch input again with a clean checkpoint over its
    //   first batch and a bit flipped under it: corruption, not a torn tail.
    let mut gen = vec![8u8 | 0x20 | 0x40 | 0x80];
    gen.extend_from_slice(&[2, 0, 0, 0, b'h', b'i']);
    gen.extend_from_slice(&[0, 0, 1, 1]);
    gen.extend_from_slice(&[1, 0, 62, 0, b'x']);
    gen.extend_from_slice(&[3, 0, 1, 2, 1, 2, 3]);
    gen.extend_from_slice(&[20, 0, 3]);
    write(&dir, "gen_checkpoint_then_bit_flip_under_it", &gen);
    //   A checkpoint over two records, then a torn third: still a torn tail.
    let mut gen = vec![6u8 | 0x20, 3, 0, 0, 0, b'o', b'n', b'e', 3, 0, 0, 0, b't', b'w', b'o'];
    gen.extend_from_slice(&record(2, &Message::new(&b"three"[..]), 0)[..20]);
    write(&dir, "gen_checkpoint_then_torn_record", &gen);
}
