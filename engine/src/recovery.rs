//! Opening a queue after a stop or a crash, and the offline checks.
//!
//! Recovery policy. Sealed segments are trusted at open (they were synced in
//! full before the next segment began) and checked by every read and by
//! [`verify`]. The active segment is scanned from its last checkpoint (a clean
//! close leaves nothing to scan). Where the scan stops short:
//!
//! * **torn tail** — nothing valid follows the bad bytes: they are a write the
//!   crash cut off, never acknowledged (an acknowledged record was synced, and
//!   syncs cover everything before them). The file is truncated to the end of
//!   the last complete batch, synced, and the byte count logged.
//! * **corruption** — a valid record follows the bad bytes, or the damage is
//!   in a sealed segment: truncating would throw acknowledged records away, so
//!   the queue is quarantined with the file and byte position, until
//!   [`repair`] keeps every valid record.
//!
//! Offline tools open read-only: [`verify`] never writes; [`repair`] writes
//! only when not asked for a dry run, and each rewritten segment replaces the
//! old one atomically (write new, sync, rename, sync directory).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::files::Env;
use crate::format::{self, DecodeError, HeaderError, RecordRef, SEGMENT_HEADER_LEN};
use crate::io::{OpenMode, VFile, Vfs};
use crate::log::{create_segment, index_push, Recovered};

/// Result of scanning a run of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// End of the last complete batch: everything before it is valid.
    pub valid_end: u64,
    /// Offset of the last record of the last complete batch.
    pub last_offset: Option<u64>,
    /// Records in complete batches.
    pub records: u64,
    /// Where and why decoding stopped before the end; `None` when it reached
    /// the end (possibly inside an unfinished batch: see `valid_end`).
    pub stop: Option<(u64, String)>,
    /// The scan stopped at a whole, checksummed record (out of offset order,
    /// or fields that do not parse): no torn write makes one, so it is
    /// corruption wherever it is.
    pub stop_at_record: bool,
}

const CHUNK: usize = 1 << 20;

/// Scans records in `[start, end)` of `file`. The first record's offset must
/// be at least `min_offset`, each later one greater than the one before.
/// `visit` sees every valid record with its position, including those of an
/// unfinished batch. Memory use is bounded by one chunk or one record.
pub fn scan(
    file: &dyn VFile,
    start: u64,
    end: u64,
    min_offset: u64,
    mut visit: impl FnMut(u64, &RecordRef<'_>),
) -> io::Result<Scan> {
    let mut s = Scan { valid_end: start, last_offset: None, records: 0, stop: None, stop_at_record: false };
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_pos = start;
    let mut pos = start;
    let mut prev: Option<u64> = None;
    let mut pending = 0u64;
    while pos < end {
        let rel = (pos - buf_pos) as usize;
        if rel + format::RECORD_HEADER_LEN > buf.len() && buf_pos + (buf.len() as u64) < end {
            refill(file, &mut buf, &mut buf_pos, pos, end, CHUNK)?;
            continue;
        }
        match format::decode_record(&buf[rel..]) {
            Ok(r) => {
                if r.offset < min_offset || prev.is_some_and(|p| r.offset <= p) {
                    let after = prev.map_or(min_offset, |p| p + 1);
                    s.stop = Some((pos, format!("record offset {} where at least {after} was expected", r.offset)));
                    s.stop_at_record = true;
                    break;
                }
                visit(pos, &r);
                prev = Some(r.offset);
                pos += r.size as u64;
                pending += 1;
                if !r.batch_continues() {
                    s.valid_end = pos;
                    s.last_offset = Some(r.offset);
                    s.records += pending;
                    pending = 0;
                }
            }
            Err(DecodeError::Short { needed }) => {
                if buf_pos + (buf.len() as u64) < end {
                    let want = needed.unwrap_or(format::RECORD_HEADER_LEN).max(CHUNK);
                    refill(file, &mut buf, &mut buf_pos, pos, end, want)?;
                    continue;
                }
                s.stop = Some((pos, "record cut short by the end of the file".into()));
                break;
            }
            Err(DecodeError::End) => {
                s.stop = Some((pos, "zero bytes where a record header should be".into()));
                break;
            }
            Err(DecodeError::Invalid(reason)) => {
                s.stop = Some((pos, reason));
                break;
            }
            Err(DecodeError::Malformed(reason)) => {
                s.stop = Some((pos, format!("checksummed record does not parse: {reason}")));
                s.stop_at_record = true;
                break;
            }
        }
    }
    Ok(s)
}

fn refill(file: &dyn VFile, buf: &mut Vec<u8>, buf_pos: &mut u64, pos: u64, end: u64, want: usize) -> io::Result<()> {
    let n = (end - pos).min(want as u64) as usize;
    buf.resize(n, 0);
    file.read_exact_at(buf, pos)?;
    *buf_pos = pos;
    Ok(())
}

/// Regions larger than this are not searched: they are reported as possibly
/// holding a valid record, which errs towards quarantine, not truncation.
const SEARCH_MAX_BYTES: u64 = 256 << 20;
/// Checksum work allowed per search. Crafted bytes can make nearly every
/// position look like the start of a long record; past this budget the
/// search gives the same conservative answer, so opening a damaged queue
/// stays fast.
const SEARCH_CRC_BUDGET: usize = 512 << 20;

/// The position of the first valid record in `[from, end)` whose offset is
/// at least `min_offset`, searching byte by byte. When the region is too
/// large or the search too costly, answers `Some(from)`: "something valid
/// may follow", which quarantines rather than truncates.
pub fn find_valid_after(file: &dyn VFile, from: u64, end: u64, min_offset: u64) -> io::Result<Option<u64>> {
    if from >= end {
        return Ok(None);
    }
    if end - from > SEARCH_MAX_BYTES {
        return Ok(Some(from));
    }
    let mut buf = vec![0u8; (end - from) as usize];
    file.read_exact_at(&mut buf, from)?;
    Ok(find_valid_in(&buf, min_offset).map(|i| from + i as u64))
}

/// [`find_valid_after`] over bytes in memory.
pub fn find_valid_in(buf: &[u8], min_offset: u64) -> Option<usize> {
    let min_total = format::RECORD_HEADER_LEN + format::RECORD_FIXED_LEN;
    let mut budget = SEARCH_CRC_BUDGET;
    let mut i = 0usize;
    while i + min_total <= buf.len() {
        let len = u32::from_le_bytes([buf[i + 4], buf[i + 5], buf[i + 6], buf[i + 7]]) as usize;
        let fits = (format::RECORD_FIXED_LEN..=format::MAX_RECORD_BODY).contains(&len)
            && len <= buf.len() - i - format::RECORD_HEADER_LEN;
        if fits && format::read_u64(buf, i + 8) >= min_offset {
            if budget < len {
                return Some(i);
            }
            budget -= len;
            if format::decode_record(&buf[i..]).is_ok() {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

/// How a scan of a segment that stopped short of its end is to be read.
#[derive(Debug)]
enum Tail {
    /// The scan reached the end with every batch complete.
    Clean,
    /// A write a crash cut off at `at`: truncate to the scan's `valid_end`.
    Torn { at: u64, reason: String },
    /// Damage at `at` that must not be truncated away.
    Corrupt { at: u64, reason: String },
}

/// The one place that tells a torn tail from corruption, for recovery and
/// `verify` alike. `synced` is how many bytes a checkpoint says were synced;
/// `resume` the least offset a record after the damage may have.
fn classify(file: &dyn VFile, s: &Scan, len: u64, synced: Option<u64>, resume: u64) -> io::Result<Tail> {
    if s.valid_end >= len {
        return Ok(Tail::Clean);
    }
    let (at, reason) = match &s.stop {
        Some((p, r)) => (*p, r.clone()),
        None => (s.valid_end, "unfinished batch at the end of the file".to_owned()),
    };
    if s.stop_at_record {
        // A torn write cannot produce a matching checksum.
        return Ok(Tail::Corrupt { at, reason });
    }
    if let Some(v) = synced.filter(|&v| at < v) {
        return Ok(Tail::Corrupt {
            at,
            reason: format!("{reason}; the checkpoint says the first {v} bytes were synced"),
        });
    }
    if s.stop.is_some() {
        if let Some(q) = find_valid_after(file, at + 1, len, resume)? {
            return Ok(Tail::Corrupt { at, reason: format!("{reason}; a valid record follows at byte {q}") });
        }
    }
    Ok(Tail::Torn { at, reason })
}

/// What recovery did to one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Bytes of the active segment scanned.
    pub scanned_bytes: u64,
    /// Bytes of torn tail truncated.
    pub torn_bytes: u64,
}

struct Listing {
    segments: Vec<u64>,
    indexes: BTreeSet<u64>,
    leftovers: Vec<String>,
}

fn list(vfs: &dyn Vfs, dir: &Path) -> io::Result<Listing> {
    let mut l = Listing { segments: Vec::new(), indexes: BTreeSet::new(), leftovers: Vec::new() };
    for n in vfs.read_dir(dir)? {
        if let Some(b) = format::parse_file_name(&n, format::SEGMENT_SUFFIX) {
            l.segments.push(b);
        } else if let Some(b) = format::parse_file_name(&n, format::INDEX_SUFFIX) {
            l.indexes.insert(b);
        } else if n.ends_with(format::TMP_SUFFIX) {
            l.leftovers.push(n);
        }
    }
    l.segments.sort_unstable();
    Ok(l)
}

/// Opens a queue directory, classifying and handling damage as the module
/// documentation says. `hint` is `(segment base, length)` of the durable log
/// as a fail-stopped queue left it: bytes past it were never acknowledged.
pub(crate) fn recover_queue(
    env: &Env,
    dir: &Path,
    name: &str,
    hint: Option<(u64, u64)>,
) -> Result<(Recovered, RecoveryStats)> {
    let vfs = env.vfs.as_ref();
    let ioe = |op: &'static str| move |e: io::Error| Error::io(name, op, e);
    let corrupt = |file: &Path, position: u64, reason: String| Error::Corrupt {
        queue: name.to_owned(),
        file: file.to_path_buf(),
        position,
        reason,
    };
    let l = list(vfs, dir).map_err(ioe("listing the queue directory"))?;
    for n in &l.leftovers {
        let _ = vfs.remove_file(&dir.join(n));
    }
    for b in l.indexes.iter().filter(|b| !l.segments.contains(b)) {
        let _ = vfs.remove_file(&dir.join(format::index_file_name(*b)));
    }
    let mut stats = RecoveryStats::default();
    let Some((&base, sealed_bases)) = l.segments.split_last() else {
        create_segment(env, dir, 0, env.clock.now_ms()).map_err(ioe("creating a segment"))?;
        let r = Recovered {
            clean: false,
            sealed: Vec::new(),
            active_base: 0,
            active_len: SEGMENT_HEADER_LEN,
            active_index: Vec::new(),
            next_offset: 0,
        };
        return Ok((r, stats));
    };
    let mut sealed = Vec::with_capacity(sealed_bases.len());
    for &b in sealed_bases {
        let p = dir.join(format::segment_file_name(b));
        let len = vfs.open(&p, OpenMode::Read).and_then(|f| f.len()).map_err(ioe("opening a segment"))?;
        if len < SEGMENT_HEADER_LEN {
            return Err(corrupt(&p, len, "sealed segment is shorter than its header".into()));
        }
        sealed.push((b, len));
    }

    let path = dir.join(format::segment_file_name(base));
    let file = env.files.get(&path).map_err(ioe("opening the active segment"))?;
    let mut flen = file.len().map_err(ioe("reading the active segment"))?;
    if let Some((hb, hlen)) = hint {
        if hb == base && flen > hlen {
            file.set_len(hlen).and_then(|()| file.sync_data()).map_err(ioe("truncating after a failure"))?;
            tracing::warn!(
                queue = name,
                bytes = flen - hlen,
                "dropped unacknowledged bytes written before a storage failure"
            );
            stats.torn_bytes += flen - hlen;
            flen = hlen;
        }
    }
    let ck = vfs
        .read_file(&dir.join(format::CHECKPOINT_FILE))
        .ok()
        .and_then(|b| format::decode_checkpoint(&b))
        .filter(|c| c.segment == base && c.valid_len >= SEGMENT_HEADER_LEN && c.next_offset >= base);
    if let Some(c) = ck.filter(|c| c.valid_len > flen) {
        let synced = c.valid_len;
        return Err(corrupt(
            &path,
            flen,
            format!("segment ends at byte {flen}, but its checkpoint says {synced} bytes were synced"),
        ));
    }
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = (flen.min(SEGMENT_HEADER_LEN)) as usize;
    file.read_exact_at(&mut h[..got], 0).map_err(ioe("reading the active segment"))?;
    match format::decode_segment_header(&h[..got], base) {
        Ok(_) => {}
        Err(HeaderError::Missing) => {
            if ck.is_some_and(|c| c.valid_len > SEGMENT_HEADER_LEN) {
                return Err(corrupt(
                    &path,
                    0,
                    "segment header missing, yet its checkpoint says records were synced".into(),
                ));
            }
            if let Some(q) = find_valid_after(file.as_ref(), SEGMENT_HEADER_LEN, flen, base).map_err(ioe("scanning"))? {
                return Err(corrupt(&path, 0, format!("segment header missing, yet a valid record is at byte {q}")));
            }
            // The segment was created but its header never reached the disk.
            file.set_len(0)
                .and_then(|()| file.write_at(&format::encode_segment_header(base, env.clock.now_ms()), 0))
                .and_then(|()| file.sync_data())
                .map_err(ioe("rewriting a segment header"))?;
            vfs.sync_dir(dir).map_err(ioe("syncing the queue directory"))?;
            stats.torn_bytes += flen.saturating_sub(SEGMENT_HEADER_LEN);
            let r = Recovered {
                clean: false,
                sealed,
                active_base: base,
                active_len: SEGMENT_HEADER_LEN,
                active_index: Vec::new(),
                next_offset: base,
            };
            return Ok((r, stats));
        }
        Err(HeaderError::Bad(reason)) => return Err(corrupt(&path, 0, reason)),
    }

    let mut start = (SEGMENT_HEADER_LEN, Vec::new(), base);
    if let Some(c) = ck {
        if let Some(entries) = load_entries(vfs, &dir.join(format::index_file_name(base)), base, c.valid_len) {
            start = (c.valid_len, entries, c.next_offset);
        }
    }
    let (from, mut entries, mut next) = start;
    // A checkpoint covering the whole file: after a clean close, or a synced
    // periodic one (it covers only synced bytes) with nothing written since.
    // Either way nothing is unsynced and nothing needs scanning.
    if ck.is_some() && from == flen {
        let clean = ck.is_some_and(|c| c.clean);
        let r =
            Recovered { clean, sealed, active_base: base, active_len: flen, active_index: entries, next_offset: next };
        return Ok((r, stats));
    }
    // An unclean stop: what the dead process wrote may sit in the page cache
    // only (a directory entry whose sync failed, records never synced). Make
    // it durable before anything is built on it or shown to a reader.
    file.sync_data().map_err(ioe("syncing the active segment"))?;
    vfs.sync_dir(dir).map_err(ioe("syncing the queue directory"))?;
    let s = scan(file.as_ref(), from, flen, next, |pos, r| index_push(&mut entries, pos, r.offset))
        .map_err(ioe("scanning the active segment"))?;
    stats.scanned_bytes = flen - from;
    let resume = s.last_offset.map_or(next, |o| o + 1);
    match classify(file.as_ref(), &s, flen, ck.map(|c| c.valid_len), resume).map_err(ioe("scanning"))? {
        Tail::Clean => {}
        Tail::Corrupt { at, reason } => return Err(corrupt(&path, at, reason)),
        Tail::Torn { .. } => {
            let dropped = flen - s.valid_end;
            file.set_len(s.valid_end).and_then(|()| file.sync_data()).map_err(ioe("truncating a torn tail"))?;
            tracing::warn!(queue = name, file = %path.display(), at = s.valid_end, bytes = dropped, "truncated a torn tail");
            stats.torn_bytes += dropped;
        }
    }
    entries.retain(|&(_, p)| p < s.valid_end);
    if let Some(o) = s.last_offset {
        next = o + 1;
    }
    let r = Recovered {
        clean: false,
        sealed,
        active_base: base,
        active_len: s.valid_end,
        active_index: entries,
        next_offset: next,
    };
    Ok((r, stats))
}

fn load_entries(vfs: &dyn Vfs, path: &Path, base: u64, covered: u64) -> Option<Vec<(u64, u64)>> {
    let b = vfs.read_file(path).ok()?;
    match format::check_index(&b, base) {
        Ok((n, c)) if c == covered => Some((0..n).map(|i| format::index_entry(&b, i)).collect()),
        _ => None,
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// Records that cannot be read: the queue is quarantined until repair.
    Corrupt,
    /// An unfinished write at the end of the active segment; the next open
    /// truncates it (nothing acknowledged is lost).
    TornTail,
    /// A damaged or inconsistent index (derived; rebuilt from the log).
    Index,
    /// An unreadable or inconsistent checkpoint (derived; ignored on open).
    Checkpoint,
    /// A leftover temporary file.
    Leftover,
    /// Damage in the group state log (`groups`): a torn tail (the next open
    /// truncates it), or damage before valid records (the queue is
    /// quarantined; repair keeps the valid prefix, so at worst messages are
    /// delivered again).
    GroupState,
    /// The queue's settings file is missing its data or does not parse
    /// (the queue is quarantined; repair cannot guess settings).
    Settings,
}

/// One problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Queue.
    pub queue: String,
    /// File.
    pub file: PathBuf,
    /// Byte position in the file, when it has one.
    pub position: Option<u64>,
    /// Kind.
    pub kind: FindingKind,
    /// Human-readable detail.
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.file.display())?;
        if let Some(p) = self.position {
            write!(f, ": byte {p}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What [`verify`] saw.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Queues checked.
    pub queues: usize,
    /// Segments checked.
    pub segments: usize,
    /// Valid records seen.
    pub records: u64,
    /// Problems; empty when the directory is clean.
    pub findings: Vec<Finding>,
}

/// The queue directories under a data directory.
pub fn queue_dirs(vfs: &dyn Vfs, data_dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let root = data_dir.join(format::QUEUES_DIR);
    if !vfs.exists(&root) {
        return Ok(Vec::new());
    }
    Ok(vfs.read_dir(&root)?.into_iter().filter(|n| crate::valid_name(n)).map(|n| (n.clone(), root.join(n))).collect())
}

/// Checks every byte of a data directory (or of one queue) without writing:
/// segment headers, every record's checksum and offset order, indexes against
/// the log, checkpoints against the segments.
pub fn verify(vfs: &dyn Vfs, data_dir: &Path, only: Option<&str>) -> io::Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    for (name, dir) in queue_dirs(vfs, data_dir)? {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        rep.queues += 1;
        verify_queue(vfs, &name, &dir, &mut rep)?;
    }
    Ok(rep)
}

fn verify_queue(vfs: &dyn Vfs, name: &str, dir: &Path, rep: &mut VerifyReport) -> io::Result<()> {
    let l = list(vfs, dir)?;
    let mut add = |file: PathBuf, position: Option<u64>, kind, detail: String| {
        rep.findings.push(Finding { queue: name.to_owned(), file, position, kind, detail });
    };
    for n in &l.leftovers {
        add(dir.join(n), None, FindingKind::Leftover, "temporary file left by an interrupted write".into());
    }
    let settings_path = dir.join(crate::SETTINGS_FILE);
    let mut incarnation = None;
    if vfs.exists(&settings_path) {
        let text = String::from_utf8_lossy(&vfs.read_file(&settings_path)?).into_owned();
        match crate::QueueSettings::decode(&text).and_then(|(st, inc)| st.validate(name).map(|()| inc)) {
            Ok(inc) => incarnation = Some(inc),
            Err(e) => add(settings_path.clone(), None, FindingKind::Settings, e),
        }
    }
    let state_path = dir.join(crate::state::STATE_FILE);
    // The replayed group state, checked against the log once it is scanned.
    let mut replayed = None;
    if let (Some(inc), true) = (incarnation, vfs.exists(&state_path)) {
        let b = vfs.read_file(&state_path)?;
        match crate::state::check_header(&b, inc) {
            crate::state::HeaderCheck::Ok => {
                let r = crate::state::replay(&b);
                let damage = r.damage.clone();
                replayed = Some(r);
                if let Some((pos, reason, follows)) = damage {
                    let what = if follows { "damage before valid records" } else { "torn tail" };
                    add(state_path.clone(), Some(pos), FindingKind::GroupState, format!("{what}: {reason}"));
                }
            }
            crate::state::HeaderCheck::Stale(old) => add(
                state_path.clone(),
                Some(0),
                FindingKind::GroupState,
                format!("belongs to an earlier queue of this name (incarnation {old}, not {inc}); the next open starts afresh"),
            ),
            crate::state::HeaderCheck::Bad(reason) => {
                add(state_path.clone(), Some(0), FindingKind::GroupState, format!("header: {reason}"))
            }
        }
    }
    let cp = dir.join(format::CHECKPOINT_FILE);
    let ckpt = if vfs.exists(&cp) { format::decode_checkpoint(&vfs.read_file(&cp)?) } else { None };
    let mut min_offset = 0u64;
    let mut lens = Vec::new();
    for (i, &base) in l.segments.iter().enumerate() {
        rep.segments += 1;
        let active = i + 1 == l.segments.len();
        let path = dir.join(format::segment_file_name(base));
        let f = vfs.open(&path, OpenMode::Read)?;
        let len = f.len()?;
        lens.push((base, len));
        let mut h = vec![0u8; len.min(SEGMENT_HEADER_LEN) as usize];
        f.read_exact_at(&mut h, 0)?;
        if let Err(e) = format::decode_segment_header(&h, base) {
            let torn = active
                && e == HeaderError::Missing
                && find_valid_after(f.as_ref(), SEGMENT_HEADER_LEN, len, base)?.is_none();
            let (kind, detail) = match e {
                _ if torn => (FindingKind::TornTail, "segment header never written; rewritten on open".to_owned()),
                HeaderError::Missing => (FindingKind::Corrupt, "segment header missing".to_owned()),
                HeaderError::Bad(r) => (FindingKind::Corrupt, r),
            };
            add(path.clone(), Some(0), kind, detail);
            continue;
        }
        let limit = l.segments.get(i + 1).copied();
        let s = scan(f.as_ref(), SEGMENT_HEADER_LEN, len, min_offset.max(base), |_, _| {})?;
        rep.records += s.records;
        if let (Some(last), Some(lim)) = (s.last_offset, limit) {
            if last >= lim {
                add(
                    path.clone(),
                    None,
                    FindingKind::Corrupt,
                    format!("holds offset {last}, but the next segment starts at {lim}"),
                );
            }
        }
        let resume = s.last_offset.map_or(min_offset.max(base), |o| o + 1);
        let synced = ckpt.filter(|c| c.segment == base).map(|c| c.valid_len);
        match classify(f.as_ref(), &s, len, synced, resume)? {
            Tail::Clean => {}
            // Only the active segment can end in an unfinished write.
            Tail::Torn { at, reason } if active => add(
                path.clone(),
                Some(at),
                FindingKind::TornTail,
                format!("{reason}; {} bytes will be truncated on open", len - s.valid_end),
            ),
            Tail::Torn { at, reason } | Tail::Corrupt { at, reason } => {
                add(path.clone(), Some(at), FindingKind::Corrupt, reason)
            }
        }
        if active && synced.is_some_and(|v| v > len) {
            // As open sees it: synced bytes are missing.
            add(
                path.clone(),
                Some(len),
                FindingKind::Corrupt,
                "segment is shorter than its checkpoint says was synced".into(),
            );
        }
        if let Some(o) = s.last_offset {
            min_offset = o + 1;
        }
        let ip = dir.join(format::index_file_name(base));
        if l.indexes.contains(&base) {
            if let Some(problem) = check_index_file(vfs, &ip, f.as_ref(), base, len)? {
                add(ip, None, FindingKind::Index, problem);
            }
        } else if !active {
            // Every sealed segment gets one when it is sealed or rewritten.
            add(ip, None, FindingKind::Index, "index missing (the engine rebuilds it on first read)".into());
        }
    }
    if let (Some(r), Some(&(last_base, _))) = (&replayed, lens.last()) {
        let end = last_base.max(min_offset);
        if ahead_of_log(r, end) {
            add(
                state_path.clone(),
                None,
                FindingKind::GroupState,
                format!("{ACKS_PAST_END} ({end}): the log lost its unsynced tail; the next open forgets those acks"),
            );
        }
    }
    if vfs.exists(&cp) {
        match ckpt {
            None => add(cp, None, FindingKind::Checkpoint, "checkpoint unreadable (ignored on open)".into()),
            Some(c) => match lens.iter().find(|(b, _)| *b == c.segment) {
                // A checkpoint longer than its segment is reported on the segment.
                Some(_) => {}
                None if lens.last().is_some_and(|(b, _)| *b > c.segment) => {}
                None => {
                    add(cp, None, FindingKind::Checkpoint, format!("checkpoint names missing segment {}", c.segment))
                }
            },
        }
    }
    Ok(())
}

const ACKS_PAST_END: &str = "acks past the end of the log";

/// Group state that counts offsets at or past the log's end as done (the
/// open clamps it: those offsets go to new messages).
fn ahead_of_log(r: &crate::state::Replay, end: u64) -> bool {
    r.low > end || r.groups.values().any(|g| g.floor > end || g.acked.ranges().any(|x| x.end > end))
}

/// The offset the next record of a queue would get, as the log says.
fn log_end(vfs: &dyn Vfs, dir: &Path) -> io::Result<Option<u64>> {
    let Some(&base) = list(vfs, dir)?.segments.last() else { return Ok(None) };
    let f = vfs.open(&dir.join(format::segment_file_name(base)), OpenMode::Read)?;
    let len = f.len()?;
    let s = scan(f.as_ref(), SEGMENT_HEADER_LEN.min(len), len, base, |_, _| {})?;
    Ok(Some(s.last_offset.map_or(base, |o| o + 1)))
}

/// The state log with everything at or past `end` forgotten, as the open does.
fn clamped_state(b: &[u8], incarnation: u64, end: u64) -> Vec<u8> {
    let mut r = crate::state::replay(b);
    r.low = r.low.min(end);
    for g in r.groups.values_mut() {
        g.floor = g.floor.min(end);
        g.acked.remove_from(end);
    }
    crate::state::snapshot(incarnation, r.low, r.groups.iter().map(|(n, g)| (n.as_str(), g.gid, g.floor, &g.acked)))
}

fn check_index_file(vfs: &dyn Vfs, path: &Path, seg: &dyn VFile, base: u64, len: u64) -> io::Result<Option<String>> {
    let b = vfs.read_file(path)?;
    let (n, covered) = match format::check_index(&b, base) {
        Ok(x) => x,
        Err(e) => return Ok(Some(e)),
    };
    if covered > len {
        return Ok(Some(format!("index covers {covered} bytes, segment holds {len}")));
    }
    let mut hdr = [0u8; format::RECORD_HEADER_LEN + format::RECORD_FIXED_LEN];
    for i in 0..n {
        let (o, p) = format::index_entry(&b, i);
        let ok = seg.read_exact_at(&mut hdr, p).is_ok() && format::read_u64(&hdr, format::RECORD_HEADER_LEN) == o;
        if !ok {
            return Ok(Some(format!("entry {i} (offset {o} at byte {p}) does not point at that record")));
        }
    }
    Ok(None)
}

/// What [`repair`] did, or would do with `dry_run`.
#[derive(Debug, Clone, Default)]
pub struct RepairReport {
    /// One line per action, in order.
    pub actions: Vec<String>,
    /// Valid records kept in rewritten segments.
    pub records_kept: u64,
    /// Bytes dropped as unreadable.
    pub bytes_dropped: u64,
}

/// Repairs a data directory (or one queue) so that it opens cleanly, keeping
/// every valid record: damaged segments are rewritten with their valid
/// records only (resynchronising past damage), indexes and checkpoints that
/// do not check out are removed (they are rebuilt), leftovers are removed.
/// With `dry_run` nothing is written and the report says what would be done.
/// The caller must hold the data directory's lock.
pub fn repair(vfs: &dyn Vfs, data_dir: &Path, only: Option<&str>, dry_run: bool) -> io::Result<RepairReport> {
    let v = verify(vfs, data_dir, only)?;
    let mut rep = RepairReport::default();
    let mut touched_dirs = BTreeSet::new();
    // Sealed segments whose index must be written anew: rewritten ones, and
    // those whose index is missing or bad.
    let mut reindex = BTreeSet::new();
    for f in &v.findings {
        let dir = crate::io::parent(&f.file).to_path_buf();
        match f.kind {
            FindingKind::Corrupt | FindingKind::TornTail => {
                if touched_dirs.contains(&(dir.clone(), f.file.clone())) {
                    continue;
                }
                touched_dirs.insert((dir.clone(), f.file.clone()));
                rewrite_segment(vfs, &f.file, dry_run, &mut rep)?;
                reindex.insert(f.file.clone());
                // The index and the checkpoint no longer match the log.
                for derived in [f.file.with_extension("idx"), dir.join(format::CHECKPOINT_FILE)] {
                    if vfs.exists(&derived) {
                        rep.actions.push(format!("remove {}", derived.display()));
                        if !dry_run {
                            vfs.remove_file(&derived)?;
                        }
                    }
                }
            }
            FindingKind::GroupState => {
                let b = vfs.read_file(&f.file)?;
                let keep = match crate::state::check_header(&b, 0) {
                    crate::state::HeaderCheck::Bad(_) => None,
                    _ => Some(crate::state::replay(&b).valid_len),
                };
                match keep {
                    Some(_) if f.detail.starts_with(ACKS_PAST_END) => {
                        let text =
                            String::from_utf8_lossy(&vfs.read_file(&dir.join(crate::SETTINGS_FILE))?).into_owned();
                        let (Ok((_, inc)), Some(end)) = (crate::QueueSettings::decode(&text), log_end(vfs, &dir)?)
                        else {
                            continue;
                        };
                        rep.actions.push(format!(
                            "{}: forget acks at or past offset {end}, where the log ends (as the next open would)",
                            f.file.display()
                        ));
                        if !dry_run {
                            vfs.write_atomic(&f.file, &clamped_state(&b, inc, end))?;
                        }
                    }
                    Some(len) if f.detail.starts_with("damage") || f.detail.starts_with("torn") => {
                        rep.actions.push(format!(
                            "{}: keep the valid prefix of {len} bytes (acks after it are forgotten: those messages are delivered again)",
                            f.file.display()
                        ));
                        if !dry_run {
                            vfs.write_atomic(&f.file, &b[..len as usize])?;
                        }
                    }
                    Some(_) => {}
                    None => {
                        rep.actions.push(format!(
                            "remove {} (unreadable header: every group starts again from the oldest message)",
                            f.file.display()
                        ));
                        if !dry_run {
                            vfs.remove_file(&f.file)?;
                        }
                    }
                }
            }
            FindingKind::Settings => {
                rep.actions.push(format!("cannot repair {}: restore it by hand ({})", f.file.display(), f.detail));
            }
            FindingKind::Index => {
                reindex.insert(f.file.with_extension(&format::SEGMENT_SUFFIX[1..]));
                if vfs.exists(&f.file) {
                    rep.actions.push(format!("remove {} ({})", f.file.display(), f.detail));
                    if !dry_run {
                        vfs.remove_file(&f.file)?;
                    }
                }
            }
            FindingKind::Checkpoint | FindingKind::Leftover => {
                if vfs.exists(&f.file) {
                    rep.actions.push(format!("remove {} ({})", f.file.display(), f.detail));
                    if !dry_run {
                        vfs.remove_file(&f.file)?;
                    }
                }
            }
        }
        if !dry_run {
            vfs.sync_dir(&dir)?;
        }
    }
    for seg in reindex {
        rebuild_index(vfs, &seg, dry_run, &mut rep)?;
    }
    Ok(rep)
}

/// Writes the index of a sealed segment from its records (the active one's
/// is rebuilt by the next open).
fn rebuild_index(vfs: &dyn Vfs, seg: &Path, dry_run: bool, rep: &mut RepairReport) -> io::Result<()> {
    let dir = crate::io::parent(seg);
    let l = list(vfs, dir)?;
    let name = seg.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(base) = format::parse_file_name(name, format::SEGMENT_SUFFIX) else {
        return Ok(());
    };
    if l.segments.last() == Some(&base) || !l.segments.contains(&base) {
        return Ok(());
    }
    let idx = dir.join(format::index_file_name(base));
    let action = format!("write {} from the segment's records", idx.display());
    if dry_run {
        rep.actions.push(action);
        return Ok(());
    }
    let f = vfs.open(seg, OpenMode::Read)?;
    let len = f.len()?;
    let mut entries = Vec::new();
    let s = scan(f.as_ref(), SEGMENT_HEADER_LEN, len, base, |pos, r| index_push(&mut entries, pos, r.offset))?;
    // A segment that still does not scan clean gets no index (the engine
    // builds one from what it can read).
    if s.stop.is_none() && s.valid_end == len {
        vfs.write_atomic(&idx, &format::encode_index(base, len, &entries))?;
        rep.actions.push(action);
    }
    Ok(())
}

fn rewrite_segment(vfs: &dyn Vfs, path: &Path, dry_run: bool, rep: &mut RepairReport) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(base) = format::parse_file_name(name, format::SEGMENT_SUFFIX) else {
        return Ok(());
    };
    let f = vfs.open(path, OpenMode::Read)?;
    let len = f.len()?;
    let mut dropped = 0u64;
    let mut hdr = vec![0u8; len.min(SEGMENT_HEADER_LEN) as usize];
    f.read_exact_at(&mut hdr, 0)?;
    let created = format::decode_segment_header(&hdr, base).ok();
    if created.is_none() {
        rep.actions.push(format!("{}: rewrite the segment header", path.display()));
    }
    // (position, size, offset, batch continues) of every record kept, and
    // the first one's timestamp.
    let mut keep: Vec<(u64, usize, u64, bool)> = Vec::new();
    let mut first_ts = None;
    walk(
        f.as_ref(),
        len,
        base,
        |p, r| {
            first_ts.get_or_insert(r.timestamp_ms);
            keep.push((p, r.size, r.offset, r.batch_continues()))
        },
        |at, end, reason| {
            let tail = if end == len { " at the tail" } else { "" };
            rep.actions.push(format!("{}: drop bytes {at}..{end}{tail} ({reason})", path.display()));
            dropped += end - at;
        },
    )?;
    // Records of a batch that never completed, at the very end, were never
    // acknowledged (recovery would drop them too): the rewritten segment
    // ends with a complete batch.
    let complete = keep.iter().rposition(|r| !r.3).map_or(0, |i| i + 1);
    if complete < keep.len() {
        let n = keep.len() - complete;
        rep.actions.push(format!("{}: drop an unfinished batch of {n} records at the tail", path.display()));
        keep.truncate(complete);
    }
    // The creation time orders retention by age: keep it, or take the first
    // record's time when the header is gone (never 0, which would make the
    // segment before this one look older than any max_age).
    let created = created.or(first_ts).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    });
    let mut out = format::encode_segment_header(base, created).to_vec();
    for &(p, size, _, _) in &keep {
        let mut b = vec![0u8; size];
        f.read_exact_at(&mut b, p)?;
        out.extend_from_slice(&b);
    }
    let kept = keep.len() as u64;
    rep.actions.push(format!("{}: rewrite keeping {kept} valid records", path.display()));
    rep.records_kept += kept;
    rep.bytes_dropped += dropped;
    if !dry_run {
        vfs.write_atomic(path, &out)?;
    }
    Ok(())
}

/// Walks the records of a segment's body, resynchronising past damage as
/// repair does: `on_record` sees each valid record (a record of a batch that
/// never completed included), `on_damage` each unreadable byte range.
fn walk(
    f: &dyn VFile,
    len: u64,
    base: u64,
    mut on_record: impl FnMut(u64, &RecordRef<'_>),
    mut on_damage: impl FnMut(u64, u64, &str),
) -> io::Result<()> {
    let mut pos = SEGMENT_HEADER_LEN;
    let mut min = base;
    while pos < len {
        let mut last = None;
        let s = scan(f, pos, len, min, |p, r| {
            last = Some(r.offset);
            on_record(p, r);
        })?;
        if let Some(o) = last {
            min = o + 1;
        }
        let Some((at, reason)) = s.stop else { break };
        let resume = find_valid_after(f, at + 1, len, min)?;
        let end = resume.unwrap_or(len);
        on_damage(at, end, &reason);
        match resume {
            Some(q) => pos = q,
            None => break,
        }
    }
    Ok(())
}

/// What [`walk_segment`] finds in a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentItem {
    /// A valid record at a byte position.
    Record {
        /// Byte position of the record in the file.
        position: u64,
        /// Whether the record continues a batch whose end is not written yet.
        batch_continues: bool,
        /// The record.
        record: format::Record,
    },
    /// Bytes that are not valid records (`reason` says why decoding stopped).
    Damage {
        /// First damaged byte.
        start: u64,
        /// First byte after the damage (the next valid record or the end).
        end: u64,
        /// Why.
        reason: String,
    },
}

/// Reads a whole segment file for inspection and export, in order: every
/// valid record, and every damaged range between them (past damage, reading
/// resumes at the next record that checks out, as [`repair`] keeps it). A bad
/// segment header is reported as damage at byte 0. Memory use is bounded by
/// one chunk of the file; returns the file's length.
pub fn walk_segment(vfs: &dyn Vfs, path: &Path, base: u64, mut visit: impl FnMut(SegmentItem)) -> io::Result<u64> {
    let f = vfs.open(path, OpenMode::Read)?;
    let len = f.len()?;
    let mut h = vec![0u8; len.min(SEGMENT_HEADER_LEN) as usize];
    f.read_exact_at(&mut h, 0)?;
    if let Err(e) = format::decode_segment_header(&h, base) {
        let reason = match e {
            HeaderError::Missing => "segment header missing".to_owned(),
            HeaderError::Bad(r) => r,
        };
        visit(SegmentItem::Damage { start: 0, end: len.min(SEGMENT_HEADER_LEN), reason });
    }
    // Both callbacks feed one visitor, in file order.
    let visit = std::cell::RefCell::new(&mut visit);
    walk(
        f.as_ref(),
        len,
        base,
        |position, r| {
            let item = match r.to_record() {
                Ok(record) => SegmentItem::Record { position, batch_continues: r.batch_continues(), record },
                Err(e) => SegmentItem::Damage {
                    start: position,
                    end: position + r.size as u64,
                    reason: format!("record fields do not parse: {e:?}"),
                },
            };
            (visit.borrow_mut())(item);
        },
        |start, end, reason| (visit.borrow_mut())(SegmentItem::Damage { start, end, reason: reason.to_owned() }),
    )?;
    Ok(len)
}

/// Takes the data directory's lock, as the engine does on open, so offline
/// tools never write under a live server.
pub fn lock_data_dir(vfs: &dyn Vfs, data_dir: &Path) -> Result<Box<dyn std::fmt::Debug + Send + Sync>> {
    vfs.create_dir_all(data_dir).map_err(|e| Error::io("", "creating the data directory", e))?;
    vfs.lock(&data_dir.join(format::LOCK_FILE)).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            Error::Locked(data_dir.to_path_buf())
        } else {
            Error::io("", "locking the data directory", e)
        }
    })
}

/// Reads every stored record of a segment file (for inspection tools):
/// `(position, record)` up to the first damage, and the scan outcome.
pub fn read_segment_file(vfs: &dyn Vfs, path: &Path, base: u64) -> io::Result<(Vec<(u64, format::Record)>, Scan)> {
    let f: Arc<dyn VFile> = vfs.open(path, OpenMode::Read)?;
    let len = f.len()?;
    let mut out = Vec::new();
    let s = scan(f.as_ref(), SEGMENT_HEADER_LEN.min(len), len, base, |p, r| {
        if let Ok(rec) = r.to_record() {
            out.push((p, rec));
        }
    })?;
    Ok((out, s))
}
