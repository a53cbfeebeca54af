//! The load generator against a real server (in-process, on
//! `127.0.0.1:0`, over real TCP): every workload completes, counts what it
//! should, and reports the server's errors.

use std::net::SocketAddr;
use std::time::Duration;

use gmq_benches::load::{
    self, check_reply, request, ConsumeMode, ConsumeSpec, EndToEndSpec, Incoming, Pipeline, PublishSpec, ServerError,
    Stop,
};
use gmq_server::Config;

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn server(fsync: &str) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Config { listen: "127.0.0.1:0".into(), data_dir: dir.path().to_path_buf(), ..Config::default() };
    c.defaults.fsync = fsync.into();
    let running = gmq_server::start(c).await.expect("the server starts");
    let addr = running.local_addr().expect("local address");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(running.serve(async move {
        let _ = rx.await;
    }));
    Server { addr, stop: Some(tx), task, _dir: dir }
}

impl Server {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("join").expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_replies_match_their_requests() {
    let s = server("never").await;
    let mut c = Pipeline::<usize>::connect(s.addr).await.unwrap();
    for i in 0..100 {
        c.send(&request::publish("q", format!("m{i}").as_bytes(), 1), i);
    }
    c.send(&request::ping(), 100);
    c.send(b"{\"op\":\"publish\",\"queue\":\"../x\",\"payload\":\"\"}", 101);
    for i in 0..102 {
        let Incoming::Reply { tag, line } = c.recv().await.unwrap() else { panic!("a push frame") };
        assert_eq!(tag, i);
        match i {
            0..100 => {
                check_reply(&line).unwrap();
                assert_eq!(load::reply_u64(&line, "offset"), Some(i as u64), "{line:?}");
            }
            100 => check_reply(&line).unwrap(),
            _ => {
                let e = check_reply(&line).unwrap_err();
                assert_eq!(e.downcast_ref::<ServerError>().map(|e| e.code.as_str()), Some("invalid_name"));
            }
        }
    }
    assert_eq!(c.in_flight(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_consume_the_backlog_both_ways() {
    let s = server("never").await;
    load::create_queue(s.addr, "bench").await.unwrap();
    // A counted publish, in batches: exactly the messages asked for.
    let t = load::prefill(s.addr, "bench", 3000, 100, 64).await.unwrap();
    assert!(t > 0.0);
    // A timed publish on top.
    let spec = PublishSpec::timed(s.addr, "bench", 2, 8, 100, Duration::from_millis(50), Duration::from_millis(200));
    let r = load::publish(&spec).await.unwrap();
    assert!(r.messages > 0 && r.msgs_per_s > 0.0, "{r:?}");
    assert_eq!(r.latency.count, r.requests);
    // Each cell drains the first 3000 in a new group.
    for (i, mode) in [ConsumeMode::Pull { max: 64 }, ConsumeMode::Subscribe { prefetch: 100 }].into_iter().enumerate() {
        for consumers in [1, 3] {
            let spec = ConsumeSpec {
                addr: s.addr,
                queue: "bench".into(),
                group: format!("g{i}-{consumers}"),
                consumers,
                mode,
                messages: 3000,
                timeout: Duration::from_secs(60),
            };
            let r = load::consume(&spec).await.unwrap();
            assert!(r.acked >= 3000 && r.delivered >= r.acked, "{r:?}");
            assert_eq!(r.redelivered, 0, "{r:?}");
            assert!(r.ack_latency.count > 0 && r.msgs_per_s > 0.0, "{r:?}");
            assert!((r.mb_per_s / r.msgs_per_s * 1e6 - 100.0).abs() < 1.0, "payload bytes counted: {r:?}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_delivers_every_message_once() {
    let s = server("always").await;
    let spec = EndToEndSpec {
        addr: s.addr,
        queue: "e2e".into(),
        group: "g".into(),
        rate: 2000.0,
        payload: 64,
        warmup: Duration::from_millis(100),
        measure: Duration::from_millis(300),
        prefetch: 16,
        manual_ack: true,
        drain_timeout: Duration::from_secs(20),
    };
    let r = load::end_to_end(&spec).await.unwrap();
    assert_eq!(r.messages, 800, "{r:?}");
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.end_to_end.count, r.measured);
    assert_eq!(r.publish.count, r.measured);
    assert!(r.end_to_end.p50_us > 0.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_stop_a_workload() {
    let s = server("never").await;
    let spec = PublishSpec {
        addr: s.addr,
        queue: "bad/name".into(),
        connections: 1,
        in_flight: 4,
        payload: 10,
        batch: 1,
        stop: Stop::Messages(10),
        reply_timeout: Duration::from_secs(10),
    };
    let e = load::publish(&spec).await.unwrap_err();
    assert!(format!("{e:#}").contains("invalid_name"), "{e:#}");
    s.stop().await;
}
