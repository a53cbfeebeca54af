//! One queue's log: a directory of segment files, the active one appended by
//! the group committer ([`LogSink`]), all of them read by offset.
//!
//! Visibility: readers see a record only once it is stored under the queue's
//! fsync policy (after the covering fdatasync under `always`, after the write
//! otherwise), and an atomic batch all at once. So no reader ever sees a
//! record that a crash could take back under `always`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::commit::{Append, Batch, GroupCommit, Sink};
use crate::error::{Error, Result};
use crate::files::Env;
use crate::format::{self, DecodeError, Message, Record, INDEX_INTERVAL, SEGMENT_HEADER_LEN};
use crate::io::{Mapped, VFile};
use crate::signal::Signal;

/// When an append counts as stored. What survives what:
///
/// | policy | process crash (`kill -9`) | power loss / kernel crash |
/// |---|---|---|
/// | `Always` | every acknowledged append | every acknowledged append |
/// | `Interval(ms)` | every acknowledged append | all but about the last `ms` of appends (the sync is due `ms` after the previous one and runs on the shared committer pool, which can be late when busy) |
/// | `Never` | every acknowledged append | whatever the OS had written back (and all up to the last checkpoint) |
///
/// Under `Always` the acknowledgement waits for an `fdatasync` that covers the
/// record, shared by every append of the batch (group commit). Under the other
/// two it waits for the `write` into the page cache only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fdatasync before acknowledging (default).
    #[default]
    Always,
    /// Acknowledge after the write; fdatasync at most this many ms later.
    Interval(u64),
    /// Acknowledge after the write; the OS writes back when it likes
    /// (the engine still syncs at segment rolls, checkpoints and close).
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    /// `always`, `never` or `interval:MS`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(FsyncPolicy::Interval(ms)),
                _ => Err(format!("fsync policy {s:?}: expected always, never or interval:MS (MS > 0)")),
            },
        }
    }
}

/// Log settings of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Fsync policy. Default `always`.
    pub fsync: FsyncPolicy,
    /// A new segment starts when the active one would grow past this many
    /// bytes. Default 64 MiB. A single batch larger than this still goes into
    /// one segment.
    pub segment_bytes: u64,
    /// A recovery checkpoint is written after this many bytes, so a crash
    /// rescans at most this much of the active segment. Default 16 MiB.
    pub checkpoint_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { fsync: FsyncPolicy::Always, segment_bytes: 64 << 20, checkpoint_bytes: 16 << 20 }
    }
}

impl LogConfig {
    /// Checks the settings, naming the one that is out of range.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.segment_bytes < 4096 {
            return Err(format!("segment_bytes = {} is below the minimum of 4096", self.segment_bytes));
        }
        if self.checkpoint_bytes < 4096 {
            return Err(format!("checkpoint_bytes = {} is below the minimum of 4096", self.checkpoint_bytes));
        }
        if self.fsync == FsyncPolicy::Interval(0) {
            return Err("fsync interval must be at least 1 ms".into());
        }
        Ok(())
    }
}

/// A sealed segment as readers see it.
pub(crate) struct SealedSeg {
    pub(crate) len: u64,
    index: OnceLock<Mapped>,
    /// The header, checked once before the first read: `Err` names the damage.
    header: OnceLock<std::result::Result<(), String>>,
}

impl std::fmt::Debug for SealedSeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSeg").field("len", &self.len).field("index_loaded", &self.index.get().is_some()).finish()
    }
}

impl SealedSeg {
    pub(crate) fn new(len: u64, index: Option<Mapped>) -> Self {
        let cell = OnceLock::new();
        if let Some(m) = index {
            let _ = cell.set(m);
        }
        SealedSeg { len, index: cell, header: OnceLock::new() }
    }
}

/// What readers may see.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) sealed: BTreeMap<u64, SealedSeg>,
    pub(crate) active_base: u64,
    pub(crate) active_len: u64,
    pub(crate) active_index: Vec<(u64, u64)>,
    pub(crate) next_offset: u64,
}

/// State shared by a queue's readers and its writer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) cfg: LogConfig,
    pub(crate) env: Arc<Env>,
    pub(crate) view: RwLock<View>,
    quarantine: OnceLock<Error>,
    /// Notified when records become visible.
    pub(crate) signal: Arc<Signal>,
    /// Set when the queue is shut (deleted or reopened): this handle must
    /// no longer delete or replace files, which may belong to a new queue.
    shut: std::sync::atomic::AtomicBool,
    /// Readers hold it shared; deleting or replacing a sealed segment holds
    /// it exclusively, so a read never meets a file that changed under its plan.
    swap: RwLock<()>,
}

impl Shared {
    pub(crate) fn seg_path(&self, base: u64) -> PathBuf {
        self.dir.join(format::segment_file_name(base))
    }
    pub(crate) fn idx_path(&self, base: u64) -> PathBuf {
        self.dir.join(format::index_file_name(base))
    }
    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }
    fn view_mut(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|e| e.into_inner())
    }
    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |e| Error::io(&self.name, op, e)
    }
    fn corrupt(&self, file: &Path, position: u64, reason: String) -> Error {
        let e = Error::Corrupt { queue: self.name.clone(), file: file.to_path_buf(), position, reason };
        let _ = self.quarantine.set(e.clone());
        tracing::error!(queue = %self.name, error = %e, "queue quarantined");
        e
    }
}

/// Where a read starts and ends in one segment.
struct ReadPlan {
    path: PathBuf,
    start: u64,
    end: u64,
    next_base: Option<u64>,
}

/// One queue's log. Cheap to share (`Arc`); every method takes `&self`.
#[derive(Debug)]
pub struct QueueLog {
    sh: Arc<Shared>,
    gc: Arc<GroupCommit<LogSink>>,
}

/// How the recovered active segment stands, handed from recovery to the log.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The checkpoint on disk is a clean one covering the whole log.
    pub(crate) clean: bool,
    pub(crate) sealed: Vec<(u64, u64)>,
    pub(crate) active_base: u64,
    pub(crate) active_len: u64,
    pub(crate) active_index: Vec<(u64, u64)>,
    pub(crate) next_offset: u64,
}

impl QueueLog {
    pub(crate) fn open(name: &str, dir: PathBuf, cfg: LogConfig, env: Arc<Env>, r: Recovered) -> Arc<QueueLog> {
        let sealed = r.sealed.iter().map(|&(base, len)| (base, SealedSeg::new(len, None))).collect();
        let view = View {
            sealed,
            active_base: r.active_base,
            active_len: r.active_len,
            active_index: r.active_index,
            next_offset: r.next_offset,
        };
        let sh = Arc::new(Shared {
            name: name.to_owned(),
            dir,
            cfg,
            env: env.clone(),
            view: RwLock::new(view),
            quarantine: OnceLock::new(),
            signal: Arc::new(Signal::default()),
            swap: RwLock::new(()),
            shut: std::sync::atomic::AtomicBool::new(false),
        });
        let last_entry = sh.view().active_index.last().map_or(0, |e| e.1);
        let sink = LogSink {
            sh: sh.clone(),
            base: r.active_base,
            len: r.active_len,
            synced_len: r.active_len,
            next: r.next_offset,
            synced_next: r.next_offset,
            last_entry_pos: last_entry,
            last_sync: Instant::now(),
            ckpt_len: r.active_len,
            clean_on_disk: r.clean,
            failed: None,
        };
        let gc = GroupCommit::new(sink, r.next_offset, env.pool.clone());
        Arc::new(QueueLog { sh, gc })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.sh.name
    }

    /// The queue's log settings.
    pub fn config(&self) -> &LogConfig {
        &self.sh.cfg
    }

    fn check_usable(&self) -> Result<()> {
        if let Some(e) = self.sh.quarantine.get() {
            return Err(e.clone());
        }
        Ok(())
    }

    /// Appends one message. The returned [`Append`] completes when the record
    /// is stored under the queue's fsync policy.
    pub fn append(&self, m: &Message) -> Result<Append> {
        self.append_batch(std::slice::from_ref(m))
    }

    /// Appends messages atomically: after any crash, all of them or none are
    /// in the log, and readers never see part of the batch.
    pub fn append_batch(&self, msgs: &[Message]) -> Result<Append> {
        self.check_usable()?;
        if msgs.is_empty() {
            return Err(Error::InvalidRecord("empty batch".into()));
        }
        let mut total = 0usize;
        for m in msgs {
            total += format::encoded_len(m).map_err(Error::InvalidRecord)?;
        }
        let now = self.sh.env.clock.now_ms();
        let n = msgs.len();
        self.gc.append(n as u64, |b: &mut Batch, first: u64| {
            b.buf.reserve(total);
            for (i, m) in msgs.iter().enumerate() {
                let pos = b.buf.len();
                if b.marks.last().is_none_or(|&(_, p)| pos - p >= INDEX_INTERVAL as usize) {
                    b.marks.push((first + i as u64, pos));
                }
                let cont = if i + 1 < n { format::attrs::BATCH_CONT } else { 0 };
                format::encode_record(&mut b.buf, first + i as u64, now, m, cont);
            }
        })
    }

    /// Offset of the oldest segment's base: no retained record is older.
    pub fn first_offset(&self) -> u64 {
        let v = self.sh.view();
        v.sealed.keys().next().copied().unwrap_or(v.active_base)
    }

    /// The offset after the last stored (visible) record.
    pub fn next_offset(&self) -> u64 {
        self.sh.view().next_offset
    }

    /// The offset the next append gets (appends in flight included).
    pub fn assigned_offset(&self) -> u64 {
        self.gc.next_offset()
    }

    /// Bytes held by the queue's segments.
    pub fn bytes(&self) -> u64 {
        let v = self.sh.view();
        v.sealed.values().map(|s| s.len).sum::<u64>() + v.active_len
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.sh.view().sealed.len() + 1
    }

    /// Reads up to `max_records` stored records with offset `>= from`, in
    /// offset order, stopping early once `max_bytes` of payload are read (at
    /// least one record is returned when one is available).
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        self.check_usable()?;
        let _swap = self.sh.swap.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut from = from;
        while out.len() < max_records && bytes < max_bytes {
            let Some(plan) = self.plan(from)? else { break };
            self.read_segment(&plan, from, max_records, max_bytes, &mut out, &mut bytes)?;
            match plan.next_base {
                Some(b) => from = from.max(b),
                None => break,
            }
        }
        Ok(out)
    }

    fn plan(&self, from: u64) -> Result<Option<ReadPlan>> {
        let v = self.sh.view();
        // Nothing is retained below the oldest segment's base.
        let from = from.max(v.sealed.keys().next().copied().unwrap_or(v.active_base));
        if from >= v.next_offset {
            return Ok(None);
        }
        if from >= v.active_base {
            let start = lookup(&v.active_index, from);
            return Ok(Some(ReadPlan {
                path: self.sh.seg_path(v.active_base),
                start,
                end: v.active_len,
                next_base: None,
            }));
        }
        let Some((&base, seg)) = v.sealed.range(..=from).next_back() else { return Ok(None) };
        let path = self.sh.seg_path(base);
        // Sealed segments are trusted at open; their header is checked here,
        // once, before the first read relies on it.
        if let Err(reason) = seg.header.get_or_init(|| self.check_header(&path, base)) {
            return Err(self.sh.corrupt(&path, 0, reason.clone()));
        }
        let next_base = v.sealed.range(base + 1..).next().map_or(v.active_base, |(b, _)| *b);
        let idx = seg.index.get_or_init(|| self.load_index(base, seg.len));
        let start = lookup_mapped(idx.as_ref().as_ref(), from);
        Ok(Some(ReadPlan { path, start, end: seg.len, next_base: Some(next_base) }))
    }

    fn check_header(&self, path: &Path, base: u64) -> std::result::Result<(), String> {
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        let f = self.sh.env.files.get(path).map_err(|e| format!("cannot open: {e}"))?;
        f.read_exact_at(&mut h, 0).map_err(|e| format!("cannot read the header: {e}"))?;
        match format::decode_segment_header(&h, base) {
            Ok(_) => Ok(()),
            Err(format::HeaderError::Missing) => Err("segment header missing".into()),
            Err(format::HeaderError::Bad(r)) => Err(r),
        }
    }

    /// Maps a sealed segment's index, or rebuilds it from the log when it is
    /// missing or does not check out (the log is the truth).
    fn load_index(&self, base: u64, len: u64) -> Mapped {
        let path = self.sh.idx_path(base);
        if let Ok(m) = self.sh.env.vfs.map(&path) {
            if matches!(format::check_index(m.as_ref().as_ref(), base), Ok((_, covered)) if covered == len) {
                return m;
            }
        }
        let mut entries = Vec::new();
        let clean = self
            .sh
            .env
            .files
            .get(&self.sh.seg_path(base))
            .ok()
            .and_then(|f| {
                crate::recovery::scan(f.as_ref(), SEGMENT_HEADER_LEN, len, base, |pos, r| {
                    index_push(&mut entries, pos, r.offset)
                })
                .ok()
            })
            .is_some_and(|s| s.valid_end == len && s.stop.is_none());
        let bytes = format::encode_index(base, len, &entries);
        if clean {
            if let Err(e) = self.sh.env.vfs.write_replace(&path, &bytes) {
                tracing::warn!(queue = %self.sh.name, error = %e, "cannot rewrite index file");
            }
        }
        Arc::new(bytes)
    }

    fn read_segment(
        &self,
        plan: &ReadPlan,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Record>,
        bytes: &mut usize,
    ) -> Result<()> {
        let file = self.sh.env.files.get(&plan.path).map_err(self.sh.io("opening a segment"))?;
        let mut pos = plan.start;
        let mut buf = Vec::new();
        while pos < plan.end && out.len() < max_records && *bytes < max_bytes {
            let want = (plan.end - pos).min(64 << 10) as usize;
            fill(file.as_ref(), &mut buf, pos, want).map_err(self.sh.io("reading a segment"))?;
            let mut at = 0usize;
            loop {
                match format::decode_record(&buf[at..]) {
                    Ok(r) => {
                        if r.offset >= from {
                            let rec = r.to_record().map_err(|e| self.bad(plan, pos + at as u64, e))?;
                            *bytes += rec.message.payload.len();
                            out.push(rec);
                            if out.len() >= max_records || *bytes >= max_bytes {
                                return Ok(());
                            }
                        }
                        at += r.size;
                        if pos + at as u64 >= plan.end {
                            break;
                        }
                    }
                    Err(DecodeError::Short { needed }) => {
                        let needed = needed.unwrap_or(format::RECORD_HEADER_LEN) as u64;
                        if pos + at as u64 + needed > plan.end {
                            return Err(self.bad(plan, pos + at as u64, DecodeError::Short { needed: None }));
                        }
                        if at == 0 {
                            // One record larger than the chunk: read it whole.
                            fill(file.as_ref(), &mut buf, pos, needed as usize)
                                .map_err(self.sh.io("reading a segment"))?;
                            continue;
                        }
                        break;
                    }
                    Err(e) => return Err(self.bad(plan, pos + at as u64, e)),
                }
            }
            pos += at as u64;
        }
        Ok(())
    }

    fn bad(&self, plan: &ReadPlan, pos: u64, e: DecodeError) -> Error {
        let reason = match e {
            DecodeError::Invalid(r) | DecodeError::Malformed(r) => r,
            DecodeError::End => "zero bytes where a stored record should be".into(),
            DecodeError::Short { .. } => "stored record runs past the end of the segment".into(),
        };
        self.sh.corrupt(&plan.path, pos, reason)
    }

    /// Deletes every sealed segment whose records all lie below `offset`,
    /// oldest first (so a crash leaves a contiguous log), then syncs the
    /// directory. Returns how many were deleted. The active segment stays.
    pub fn delete_segments_below(&self, offset: u64) -> Result<usize> {
        let _swap = self.sh.swap.write().unwrap_or_else(|e| e.into_inner());
        self.check_not_shut()?;
        let doomed: Vec<u64> = {
            let v = self.sh.view();
            let bases: Vec<u64> = v.sealed.keys().copied().chain([v.active_base]).collect();
            bases.windows(2).take_while(|w| w[1] <= offset).map(|w| w[0]).collect()
        };
        for &base in &doomed {
            let seg = self.sh.seg_path(base);
            self.sh.env.files.forget(&seg);
            self.sh.env.vfs.remove_file(&seg).map_err(self.sh.io("deleting a segment"))?;
            self.sh.view_mut().sealed.remove(&base);
            let _ = self.sh.env.vfs.remove_file(&self.sh.idx_path(base));
        }
        if !doomed.is_empty() {
            self.sh.env.vfs.sync_dir(&self.sh.dir).map_err(self.sh.io("syncing the queue directory"))?;
        }
        Ok(doomed.len())
    }

    /// Notified whenever records become visible.
    pub fn signal(&self) -> &Arc<Signal> {
        &self.sh.signal
    }

    /// `(base, bytes)` of every sealed segment, oldest first.
    pub fn sealed_segments(&self) -> Vec<(u64, u64)> {
        self.sh.view().sealed.iter().map(|(&b, s)| (b, s.len)).collect()
    }

    /// Base offset of the active segment.
    pub fn active_base(&self) -> u64 {
        self.sh.view().active_base
    }

    /// Path of the segment file with this base.
    pub fn segment_path(&self, base: u64) -> PathBuf {
        self.sh.seg_path(base)
    }

    /// When the segment with this base was created (its header's time).
    pub fn segment_created_ms(&self, base: u64) -> Result<u64> {
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        let path = self.sh.seg_path(base);
        let f = self.sh.env.files.get(&path).map_err(self.sh.io("opening a segment"))?;
        f.read_exact_at(&mut h, 0).map_err(self.sh.io("reading a segment header"))?;
        format::decode_segment_header(&h, base).map_err(|e| self.sh.corrupt(&path, 0, format!("segment header: {e:?}")))
    }

    /// Approximate bytes of the log from `offset` to its end (exact to the
    /// index interval, 4 KiB).
    pub fn bytes_from(&self, offset: u64) -> u64 {
        let v = self.sh.view();
        if offset >= v.active_base {
            return v.active_len - lookup(&v.active_index, offset).min(v.active_len);
        }
        let first = v.sealed.range(..=offset).next_back().map(|(&b, _)| b);
        let mut total = v.active_len - SEGMENT_HEADER_LEN;
        for (&b, s) in v.sealed.range(first.unwrap_or(0)..) {
            let start = match s.index.get() {
                Some(m) if Some(b) == first => lookup_mapped(m.as_ref().as_ref(), offset),
                _ => SEGMENT_HEADER_LEN,
            };
            total += s.len.saturating_sub(start);
        }
        total
    }

    /// Seals the active segment if it holds records, so that everything
    /// stored so far can be deleted segment by segment (purge).
    pub fn seal_active(&self) -> Result<()> {
        self.check_not_shut()?;
        self.gc.with_sink(|s| {
            s.guard(|s| {
                if s.len > SEGMENT_HEADER_LEN {
                    let next = s.next;
                    s.roll(next)?;
                }
                Ok(())
            })
        })
    }

    /// Replaces sealed segment `base` with `bytes` (a compacted copy that
    /// keeps every offset it still holds): a new file is written and synced,
    /// then renamed over the old one. A
    /// crash leaves the old segment or the new one, never a mix; the leftover
    /// temporary file is removed at the next open. The new index is written
    /// after the swap.
    pub fn replace_sealed(&self, base: u64, bytes: &[u8]) -> Result<()> {
        let _swap = self.sh.swap.write().unwrap_or_else(|e| e.into_inner());
        self.check_not_shut()?;
        if !self.sh.view().sealed.contains_key(&base) {
            return Err(Error::NotFound(format!("{} segment {base}", self.sh.name)));
        }
        let seg = self.sh.seg_path(base);
        let idx = self.sh.idx_path(base);
        if self.sh.env.vfs.exists(&idx) {
            self.sh.env.vfs.remove_file(&idx).map_err(self.sh.io("removing an index"))?;
        }
        self.sh.env.files.forget(&seg);
        self.sh.env.vfs.write_atomic(&seg, bytes).map_err(self.sh.io("replacing a segment"))?;
        self.sh.env.files.forget(&seg);
        // Derived, so not synced: a crash before it lands leaves no index,
        // which is rebuilt on first read.
        let entries = index_of_image(bytes);
        let _ = self.sh.env.vfs.write_replace(&idx, &format::encode_index(base, bytes.len() as u64, &entries));
        self.sh.view_mut().sealed.insert(base, SealedSeg::new(bytes.len() as u64, None));
        Ok(())
    }

    /// The first offset whose record was stored at or after `time_ms`, or
    /// the next offset if none was.
    pub fn offset_for_time(&self, time_ms: u64) -> Result<u64> {
        let mut from = self.first_offset();
        for (base, _) in self.sealed_segments().into_iter().rev() {
            if self.segment_created_ms(base)? <= time_ms {
                from = base;
                break;
            }
        }
        loop {
            let recs = self.read(from, 256, 1 << 20)?;
            let Some(last) = recs.last() else { return Ok(self.next_offset()) };
            if let Some(r) = recs.iter().find(|r| r.timestamp_ms >= time_ms) {
                return Ok(r.offset);
            }
            from = last.offset + 1;
        }
    }

    /// Waits for every append so far, syncs whatever is unsynced, and writes
    /// a checkpoint.
    pub fn flush(&self) -> Result<()> {
        self.gc.drain()?;
        self.gc.with_sink(|s| s.sync_and_checkpoint(false))
    }

    /// The failure that stopped this queue, if one did.
    pub fn failure(&self) -> Option<Error> {
        self.sh.quarantine.get().cloned().or_else(|| self.gc.failure())
    }

    /// Where the queue's durable log ends: `(active segment base, bytes)`.
    pub(crate) fn durable_hint(&self) -> (u64, u64) {
        self.gc.with_sink(|s| (s.base, s.synced_len.max(s.acked_len())))
    }

    /// Stops accepting appends, waits for those in flight, syncs and writes
    /// a clean checkpoint.
    pub(crate) fn close(&self) -> Result<()> {
        self.gc.close()?;
        self.gc.with_sink(|s| s.sync_and_checkpoint(true))
    }

    fn check_not_shut(&self) -> Result<()> {
        if self.sh.shut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Refuses appends from now on without writing anything (used when the
    /// queue is being deleted).
    pub(crate) fn shut(&self) {
        {
            let _swap = self.sh.swap.write().unwrap_or_else(|e| e.into_inner());
            self.sh.shut.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = self.gc.close();
    }
}

/// The index entries of a whole segment image (header included), up to the
/// first bytes that are not a record.
pub(crate) fn index_of_image(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut entries = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN as usize;
    while pos < bytes.len() {
        match format::decode_record(&bytes[pos..]) {
            Ok(r) => {
                index_push(&mut entries, pos as u64, r.offset);
                pos += r.size;
            }
            Err(_) => break,
        }
    }
    entries
}

/// Adds an index entry when `pos` is at least an interval past the last one.
pub(crate) fn index_push(entries: &mut Vec<(u64, u64)>, pos: u64, offset: u64) {
    if entries.last().is_none_or(|&(_, p)| pos >= p + INDEX_INTERVAL) {
        entries.push((offset, pos));
    }
}

/// Position of the last indexed record at or below `offset`, else the first.
fn lookup(entries: &[(u64, u64)], offset: u64) -> u64 {
    let i = entries.partition_point(|&(o, _)| o <= offset);
    if i == 0 {
        SEGMENT_HEADER_LEN
    } else {
        entries[i - 1].1
    }
}

fn lookup_mapped(idx: &[u8], offset: u64) -> u64 {
    let count = match format::check_index_header(idx) {
        Some(c) => c,
        None => return SEGMENT_HEADER_LEN,
    };
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if format::index_entry(idx, mid).0 <= offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        SEGMENT_HEADER_LEN
    } else {
        format::index_entry(idx, lo - 1).1
    }
}

fn fill(file: &dyn VFile, buf: &mut Vec<u8>, pos: u64, len: usize) -> std::io::Result<()> {
    buf.resize(len, 0);
    file.read_exact_at(buf, pos)
}

/// The active segment's writer: the [`Sink`] of the queue's group commit.
#[derive(Debug)]
pub(crate) struct LogSink {
    sh: Arc<Shared>,
    base: u64,
    len: u64,
    synced_len: u64,
    next: u64,
    synced_next: u64,
    last_entry_pos: u64,
    last_sync: Instant,
    ckpt_len: u64,
    /// The checkpoint on disk is clean and covers everything (so a close
    /// with nothing written since need not write it again).
    clean_on_disk: bool,
    failed: Option<Error>,
}

impl LogSink {
    /// Bytes written since the last sync.
    fn dirty(&self) -> bool {
        self.len != self.synced_len
    }

    fn acked_len(&self) -> u64 {
        if self.failed.is_some() && self.sh.cfg.fsync == FsyncPolicy::Always {
            self.synced_len
        } else {
            self.len
        }
    }

    fn file(&self) -> Result<Arc<dyn VFile>> {
        self.sh.env.files.get(&self.sh.seg_path(self.base)).map_err(self.sh.io("opening the active segment"))
    }

    fn sync(&mut self, file: &dyn VFile) -> Result<()> {
        file.sync_data().map_err(self.sh.io("syncing the active segment"))?;
        self.synced_len = self.len;
        self.synced_next = self.next;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn guard<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        if let Some(e) = &self.failed {
            return Err(Error::Poisoned { queue: self.sh.name.clone(), cause: e.to_string() });
        }
        let r = f(self);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn roll(&mut self, new_base: u64) -> Result<()> {
        let file = self.file()?;
        if self.dirty() {
            self.sync(file.as_ref())?;
        }
        let (old_base, old_len) = (self.base, self.len);
        let entries = self.sh.view().active_index.clone();
        let idx = format::encode_index(old_base, old_len, &entries);
        if let Err(e) = self.sh.env.vfs.write_replace(&self.sh.idx_path(old_base), &idx) {
            // Derived data: a missing index is rebuilt on first read.
            tracing::warn!(queue = %self.sh.name, error = %e, "cannot write index file");
        }
        create_segment(&self.sh.env, &self.sh.dir, new_base, self.sh.env.clock.now_ms())
            .map_err(self.sh.io("creating a segment"))?;
        {
            let mut v = self.sh.view_mut();
            v.sealed.insert(old_base, SealedSeg::new(old_len, Some(Arc::new(idx))));
            v.active_base = new_base;
            v.active_len = SEGMENT_HEADER_LEN;
            v.active_index.clear();
        }
        self.base = new_base;
        self.len = SEGMENT_HEADER_LEN;
        self.synced_len = SEGMENT_HEADER_LEN;
        self.ckpt_len = SEGMENT_HEADER_LEN;
        self.last_entry_pos = 0;
        self.write_checkpoint(false);
        tracing::debug!(queue = %self.sh.name, base = new_base, "rolled to a new segment");
        Ok(())
    }

    /// Writes the active index and checkpoint covering the synced prefix.
    /// Both are derived and checked on load. The periodic ones are synced
    /// (a few fsyncs per `checkpoint_bytes`, off the per-append path) so a
    /// power cut rescans at most `checkpoint_bytes`; the one a clean close
    /// writes is not, so closing 10 000 queues stays fast (if a power cut
    /// takes it, the next open scans the active segment instead).
    fn write_checkpoint(&mut self, clean: bool) {
        let entries: Vec<(u64, u64)> =
            self.sh.view().active_index.iter().copied().filter(|&(_, p)| p < self.synced_len).collect();
        let idx = format::encode_index(self.base, self.synced_len, &entries);
        let ck =
            format::Checkpoint { segment: self.base, valid_len: self.synced_len, next_offset: self.synced_next, clean };
        let vfs = &self.sh.env.vfs;
        let ck_path = self.sh.dir.join(format::CHECKPOINT_FILE);
        let ck_bytes = format::encode_checkpoint(&ck);
        let r = if clean {
            vfs.write_replace(&self.sh.idx_path(self.base), &idx).and_then(|()| vfs.write_replace(&ck_path, &ck_bytes))
        } else {
            vfs.write_atomic(&self.sh.idx_path(self.base), &idx).and_then(|()| vfs.write_atomic(&ck_path, &ck_bytes))
        };
        match r {
            Ok(()) => {
                self.ckpt_len = self.synced_len;
                self.clean_on_disk = clean;
            }
            Err(e) => tracing::warn!(queue = %self.sh.name, error = %e, "cannot write checkpoint"),
        }
    }

    pub(crate) fn sync_and_checkpoint(&mut self, clean: bool) -> Result<()> {
        self.guard(|s| {
            if s.dirty() {
                let f = s.file()?;
                s.sync(f.as_ref())?;
            }
            let current = s.synced_len == s.ckpt_len && s.len == s.synced_len;
            if !current || (clean && !s.clean_on_disk) {
                s.write_checkpoint(clean);
            }
            Ok(())
        })
    }

    fn commit_inner(&mut self, batch: &Batch) -> Result<Option<Instant>> {
        let cfg = self.sh.cfg;
        if self.len > SEGMENT_HEADER_LEN && self.len + batch.buf.len() as u64 > cfg.segment_bytes {
            self.roll(batch.first)?;
        }
        let file = self.file()?;
        let start = self.len;
        file.write_at(&batch.buf, start).map_err(self.sh.io("writing a batch"))?;
        self.len += batch.buf.len() as u64;
        self.next = batch.next;
        let mut fresh = Vec::new();
        for &(off, p) in &batch.marks {
            let pos = start + p as u64;
            if self.last_entry_pos == 0 || pos >= self.last_entry_pos + INDEX_INTERVAL {
                fresh.push((off, pos));
                self.last_entry_pos = pos;
            }
        }
        let mut deadline = None;
        match cfg.fsync {
            FsyncPolicy::Always => self.sync(file.as_ref())?,
            FsyncPolicy::Never => {}
            FsyncPolicy::Interval(ms) => {
                let due = self.last_sync + Duration::from_millis(ms);
                if Instant::now() >= due {
                    self.sync(file.as_ref())?;
                } else {
                    deadline = Some(due);
                }
            }
        }
        {
            let mut v = self.sh.view_mut();
            v.active_len = self.len;
            v.next_offset = batch.next;
            v.active_index.extend(fresh);
        }
        self.sh.signal.notify();
        if self.len.saturating_sub(self.ckpt_len) >= cfg.checkpoint_bytes {
            if self.dirty() {
                self.sync(file.as_ref())?;
                deadline = None;
            }
            self.write_checkpoint(false);
        }
        Ok(deadline)
    }
}

impl Sink for LogSink {
    fn commit(&mut self, batch: &Batch) -> Result<Option<Instant>> {
        self.guard(|s| s.commit_inner(batch))
    }

    fn tick(&mut self) -> Result<Option<Instant>> {
        self.guard(|s| {
            if s.dirty() {
                let f = s.file()?;
                s.sync(f.as_ref())?;
            }
            Ok(None)
        })
    }
}

/// Creates a segment file durably: header written and synced, directory synced.
pub(crate) fn create_segment(env: &Env, dir: &Path, base: u64, now_ms: u64) -> std::io::Result<()> {
    let path = dir.join(format::segment_file_name(base));
    env.files.forget(&path);
    let f = env.vfs.open(&path, crate::io::OpenMode::CreateTruncate)?;
    f.write_at(&format::encode_segment_header(base, now_ms), 0)?;
    f.sync_data()?;
    env.vfs.sync_dir(dir)
}
