//! The harness itself, and the simplest round trip.
mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_round_trip() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    assert_eq!(c.ok(json!({"op":"ping","id":"a"})).await["id"], json!("a"));
    let o = c.publish("jobs", "hello").await;
    let got = c.consume("jobs", json!({})).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["offset"], json!(o));
    assert_eq!(text(&got[0]), "hello");
    s.stop().await.unwrap();
}
