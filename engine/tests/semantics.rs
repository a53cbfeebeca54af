//! Delivery semantics, one property per test, each run on the simulated
//! disk and in memory mode (the crash cases on the simulated disk only):
//! FIFO and fan-out, competing consumers, leases and redelivery, nack,
//! dead letters, TTL, limits, dedup, start positions, event filters, purge,
//! retention, compaction, topic routing, settings, waiting.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gmq_engine::sim::SimFs;
use gmq_engine::{
    AckMode, ConsumeOptions, Delivery, Engine, EngineConfig, Error, Message, Overflow, QueueSpec, Retention, StartFrom,
};

const T0: u64 = 1_763_800_000_000;

#[derive(Debug)]
struct TestClock(AtomicU64);

impl gmq_engine::Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// An engine on one backend, with a clock the test moves.
struct Env {
    fs: Option<SimFs>,
    clock: Arc<TestClock>,
    cfg: EngineConfig,
    engine: Option<Engine>,
}

impl Env {
    fn sim() -> Env {
        let fs = SimFs::new(7);
        let clock = Arc::new(TestClock(AtomicU64::new(T0)));
        let mut cfg = EngineConfig::new("/data");
        cfg.committer_threads = 1;
        let engine = Engine::open_with(cfg.clone(), Arc::new(fs.clone()), clock.clone()).unwrap();
        Env { fs: Some(fs), clock, cfg, engine: Some(engine) }
    }

    fn memory() -> Env {
        let clock = Arc::new(TestClock(AtomicU64::new(T0)));
        let mut cfg = EngineConfig::new("/memory");
        cfg.committer_threads = 1;
        let engine = Engine::open_with(cfg.clone(), Arc::new(gmq_engine::memfs::MemFs::new()), clock.clone()).unwrap();
        Env { fs: None, clock, cfg, engine: Some(engine) }
    }

    fn e(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    fn advance(&self, ms: u64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Crash (drop what was not synced) and open again. Simulated disk only.
    fn crash(&mut self) {
        let fs = self.fs.as_ref().expect("crash needs the simulated disk").crash();
        drop(self.engine.take());
        self.engine = Some(Engine::open_with(self.cfg.clone(), Arc::new(fs.clone()), self.clock.clone()).unwrap());
        self.fs = Some(fs);
    }

    /// Clean close and open again. Simulated disk only.
    fn restart(&mut self) {
        self.engine.take().unwrap().close().unwrap();
        let fs = self.fs.clone().unwrap();
        self.engine = Some(Engine::open_with(self.cfg.clone(), Arc::new(fs), self.clock.clone()).unwrap());
    }

    fn publish(&self, q: &str, payloads: &[&str]) -> Vec<u64> {
        let msgs: Vec<Message> = payloads.iter().map(|p| Message::new(p.as_bytes().to_vec())).collect();
        self.e().publish(q, &msgs).unwrap().wait().unwrap().offsets
    }

    fn consume(&self, q: &str, g: &str, c: u64, max: usize, ack: AckMode) -> Vec<Delivery> {
        let opts = ConsumeOptions { max, ack, ..ConsumeOptions::default() };
        self.e().consume(q, g, c, &opts).unwrap().wait().unwrap()
    }

    fn ack(&self, q: &str, g: &str, offsets: &[u64]) -> usize {
        self.e().ack(q, g, offsets).unwrap().wait().unwrap()
    }
}

fn offsets(d: &[Delivery]) -> Vec<u64> {
    d.iter().map(|d| d.record.offset).collect()
}

fn payloads(d: &[Delivery]) -> Vec<String> {
    d.iter().map(|d| String::from_utf8(d.record.message.payload.to_vec()).unwrap()).collect()
}

fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a str> {
    d.record.message.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Runs a test body on both backends.
macro_rules! both {
    ($($name:ident => $body:expr;)*) => {
        mod on_sim { use super::*; $(#[test] fn $name() { ($body)(Env::sim()) })* }
        mod in_memory { use super::*; $(#[test] fn $name() { ($body)(Env::memory()) })* }
    };
}

both! {
    fifo_fanout_between_groups_competition_within => |env: Env| {
        env.publish("jobs", &["a", "b", "c", "d"]);
        assert_eq!(payloads(&env.consume("jobs", "g1", 1, 2, AckMode::Auto)), ["a", "b"]);
        assert_eq!(payloads(&env.consume("jobs", "g1", 2, 9, AckMode::Auto)), ["c", "d"], "competing: the rest");
        assert_eq!(payloads(&env.consume("jobs", "g2", 3, 9, AckMode::Auto)), ["a", "b", "c", "d"], "fan-out");
        assert!(env.consume("jobs", "g1", 1, 9, AckMode::Auto).is_empty(), "empty when nothing is left");
        assert!(env.consume("missing", "g1", 1, 9, AckMode::Auto).is_empty(), "missing queue: empty, not an error");
        assert_eq!(env.e().queue_names(), ["jobs"], "consuming does not create");
    };

    manual_ack_lease_expires_and_redelivers_with_a_count => |env: Env| {
        let spec = QueueSpec { ack_timeout_ms: Some(300), ..QueueSpec::default() };
        env.e().create_queue("q", &spec).unwrap();
        env.publish("q", &["x", "y"]);
        let first = env.consume("q", "g", 1, 1, AckMode::Manual);
        assert_eq!((payloads(&first), first[0].deliveries), (vec!["x".to_owned()], 1));
        // Another consumer gets the next one, not the leased one.
        assert_eq!(payloads(&env.consume("q", "g", 2, 9, AckMode::Manual)), ["y"]);
        assert!(env.consume("q", "g", 2, 9, AckMode::Manual).is_empty());
        let q = env.e().get("q").unwrap().unwrap();
        assert_eq!(q.next_deadline("g"), Some(T0 + 300));
        env.advance(299);
        assert!(env.consume("q", "g", 2, 9, AckMode::Manual).is_empty(), "not before the timeout");
        env.advance(1);
        let again = env.consume("q", "g", 2, 9, AckMode::Manual);
        assert_eq!(offsets(&again), [0, 1]);
        assert!(again.iter().all(|d| d.deliveries == 2));
        assert_eq!(env.ack("q", "g", &[0, 1]), 2);
        assert_eq!(env.ack("q", "g", &[0, 1]), 0, "acking twice is harmless");
        env.advance(10_000);
        assert!(env.consume("q", "g", 2, 9, AckMode::Manual).is_empty(), "acked: never again");
        let s = q.stats();
        assert_eq!((s.depth, s.groups[0].counters.redelivered), (0, 2));
    };

    a_departing_consumer_returns_its_leases_at_once => |env: Env| {
        env.publish("q", &["a", "b", "c"]);
        assert_eq!(env.consume("q", "g", 1, 2, AckMode::Manual).len(), 2);
        assert_eq!(env.e().release_consumer(1), 2);
        let d = env.consume("q", "g", 2, 9, AckMode::Manual);
        assert_eq!(offsets(&d), [0, 1, 2]);
        assert_eq!(d.iter().map(|d| d.deliveries).collect::<Vec<_>>(), [2, 2, 1]);
    };

    nack_with_delay_redelivers_after_it => |env: Env| {
        env.publish("q", &["a"]);
        env.consume("q", "g", 1, 1, AckMode::Manual);
        assert_eq!(env.e().nack("q", "g", &[0], 500, Some("busy")).unwrap(), 1);
        assert!(env.consume("q", "g", 1, 1, AckMode::Manual).is_empty());
        assert_eq!(env.e().get("q").unwrap().unwrap().next_deadline("g"), Some(T0 + 500));
        env.advance(500);
        assert_eq!(env.consume("q", "g", 1, 1, AckMode::Manual)[0].deliveries, 2);
        assert_eq!(env.e().nack("q", "g", &[0], 0, None).unwrap(), 1);
        assert_eq!(env.consume("q", "g", 1, 1, AckMode::Manual)[0].deliveries, 3, "no delay: at once");
    };

    dead_letter_after_max_deliveries_with_its_origin_in_headers => |env: Env| {
        let spec = QueueSpec { max_deliveries: Some(2), ..QueueSpec::default() };
        env.e().create_queue("work", &spec).unwrap();
        let m = Message { msg_id: Some("m-1".into()), event: Some("e".into()), ..Message::new("poison") };
        env.e().publish("work", &[m, Message::new("fine")]).unwrap().wait().unwrap();
        for n in 1..=2 {
            let d = env.consume("work", "g", 1, 1, AckMode::Manual);
            assert_eq!((d[0].record.offset, d[0].deliveries), (0, n));
            env.e().nack("work", "g", &[0], 0, Some("cannot parse")).unwrap();
        }
        // The third delivery would pass max_deliveries: it moves instead.
        let d = env.consume("work", "g", 1, 9, AckMode::Manual);
        assert_eq!(payloads(&d), ["fine"]);
        env.ack("work", "g", &[1]);
        env.e().maintain(); // settles the move: the source offset is acked
        let dead = env.consume("work.dlq", "ops", 9, 9, AckMode::Auto);
        assert_eq!(payloads(&dead), ["poison"]);
        let h = |k| header(&dead[0], k).map(str::to_owned);
        assert_eq!(h("x-dead-letter-queue").as_deref(), Some("work"));
        assert_eq!(h("x-dead-letter-offset").as_deref(), Some("0"));
        assert_eq!(h("x-dead-letter-deliveries").as_deref(), Some("2"));
        assert_eq!(h("x-dead-letter-reason").as_deref(), Some("max_deliveries"));
        assert_eq!(h("x-dead-letter-nack-reason").as_deref(), Some("cannot parse"));
        assert_eq!(h("x-original-msg-id").as_deref(), Some("m-1"));
        assert_eq!(dead[0].record.message.event.as_deref(), Some("e"));
        env.advance(100_000);
        assert!(env.consume("work", "g", 1, 9, AckMode::Manual).is_empty(), "moved, not redelivered");
        let s = env.e().stats("work").unwrap();
        assert_eq!((s.depth, s.groups[0].counters.dead_lettered), (0, 1));
    };

    expired_messages_are_never_delivered => |env: Env| {
        let spec = QueueSpec { message_ttl_ms: Some(1000), ..QueueSpec::default() };
        env.e().create_queue("q", &spec).unwrap();
        let short = Message { ttl_ms: Some(100), ..Message::new("short") };
        env.e().publish("q", &[short, Message::new("long")]).unwrap().wait().unwrap();
        env.advance(100);
        assert_eq!(payloads(&env.consume("q", "g", 1, 9, AckMode::Auto)), ["long"], "message ttl");
        env.advance(900);
        assert!(env.consume("q", "g2", 1, 9, AckMode::Auto).is_empty(), "queue ttl");
        assert_eq!(env.e().stats("q").unwrap().depth, 0);
        // And to the dead-letter queue when the queue says so.
        let spec = QueueSpec { dead_letter_expired: Some(true), dead_letter: Some("graveyard".into()), ..QueueSpec::default() };
        env.e().create_queue("q2", &spec).unwrap();
        env.e().publish("q2", &[Message { ttl_ms: Some(5), ..Message::new("old") }]).unwrap().wait().unwrap();
        env.advance(5);
        assert!(env.consume("q2", "g", 1, 9, AckMode::Manual).is_empty());
        env.e().maintain();
        let dead = env.consume("graveyard", "g", 1, 9, AckMode::Auto);
        assert_eq!(payloads(&dead), ["old"]);
        assert_eq!(header(&dead[0], "x-dead-letter-reason"), Some("expired"));
        assert_eq!(dead[0].record.message.ttl_ms, None, "the copy does not expire");
    };

    depth_counts_what_any_group_has_left => |env: Env| {
        let o = env.publish("m", &["1", "2", "3"]);
        env.consume("m", "a", 1, 3, AckMode::Manual);
        env.consume("m", "b", 2, 3, AckMode::Manual);
        env.ack("m", "a", &[o[1]]);
        env.ack("m", "b", &[o[0]]);
        // a has 0 and 2 left, b has 1 and 2: every message is still owed.
        assert_eq!(env.e().stats("m").unwrap().depth, 3);
        env.ack("m", "a", &[o[0], o[2]]);
        env.ack("m", "b", &[o[2]]);
        assert_eq!(env.e().stats("m").unwrap().depth, 1, "only b's 1 is left");
        env.ack("m", "b", &[o[1]]);
        assert_eq!(env.e().stats("m").unwrap().depth, 0);
        // max_length counts the same way.
        let spec = QueueSpec { max_length: Some(2), ..QueueSpec::default() };
        env.e().create_queue("n", &spec).unwrap();
        let o = env.publish("n", &["1", "2"]);
        env.consume("n", "a", 1, 2, AckMode::Manual);
        env.consume("n", "b", 2, 2, AckMode::Manual);
        env.ack("n", "a", &[o[1]]);
        env.ack("n", "b", &[o[0]]);
        assert!(matches!(env.e().publish("n", &[Message::new("3")]), Err(Error::QueueFull(_))));
    };

    max_length_rejects_or_drops_the_oldest => |env: Env| {
        let spec = QueueSpec { max_length: Some(3), ..QueueSpec::default() };
        env.e().create_queue("r", &spec).unwrap();
        env.publish("r", &["1", "2", "3"]);
        let err = env.e().publish("r", &[Message::new("4")]).unwrap_err();
        assert!(matches!(err, Error::QueueFull(ref m) if m.contains("max_length")), "{err}");
        env.consume("r", "g", 1, 1, AckMode::Auto);
        env.publish("r", &["4"]); // room again: depth counts what is not yet done
        let spec = QueueSpec { max_length: Some(3), overflow: Some(Overflow::DropOldest), ..QueueSpec::default() };
        env.e().create_queue("d", &spec).unwrap();
        for p in ["1", "2", "3", "4", "5"] {
            env.publish("d", &[p]);
        }
        assert_eq!(payloads(&env.consume("d", "g", 1, 9, AckMode::Auto)), ["3", "4", "5"]);
        assert!(env.e().publish("d", &(0..4).map(|_| Message::new("x")).collect::<Vec<_>>()).is_err(), "a batch larger than the queue");
        let spec = QueueSpec { max_bytes: Some(5000), ..QueueSpec::default() };
        env.e().create_queue("b", &spec).unwrap();
        env.e().publish("b", &[Message::new(vec![0u8; 3000])]).unwrap().wait().unwrap();
        let err = env.e().publish("b", &[Message::new(vec![0u8; 3000])]).unwrap_err();
        assert!(matches!(err, Error::QueueFull(ref m) if m.contains("max_bytes")), "{err}");
    };

    msg_id_dedup_returns_the_original_offset => |env: Env| {
        let m = |id: &str, p: &str| Message { msg_id: Some(id.into()), ..Message::new(p.as_bytes().to_vec()) };
        let a = env.e().publish("q", &[m("a", "1")]).unwrap().wait().unwrap();
        let b = env.e().publish("q", &[m("b", "2"), m("a", "again"), m("b", "dup in batch")]).unwrap().wait().unwrap();
        assert_eq!((a.offsets, a.duplicate), (vec![0], vec![false]));
        assert_eq!((b.offsets, b.duplicate), (vec![1, 0, 1], vec![false, true, true]));
        assert_eq!(payloads(&env.consume("q", "g", 1, 9, AckMode::Auto)), ["1", "2"], "stored once");
        env.advance(120_000);
        let c = env.e().publish("q", &[m("a", "3")]).unwrap().wait().unwrap();
        assert_eq!((c.offsets, c.duplicate), (vec![2], vec![false]), "outside the window: new");
    };

    new_groups_start_where_asked => |env: Env| {
        env.publish("q", &["0", "1"]);
        env.advance(1000);
        env.publish("q", &["2", "3"]);
        let from = |f| ConsumeOptions { max: 9, from: Some(f), ..ConsumeOptions::default() };
        let got = |g: &str, f| payloads(&env.e().consume("q", g, 1, &from(f)).unwrap().wait().unwrap());
        assert_eq!(got("latest", StartFrom::Latest), Vec::<String>::new());
        assert_eq!(got("off", StartFrom::Offset(1)), ["1", "2", "3"]);
        assert_eq!(got("time", StartFrom::Time(T0 + 1000)), ["2", "3"]);
        assert_eq!(got("old", StartFrom::Oldest), ["0", "1", "2", "3"]);
        env.publish("q", &["4"]);
        assert_eq!(got("latest", StartFrom::Oldest), ["4"], "`from` applies only when the group is created");
    };

    max_bytes_bounds_a_consume_but_always_gives_one => |env: Env| {
        let big = "b".repeat(600);
        env.publish("q", &[big.as_str(), big.as_str(), big.as_str(), "s"]);
        let capped = ConsumeOptions { max: 9, max_bytes: 1000, ..ConsumeOptions::default() };
        let got = env.e().consume("q", "g", 1, &capped).unwrap().wait().unwrap();
        assert_eq!(offsets(&got), [0, 1], "stops once 1000 bytes are reached");
        let tiny = ConsumeOptions { max: 9, max_bytes: 1, ..ConsumeOptions::default() };
        assert_eq!(offsets(&env.e().consume("q", "g", 1, &tiny).unwrap().wait().unwrap()), [2], "one however large");
        assert_eq!(offsets(&env.e().consume("q", "g", 1, &capped).unwrap().wait().unwrap()), [3]);
    };

    event_filters_skip_for_that_consumer_only => |env: Env| {
        let m = |e: &str| Message { event: Some(e.into()), ..Message::new(e.as_bytes().to_vec()) };
        env.e().publish("q", &[m("created"), m("deleted"), m("created"), m("updated")]).unwrap().wait().unwrap();
        let created = ConsumeOptions { max: 9, events: Some(vec!["created".into()]), ..ConsumeOptions::default() };
        let d = env.e().consume("q", "g", 1, &created).unwrap().wait().unwrap();
        assert_eq!(offsets(&d), [0, 2]);
        assert_eq!(offsets(&env.consume("q", "g", 2, 9, AckMode::Auto)), [1, 3], "the others stay for the group");
    };

    purge_removes_everything_stored => |env: Env| {
        env.publish("q", &["a", "b", "c"]);
        env.consume("q", "g", 1, 1, AckMode::Auto);
        assert_eq!(env.e().purge("q").unwrap(), 2);
        assert!(env.consume("q", "g", 1, 9, AckMode::Auto).is_empty());
        assert!(env.consume("q", "new", 1, 9, AckMode::Auto).is_empty(), "new groups too");
        env.publish("q", &["d"]);
        assert_eq!(payloads(&env.consume("q", "g", 1, 9, AckMode::Auto)), ["d"]);
        assert!(matches!(env.e().purge("nope"), Err(Error::NotFound(_))));
    };

    acked_retention_deletes_segments_every_group_passed => |env: Env| {
        let spec = QueueSpec { segment_bytes: Some(4096), ..QueueSpec::default() };
        env.e().create_queue("q", &spec).unwrap();
        let big = "x".repeat(1000);
        for _ in 0..20 {
            env.publish("q", &[big.as_str()]);
        }
        let q = env.e().get("q").unwrap().unwrap();
        let segs = q.log().segment_count();
        assert!(segs > 3);
        env.consume("q", "a", 1, 20, AckMode::Auto);
        env.consume("q", "b", 1, 5, AckMode::Auto);
        env.e().maintain();
        let first = q.log().first_offset();
        assert!(first > 0 && first <= 5, "deleted up to group b's floor only: first = {first}");
        env.consume("q", "b", 1, 20, AckMode::Auto);
        env.e().maintain();
        assert_eq!(q.log().segment_count(), 1);
        assert_eq!(q.stats().depth, 0);
    };

    stream_retention_keeps_a_replayable_log_by_bytes => |env: Env| {
        let spec = QueueSpec {
            segment_bytes: Some(4096),
            retention: Some(Retention::Stream { max_age_ms: None, max_bytes: Some(8192) }),
            ..QueueSpec::default()
        };
        env.e().create_queue("s", &spec).unwrap();
        let big = "y".repeat(1000);
        for _ in 0..30 {
            env.publish("s", &[big.as_str()]);
        }
        env.consume("s", "g", 1, 30, AckMode::Auto);
        let q = env.e().get("s").unwrap().unwrap();
        env.e().maintain();
        assert!(q.log().bytes() <= 8192 + 4096, "bytes {}", q.log().bytes());
        let replay = env.e().consume("s", "late", 1, &ConsumeOptions { max: 99, ..ConsumeOptions::default() }).unwrap().wait().unwrap();
        assert!(!replay.is_empty() && replay.len() < 30, "a new group replays what is kept: {}", replay.len());
    };

    compaction_keeps_a_stuck_message_and_drops_the_rest => |env: Env| {
        let spec = QueueSpec { segment_bytes: Some(4096), ..QueueSpec::default() };
        env.e().create_queue("q", &spec).unwrap();
        let big = "z".repeat(500);
        for _ in 0..60 {
            env.publish("q", &[big.as_str()]);
        }
        let stuck = env.consume("q", "g", 1, 1, AckMode::Manual);
        assert_eq!(offsets(&stuck), [0]);
        let rest = env.consume("q", "g", 2, 100, AckMode::Manual);
        env.ack("q", "g", &offsets(&rest));
        env.e().maintain();
        let q = env.e().get("q").unwrap().unwrap();
        let before = q.log().bytes();
        assert!(q.log().segment_count() > 3, "the stuck message pins every segment");
        let dry = env.e().compact("q", 0.5, true).unwrap();
        assert_eq!(q.log().bytes(), before, "dry run writes nothing");
        let rep = env.e().compact("q", 0.5, false).unwrap();
        assert_eq!(rep, dry);
        assert!(rep.segments_rewritten >= 3 && rep.bytes_after < rep.bytes_before / 4, "{rep:?}");
        assert!(q.log().bytes() < before / 3, "{} of {before}", q.log().bytes());
        if let Some(fs) = &env.fs {
            // Rewritten segments get their index at once: nothing to report.
            let v = gmq_engine::recovery::verify(fs, &PathBuf::from("/data"), None).unwrap();
            assert!(v.findings.is_empty(), "{:?}", v.findings);
        }
        // The stuck message is still there to redeliver, at its offset.
        env.e().release_consumer(1);
        let again = env.consume("q", "g", 3, 9, AckMode::Manual);
        assert_eq!((offsets(&again), again[0].deliveries), (vec![0], 2));
        assert_eq!(again[0].record.message.payload.len(), 500);
        assert_eq!(env.e().compact("q", 0.5, false).unwrap().segments_rewritten, 0, "nothing left to gain");
    };

    a_group_created_after_compaction_passes_the_holes => |env: Env| {
        let spec = QueueSpec { segment_bytes: Some(4096), ..QueueSpec::default() };
        env.e().create_queue("q", &spec).unwrap();
        let body = "h".repeat(500);
        for _ in 0..12 {
            env.publish("q", &[body.as_str()]);
        }
        assert_eq!(env.consume("q", "a", 1, 100, AckMode::Auto).len(), 12);
        assert!(env.e().compact("q", 0.5, false).unwrap().records_dropped > 0);
        let b = env.consume("q", "b", 1, 100, AckMode::Auto);
        assert_eq!(b.first().map(|d| d.record.offset), Some(7), "what compaction kept");
        let s = env.e().stats("q").unwrap();
        let g = s.groups.iter().find(|g| g.name == "b").unwrap();
        assert_eq!((g.position, g.depth, s.depth), (12, 0, 0), "the new group's floor passes the holes");
        for _ in 0..30 {
            env.publish("q", &[body.as_str()]);
        }
        env.consume("q", "a", 1, 100, AckMode::Auto);
        env.consume("q", "b", 1, 100, AckMode::Auto);
        assert!(env.e().maintain() > 0, "retention is not blocked");
    };

    topic_routing_with_wildcards => |env: Env| {
        env.e().bind("eu", "orders.eu.*").unwrap();
        env.e().bind("all", "orders.#").unwrap();
        env.e().bind("all", "#").unwrap();
        let m = Message::new("o1");
        let routed = env.e().publish_topic("orders.eu.created", &m).unwrap();
        let names: Vec<String> = routed.into_iter().map(|(n, p)| { p.unwrap().wait().unwrap(); n }).collect();
        assert_eq!(names, ["all", "eu"], "each queue once");
        assert!(env.e().publish_topic("nothing.matches.here", &m).unwrap().iter().all(|(n, _)| n == "all"));
        // A full queue refuses its copy; the others are stored.
        let full = QueueSpec { max_length: Some(1), ..QueueSpec::default() };
        env.e().create_queue("small", &full).unwrap();
        env.e().bind("small", "orders.#").unwrap();
        env.publish("small", &["x"]);
        let routed = env.e().publish_topic("orders.us", &m).unwrap();
        let results: Vec<(String, bool)> = routed.into_iter().map(|(n, p)| (n, p.and_then(|p| p.wait()).is_ok())).collect();
        assert_eq!(results, [("all".to_owned(), true), ("small".to_owned(), false)]);
        env.e().delete_queue("small").unwrap();
        env.e().unbind("all", "#").unwrap();
        assert!(env.e().publish_topic("nothing", &m).unwrap().is_empty());
        assert!(matches!(env.e().unbind("all", "#"), Err(Error::NotFound(_))));
        assert!(matches!(env.e().bind("eu", "orders.e*"), Err(Error::InvalidName(_))));
        assert!(matches!(env.e().publish_topic("a..b", &m), Err(Error::InvalidName(_))));
        assert_eq!(env.e().bindings(), [("all".to_owned(), "orders.#".to_owned()), ("eu".to_owned(), "orders.eu.*".to_owned())]);
        env.e().delete_queue("eu").unwrap();
        assert_eq!(env.e().bindings().len(), 1, "deleting a queue drops its bindings");
    };

    create_conflicts_only_on_settings_given => |env: Env| {
        let spec = QueueSpec { ack_timeout_ms: Some(300), max_deliveries: Some(5), ..QueueSpec::default() };
        assert!(env.e().create_queue("q", &spec).unwrap().1);
        assert!(!env.e().create_queue("q", &spec).unwrap().1);
        assert!(!env.e().create_queue("q", &QueueSpec::default()).unwrap().1, "left out: not compared");
        let other = QueueSpec { ack_timeout_ms: Some(301), ..QueueSpec::default() };
        let err = env.e().create_queue("q", &other).unwrap_err();
        assert!(matches!(err, Error::Conflict(ref m) if m.contains("ack_timeout_ms")), "{err}");
        assert!(matches!(env.e().create_queue("../x", &spec), Err(Error::InvalidName(_))));
        let bad = QueueSpec { segment_bytes: Some(10), ..QueueSpec::default() };
        assert!(matches!(env.e().create_queue("small", &bad), Err(Error::BadRequest(_))));
        let opts = ConsumeOptions { max: 1, ..ConsumeOptions::default() };
        assert!(matches!(env.e().consume("q", "bad/group", 1, &opts), Err(Error::InvalidName(_))));
        assert!(matches!(env.e().publish("q", &[]), Err(Error::BadRequest(_))));
    };

    a_waiter_wakes_on_publish => |env: Env| {
        let q = env.e().queue("q").unwrap();
        let seen = q.signal().generation();
        assert!(!q.may_have("g"));
        let signal = q.signal().clone();
        let waiter = std::thread::spawn(move || signal.wait_until(seen, Instant::now() + Duration::from_secs(10)));
        env.publish("q", &["hi"]);
        assert!(waiter.join().unwrap(), "woken by the publish, not the deadline");
        assert!(q.may_have("g"));
        let gone = q.signal().generation();
        assert!(!q.signal().wait_until(gone, Instant::now() + Duration::from_millis(1)), "no change: times out");
    };
}

// The crash cases: the simulated disk only.

#[test]
fn acks_and_auto_consumes_survive_a_crash_and_nothing_acked_returns() {
    let mut env = Env::sim();
    env.publish("q", &["0", "1", "2", "3", "4"]);
    assert_eq!(offsets(&env.consume("q", "auto", 1, 2, AckMode::Auto)), [0, 1]);
    let d = env.consume("q", "man", 1, 3, AckMode::Manual);
    env.ack("q", "man", &[0, 2]);
    assert_eq!(d.len(), 3);
    env.crash();
    assert_eq!(offsets(&env.consume("q", "auto", 1, 9, AckMode::Auto)), [2, 3, 4], "auto-ack: at most once");
    let d = env.consume("q", "man", 1, 9, AckMode::Manual);
    assert_eq!(offsets(&d), [1, 3, 4], "unacked lease redelivered, acked ones never");
    assert_eq!(d[0].deliveries, 1, "delivery counts live in memory");
}

#[test]
fn settings_groups_dedup_and_bindings_survive_restart_and_crash() {
    let mut env = Env::sim();
    let spec = QueueSpec { max_length: Some(100), ack_timeout_ms: Some(1234), ..QueueSpec::default() };
    env.e().create_queue("q", &spec).unwrap();
    env.e().bind("q", "a.#").unwrap();
    let m = Message { msg_id: Some("id-1".into()), ..Message::new("once") };
    env.e().publish("q", std::slice::from_ref(&m)).unwrap().wait().unwrap();
    env.consume("q", "latecomer", 1, 9, AckMode::Auto);
    env.restart();
    assert_eq!(env.e().open_report().scanned_bytes, 0, "clean close: nothing scanned");
    env.crash();
    let q = env.e().get("q").unwrap().unwrap();
    assert_eq!(q.settings().ack_timeout_ms, 1234);
    assert_eq!(q.settings().max_length, Some(100));
    let again = env.e().publish("q", &[m]).unwrap().wait().unwrap();
    assert_eq!(again.duplicate, [true], "the dedup window is rebuilt from the log");
    assert_eq!(env.e().bindings(), [("q".to_owned(), "a.#".to_owned())]);
    assert!(env.consume("q", "latecomer", 1, 9, AckMode::Auto).is_empty());
}

#[test]
fn a_recreated_queue_ignores_group_state_of_the_old_one() {
    let mut env = Env::sim();
    env.publish("q", &["a", "b"]);
    env.consume("q", "g", 1, 2, AckMode::Auto);
    let dir = PathBuf::from("/data/queues/q");
    let fs = env.fs.clone().unwrap();
    let old_state = fs.contents(&dir.join("groups")).unwrap();
    env.e().delete_queue("q").unwrap();
    env.publish("q", &["c", "d", "e"]);
    // As if deleting had stopped half way and left the old state behind.
    env.engine.take().unwrap().close().unwrap();
    fs.set_contents(&dir.join("groups"), old_state).unwrap();
    env.engine = Some(Engine::open_with(env.cfg.clone(), Arc::new(fs), env.clock.clone()).unwrap());
    assert_eq!(payloads(&env.consume("q", "g", 1, 9, AckMode::Auto)), ["c", "d", "e"]);
}

#[test]
fn a_torn_group_state_tail_is_truncated_and_damage_before_valid_records_quarantines() {
    let mut env = Env::sim();
    env.publish("q", &["a", "b", "c"]);
    for o in 0..3 {
        env.consume("q", "g", 1, 1, AckMode::Manual);
        env.ack("q", "g", &[o]);
    }
    env.engine.take().unwrap().close().unwrap();
    let fs = env.fs.clone().unwrap();
    let path = PathBuf::from("/data/queues/q/groups");
    let good = fs.contents(&path).unwrap();
    let open = |bytes: Vec<u8>| {
        fs.set_contents(&path, bytes).unwrap();
        Engine::open_with(env.cfg.clone(), Arc::new(fs.clone()), env.clock.clone()).unwrap()
    };
    // The last ack record cut short: that ack is lost (it was never
    // acknowledged), the rest stands.
    let e = open(good[..good.len() - 5].to_vec());
    let opts = ConsumeOptions { max: 9, ..ConsumeOptions::default() };
    assert_eq!(offsets(&e.consume("q", "g", 1, &opts).unwrap().wait().unwrap()), [2]);
    drop(e);
    // A flipped bit in the first record with valid ones after it: quarantine.
    let mut bad = good.clone();
    bad[gmq_engine::state::STATE_HEADER_LEN + 12] ^= 0x10;
    let e = open(bad);
    let err = e.get("q").unwrap_err();
    assert!(matches!(err, Error::Corrupt { ref file, .. } if file == &path), "{err}");
    drop(e);
    // verify names it; repair keeps the valid prefix; the queue opens again.
    let data = PathBuf::from("/data");
    let v = gmq_engine::recovery::verify(&fs, &data, None).unwrap();
    assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
    assert_eq!(v.findings[0].kind, gmq_engine::recovery::FindingKind::GroupState);
    assert_eq!(v.findings[0].position, Some(gmq_engine::state::STATE_HEADER_LEN as u64));
    let dry = gmq_engine::recovery::repair(&fs, &data, None, true).unwrap();
    assert_eq!(
        fs.contents(&path).unwrap()[gmq_engine::state::STATE_HEADER_LEN + 12] & 0x10,
        (good[gmq_engine::state::STATE_HEADER_LEN + 12] ^ 0x10) & 0x10,
        "dry run writes nothing"
    );
    let rep = gmq_engine::recovery::repair(&fs, &data, None, false).unwrap();
    assert_eq!(rep.actions, dry.actions);
    assert!(gmq_engine::recovery::verify(&fs, &data, None).unwrap().findings.is_empty());
    let e = Engine::open_with(env.cfg.clone(), Arc::new(fs.clone()), env.clock.clone()).unwrap();
    let d = e.consume("q", "g", 1, &opts).unwrap().wait().unwrap();
    assert_eq!(offsets(&d), [0, 1, 2], "the group lost its acks, not its messages");
}

#[test]
fn dead_letter_move_survives_a_crash_between_copy_and_ack() {
    let mut env = Env::sim();
    let spec = QueueSpec { max_deliveries: Some(1), ..QueueSpec::default() };
    env.e().create_queue("w", &spec).unwrap();
    env.publish("w", &["p"]);
    env.consume("w", "g", 1, 1, AckMode::Manual);
    env.e().nack("w", "g", &[0], 0, None).unwrap();
    assert!(env.consume("w", "g", 1, 1, AckMode::Manual).is_empty(), "moving");
    // The copy is stored (publish waits for it) but the source ack is not
    // written yet: crash now.
    let dlq = env.e().get("w.dlq").unwrap().unwrap();
    dlq.log().flush().unwrap();
    env.crash();
    let from_source = env.consume("w", "g", 1, 1, AckMode::Manual);
    assert_eq!(offsets(&from_source), [0], "never in neither place: still in its queue");
    env.e().nack("w", "g", &[0], 0, None).unwrap();
    env.consume("w", "g", 1, 1, AckMode::Manual);
    env.e().maintain();
    let copies = env.consume("w.dlq", "x", 1, 9, AckMode::Auto);
    assert_eq!(copies.len(), 1, "the second copy is a duplicate by msg_id");
    env.advance(1);
    assert!(env.consume("w", "g", 1, 9, AckMode::Manual).is_empty());
}

#[test]
fn an_interrupted_compaction_leaves_the_old_segment_or_the_new_one() {
    for kind in [gmq_engine::sim::FaultKind::Sync, gmq_engine::sim::FaultKind::Write] {
        for fail_after in 0..8 {
            let mut env = Env::sim();
            let spec = QueueSpec { segment_bytes: Some(4096), ..QueueSpec::default() };
            env.e().create_queue("q", &spec).unwrap();
            let body = "c".repeat(400);
            for _ in 0..40 {
                env.publish("q", &[body.as_str()]);
            }
            env.consume("q", "g", 1, 1, AckMode::Manual); // offset 0 stays leased
            let rest = env.consume("q", "g", 2, 100, AckMode::Manual);
            env.ack("q", "g", &offsets(&rest));
            // Every record is durable; the compaction's own writes fail.
            env.e().get("q").unwrap().unwrap().log().flush().unwrap();
            env.fs.as_ref().unwrap().fail_after(kind, fail_after);
            let r = env.e().compact("q", 0.5, false);
            env.fs.as_ref().unwrap().clear_faults();
            env.crash();
            let what = format!("{kind:?} failing after {fail_after} ops ({r:?})");
            let q = env.e().get("q").unwrap_or_else(|e| panic!("{what}: {e}")).unwrap();
            let recs = q.log().read(0, usize::MAX, usize::MAX).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(recs.first().map(|r| r.offset), Some(0), "{what}: the leased message survives");
            assert!(recs.iter().all(|r| r.message.payload.len() == 400), "{what}");
            assert!(recs.windows(2).all(|w| w[0].offset < w[1].offset), "{what}");
            assert_eq!(env.consume("q", "g", 3, 9, AckMode::Manual).len(), 1, "{what}: only offset 0 is not acked");
            env.e().compact("q", 0.5, false).unwrap_or_else(|e| panic!("{what}: compacting again: {e}"));
            let v = gmq_engine::recovery::verify(env.fs.as_ref().unwrap(), &PathBuf::from("/data"), None).unwrap();
            assert!(v.findings.is_empty(), "{what}: {:?}", v.findings);
        }
    }
}

#[test]
fn many_queues_recover_in_parallel_and_damage_stays_with_its_queue() {
    let mut env = Env::sim();
    for i in 0..40 {
        env.publish(&format!("q{i:02}"), &[&format!("m{i}")]);
    }
    env.e().consume("q07", "g", 1, &ConsumeOptions { max: 1, ..ConsumeOptions::default() }).unwrap().wait().unwrap();
    env.crash();
    // Damage one queue's group state (a flipped bit with a valid record after it).
    env.engine.take().unwrap().close().unwrap();
    let fs = env.fs.clone().unwrap();
    let path = PathBuf::from("/data/queues/q07/groups");
    let mut b = fs.contents(&path).unwrap();
    let first = gmq_engine::state::STATE_HEADER_LEN + 12;
    b[first] ^= 1;
    fs.set_contents(&path, b).unwrap();
    env.cfg.recovery_threads = 4;
    env.engine = Some(Engine::open_with(env.cfg.clone(), Arc::new(fs), env.clock.clone()).unwrap());
    let r = env.e().open_report();
    assert_eq!((r.queues, r.quarantined.len()), (39, 1));
    assert_eq!(r.quarantined[0].0, "q07");
    for i in (0..40).filter(|&i| i != 7) {
        let q = format!("q{i:02}");
        assert_eq!(payloads(&env.consume(&q, "g", 1, 9, AckMode::Auto)), [format!("m{i}")], "{q}");
    }
}

#[test]
fn a_msg_id_whose_store_failed_is_not_a_duplicate_after_reopen() {
    let env = Env::sim();
    let fs = env.fs.clone().unwrap();
    env.publish("q", &["warm"]);
    let m = Message { msg_id: Some("x".into()), ..Message::new("payload") };
    fs.fail_after(gmq_engine::sim::FaultKind::Sync, 0);
    let r = env.e().publish("q", std::slice::from_ref(&m)).unwrap().wait();
    assert!(r.is_err(), "the failed store is not acknowledged");
    fs.clear_faults();
    let again = env.e().publish("q", std::slice::from_ref(&m));
    assert!(again.is_err(), "a stopped queue answers nothing, not even `duplicate`");
    env.e().reopen("q").unwrap();
    let p = env.e().publish("q", &[m]).unwrap().wait().unwrap();
    assert_eq!(p.duplicate, [false], "never stored, so not a duplicate");
    assert_eq!(payloads(&env.consume("q", "g", 1, 9, AckMode::Auto)), ["warm", "payload"]);
}

#[test]
fn group_state_past_the_end_of_a_recovered_log_is_clamped() {
    let mut env = Env::sim();
    let spec = QueueSpec { fsync: Some(gmq_engine::FsyncPolicy::Never), ..QueueSpec::default() };
    env.e().create_queue("q", &spec).unwrap();
    env.publish("q", &["a", "b"]);
    env.e().get("q").unwrap().unwrap().log().flush().unwrap();
    env.publish("q", &["c", "d"]); // written, never synced
    assert_eq!(env.consume("q", "g", 1, 9, AckMode::Auto).len(), 4);
    let groups = PathBuf::from("/data/queues/q/groups");
    // The group state that acks all four, as if it had reached the disk
    // while the log's tail did not.
    let state = env.fs.as_ref().unwrap().contents(&groups).unwrap();
    env.crash();
    assert_eq!(env.e().get("q").unwrap().unwrap().log().next_offset(), 2, "the unsynced tail is gone");
    env.engine.take().unwrap().close().unwrap();
    let fs = env.fs.clone().unwrap();
    fs.set_contents(&groups, state.clone()).unwrap();
    // Offline, verify sees the acks past the log's end and repair clamps
    // them as the open does (a dry run writes nothing).
    let data = PathBuf::from("/data");
    let v = gmq_engine::recovery::verify(&fs, &data, None).unwrap();
    assert!(
        v.findings.len() == 1 && v.findings[0].file == groups && v.findings[0].detail.contains("(2)"),
        "{:?}",
        v.findings
    );
    let dry = gmq_engine::recovery::repair(&fs, &data, None, true).unwrap();
    assert_eq!(dry.actions.len(), 1, "{:?}", dry.actions);
    assert_eq!(fs.contents(&groups).unwrap(), state);
    gmq_engine::recovery::repair(&fs, &data, None, false).unwrap();
    assert!(gmq_engine::recovery::verify(&fs, &data, None).unwrap().findings.is_empty());
    // Put back, the open clamps it the same way.
    fs.set_contents(&groups, state).unwrap();
    env.engine = Some(Engine::open_with(env.cfg.clone(), Arc::new(fs), env.clock.clone()).unwrap());
    env.publish("q", &["e"]);
    assert_eq!(payloads(&env.consume("q", "g", 1, 9, AckMode::Auto)), ["e"], "offset 2 is new, not done");
}

/// The engine's non-blocking consume and ack (what the server calls on its
/// async workers).
mod nonblocking {
    use super::*;

    both! {
        consume_and_ack_leave_dead_letters_and_snapshots_to_the_followup => |env: Env| {
            let e = env.e();
            let spec = QueueSpec { max_deliveries: Some(1), ..QueueSpec::default() };
            e.create_queue("w", &spec).unwrap();
            env.publish("w", &["p", "q"]);
            let manual = ConsumeOptions { max: 1, ack: AckMode::Manual, ..ConsumeOptions::default() };
            let (got, f) = e.consume_nonblocking("w", "g", 1, &manual).unwrap();
            assert_eq!(payloads(&got.wait().unwrap()), ["p"]);
            assert!(f.is_empty(), "nothing left to do");
            e.nack("w", "g", &[0], 0, None).unwrap();
            // The next consume finds offset 0 past max_deliveries: its move is
            // the follow-up's, and nothing reaches the dead-letter queue before.
            let (got, f) = e.consume_nonblocking("w", "g", 1, &manual).unwrap();
            assert_eq!(payloads(&got.wait().unwrap()), ["q"]);
            assert!(!f.is_empty(), "a dead letter to move");
            assert!(e.get("w.dlq").unwrap().is_none(), "not moved yet");
            e.run_followup(f).unwrap();
            // The follow-up publishes the copy; it is readable once stored.
            e.get("w.dlq").unwrap().expect("the move created the dead-letter queue").log().flush().unwrap();
            let moved = env.consume("w.dlq", "x", 1, 9, AckMode::Auto);
            assert_eq!((payloads(&moved), header(&moved[0], "x-dead-letter-offset")), (vec!["p".to_owned()], Some("0")));

            // Acks until the group state log is due for a snapshot: the
            // non-blocking ack leaves it, the follow-up writes it, and every
            // ack is still there after a restart or crash.
            let n = 40_000u64;
            let batch: Vec<&str> = vec!["m"; 1000];
            for _ in 0..n / 1000 {
                env.publish("s", &batch);
            }
            let all = ConsumeOptions { max: n as usize, max_bytes: usize::MAX, ack: AckMode::Manual, ..ConsumeOptions::default() };
            let got = e.consume("s", "g", 1, &all).unwrap().wait().unwrap();
            assert_eq!(got.len() as u64, n);
            let mut due = None;
            for o in 0..n {
                let (p, f) = e.ack_nonblocking("s", "g", &[o]).unwrap();
                assert_eq!(p.wait().unwrap(), 1);
                if !f.is_empty() {
                    due = Some((o, f));
                    break;
                }
            }
            let (acked_to, f) = due.expect("the state log grows past the snapshot threshold");
            let (p, again) = e.ack_nonblocking("s", "g", &[acked_to + 1]).unwrap();
            assert_eq!(p.wait().unwrap(), 1);
            assert!(again.is_empty(), "a snapshot already handed out is not handed out twice");
            e.run_followup(f).unwrap();
            let (p, f) = e.ack_nonblocking("s", "g", &[acked_to + 2]).unwrap();
            assert_eq!(p.wait().unwrap(), 1);
            assert!(f.is_empty(), "the snapshot reset the growth");
            let left = e.consume("s", "h", 2, &ConsumeOptions { from: Some(StartFrom::Oldest), ..all.clone() }).unwrap().wait().unwrap();
            assert_eq!(left.len() as u64, n, "another group still sees everything");
            if env.fs.is_some() {
                let mut env = env;
                env.crash();
                e_after_restart_has_exactly(&env, acked_to + 3, n);
            }
        };
    }

    /// After a restart, group `g` of `s` has every offset from `first` on and none before.
    fn e_after_restart_has_exactly(env: &Env, first: u64, n: u64) {
        let all = ConsumeOptions {
            max: n as usize,
            max_bytes: usize::MAX,
            ack: AckMode::Manual,
            ..ConsumeOptions::default()
        };
        let left = env.e().consume("s", "g", 1, &all).unwrap().wait().unwrap();
        assert_eq!(offsets(&left), (first..n).collect::<Vec<_>>());
    }
}
