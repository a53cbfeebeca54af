//! Hostile and broken clients, over real TCP: each bad input gets its
//! documented error code (or the documented disconnect), and afterwards the
//! server still serves a fresh connection and the messages published before
//! are intact. Limits and timeouts are set small with `start_with`; waits are
//! on conditions with deadlines.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use gmq_server::Storage;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

const KEEP: &str = "keep";

/// Publishes the messages every test checks at its end.
async fn seed(s: &TestServer) -> Vec<String> {
    let mut c = s.connect().await;
    let kept: Vec<String> = (0..5).map(|i| format!("kept-{i}")).collect();
    for m in &kept {
        c.publish(KEEP, m).await;
    }
    kept
}

/// A connection the server accepted and served (retrying while the server
/// still holds the connections of a previous step).
async fn connect_when_room(s: &TestServer) -> Client {
    eventually(Duration::from_secs(3), || {
        let addr = s.addr;
        async move {
            let mut c = Client::connect(addr).await;
            c.send(json!({"op":"ping","id":"room"})).await;
            match c.try_recv().await {
                Some(r) if r["ok"] == json!(true) => Some(c),
                _ => None,
            }
        }
    })
    .await
}

/// A fresh connection works, and `keep` holds exactly `kept` (read through
/// a new group, so the check consumes nothing of anyone else's).
async fn assert_intact(s: &TestServer, kept: &[String]) {
    static GROUP: AtomicU64 = AtomicU64::new(0);
    let mut c = connect_when_room(s).await;
    let r = c.ok(json!({"op":"ping","id":"alive"})).await;
    assert_eq!(r["id"], json!("alive"));
    let g = format!("check{}", GROUP.fetch_add(1, Ordering::Relaxed));
    let got = c.consume(KEEP, json!({"group":g,"max":1000})).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), kept, "previously published messages intact");
    let st = c.ok(json!({"op":"stats","queue":KEEP})).await;
    assert_eq!(st["next_offset"], json!(kept.len()), "nothing else stored in {KEEP}: {st}");
}

/// A request's error code and message.
async fn error_of(c: &mut Client, req: Value) -> (String, String) {
    let r = c.call(req.clone()).await;
    assert_eq!(r["ok"], json!(false), "{req} should fail: {r}");
    assert_eq!(r["id"], req["id"], "the id is echoed: {req} -> {r}");
    (r["error"]["code"].as_str().expect("code").to_owned(), r["error"]["message"].as_str().expect("message").to_owned())
}

/// Sends a raw line (newline added) and returns the one reply.
async fn raw_reply(c: &mut Client, line: &[u8]) -> Value {
    let mut b = line.to_vec();
    b.push(b'\n');
    c.send_raw(&b).await;
    c.recv().await
}

enum Read {
    Frame(Value),
    Closed,
    Quiet,
}

/// The next frame within `d`, telling a close apart from silence.
async fn read_within(c: &mut Client, d: Duration) -> Read {
    let mut line = String::new();
    match tokio::time::timeout(d, c.r.read_line(&mut line)).await {
        Err(_) => Read::Quiet,
        Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
        Ok(Ok(_)) => Read::Frame(serde_json::from_str(&line).expect("json")),
    }
}

/// Everything the server sends until it closes (a reset counts as a
/// close): the complete frames, and how many bytes of an unfinished last
/// line came before the close.
async fn read_until_closed(r: &mut BufReader<OwnedReadHalf>) -> (Vec<Value>, usize) {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(4), async {
        let mut chunk = [0u8; 64 << 10];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection within 4 s");
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let frames = buf[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("json"))
        .collect();
    (frames, buf.len() - complete)
}

/// The frames a client gets until the server closes; fails after 4 s.
async fn closed_within(c: &mut Client) -> Vec<Value> {
    let (frames, partial) = read_until_closed(&mut c.r).await;
    assert_eq!(partial, 0, "the last frame before the close is complete");
    frames
}

/// Writes, ignoring errors (the server may close while we write).
async fn write_ignoring_errors(w: &mut OwnedWriteHalf, b: &[u8]) {
    let _ = w.write_all(b).await;
}

// ------------------------------------------------------------- bad JSON

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_bad_json_and_the_connection_stays_usable() {
    let s = TestServer::start().await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    for raw in [
        &b"{not json}"[..],
        br#"{"op":"ping",}"#,
        br#"{"op":"ping""#,
        br#"{'op':'ping'}"#,
        br#"{"op":"ping" "id":1}"#,
        b"nope",
        br#"{"op":"ping","id":1"#,
        b"\x7b\x22op\x22:\x22ping\x22,\x22id\x22:\x22\xff\xfe\x22}",
    ] {
        let r = raw_reply(&mut c, raw).await;
        assert_eq!(r["ok"], json!(false), "{}: {r}", String::from_utf8_lossy(raw));
        assert_eq!(r["error"]["code"], json!("bad_json"), "{}: {r}", String::from_utf8_lossy(raw));
        assert!(r.get("id").is_none(), "{r}");
        // The next line is a new request.
        assert_eq!(c.ok(json!({"op":"ping","id":"next"})).await["id"], json!("next"));
    }
    // Pipelined: bad lines between good ones, each answered in order.
    c.send_raw(b"{\"op\":\"ping\",\"id\":1}\n{oops\n{\"op\":\"ping\",\"id\":2}\n]]\n{\"op\":\"ping\",\"id\":3}\n")
        .await;
    let frames: Vec<Value> = [c.recv().await, c.recv().await, c.recv().await, c.recv().await, c.recv().await].into();
    assert_eq!(frames[0]["id"], json!(1));
    assert_eq!(frames[1]["error"]["code"], json!("bad_json"));
    assert_eq!(frames[2]["id"], json!(2));
    assert_eq!(frames[3]["error"]["code"], json!("bad_json"));
    assert_eq!(frames[4]["id"], json!(3));
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_not_an_object_is_bad_request() {
    let s = TestServer::start().await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    for raw in [&b"[1,2]"[..], b"42", br#""ping""#, b"null", b"true", b"[]", br#"[{"op":"ping"}]"#] {
        let r = raw_reply(&mut c, raw).await;
        assert_eq!(r["error"]["code"], json!("bad_request"), "{}: {r}", String::from_utf8_lossy(raw));
    }
    c.ok(json!({"op":"ping"})).await;
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

// ------------------------------------------------------------ bad fields

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ill_typed_fields_are_bad_request_naming_the_field() {
    let s = TestServer::start().await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    let cases = [
        (json!({"op":"consume","queue":"q","max":"5"}), "max"),
        (json!({"op":"consume","queue":"q","max":-1}), "max"),
        (json!({"op":"consume","queue":"q","max":1.5}), "max"),
        (json!({"op":"consume","queue":"q","max":1.0}), "max"),
        (json!({"op":"consume","queue":"q","max":true}), "max"),
        (json!({"op":"consume","queue":"q","max":[1]}), "max"),
        (json!({"op":"consume","queue":"q","max":0}), "max"),
        (json!({"op":"consume","queue":"q","wait_ms":"100"}), "wait_ms"),
        (json!({"op":"consume","queue":"q","wait_ms":-5}), "wait_ms"),
        (json!({"op":"consume","queue":"q","ack":"sometimes"}), "ack"),
        (json!({"op":"consume","queue":"q","ack":true}), "ack"),
        (json!({"op":"consume","queue":"q","events":"created"}), "events"),
        (json!({"op":"consume","queue":"q","events":[1]}), "events"),
        (json!({"op":"consume","queue":"q","group":7}), "group"),
        (json!({"op":"consume","queue":7}), "queue"),
        (json!({"op":"consume","queue":"q","from":-1}), "from"),
        (json!({"op":"consume","queue":"q","from":"yesterday"}), "from"),
        (json!({"op":"consume","queue":"q","from":{"time_ms":"now"}}), "from"),
        (json!({"op":"subscribe","queue":"q","prefetch":0}), "prefetch"),
        (json!({"op":"subscribe","queue":"q","prefetch":-1}), "prefetch"),
        (json!({"op":"subscribe","queue":"q","prefetch":"3"}), "prefetch"),
        (json!({"op":"publish","queue":"q","payload":"eA==","ttl_ms":-1}), "ttl_ms"),
        (json!({"op":"publish","queue":"q","payload":"eA==","ttl_ms":2.5}), "ttl_ms"),
        (json!({"op":"publish","queue":"q","payload":"eA==","ttl_ms":false}), "ttl_ms"),
        (json!({"op":"publish","queue":"q","payload":5}), "payload"),
        (json!({"op":"publish","queue":"q","payload":"eA==","event":1}), "event"),
        (json!({"op":"publish","queue":"q","payload":"eA==","key":[]}), "key"),
        (json!({"op":"publish","queue":"q","payload":"eA==","headers":"x"}), "headers"),
        (json!({"op":"publish","queue":"q","payload":"eA==","headers":{"a":1}}), "headers.a"),
        (json!({"op":"publish","queue":"q","payload":"eA==","msg_id":5}), "msg_id"),
        (json!({"op":"publish","queue":"q","messages":"x"}), "messages"),
        (json!({"op":"publish","queue":"q","messages":[]}), "messages"),
        (json!({"op":"publish","queue":"q","messages":[5]}), "messages[0]"),
        (json!({"op":"publish","queue":"q","messages":[{"payload":"eA==","ttl_ms":-1}]}), "messages[0].ttl_ms"),
        (json!({"op":"publish","topic":5,"payload":"eA=="}), "topic"),
        (json!({"op":"ack","queue":"q","offsets":"1"}), "offsets"),
        (json!({"op":"ack","queue":"q","offsets":1}), "offsets"),
        (json!({"op":"ack","queue":"q","offsets":[-1]}), "offsets"),
        (json!({"op":"ack","queue":"q","offsets":[1.5]}), "offsets"),
        (json!({"op":"nack","queue":"q","offsets":[0],"delay_ms":true}), "delay_ms"),
        (json!({"op":"nack","queue":"q","offsets":[0],"delay_ms":"10"}), "delay_ms"),
        (json!({"op":"create","queue":"q","ack_timeout_ms":1.5}), "ack_timeout_ms"),
        (json!({"op":"create","queue":"q","max_length":-3}), "max_length"),
        (json!({"op":"create","queue":"q","segment_bytes":"big"}), "segment_bytes"),
        (json!({"op":"create","queue":"q","max_deliveries":true}), "max_deliveries"),
        (json!({"op":"create","queue":"q","message_ttl_ms":-1}), "message_ttl_ms"),
        (json!({"op":"create","queue":"q","dead_letter_expired":"yes"}), "dead_letter_expired"),
        (json!({"op":"create","queue":"q","fsync":"sometimes"}), "fsync"),
        (json!({"op":"create","queue":"q","fsync":{"interval_ms":-1}}), "fsync"),
        (json!({"op":"create","queue":"q","overflow":"explode"}), "overflow"),
        (json!({"op":"create","queue":"q","retention":5}), "retention"),
        (json!({"op":"create","queue":"q","retention":{"max_age_ms":-1}}), "max_age_ms"),
        (json!({"op":"auth","user":5,"password":"x"}), "user"),
        (json!({"op":"bind","queue":"q","pattern":5}), "pattern"),
        (json!({"op":"unsubscribe","sub":true}), "sub"),
    ];
    for (i, (mut req, field)) in cases.into_iter().enumerate() {
        req["id"] = json!(i);
        let (code, message) = error_of(&mut c, req.clone()).await;
        assert_eq!(code, "bad_request", "{req}: {message}");
        assert!(message.contains(&format!("'{field}'")), "{req}: the message names '{field}': {message}");
    }
    // Numbers past u64 and non-integer ids.
    let r = raw_reply(&mut c, br#"{"op":"consume","queue":"q","max":18446744073709551616,"id":1}"#).await;
    assert_eq!(r["error"]["code"], json!("bad_request"), "{r}");
    assert_eq!(r["id"], json!(1));
    for id in [json!([1]), json!(1.5), json!({"a":1}), json!(true)] {
        let r = c.call(json!({"op":"ping","id":id})).await;
        assert_eq!(r["error"]["code"], json!("bad_request"), "id {id}: {r}");
        assert!(r["error"]["message"].as_str().expect("message").contains("'id'"), "{r}");
    }
    let r = c.call(json!({"op":5})).await;
    assert_eq!(r["error"]["code"], json!("bad_request"), "{r}");
    // Nothing of it reached a queue.
    assert_eq!(c.err(json!({"op":"stats","queue":"q"})).await, "not_found");
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_are_bad_request_naming_the_field() {
    let s = TestServer::start().await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    let cases = [
        (json!({"op":"publish","queue":"q"}), "payload"),
        (json!({"op":"publish","queue":"q","payload":null}), "payload"),
        (json!({"op":"publish","payload":"eA=="}), "queue"),
        (json!({"op":"publish","queue":"q","messages":[{"event":"e"}]}), "messages[0].payload"),
        (json!({"op":"consume"}), "queue"),
        (json!({"op":"subscribe"}), "queue"),
        (json!({"op":"ack","queue":"q"}), "offsets"),
        (json!({"op":"ack","offsets":[0]}), "queue"),
        (json!({"op":"nack","queue":"q"}), "offsets"),
        (json!({"op":"auth","user":"u"}), "password"),
        (json!({"op":"auth","password":"p"}), "user"),
        (json!({"op":"bind","queue":"q"}), "pattern"),
        (json!({"op":"unbind","pattern":"#"}), "queue"),
        (json!({"op":"unsubscribe"}), "sub"),
        (json!({"op":"create"}), "queue"),
        (json!({"op":"delete"}), "queue"),
        (json!({"op":"purge"}), "queue"),
        (json!({"op":"stats"}), "queue"),
        (json!({}), "op"),
        (json!({"op":null}), "op"),
    ];
    for (i, (mut req, field)) in cases.into_iter().enumerate() {
        req["id"] = json!(format!("m{i}"));
        let (code, message) = error_of(&mut c, req.clone()).await;
        assert_eq!(code, "bad_request", "{req}: {message}");
        assert!(message.contains(&format!("'{field}'")), "{req}: the message names '{field}': {message}");
    }
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ops_and_unknown_fields() {
    let s = TestServer::start().await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    for op in ["fly", "PING", "Publish", "", "operation"] {
        let (code, _) = error_of(&mut c, json!({"op":op,"id":op})).await;
        assert_eq!(code, "unknown_op", "op {op:?}");
    }
    for (req, field) in [
        (json!({"op":"ping","foo":1}), "foo"),
        (json!({"op":"consume","queue":"q","wait_msec":5}), "wait_msec"),
        (json!({"op":"create","queue":"q","ack_timeout":5}), "ack_timeout"),
        (json!({"op":"publish","queue":"q","payload":"eA==","ttl":5}), "ttl"),
        (json!({"op":"publish","queue":"q","messages":[{"payload":"eA==","x":1}]}), "messages[0].x"),
        (json!({"op":"create","queue":"q","retention":{"max_age":1}}), "retention.max_age"),
        (json!({"op":"subscribe","queue":"q","max":5}), "max"),
        (json!({"op":"consume","queue":"q","prefetch":5}), "prefetch"),
    ] {
        let mut req = req;
        req["id"] = json!(field);
        let (code, message) = error_of(&mut c, req.clone()).await;
        assert_eq!(code, "bad_request", "{req}: {message}");
        assert!(message.contains(&format!("'{field}'")), "{req}: {message}");
    }
    // Contradictions.
    for req in [
        json!({"op":"publish","queue":"q","topic":"t","payload":"eA==","id":1}),
        json!({"op":"publish","queue":"q","payload":"eA==","messages":[{"payload":"eA=="}],"id":2}),
        json!({"op":"publish","topic":"t","messages":[{"payload":"eA=="}],"id":3}),
    ] {
        assert_eq!(error_of(&mut c, req.clone()).await.0, "bad_request", "{req}");
    }
    assert_eq!(c.err(json!({"op":"stats","queue":"q"})).await, "not_found", "nothing stored");
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

// ------------------------------------------------------------------ names

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_invalid_name_and_touch_no_file() {
    let s = TestServer::start().await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    let long = "a".repeat(201);
    let bad = ["../x", "", long.as_str(), ".hidden", ".", "..", "a/b", "a b", "é", "a\\b", "x\u{0}", "/abs", "q\n"];
    let mut n = 0;
    for name in bad {
        for req in [
            json!({"op":"publish","queue":name,"payload":"eA=="}),
            json!({"op":"publish","queue":name,"messages":[{"payload":"eA=="}]}),
            json!({"op":"create","queue":name}),
            json!({"op":"consume","queue":name}),
            json!({"op":"consume","queue":"q","group":name}),
            json!({"op":"subscribe","queue":name}),
            json!({"op":"subscribe","queue":"q","group":name}),
            json!({"op":"ack","queue":name,"offsets":[0]}),
            json!({"op":"ack","queue":"q","group":name,"offsets":[0]}),
            json!({"op":"nack","queue":name,"offsets":[0]}),
            json!({"op":"stats","queue":name}),
            json!({"op":"delete","queue":name}),
            json!({"op":"purge","queue":name}),
            json!({"op":"bind","queue":name,"pattern":"#"}),
            json!({"op":"unbind","queue":name,"pattern":"#"}),
            json!({"op":"create","queue":"q","dead_letter":name}),
        ] {
            let mut req = req;
            req["id"] = json!(n);
            n += 1;
            let (code, message) = error_of(&mut c, req.clone()).await;
            assert_eq!(code, "invalid_name", "{req}: {message}");
        }
    }
    // Topics and patterns: words of [A-Za-z0-9_-] between single dots.
    for topic in ["", "a..b", ".a", "a.", "a.*", "a.#", "a b", "a/b", "../x"] {
        let (code, message) = error_of(&mut c, json!({"op":"publish","topic":topic,"payload":"eA==","id":topic})).await;
        assert_eq!(code, "invalid_name", "topic {topic:?}: {message}");
    }
    for pattern in ["", "a..b", "a/b", "a.**", "*a", "../x"] {
        let req = json!({"op":"bind","queue":"q","pattern":pattern,"id":pattern});
        let (code, message) = error_of(&mut c, req).await;
        assert_eq!(code, "invalid_name", "pattern {pattern:?}: {message}");
    }
    // The longest valid name works.
    let max = "b".repeat(200);
    assert_eq!(c.publish(&max, "edge").await, 0);
    assert_eq!(c.err(json!({"op":"stats","queue":"q"})).await, "not_found", "no queue 'q' was made");
    // No file was created for any of them.
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut names = Vec::new();
    walk(&s.data_dir, &mut names);
    for bad in ["x", ".hidden", "hidden", "a b", "abs"] {
        assert!(!names.iter().any(|n| n == bad), "a file named {bad:?} in the data directory: {names:?}");
    }
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

// ----------------------------------------------------------------- base64

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_base64_is_bad_request() {
    let s = TestServer::start().await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    for payload in [
        "abc",
        "aGk",
        "aGVsbG8",
        "a GVsbG8=",
        "aGk=\n",
        " aGk=",
        "aGk-",
        "aGk_",
        "aGk==",
        "====",
        "aGk=aGk=",
        "!!!!",
        "aGl=",
    ] {
        let req = json!({"op":"publish","queue":KEEP,"payload":payload,"id":payload});
        let (code, message) = error_of(&mut c, req).await;
        assert_eq!(code, "bad_request", "payload {payload:?}: {message}");
        assert!(message.contains("'payload'"), "{message}");
    }
    let req = json!({"op":"publish","queue":KEEP,"id":0,"messages":[{"payload":"eA=="},{"payload":"eA"}]});
    let (code, message) = error_of(&mut c, req).await;
    assert_eq!(code, "bad_request");
    assert!(message.contains("'messages[1].payload'"), "{message}");
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

// ----------------------------------------------------------------- limits

fn publish_line(queue: &str, payload_len: usize) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"op":"publish","queue":queue,"payload":b64(&vec![b'z'; payload_len])}))
        .expect("json");
    line.push(b'\n');
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_is_frame_too_large_then_closed() {
    let s = TestServer::start_with(|c| c.limits.max_frame_bytes = 4096).await;
    let kept = seed(&s).await;
    // A line just under the limit is served.
    let fits = publish_line("big", 3000);
    assert!(fits.len() < 4096);
    let mut c = s.connect().await;
    c.send_raw(&fits).await;
    assert_eq!(c.recv().await["ok"], json!(true));
    // Over the limit, with its newline.
    let over = publish_line(KEEP, 3500);
    assert!(over.len() > 4096);
    let mut c = s.connect().await;
    c.send_raw(&over).await;
    let frames = closed_within(&mut c).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["ok"], json!(false));
    assert_eq!(frames[0]["error"]["code"], json!("frame_too_large"), "{frames:?}");
    // Over the limit before any newline: refused as the bytes arrive.
    let mut c = s.connect().await;
    c.send_raw(&over[..over.len() - 1]).await;
    let frames = closed_within(&mut c).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["error"]["code"], json!("frame_too_large"), "{frames:?}");
    // A megabyte line: the client may still be writing when the server
    // answers and closes.
    let huge = publish_line(KEEP, 1 << 20);
    let Client { r, mut w } = s.connect().await;
    let mut r = r;
    let (_, (frames, partial)) = tokio::join!(write_ignoring_errors(&mut w, &huge), read_until_closed(&mut r));
    assert_eq!(partial, 0);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["error"]["code"], json!("frame_too_large"), "{frames:?}");
    assert_intact(&s, &kept).await;
    let mut c = s.connect().await;
    assert_eq!(c.ok(json!({"op":"stats","queue":"big"})).await["depth"], json!(1));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_max_payload_bytes_is_payload_too_large() {
    let s = TestServer::start_with(|c| c.limits.max_payload_bytes = 1000).await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    let (code, message) =
        error_of(&mut c, json!({"op":"publish","queue":KEEP,"payload":b64(&[1u8; 1001]),"id":"big"})).await;
    assert_eq!(code, "payload_too_large", "{message}");
    let req = json!({"op":"publish","queue":KEEP,"id":"batch",
        "messages":[{"payload":b64(&[1u8; 10])},{"payload":b64(&[1u8; 1001])}]});
    let (code, message) = error_of(&mut c, req).await;
    assert_eq!(code, "payload_too_large", "{message}");
    assert!(message.contains("messages[1].payload"), "{message}");
    c.ok(json!({"op":"bind","queue":"bound","pattern":"#"})).await;
    let (code, _) = error_of(&mut c, json!({"op":"publish","topic":"t","payload":b64(&[1u8; 1001]),"id":"t"})).await;
    assert_eq!(code, "payload_too_large");
    assert_eq!(c.ok(json!({"op":"stats","queue":"bound"})).await["next_offset"], json!(0));
    // GMQ's publish too.
    let mut g = s.connect().await;
    g.send_raw(format!(r#"{{"operation":"P","queue":"{KEEP}","payload":"{}"}}"#, b64(&[1u8; 1001])).as_bytes()).await;
    let frames = closed_within(&mut g).await;
    assert_eq!(frames[0]["confirmation"], json!("N"), "{frames:?}");
    assert!(frames[0]["error"].as_str().is_some_and(|e| e.contains("payload_too_large")), "{frames:?}");
    // Exactly at the limit is fine, on the same connection.
    let r = c.ok(json!({"op":"publish","queue":"edge","payload":b64(&[1u8; 1000])})).await;
    assert_eq!(r["offset"], json!(0));
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_max_batch_is_refused_whole() {
    let s = TestServer::start_with(|c| c.limits.max_batch = 10).await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    let batch = |n: usize| -> Value { (0..n).map(|i| json!({"payload":b64(format!("b{i}").as_bytes())})).collect() };
    let (code, message) = error_of(&mut c, json!({"op":"publish","queue":KEEP,"messages":batch(11),"id":11})).await;
    assert_eq!(code, "bad_request");
    assert!(message.contains("'messages'"), "{message}");
    let r = c.ok(json!({"op":"publish","queue":"ten","messages":batch(10)})).await;
    assert_eq!(r["offsets"], json!((0..10).collect::<Vec<u64>>()));
    c.ok(json!({"op":"publish","queue":"ten","messages":batch(10)})).await;
    // A consume is served up to max_batch.
    assert_eq!(c.consume("ten", json!({"max":100})).await.len(), 10);
    assert_eq!(c.consume("ten", json!({"max":100})).await.len(), 10);
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

// -------------------------------------------------------------- garbage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_garbage_gets_bad_json_per_line() {
    let s = TestServer::start().await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    let mut rng = Rng::seeded("binary_garbage_gets_bad_json_per_line", 0x0ab5_e5ee_d000_0001);
    let mut lines: Vec<Vec<u8>> = vec![
        b"\0".to_vec(),
        b"\0\0\0\0{\"op\":\"ping\"}".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"\xc0\x80".to_vec(),
        b"\x80{\"op\":\"ping\"}".to_vec(),
        b"\x1b[2J\x07".to_vec(),
        b"GET / HTTP/1.1\r".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        b"{\"op\":\"ping\",\"id\":\"a\0b\"}".to_vec(),
        b"{\"op\":\"ping\",\"id\":\"\xed\xa0\x80\"}".to_vec(),
    ];
    for _ in 0..100 {
        // A first byte that cannot start JSON (nor a blank line); then
        // anything but a newline.
        let mut l = vec![0xff];
        for _ in 0..rng.below(300) {
            let b = rng.below(256) as u8;
            l.push(if b == b'\n' { 0 } else { b });
        }
        lines.push(l);
    }
    let mut all = Vec::new();
    for l in &lines {
        all.extend_from_slice(l);
        all.push(b'\n');
    }
    // Blank lines are skipped without a reply.
    all.extend_from_slice(b"   \t \r\n\n{\"op\":\"ping\",\"id\":\"end\"}\n");
    c.send_raw(&all).await;
    for (i, l) in lines.iter().enumerate() {
        let r = c.recv().await;
        assert_eq!(r["error"]["code"], json!("bad_json"), "line {i} {:?}: {r}", String::from_utf8_lossy(l));
    }
    assert_eq!(c.recv().await["id"], json!("end"));
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

// ----------------------------------------------------------- slow clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_line_then_silence_is_timeout_then_closed() {
    let s = TestServer::start_with(|c| c.limits.line_timeout_ms = 300).await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    let t0 = Instant::now();
    c.send_raw(format!(r#"{{"op":"publish","queue":"{KEEP}","payload":"eA"#).as_bytes()).await;
    let frames = closed_within(&mut c).await;
    let waited = t0.elapsed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["ok"], json!(false));
    assert_eq!(frames[0]["error"]["code"], json!("timeout"), "{frames:?}");
    assert!(waited >= Duration::from_millis(290), "cut off after {waited:?}, before line_timeout_ms");
    // The line clock starts with the line: a quiet connection between
    // requests is not cut off by it.
    let mut quiet = s.connect().await;
    quiet.ok(json!({"op":"ping"})).await;
    assert!(matches!(read_within(&mut quiet, Duration::from_millis(700)).await, Read::Quiet));
    quiet.ok(json!({"op":"ping"})).await;
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_is_closed_when_idle() {
    let s = TestServer::start_with(|c| c.limits.idle_timeout_ms = 300).await;
    let kept = seed(&s).await;
    let t0 = Instant::now();
    let mut mute = s.connect().await;
    assert!(closed_within(&mut mute).await.is_empty(), "closed without a frame");
    assert!(t0.elapsed() >= Duration::from_millis(290), "closed after {:?}", t0.elapsed());
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_after_a_request_is_closed() {
    let s = TestServer::start_with(|c| c.limits.idle_timeout_ms = 300).await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    c.ok(json!({"op":"ping"})).await;
    let t0 = Instant::now();
    assert!(closed_within(&mut c).await.is_empty(), "closed without a frame");
    assert!(t0.elapsed() >= Duration::from_millis(250), "closed after {:?}", t0.elapsed());
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_keeps_a_connection_from_idling_out() {
    let s = TestServer::start_with(|c| c.limits.idle_timeout_ms = 300).await;
    let kept = seed(&s).await;
    let mut sub = s.connect().await;
    sub.ok(json!({"op":"subscribe","queue":"idle-sub"})).await;
    assert!(matches!(read_within(&mut sub, Duration::from_millis(900)).await, Read::Quiet), "subscriber kept");
    sub.ok(json!({"op":"ping"})).await;
    let mut producer = s.connect().await;
    producer.publish("idle-sub", "still here").await;
    let f = sub.recv().await;
    assert_eq!(text(&f["message"]), "still here");
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_a_long_poll_in_flight() {
    // `idle_timeout_ms` closes a connection with "nothing in flight"; a
    // consume waiting for messages is in flight.
    let s = TestServer::start_with(|c| c.limits.idle_timeout_ms = 300).await;
    let kept = seed(&s).await;
    let mut c = s.connect().await;
    let t0 = Instant::now();
    c.send(json!({"op":"consume","queue":"slow","wait_ms":1000,"id":1})).await;
    let r = c.recv().await;
    assert_eq!(r["id"], json!(1));
    assert_eq!(r["messages"], json!([]));
    assert!(t0.elapsed() >= Duration::from_millis(990));
    // Right after its reply the connection is still open.
    c.send(json!({"op":"ping","id":2})).await;
    match read_within(&mut c, Duration::from_secs(3)).await {
        Read::Frame(f) => assert_eq!(f["id"], json!(2), "{f}"),
        Read::Closed => panic!("the connection was closed while a consume was in flight"),
        Read::Quiet => panic!("no reply to ping"),
    }
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_off() {
    let s = TestServer::start_with(|c| {
        c.limits.write_timeout_ms = 300;
        c.storage = Storage::Memory;
        c.defaults.fsync = "never".into();
    })
    .await;
    let kept = seed(&s).await;
    let mut lazy = s.connect_small_buffer().await;
    let r = lazy.ok(json!({"op":"subscribe","queue":"flood","id":"sub"})).await;
    assert!(r["sub"].is_string(), "{r}");
    // Far more than the socket buffers hold, published by someone else.
    let mut producer = s.connect().await;
    let chunk = b64(&vec![b'p'; 256 << 10]);
    let batches = 8;
    for _ in 0..batches {
        let msgs: Vec<Value> = (0..8).map(|_| json!({"payload":chunk})).collect();
        producer.ok(json!({"op":"publish","queue":"flood","messages":msgs})).await;
    }
    // The server gives up on it, and says so by forgetting the client.
    eventually(Duration::from_secs(4), || {
        let addr = s.addr;
        async move {
            let st = Client::connect(addr).await.ok(json!({"op":"stats","queue":"flood"})).await;
            st["clients"].as_array().expect("clients").is_empty().then_some(())
        }
    })
    .await;
    // Everyone else is served meanwhile.
    producer.ok(json!({"op":"ping"})).await;
    let mut other = s.connect().await;
    // (A small reply: under write_timeout_ms = 300 a test client starved of
    // CPU while reading a large one would be cut off too.)
    let got = other.consume("flood", json!({"group":"other","max":2})).await;
    assert!(!got.is_empty());
    // What it got is well-formed frames, then the close.
    // (The cut may fall in the middle of a frame.)
    let (frames, _) = read_until_closed(&mut lazy.r).await;
    assert!(frames.len() < batches * 8, "it was cut off before getting everything ({})", frames.len());
    assert!(frames.iter().all(|f| f["sub"] == r["sub"]), "only pushes");
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_cut_off() {
    let s = TestServer::start_with(|c| c.limits.write_timeout_ms = 300).await;
    let kept = seed(&s).await;
    let Client { r, mut w } = s.connect_small_buffer().await;
    // Pipelines pings and never reads a reply; the server must stop reading
    // (backpressure), then give up on it rather than buffer without bound.
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = b"{\"op\":\"ping\"}\n".repeat(1000);
        let mut sent = 0usize;
        while sent < (64 << 20) {
            if w.write_all(&chunk).await.is_err() {
                return Err(sent);
            }
            sent += chunk.len();
        }
        Ok(sent)
    });
    let outcome =
        tokio::time::timeout(Duration::from_secs(4), writer).await.expect("cut off within 4 s").expect("join");
    let sent = outcome.expect_err("the server closed the connection before 64 MiB of requests were taken");
    println!("cut off after {:?} and {sent} bytes of requests", t0.elapsed());
    // Whatever was written before the cut is replies in order.
    let mut r = r;
    let (frames, _) = read_until_closed(&mut r).await;
    assert!(frames.iter().all(|f| f["ok"] == json!(true) && f["version"] == json!(1)), "only pongs");
    // Others were served all along.
    let mut other = s.connect().await;
    other.ok(json!({"op":"ping"})).await;
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

// ------------------------------------------------------------- floods

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_refused() {
    let s = TestServer::start_with(|c| c.limits.max_connections = 4).await;
    let kept = seed(&s).await;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut c = connect_when_room(&s).await;
        c.ok(json!({"op":"ping","id":i})).await;
        held.push(c);
    }
    for _ in 0..3 {
        let mut extra = s.connect().await;
        let frames = closed_within(&mut extra).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["ok"], json!(false));
        assert_eq!(frames[0]["error"]["code"], json!("too_many_connections"), "{frames:?}");
    }
    // The ones inside still work.
    for c in &mut held {
        c.ok(json!({"op":"ping"})).await;
    }
    // Room again once some leave.
    held.truncate(2);
    let mut fresh = connect_when_room(&s).await;
    fresh.ok(json!({"op":"ping"})).await;
    drop(fresh);
    drop(held);
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_batch_stores_nothing() {
    // Two connections at most: once a new one is accepted, the server is
    // done with the one that vanished.
    let s = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let kept = seed(&s).await;
    let mut watcher = connect_when_room(&s).await;
    watcher.ok(json!({"op":"ping"})).await;
    for cut in [10usize, 1000, 200_000] {
        let mut line = serde_json::to_vec(&json!({"op":"publish","queue":KEEP,"messages":
            (0..2000).map(|i| json!({"payload":b64(format!("ghost-{i}").as_bytes())})).collect::<Vec<_>>()}))
        .unwrap();
        line.truncate(cut.min(line.len() - 2));
        let mut v = connect_when_room(&s).await;
        v.send_raw(&line).await;
        drop(v);
        let mut next = connect_when_room(&s).await;
        let st = next.ok(json!({"op":"stats","queue":KEEP})).await;
        assert_eq!(st["next_offset"], json!(kept.len()), "nothing of the half batch (cut at {cut}): {st}");
    }
    drop(watcher);
    assert_intact(&s, &kept).await;
    s.stop().await.unwrap();
}
