//! A queue: its log plus everything a broker does with the messages —
//! consumer groups, leases and redelivery, acks persisted in the group state
//! log, dead-letter moves, TTL, length and size limits, `msg_id` dedup,
//! retention and compaction, and a signal for waiting consumers.
//!
//! Locking: one mutex (`st`) guards the queue's broker state. Appends to the
//! log and to the group state only *encode* under it (the committer threads
//! write and sync outside it), so it is never held across an fsync, except
//! for the rare snapshot of the group state.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use crate::commit::{Append, GroupCommit};
use crate::error::{Error, Result};
use crate::files::Env;
use crate::format::{self, Message, Record, SEGMENT_HEADER_LEN};
use crate::group::{AckMode, ConsumerId, DeadReason, Delivery, Group, GroupCounters, PollRules};
use crate::log::QueueLog;
use crate::settings::{QueueSettings, Retention, StartFrom};
use crate::signal::Signal;
use crate::state::{self, StateRec, StateSink, STATE_FILE};
use crate::valid_name;

/// The group state log is rewritten as a snapshot once it has grown by this
/// much and by four times the last snapshot.
const SNAPSHOT_AFTER: u64 = 1 << 20;

/// A result that is known at once but stored only when the appends behind it
/// complete: [`Pending::wait`] on a thread, or `.await` it from any runtime.
#[derive(Debug)]
#[must_use = "nothing is stored until it completes"]
pub struct Pending<T> {
    waits: Vec<Append>,
    value: Option<T>,
}

impl<T> Pending<T> {
    /// A value with nothing to wait for.
    pub fn ready(value: T) -> Self {
        Pending { waits: Vec::new(), value: Some(value) }
    }

    fn new(value: T, waits: Vec<Append>) -> Self {
        Pending { waits, value: Some(value) }
    }

    /// The value, before it is stored (`None` once taken by `.await`).
    pub fn peek(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// Whether every append behind it has completed.
    pub fn is_done(&self) -> bool {
        self.waits.iter().all(Append::is_done)
    }

    fn appends(&self) -> Vec<Append> {
        self.waits.clone()
    }

    /// A handle that completes when this does (stored or failed), which
    /// can be awaited apart from the value: e.g. to order a later read
    /// after this write without holding on to the result.
    pub fn completion(&self) -> Completion {
        Completion { waits: self.waits.clone() }
    }

    /// Blocks until stored; the first failure wins.
    pub fn wait(self) -> Result<T> {
        for a in self.waits {
            a.wait()?;
        }
        self.value.ok_or(Error::Internal("pending value taken twice".into()))
    }
}

impl<T: Unpin> Future for Pending<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        while let Some(a) = self.waits.last_mut() {
            match Pin::new(a).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.waits.clear();
                    self.value = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(_)) => {
                    self.waits.pop();
                }
            }
        }
        Poll::Ready(self.value.take().ok_or(Error::Internal("pending value taken twice".into())))
    }
}

/// Completes when the appends behind a [`Pending`] have (whether they
/// stored or failed). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    waits: Vec<Append>,
}

impl Completion {
    /// Whether it has completed.
    pub fn is_done(&self) -> bool {
        self.waits.iter().all(Append::is_done)
    }
}

impl Future for Completion {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(a) = self.waits.last_mut() {
            if Pin::new(a).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.waits.pop();
        }
        Poll::Ready(())
    }
}

/// What a publish stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The offset of each message, in order (the original offset for a
    /// duplicate).
    pub offsets: Vec<u64>,
    /// Whether each message was a duplicate (stored nothing).
    pub duplicate: Vec<bool>,
}

/// How to consume.
#[derive(Debug, Clone, Default)]
pub struct ConsumeOptions {
    /// At most this many messages (at least 1 is used).
    pub max: usize,
    /// Stop adding messages once their payloads reach this many bytes
    /// (0: no limit). At least one message is returned, however large, so
    /// a large message cannot block the group.
    pub max_bytes: usize,
    /// Auto or manual acknowledgement.
    pub ack: AckMode,
    /// Deliver only messages with one of these events.
    pub events: Option<Vec<String>>,
    /// Where the group starts if this call creates it (else the queue's
    /// `start` setting).
    pub from: Option<StartFrom>,
}

/// A message to move to the dead-letter queue.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) group: String,
    pub(crate) record: Record,
    pub(crate) deliveries: u32,
    pub(crate) reason: DeadReason,
}

/// One group in [`QueueStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    /// Group name.
    pub name: String,
    /// Ack floor: every offset below is done.
    pub position: u64,
    /// Next offset the group reads from the log.
    pub cursor: u64,
    /// Messages of the queue not yet done for this group.
    pub depth: u64,
    /// Manual-ack deliveries not yet acked.
    pub pending: u64,
    /// Messages waiting to be delivered again.
    pub waiting_retry: u64,
    /// Consumers attached to the group.
    pub consumers: u64,
    /// Counters since the queue was opened.
    pub counters: GroupCounters,
}

/// A queue's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Queue name.
    pub name: String,
    /// Messages not yet done for every group (with no group: all stored).
    pub depth: u64,
    /// Bytes of the queue's segments.
    pub bytes: u64,
    /// Oldest offset still stored.
    pub first_offset: u64,
    /// Offset the next stored message gets.
    pub next_offset: u64,
    /// Segment files.
    pub segments: u64,
    /// Messages published since the queue was opened.
    pub published: u64,
    /// Consumers attached to any group.
    pub consumers: u64,
    /// Per group, by name.
    pub groups: Vec<GroupStats>,
}

/// What a compaction did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Sealed segments looked at.
    pub segments_checked: u64,
    /// Segments rewritten.
    pub segments_rewritten: u64,
    /// Records dropped (done for every group, expired or below the low mark).
    pub records_dropped: u64,
    /// Bytes the rewritten segments held before.
    pub bytes_before: u64,
    /// Bytes they hold after.
    pub bytes_after: u64,
}

#[derive(Debug)]
struct DedupEntry {
    offset: u64,
    ts: u64,
    append: Option<Append>,
}

#[derive(Debug, Default)]
struct Dedup {
    map: HashMap<String, DedupEntry>,
    order: VecDeque<(u64, String)>,
}

impl Dedup {
    fn evict(&mut self, now: u64, window: u64, max: u64) {
        while let Some((ts, id)) = self.order.front() {
            if ts.saturating_add(window) > now && self.map.len() as u64 <= max {
                break;
            }
            if self.map.get(id).is_some_and(|e| e.ts == *ts) {
                self.map.remove(id);
            }
            self.order.pop_front();
        }
    }

    fn insert(&mut self, id: String, offset: u64, ts: u64, append: Option<Append>) {
        self.order.push_back((ts, id.clone()));
        self.map.insert(id, DedupEntry { offset, ts, append });
    }
}

#[derive(Debug)]
struct Move {
    group: String,
    offsets: Vec<u64>,
    stored: Pending<Published>,
}

#[derive(Debug)]
struct QState {
    groups: BTreeMap<String, Group>,
    next_gid: u32,
    low: u64,
    dedup: Option<Dedup>,
    state_grown: u64,
    snapshot_len: u64,
    /// A non-blocking call has handed a due snapshot to a follow-up that
    /// has not run yet: later calls do not hand it out again.
    snapshot_queued: bool,
    consumers: HashMap<ConsumerId, BTreeSet<String>>,
    moves: Vec<Move>,
}

/// One queue. Cheap to share (`Arc`); every method takes `&self`.
#[derive(Debug)]
pub struct Queue {
    name: String,
    dir: PathBuf,
    settings: QueueSettings,
    incarnation: u64,
    log: Arc<QueueLog>,
    env: Arc<Env>,
    st: Mutex<QState>,
    sgc: Arc<GroupCommit<StateSink>>,
    published: AtomicU64,
}

impl Queue {
    /// Opens a queue's broker state over its recovered log: replays the
    /// group state log (truncating a torn tail, or to `state_hint` after a
    /// fail-stop), or creates it.
    pub(crate) fn open(
        env: Arc<Env>,
        dir: PathBuf,
        settings: QueueSettings,
        incarnation: u64,
        log: Arc<QueueLog>,
        state_hint: Option<u64>,
    ) -> Result<Arc<Queue>> {
        let name = log.name().to_owned();
        let path = dir.join(STATE_FILE);
        let vfs = env.vfs.clone();
        let ioe = |op| {
            let name = name.clone();
            move |e| Error::io(&name, op, e)
        };
        let corrupt = |position: u64, reason: String| Error::Corrupt {
            queue: name.clone(),
            file: path.clone(),
            position,
            reason: format!("group state: {reason}"),
        };
        let mut replay = state::Replay::default();
        let mut len = state::STATE_HEADER_LEN as u64;
        let fresh = if vfs.exists(&path) {
            env.files.forget(&path);
            let mut bytes = vfs.read_file(&path).map_err(ioe("reading the group state"))?;
            if let Some(h) = state_hint {
                bytes.truncate(usize::try_from(h).unwrap_or(usize::MAX));
            }
            match state::check_header(&bytes, incarnation) {
                state::HeaderCheck::Ok => {
                    replay = state::replay(&bytes);
                    if let Some((pos, reason, follows)) = &replay.damage {
                        if *follows {
                            return Err(corrupt(*pos, reason.clone()));
                        }
                        tracing::warn!(queue = %name, position = pos, bytes = bytes.len() as u64 - pos, %reason,
                            "truncating a torn tail of the group state");
                    }
                    len = replay.valid_len;
                    if len != bytes.len() as u64 || state_hint.is_some() {
                        let f = env.files.get(&path).map_err(ioe("opening the group state"))?;
                        f.set_len(len).and_then(|()| f.sync_data()).map_err(ioe("truncating the group state"))?;
                    }
                    false
                }
                state::HeaderCheck::Stale(old) => {
                    tracing::warn!(queue = %name, old, incarnation, "group state belongs to an earlier queue of this name; starting afresh");
                    true
                }
                state::HeaderCheck::Bad(reason) => return Err(corrupt(0, reason)),
            }
        } else {
            true
        };
        if fresh {
            vfs.write_atomic(&path, &state::encode_header(incarnation)).map_err(ioe("creating the group state"))?;
        }
        // State can run ahead of a log that lost its unsynced tail (`never`,
        // `interval`, or overflow marks for appends in flight): offsets at or
        // past the log's end will be given to new messages, so nothing there
        // may count as done.
        let end = log.next_offset();
        let mut clamped = replay.low > end;
        replay.low = replay.low.min(end);
        for gs in replay.groups.values_mut() {
            if gs.floor > end || gs.acked.ranges().any(|r| r.end > end) {
                clamped = true;
                gs.floor = gs.floor.min(end);
                gs.acked.remove_from(end);
            }
        }
        if clamped {
            tracing::warn!(queue = %name, end, "group state ran past the recovered log; clamped to its end");
            let groups = replay.groups.iter().map(|(n, g)| (n.as_str(), g.gid, g.floor, &g.acked));
            let bytes = state::snapshot(incarnation, replay.low, groups);
            env.files.forget(&path);
            vfs.write_atomic(&path, &bytes).map_err(ioe("rewriting the group state"))?;
            len = bytes.len() as u64;
        }
        let mut groups = BTreeMap::new();
        let mut next_gid = 0;
        for (gname, gs) in replay.groups {
            let mut g = Group::new(gs.gid, gs.floor);
            g.apply_acks(gs.floor, gs.acked.ranges());
            next_gid = next_gid.max(gs.gid.saturating_add(1));
            groups.insert(gname, g);
        }
        let sink = StateSink {
            env: env.clone(),
            queue: name.clone(),
            path,
            fsync: settings.fsync,
            len,
            synced_len: len,
            last_sync: Instant::now(),
            failed: false,
        };
        let sgc = GroupCommit::new(sink, 0, env.pool.clone());
        let q = Queue {
            name,
            dir,
            settings,
            incarnation,
            log,
            env,
            st: Mutex::new(QState {
                groups,
                next_gid,
                low: replay.low,
                dedup: None,
                state_grown: 0,
                snapshot_queued: false,
                snapshot_len: len,
                consumers: HashMap::new(),
                moves: Vec::new(),
            }),
            sgc,
            published: AtomicU64::new(0),
        };
        {
            let mut st = q.lock();
            let low = q.low(&st);
            for g in st.groups.values_mut() {
                g.raise_floor(low);
            }
        }
        Ok(Arc::new(q))
    }

    fn lock(&self) -> MutexGuard<'_, QState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The queue's settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// The tag that ties group state to this queue (not a re-created one).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The queue's log (raw appends and reads, below the broker semantics).
    pub fn log(&self) -> &Arc<QueueLog> {
        &self.log
    }

    /// Notified when messages may have become available: new records, a
    /// nack, a consumer leaving. Lease expiry and delayed redelivery are
    /// time-based: see [`Queue::next_deadline`].
    pub fn signal(&self) -> &Arc<Signal> {
        self.log.signal()
    }

    /// Everything below this offset is gone for every group.
    fn low(&self, st: &QState) -> u64 {
        st.low.max(self.log.first_offset())
    }

    fn append_state(&self, st: &mut QState, recs: &[StateRec]) -> Result<Append> {
        let mut buf = Vec::new();
        for r in recs {
            state::encode(&mut buf, r);
        }
        st.state_grown += buf.len() as u64;
        self.sgc.append(1, |b, _| b.buf.extend_from_slice(&buf))
    }

    /// Whether the group state log has grown enough to be rewritten.
    fn snapshot_due(st: &QState) -> bool {
        st.state_grown >= SNAPSHOT_AFTER.max(st.snapshot_len * 4)
    }

    /// Rewrites the group state log as a snapshot if it is due. This waits
    /// for the state log's commits and writes a file: callers that must not
    /// block use [`Queue::snapshot_if_due`] later instead.
    pub fn snapshot_if_due(&self) -> Result<()> {
        self.maybe_snapshot(&mut self.lock())
    }

    /// Rewrites the group state log as a snapshot when it has grown enough.
    fn maybe_snapshot(&self, st: &mut QState) -> Result<()> {
        st.snapshot_queued = false;
        if !Self::snapshot_due(st) {
            return Ok(());
        }
        let low = st.low;
        let groups = st.groups.iter().map(|(n, g)| (n.as_str(), g.id, g.floor(), g.acked()));
        let bytes = state::snapshot(self.incarnation, low, groups);
        // Everything appended so far is in the snapshot; nothing can be
        // appended meanwhile (appends hold `st`).
        self.sgc.drain()?;
        self.sgc.with_sink(|s| s.replace(&bytes))?;
        st.state_grown = 0;
        st.snapshot_len = bytes.len() as u64;
        Ok(())
    }

    /// Messages not yet done for *every* group: those some group still has
    /// to consume or ack (PROTOCOL.md's `depth`). With several groups this
    /// is the size of the union of what each has left, not the largest.
    fn depth(&self, st: &QState, next: u64) -> u64 {
        let low = self.low(st).min(next);
        let mut groups = st.groups.values();
        let Some(first) = groups.next() else { return next - low };
        if st.groups.len() == 1 {
            return first.depth(low, next);
        }
        // Offsets of [low, next) done for every group: intersect each
        // group's done set (below its floor, plus its acked ranges).
        let done = |g: &Group| -> Vec<std::ops::Range<u64>> {
            let f = g.floor().clamp(low, next);
            let mut v = Vec::new();
            if low < f {
                v.push(low..f);
            }
            v.extend(g.acked().ranges().map(|r| r.start.max(f)..r.end.min(next)).filter(|r| r.start < r.end));
            v
        };
        let mut all = done(first);
        for g in groups {
            let other = done(g);
            let (mut i, mut j, mut out) = (0, 0, Vec::new());
            while i < all.len() && j < other.len() {
                let (a, b) = (&all[i], &other[j]);
                let (s, e) = (a.start.max(b.start), a.end.min(b.end));
                if s < e {
                    out.push(s..e);
                }
                if a.end < b.end {
                    i += 1;
                } else {
                    j += 1;
                }
            }
            all = out;
        }
        (next - low) - all.iter().map(|r| r.end - r.start).sum::<u64>()
    }

    /// The offset below which every group is done (the retention floor).
    fn done_floor(&self, st: &QState) -> u64 {
        let low = self.low(st);
        st.groups.values().map(|g| g.floor().max(low)).min().unwrap_or(low)
    }

    fn set_low(&self, st: &mut QState, low: u64) -> Result<Append> {
        st.low = st.low.max(low);
        for g in st.groups.values_mut() {
            g.raise_floor(low);
        }
        self.append_state(st, &[StateRec::Low(low)])
    }

    fn ttl_expired(&self, r: &Record, now: u64) -> bool {
        let ttl = match (r.message.ttl_ms, self.settings.message_ttl_ms) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        now >= r.timestamp_ms.saturating_add(ttl)
    }

    /// Publishes messages as one atomic batch (all or none stored, visible
    /// together). A message whose `msg_id` was stored within the dedup window
    /// stores nothing and gets the original offset. Refused with
    /// [`Error::QueueFull`] past a limit under `overflow = reject`.
    pub fn publish(&self, msgs: &[Message]) -> Result<Pending<Published>> {
        if msgs.is_empty() {
            return Err(Error::BadRequest("a batch needs at least one message".into()));
        }
        let limited = self.settings.max_length.is_some() || self.settings.max_bytes.is_some();
        let with_ids = msgs.iter().any(|m| m.msg_id.is_some());
        if !limited && !with_ids {
            let a = self.log.append_batch(msgs)?;
            self.published.fetch_add(msgs.len() as u64, Ordering::Relaxed);
            let value = Published { offsets: a.offsets().collect(), duplicate: vec![false; msgs.len()] };
            return Ok(Pending::new(value, vec![a]));
        }
        let sizes: Vec<u64> = msgs
            .iter()
            .map(|m| format::encoded_len(m).map(|n| n as u64))
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::InvalidRecord)?;
        if let Some(e) = self.log.failure() {
            // A stopped queue stores nothing, not even an answer "duplicate".
            return Err(e.stopped_by());
        }
        let now = self.env.clock.now_ms();
        let mut st = self.lock();
        // Per message: Ok(index among the fresh ones) or Err(duplicate's offset).
        let mut slots: Vec<std::result::Result<usize, u64>> = Vec::with_capacity(msgs.len());
        let mut waits = Vec::new();
        let mut fresh: Vec<&Message> = Vec::with_capacity(msgs.len());
        let mut fresh_bytes = 0u64;
        if with_ids {
            if st.dedup.is_none() {
                st.dedup = Some(self.load_dedup(now)?);
            }
            let s = &self.settings;
            let dd = st.dedup.get_or_insert_with(Dedup::default);
            dd.evict(now, s.dedup_window_ms, s.dedup_max_ids);
            let mut in_batch: HashMap<&str, usize> = HashMap::new();
            for m in msgs {
                let size = sizes[slots.len()];
                let Some(id) = m.msg_id.as_deref() else {
                    slots.push(Ok(fresh.len()));
                    fresh.push(m);
                    fresh_bytes += size;
                    continue;
                };
                // An original whose store failed was never stored: forget it.
                if dd.map.get(id).is_some_and(|e| e.append.as_ref().is_some_and(Append::failed)) {
                    dd.map.remove(id);
                }
                if let Some(e) = dd.map.get(id) {
                    if let Some(a) = e.append.as_ref().filter(|a| !a.is_done()) {
                        waits.push(a.clone());
                    }
                    slots.push(Err(e.offset));
                } else if let Some(&i) = in_batch.get(id) {
                    slots.push(Ok(i));
                } else {
                    in_batch.insert(id, fresh.len());
                    slots.push(Ok(fresh.len()));
                    fresh.push(m);
                    fresh_bytes += size;
                }
            }
        } else {
            slots.extend((0..msgs.len()).map(Ok));
            fresh.extend(msgs.iter());
            fresh_bytes = sizes.iter().sum();
        }
        let mut offsets = Vec::with_capacity(msgs.len());
        let mut duplicate = Vec::with_capacity(msgs.len());
        let mut drop_below = None;
        if fresh.is_empty() {
            for s in &slots {
                offsets.push(match *s {
                    Err(o) => o,
                    Ok(_) => 0,
                });
                duplicate.push(true);
            }
            return Ok(Pending::new(Published { offsets, duplicate }, waits));
        }
        if limited {
            drop_below = self.check_limits(&st, fresh.len() as u64, fresh_bytes)?;
        }
        let owned: Vec<Message>;
        let batch: &[Message] = if fresh.len() == msgs.len() {
            msgs
        } else {
            owned = fresh.iter().map(|m| (*m).clone()).collect();
            &owned
        };
        let a = self.log.append_batch(batch)?;
        // Overflow drops the oldest only once the publish is accepted.
        if let Some(low) = drop_below {
            tracing::debug!(queue = %self.name, low, "dropping the oldest messages (overflow)");
            waits.push(self.set_low(&mut st, low)?);
        }
        let first = a.offsets().start;
        self.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut seen = vec![false; batch.len()];
        for s in &slots {
            match *s {
                Err(o) => {
                    offsets.push(o);
                    duplicate.push(true);
                }
                Ok(i) => {
                    offsets.push(first + i as u64);
                    duplicate.push(std::mem::replace(&mut seen[i], true));
                }
            }
        }
        if with_ids {
            let dd = st.dedup.get_or_insert_with(Dedup::default);
            for (i, m) in batch.iter().enumerate() {
                if let Some(id) = &m.msg_id {
                    dd.insert(id.clone(), first + i as u64, now, Some(a.clone()));
                }
            }
        }
        waits.push(a);
        Ok(Pending::new(Published { offsets, duplicate }, waits))
    }

    /// Rebuilds the dedup window from the stored messages of the last window.
    fn load_dedup(&self, now: u64) -> Result<Dedup> {
        let s = &self.settings;
        let mut dd = Dedup::default();
        let mut from = self.log.offset_for_time(now.saturating_sub(s.dedup_window_ms))?;
        loop {
            let recs = self.log.read(from, 1024, 4 << 20)?;
            let Some(last) = recs.last() else { break };
            from = last.offset + 1;
            for r in recs {
                if let Some(id) = r.message.msg_id {
                    dd.insert(id, r.offset, r.timestamp_ms, None);
                }
            }
            dd.evict(now, s.dedup_window_ms, s.dedup_max_ids);
        }
        Ok(dd)
    }

    /// Applies `max_length` / `max_bytes` to a publish of `n` messages of
    /// `bytes`: an error under `reject`; under `drop_oldest`, the low mark
    /// that makes room (applied once the publish is accepted).
    fn check_limits(&self, st: &QState, n: u64, bytes: u64) -> Result<Option<u64>> {
        let s = &self.settings;
        let next = self.log.assigned_offset();
        let reject = s.overflow == crate::settings::Overflow::Reject;
        let mut new_low = None;
        if let Some(max) = s.max_length {
            let depth = self.depth(st, next);
            if depth + n > max {
                if reject || n > max {
                    return Err(Error::QueueFull(format!(
                        "queue '{}' holds {depth} messages; {n} more would pass max_length {max}",
                        self.name
                    )));
                }
                new_low = Some(next + n - max);
            }
        }
        if let Some(max) = s.max_bytes {
            let floor = new_low.unwrap_or(0).max(self.done_floor(st));
            let held = self.log.bytes_from(floor);
            if held + bytes > max {
                if reject || bytes > max {
                    return Err(Error::QueueFull(format!(
                        "queue '{}' holds {held} bytes; {bytes} more would pass max_bytes {max}",
                        self.name
                    )));
                }
                // The least offset from which the log holds few enough bytes.
                let (mut lo, mut hi) = (floor, next);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if self.log.bytes_from(mid) + bytes <= max {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                new_low = Some(lo.max(new_low.unwrap_or(0)));
            }
        }
        Ok(new_low.filter(|&l| l > self.low(st)))
    }

    fn ensure_group<'a>(
        &self,
        st: &'a mut QState,
        group: &str,
        from: Option<StartFrom>,
    ) -> Result<(&'a mut Group, Option<Append>)> {
        let mut created = None;
        if !st.groups.contains_key(group) {
            if !valid_name(group) {
                return Err(Error::InvalidName(group.to_owned()));
            }
            let low = self.low(st);
            let floor = match from.unwrap_or(self.settings.start) {
                StartFrom::Oldest => low,
                StartFrom::Latest => self.log.next_offset(),
                StartFrom::Offset(o) => o.min(self.log.next_offset()),
                StartFrom::Time(t) => self.log.offset_for_time(t)?,
            }
            .max(low);
            let gid = st.next_gid;
            let a = self.append_state(st, &[StateRec::Create { gid, floor, name: group.to_owned() }])?;
            st.next_gid += 1;
            st.groups.insert(group.to_owned(), Group::new(gid, floor));
            created = Some(a);
            tracing::debug!(queue = %self.name, group, floor, "group created");
        }
        let low = self.low(st);
        let g = st.groups.get_mut(group).ok_or_else(|| Error::Internal("group vanished".into()))?;
        if g.floor() < low {
            g.raise_floor(low);
        }
        Ok((g, created))
    }

    /// Creates group `group` if it does not exist, starting at `from` (or the
    /// queue's `start` setting).
    pub fn create_group(&self, group: &str, from: Option<StartFrom>) -> Result<Pending<()>> {
        let mut st = self.lock();
        let (_, created) = self.ensure_group(&mut st, group, from)?;
        Ok(Pending::new((), created.into_iter().collect()))
    }

    /// Hands messages of `group` to `consumer`. With [`AckMode::Auto`], the
    /// returned [`Pending`] completes once the group's new position is stored
    /// (only then may the messages be handed over: at-most-once across
    /// crashes). Messages due for the dead-letter queue come back separately
    /// for the engine to move.
    /// With `snapshot` false, a due snapshot is left for
    /// [`Queue::snapshot_if_due`] and the third value says it is due.
    pub(crate) fn consume(
        &self,
        group: &str,
        consumer: ConsumerId,
        opts: &ConsumeOptions,
        snapshot: bool,
    ) -> Result<(Pending<Vec<Delivery>>, Vec<DeadLetter>, bool)> {
        if consumer == crate::group::MOVING {
            return Err(Error::BadRequest(format!("consumer id {consumer} is reserved")));
        }
        let now = self.env.clock.now_ms();
        // Read ahead from the log outside the lock, so competing consumers
        // do not queue behind each other's reads.
        let next = self.log.next_offset();
        let claim = self.lock().groups.get_mut(group).and_then(|g| g.read_ahead(opts.max.max(1), next));
        let fetched = claim.map(|(from, n)| (from, self.log.read(from, n, 4 << 20)));
        let mut st = self.lock();
        if let Some((from, r)) = fetched {
            if let Some(g) = st.groups.get_mut(group) {
                match r {
                    Ok(recs) => g.feed(from, recs),
                    Err(e) => {
                        g.unclaim();
                        return Err(e);
                    }
                }
            }
        }
        self.settle_moves(&mut st, now)?;
        st.consumers.entry(consumer).or_default().insert(group.to_owned());
        let (g, created) = self.ensure_group(&mut st, group, opts.from)?;
        let rules = PollRules {
            consumer,
            max: opts.max.max(1),
            max_bytes: opts.max_bytes,
            events: opts.events.as_deref(),
            mode: opts.ack,
            now,
            lease_ms: self.settings.ack_timeout_ms,
            max_deliveries: self.settings.max_deliveries,
            dead_letter_expired: self.settings.dead_letter_expired,
        };
        let log = &self.log;
        let polled = g.poll(
            &rules,
            |from, n| log.read(from, n, 1 << 20),
            |o| Ok(log.read(o, 1, usize::MAX)?.into_iter().next().filter(|r| r.offset == o)),
            |r| self.ttl_expired(r, now),
        )?;
        let (gid, floor) = (g.id, g.floor());
        let mut waits: Vec<Append> = created.into_iter().collect();
        if !polled.done.is_empty() {
            let rec = StateRec::Acks { gid, floor, ranges: state::to_ranges(&polled.done) };
            let a = self.append_state(&mut st, &[rec])?;
            waits.push(a);
        }
        if opts.ack == AckMode::Manual {
            // Nothing to wait for before handing the messages over.
            waits.clear();
        }
        if let Some(e) = polled.error {
            if polled.out.is_empty() && polled.dead.is_empty() {
                return Err(e);
            }
            tracing::warn!(queue = %self.name, group, error = %e, "a read failed part way; returning what was read");
        }
        let due = if snapshot {
            self.maybe_snapshot(&mut st)?;
            false
        } else {
            Self::snapshot_due(&st) && !std::mem::replace(&mut st.snapshot_queued, true)
        };
        let dead = polled
            .dead
            .into_iter()
            .map(|(record, deliveries, reason)| DeadLetter { group: group.to_owned(), record, deliveries, reason })
            .collect();
        Ok((Pending::new(polled.out, waits), dead, due))
    }

    /// Records that the dead-letter copies of `offsets` are being stored;
    /// once they are, the offsets are acked in `group`.
    pub(crate) fn moving(&self, group: &str, offsets: Vec<u64>, stored: Pending<Published>) {
        self.lock().moves.push(Move { group: group.to_owned(), offsets, stored });
    }

    /// A dead-letter copy could not be stored: deliver the messages again.
    pub(crate) fn unmove(&self, group: &str, offsets: &[u64]) {
        let now = self.env.clock.now_ms();
        if let Some(g) = self.lock().groups.get_mut(group) {
            g.unmove(offsets, now);
        }
        self.signal().notify();
    }

    /// Acks the source offsets of dead-letter copies that are stored.
    fn settle_moves(&self, st: &mut QState, now: u64) -> Result<()> {
        if st.moves.iter().all(|m| !m.stored.is_done()) {
            return Ok(());
        }
        let (done, waiting): (Vec<Move>, Vec<Move>) =
            std::mem::take(&mut st.moves).into_iter().partition(|m| m.stored.is_done());
        st.moves = waiting;
        for m in done {
            let Some(g) = st.groups.get_mut(&m.group) else { continue };
            match m.stored.wait() {
                Ok(_) => {
                    let acked = g.moved(&m.offsets);
                    if !acked.is_empty() {
                        let rec = StateRec::Acks { gid: g.id, floor: g.floor(), ranges: state::to_ranges(&acked) };
                        drop(self.append_state(st, &[rec])?);
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %self.name, group = %m.group, error = %e, "dead-letter copy failed; the messages will be delivered again");
                    g.unmove(&m.offsets, now);
                }
            }
        }
        Ok(())
    }

    /// Acks offsets of `group` (leased or waiting for redelivery; others are
    /// ignored). The returned [`Pending`] — the number acked — completes when
    /// the acks are stored under the queue's fsync policy.
    pub fn ack(&self, group: &str, offsets: &[u64]) -> Result<Pending<usize>> {
        self.ack_with(group, offsets, true).map(|(p, _)| p)
    }

    /// [`Queue::ack`] that never blocks: a due snapshot of the group state
    /// is left for [`Queue::snapshot_if_due`], and the flag says it is due.
    pub fn ack_nonblocking(&self, group: &str, offsets: &[u64]) -> Result<(Pending<usize>, bool)> {
        self.ack_with(group, offsets, false)
    }

    fn ack_with(&self, group: &str, offsets: &[u64], snapshot: bool) -> Result<(Pending<usize>, bool)> {
        let now = self.env.clock.now_ms();
        let mut st = self.lock();
        self.settle_moves(&mut st, now)?;
        let Some(g) = st.groups.get_mut(group) else { return Ok((Pending::ready(0), false)) };
        let done = g.ack(offsets);
        if done.is_empty() {
            return Ok((Pending::ready(0), false));
        }
        let rec = StateRec::Acks { gid: g.id, floor: g.floor(), ranges: state::to_ranges(&done) };
        let a = self.append_state(&mut st, &[rec])?;
        let due = if snapshot {
            self.maybe_snapshot(&mut st)?;
            false
        } else {
            Self::snapshot_due(&st) && !std::mem::replace(&mut st.snapshot_queued, true)
        };
        Ok((Pending::new(done.len(), vec![a]), due))
    }

    /// Returns leased offsets of `group` for redelivery after `delay_ms`,
    /// remembering `reason` (it goes into the dead-letter headers). Returns
    /// how many were leased.
    pub fn nack(&self, group: &str, offsets: &[u64], delay_ms: u64, reason: Option<&str>) -> usize {
        let now = self.env.clock.now_ms();
        let n = self.lock().groups.get_mut(group).map_or(0, |g| g.nack(offsets, now, delay_ms, reason));
        if n > 0 {
            self.signal().notify();
        }
        n
    }

    /// Marks `consumer` as attached to `group` (for stats).
    pub fn attach(&self, group: &str, consumer: ConsumerId) {
        self.lock().consumers.entry(consumer).or_default().insert(group.to_owned());
    }

    /// `consumer` went away: its leases go back to their groups at once.
    /// Returns how many messages were released.
    pub fn release(&self, consumer: ConsumerId) -> usize {
        let now = self.env.clock.now_ms();
        let mut st = self.lock();
        st.consumers.remove(&consumer);
        let n: usize = st.groups.values_mut().map(|g| g.release(consumer, now)).sum();
        drop(st);
        if n > 0 {
            self.signal().notify();
        }
        n
    }

    /// Whether a consume of `group` may find something now (a filter may
    /// still find nothing). A missing group may: it would be created.
    pub fn may_have(&self, group: &str) -> bool {
        let now = self.env.clock.now_ms();
        let next = self.log.next_offset();
        let st = self.lock();
        match st.groups.get(group) {
            Some(g) => g.may_have(next, now),
            None => next > self.low(&st),
        }
    }

    /// When something of `group` becomes deliverable without a publish (a
    /// lease deadline or a delayed redelivery), in ms since the epoch.
    pub fn next_deadline(&self, group: &str) -> Option<u64> {
        let st = self.lock();
        st.groups.get(group)?.next_deadline()
    }

    /// Removes every message stored so far, for every group; returns how
    /// many were not yet done. Space is reclaimed at once.
    pub fn purge(&self) -> Result<u64> {
        let (removed, a, next) = {
            let mut st = self.lock();
            let next = self.log.next_offset();
            let removed = self.depth(&st, next);
            let a = self.set_low(&mut st, next)?;
            (removed, a, next)
        };
        self.env.pool.run_pending(usize::MAX);
        a.wait()?;
        self.log.seal_active()?;
        self.log.delete_segments_below(next)?;
        tracing::info!(queue = %self.name, removed, "queue purged");
        Ok(removed)
    }

    /// The queue's figures.
    pub fn stats(&self) -> QueueStats {
        let next = self.log.next_offset();
        let st = self.lock();
        let low = self.low(&st);
        let mut per_group: HashMap<&str, u64> = HashMap::new();
        for gs in st.consumers.values() {
            for g in gs {
                *per_group.entry(g.as_str()).or_default() += 1;
            }
        }
        let groups = st
            .groups
            .iter()
            .map(|(n, g)| GroupStats {
                name: n.clone(),
                position: g.floor().max(low),
                cursor: g.cursor().max(low),
                depth: g.depth(low, next),
                pending: g.pending() as u64,
                waiting_retry: g.waiting_retry() as u64,
                consumers: per_group.get(n.as_str()).copied().unwrap_or(0),
                counters: g.counters,
            })
            .collect();
        QueueStats {
            name: self.name.clone(),
            depth: self.depth(&st, next),
            bytes: self.log.bytes(),
            first_offset: low.min(next),
            next_offset: next,
            segments: self.log.segment_count() as u64,
            published: self.published.load(Ordering::Relaxed),
            consumers: st.consumers.len() as u64,
            groups,
        }
    }

    /// Makes the group state durable now, whatever the fsync policy.
    fn flush_state(&self) -> Result<()> {
        self.sgc.drain()?;
        self.sgc.with_sink(StateSink::sync)
    }

    /// Housekeeping: settles dead-letter moves and deletes segments that
    /// retention no longer needs. Returns how many segments were deleted.
    pub fn maintain(&self) -> Result<usize> {
        let now = self.env.clock.now_ms();
        // Dead-letter copies in flight are waited for, then settled.
        let inflight: Vec<Append> = self.lock().moves.iter().flat_map(|m| m.stored.appends()).collect();
        // (With a manual committer pool, run it first: nothing else would.)
        self.env.pool.run_pending(usize::MAX);
        for a in inflight {
            let _ = a.wait();
        }
        // Held until segments are deleted, so no group can be created below
        // the floor meanwhile (deleting is rare; it costs a directory sync).
        let mut st = self.lock();
        self.settle_moves(&mut st, now)?;
        let floor = self.done_floor(&st);
        let sealed = self.log.sealed_segments();
        let deleted = match self.settings.retention {
            Retention::Acked => {
                // Some sealed segment lies wholly below the floor?
                let next_bases: Vec<u64> = sealed.iter().skip(1).map(|s| s.0).chain([self.log.active_base()]).collect();
                if next_bases.first().is_some_and(|&b| b <= floor) {
                    // Floors are in memory first: delete only below durable ones.
                    self.flush_state()?;
                    self.log.delete_segments_below(floor)?
                } else {
                    0
                }
            }
            Retention::Stream { max_age_ms, max_bytes } => {
                let mut bases: Vec<u64> = sealed.iter().map(|s| s.0).collect();
                bases.push(self.log.active_base());
                let mut total = self.log.bytes();
                let mut cut = None;
                for (i, &(_, len)) in sealed.iter().enumerate() {
                    let next_base = bases[i + 1];
                    let old = match max_age_ms {
                        Some(age) => self.log.segment_created_ms(next_base)?.saturating_add(age) <= now,
                        None => false,
                    };
                    let big = max_bytes.is_some_and(|m| total > m);
                    if !(old || big) {
                        break;
                    }
                    total = total.saturating_sub(len);
                    cut = Some(next_base);
                }
                match cut {
                    Some(c) => self.log.delete_segments_below(c)?,
                    None => 0,
                }
            }
        };
        if deleted > 0 {
            let low = self.low(&st);
            for g in st.groups.values_mut() {
                g.raise_floor(low);
            }
            tracing::debug!(queue = %self.name, deleted, "retention deleted segments");
        }
        Ok(deleted)
    }

    /// Rewrites sealed segments whose live records (not done for some group,
    /// not expired, not below the low mark) are less than `threshold` of
    /// their bytes, keeping every live record at its offset. With `dry_run`,
    /// only reports.
    pub fn compact(&self, threshold: f64, dry_run: bool) -> Result<CompactReport> {
        let now = self.env.clock.now_ms();
        let (low, groups, gid0): (u64, Vec<Group>, u32) = {
            let st = self.lock();
            let low = self.low(&st);
            let snapshot = match self.settings.retention {
                Retention::Acked => st.groups.values().map(Group::done_snapshot).collect(),
                Retention::Stream { .. } => Vec::new(),
            };
            (low, snapshot, st.next_gid)
        };
        // Only what is durably done may be dropped.
        self.flush_state()?;
        let stream = matches!(self.settings.retention, Retention::Stream { .. });
        let mut rep = CompactReport::default();
        for (base, len) in self.log.sealed_segments() {
            rep.segments_checked += 1;
            let path = self.log.segment_path(base);
            let f = self
                .env
                .vfs
                .open(&path, crate::io::OpenMode::Read)
                .map_err(|e| Error::io(&self.name, "opening a segment", e))?;
            let mut recs: Vec<(usize, bool, Record)> = Vec::new();
            let mut bad = None;
            let scan = crate::recovery::scan(f.as_ref(), SEGMENT_HEADER_LEN, len, base, |_, r| match r.to_record() {
                Ok(rec) => recs.push((r.size, r.batch_continues(), rec)),
                Err(e) => bad = Some(format!("{e:?}")),
            })
            .map_err(|e| Error::io(&self.name, "reading a segment", e))?;
            if scan.stop.is_some() || bad.is_some() || scan.valid_end != len {
                tracing::warn!(queue = %self.name, segment = base, "not compacting a damaged segment; run `gmq verify`");
                continue;
            }
            let live = |r: &Record| {
                r.offset >= low
                    && (stream || groups.is_empty() || groups.iter().any(|g| !g.is_done(r.offset)))
                    && (self.settings.dead_letter_expired || !self.ttl_expired(r, now))
            };
            let keep: Vec<bool> = recs.iter().map(|(_, _, r)| live(r)).collect();
            let live_bytes: u64 = recs.iter().zip(&keep).filter(|(_, k)| **k).map(|((s, _, _), _)| *s as u64).sum();
            let body = len - SEGMENT_HEADER_LEN;
            if body == 0 || (live_bytes as f64) >= threshold * body as f64 {
                continue;
            }
            let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
            f.read_exact_at(&mut h, 0).map_err(|e| Error::io(&self.name, "reading a segment", e))?;
            let created = format::decode_segment_header(&h, base).unwrap_or(0);
            let mut out = format::encode_segment_header(base, created).to_vec();
            for (i, (_, cont, r)) in recs.iter().enumerate() {
                if !keep[i] {
                    continue;
                }
                // A batch stays marked as one only while its next record is kept.
                let cont = *cont && keep.get(i + 1).copied().unwrap_or(false);
                let extra = if cont { format::attrs::BATCH_CONT } else { 0 };
                format::encode_record(&mut out, r.offset, r.timestamp_ms, &r.message, extra);
            }
            if !dry_run {
                // A group created since the snapshot may need what is dropped:
                // stop here (the next compaction sees it).
                let st = self.lock();
                if st.next_gid != gid0 {
                    break;
                }
                self.log.replace_sealed(base, &out)?;
                drop(st);
            }
            rep.records_dropped += keep.iter().filter(|k| !**k).count() as u64;
            rep.segments_rewritten += 1;
            rep.bytes_before += len;
            rep.bytes_after += out.len() as u64;
        }
        if rep.segments_rewritten > 0 {
            tracing::info!(queue = %self.name, rewritten = rep.segments_rewritten, reclaimed = rep.bytes_before - rep.bytes_after, dry_run, "compacted");
        }
        Ok(rep)
    }

    /// Where the acknowledged group state ends (for a reopen after a
    /// fail-stop).
    pub(crate) fn state_hint(&self) -> Option<u64> {
        self.sgc.failure().map(|_| self.sgc.with_sink(|s| s.acked_len()))
    }

    /// The failure that stopped the queue's log or group state, if any.
    pub fn failure(&self) -> Option<Error> {
        self.log.failure().or_else(|| self.sgc.failure())
    }

    /// Stops appends, waits for those in flight, syncs, and writes a clean
    /// checkpoint.
    pub(crate) fn close(&self) -> Result<()> {
        let a = self.log.close();
        let b = self.sgc.close().and_then(|()| self.sgc.with_sink(StateSink::sync));
        a.and(b)
    }

    /// Refuses appends from now on (the queue is being deleted or reopened).
    pub(crate) fn shut(&self) {
        self.log.shut();
        let _ = self.sgc.close();
    }
}
