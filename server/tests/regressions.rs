//! Races and stalls found in review, each pinned by a test: auto-acked
//! subscription frames are never dropped, a long poll does not stall the
//! requests pipelined after it, a client that vanishes frees its
//! connection, and a malformed GMQ request still gets GMQ's reply.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// An auto-ack subscription whose client reads slowly, then unsubscribes:
/// every message is either pushed (before the unsubscribe reply) or still
/// in the queue. None is acked and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_a_slow_auto_ack_subscriber_loses_nothing() {
    let s = TestServer::start().await;
    let mut p = s.connect().await;
    let body = b64(&vec![b'x'; 128 << 10]);
    let n = 60;
    for _ in 0..n {
        p.ok(json!({"op":"publish","queue":"big","payload":body})).await;
    }
    let mut c = s.connect_small_buffer().await;
    c.send(json!({"op":"subscribe","queue":"big","prefetch":64,"id":"sub"})).await;
    let first = c.recv().await;
    assert_eq!(first["id"], json!("sub"), "{first}");
    let sub = first["sub"].clone();
    // The writer is now blocked on the client's full buffer.
    c.send(json!({"op":"unsubscribe","sub":sub,"id":"unsub"})).await;
    let mut pushed = 0;
    loop {
        let f = c.recv().await;
        if f["id"] == json!("unsub") {
            assert_eq!(f["ok"], json!(true), "{f}");
            break;
        }
        assert_eq!(f["sub"], sub, "{}", f["ok"]);
        pushed += 1;
    }
    assert!(c.recv_within(Duration::from_millis(200)).await.is_none(), "nothing after the unsubscribe reply");
    let left = p.consume("big", json!({"max": 1000})).await.len();
    assert_eq!(pushed + left, n, "{pushed} pushed + {left} left of {n}");
    s.stop().await.unwrap();
}

/// A long poll ahead in the pipeline does not stop the requests after it:
/// here the publish to `a` sent after it is what it receives, though a
/// consume of `b` (which waits for the connection's own publish to `b`)
/// sits between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_does_not_stall_the_pipeline_behind_it() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let t0 = tokio::time::Instant::now();
    c.send(json!({"op":"consume","queue":"a","wait_ms":10000,"id":1})).await;
    c.send(json!({"op":"publish","queue":"b","payload":b64(b"b"),"id":2})).await;
    c.send(json!({"op":"consume","queue":"b","id":3})).await;
    c.send(json!({"op":"publish","queue":"a","payload":b64(b"a"),"id":4})).await;
    let r1 = c.recv().await;
    assert_eq!(r1["id"], json!(1));
    assert_eq!(r1["messages"].as_array().map(Vec::len), Some(1), "{r1}");
    assert_eq!(text(&r1["messages"][0]), "a");
    assert!(t0.elapsed() < Duration::from_secs(5), "the long poll was not held for its full wait");
    for id in 2..=4 {
        assert_eq!(c.recv().await["id"], json!(id));
    }
    s.stop().await.unwrap();
}

/// A client that stops reading, pipelines a publish and a consume, then
/// vanishes: its session ends and frees its connection slot. A liveness
/// check: this timing did not reproduce the stall review found (a read
/// waiting on a publish reply the writer never polls), which is now
/// impossible by construction (reads await the engine's appends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_frees_its_connection() {
    let s = TestServer::start_with(|c| {
        c.limits.max_connections = 1;
        c.limits.write_timeout_ms = 300;
    })
    .await;
    {
        let mut c = s.connect_small_buffer().await;
        let body = b64(&vec![b'y'; 64 << 10]);
        // Replies pile up unread (each consume returns the big message).
        c.send(json!({"op":"publish","queue":"q","payload":body})).await;
        for _ in 0..200 {
            c.send(json!({"op":"consume","queue":"q","group":"g","from":"oldest","ack":"manual"})).await;
            c.send(json!({"op":"nack","queue":"q","group":"g","offsets":[0]})).await;
        }
        c.send(json!({"op":"publish","queue":"q","payload":b64(b"z")})).await;
        c.send(json!({"op":"consume","queue":"q"})).await;
    }
    let ok = eventually(Duration::from_secs(15), || async {
        let mut c = s.connect().await;
        c.send(json!({"op":"ping"})).await;
        let f = c.recv_within(Duration::from_millis(500)).await?;
        (f["ok"] == json!(true)).then_some(())
    })
    .await;
    let () = ok;
    s.stop().await.unwrap();
}

/// A GMQ request with a field of the wrong type gets GMQ's reply shape
/// (`confirmation: "N"`) and the connection is closed, as GMQ's client
/// reads until close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_gmq_request_gets_a_gmq_reply_and_a_close() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.send_raw(br#"{"operation":"P","queue":"q","payload":5}"#).await;
    let frames = c.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    let f = &frames[0];
    assert_eq!((f["operation"].as_str(), f["confirmation"].as_str()), (Some("P"), Some("N")), "{f}");
    assert!(f["error"].as_str().is_some_and(|e| e.starts_with("bad_request")), "{f}");
    s.stop().await.unwrap();
}
