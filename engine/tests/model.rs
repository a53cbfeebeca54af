#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Model-based property test of the broker semantics: random sequences of
//! operations run on the real engine over the simulated disk ([`SimFs`],
//! manual committer pool, injected clock) and on a plain in-memory model, and
//! every answer of the engine is checked against the model.
//!
//! Operations: publish (single, atomic batch, with and without `msg_id`, and
//! one left in flight), consume (auto and manual ack, three groups, two
//! consumers; the first consume of a name creates the group), ack, nack (with
//! and without delay and reason), clock advance (lease expiry), consumer
//! departure, purge, compaction, `maintain` (retention and dead-letter
//! settling), a drain of one group, a clean restart, and a power cut
//! (`SimFs::crash`, then open again) after none, some or all of the pending
//! commit rounds. Queue `jobs` has 4 KiB segments, a 1 s lease, a 5 s dedup
//! window and `max_deliveries` 0, 2 or 3; its dead-letter queue is
//! `jobs.dlq`. `fsync = always` throughout. Every case ends with a drain of
//! every group (after a power cut for half of them) and a clean restart.
//!
//! What is asserted (every message names the operation index):
//! - *No acknowledged publish lost*: a publish whose `wait` returned is in the
//!   log at every check while some group still needs it (or no group exists),
//!   across crashes, compaction and retention; and it is delivered to every
//!   group that existed when it was published (the queue's first group gets
//!   everything retained), unless that group acked it, it was purged or it
//!   was dead-lettered. A consume may return fewer than `max` only when
//!   nothing needed is left, first deliveries never skip a needed offset, and
//!   a drain (leases expired, auto-ack until empty) leaves nothing needed.
//! - *Acked stays acked*: an offset whose ack `wait` returned Ok, or that was
//!   auto-consumed, is never delivered to that group again, also after a crash.
//! - *FIFO per group*: first deliveries (`deliveries == 1`) come in strictly
//!   increasing offset order within one process lifetime; redeliveries are
//!   predicted exactly (due retries first, in offset order, with the right
//!   count); a message leased and not expired is never handed to anyone else;
//!   payload, timestamp, headers and `msg_id` equal what was published there.
//! - *Exact counts*: ack and nack return how many offsets they settled,
//!   `release_consumer` how many leases it returned, each group's `pending`
//!   and `waiting_retry` match the model after every operation; publish
//!   returns the predicted offsets and `duplicate` flags (dedup within the
//!   window, within a batch, and after a restart from the records still
//!   stored in the window).
//! - *Dead letters*: a message is moved when a due retry has been delivered
//!   `max_deliveries` times; its copy shows up in `jobs.dlq` with the right
//!   `x-dead-letter-*` headers, payload and derived `msg_id`, **exactly once
//!   per (group, offset)**, also across crashes: the DLQ keeps every record (no
//!   groups, so retention keeps all) and its dedup window is effectively
//!   infinite, so a message moved again after a crash (its source ack was not
//!   yet durable) must be deduplicated, never copied twice. Once the move is
//!   settled the source group never delivers it again; after a crash a message
//!   whose copy is durable but whose source ack may not be is allowed either
//!   way (delivered again, or not: it is safe in the DLQ).
//! - *Retention*: after `maintain`, `first_offset()` is at most the lowest
//!   offset any group still needs (not durably done; a message whose copy is
//!   durable in the DLQ is not needed).
//! - Delivery counts restart at 1 after a crash (leases are in memory only);
//!   what was not yet durable at a crash (a group's creation, a publish or a
//!   dead-letter copy in flight, a settled move's source ack) may or may not
//!   survive, and the model follows what the reopened engine shows.
//! - After the final drain every group's `depth` is 0 (also for a group
//!   created after a compaction left holes in the log), and opening after a
//!   clean close scans nothing.
//!
//! Engine calls that wait on appends internally (purge, compact, maintain)
//! run on a helper thread while this one runs the manual committer pool.
//!
//! Replay a failure: proptest stores it in `model.proptest-regressions` next
//! to this file and reruns it first. `PROPTEST_CASES=N` changes the number of
//! cases, `GMQ_MODEL_TRACE=1` prints every operation and delivery,
//! `GMQ_MODEL_STATS=1` what each case exercised.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gmq_engine::sim::SimFs;
use gmq_engine::{AckMode, ConsumeOptions, Delivery, Engine, EngineConfig, Message, Pending, Published, QueueSpec};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const Q: &str = "jobs";
const DLQ: &str = "jobs.dlq";
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
const CONSUMERS: [u64; 2] = [1, 2];
/// The consumer a drain consumes as.
const DRAIN_CONSUMER: u64 = 9;
const ACK_TIMEOUT_MS: u64 = 1_000;
const MAX_NACK_DELAY_MS: u64 = 2_000;
const DEDUP_WINDOW_MS: u64 = 5_000;
const T0: u64 = 1_700_000_000_000;
/// Operations per case (exclusive bound).
const MAX_OPS: usize = 500;

#[derive(Debug)]
struct TestClock(AtomicU64);

impl gmq_engine::Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Publish {
        size: u16,
        id: Option<u8>,
    },
    Batch {
        msgs: Vec<(u16, Option<u8>)>,
    },
    /// A publish nobody waits for: it completes at the next commit round
    /// (or is lost in a crash before one).
    PublishAsync {
        size: u16,
        id: Option<u8>,
    },
    Consume {
        group: u8,
        consumer: u8,
        manual: bool,
        max: u8,
    },
    /// Acks offsets the group holds (picked by index), and maybe a stray one.
    Ack {
        group: u8,
        picks: Vec<u16>,
        stray: bool,
    },
    /// Nacks offsets the group holds (picked by index; none picked: all).
    Nack {
        group: u8,
        picks: Vec<u16>,
        delay: u16,
        reason: bool,
    },
    Advance {
        ms: u16,
    },
    Release {
        consumer: u8,
    },
    Purge,
    Compact,
    Maintain,
    /// Power cut after `rounds` commit rounds: 0 none, 255 all of them
    /// (everything appended is durable), else that many (some appends
    /// durable, others not).
    Crash {
        rounds: u8,
    },
    /// Clean close and open again.
    Restart,
    /// A manual consume whose deliveries are all nacked at once: delivery
    /// counts climb to `max_deliveries`.
    Bounce {
        group: u8,
    },
    Drain {
        group: u8,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let id = || prop::option::weighted(0.3, 0u8..6);
    let size = || 40u16..700;
    // Mostly one or two groups, so that floors pass segment boundaries.
    let group = || prop_oneof![5 => Just(0u8), 3 => Just(1u8), 1 => Just(2u8)];
    let picks = || prop::collection::vec(any::<u16>(), 1..6);
    prop_oneof![
        12 => (size(), id()).prop_map(|(size, id)| Op::Publish { size, id }),
        4 => prop::collection::vec((size(), id()), 2..6).prop_map(|msgs| Op::Batch { msgs }),
        3 => (size(), id()).prop_map(|(size, id)| Op::PublishAsync { size, id }),
        14 => (group(), 0u8..2, prop::bool::weighted(0.6), 1u8..8)
            .prop_map(|(group, consumer, manual, max)| Op::Consume { group, consumer, manual, max }),
        7 => (group(), picks(), prop::bool::weighted(0.2)).prop_map(|(group, picks, stray)| Op::Ack { group, picks, stray }),
        8 => (group(), prop_oneof![2 => picks(), 1 => Just(Vec::new())], prop_oneof![2 => Just(0u16), 1 => 1u16..2000], any::<bool>())
            .prop_map(|(group, picks, delay, reason)| Op::Nack { group, picks, delay, reason }),
        5 => (0u16..1500).prop_map(|ms| Op::Advance { ms }),
        2 => (0u8..2).prop_map(|consumer| Op::Release { consumer }),
        1 => Just(Op::Purge),
        2 => Just(Op::Compact),
        3 => Just(Op::Maintain),
        1 => prop_oneof![Just(0u8), Just(u8::MAX), 1u8..4].prop_map(|rounds| Op::Crash { rounds }),
        1 => Just(Op::Restart),
        3 => group().prop_map(|group| Op::Bounce { group }),
        2 => group().prop_map(|group| Op::Drain { group }),
    ]
}

/// A message the model knows was published at an offset.
#[derive(Debug, Clone)]
struct Pub {
    msg: Message,
    ts: u64,
    /// The commit round in which its publish completed (it is in the log
    /// and durable from then on).
    acked: Option<u64>,
}

/// What a group holds an offset in, in memory.
#[derive(Debug, Clone)]
enum Slot {
    Leased {
        holder: u64,
        deadline: u64,
        deliveries: u32,
        reason: Option<String>,
    },
    Retry {
        not_before: u64,
        deliveries: u32,
        reason: Option<String>,
    },
    /// Being copied to the dead-letter queue.
    Moving,
}

#[derive(Debug, Default)]
struct GroupModel {
    /// Offsets from here on (and at or above the purge mark) must reach the
    /// group; below, it may get what is still retained.
    start: u64,
    /// Its creation is durable.
    durable: bool,
    /// Done for the group (acked, auto-consumed, moved), in memory.
    done: BTreeSet<u64>,
    slots: BTreeMap<u64, Slot>,
    /// Highest first delivery in this process lifetime.
    last_new: Option<u64>,
}

#[derive(Debug)]
struct MoveModel {
    group: String,
    offset: u64,
    deliveries: u32,
    reason: Option<String>,
    /// The dead-letter copy is stored (or was a duplicate).
    copy_done: bool,
}

struct InFlight {
    pending: Pending<Published>,
    offsets: Vec<u64>,
}

struct Harness {
    fs: SimFs,
    clock: Arc<TestClock>,
    cfg: EngineConfig,
    spec: QueueSpec,
    engine: Option<Engine>,
    max_deliveries: u32,
    /// What the current operation is, for assertion messages.
    ctx: String,
    step: usize,
    pubs: BTreeMap<u64, Pub>,
    /// The offset the next stored message gets.
    next: u64,
    /// Everything below is purged.
    purge_low: u64,
    groups: BTreeMap<String, GroupModel>,
    /// msg_id -> (offset, timestamp).
    dedup: HashMap<String, (u64, u64)>,
    /// Rebuild the dedup window from the log before the next publish with ids.
    dedup_stale: bool,
    inflight: Vec<InFlight>,
    moves: Vec<MoveModel>,
    /// Moves settled in memory whose source ack is not known durable.
    unflushed: Vec<(String, u64)>,
    /// (group, source offset) -> DLQ offset of its copy.
    in_dlq: BTreeMap<(String, u64), u64>,
    /// Next DLQ offset to look at.
    dlq_seen: u64,
    /// Commit rounds run so far.
    epoch: u64,
    stats: Stats,
}

fn header<'a>(m: &'a Message, k: &str) -> Option<&'a str> {
    m.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// Runs `f` (which may wait on appends internally) on a helper thread while
/// this thread runs the manual committer pool.
fn pumped<T: Send>(engine: &Engine, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(f);
        while !h.is_finished() {
            engine.run_committers(usize::MAX);
            std::thread::yield_now();
        }
        h.join().unwrap()
    })
}

impl Harness {
    fn new(seed: u64, max_deliveries: u32) -> Harness {
        let fs = SimFs::new(seed);
        let clock = Arc::new(TestClock(AtomicU64::new(T0)));
        let mut cfg = EngineConfig::new("/data");
        cfg.committer_threads = 0;
        cfg.max_open_files = 4;
        cfg.checkpoint_bytes = 8192;
        cfg.defaults.segment_bytes = 4096;
        // The dead-letter queue (auto-created with the defaults) remembers
        // every copy's msg_id: a second copy is always a duplicate.
        cfg.defaults.dedup_window_ms = 1 << 50;
        let spec = QueueSpec {
            segment_bytes: Some(4096),
            ack_timeout_ms: Some(ACK_TIMEOUT_MS),
            max_deliveries: Some(max_deliveries),
            dedup_window_ms: Some(DEDUP_WINDOW_MS),
            ..QueueSpec::default()
        };
        let engine = Engine::open_with(cfg.clone(), Arc::new(fs.clone()), clock.clone()).unwrap();
        let (_, created) = engine.create_queue(Q, &spec).unwrap();
        assert!(created);
        Harness {
            fs,
            clock,
            cfg,
            spec,
            engine: Some(engine),
            max_deliveries,
            ctx: "setup".into(),
            step: 0,
            pubs: BTreeMap::new(),
            next: 0,
            purge_low: 0,
            groups: BTreeMap::new(),
            dedup: HashMap::new(),
            dedup_stale: false,
            inflight: Vec::new(),
            moves: Vec::new(),
            unflushed: Vec::new(),
            in_dlq: BTreeMap::new(),
            dlq_seen: 0,
            epoch: 0,
            stats: Stats::default(),
        }
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    fn now(&self) -> u64 {
        self.clock.0.load(Ordering::SeqCst)
    }

    fn log(&self) -> Arc<gmq_engine::QueueLog> {
        self.engine().existing(Q).unwrap().log().clone()
    }

    /// Whether group `g` still needs offset `o` delivered: published and
    /// durable, at or above its start and the purge mark, not done, not held,
    /// not safe in the DLQ. Only publishes completed by commit round `upto`
    /// count.
    fn required(&self, g: &str, gm: &GroupModel, o: u64, p: &Pub, upto: u64) -> bool {
        p.acked.is_some_and(|e| e <= upto)
            && o >= gm.start.max(self.purge_low)
            && !gm.done.contains(&o)
            && !gm.slots.contains_key(&o)
            && !self.in_dlq.contains_key(&(g.to_owned(), o))
    }

    /// Offsets the log must still hold for group `g`.
    fn needed(&self, g: &str) -> Vec<u64> {
        let gm = &self.groups[g];
        let mut v: Vec<u64> = self
            .pubs
            .range(gm.start.max(self.purge_low)..)
            .filter(|&(&o, p)| self.required(g, gm, o, p, u64::MAX))
            .map(|(&o, _)| o)
            .collect();
        v.extend(gm.slots.keys().copied().filter(|&o| o >= self.purge_low));
        v.sort_unstable();
        v
    }

    fn run(&mut self, i: usize, op: &Op) {
        self.step = i;
        self.ctx = format!("op #{i} {op:?}");
        if trace() {
            eprintln!("{} (now {})", self.ctx, self.now() - T0);
        }
        match op {
            Op::Publish { size, id } => self.publish(&[(*size, *id)], true),
            Op::Batch { msgs } => self.publish(msgs, true),
            Op::PublishAsync { size, id } => self.publish(&[(*size, *id)], false),
            Op::Consume { group, consumer, manual, max } => {
                self.consume(GROUPS[*group as usize], CONSUMERS[*consumer as usize], *manual, *max as usize);
            }
            Op::Ack { group, picks, stray } => self.ack(GROUPS[*group as usize], picks, *stray),
            Op::Nack { group, picks, delay, reason } => {
                self.nack(GROUPS[*group as usize], picks, u64::from(*delay), *reason);
            }
            Op::Advance { ms } => {
                self.clock.0.fetch_add(u64::from(*ms), Ordering::SeqCst);
            }
            Op::Release { consumer } => self.release(CONSUMERS[*consumer as usize]),
            Op::Purge => self.purge(),
            Op::Compact => self.compact(),
            Op::Maintain => self.maintain(),
            Op::Crash { rounds } => self.crash(*rounds),
            Op::Restart => self.restart(),
            Op::Bounce { group } => {
                let g = GROUPS[*group as usize];
                self.consume(g, CONSUMERS[0], true, 8);
                self.nack(g, &[], 0, false);
            }
            Op::Drain { group } => {
                let g = GROUPS[*group as usize];
                if self.groups.contains_key(g) {
                    self.drain(g);
                }
            }
        }
        self.check_groups();
    }

    /// The engine has the model's groups, each holding as many leases
    /// (moves included) and waiting redeliveries as the model says.
    fn check_groups(&self) {
        let st = self.engine().stats(Q).unwrap();
        let names: Vec<&String> = st.groups.iter().map(|g| &g.name).collect();
        assert_eq!(names, self.groups.keys().collect::<Vec<_>>(), "{}: groups", self.ctx);
        for g in &st.groups {
            let m = &self.groups[&g.name];
            let leased = m.slots.values().filter(|s| !matches!(s, Slot::Retry { .. })).count() as u64;
            let waiting = m.slots.len() as u64 - leased;
            assert_eq!(
                (g.pending, g.waiting_retry),
                (leased, waiting),
                "{}: {}: (pending, waiting_retry); model holds {:?}",
                self.ctx,
                g.name,
                m.slots
            );
        }
    }

    fn message(&self, k: usize, size: u16, id: Option<u8>) -> Message {
        let mut payload = format!("op{}-{k}-", self.step).into_bytes();
        let fill = b'a' + (self.step % 26) as u8;
        payload.resize(payload.len().max(usize::from(size)), fill);
        let mut m = Message::new(payload);
        m.headers = vec![("src".into(), format!("op{}-{k}", self.step))];
        m.msg_id = id.map(|i| format!("id{i}"));
        m
    }

    /// The dedup window as the engine rebuilds it after a restart: the ids of
    /// stored records younger than the window, the latest offset winning.
    fn rebuild_dedup(&mut self, now: u64) {
        self.dedup.clear();
        for r in self.log().read(0, usize::MAX, usize::MAX).unwrap() {
            if let Some(id) = &r.message.msg_id {
                if r.timestamp_ms + DEDUP_WINDOW_MS > now {
                    self.dedup.insert(id.clone(), (r.offset, r.timestamp_ms));
                }
            }
        }
        self.dedup_stale = false;
    }

    fn publish(&mut self, specs: &[(u16, Option<u8>)], wait: bool) {
        let msgs: Vec<Message> = specs.iter().enumerate().map(|(k, &(s, id))| self.message(k, s, id)).collect();
        let now = self.now();
        let with_ids = msgs.iter().any(|m| m.msg_id.is_some());
        if with_ids {
            if self.dedup_stale {
                self.rebuild_dedup(now);
            }
            self.dedup.retain(|_, &mut (_, ts)| ts + DEDUP_WINDOW_MS > now);
        }
        let mut want_offsets = Vec::new();
        let mut want_dup = Vec::new();
        let mut fresh: Vec<usize> = Vec::new();
        let mut in_batch: HashMap<&str, u64> = HashMap::new();
        for (i, m) in msgs.iter().enumerate() {
            let id = m.msg_id.as_deref();
            if let Some(&(o, _)) = id.and_then(|id| self.dedup.get(id)) {
                want_offsets.push(o);
                want_dup.push(true);
            } else if let Some(&o) = id.and_then(|id| in_batch.get(id)) {
                want_offsets.push(o);
                want_dup.push(true);
            } else {
                let o = self.next + fresh.len() as u64;
                if let Some(id) = id {
                    in_batch.insert(id, o);
                }
                fresh.push(i);
                want_offsets.push(o);
                want_dup.push(false);
            }
        }
        let p = self.engine().publish(Q, &msgs).unwrap_or_else(|e| panic!("{}: publish failed: {e}", self.ctx));
        let got = p.peek().unwrap().clone();
        assert_eq!(got.offsets, want_offsets, "{}: publish offsets", self.ctx);
        assert_eq!(got.duplicate, want_dup, "{}: publish duplicate flags", self.ctx);
        self.stats.dups += want_dup.iter().filter(|&&d| d).count() as u64;
        for &i in &fresh {
            let o = want_offsets[i];
            self.pubs.insert(o, Pub { msg: msgs[i].clone(), ts: now, acked: None });
            if let Some(id) = &msgs[i].msg_id {
                self.dedup.insert(id.clone(), (o, now));
            }
        }
        self.next += fresh.len() as u64;
        let fresh_offsets = fresh.iter().map(|&i| want_offsets[i]).collect();
        self.inflight.push(InFlight { pending: p, offsets: fresh_offsets });
        self.harvest();
        if wait && !self.inflight.is_empty() {
            self.pump();
        }
    }

    /// Completed publishes become acknowledged.
    fn harvest(&mut self) {
        let mut i = 0;
        while i < self.inflight.len() {
            if !self.inflight[i].pending.is_done() {
                i += 1;
                continue;
            }
            let f = self.inflight.remove(i);
            let got = f.pending.wait().unwrap_or_else(|e| panic!("{}: publish wait failed: {e}", self.ctx));
            for o in f.offsets {
                assert!(got.offsets.contains(&o), "{}: publish result lost offset {o}", self.ctx);
                self.pubs.get_mut(&o).unwrap().acked = Some(self.epoch);
            }
        }
    }

    /// Runs every commit round: everything appended so far is durable.
    fn pump(&mut self) {
        self.epoch += 1;
        self.engine().run_committers(usize::MAX);
        self.harvest();
        assert!(self.inflight.is_empty(), "{}: a publish is pending after every commit round ran", self.ctx);
        assert_eq!(self.log().next_offset(), self.next, "{}: next offset after every commit round ran", self.ctx);
        for g in self.groups.values_mut() {
            g.durable = true;
        }
        self.unflushed.clear();
        self.scan_dlq();
        for m in &mut self.moves {
            if !m.copy_done {
                assert!(
                    self.in_dlq.contains_key(&(m.group.clone(), m.offset)),
                    "{}: offset {} of group {} was moved to the dead-letter queue but no copy was stored",
                    self.ctx,
                    m.offset,
                    m.group
                );
                m.copy_done = true;
            }
        }
    }

    /// Checks the DLQ records not seen yet against the moves in progress.
    fn scan_dlq(&mut self) {
        let Some(dlq) = self.engine().get(DLQ).unwrap() else { return };
        let recs = dlq.log().read(self.dlq_seen, usize::MAX, usize::MAX).unwrap();
        for r in recs {
            let ctx = &self.ctx;
            assert!(r.offset >= self.dlq_seen);
            self.dlq_seen = r.offset + 1;
            let m = &r.message;
            assert_eq!(header(m, "x-dead-letter-queue"), Some(Q), "{ctx}: DLQ record {}", r.offset);
            let g = header(m, "x-dead-letter-group").unwrap_or_else(|| panic!("{ctx}: no group header")).to_owned();
            let o: u64 = header(m, "x-dead-letter-offset").unwrap().parse().unwrap();
            let key = (g.clone(), o);
            if let Some(first) = self.in_dlq.get(&key) {
                panic!(
                    "{ctx}: a second dead-letter copy of offset {o} of group {g} (at DLQ offsets {first} and {})",
                    r.offset
                );
            }
            let mv = self
                .moves
                .iter()
                .find(|mv| mv.group == g && mv.offset == o && !mv.copy_done)
                .unwrap_or_else(|| panic!("{ctx}: DLQ copy of offset {o} of group {g} that the model never moved"));
            let deliveries = mv.deliveries.to_string();
            assert_eq!(header(m, "x-dead-letter-deliveries"), Some(deliveries.as_str()), "{ctx}: deliveries header");
            assert_eq!(header(m, "x-dead-letter-reason"), Some("max_deliveries"), "{ctx}");
            assert_eq!(header(m, "x-dead-letter-nack-reason"), mv.reason.as_deref(), "{ctx}: nack reason header");
            let p = &self.pubs[&o];
            assert_eq!(m.payload, p.msg.payload, "{ctx}: DLQ copy of {o}: payload");
            assert_eq!(header(m, "src"), header(&p.msg, "src"), "{ctx}: original headers kept");
            let ts = p.ts.to_string();
            assert_eq!(header(m, "x-dead-letter-timestamp-ms"), Some(ts.as_str()), "{ctx}");
            assert_eq!(header(m, "x-original-msg-id"), p.msg.msg_id.as_deref(), "{ctx}");
            assert_eq!(m.msg_id.as_deref(), Some(format!("dlq:{Q}:{g}:{o}").as_str()), "{ctx}");
            self.in_dlq.insert(key, r.offset);
        }
    }

    /// What the engine does at the start of consume, ack and maintain: moves
    /// whose copy is stored are acked in their group.
    fn settle(&mut self) {
        let moves = std::mem::take(&mut self.moves);
        for m in moves {
            if !m.copy_done {
                self.moves.push(m);
                continue;
            }
            let Some(g) = self.groups.get_mut(&m.group) else { continue };
            if matches!(g.slots.get(&m.offset), Some(Slot::Moving)) {
                g.slots.remove(&m.offset);
                assert!(g.done.insert(m.offset));
                self.unflushed.push((m.group, m.offset));
            }
        }
    }

    fn check_delivery(&self, g: &str, d: &Delivery, seen: u64) {
        let o = d.record.offset;
        let ctx = &self.ctx;
        let p = self.pubs.get(&o).unwrap_or_else(|| panic!("{ctx}: {g} got offset {o}, which was never published"));
        assert!(p.acked.is_some_and(|e| e <= seen), "{ctx}: {g} got offset {o} before its publish completed");
        assert_eq!(d.record.message, p.msg, "{ctx}: {g} got offset {o} with other contents than were published there");
        assert_eq!(d.record.timestamp_ms, p.ts, "{ctx}: {g}: offset {o} timestamp");
        assert!(o >= self.purge_low, "{ctx}: {g} got offset {o}, purged (below {})", self.purge_low);
        if self.max_deliveries > 0 {
            assert!(d.deliveries <= self.max_deliveries, "{ctx}: {g}: offset {o} delivered {} times", d.deliveries);
        }
    }

    fn consume(&mut self, gname: &str, consumer: u64, manual: bool, max: usize) -> usize {
        let now = self.now();
        self.settle();
        if !self.groups.contains_key(gname) {
            // The first group gets everything retained; later ones at least
            // what is published from now on.
            let start = if self.groups.is_empty() { self.purge_low } else { self.next };
            self.groups.insert(gname.to_owned(), GroupModel { start, ..GroupModel::default() });
        }
        let md = self.max_deliveries;
        let g = self.groups.get_mut(gname).unwrap();
        for s in g.slots.values_mut() {
            if let Slot::Leased { deadline, deliveries, reason, .. } = s {
                if *deadline <= now {
                    let r = Slot::Retry { not_before: now, deliveries: *deliveries, reason: reason.take() };
                    *s = r;
                }
            }
        }
        // Due redeliveries first, in offset order; those delivered
        // max_deliveries times move to the DLQ instead.
        let due: Vec<u64> = g
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Retry { not_before, .. } if *not_before <= now))
            .map(|(&o, _)| o)
            .collect();
        let mut want_retry: Vec<(u64, u32, Option<String>)> = Vec::new();
        let mut new_moves = Vec::new();
        for o in due {
            if want_retry.len() >= max {
                break;
            }
            let Some(Slot::Retry { deliveries, reason, .. }) = g.slots.get(&o).cloned() else { unreachable!() };
            if md > 0 && deliveries >= md {
                g.slots.insert(o, Slot::Moving);
                let copy_done = self.in_dlq.contains_key(&(gname.to_owned(), o));
                self.stats.dlq_dups += u64::from(copy_done);
                new_moves.push(MoveModel { group: gname.to_owned(), offset: o, deliveries, reason, copy_done });
            } else {
                want_retry.push((o, deliveries + 1, reason));
            }
        }
        // The copies of one consume are one batch: stored together, so a
        // duplicate (copied before a crash) settles with the fresh ones.
        if new_moves.iter().any(|m| !m.copy_done) {
            for m in &mut new_moves {
                m.copy_done = false;
            }
        }
        self.moves.extend(new_moves);
        // What this consume can see: publishes completed so far.
        let seen = self.epoch;

        let opts = ConsumeOptions {
            max,
            ack: if manual { AckMode::Manual } else { AckMode::Auto },
            ..ConsumeOptions::default()
        };
        let p = self
            .engine()
            .consume(Q, gname, consumer, &opts)
            .unwrap_or_else(|e| panic!("{}: consume failed: {e}", self.ctx));
        if !p.is_done() {
            self.pump();
        }
        let out = p.wait().unwrap_or_else(|e| panic!("{}: consume wait failed: {e}", self.ctx));
        let ctx = &self.ctx;
        assert!(out.len() <= max, "{ctx}: {} deliveries for max {max}", out.len());
        for d in &out {
            self.check_delivery(gname, d, seen);
        }
        self.stats.deliveries += out.len() as u64;
        if trace() {
            eprintln!("  {gname} got {:?}; retries expected {want_retry:?}", summary(&out));
        }
        self.stats.redeliveries += out.iter().filter(|d| d.deliveries > 1).count() as u64;
        let k = want_retry.len();
        let got: Vec<(u64, u32)> = out.iter().take(k).map(|d| (d.record.offset, d.deliveries)).collect();
        let want: Vec<(u64, u32)> = want_retry.iter().map(|(o, n, _)| (*o, *n)).collect();
        assert_eq!(
            got,
            want,
            "{ctx}: {gname}: due redeliveries (offset, deliveries) first; got all {:?}",
            summary(&out)
        );
        let g = &self.groups[gname];
        let floor = g.start.max(self.purge_low);
        let mut last = g.last_new;
        for d in &out[k..] {
            let o = d.record.offset;
            assert_eq!(
                d.deliveries, 1,
                "{ctx}: {gname}: offset {o} is no due redelivery, so it must be a first delivery"
            );
            assert!(last.is_none_or(|l| o > l), "{ctx}: {gname}: first delivery of {o} after {last:?}: not FIFO");
            assert!(!g.done.contains(&o), "{ctx}: {gname}: offset {o} delivered again though it is acked/done");
            assert!(
                !g.slots.contains_key(&o),
                "{ctx}: {gname}: offset {o} delivered while {:?} (leased to someone, waiting or moving)",
                g.slots[&o]
            );
            let lo = last.map_or(0, |l| l + 1).max(floor).min(o);
            if let Some((&s, _)) = self.pubs.range(lo..o).find(|&(&s, p)| self.required(gname, g, s, p, seen)) {
                panic!("{ctx}: {gname}: first delivery of {o} skipped offset {s}, which it still needs");
            }
            last = Some(o);
        }
        if out.len() < max {
            let lo = last.map_or(0, |l| l + 1).max(floor);
            if let Some((&s, _)) = self.pubs.range(lo..).find(|&(&s, p)| self.required(gname, g, s, p, seen)) {
                panic!(
                    "{ctx}: {gname}: consume returned {} < max {max} while offset {s} was deliverable; got {:?}",
                    out.len(),
                    summary(&out)
                );
            }
        }
        let g = self.groups.get_mut(gname).unwrap();
        for (i, d) in out.iter().enumerate() {
            let o = d.record.offset;
            if manual {
                let reason = want_retry.get(i).and_then(|w| w.2.clone());
                let deadline = now + ACK_TIMEOUT_MS;
                g.slots.insert(o, Slot::Leased { holder: consumer, deadline, deliveries: d.deliveries, reason });
            } else {
                g.slots.remove(&o);
                g.done.insert(o);
            }
        }
        g.last_new = last;
        out.len()
    }

    fn pick(&self, g: &str, picks: &[u16]) -> Vec<u64> {
        let held: Vec<u64> = self.groups.get(g).map(|g| g.slots.keys().copied().collect()).unwrap_or_default();
        if held.is_empty() {
            return Vec::new();
        }
        picks.iter().map(|&p| held[usize::from(p) % held.len()]).collect()
    }

    fn ack(&mut self, gname: &str, picks: &[u16], stray: bool) {
        let mut offsets = self.pick(gname, picks);
        if stray {
            offsets.push(u64::from(picks[0]) % (self.next + 1));
        }
        self.settle();
        let mut want = 0;
        if let Some(g) = self.groups.get_mut(gname) {
            for &o in &offsets {
                if g.slots.remove(&o).is_some() {
                    assert!(g.done.insert(o));
                    want += 1;
                }
            }
        }
        let p = self.engine().ack(Q, gname, &offsets).unwrap_or_else(|e| panic!("{}: ack failed: {e}", self.ctx));
        if !p.is_done() {
            self.pump();
        }
        let n = p.wait().unwrap_or_else(|e| panic!("{}: ack wait failed: {e}", self.ctx));
        assert_eq!(n, want, "{}: {gname}: ack of {offsets:?} settled {n}, expected {want}", self.ctx);
    }

    fn nack(&mut self, gname: &str, picks: &[u16], delay: u64, reason: bool) {
        let offsets = if picks.is_empty() {
            self.groups.get(gname).map(|g| g.slots.keys().copied().collect()).unwrap_or_default()
        } else {
            self.pick(gname, picks)
        };
        let now = self.now();
        let reason = reason.then(|| format!("why{}", self.step));
        let mut want = 0;
        if let Some(g) = self.groups.get_mut(gname) {
            for &o in &offsets {
                if let Some(Slot::Leased { deliveries, reason: old, .. }) = g.slots.get(&o).cloned() {
                    let reason = reason.clone().or(old);
                    g.slots.insert(o, Slot::Retry { not_before: now + delay, deliveries, reason });
                    want += 1;
                }
            }
        }
        let n = self.engine().nack(Q, gname, &offsets, delay, reason.as_deref()).unwrap();
        assert_eq!(n, want, "{}: {gname}: nack of {offsets:?} returned {n}, expected {want}", self.ctx);
    }

    fn release(&mut self, consumer: u64) {
        let now = self.now();
        let mut want = 0;
        for g in self.groups.values_mut() {
            for s in g.slots.values_mut() {
                if let Slot::Leased { holder, deliveries, reason, .. } = s {
                    if *holder == consumer {
                        let r = Slot::Retry { not_before: now, deliveries: *deliveries, reason: reason.take() };
                        *s = r;
                        want += 1;
                    }
                }
            }
        }
        let n = self.engine().release_consumer(consumer);
        assert_eq!(n, want, "{}: release of consumer {consumer} returned {n} leases, expected {want}", self.ctx);
    }

    fn purge(&mut self) {
        self.pump();
        let e = self.engine();
        assert_eq!(e.existing(Q).unwrap().log().next_offset(), self.next, "{}: next offset before purge", self.ctx);
        pumped(e, || e.purge(Q)).unwrap_or_else(|e| panic!("{}: purge failed: {e}", self.ctx));
        self.purge_low = self.next;
        let low = self.purge_low;
        for g in self.groups.values_mut() {
            g.slots.retain(|&o, _| o >= low);
        }
        self.check_storage();
    }

    fn compact(&mut self) {
        self.pump();
        let e = self.engine();
        let rep =
            pumped(e, || e.compact(Q, 0.5, false)).unwrap_or_else(|e| panic!("{}: compact failed: {e}", self.ctx));
        self.stats.rewritten += rep.segments_rewritten;
        self.check_storage();
    }

    fn maintain(&mut self) {
        self.pump();
        self.settle();
        let e = self.engine();
        self.stats.deleted += pumped(e, || e.maintain()) as u64;
        let first = self.log().first_offset();
        let floor = if self.groups.is_empty() {
            self.pubs.range(self.purge_low..).find(|(_, p)| p.acked.is_some()).map(|(&o, _)| o)
        } else {
            self.groups.keys().filter_map(|g| self.needed(g).first().copied()).min()
        };
        if let Some(floor) = floor {
            assert!(
                first <= floor,
                "{}: retention deleted up to {first}, but offset {floor} is still needed (group floors {:?})",
                self.ctx,
                self.groups.keys().map(|g| (g, self.needed(g).first().copied())).collect::<Vec<_>>()
            );
        }
        self.check_storage();
    }

    /// The log holds every record some group needs (every record when there
    /// is no group), and nothing it should not.
    fn check_storage(&self) {
        let ctx = &self.ctx;
        let recs = self.log().read(0, usize::MAX, usize::MAX).unwrap_or_else(|e| panic!("{ctx}: read: {e}"));
        let mut present = BTreeMap::new();
        for r in recs {
            let p = self
                .pubs
                .get(&r.offset)
                .unwrap_or_else(|| panic!("{ctx}: log holds offset {} nobody published", r.offset));
            assert!(p.acked.is_some(), "{ctx}: log shows offset {} before its publish completed", r.offset);
            assert_eq!(r.message, p.msg, "{ctx}: log offset {} holds other contents", r.offset);
            present.insert(r.offset, r);
        }
        let needed: BTreeSet<u64> = if self.groups.is_empty() {
            self.pubs.range(self.purge_low..).filter(|(_, p)| p.acked.is_some()).map(|(&o, _)| o).collect()
        } else {
            self.groups.keys().flat_map(|g| self.needed(g)).collect()
        };
        for o in needed {
            assert!(
                present.contains_key(&o),
                "{ctx}: acknowledged offset {o} is gone from the log though {} needs it",
                self.groups.keys().filter(|g| self.needed(g).contains(&o)).cloned().collect::<Vec<_>>().join(",")
            );
        }
    }

    fn drain(&mut self, g: &str) {
        self.clock.0.fetch_add(ACK_TIMEOUT_MS.max(MAX_NACK_DELAY_MS) + 1, Ordering::SeqCst);
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 10_000, "{}: drain of {g} does not end", self.ctx);
            self.pump();
            let n = self.consume(g, DRAIN_CONSUMER, false, 16);
            if n == 0 && !self.moves.iter().any(|m| m.group == g) {
                break;
            }
        }
        let left = self.needed(g);
        assert!(left.is_empty(), "{}: drain of {g} ended while it still needs {left:?}", self.ctx);
    }

    fn crash(&mut self, rounds: u8) {
        match rounds {
            0 => {}
            u8::MAX => self.pump(),
            k => {
                self.engine().run_committers(usize::from(k));
                self.harvest();
                self.scan_dlq();
            }
        }
        self.stats.crashes += 1;
        let fs = self.fs.crash();
        // The dead process's handles fail, so nothing more reaches the disk.
        self.inflight.clear();
        drop(self.engine.take());
        self.fs = fs;
        self.reopen();
    }

    fn restart(&mut self) {
        self.pump();
        let engine = self.engine.take().unwrap();
        engine.close().unwrap_or_else(|e| panic!("{}: close failed: {e}", self.ctx));
        self.reopen();
        let scanned = self.engine().open_report().scanned_bytes;
        assert_eq!(scanned, 0, "{}: opening after a clean close scanned {scanned} bytes", self.ctx);
    }

    fn reopen(&mut self) {
        let engine = Engine::open_with(self.cfg.clone(), Arc::new(self.fs.clone()), self.clock.clone())
            .unwrap_or_else(|e| panic!("{}: reopen failed: {e}", self.ctx));
        assert!(engine.open_report().quarantined.is_empty(), "{}: {:?}", self.ctx, engine.open_report().quarantined);
        let (q, created) = engine.create_queue(Q, &self.spec).unwrap();
        assert!(!created, "{}: queue {Q} vanished", self.ctx);
        self.engine = Some(engine);
        let ctx = self.ctx.clone();
        // Publishes in flight survived or not; acknowledged ones must have.
        let present: BTreeMap<u64, Message> =
            q.log().read(0, usize::MAX, usize::MAX).unwrap().into_iter().map(|r| (r.offset, r.message)).collect();
        self.pubs.retain(|o, p| p.acked.is_some() || present.get(o) == Some(&p.msg));
        let epoch = self.epoch;
        for p in self.pubs.values_mut() {
            p.acked.get_or_insert(epoch);
        }
        let next = q.log().next_offset();
        if let Some((&last, _)) = self.pubs.last_key_value() {
            assert!(next > last, "{ctx}: next offset {next} after a crash, but offset {last} was acknowledged");
        }
        assert!(next <= self.next && next >= self.purge_low, "{ctx}: next offset {next} after a crash");
        self.next = next;
        // Groups whose creation was not durable may be gone.
        let names: BTreeSet<String> = q.stats().groups.into_iter().map(|g| g.name).collect();
        for n in &names {
            assert!(self.groups.contains_key(n), "{ctx}: group {n} appeared from nowhere");
        }
        let unflushed = std::mem::take(&mut self.unflushed);
        self.groups.retain(|n, g| {
            assert!(names.contains(n) || !g.durable, "{ctx}: group {n} was created durably but is gone");
            names.contains(n)
        });
        for g in self.groups.values_mut() {
            g.durable = true;
            g.slots.clear();
            g.last_new = None;
        }
        // A settled move whose ack was not durable: the copy is in the DLQ,
        // the source may deliver it again.
        for (g, o) in unflushed {
            if let Some(gm) = self.groups.get_mut(&g) {
                gm.done.remove(&o);
            }
        }
        // The DLQ keeps every copy seen; copies of moves in flight may have
        // survived.
        if let Some(dlq) = self.engine().get(DLQ).unwrap() {
            let recs = dlq.log().read(0, usize::MAX, usize::MAX).unwrap();
            let have: BTreeSet<u64> = recs.iter().map(|r| r.offset).collect();
            for ((g, o), d) in &self.in_dlq {
                assert!(have.contains(d), "{ctx}: DLQ copy of offset {o} of {g} (DLQ offset {d}) lost in a crash");
            }
        } else {
            assert!(self.in_dlq.is_empty(), "{ctx}: the dead-letter queue vanished");
        }
        self.scan_dlq();
        self.moves.clear();
        self.dedup.clear();
        self.dedup_stale = true;
        self.check_storage();
    }

    /// Drains every group, checks the engine agrees nothing is left, then
    /// closes cleanly and checks the reopened state.
    fn finish(&mut self, final_crash: bool) {
        if final_crash {
            self.ctx = "final crash".into();
            self.crash(0);
        }
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for g in &names {
            self.ctx = format!("final drain of {g}");
            self.drain(g);
        }
        self.ctx = "final checks".into();
        self.pump();
        self.check_drained();
        self.ctx = "final restart".into();
        self.restart();
        self.check_drained();
        self.engine.take().unwrap().close().unwrap();
    }

    fn check_drained(&self) {
        let st = self.engine().stats(Q).unwrap();
        for g in &st.groups {
            assert_eq!(
                g.depth, 0,
                "{}: group {} drained, yet its depth is {} (position {}, cursor {}, queue first {} next {})",
                self.ctx, g.name, g.depth, g.position, g.cursor, st.first_offset, st.next_offset
            );
        }
    }
}

/// `GMQ_MODEL_TRACE=1` prints every operation and delivery.
fn trace() -> bool {
    std::env::var_os("GMQ_MODEL_TRACE").is_some()
}

fn summary(out: &[Delivery]) -> Vec<(u64, u32)> {
    out.iter().map(|d| (d.record.offset, d.deliveries)).collect()
}

fn run_case(seed: u64, max_deliveries: u32, final_crash: bool, ops: &[Op]) {
    let mut h = Harness::new(seed, max_deliveries);
    for (i, op) in ops.iter().enumerate() {
        h.run(i, op);
    }
    h.finish(final_crash);
    if std::env::var_os("GMQ_MODEL_STATS").is_some() {
        let st = h.stats;
        eprintln!(
            "ops {} pubs {} deliveries {} redeliveries {} dups {} dlq {} dlq_dups {} crashes {} deleted {} rewritten {}",
            ops.len(),
            h.pubs.len(),
            st.deliveries,
            st.redeliveries,
            st.dups,
            h.in_dlq.len(),
            st.dlq_dups,
            st.crashes,
            st.deleted,
            st.rewritten
        );
    }
}

/// Counters of what a case exercised (`GMQ_MODEL_STATS=1` prints them).
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    deliveries: u64,
    redeliveries: u64,
    dups: u64,
    crashes: u64,
    deleted: u64,
    rewritten: u64,
    /// Moves of messages already in the DLQ (from before a crash).
    dlq_dups: u64,
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/model.proptest-regressions"
        )))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(
        seed in any::<u64>(),
        max_deliveries in prop_oneof![1 => Just(0u32), 3 => Just(2), 2 => Just(3)],
        final_crash in any::<bool>(),
        ops in prop::collection::vec(op_strategy(), 1..MAX_OPS),
    ) {
        run_case(seed, max_deliveries, final_crash, &ops);
    }
}
