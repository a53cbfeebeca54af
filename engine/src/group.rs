//! One consumer group's delivery state: the durable part (ack floor and acked
//! offsets above it) and the in-memory part (records read ahead, leases of
//! manual-ack deliveries, messages waiting to be delivered again).
//!
//! Pure logic, no I/O: the queue hands it records through closures and
//! writes the acks it reports to the group-state log. `tests/loom_group.rs`
//! checks it under concurrent consume, ack and expiry.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::format::Record;
use crate::ranges::RangeSet;

/// Who consumes: the server gives each connection or subscription an id;
/// its leases are released when it goes away. `u64::MAX` is reserved.
pub type ConsumerId = u64;

/// Holder of a message that is being moved to the dead-letter queue.
pub(crate) const MOVING: ConsumerId = u64::MAX;

/// Read-ahead bounds: records pulled from the log and not yet delivered.
pub(crate) const BUF_RECORDS: usize = 4096;
pub(crate) const BUF_BYTES: usize = 8 << 20;

/// How deliveries are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// Done at once: at-most-once (the group's state is durable before the
    /// messages are handed over).
    #[default]
    Auto,
    /// Leased until acked, nacked, expired or released: at-least-once.
    Manual,
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stored record.
    pub record: Record,
    /// How many times this group has been handed this message (1 = first).
    pub deliveries: u32,
}

/// Why a message leaves for the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadReason {
    /// Delivered `max_deliveries` times without an ack; the last nack reason.
    MaxDeliveries(Option<String>),
    /// Its time to live passed.
    Expired,
}

#[derive(Debug, Clone)]
struct Lease {
    holder: ConsumerId,
    deadline: u64,
    deliveries: u32,
    reason: Option<String>,
}

#[derive(Debug, Clone)]
struct Retry {
    deliveries: u32,
    not_before: u64,
    reason: Option<String>,
}

/// What one poll produced.
#[derive(Debug)]
pub(crate) struct Polled<E> {
    pub(crate) out: Vec<Delivery>,
    /// Offsets this poll made done (auto acks, expired and dropped); the
    /// queue must persist them.
    pub(crate) done: Vec<u64>,
    /// Records to move to the dead-letter queue: held by [`MOVING`] until the
    /// copy is stored, then acked.
    pub(crate) dead: Vec<(Record, u32, DeadReason)>,
    /// A read that failed part way: what was done before it stands.
    pub(crate) error: Option<E>,
    /// Payload bytes of `out`.
    bytes: usize,
}

impl<E> Default for Polled<E> {
    fn default() -> Self {
        Polled { out: Vec::new(), done: Vec::new(), dead: Vec::new(), error: None, bytes: 0 }
    }
}

impl<E> Polled<E> {
    /// Whether the poll has handed out all it may (it always may hand out
    /// one message, however large).
    fn full(&self, rules: &PollRules<'_>) -> bool {
        self.out.len() >= rules.max || (rules.max_bytes > 0 && self.bytes >= rules.max_bytes)
    }
}

/// How a poll is to treat records.
pub(crate) struct PollRules<'a> {
    pub(crate) consumer: ConsumerId,
    pub(crate) max: usize,
    /// Stop once the payloads handed out reach this many bytes (0: no limit).
    pub(crate) max_bytes: usize,
    pub(crate) events: Option<&'a [String]>,
    pub(crate) mode: AckMode,
    pub(crate) now: u64,
    pub(crate) lease_ms: u64,
    pub(crate) max_deliveries: u32,
    pub(crate) dead_letter_expired: bool,
}

/// Per-group counters for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounters {
    /// Deliveries, first ones and again.
    pub delivered: u64,
    /// Deliveries after the first.
    pub redelivered: u64,
    /// Offsets made done by acks (manual or auto).
    pub acked: u64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Messages dropped because their TTL passed.
    pub expired: u64,
}

/// One group's state.
#[derive(Debug)]
pub struct Group {
    pub(crate) id: u32,
    floor: u64,
    acked: RangeSet,
    cursor: u64,
    buf: BTreeMap<u64, Record>,
    buf_bytes: usize,
    leases: HashMap<u64, Lease>,
    deadlines: BTreeSet<(u64, u64)>,
    retry: BTreeMap<u64, Retry>,
    retry_at: BTreeSet<(u64, u64)>,
    /// A read of the log for this group runs outside the queue's lock.
    reading: bool,
    pub(crate) counters: GroupCounters,
}

fn matches(events: Option<&[String]>, r: &Record) -> bool {
    match events {
        None => true,
        Some(list) => r.message.event.as_ref().is_some_and(|e| list.iter().any(|x| x == e)),
    }
}

impl Group {
    /// A group whose offsets below `floor` are done.
    pub fn new(id: u32, floor: u64) -> Self {
        Group {
            id,
            floor,
            acked: RangeSet::new(),
            cursor: floor,
            buf: BTreeMap::new(),
            buf_bytes: 0,
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            retry: BTreeMap::new(),
            retry_at: BTreeSet::new(),
            reading: false,
            counters: GroupCounters::default(),
        }
    }

    /// All offsets below are done.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Done offsets above the floor.
    pub fn acked(&self) -> &RangeSet {
        &self.acked
    }

    /// Whether `offset` is done for this group.
    pub fn is_done(&self, offset: u64) -> bool {
        offset < self.floor || self.acked.contains(offset)
    }

    /// Next offset to read from the log.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Manual-ack deliveries not yet settled (moves to the dead-letter queue
    /// included).
    pub fn pending(&self) -> usize {
        self.leases.len()
    }

    /// Messages waiting to be delivered again.
    pub fn waiting_retry(&self) -> usize {
        self.retry.len()
    }

    /// Messages of `[max(floor, low), next)` not done.
    pub fn depth(&self, low: u64, next: u64) -> u64 {
        let f = self.floor.max(low).min(next);
        (next - f) - self.acked.count_in(f..next)
    }

    /// A copy of the durable part only (what is done), for compaction.
    pub(crate) fn done_snapshot(&self) -> Group {
        let mut g = Group::new(self.id, self.floor);
        g.acked = self.acked.clone();
        g
    }

    /// Replays a durable ack (recovery): `offsets` done, floor at least `floor`.
    pub(crate) fn apply_acks(&mut self, floor: u64, offsets: impl IntoIterator<Item = std::ops::Range<u64>>) {
        for r in offsets {
            self.acked.insert(r);
        }
        self.raise_floor(floor);
    }

    /// Everything below `low` is gone from the queue (purge, overflow,
    /// retention): it is done for this group too.
    pub(crate) fn raise_floor(&mut self, low: u64) {
        if low > self.floor {
            self.floor = low;
            self.acked.remove_below(low);
        }
        self.floor = self.acked.take_run_from(self.floor);
        if self.cursor < self.floor {
            self.cursor = self.floor;
        }
        while let Some((&o, _)) = self.buf.first_key_value() {
            if o >= self.floor {
                break;
            }
            self.drop_buf(o);
        }
        let below: Vec<u64> = self.retry.range(..self.floor).map(|(&o, _)| o).collect();
        for o in below {
            self.take_retry(o);
        }
        let below: Vec<u64> = self.leases.keys().copied().filter(|&o| o < self.floor).collect();
        for o in below {
            self.take_lease(o);
        }
    }

    fn drop_buf(&mut self, o: u64) -> Option<Record> {
        let r = self.buf.remove(&o)?;
        self.buf_bytes -= r.message.payload.len();
        Some(r)
    }

    fn take_lease(&mut self, o: u64) -> Option<Lease> {
        let l = self.leases.remove(&o)?;
        self.deadlines.remove(&(l.deadline, o));
        Some(l)
    }

    fn take_retry(&mut self, o: u64) -> Option<Retry> {
        let r = self.retry.remove(&o)?;
        self.retry_at.remove(&(r.not_before, o));
        Some(r)
    }

    fn put_retry(&mut self, o: u64, r: Retry) {
        self.retry_at.insert((r.not_before, o));
        self.retry.insert(o, r);
    }

    fn lease(&mut self, o: u64, l: Lease) {
        if l.deadline != u64::MAX {
            self.deadlines.insert((l.deadline, o));
        }
        self.leases.insert(o, l);
    }

    /// Marks offsets absent from the log done.
    fn skip(&mut self, r: std::ops::Range<u64>) {
        let r = r.start.max(self.floor)..r.end;
        if r.start < r.end {
            self.acked.insert(r);
            self.floor = self.acked.take_run_from(self.floor);
        }
    }

    /// Marks `o` done; returns whether it was not done before.
    fn mark_done(&mut self, o: u64) -> bool {
        if self.is_done(o) {
            return false;
        }
        self.acked.insert(o..o + 1);
        self.floor = self.acked.take_run_from(self.floor);
        true
    }

    /// Leases past their deadline go back for redelivery.
    pub(crate) fn expire(&mut self, now: u64) {
        while self.deadlines.first().is_some_and(|&(d, _)| d <= now) {
            let Some((_, o)) = self.deadlines.pop_first() else { break };
            if let Some(l) = self.leases.remove(&o) {
                self.put_retry(o, Retry { deliveries: l.deliveries, not_before: now, reason: l.reason });
            }
        }
    }

    /// Hands out up to `rules.max` messages: due redeliveries first, then new
    /// ones in offset order. `pull(from, n)` reads up to `n` records at or
    /// after `from` from the log; `fetch(offset)` reads one record again (for
    /// a redelivery; `None` if it is gone); `expired` says whether a record's
    /// time to live has passed.
    pub(crate) fn poll<E>(
        &mut self,
        rules: &PollRules<'_>,
        mut pull: impl FnMut(u64, usize) -> Result<Vec<Record>, E>,
        mut fetch: impl FnMut(u64) -> Result<Option<Record>, E>,
        expired: impl Fn(&Record) -> bool,
    ) -> Result<Polled<E>, E> {
        self.expire(rules.now);
        let mut p = Polled::default();
        // Redeliveries that are due, in offset order.
        let mut due: Vec<u64> = self.retry_at.iter().take_while(|&&(t, _)| t <= rules.now).map(|&(_, o)| o).collect();
        due.sort_unstable();
        for o in due {
            if p.full(rules) {
                break;
            }
            let rec = match fetch(o) {
                Ok(r) => r,
                Err(e) => {
                    // What this poll already did stands (and is persisted).
                    p.error = Some(e);
                    return Ok(p);
                }
            };
            let Some(rec) = rec else {
                // Gone from the log (retention or overflow): nothing to deliver.
                self.take_retry(o);
                self.mark_done(o);
                p.done.push(o);
                continue;
            };
            if !matches(rules.events, &rec) {
                continue;
            }
            let Some(r) = self.take_retry(o) else { continue };
            if expired(&rec) {
                self.settle_expired(rec, r.deliveries, rules, &mut p);
            } else if rules.max_deliveries > 0 && r.deliveries >= rules.max_deliveries {
                self.lease(o, Lease { holder: MOVING, deadline: u64::MAX, deliveries: r.deliveries, reason: None });
                p.dead.push((rec, r.deliveries, DeadReason::MaxDeliveries(r.reason)));
            } else {
                self.counters.redelivered += 1;
                self.hand_out(rec, r.deliveries + 1, r.reason, rules, &mut p);
            }
        }
        // New messages in offset order, reading ahead from the log.
        // Records before `from` in the buffer did not match this consumer's
        // filter; they stay for the group's other consumers.
        let mut from = 0u64;
        loop {
            while !p.full(rules) {
                let next = self.buf.range(from..).find(|(_, r)| matches(rules.events, r)).map(|(&o, _)| o);
                let Some(o) = next else { break };
                from = o + 1;
                let Some(rec) = self.drop_buf(o) else { break };
                if expired(&rec) {
                    self.settle_expired(rec, 0, rules, &mut p);
                } else {
                    self.hand_out(rec, 1, None, rules, &mut p);
                }
            }
            if p.full(rules) || self.buf.len() >= BUF_RECORDS || self.buf_bytes >= BUF_BYTES {
                break;
            }
            let want = (rules.max - p.out.len()).max(64).min(BUF_RECORDS - self.buf.len());
            let recs = match pull(self.cursor, want) {
                Ok(r) => r,
                Err(e) => {
                    p.error = Some(e);
                    return Ok(p);
                }
            };
            if recs.is_empty() {
                break;
            }
            self.take_in(recs);
        }
        Ok(p)
    }

    /// Buffers records read from the log at the cursor.
    fn take_in(&mut self, recs: Vec<Record>) {
        let Some(last) = recs.last().map(|r| r.offset) else { return };
        // Offsets the log skips are gone for good (compacted away, or
        // deleted by retention): done for this group too, or its floor
        // would stop at the first hole forever.
        let mut expect = self.cursor;
        for r in &recs {
            if r.offset > expect {
                self.skip(expect..r.offset);
            }
            expect = r.offset + 1;
        }
        self.cursor = self.cursor.max(last + 1);
        for r in recs {
            if !self.is_done(r.offset) && !self.leases.contains_key(&r.offset) && !self.retry.contains_key(&r.offset) {
                self.buf_bytes += r.message.payload.len();
                self.buf.insert(r.offset, r);
            }
        }
    }

    /// If a poll for `max` messages would have to read the log, claims the
    /// read so that it can run outside the queue's lock: returns where to
    /// read from and how many records. Only one read is claimed at a time;
    /// [`Group::feed`] hands the records in and releases the claim.
    pub(crate) fn read_ahead(&mut self, max: usize, next: u64) -> Option<(u64, usize)> {
        if self.reading || self.cursor >= next || self.buf.len() >= max || self.buf_bytes >= BUF_BYTES {
            return None;
        }
        self.reading = true;
        Some((self.cursor, (BUF_RECORDS - self.buf.len().min(BUF_RECORDS)).min(max.max(256) * 2)))
    }

    /// The records a claimed read found at `from`; dropped if the group has
    /// moved on meanwhile (another consumer read them under the lock).
    pub(crate) fn feed(&mut self, from: u64, recs: Vec<Record>) {
        self.reading = false;
        if from == self.cursor {
            self.take_in(recs);
        }
    }

    /// A claimed read failed.
    pub(crate) fn unclaim(&mut self) {
        self.reading = false;
    }

    fn settle_expired<E>(&mut self, rec: Record, deliveries: u32, rules: &PollRules<'_>, p: &mut Polled<E>) {
        if rules.dead_letter_expired {
            self.lease(rec.offset, Lease { holder: MOVING, deadline: u64::MAX, deliveries, reason: None });
            p.dead.push((rec, deliveries, DeadReason::Expired));
        } else {
            self.counters.expired += 1;
            if self.mark_done(rec.offset) {
                p.done.push(rec.offset);
            }
        }
    }

    fn hand_out<E>(
        &mut self,
        rec: Record,
        deliveries: u32,
        reason: Option<String>,
        rules: &PollRules<'_>,
        p: &mut Polled<E>,
    ) {
        self.counters.delivered += 1;
        p.bytes += rec.message.payload.len();
        match rules.mode {
            AckMode::Auto => {
                if self.mark_done(rec.offset) {
                    self.counters.acked += 1;
                    p.done.push(rec.offset);
                }
            }
            AckMode::Manual => {
                let deadline = rules.now.saturating_add(rules.lease_ms);
                self.lease(rec.offset, Lease { holder: rules.consumer, deadline, deliveries, reason });
            }
        }
        p.out.push(Delivery { record: rec, deliveries });
    }

    /// Acks offsets (leased, or waiting for redelivery). Returns the offsets
    /// that became done; others (already done, never delivered) are ignored.
    pub(crate) fn ack(&mut self, offsets: &[u64]) -> Vec<u64> {
        let mut done = Vec::new();
        for &o in offsets {
            let held = self.take_lease(o).is_some() | self.take_retry(o).is_some();
            if held && self.mark_done(o) {
                self.counters.acked += 1;
                done.push(o);
            }
        }
        done
    }

    /// A move to the dead-letter queue finished: the offsets are done.
    pub(crate) fn moved(&mut self, offsets: &[u64]) -> Vec<u64> {
        let mut done = Vec::new();
        for &o in offsets {
            if self.leases.get(&o).is_some_and(|l| l.holder == MOVING) {
                self.take_lease(o);
                self.counters.dead_lettered += 1;
                if self.mark_done(o) {
                    done.push(o);
                }
            }
        }
        done
    }

    /// A move to the dead-letter queue failed: deliver again later.
    pub(crate) fn unmove(&mut self, offsets: &[u64], now: u64) {
        for &o in offsets {
            if self.leases.get(&o).is_some_and(|l| l.holder == MOVING) {
                if let Some(l) = self.take_lease(o) {
                    self.put_retry(o, Retry { deliveries: l.deliveries, not_before: now, reason: l.reason });
                }
            }
        }
    }

    /// Returns leased offsets for redelivery after `delay_ms`, remembering
    /// `reason`. Returns how many were leased.
    pub(crate) fn nack(&mut self, offsets: &[u64], now: u64, delay_ms: u64, reason: Option<&str>) -> usize {
        let mut n = 0;
        for &o in offsets {
            if self.leases.get(&o).is_some_and(|l| l.holder != MOVING) {
                if let Some(l) = self.take_lease(o) {
                    let reason = reason.map(str::to_owned).or(l.reason);
                    let not_before = now.saturating_add(delay_ms);
                    self.put_retry(o, Retry { deliveries: l.deliveries, not_before, reason });
                    n += 1;
                }
            }
        }
        n
    }

    /// Returns every lease of `consumer` for redelivery at once.
    pub(crate) fn release(&mut self, consumer: ConsumerId, now: u64) -> usize {
        let held: Vec<u64> = self.leases.iter().filter(|(_, l)| l.holder == consumer).map(|(&o, _)| o).collect();
        for &o in &held {
            if let Some(l) = self.take_lease(o) {
                self.put_retry(o, Retry { deliveries: l.deliveries, not_before: now, reason: l.reason });
            }
        }
        held.len()
    }

    /// Whether a poll at `now` may find something, given the log ends at
    /// `next` (a filter may still find nothing).
    pub(crate) fn may_have(&self, next: u64, now: u64) -> bool {
        self.cursor < next
            || !self.buf.is_empty()
            || self.retry_at.first().is_some_and(|&(t, _)| t <= now)
            || self.deadlines.first().is_some_and(|&(t, _)| t <= now)
    }

    /// The next time something becomes deliverable without a publish: a
    /// lease deadline or a delayed redelivery.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let a = self.deadlines.first().map(|&(t, _)| t);
        let b = self.retry_at.first().map(|&(t, _)| t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Loom model of the lease table under concurrent consume, ack, expiry and
/// release: `RUSTFLAGS="--cfg loom" cargo test -p gmq-engine --lib --release loom_`.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use crate::format::Message;
    use loom::sync::{Arc, Mutex};

    #[derive(Default)]
    struct World {
        /// `(consumer, offset, deliveries)` in the order handed out.
        delivered: Vec<(ConsumerId, u64, u32)>,
        /// Offsets whose ack made them done.
        acked: Vec<u64>,
    }

    fn rec(o: u64) -> Record {
        Record { offset: o, timestamp_ms: 0, message: Message::new(vec![o as u8]) }
    }

    fn poll(g: &mut Group, w: &mut World, consumer: ConsumerId, now: u64, max: usize) -> Vec<u64> {
        let rules = PollRules {
            consumer,
            max,
            max_bytes: 0,
            events: None,
            mode: AckMode::Manual,
            now,
            lease_ms: 10,
            max_deliveries: 0,
            dead_letter_expired: false,
        };
        let p = g
            .poll::<()>(
                &rules,
                |from, n| Ok((from..3).take(n).map(rec).collect()),
                |o| Ok((o < 3).then(|| rec(o))),
                |_| false,
            )
            .unwrap_or_default();
        for d in &p.out {
            assert!(!w.acked.contains(&d.record.offset), "offset {} delivered after its ack", d.record.offset);
            w.delivered.push((consumer, d.record.offset, d.deliveries));
        }
        p.out.iter().map(|d| d.record.offset).collect()
    }

    #[test]
    fn loom_leases_under_consume_ack_expiry_and_release() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let state = Arc::new(Mutex::new((Group::new(0, 0), World::default())));
            let s1 = state.clone();
            let t1 = loom::thread::spawn(move || {
                let got = {
                    let mut st = s1.lock().unwrap();
                    let (g, w) = &mut *st;
                    poll(g, w, 1, 0, 2)
                };
                let mut st = s1.lock().unwrap();
                let (g, w) = &mut *st;
                let done = g.ack(&got);
                w.acked.extend(done);
            });
            let s2 = state.clone();
            let t2 = loom::thread::spawn(move || {
                // Later in time: consumer 1's leases may have expired.
                let got = {
                    let mut st = s2.lock().unwrap();
                    let (g, w) = &mut *st;
                    poll(g, w, 2, 20, 3)
                };
                let mut st = s2.lock().unwrap();
                let (g, w) = &mut *st;
                let done = g.ack(&got);
                w.acked.extend(done);
            });
            let s3 = state.clone();
            let t3 = loom::thread::spawn(move || {
                let mut st = s3.lock().unwrap();
                st.0.release(1, 5);
            });
            t1.join().unwrap();
            t2.join().unwrap();
            t3.join().unwrap();
            let mut st = state.lock().unwrap();
            let (g, w) = &mut *st;
            // Every ack made its offset done exactly once.
            let mut acked = w.acked.clone();
            acked.sort_unstable();
            let before = acked.len();
            acked.dedup();
            assert_eq!(before, acked.len(), "an offset acked twice");
            for &o in &acked {
                assert!(g.is_done(o));
            }
            // Nothing is lost: what is not acked comes back once leases expire.
            let rest = poll(g, w, 3, 1_000, 10);
            let mut all: Vec<u64> = acked.iter().chain(&rest).copied().collect();
            all.sort_unstable();
            assert_eq!(all, vec![0, 1, 2], "acked {acked:?}, redelivered {rest:?}");
            // No offset was held by two consumers at once: a redelivery
            // always carries a higher count than the delivery before it.
            for (i, d) in w.delivered.iter().enumerate() {
                if let Some(prev) = w.delivered[..i].iter().rev().find(|p| p.1 == d.1) {
                    assert_eq!(d.2, prev.2 + 1, "offset {} delivered twice without expiry or release", d.1);
                }
            }
        });
    }
}
