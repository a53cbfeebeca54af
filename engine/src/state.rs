//! A queue's group state on disk: the `groups` file, an append-only log of
//! CRC-checked records — group created (with its start), acks (the new floor
//! and the offsets that became done), the queue's low mark (purge, overflow)
//! — written through the queue's group commit under its fsync policy, and
//! rewritten as a snapshot (new file, sync, rename) when it grows.
//!
//! Nothing is ever overwritten in place, so a torn write can only cut the
//! last records, which were not acknowledged. Replay is monotonic: floors
//! only rise and acked offsets are only added. The header carries the queue's
//! incarnation, so a file left by a deleted queue never applies to a new one.
//!
//! ```text
//! header  magic "\x89GMQGRP\n" | version u16 | 0 u16 | incarnation u64 | crc32 of the 20 bytes before
//! record  crc32 of what follows | len u32 | body (len bytes)
//! body    1 create | group id u32 | floor u64 | name len u16 | name
//!         2 acks   | group id u32 | floor u64 | count u32 | count × (start u64, end u64)
//!         3 low    | low u64
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::commit::{Batch, Sink};
use crate::error::{Error, Result};
use crate::files::Env;
use crate::log::FsyncPolicy;
use crate::ranges::RangeSet;

/// File name of the group state log in a queue directory.
pub const STATE_FILE: &str = "groups";
/// Magic number of the group state log.
pub const STATE_MAGIC: [u8; 8] = *b"\x89GMQGRP\n";
/// Format version of the group state log.
pub const STATE_VERSION: u16 = 1;
/// Header length.
pub const STATE_HEADER_LEN: usize = 24;
/// Largest record body accepted on replay.
const MAX_BODY: usize = 64 << 20;

/// One record of the state log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRec {
    /// A group was created with offsets below `floor` done.
    Create {
        /// Group id within the queue.
        gid: u32,
        /// Start.
        floor: u64,
        /// Group name.
        name: String,
    },
    /// Offsets of a group became done.
    Acks {
        /// Group id.
        gid: u32,
        /// The group's floor after them.
        floor: u64,
        /// The offsets, as ranges.
        ranges: Vec<Range<u64>>,
    },
    /// Everything below `low` is gone for every group.
    Low(u64),
}

/// The header bytes.
pub fn encode_header(incarnation: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(STATE_HEADER_LEN);
    h.extend_from_slice(&STATE_MAGIC);
    h.extend_from_slice(&STATE_VERSION.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&incarnation.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Appends one record.
pub fn encode(out: &mut Vec<u8>, r: &StateRec) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    match r {
        StateRec::Create { gid, floor, name } => {
            out.push(1);
            out.extend_from_slice(&gid.to_le_bytes());
            out.extend_from_slice(&floor.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        StateRec::Acks { gid, floor, ranges } => {
            out.push(2);
            out.extend_from_slice(&gid.to_le_bytes());
            out.extend_from_slice(&floor.to_le_bytes());
            out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
            for r in ranges {
                out.extend_from_slice(&r.start.to_le_bytes());
                out.extend_from_slice(&r.end.to_le_bytes());
            }
        }
        StateRec::Low(low) => {
            out.push(3);
            out.extend_from_slice(&low.to_le_bytes());
        }
    }
    let len = (out.len() - start - 8) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Groups `offsets` (any order) into ranges.
pub fn to_ranges(offsets: &[u64]) -> Vec<Range<u64>> {
    let mut v = offsets.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<Range<u64>> = Vec::new();
    for o in v {
        match out.last_mut() {
            Some(r) if r.end == o => r.end = o + 1,
            _ => out.push(o..o + 1),
        }
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.b.get(self.at..self.at + N)?;
        self.at += N;
        s.try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

/// Decodes the record at the start of `b`: `Ok(Some((record, size)))`,
/// `Ok(None)` at a clean end (no bytes, or zeros), `Err` naming the damage.
pub fn decode(b: &[u8]) -> std::result::Result<Option<(StateRec, usize)>, String> {
    if b.is_empty() || b.iter().take(8).all(|&x| x == 0) && b.len() >= 8 {
        return Ok(None);
    }
    if b.len() < 8 {
        return Err("short record header".into());
    }
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    if len == 0 || len > MAX_BODY {
        return Err(format!("implausible record length {len}"));
    }
    if b.len() < 8 + len {
        return Err("record runs past the end of the file".into());
    }
    let crc = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if crc32fast::hash(&b[4..8 + len]) != crc {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader { b: &b[8..8 + len], at: 0 };
    let bad = || "checksummed record does not parse".to_owned();
    let rec = match r.take::<1>().ok_or_else(bad)?[0] {
        1 => {
            let gid = r.u32().ok_or_else(bad)?;
            let floor = r.u64().ok_or_else(bad)?;
            let n = r.u16().ok_or_else(bad)? as usize;
            let name = r.b.get(r.at..r.at + n).ok_or_else(bad)?;
            r.at += n;
            let name = String::from_utf8(name.to_vec()).map_err(|_| bad())?;
            StateRec::Create { gid, floor, name }
        }
        2 => {
            let gid = r.u32().ok_or_else(bad)?;
            let floor = r.u64().ok_or_else(bad)?;
            let n = r.u32().ok_or_else(bad)? as usize;
            if n > len / 16 {
                return Err(bad());
            }
            let mut ranges = Vec::with_capacity(n);
            for _ in 0..n {
                let (s, e) = (r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
                if s >= e {
                    return Err(bad());
                }
                ranges.push(s..e);
            }
            StateRec::Acks { gid, floor, ranges }
        }
        3 => StateRec::Low(r.u64().ok_or_else(bad)?),
        k => return Err(format!("unknown record kind {k}")),
    };
    if r.at != len {
        return Err(bad());
    }
    Ok(Some((rec, 8 + len)))
}

/// A group as the state log leaves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Group id.
    pub gid: u32,
    /// Ack floor.
    pub floor: u64,
    /// Done offsets above the floor.
    pub acked: RangeSet,
}

/// What replaying a state log found.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Groups by name.
    pub groups: BTreeMap<String, GroupState>,
    /// The queue's low mark.
    pub low: u64,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// The damage that ended it, if any: `(position, reason, valid data follows)`.
    pub damage: Option<(u64, String, bool)>,
}

/// How a header checks out.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    /// Good, for this incarnation.
    Ok,
    /// Good, for another incarnation (left by a deleted queue).
    Stale(u64),
    /// Damaged.
    Bad(String),
}

/// Checks a state log header against the queue's incarnation.
pub fn check_header(b: &[u8], incarnation: u64) -> HeaderCheck {
    if b.len() < STATE_HEADER_LEN {
        return HeaderCheck::Bad("shorter than its header".into());
    }
    if b[..8] != STATE_MAGIC {
        return HeaderCheck::Bad("bad magic".into());
    }
    let crc = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
    if crc32fast::hash(&b[..20]) != crc {
        return HeaderCheck::Bad("header checksum mismatch".into());
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != STATE_VERSION {
        return HeaderCheck::Bad(format!("unsupported version {version}"));
    }
    let inc = u64::from_le_bytes(b[12..20].try_into().unwrap_or_default());
    if inc != incarnation {
        return HeaderCheck::Stale(inc);
    }
    HeaderCheck::Ok
}

/// Replays the records after the header. Stops at the first damage; says
/// whether a valid record follows it within 64 KiB (then it is not a torn
/// tail but corruption).
pub fn replay(b: &[u8]) -> Replay {
    let mut r = Replay { valid_len: STATE_HEADER_LEN as u64, ..Replay::default() };
    let mut ids: BTreeMap<u32, String> = BTreeMap::new();
    let mut at = STATE_HEADER_LEN.min(b.len());
    loop {
        match decode(&b[at..]) {
            // Zeros where a record should be are the end only if nothing
            // valid follows them (a zeroed block mid-file is damage).
            Ok(None) if at < b.len() && valid_follows(b, at) => {
                r.damage = Some((at as u64, "zero bytes where a record should be".into(), true));
                break;
            }
            Ok(None) => break,
            Ok(Some((rec, size))) => {
                apply(&mut r, &mut ids, rec);
                at += size;
                r.valid_len = at as u64;
            }
            Err(reason) => {
                r.damage = Some((at as u64, reason, valid_follows(b, at)));
                break;
            }
        }
    }
    r
}

/// Whether a valid record starts within 64 KiB after `at`. The checksums
/// tried are bounded (64 MiB of input in all): past that, the answer is yes,
/// which quarantines rather than truncates.
fn valid_follows(b: &[u8], at: usize) -> bool {
    let end = b.len().min(at + (64 << 10));
    let mut budget: usize = 64 << 20;
    for p in at + 1..end {
        let Some(h) = b.get(p..p + 8) else { break };
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if len == 0 || len > MAX_BODY || p + 8 + len > b.len() {
            continue;
        }
        if budget < len {
            return true;
        }
        budget -= len;
        if matches!(decode(&b[p..]), Ok(Some(_))) {
            return true;
        }
    }
    false
}

fn apply(r: &mut Replay, ids: &mut BTreeMap<u32, String>, rec: StateRec) {
    match rec {
        StateRec::Create { gid, floor, name } => {
            ids.insert(gid, name.clone());
            let g = r.groups.entry(name).or_default();
            g.gid = gid;
            g.floor = g.floor.max(floor);
        }
        StateRec::Acks { gid, floor, ranges } => {
            let Some(g) = ids.get(&gid).and_then(|n| r.groups.get_mut(n)) else { return };
            for rg in ranges {
                g.acked.insert(rg);
            }
            g.floor = g.floor.max(floor);
            g.acked.remove_below(g.floor);
            g.floor = g.acked.take_run_from(g.floor);
        }
        StateRec::Low(low) => r.low = r.low.max(low),
    }
}

/// A snapshot of the whole state, groups as `(name, id, floor, acked)`:
/// a fresh file's contents.
pub fn snapshot<'a>(
    incarnation: u64,
    low: u64,
    groups: impl IntoIterator<Item = (&'a str, u32, u64, &'a RangeSet)>,
) -> Vec<u8> {
    let mut out = encode_header(incarnation);
    if low > 0 {
        encode(&mut out, &StateRec::Low(low));
    }
    for (name, gid, floor, acked) in groups {
        encode(&mut out, &StateRec::Create { gid, floor, name: name.to_owned() });
        let ranges: Vec<Range<u64>> = acked.ranges().collect();
        for chunk in ranges.chunks(4096) {
            encode(&mut out, &StateRec::Acks { gid, floor, ranges: chunk.to_vec() });
        }
    }
    out
}

/// The state log's writer: the [`Sink`] of the queue's state group commit.
#[derive(Debug)]
pub(crate) struct StateSink {
    pub(crate) env: Arc<Env>,
    pub(crate) queue: String,
    pub(crate) path: PathBuf,
    pub(crate) fsync: FsyncPolicy,
    pub(crate) len: u64,
    pub(crate) synced_len: u64,
    pub(crate) last_sync: Instant,
    pub(crate) failed: bool,
}

impl StateSink {
    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |e| Error::io(&self.queue, op, e)
    }

    fn file(&self) -> Result<Arc<dyn crate::io::VFile>> {
        self.env.files.get(&self.path).map_err(self.io("opening the group state"))
    }

    fn guard<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        if self.failed {
            return Err(Error::Poisoned { queue: self.queue.clone(), cause: "an earlier group state failure".into() });
        }
        let r = f(self);
        self.failed = r.is_err();
        r
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        self.guard(|s| {
            if s.len != s.synced_len {
                s.file()?.sync_data().map_err(s.io("syncing the group state"))?;
                s.synced_len = s.len;
                s.last_sync = Instant::now();
            }
            Ok(())
        })
    }

    /// Replaces the file with `bytes` crash-safely (a snapshot).
    pub(crate) fn replace(&mut self, bytes: &[u8]) -> Result<()> {
        self.guard(|s| {
            s.env.files.forget(&s.path);
            s.env.vfs.write_atomic(&s.path, bytes).map_err(s.io("rewriting the group state"))?;
            s.len = bytes.len() as u64;
            s.synced_len = s.len;
            Ok(())
        })
    }

    /// Where the acknowledged state ends (after a failure, the unsynced
    /// tail under `always` was never acknowledged).
    pub(crate) fn acked_len(&self) -> u64 {
        if self.failed && self.fsync == FsyncPolicy::Always {
            self.synced_len
        } else {
            self.len
        }
    }
}

impl Sink for StateSink {
    fn commit(&mut self, batch: &Batch) -> Result<Option<Instant>> {
        self.guard(|s| {
            let f = s.file()?;
            f.write_at(&batch.buf, s.len).map_err(s.io("writing the group state"))?;
            s.len += batch.buf.len() as u64;
            let due = match s.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Never => false,
                FsyncPolicy::Interval(ms) => {
                    let due = s.last_sync + Duration::from_millis(ms);
                    if Instant::now() < due {
                        return Ok(Some(due));
                    }
                    true
                }
            };
            if due {
                f.sync_data().map_err(s.io("syncing the group state"))?;
                s.synced_len = s.len;
                s.last_sync = Instant::now();
            }
            Ok(None)
        })
    }

    fn tick(&mut self) -> Result<Option<Instant>> {
        self.sync().map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_replay_is_monotonic() {
        let mut b = encode_header(7);
        let recs = [
            StateRec::Create { gid: 1, floor: 5, name: "g".into() },
            StateRec::Acks { gid: 1, floor: 5, ranges: vec![6..8, 10..11] },
            StateRec::Acks { gid: 1, floor: 9, ranges: vec![5..6, 8..9] },
            StateRec::Low(3),
            StateRec::Acks { gid: 9, floor: 100, ranges: std::iter::once(1..2).collect() },
        ];
        for r in &recs {
            encode(&mut b, r);
        }
        let mut at = STATE_HEADER_LEN;
        for r in &recs {
            let (got, size) = decode(&b[at..]).unwrap().unwrap();
            assert_eq!(&got, r);
            at += size;
        }
        assert_eq!(check_header(&b, 7), HeaderCheck::Ok);
        assert_eq!(check_header(&b, 8), HeaderCheck::Stale(7));
        let rp = replay(&b);
        assert_eq!(rp.damage, None);
        let g = &rp.groups["g"];
        assert_eq!(g.floor, 9, "the recorded floor wins; 9 was never acked");
        assert_eq!(g.acked.ranges().collect::<Vec<_>>(), vec![10..11]);
        assert_eq!(rp.low, 3);
        // A torn last record: the prefix survives; a bit flip with valid
        // records after it is told apart.
        let torn = replay(&b[..b.len() - 3]);
        assert_eq!(torn.damage.as_ref().map(|d| d.2), Some(false));
        let mut flipped = b.clone();
        flipped[STATE_HEADER_LEN + 10] ^= 1;
        let c = replay(&flipped);
        assert_eq!(c.damage.as_ref().map(|d| (d.0, d.2)), Some((STATE_HEADER_LEN as u64, true)));
        // A zeroed record with valid ones after it is damage, not the end.
        let mut zeroed = b.clone();
        let (_, first) = decode(&b[STATE_HEADER_LEN..]).unwrap().unwrap();
        zeroed[STATE_HEADER_LEN..STATE_HEADER_LEN + first].fill(0);
        let z = replay(&zeroed);
        assert_eq!(z.damage.as_ref().map(|d| (d.0, d.2)), Some((STATE_HEADER_LEN as u64, true)));
        // Zeros at the very end are the end.
        let mut tail = b.clone();
        tail.extend_from_slice(&[0; 100]);
        assert_eq!(replay(&tail).damage, None);
    }
}
