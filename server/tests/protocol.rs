//! The wire protocol of PROTOCOL.md, rule by rule, over real TCP against an
//! in-process server: exact reply fields and error codes. Each test starts
//! its own server; time-based rules run with short settings and wait on a
//! condition with a deadline, never on a bare sleep.
mod common;

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use common::*;
use gmq_server::config::User;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Wall-clock milliseconds, the clock the server stamps messages with.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// Waits until the wall clock is at or past `ms` (a condition, not a guess).
async fn wait_clock_past(ms: u64) {
    eventually(Duration::from_secs(5), || async { (now_ms() >= ms).then_some(()) }).await;
}

fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["offset"].as_u64().expect("offset")).collect()
}

fn texts(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(text).collect()
}

fn p(s: &str) -> String {
    b64(s.as_bytes())
}

/// Publishes `n` messages `"{prefix}{i}"`; returns their offsets.
async fn publish_n(c: &mut Client, queue: &str, prefix: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(c.publish(queue, &format!("{prefix}{i}")).await);
    }
    out
}

async fn stats(c: &mut Client, queue: &str) -> Value {
    c.ok(json!({"op":"stats","queue":queue})).await
}

fn group<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == json!(name))
        .unwrap_or_else(|| panic!("no group {name} in {stats}"))
}

/// A fresh connection that sends one raw GMQ request and reads until the
/// server closes; returns the frames.
async fn gmq(s: &TestServer, raw: &str) -> Vec<Value> {
    let mut c = s.connect().await;
    c.send_raw(raw.as_bytes()).await;
    c.until_closed().await
}

fn gmq_reply(op: &str, queue: &str, payload: &str) -> Value {
    json!({"operation":op,"queue":queue,"payload":payload,"confirmation":"Y","error":null})
}

// ---------------------------------------------------------------- ping, id

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_the_protocol_version() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let r = c.ok(json!({"op":"ping"})).await;
    assert_eq!(r["version"], json!(1), "{r}");
    assert!(r.get("id").is_none(), "no id asked, none echoed: {r}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_is_echoed_string_and_integer_also_on_errors() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    for id in [json!("abc"), json!(""), json!(42), json!(0), json!(-7), json!(u64::MAX)] {
        let r = c.ok(json!({"op":"ping","id":id})).await;
        assert_eq!(r["id"], id, "{r}");
    }
    // Errors echo the id too, whatever the failure.
    for (req, code) in [
        (json!({"op":"nope","id":"e1"}), "unknown_op"),
        (json!({"op":"publish","id":9,"queue":"../x","payload":"aGk="}), "invalid_name"),
        (json!({"op":"consume","id":"m","queue":"q","max":"5"}), "bad_request"),
        (json!({"op":"stats","id":10,"queue":"missing"}), "not_found"),
        (json!({"op":"ping","id":11,"bogus":true}), "bad_request"),
    ] {
        let r = c.call(req.clone()).await;
        assert_eq!(r["ok"], json!(false), "{req} -> {r}");
        assert_eq!(r["error"]["code"], json!(code), "{req} -> {r}");
        assert_eq!(r["id"], req["id"], "{req} -> {r}");
        assert!(r["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    }
    s.stop().await.unwrap();
}

// ------------------------------------------------------ publish and consume

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_creates_a_missing_queue() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    assert_eq!(c.err(json!({"op":"stats","queue":"fresh"})).await, "not_found");
    let r = c.ok(json!({"op":"publish","queue":"fresh","payload":p("one")})).await;
    assert_eq!(r["offset"], json!(0), "{r}");
    assert!(r.get("duplicate").is_none(), "{r}");
    let st = stats(&mut c, "fresh").await;
    assert_eq!(st["depth"], json!(1), "{st}");
    assert_eq!(st["next_offset"], json!(1), "{st}");
    let q = c.ok(json!({"op":"queues"})).await;
    assert!(q["queues"].as_array().expect("list").iter().any(|q| q["name"] == json!("fresh")), "{q}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_of_empty_or_missing_queue_is_an_empty_list() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let r = c.ok(json!({"op":"consume","queue":"nowhere","id":1})).await;
    assert_eq!(r, json!({"id":1,"ok":true,"messages":[]}));
    c.ok(json!({"op":"create","queue":"empty"})).await;
    assert!(c.consume("empty", json!({"max":10})).await.is_empty());
    c.publish("empty", "x").await;
    assert_eq!(texts(&c.consume("empty", json!({"max":10})).await), ["x"]);
    assert!(c.consume("empty", json!({"max":10})).await.is_empty());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_come_back_with_their_fields() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let before = now_ms();
    let r = c
        .ok(json!({"op":"publish","queue":"f","payload":p("hello"),"event":"created","key":"order-17",
            "headers":{"reply_to":"replies.abc","trace":"t-1"}}))
        .await;
    let after = now_ms();
    let got = c.consume("f", json!({})).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m["offset"], r["offset"]);
    assert_eq!(m["payload"], json!("aGVsbG8="));
    assert_eq!(m["event"], json!("created"));
    assert_eq!(m["key"], json!("order-17"));
    assert_eq!(m["headers"], json!({"reply_to":"replies.abc","trace":"t-1"}));
    assert_eq!(m["deliveries"], json!(1));
    let ts = m["timestamp_ms"].as_u64().expect("timestamp_ms");
    assert!((before..=after).contains(&ts), "timestamp {ts} outside [{before}, {after}]");
    // Binary payloads survive byte for byte.
    let raw: Vec<u8> = (0..=255u8).collect();
    c.ok(json!({"op":"publish","queue":"f","payload":b64(&raw)})).await;
    let got = c.consume("f", json!({})).await;
    assert_eq!(got[0]["payload"], json!(b64(&raw)));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_order_with_increasing_offsets() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let offs = publish_n(&mut c, "fifo", "m", 30).await;
    assert!(offs.windows(2).all(|w| w[0] < w[1]), "offsets strictly increase: {offs:?}");
    let mut got = Vec::new();
    // One at a time, then the rest in one go.
    for _ in 0..10 {
        got.extend(c.consume("fifo", json!({})).await);
    }
    got.extend(c.consume("fifo", json!({"max":100})).await);
    assert_eq!(offsets(&got), offs);
    assert_eq!(texts(&got), (0..30).map(|i| format!("m{i}")).collect::<Vec<_>>());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_returns_offsets_and_is_atomic() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.publish("b", "first").await;
    let r = c
        .ok(json!({"op":"publish","queue":"b","id":"batch","messages":[
            {"payload":p("a")},{"payload":p("b"),"event":"e"},{"payload":p("c"),"key":"k"}]}))
        .await;
    assert_eq!(r["offsets"], json!([1, 2, 3]), "{r}");
    assert!(r.get("offset").is_none() && r.get("duplicates").is_none(), "{r}");
    // A bad element refuses the whole batch: nothing of it is stored.
    let r = c.call(json!({"op":"publish","queue":"b","messages":[{"payload":p("x")},{"payload":"not base64!"}]})).await;
    assert_eq!(r["error"]["code"], json!("bad_request"), "{r}");
    assert!(r["error"]["message"].as_str().expect("message").contains("messages[1].payload"), "{r}");
    // A batch that does not fit under max_length is refused whole.
    c.ok(json!({"op":"create","queue":"small","max_length":3})).await;
    c.publish("small", "s0").await;
    let r = c
        .call(json!({"op":"publish","queue":"small","messages":[{"payload":p("s1")},{"payload":p("s2")},{"payload":p("s3")}]}))
        .await;
    assert_eq!(r["error"]["code"], json!("queue_full"), "{r}");
    assert_eq!(stats(&mut c, "small").await["next_offset"], json!(1));
    assert_eq!(texts(&c.consume("small", json!({"max":10})).await), ["s0"]);
    let got = c.consume("b", json!({"max":10})).await;
    assert_eq!(texts(&got), ["first", "a", "b", "c"]);
    assert_eq!(got[2]["event"], json!("e"));
    assert_eq!(got[3]["key"], json!("k"));
    s.stop().await.unwrap();
}

// ------------------------------------------------------------------ groups

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_sees_every_message() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let offs = publish_n(&mut c, "fan", "m", 5).await;
    let mut d = s.connect().await;
    let a = c.consume("fan", json!({"group":"a","max":10})).await;
    let b = d.consume("fan", json!({"group":"b","max":10})).await;
    let def = d.consume("fan", json!({"max":10})).await;
    assert_eq!(offsets(&a), offs);
    assert_eq!(offsets(&b), offs);
    assert_eq!(offsets(&def), offs);
    assert!(c.consume("fan", json!({"group":"a","max":10})).await.is_empty());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_one_group_compete() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let n = 60;
    let all: BTreeSet<u64> = publish_n(&mut c, "work", "w", n).await.into_iter().collect();
    async fn drain(mut c: Client) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            let m = c.consume("work", json!({"group":"g","max":2})).await;
            if m.is_empty() {
                return got;
            }
            got.extend(offsets(&m));
        }
    }
    let (x, y) = tokio::join!(drain(s.connect().await), drain(s.connect().await));
    let (sx, sy): (BTreeSet<u64>, BTreeSet<u64>) = (x.iter().copied().collect(), y.iter().copied().collect());
    assert_eq!(sx.len(), x.len(), "no message twice to one consumer");
    assert_eq!(sy.len(), y.len(), "no message twice to one consumer");
    assert!(sx.is_disjoint(&sy), "one message to one consumer: {sx:?} / {sy:?}");
    assert_eq!(&sx | &sy, all, "together they got every message");
    s.stop().await.unwrap();
}

// ------------------------------------------------------- acks and leases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_ack_is_redelivered_after_ack_timeout() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let r = c.ok(json!({"op":"create","queue":"lease","ack_timeout_ms":200})).await;
    assert_eq!(r["created"], json!(true), "{r}");
    let off = c.publish("lease", "job").await;
    let t0 = Instant::now();
    let first = c.consume("lease", json!({"ack":"manual"})).await;
    assert_eq!(offsets(&first), [off]);
    assert_eq!(first[0]["deliveries"], json!(1));
    // Leased: the group has nothing else to hand out.
    let again = c.consume("lease", json!({"ack":"manual","wait_ms":3000})).await;
    let waited = t0.elapsed();
    assert_eq!(offsets(&again), [off], "delivered again once the lease ran out");
    assert_eq!(again[0]["deliveries"], json!(2));
    assert!(waited >= Duration::from_millis(190), "redelivered after {waited:?}, before ack_timeout_ms");
    let r = c.ok(json!({"op":"ack","queue":"lease","group":"default","offsets":[off],"id":"a"})).await;
    assert_eq!(r, json!({"id":"a","ok":true,"acked":1}));
    // Acked: never again, even past another lease period.
    assert!(c.consume("lease", json!({"ack":"manual","wait_ms":400})).await.is_empty());
    // Acking what is done, or was never delivered, acks nothing.
    let r = c.ok(json!({"op":"ack","queue":"lease","offsets":[off, 99]})).await;
    assert_eq!(r["acked"], json!(0), "{r}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_return_when_the_consumer_connection_closes() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    publish_n(&mut c, "held", "h", 2).await;
    let mut holder = s.connect().await;
    let got = holder.consume("held", json!({"ack":"manual","max":2})).await;
    assert_eq!(offsets(&got), [0, 1]);
    // The default ack_timeout_ms is 30 s: only the close can return them.
    assert!(c.consume("held", json!({"ack":"manual"})).await.is_empty());
    drop(holder);
    let back = c.consume("held", json!({"ack":"manual","max":5,"wait_ms":3000})).await;
    assert_eq!(offsets(&back), [0, 1]);
    assert!(back.iter().all(|m| m["deliveries"] == json!(2)), "{back:?}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_delay_redelivers_after_the_delay() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let off = c.publish("n", "retry-me").await;
    let got = c.consume("n", json!({"ack":"manual","group":"g"})).await;
    assert_eq!(got[0]["deliveries"], json!(1));
    let t0 = Instant::now();
    let r = c.ok(json!({"op":"nack","queue":"n","group":"g","offsets":[off],"delay_ms":300})).await;
    assert_eq!(r["nacked"], json!(1), "{r}");
    let again = c.consume("n", json!({"ack":"manual","group":"g","wait_ms":3000})).await;
    let waited = t0.elapsed();
    assert_eq!(offsets(&again), [off]);
    assert_eq!(again[0]["deliveries"], json!(2));
    assert!(waited >= Duration::from_millis(295), "redelivered {waited:?} after a nack with delay_ms 300");
    // Without a delay: at once, and counted.
    c.ok(json!({"op":"nack","queue":"n","group":"g","offsets":[off]})).await;
    let third = c.consume("n", json!({"ack":"manual","group":"g"})).await;
    assert_eq!(third[0]["deliveries"], json!(3));
    let st = stats(&mut c, "n").await;
    assert_eq!(group(&st, "g")["redelivered"], json!(2), "{st}");
    // Nacking what this group does not hold nacks nothing.
    let r = c.ok(json!({"op":"nack","queue":"n","group":"other","offsets":[off]})).await;
    assert_eq!(r["nacked"], json!(0), "{r}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_after_max_deliveries() {
    let s = TestServer::start_with(|c| c.engine.maintain_interval_ms = 50).await;
    let mut c = s.connect().await;
    c.ok(json!({"op":"create","queue":"dl","max_deliveries":2})).await;
    let off = c.ok(json!({"op":"publish","queue":"dl","payload":p("poison"),"headers":{"h":"v"}})).await["offset"]
        .as_u64()
        .expect("offset");
    for n in 1..=2 {
        let got = c.consume("dl", json!({"ack":"manual"})).await;
        assert_eq!(offsets(&got), [off]);
        assert_eq!(got[0]["deliveries"], json!(n));
        c.ok(json!({"op":"nack","queue":"dl","offsets":[off]})).await;
    }
    // Delivered max_deliveries times: not a third time, but dead-lettered.
    assert!(c.consume("dl", json!({"ack":"manual"})).await.is_empty());
    let dead = eventually(Duration::from_secs(3), || {
        let addr = s.addr;
        async move {
            let mut d = Client::connect(addr).await;
            let m = d.consume("dl.dlq", json!({"max":10})).await;
            (!m.is_empty()).then_some(m)
        }
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(text(&dead[0]), "poison");
    let h = &dead[0]["headers"];
    assert_eq!(h["h"], json!("v"), "{h}");
    assert_eq!(h["x-dead-letter-queue"], json!("dl"), "{h}");
    assert_eq!(h["x-dead-letter-reason"], json!("max_deliveries"), "{h}");
    assert_eq!(h["x-dead-letter-deliveries"], json!("2"), "{h}");
    assert_eq!(h["x-dead-letter-offset"], json!(off.to_string()), "{h}");
    // The source is done once the copy is stored.
    eventually(Duration::from_secs(3), || {
        let addr = s.addr;
        async move {
            let st = Client::connect(addr).await.ok(json!({"op":"stats","queue":"dl"})).await;
            (st["depth"] == json!(0) && group(&st, "default")["dead_lettered"] == json!(1)).then_some(())
        }
    })
    .await;
    // A configured dead-letter queue is used instead of `<queue>.dlq`.
    c.ok(json!({"op":"create","queue":"dl2","max_deliveries":1,"dead_letter":"graveyard"})).await;
    let o2 = c.publish("dl2", "bad").await;
    c.consume("dl2", json!({"ack":"manual"})).await;
    c.ok(json!({"op":"nack","queue":"dl2","offsets":[o2]})).await;
    assert!(c.consume("dl2", json!({"ack":"manual"})).await.is_empty());
    let dead = c.consume("graveyard", json!({"wait_ms":3000})).await;
    assert_eq!(texts(&dead), ["bad"]);
    assert_eq!(c.err(json!({"op":"stats","queue":"dl2.dlq"})).await, "not_found");
    s.stop().await.unwrap();
}

// --------------------------------------------------------------------- TTL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_never_delivered() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    // Per message.
    c.ok(json!({"op":"publish","queue":"t","payload":p("short"),"ttl_ms":100})).await;
    c.ok(json!({"op":"publish","queue":"t","payload":p("long"),"ttl_ms":60000})).await;
    c.ok(json!({"op":"publish","queue":"t","payload":p("forever")})).await;
    let stored_by = now_ms();
    wait_clock_past(stored_by + 100).await;
    let got = c.consume("t", json!({"max":10})).await;
    assert_eq!(texts(&got), ["long", "forever"], "{got:?}");
    assert_eq!(got[0]["ttl_ms"], json!(60000), "a delivered message keeps its ttl_ms");
    let st = stats(&mut c, "t").await;
    assert_eq!(group(&st, "default")["expired"], json!(1), "{st}");
    // A manual consume does not see it either.
    c.ok(json!({"op":"publish","queue":"t2","payload":p("gone"),"ttl_ms":50})).await;
    let stored_by = now_ms();
    wait_clock_past(stored_by + 50).await;
    assert!(c.consume("t2", json!({"ack":"manual","group":"m"})).await.is_empty());
    // Per queue; the shorter of the two applies.
    c.ok(json!({"op":"create","queue":"tq","message_ttl_ms":100})).await;
    c.ok(json!({"op":"publish","queue":"tq","payload":p("q1")})).await;
    c.ok(json!({"op":"publish","queue":"tq","payload":p("q2"),"ttl_ms":60000})).await;
    let stored_by = now_ms();
    wait_clock_past(stored_by + 100).await;
    assert!(c.consume("tq", json!({"max":10})).await.is_empty());
    assert!(c.consume("tq", json!({"max":10,"group":"late"})).await.is_empty());
    c.ok(json!({"op":"publish","queue":"tq","payload":p("fresh")})).await;
    assert_eq!(texts(&c.consume("tq", json!({"max":10})).await), ["fresh"]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_go_to_the_dead_letter_queue_when_asked() {
    let s = TestServer::start_with(|c| c.engine.maintain_interval_ms = 50).await;
    let mut c = s.connect().await;
    c.ok(json!({"op":"create","queue":"tx","message_ttl_ms":50,"dead_letter_expired":true})).await;
    c.publish("tx", "late").await;
    let stored_by = now_ms();
    wait_clock_past(stored_by + 50).await;
    assert!(c.consume("tx", json!({})).await.is_empty());
    let dead = c.consume("tx.dlq", json!({"wait_ms":3000})).await;
    assert_eq!(texts(&dead), ["late"]);
    assert_eq!(dead[0]["headers"]["x-dead-letter-reason"], json!("expired"));
    s.stop().await.unwrap();
}

// ------------------------------------------------------------ limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_with_reject_is_queue_full() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.ok(json!({"op":"create","queue":"full","max_length":2,"overflow":"reject"})).await;
    publish_n(&mut c, "full", "f", 2).await;
    let r = c.call(json!({"op":"publish","queue":"full","payload":p("no room"),"id":3})).await;
    assert_eq!(r["id"], json!(3));
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["code"], json!("queue_full"), "{r}");
    assert_eq!(stats(&mut c, "full").await["depth"], json!(2));
    // Consuming makes room.
    assert_eq!(texts(&c.consume("full", json!({})).await), ["f0"]);
    assert_eq!(c.publish("full", "f2").await, 2);
    assert_eq!(texts(&c.consume("full", json!({"max":10})).await), ["f1", "f2"]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_with_drop_oldest_drops_the_oldest() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.ok(json!({"op":"create","queue":"ring","max_length":3,"overflow":"drop_oldest"})).await;
    let offs = publish_n(&mut c, "ring", "r", 5).await;
    assert_eq!(offs, [0, 1, 2, 3, 4]);
    let st = stats(&mut c, "ring").await;
    assert_eq!(st["depth"], json!(3), "{st}");
    assert_eq!(st["first_offset"], json!(2), "{st}");
    let got = c.consume("ring", json!({"max":10})).await;
    assert_eq!(offsets(&got), [2, 3, 4]);
    assert_eq!(texts(&got), ["r2", "r3", "r4"]);
    s.stop().await.unwrap();
}

// ------------------------------------------------------------------ dedup

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_id_dedup_returns_the_original_offset_and_stores_nothing() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.publish("dd", "before").await;
    let r = c.ok(json!({"op":"publish","queue":"dd","payload":p("original"),"msg_id":"order-1"})).await;
    assert_eq!(r["offset"], json!(1));
    assert!(r.get("duplicate").is_none(), "{r}");
    let r = c.ok(json!({"op":"publish","queue":"dd","payload":p("retry"),"msg_id":"order-1","id":"r"})).await;
    assert_eq!(r, json!({"id":"r","ok":true,"offset":1,"duplicate":true}));
    let st = stats(&mut c, "dd").await;
    assert_eq!(st["next_offset"], json!(2), "nothing stored: {st}");
    // In a batch: duplicates listed by offset; the fresh one stored.
    let r = c
        .ok(json!({"op":"publish","queue":"dd","messages":[
            {"payload":p("again"),"msg_id":"order-1"},{"payload":p("new"),"msg_id":"order-2"},
            {"payload":p("new twice"),"msg_id":"order-2"}]}))
        .await;
    assert_eq!(r["offsets"], json!([1, 2, 2]), "{r}");
    assert_eq!(r["duplicates"], json!([1, 2]), "{r}");
    assert_eq!(stats(&mut c, "dd").await["next_offset"], json!(3));
    let got = c.consume("dd", json!({"max":10})).await;
    assert_eq!(texts(&got), ["before", "original", "new"]);
    assert_eq!(got[1]["msg_id"], json!("order-1"));
    // The same msg_id on another queue is another message.
    assert_eq!(
        c.ok(json!({"op":"publish","queue":"dd2","payload":p("x"),"msg_id":"order-1"})).await,
        json!({"ok":true,"offset":0})
    );
    s.stop().await.unwrap();
}

// ----------------------------------------------------------------- topics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_publish_routes_by_pattern() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    for (q, pat) in [("qa", "orders.*"), ("qb", "orders.#"), ("qc", "#"), ("qd", "orders.*.eu"), ("qe", "#.eu")] {
        let r = c.ok(json!({"op":"bind","queue":q,"pattern":pat,"id":q})).await;
        assert_eq!(r, json!({"id":q,"ok":true}));
    }
    // Binding again is harmless.
    c.ok(json!({"op":"bind","queue":"qa","pattern":"orders.*"})).await;
    let routed = |r: &Value| -> Vec<(String, u64)> {
        r["routed"]
            .as_array()
            .unwrap_or_else(|| panic!("routed in {r}"))
            .iter()
            .map(|x| (x["queue"].as_str().expect("queue").to_owned(), x["offset"].as_u64().expect("offset")))
            .collect()
    };
    let pub_topic = |t: &str, body: &str| json!({"op":"publish","topic":t,"payload":p(body)});
    let r = c.ok(pub_topic("orders.created", "1")).await;
    assert_eq!(routed(&r), [("qa".into(), 0), ("qb".into(), 0), ("qc".into(), 0)], "{r}");
    // `#` matches zero words; `*` needs exactly one.
    let r = c.ok(pub_topic("orders", "2")).await;
    assert_eq!(routed(&r), [("qb".into(), 1), ("qc".into(), 1)], "{r}");
    let r = c.ok(pub_topic("orders.x.eu", "3")).await;
    assert_eq!(routed(&r), [("qb".into(), 2), ("qc".into(), 2), ("qd".into(), 0), ("qe".into(), 0)], "{r}");
    let r = c.ok(pub_topic("eu", "4")).await;
    assert_eq!(routed(&r), [("qc".into(), 3), ("qe".into(), 1)], "{r}");
    let r = c.ok(pub_topic("orders.a.b", "5")).await;
    assert_eq!(routed(&r), [("qb".into(), 3), ("qc".into(), 4)], "{r}");
    // Each bound queue holds its copies.
    assert_eq!(texts(&c.consume("qa", json!({"max":10})).await), ["1"]);
    assert_eq!(texts(&c.consume("qb", json!({"max":10})).await), ["1", "2", "3", "5"]);
    assert_eq!(texts(&c.consume("qc", json!({"max":10})).await), ["1", "2", "3", "4", "5"]);
    assert_eq!(texts(&c.consume("qd", json!({"max":10})).await), ["3"]);
    assert_eq!(texts(&c.consume("qe", json!({"max":10})).await), ["3", "4"]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_publish_matching_nothing_is_ok_with_empty_routed() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let r = c.ok(json!({"op":"publish","topic":"nobody.listens","payload":p("x"),"id":1})).await;
    assert_eq!(r, json!({"id":1,"ok":true,"routed":[]}));
    c.ok(json!({"op":"bind","queue":"orders","pattern":"orders.*"})).await;
    let r = c.ok(json!({"op":"publish","topic":"users.new","payload":p("x")})).await;
    assert_eq!(r["routed"], json!([]), "{r}");
    let r = c.ok(json!({"op":"publish","topic":"orders.new.eu","payload":p("x")})).await;
    assert_eq!(r["routed"], json!([]), "`*` is exactly one word: {r}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_removes_a_binding_and_missing_ones_are_not_found() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.ok(json!({"op":"bind","queue":"u","pattern":"a.*"})).await;
    c.ok(json!({"op":"bind","queue":"u","pattern":"b.#"})).await;
    let r = c.ok(json!({"op":"publish","topic":"a.x","payload":p("1")})).await;
    assert_eq!(r["routed"], json!([{"queue":"u","offset":0}]));
    let r = c.ok(json!({"op":"unbind","queue":"u","pattern":"a.*","id":"ub"})).await;
    assert_eq!(r, json!({"id":"ub","ok":true}));
    let r = c.ok(json!({"op":"publish","topic":"a.x","payload":p("2")})).await;
    assert_eq!(r["routed"], json!([]), "{r}");
    let r = c.ok(json!({"op":"publish","topic":"b","payload":p("3")})).await;
    assert_eq!(r["routed"], json!([{"queue":"u","offset":1}]), "other bindings stay: {r}");
    assert_eq!(c.err(json!({"op":"unbind","queue":"u","pattern":"a.*"})).await, "not_found");
    assert_eq!(c.err(json!({"op":"unbind","queue":"u","pattern":"never.bound"})).await, "not_found");
    assert_eq!(c.err(json!({"op":"unbind","queue":"nope","pattern":"#"})).await, "not_found");
    s.stop().await.unwrap();
}

// ------------------------------------------------------- filters and from

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_filters_on_events() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    for (i, e) in ["created", "updated", "deleted", "created"].iter().enumerate() {
        c.ok(json!({"op":"publish","queue":"ev","payload":p(&i.to_string()),"event":e})).await;
    }
    c.publish("ev", "no event").await;
    let got = c.consume("ev", json!({"group":"a","max":10,"events":["created"]})).await;
    assert_eq!(offsets(&got), [0, 3]);
    assert!(got.iter().all(|m| m["event"] == json!("created")));
    let got = c.consume("ev", json!({"group":"b","max":10,"events":["updated","deleted"]})).await;
    assert_eq!(offsets(&got), [1, 2]);
    // What a filter skipped is not lost to the group's other consumers.
    let rest = c.consume("ev", json!({"group":"a","max":10})).await;
    assert_eq!(offsets(&rest), [1, 2, 4]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_groups_start_where_from_says() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    publish_n(&mut c, "fr", "old", 2).await;
    let after_old = now_ms();
    // A time strictly after the stored messages, and one before the next.
    wait_clock_past(after_old + 2).await;
    let t = now_ms();
    wait_clock_past(t + 2).await;
    assert!(c.consume("fr", json!({"group":"latest","from":"latest"})).await.is_empty());
    publish_n(&mut c, "fr", "new", 2).await;
    let got = c.consume("fr", json!({"group":"latest","max":10})).await;
    assert_eq!(texts(&got), ["new0", "new1"]);
    let got = c.consume("fr", json!({"group":"at1","from":1,"max":10})).await;
    assert_eq!(offsets(&got), [1, 2, 3]);
    let got = c.consume("fr", json!({"group":"time","from":{"time_ms":t},"max":10})).await;
    assert_eq!(texts(&got), ["new0", "new1"]);
    let got = c.consume("fr", json!({"group":"oldest","from":"oldest","max":10})).await;
    assert_eq!(offsets(&got), [0, 1, 2, 3]);
    let got = c.consume("fr", json!({"group":"dflt","max":10})).await;
    assert_eq!(offsets(&got), [0, 1, 2, 3], "a new group starts at the oldest retained message");
    // `from` applies when the group is created, not later.
    c.publish("fr", "more").await;
    let got = c.consume("fr", json!({"group":"at1","from":0,"max":10})).await;
    assert_eq!(offsets(&got), [4]);
    s.stop().await.unwrap();
}

// ------------------------------------------------------------ long polls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_wait_ms_returns_when_a_message_is_published() {
    let s = TestServer::start().await;
    let mut waiter = s.connect().await;
    let mut producer = s.connect().await;
    producer.ok(json!({"op":"create","queue":"lp"})).await;
    let t0 = Instant::now();
    waiter.send(json!({"op":"consume","queue":"lp","wait_ms":10000,"id":1})).await;
    waiter.send(json!({"op":"ping","id":2})).await;
    // Publish once the consume is attached (waiting).
    eventually(Duration::from_secs(3), || {
        let addr = s.addr;
        async move {
            let st = Client::connect(addr).await.ok(json!({"op":"stats","queue":"lp"})).await;
            (!st["clients"].as_array().expect("clients").is_empty()).then_some(())
        }
    })
    .await;
    producer.publish("lp", "wake").await;
    let r = waiter.recv().await;
    assert_eq!(r["id"], json!(1), "the consume's reply comes first: {r}");
    assert_eq!(texts(r["messages"].as_array().expect("messages")), ["wake"]);
    assert!(t0.elapsed() < Duration::from_secs(5), "woken by the publish, not by wait_ms");
    assert_eq!(waiter.recv().await["id"], json!(2));
    // The queue may also not exist yet.
    waiter.send(json!({"op":"consume","queue":"later","wait_ms":10000,"id":3})).await;
    producer.publish("later", "created").await;
    let r = waiter.recv().await;
    assert_eq!(r["id"], json!(3));
    assert_eq!(texts(r["messages"].as_array().expect("messages")), ["created"]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_wait_ms_on_a_missing_queue_returns_empty_after_the_wait() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let t0 = Instant::now();
    let r = c.ok(json!({"op":"consume","queue":"void","wait_ms":300,"id":"w"})).await;
    let waited = t0.elapsed();
    assert_eq!(r, json!({"id":"w","ok":true,"messages":[]}));
    assert!(waited >= Duration::from_millis(295), "answered after {waited:?}, before wait_ms");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    s.stop().await.unwrap();
}

// -------------------------------------------------------------- pipelining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_replies_come_back_in_request_order() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let mut rng = Rng::seeded("pipelined_replies_come_back_in_request_order", 0x5eed_1234_abcd_0001);
    // What each reply must be, from a model of the one queue.
    enum Expect {
        Pong,
        Offset(u64),
        Messages(Vec<String>),
        Error(&'static str),
    }
    let mut model: VecDeque<String> = VecDeque::new();
    let mut next = 0u64;
    let mut out = Vec::new();
    let mut expect = Vec::new();
    for i in 0..200u64 {
        let (req, e) = match rng.below(5) {
            0 => (json!({"op":"ping","id":i}), Expect::Pong),
            1 | 2 => {
                let body = format!("m{i}");
                let r = json!({"op":"publish","queue":"pipe","payload":p(&body),"id":i});
                model.push_back(body);
                next += 1;
                (r, Expect::Offset(next - 1))
            }
            3 => {
                let max = 1 + rng.below(3) as usize;
                let got: Vec<String> = (0..max).map_while(|_| model.pop_front()).collect();
                (json!({"op":"consume","queue":"pipe","max":max,"id":i}), Expect::Messages(got))
            }
            _ => (json!({"op":"no_such_op","id":i}), Expect::Error("unknown_op")),
        };
        // Half the ids as strings: both kinds are echoed.
        let mut req = req;
        if i % 2 == 1 {
            req["id"] = json!(format!("s{i}"));
        }
        out.extend(serde_json::to_vec(&req).expect("json"));
        out.push(b'\n');
        expect.push(e);
    }
    c.w.write_all(&out).await.expect("send all");
    for (i, e) in expect.iter().enumerate() {
        let r = c.recv().await;
        let id = if i % 2 == 1 { json!(format!("s{i}")) } else { json!(i) };
        assert_eq!(r["id"], id, "reply {i} out of order: {r}");
        match e {
            Expect::Pong => assert_eq!(r["version"], json!(1), "{r}"),
            Expect::Offset(o) => assert_eq!(r["offset"], json!(o), "{r}"),
            Expect::Messages(m) => {
                assert_eq!(&texts(r["messages"].as_array().unwrap_or_else(|| panic!("{r}"))), m, "request {i}")
            }
            Expect::Error(code) => assert_eq!(r["error"]["code"], json!(code), "{r}"),
        }
    }
    assert!(c.recv_within(Duration::from_millis(50)).await.is_none(), "one reply per request");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_pipelined_after_a_publish_sees_it() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    for i in 0..20 {
        let body = format!("rw{i}");
        let mut two = serde_json::to_vec(&json!({"op":"publish","queue":"rw","payload":p(&body),"id":"p"})).unwrap();
        two.push(b'\n');
        two.extend(serde_json::to_vec(&json!({"op":"consume","queue":"rw","id":"c"})).unwrap());
        two.push(b'\n');
        c.send_raw(&two).await;
        let pubr = c.recv().await;
        assert_eq!(pubr["id"], json!("p"));
        assert_eq!(pubr["offset"], json!(i));
        let con = c.recv().await;
        assert_eq!(con["id"], json!("c"));
        assert_eq!(texts(con["messages"].as_array().expect("messages")), [body]);
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_pipelined_after_a_publish_counts_it() {
    // Replies come in request order: a stats answered after the publish's
    // `ok` must not describe the queue as it was before it.
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    for i in 0..20u64 {
        let mut two = serde_json::to_vec(&json!({"op":"publish","queue":"ps","payload":p("x"),"id":"p"})).unwrap();
        two.push(b'\n');
        two.extend(serde_json::to_vec(&json!({"op":"stats","queue":"ps","id":"s"})).unwrap());
        two.push(b'\n');
        c.send_raw(&two).await;
        let pubr = c.recv().await;
        assert_eq!(pubr["offset"], json!(i), "{pubr}");
        let st = c.recv().await;
        assert_eq!(st["id"], json!("s"));
        assert_eq!(st["next_offset"], json!(i + 1), "stats after publish #{i}: {st}");
        assert_eq!(st["depth"], json!(i + 1), "stats after publish #{i}: {st}");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_pipelined_after_a_publish_removes_it() {
    // The publish was answered `ok` before the purge: the purge must see it.
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    for i in 0..10u64 {
        let mut two = serde_json::to_vec(&json!({"op":"publish","queue":"pp","payload":p("x"),"id":"p"})).unwrap();
        two.push(b'\n');
        two.extend(serde_json::to_vec(&json!({"op":"purge","queue":"pp","id":"x"})).unwrap());
        two.push(b'\n');
        c.send_raw(&two).await;
        let pubr = c.recv().await;
        assert_eq!(pubr["offset"], json!(i), "{pubr}");
        let purged = c.recv().await;
        assert_eq!(purged, json!({"id":"x","ok":true,"removed":1}), "purge after publish #{i}");
        assert!(c.consume("pp", json!({"max":10})).await.is_empty(), "purged message delivered after #{i}");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pipelined_after_a_publish_deletes_it() {
    // The publish comes first: it is stored (ok), then the queue is deleted.
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    for i in 0..10 {
        let mut two = serde_json::to_vec(&json!({"op":"publish","queue":"pd","payload":p("x"),"id":"p"})).unwrap();
        two.push(b'\n');
        two.extend(serde_json::to_vec(&json!({"op":"delete","queue":"pd","id":"d"})).unwrap());
        two.push(b'\n');
        c.send_raw(&two).await;
        let pubr = c.recv().await;
        assert_eq!(pubr, json!({"id":"p","ok":true,"offset":0}), "publish before delete #{i}");
        let del = c.recv().await;
        assert_eq!(del, json!({"id":"d","ok":true}), "delete after publish #{i}");
        assert_eq!(c.err(json!({"op":"stats","queue":"pd"})).await, "not_found", "#{i}");
        assert!(c.consume("pd", json!({"max":10})).await.is_empty(), "#{i}");
    }
    s.stop().await.unwrap();
}

// ------------------------------------------------------------ subscriptions

fn is_push(f: &Value) -> bool {
    f.get("sub").is_some() && f.get("message").is_some() && f.get("ok").is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_replies_before_its_first_push() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    publish_n(&mut c, "sq", "m", 3).await;
    c.send(json!({"op":"subscribe","queue":"sq","id":"sub1"})).await;
    let r = c.recv().await;
    assert_eq!(r["id"], json!("sub1"), "the reply is the first frame: {r}");
    assert_eq!(r["ok"], json!(true), "{r}");
    let sub = r["sub"].as_str().expect("sub id").to_owned();
    let mut got = Vec::new();
    for _ in 0..3 {
        let f = c.recv().await;
        assert!(is_push(&f), "{f}");
        assert_eq!(f["sub"], json!(sub));
        assert_eq!(f.as_object().expect("object").len(), 2, "exactly sub and message: {f}");
        got.push(f["message"].clone());
    }
    assert_eq!(offsets(&got), [0, 1, 2]);
    assert_eq!(texts(&got), ["m0", "m1", "m2"]);
    assert_eq!(got[0]["deliveries"], json!(1));
    // New messages are pushed as they come, from any connection.
    let mut other = s.connect().await;
    other.publish("sq", "live").await;
    let f = c.recv().await;
    assert!(is_push(&f) && text(&f["message"]) == "live", "{f}");
    // Auto ack: the group moved on.
    assert!(other.consume("sq", json!({})).await.is_empty());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reply_precedes_pushes_on_many_subscriptions() {
    // The order must hold however fast the first message is ready.
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.publish("race", "ready").await;
    for i in 0..20 {
        c.send(json!({"op":"subscribe","queue":"race","group":format!("g{i}"),"id":i})).await;
        let r = c.recv().await;
        assert_eq!(r["id"], json!(i), "reply before push: {r}");
        let sub = r["sub"].clone();
        let f = c.recv().await;
        assert_eq!(f["sub"], sub, "{f}");
        assert_eq!(text(&f["message"]), "ready");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_unacked_pushes() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    publish_n(&mut c, "pf", "m", 10).await;
    let r = c.ok(json!({"op":"subscribe","queue":"pf","group":"g","ack":"manual","prefetch":3})).await;
    let sub = r["sub"].clone();
    let mut got = Vec::new();
    for _ in 0..3 {
        let f = c.recv().await;
        assert_eq!(f["sub"], sub, "{f}");
        got.push(f["message"].clone());
    }
    assert_eq!(offsets(&got), [0, 1, 2]);
    let mut probe = s.connect().await;
    let st = stats(&mut probe, "pf").await;
    assert_eq!(group(&st, "g")["pending"], json!(3), "{st}");
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none(), "no fourth push without credit");
    // One ack, one more push.
    c.send(json!({"op":"ack","queue":"pf","group":"g","offsets":[1],"id":"a"})).await;
    let (mut acked, mut pushed) = (None, Vec::new());
    while acked.is_none() || pushed.is_empty() {
        let f = c.recv().await;
        if is_push(&f) {
            pushed.push(f["message"].clone());
        } else {
            acked = Some(f);
        }
    }
    assert_eq!(acked.expect("ack reply"), json!({"id":"a","ok":true,"acked":1}));
    assert_eq!(offsets(&pushed), [3]);
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none(), "still three unacked");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_returns_unacked_messages_to_the_group() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    publish_n(&mut c, "us", "m", 3).await;
    let r = c.ok(json!({"op":"subscribe","queue":"us","ack":"manual","prefetch":2})).await;
    let sub = r["sub"].as_str().expect("sub").to_owned();
    for want in 0..2 {
        let f = c.recv().await;
        assert_eq!(f["message"]["offset"], json!(want), "{f}");
    }
    let r = c.ok(json!({"op":"unsubscribe","sub":sub,"id":"u"})).await;
    assert_eq!(r, json!({"id":"u","ok":true}));
    let mut other = s.connect().await;
    let got = other.consume("us", json!({"ack":"manual","max":10})).await;
    assert_eq!(offsets(&got), [0, 1, 2]);
    assert_eq!(got.iter().map(|m| m["deliveries"].as_u64().expect("n")).collect::<Vec<_>>(), [2, 2, 1]);
    // No more pushes after the reply; the id is gone.
    assert!(c.recv_within(Duration::from_millis(200)).await.is_none());
    assert_eq!(c.err(json!({"op":"unsubscribe","sub":sub})).await, "not_found");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_of_an_unknown_sub_is_not_found() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let r = c.call(json!({"op":"unsubscribe","sub":"s999","id":4})).await;
    assert_eq!(r["id"], json!(4));
    assert_eq!(r["error"]["code"], json!("not_found"), "{r}");
    // Another connection's subscription is not this one's to end.
    let mut owner = s.connect().await;
    let sub = owner.ok(json!({"op":"subscribe","queue":"x"})).await["sub"].clone();
    assert_eq!(c.err(json!({"op":"unsubscribe","sub":sub})).await, "not_found");
    owner.ok(json!({"op":"unsubscribe","sub":sub})).await;
    s.stop().await.unwrap();
}

// ------------------------------------------------------------- management

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_conflicts_only_on_differing_settings() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let r = c.ok(json!({"op":"create","queue":"cq","ack_timeout_ms":300,"max_length":50,"id":1})).await;
    assert_eq!(r, json!({"id":1,"ok":true,"created":true}));
    let r = c.ok(json!({"op":"create","queue":"cq","ack_timeout_ms":300})).await;
    assert_eq!(r["created"], json!(false), "{r}");
    let r = c.ok(json!({"op":"create","queue":"cq"})).await;
    assert_eq!(r["created"], json!(false), "settings left out are not compared: {r}");
    assert_eq!(c.err(json!({"op":"create","queue":"cq","ack_timeout_ms":400})).await, "conflict");
    assert_eq!(c.err(json!({"op":"create","queue":"cq","max_length":51})).await, "conflict");
    assert_eq!(c.err(json!({"op":"create","queue":"cq","overflow":"drop_oldest"})).await, "conflict");
    let st = stats(&mut c, "cq").await;
    assert_eq!(st["settings"]["ack_timeout_ms"], json!(300), "{st}");
    assert_eq!(st["settings"]["max_length"], json!(50), "{st}");
    // An auto-created queue has the defaults: giving a default is no conflict.
    c.publish("auto", "x").await;
    c.ok(json!({"op":"create","queue":"auto","ack_timeout_ms":30000})).await;
    assert_eq!(c.err(json!({"op":"create","queue":"auto","ack_timeout_ms":1})).await, "conflict");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_a_queue_and_missing_is_not_found() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let r = c.call(json!({"op":"delete","queue":"ghost","id":"d"})).await;
    assert_eq!(r["id"], json!("d"));
    assert_eq!(r["error"]["code"], json!("not_found"), "{r}");
    publish_n(&mut c, "doomed", "m", 3).await;
    c.ok(json!({"op":"bind","queue":"doomed","pattern":"doom.*"})).await;
    assert_eq!(c.ok(json!({"op":"delete","queue":"doomed","id":2})).await, json!({"id":2,"ok":true}));
    assert_eq!(c.err(json!({"op":"stats","queue":"doomed"})).await, "not_found");
    assert!(c.consume("doomed", json!({"max":10})).await.is_empty());
    let q = c.ok(json!({"op":"queues"})).await;
    assert!(!q["queues"].as_array().expect("list").iter().any(|q| q["name"] == json!("doomed")), "{q}");
    // Its bindings went with it.
    let r = c.ok(json!({"op":"publish","topic":"doom.x","payload":p("x")})).await;
    assert_eq!(r["routed"], json!([]), "{r}");
    assert_eq!(c.err(json!({"op":"delete","queue":"doomed"})).await, "not_found");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_what_is_not_done() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    publish_n(&mut c, "pq", "m", 5).await;
    assert_eq!(c.consume("pq", json!({"max":2})).await.len(), 2);
    let r = c.ok(json!({"op":"purge","queue":"pq","id":"x"})).await;
    assert_eq!(r, json!({"id":"x","ok":true,"removed":3}));
    let st = stats(&mut c, "pq").await;
    assert_eq!(st["depth"], json!(0), "{st}");
    assert!(c.consume("pq", json!({"max":10})).await.is_empty());
    assert!(c.consume("pq", json!({"max":10,"group":"new"})).await.is_empty());
    // Offsets are never reused.
    assert_eq!(c.publish("pq", "after").await, 5);
    assert_eq!(texts(&c.consume("pq", json!({"max":10})).await), ["after"]);
    assert_eq!(c.err(json!({"op":"purge","queue":"nothing"})).await, "not_found");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reports_the_queue_groups_and_clients() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    assert_eq!(c.err(json!({"op":"stats","queue":"none"})).await, "not_found");
    publish_n(&mut c, "st", "m", 3).await;
    let mut consumer = s.connect().await;
    let got = consumer.consume("st", json!({"group":"g1","ack":"manual"})).await;
    assert_eq!(offsets(&got), [0]);
    let mut subscriber = s.connect().await;
    let sub = subscriber.ok(json!({"op":"subscribe","queue":"st","group":"g2","ack":"manual","prefetch":1})).await
        ["sub"]
        .clone();
    assert!(is_push(&subscriber.recv().await));
    let st = c.ok(json!({"op":"stats","queue":"st","id":"s"})).await;
    assert_eq!(st["id"], json!("s"));
    assert_eq!(st["queue"], json!("st"), "{st}");
    assert_eq!(st["depth"], json!(3), "{st}");
    assert!(st["bytes"].as_u64().expect("bytes") > 0, "{st}");
    assert_eq!(st["first_offset"], json!(0), "{st}");
    assert_eq!(st["next_offset"], json!(3), "{st}");
    assert_eq!(st["segments"], json!(1), "{st}");
    assert!(st["publish_rate"].is_number() && st["deliver_rate"].is_number(), "{st}");
    let g1 = group(&st, "g1");
    assert_eq!((g1["position"].clone(), g1["pending"].clone()), (json!(0), json!(1)), "{st}");
    assert_eq!(g1["redelivered"], json!(0), "{st}");
    let g2 = group(&st, "g2");
    assert_eq!((g2["position"].clone(), g2["pending"].clone()), (json!(0), json!(1)), "{st}");
    let clients = st["clients"].as_array().expect("clients");
    assert!(
        clients.iter().any(|k| k["group"] == json!("g1") && k["kind"] == json!("consume")),
        "the consuming connection is listed: {st}"
    );
    assert!(
        clients.iter().any(|k| k["group"] == json!("g2") && k["kind"] == json!("subscribe") && k["sub"] == sub),
        "the subscription is listed: {st}"
    );
    assert!(clients.iter().all(|k| k["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:"))), "{st}");
    // Acks move the position.
    consumer.ok(json!({"op":"ack","queue":"st","group":"g1","offsets":[0]})).await;
    let st = stats(&mut c, "st").await;
    let g1 = group(&st, "g1");
    assert_eq!((g1["position"].clone(), g1["pending"].clone(), g1["depth"].clone()), (json!(1), json!(0), json!(2)));
    // A closed connection is no longer listed.
    drop(consumer);
    eventually(Duration::from_secs(3), || {
        let addr = s.addr;
        async move {
            let st = Client::connect(addr).await.ok(json!({"op":"stats","queue":"st"})).await;
            let clients = st["clients"].as_array().expect("clients").clone();
            (!clients.iter().any(|k| k["group"] == json!("g1"))).then_some(())
        }
    })
    .await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_lists_every_queue() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let r = c.ok(json!({"op":"queues","id":0})).await;
    assert_eq!(r, json!({"id":0,"ok":true,"queues":[]}));
    c.ok(json!({"op":"create","queue":"qa"})).await;
    publish_n(&mut c, "qb", "m", 2).await;
    c.consume("qb", json!({"group":"readers"})).await;
    let r = c.ok(json!({"op":"queues"})).await;
    let list = r["queues"].as_array().expect("queues");
    let names: Vec<&str> = list.iter().map(|q| q["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["qa", "qb"], "{r}");
    assert_eq!(list[0]["depth"], json!(0));
    assert_eq!(list[0]["groups"], json!([]));
    assert_eq!(list[1]["depth"], json!(1), "{r}");
    assert_eq!(list[1]["groups"], json!(["readers"]), "{r}");
    assert!(list[1]["bytes"].as_u64().expect("bytes") > 0);
    assert!(list[1]["consumers"].is_u64(), "{r}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_counts_what_is_not_done_by_every_group() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let depth = |v: Value| v["depth"].as_u64().expect("depth");
    publish_n(&mut c, "dp", "m", 4).await;
    assert_eq!(depth(stats(&mut c, "dp").await), 4, "no group yet: everything");
    // Leased but not acked still counts.
    c.consume("dp", json!({"ack":"manual"})).await;
    assert_eq!(depth(stats(&mut c, "dp").await), 4);
    c.ok(json!({"op":"ack","queue":"dp","offsets":[0]})).await;
    assert_eq!(depth(stats(&mut c, "dp").await), 3);
    // A second group behind the first: the most any group still has.
    c.consume("dp", json!({"group":"slow","max":1})).await;
    assert_eq!(depth(stats(&mut c, "dp").await), 3);
    c.consume("dp", json!({"max":10})).await;
    assert_eq!(depth(stats(&mut c, "dp").await), 3, "group slow still has 3");
    c.consume("dp", json!({"group":"slow","max":10})).await;
    assert_eq!(depth(stats(&mut c, "dp").await), 0);
    // GMQ's L reports the same figure.
    c.publish("dp", "one more").await;
    assert_eq!(gmq(&s, r#"{"operation":"L","queue":"dp","payload":""}"#).await, [gmq_reply("L", "dp", "1")]);
    s.stop().await.unwrap();
}

// ------------------------------------------------------------------- auth

fn user(name: &str, password: &str, queues: &[&str], admin: bool) -> User {
    User { name: name.into(), password: password.into(), queues: queues.iter().map(|q| (*q).into()).collect(), admin }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_gates_every_op_and_checks_rights() {
    let s = TestServer::start_with(|c| {
        c.auth.users = vec![user("alice", "secret", &["jobs", "tmp.*"], false), user("root", "rootpw", &["*"], true)];
    })
    .await;
    let mut c = s.connect().await;
    let every_op = [
        json!({"op":"ping"}),
        json!({"op":"publish","queue":"jobs","payload":p("x")}),
        json!({"op":"publish","queue":"jobs","messages":[{"payload":p("x")}]}),
        json!({"op":"publish","topic":"a.b","payload":p("x")}),
        json!({"op":"consume","queue":"jobs"}),
        json!({"op":"ack","queue":"jobs","offsets":[0]}),
        json!({"op":"nack","queue":"jobs","offsets":[0]}),
        json!({"op":"subscribe","queue":"jobs"}),
        json!({"op":"unsubscribe","sub":"s1"}),
        json!({"op":"create","queue":"jobs"}),
        json!({"op":"delete","queue":"jobs"}),
        json!({"op":"purge","queue":"jobs"}),
        json!({"op":"queues"}),
        json!({"op":"stats","queue":"jobs"}),
        json!({"op":"bind","queue":"jobs","pattern":"#"}),
        json!({"op":"unbind","queue":"jobs","pattern":"#"}),
    ];
    for req in &every_op {
        assert_eq!(c.err(req.clone()).await, "unauthorized", "{req} before auth");
    }
    let r = c.call(json!({"op":"auth","user":"alice","password":"wrong","id":"a"})).await;
    assert_eq!(r["id"], json!("a"));
    assert_eq!(r["error"]["code"], json!("unauthorized"), "{r}");
    assert_eq!(c.err(json!({"op":"auth","user":"mallory","password":"secret"})).await, "unauthorized");
    assert_eq!(c.err(json!({"op":"auth","user":"alice","password":""})).await, "unauthorized");
    assert_eq!(c.err(json!({"op":"ping"})).await, "unauthorized", "a failed auth lets nothing in");
    // GMQ requests are gated too.
    let frames = gmq(&s, r#"{"operation":"P","queue":"jobs","payload":"eA=="}"#).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["confirmation"], json!("N"), "{frames:?}");
    assert!(frames[0]["error"].as_str().is_some_and(|e| e.contains("unauthorized")), "{frames:?}");

    assert_eq!(c.ok(json!({"op":"auth","user":"alice","password":"secret","id":1})).await, json!({"id":1,"ok":true}));
    c.ok(json!({"op":"ping"})).await;
    assert_eq!(c.publish("jobs", "j").await, 0);
    assert_eq!(c.publish("tmp.scratch", "t").await, 0);
    assert_eq!(texts(&c.consume("jobs", json!({})).await), ["j"]);
    for req in [
        json!({"op":"create","queue":"jobs"}),
        json!({"op":"delete","queue":"jobs"}),
        json!({"op":"purge","queue":"jobs"}),
        json!({"op":"bind","queue":"jobs","pattern":"#"}),
        json!({"op":"unbind","queue":"jobs","pattern":"#"}),
        json!({"op":"publish","queue":"payroll","payload":p("x")}),
        json!({"op":"consume","queue":"payroll"}),
        json!({"op":"subscribe","queue":"payroll"}),
        json!({"op":"stats","queue":"payroll"}),
        json!({"op":"ack","queue":"payroll","offsets":[0]}),
        json!({"op":"publish","queue":"tmp","payload":p("x")}),
        json!({"op":"publish","topic":"a.b","payload":p("x")}),
    ] {
        assert_eq!(c.err(req.clone()).await, "forbidden", "{req} as alice");
    }
    let mut root = s.connect().await;
    root.ok(json!({"op":"auth","user":"root","password":"rootpw"})).await;
    assert_eq!(root.err(json!({"op":"stats","queue":"payroll"})).await, "not_found", "nothing was stored");
    assert_eq!(root.ok(json!({"op":"create","queue":"payroll"})).await["created"], json!(true));
    root.ok(json!({"op":"bind","queue":"payroll","pattern":"pay.#"})).await;
    root.ok(json!({"op":"delete","queue":"payroll"})).await;
    s.stop().await.unwrap();
}

// ------------------------------------------------------ GMQ compatibility

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmq_publish_replies_in_gmq_shape_and_closes() {
    let s = TestServer::start().await;
    // With and without the trailing newline.
    let with_nl = gmq(&s, "{\"operation\":\"P\",\"queue\":\"q\",\"payload\":\"aGVsbG8=\"}\n").await;
    assert_eq!(with_nl, [gmq_reply("P", "q", "")]);
    let without = gmq(&s, r#"{"operation":"P","queue":"q","payload":"d29ybGQ="}"#).await;
    assert_eq!(without, [gmq_reply("P", "q", "")]);
    // GMQ's client sends its whole struct.
    let whole = gmq(&s, r#"{"operation":"P","queue":"q","payload":"IQ==","confirmation":"","error":null}"#).await;
    assert_eq!(whole, [gmq_reply("P", "q", "")]);
    let mut c = s.connect().await;
    let got = c.consume("q", json!({"max":10})).await;
    assert_eq!(texts(&got), ["hello", "world", "!"]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmq_consume_and_length() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.publish("gq", "first").await;
    c.publish("gq", "second").await;
    let l = |q: &str| format!(r#"{{"operation":"L","queue":"{q}","payload":""}}"#);
    let sreq = |q: &str| format!(r#"{{"operation":"S","queue":"{q}","payload":""}}"#);
    assert_eq!(gmq(&s, &l("gq")).await, [gmq_reply("L", "gq", "2")]);
    assert_eq!(gmq(&s, &sreq("gq")).await, [gmq_reply("S", "gq", &p("first"))]);
    assert_eq!(gmq(&s, &format!("{}\n", sreq("gq"))).await, [gmq_reply("S", "gq", &p("second"))]);
    assert_eq!(gmq(&s, &l("gq")).await, [gmq_reply("L", "gq", "0")]);
    // Empty and missing queues: "Y" with an empty payload; L is "0".
    assert_eq!(gmq(&s, &sreq("gq")).await, [gmq_reply("S", "gq", "")]);
    assert_eq!(gmq(&s, &sreq("missing")).await, [gmq_reply("S", "missing", "")]);
    assert_eq!(gmq(&s, &l("missing")).await, [gmq_reply("L", "missing", "0")]);
    // S consumes with auto ack in the default group.
    assert!(c.consume("gq", json!({"max":10})).await.is_empty());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmq_errors_say_n_with_an_error_string() {
    let s = TestServer::start().await;
    for (raw, code) in [
        (r#"{"operation":"P","queue":"q","payload":"not base64!"}"#, "bad_request"),
        (r#"{"operation":"P","queue":"../etc","payload":"eA=="}"#, "invalid_name"),
        (r#"{"operation":"X","queue":"q","payload":""}"#, "bad_request"),
    ] {
        let frames = gmq(&s, raw).await;
        assert_eq!(frames.len(), 1, "{raw}: {frames:?}");
        let f = &frames[0];
        let sent: Value = serde_json::from_str(raw).expect("json");
        assert_eq!(f["operation"], sent["operation"], "{f}");
        assert_eq!(f["queue"], sent["queue"], "{f}");
        assert_eq!(f["payload"], json!(""), "{f}");
        assert_eq!(f["confirmation"], json!("N"), "{raw}: {f}");
        let e = f["error"].as_str().unwrap_or_else(|| panic!("error string in {f}"));
        assert!(e.contains(code), "{raw}: {e}");
        assert_eq!(f.as_object().expect("object").len(), 5, "GMQ's five fields: {f}");
    }
    let mut c = s.connect().await;
    assert_eq!(c.err(json!({"op":"stats","queue":"q"})).await, "not_found", "nothing stored");
    s.stop().await.unwrap();
}
