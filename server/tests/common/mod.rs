//! Test harness: a real `gmq-server` in-process on `127.0.0.1:0` over a
//! temporary data directory, and a line-level client over real TCP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use gmq_server::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for any one reply before failing.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(20);

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

/// The configuration tests start from: a fresh data directory, port 0.
pub fn test_config(dir: &Path) -> Config {
    Config { listen: "127.0.0.1:0".into(), data_dir: dir.to_path_buf(), ..Config::default() }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts with the test configuration changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = test_config(dir.path());
        f(&mut c);
        let mut s = TestServer::start_config(c).await;
        s._dir = Some(dir);
        s
    }

    /// Starts with exactly `c` (the caller owns its data directory).
    pub async fn start_config(c: Config) -> TestServer {
        let data_dir = c.data_dir.clone();
        let running = gmq_server::start(c).await.expect("server starts");
        let addr = running.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(running.serve(async move {
            let _ = rx.await;
        }));
        TestServer { addr, data_dir, stop: Some(tx), task: Some(task), _dir: None }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Connects with a tiny receive buffer, so that a client that does not
    /// read fills up quickly.
    pub async fn connect_small_buffer(&self) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = sock.connect(self.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (r, w) = stream.into_split();
        Client { r: BufReader::new(r), w }
    }

    /// Graceful shutdown (as SIGTERM); returns the serve result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_in_place().await
    }

    async fn stop_in_place(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => tokio::time::timeout(Duration::from_secs(30), t).await.expect("shutdown in time").expect("join"),
            None => Ok(()),
        }
    }

    /// Stops and keeps the data directory for a restart.
    pub async fn stop_keep_dir(mut self) -> (anyhow::Result<()>, Option<tempfile::TempDir>) {
        let r = self.stop_in_place().await;
        (r, self._dir.take())
    }
}

/// A client speaking newline-delimited JSON.
pub struct Client {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let (r, w) = s.into_split();
        Client { r: BufReader::new(r), w }
    }

    /// Sends one request line.
    pub async fn send(&mut self, v: Value) {
        let mut line = serde_json::to_vec(&v).expect("json");
        line.push(b'\n');
        self.w.write_all(&line).await.expect("send");
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, b: &[u8]) {
        self.w.write_all(b).await.expect("send raw");
    }

    /// The next frame, or `None` on EOF. Fails the test after the deadline.
    pub async fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(REPLY_DEADLINE, self.r.read_line(&mut line))
            .await
            .expect("a frame within the deadline")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("server sent invalid JSON {line:?}: {e}")))
    }

    /// The next frame.
    pub async fn recv(&mut self) -> Value {
        self.try_recv().await.expect("a frame, not EOF")
    }

    /// The next frame within `d`, or `None` if none came (for asserting
    /// that nothing is pushed).
    pub async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        let mut line = String::new();
        match tokio::time::timeout(d, self.r.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => Some(serde_json::from_str(&line).expect("json")),
            _ => None,
        }
    }

    /// Sends a request and returns its reply (push frames in between are
    /// skipped; use `send`/`recv` to see them).
    pub async fn call(&mut self, v: Value) -> Value {
        self.send(v).await;
        loop {
            let f = self.recv().await;
            if f.get("sub").is_none() || f.get("ok").is_some() {
                return f;
            }
        }
    }

    /// Sends a request and asserts it succeeded.
    pub async fn ok(&mut self, v: Value) -> Value {
        let r = self.call(v.clone()).await;
        assert_eq!(r["ok"], json!(true), "request {v} failed: {r}");
        r
    }

    /// Sends a request and returns its error code.
    pub async fn err(&mut self, v: Value) -> String {
        let r = self.call(v.clone()).await;
        assert_eq!(r["ok"], json!(false), "request {v} should fail: {r}");
        r["error"]["code"].as_str().expect("error code").to_owned()
    }

    /// Waits for the server to close the connection (EOF), failing after
    /// the deadline. Returns frames received before the close.
    pub async fn until_closed(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        tokio::time::timeout(REPLY_DEADLINE, self.r.read_to_end(&mut buf))
            .await
            .expect("server closes within the deadline")
            .ok();
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            frames.push(serde_json::from_slice(line).expect("json"));
        }
        frames
    }

    /// Publishes one message with a text payload; returns its offset.
    pub async fn publish(&mut self, queue: &str, text: &str) -> u64 {
        let r = self.ok(json!({"op":"publish","queue":queue,"payload":b64(text.as_bytes())})).await;
        r["offset"].as_u64().expect("offset")
    }

    /// Consumes with extra fields; returns the messages.
    pub async fn consume(&mut self, queue: &str, extra: Value) -> Vec<Value> {
        let mut req = json!({"op":"consume","queue":queue});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                req[k] = v;
            }
        }
        let r = self.ok(req).await;
        r["messages"].as_array().expect("messages").clone()
    }
}

pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A delivered message's payload as text.
pub fn text(m: &Value) -> String {
    let raw = base64::engine::general_purpose::STANDARD.decode(m["payload"].as_str().expect("payload")).expect("b64");
    String::from_utf8(raw).expect("utf8")
}

/// Polls `f` until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < until, "condition not met within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A deterministic generator (xorshift64*): seeded from `GMQ_TEST_SEED` or
/// the test's default, and the seed printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(name: &str, default: u64) -> Rng {
        let seed = std::env::var("GMQ_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        println!("{name}: seed {seed} (set GMQ_TEST_SEED to replay)");
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
