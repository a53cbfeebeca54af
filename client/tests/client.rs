//! The client against a real server in-process (127.0.0.1:0): every typed
//! operation, pipelining from many tasks on one connection, subscriptions
//! with credit, and errors carrying the server's code.

use std::time::Duration;

use gmq_client::{Client, ConsumeOptions, Error, ErrorCode, Message};
use serde_json::json;

struct Server {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = gmq_server::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().into(),
        ..gmq_server::Config::default()
    };
    let running = gmq_server::start(config).await.expect("server starts");
    let addr = running.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        running
            .serve(async move {
                let _ = rx.await;
            })
            .await
            .map_err(|e| e.to_string())
    });
    Server { addr, stop: Some(tx), task, _dir: dir }
}

impl Server {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await.expect("stops in time");
        r.expect("join").expect("serve");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_round_trips() {
    let s = server().await;
    let c = Client::connect(&s.addr).await.unwrap();
    assert_eq!(c.ping().await.unwrap(), 1);
    assert!(c.create("jobs", json!({"ack_timeout_ms": 5000, "max_deliveries": 3})).await.unwrap());
    assert!(!c.create("jobs", json!({"ack_timeout_ms": 5000})).await.unwrap());
    let p = c.publish("jobs", Message::new("a").event("created").header("k", "v").msg_id("m1")).await.unwrap();
    assert_eq!((p.offset, p.duplicate), (0, false));
    let again = c.publish("jobs", Message::new("a").msg_id("m1")).await.unwrap();
    assert_eq!((again.offset, again.duplicate), (0, true));
    assert_eq!(c.publish_batch("jobs", &[Message::new("b"), Message::new("c")]).await.unwrap(), [1, 2]);
    let got = c.consume("jobs", &ConsumeOptions::manual(10)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!((got[0].event.as_deref(), got[0].headers.get("k").map(String::as_str)), (Some("created"), Some("v")));
    assert_eq!((&got[0].payload[..], got[0].deliveries, got[0].msg_id.as_deref()), (&b"a"[..], 1, Some("m1")));
    assert_eq!(c.nack("jobs", "default", &[1], 0).await.unwrap(), 1);
    assert_eq!(c.ack("jobs", "default", &[0, 2]).await.unwrap(), 2);
    let redelivered = c.consume("jobs", &ConsumeOptions::auto(10)).await.unwrap();
    assert_eq!((redelivered[0].offset, redelivered[0].deliveries), (1, 2));
    c.bind("jobs", "orders.#").await.unwrap();
    let routed = c.publish_topic("orders.eu", Message::new("t")).await.unwrap();
    assert_eq!((routed[0].queue.as_str(), routed[0].offset), ("jobs", 3));
    c.unbind("jobs", "orders.#").await.unwrap();
    let q = c.queues().await.unwrap();
    assert_eq!((q[0].name.as_str(), q[0].depth, q[0].groups.clone()), ("jobs", 1, vec!["default".to_owned()]));
    assert_eq!(c.stats("jobs").await.unwrap()["next_offset"], json!(4));
    assert_eq!(c.purge("jobs").await.unwrap(), 1);
    c.delete("jobs").await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_server_code() {
    let s = server().await;
    let c = Client::connect(&s.addr).await.unwrap();
    fn code<T>(r: Result<T, Error>) -> Option<ErrorCode> {
        r.err().and_then(|e| e.code())
    }
    assert_eq!(code(c.delete("missing").await), Some(ErrorCode::NotFound));
    assert_eq!(code(c.consume("../x", &ConsumeOptions::auto(1)).await), Some(ErrorCode::InvalidName));
    assert_eq!(code(c.request(json!({"op":"fly"})).await), Some(ErrorCode::UnknownOp));
    c.create("small", json!({"max_length": 1})).await.unwrap();
    c.publish("small", Message::new("x")).await.unwrap();
    assert_eq!(code(c.publish("small", Message::new("y")).await), Some(ErrorCode::QueueFull));
    assert_eq!(code(c.create("small", json!({"max_length": 2})).await), Some(ErrorCode::Conflict));
    // The connection is still good after errors.
    assert_eq!(c.ping().await.unwrap(), 1);
    s.stop().await;
}

/// 400 publishes from 8 tasks share one connection; all are stored, each
/// offset once, and each task's messages keep the order it sent them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_pipeline_on_one_connection() {
    let s = server().await;
    let c = Client::connect(&s.addr).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..50 {
                offsets.push(c.publish("p", Message::new(format!("{t}-{i}"))).await.unwrap().offset);
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let o = t.await.unwrap();
        assert!(o.windows(2).all(|w| w[0] < w[1]), "a task's publishes are stored in order");
        all.extend(o);
    }
    all.sort_unstable();
    assert_eq!(all, (0..400).collect::<Vec<u64>>());
    let got = c.consume("p", &ConsumeOptions::auto(1000)).await.unwrap();
    assert_eq!(got.len(), 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_push_within_their_credit() {
    let s = server().await;
    let c = Client::connect(&s.addr).await.unwrap();
    let mut sub = c.subscribe("events", &ConsumeOptions::manual(2).group("g")).await.unwrap();
    for i in 0..5 {
        c.publish("events", Message::new(format!("e{i}"))).await.unwrap();
    }
    let a = sub.next().await.unwrap().unwrap();
    let b = sub.next().await.unwrap().unwrap();
    assert_eq!((a.offset, b.offset), (0, 1));
    let none = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(none.is_err(), "no third push while two are unacked");
    sub.ack(&[a.offset]).await.unwrap();
    assert_eq!(sub.next().await.unwrap().unwrap().offset, 2);
    sub.unsubscribe().await.unwrap();
    // Unacked deliveries went back to the group.
    let rest = c.consume("events", &ConsumeOptions::auto(10).group("g")).await.unwrap();
    assert_eq!(rest.iter().map(|d| d.offset).collect::<Vec<_>>(), [1, 2, 3, 4]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_fails_requests_instead_of_hanging() {
    let s = server().await;
    let c = Client::connect(&s.addr).await.unwrap();
    c.create("nothing", json!({})).await.unwrap();
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.consume("nothing", &ConsumeOptions::auto(1).wait_ms(60_000)).await })
    };
    // Wait (with a deadline) until the server shows the consume attached.
    let watcher = Client::connect(&s.addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while watcher.stats("nothing").await.unwrap()["clients"].as_array().is_none_or(Vec::is_empty) {
        assert!(tokio::time::Instant::now() < deadline, "the consume never reached the server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.stop().await;
    // A waiting consume is answered at shutdown ([]), and later requests fail.
    let r = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("answered").unwrap();
    assert!(r.is_ok_and(|v| v.is_empty()));
    let err = tokio::time::timeout(Duration::from_secs(20), c.ping()).await.expect("fails in time").unwrap_err();
    assert!(matches!(err, Error::Closed | Error::Io(_)), "{err}");
    let refused = Client::connect("127.0.0.1:1").await.unwrap_err();
    assert!(matches!(refused, Error::Io(_)), "{refused}");
}
