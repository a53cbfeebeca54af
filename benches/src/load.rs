//! The end-to-end load generator: clients of a running `gmq-server` over
//! TCP, speaking the wire protocol of PROTOCOL.md.
//!
//! - [`Pipeline`]: one connection that writes many requests and reads their
//!   replies in order, matching each reply to its request by position (the
//!   protocol answers in request order); subscription push frames come out
//!   separately.
//! - [`publish`]: C connections × D publishes in flight each, payload P,
//!   optionally B messages per publish, for a time or a message count;
//!   throughput and publish → reply latency. [`prefill`] fills a backlog the
//!   same way.
//! - [`consume`]: K competing consumers of one group drain a backlog with
//!   manual acks, by `consume` + `ack` or by `subscribe` with a prefetch.
//! - [`end_to_end`]: a producer publishing at a fixed rate and a subscriber;
//!   latency from each message's *scheduled* send time (so a stalled server
//!   cannot hide its stall by delaying the sends: no coordinated omission)
//!   to its delivery.
//!
//! Every workload is an `async fn` from a spec to a result, with no state
//! outside its arguments; the caller picks the runtime. A current-thread
//! runtime keeps the generator's own CPU use lowest, which matters when it
//! shares the machine's cores with the server it measures.
//!
//! The request lines are built once per workload and written as they are;
//! replies are checked by a prefix test on the fast path
//! (`{"ok":true...`), and consume replies and push frames are scanned for
//! the fields the workloads need (offset, payload size, deliveries) rather
//! than parsed whole, so that the client spends its CPU on I/O.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::latency::{Latency, LatencySummary};

// ---------------------------------------------------------------- connection

/// One connection with requests pipelined: [`send`](Pipeline::send) queues
/// a request line with a tag of the caller's choice, [`flush`](Pipeline::flush)
/// writes what is queued, [`recv`](Pipeline::recv) returns the next reply
/// with the tag of the request it answers (replies come back in request
/// order), or a push frame.
#[derive(Debug)]
pub struct Pipeline<T> {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Bytes of `rbuf` already searched for a newline.
    scanned: usize,
    wbuf: Vec<u8>,
    /// Tags of the requests sent and not yet answered, oldest first.
    sent: VecDeque<T>,
}

/// What [`Pipeline::recv`] returns.
#[derive(Debug)]
pub enum Incoming<T> {
    /// The reply to the oldest request in flight, with that request's tag.
    Reply {
        /// The tag given to [`Pipeline::send`].
        tag: T,
        /// The reply line, without its newline.
        line: Bytes,
    },
    /// A subscription's push frame (`{"sub":..,"message":..}`, or its error
    /// frame), without its newline.
    Push(Bytes),
}

/// Whether a server line is a subscription frame rather than a reply:
/// replies begin with `{"ok":` or `{"id":`; push frames with `{"sub":`, and
/// a subscription's error frame has `error` and `sub` but no `ok`.
fn is_push(line: &[u8]) -> bool {
    line.starts_with(b"{\"sub\":") || line.starts_with(b"{\"error\":")
}

impl<T> Pipeline<T> {
    /// Connects (with `TCP_NODELAY`, as the server sets on its side).
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        Ok(Pipeline {
            stream,
            rbuf: BytesMut::with_capacity(64 << 10),
            scanned: 0,
            wbuf: Vec::with_capacity(64 << 10),
            sent: VecDeque::new(),
        })
    }

    /// Queues one request line (a newline is added if it has none). Nothing
    /// is written before [`flush`](Self::flush) or [`recv`](Self::recv).
    pub fn send(&mut self, request: &[u8], tag: T) {
        self.wbuf.extend_from_slice(request);
        if request.last() != Some(&b'\n') {
            self.wbuf.push(b'\n');
        }
        self.sent.push_back(tag);
    }

    /// Requests sent (or queued) and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.sent.len()
    }

    /// Writes every queued request.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await.context("writing requests")?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// The next line already received, if there is one; no I/O.
    pub fn try_recv(&mut self) -> Result<Option<Incoming<T>>> {
        let Some(line) = self.take_line() else { return Ok(None) };
        if is_push(&line) {
            return Ok(Some(Incoming::Push(line)));
        }
        match self.sent.pop_front() {
            Some(tag) => Ok(Some(Incoming::Reply { tag, line })),
            None => bail!("the server sent a reply to no request: {}", preview(&line)),
        }
    }

    /// The next line: flushes what is queued, then reads until a whole line
    /// is in. Cancel-safe when nothing is queued (call
    /// [`flush`](Self::flush) first before using it in `select!`).
    pub async fn recv(&mut self) -> Result<Incoming<T>> {
        loop {
            if let Some(x) = self.try_recv()? {
                return Ok(x);
            }
            self.flush().await?;
            self.fill().await?;
        }
    }

    /// The next line already received, whatever it is, without matching it
    /// to a request; no I/O. For a connection whose requests are written by
    /// other means.
    pub fn try_recv_line(&mut self) -> Option<Bytes> {
        self.take_line()
    }

    /// The next line, whatever it is, without matching it to a request
    /// (see [`try_recv_line`](Self::try_recv_line)). Cancel-safe when
    /// nothing is queued.
    pub async fn recv_line(&mut self) -> Result<Bytes> {
        loop {
            if let Some(l) = self.take_line() {
                return Ok(l);
            }
            self.flush().await?;
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 16 << 10 {
            self.rbuf.reserve(64 << 10);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await.context("reading from the server")?;
        if n == 0 {
            bail!("the server closed the connection with {} requests unanswered", self.sent.len());
        }
        Ok(())
    }

    /// Sends one request and returns its reply, failing on an error reply.
    /// For set-up requests on a connection with nothing else in flight.
    pub async fn call(&mut self, request: &[u8], tag: T) -> Result<Bytes> {
        if !self.sent.is_empty() {
            bail!("Pipeline::call with {} requests already in flight", self.sent.len());
        }
        self.send(request, tag);
        loop {
            match self.recv().await? {
                Incoming::Reply { line, .. } => {
                    check_reply(&line)?;
                    return Ok(line);
                }
                Incoming::Push(_) => {}
            }
        }
    }

    fn take_line(&mut self) -> Option<Bytes> {
        match memchr::memchr(b'\n', &self.rbuf[self.scanned..]) {
            Some(i) => {
                let end = self.scanned + i;
                let mut line = self.rbuf.split_to(end + 1);
                line.truncate(end);
                self.scanned = 0;
                Some(line.freeze())
            }
            None => {
                self.scanned = self.rbuf.len();
                None
            }
        }
    }
}

// ---------------------------------------------------------------- replies

/// An error reply: `{"ok":false,"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The stable error code (`queue_full`, `storage`, ...).
    pub code: String,
    /// The server's message.
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server answered {}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

fn preview(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
    if line.len() > 200 {
        s + "…"
    } else {
        s
    }
}

/// `Ok` for a success reply; a [`ServerError`] (inside the `anyhow` error)
/// for an error reply; an error for anything else.
pub fn check_reply(line: &[u8]) -> Result<()> {
    if line.starts_with(b"{\"ok\":true") {
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_slice(line).with_context(|| format!("a reply that is not JSON: {}", preview(line)))?;
    match v.get("ok") {
        Some(serde_json::Value::Bool(true)) => Ok(()),
        Some(serde_json::Value::Bool(false)) => {
            let field = |k: &str| v.pointer(&format!("/error/{k}")).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            Err(ServerError { code: field("code"), message: field("message") }.into())
        }
        _ => bail!("a reply without \"ok\": {}", preview(line)),
    }
}

/// The unsigned integer after the first `"key":` in `line` (a top-level
/// field of a reply such as `acked` or `offset`).
pub fn reply_u64(line: &[u8], key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let at = memchr::memmem::find(line, pat.as_bytes())? + pat.len();
    digits(line, at).map(|(n, _)| n)
}

fn digits(line: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut i = at;
    while let Some(&c) = line.get(i).filter(|c| c.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        i += 1;
    }
    (i > at).then_some((n, i))
}

/// A delivered message, as far as the load generator looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its offset in the queue.
    pub offset: u64,
    /// Raw payload bytes (from the length of its base64).
    pub payload_bytes: usize,
    /// Deliveries to this group, this one included.
    pub deliveries: u32,
}

/// Calls `f` for every message object in a `consume` reply or a push frame
/// and returns how many there were.
///
/// It scans instead of parsing: a message object is the byte sequence
/// `{"offset":` (inside a JSON string every `"` is escaped, so that sequence
/// only occurs where an object starts), then `"payload":"..."`, then, as its
/// last field, `"deliveries":N`. A header named `offset` or `deliveries`
/// could mislead it; the workloads here publish no headers.
pub fn scan_messages(line: &[u8], mut f: impl FnMut(Seen)) -> Result<usize> {
    const START: &[u8] = b"{\"offset\":";
    const PAYLOAD: &[u8] = b",\"payload\":\"";
    const DELIVERIES: &[u8] = b",\"deliveries\":";
    let bad = || anyhow!("unexpected message in {}", preview(line));
    let mut count = 0;
    let mut pos = 0;
    let starts = memchr::memmem::Finder::new(START);
    while let Some(i) = starts.find(&line[pos..]) {
        let at = pos + i + START.len();
        let Some((offset, mut p)) = digits(line, at) else {
            pos = at;
            continue;
        };
        if !line[p..].starts_with(PAYLOAD) {
            return Err(bad());
        }
        p += PAYLOAD.len();
        let len = memchr::memchr(b'"', &line[p..]).ok_or_else(bad)?;
        let pad = line[p..p + len].iter().rev().take(2).filter(|&&c| c == b'=').count();
        let payload_bytes = (len / 4 * 3).saturating_sub(pad);
        p += len + 1;
        let d = memchr::memmem::find(&line[p..], DELIVERIES).ok_or_else(bad)? + p + DELIVERIES.len();
        let (deliveries, end) = digits(line, d).ok_or_else(bad)?;
        f(Seen { offset, payload_bytes, deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX) });
        count += 1;
        pos = end;
    }
    Ok(count)
}

// ---------------------------------------------------------------- requests

/// Request lines, newline included.
pub mod request {
    use gmq_protocol::reply::encode_payload;
    use serde_json::json;

    fn line(v: &serde_json::Value) -> Vec<u8> {
        let mut out = v.to_string().into_bytes();
        out.push(b'\n');
        out
    }

    /// `create` with the server's default settings.
    pub fn create(queue: &str) -> Vec<u8> {
        line(&json!({ "op": "create", "queue": queue }))
    }

    /// `ping`.
    pub fn ping() -> Vec<u8> {
        line(&json!({ "op": "ping" }))
    }

    /// `publish` of one message, or of a batch of `batch` equal messages
    /// (`messages`) when `batch > 1`.
    pub fn publish(queue: &str, payload: &[u8], batch: usize) -> Vec<u8> {
        let b64 = encode_payload(payload);
        if batch <= 1 {
            line(&json!({ "op": "publish", "queue": queue, "payload": b64 }))
        } else {
            let m = json!({ "payload": b64 });
            line(&json!({ "op": "publish", "queue": queue, "messages": vec![m; batch] }))
        }
    }

    /// `consume` with manual ack.
    pub fn consume(queue: &str, group: &str, max: usize, wait_ms: u64) -> Vec<u8> {
        line(
            &json!({ "op": "consume", "queue": queue, "group": group, "max": max, "wait_ms": wait_ms, "ack": "manual" }),
        )
    }

    /// `subscribe`, manual or automatic ack.
    pub fn subscribe(queue: &str, group: &str, prefetch: usize, manual: bool) -> Vec<u8> {
        let ack = if manual { "manual" } else { "auto" };
        line(&json!({ "op": "subscribe", "queue": queue, "group": group, "prefetch": prefetch, "ack": ack }))
    }

    /// Builds `ack` lines for one queue and group without re-encoding their
    /// names each time.
    #[derive(Debug, Clone)]
    pub struct Acks {
        prefix: Vec<u8>,
        buf: Vec<u8>,
    }

    impl Acks {
        /// Acks of `group` on `queue`.
        pub fn new(queue: &str, group: &str) -> Acks {
            let mut prefix = json!({ "op": "ack", "queue": queue, "group": group }).to_string().into_bytes();
            prefix.pop(); // the closing brace
            prefix.extend_from_slice(b",\"offsets\":[");
            Acks { prefix, buf: Vec::new() }
        }

        /// The line acking `offsets`.
        pub fn line(&mut self, offsets: &[u64]) -> &[u8] {
            use std::io::Write as _;
            self.buf.clear();
            self.buf.extend_from_slice(&self.prefix);
            for (i, o) in offsets.iter().enumerate() {
                if i > 0 {
                    self.buf.push(b',');
                }
                let _ = write!(self.buf, "{o}");
            }
            self.buf.extend_from_slice(b"]}\n");
            &self.buf
        }
    }
}

/// Bytes of a payload that is not all zeros (nor all one byte), so that no
/// layer can get away with compressing or skipping it.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(31).wrapping_add(7) % 251) as u8 + 1).collect()
}

/// Creates `queue` with the server's default settings (so that its fsync
/// policy is the server's `--fsync`); an existing queue is fine.
pub async fn create_queue(addr: SocketAddr, queue: &str) -> Result<()> {
    let mut c = Pipeline::connect(addr).await?;
    c.call(&request::create(queue), ()).await.with_context(|| format!("creating queue {queue:?}"))?;
    Ok(())
}

// ---------------------------------------------------------------- publish

/// When a [`publish`] workload stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Publish for `warmup + measure`; only replies that arrive inside the
    /// measured window count, for throughput and latency.
    Time {
        /// Run before measuring.
        warmup: Duration,
        /// Measured.
        measure: Duration,
    },
    /// Publish this many messages in all (rounded up to whole requests,
    /// spread over the connections); measured from the first send to the
    /// last reply.
    Messages(u64),
}

/// A publish workload.
#[derive(Debug, Clone)]
pub struct PublishSpec {
    /// The server.
    pub addr: SocketAddr,
    /// The queue (created beforehand by the caller, or by the first publish).
    pub queue: String,
    /// Connections, each on its own task.
    pub connections: usize,
    /// Publish requests in flight per connection.
    pub in_flight: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// Messages per publish request (1: a plain publish; more: `messages`).
    pub batch: usize,
    /// How long.
    pub stop: Stop,
    /// Give up when no reply arrives for this long.
    pub reply_timeout: Duration,
}

impl PublishSpec {
    /// `connections` × `in_flight` single-message publishes of `payload`
    /// bytes for `warmup + measure`.
    pub fn timed(
        addr: SocketAddr,
        queue: &str,
        connections: usize,
        in_flight: usize,
        payload: usize,
        warmup: Duration,
        measure: Duration,
    ) -> PublishSpec {
        PublishSpec {
            addr,
            queue: queue.into(),
            connections,
            in_flight,
            payload,
            batch: 1,
            stop: Stop::Time { warmup, measure },
            reply_timeout: Duration::from_secs(30),
        }
    }
}

/// What a [`publish`] workload measured.
#[derive(Debug, Clone, Serialize)]
pub struct PublishResult {
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub in_flight: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// Messages per request.
    pub batch: usize,
    /// Requests answered `ok` in the measured time.
    pub requests: u64,
    /// Messages they carried.
    pub messages: u64,
    /// The measured time, seconds.
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Payload MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Publish request → its reply, per request.
    pub latency: LatencySummary,
}

/// The measured window of a timed workload.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    end: Instant,
}

impl Window {
    fn counts(&self, t: Instant) -> bool {
        t >= self.from && t < self.end
    }
}

/// One connection's share of a publish workload.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Timed(Window),
    Requests(u64),
}

/// Runs a publish workload: every connection keeps `in_flight` publish
/// requests outstanding, sending a new one for each reply.
pub async fn publish(spec: &PublishSpec) -> Result<PublishResult> {
    let n = spec.connections.max(1);
    let batch = spec.batch.max(1);
    let line = Arc::new(request::publish(&spec.queue, &pattern(spec.payload), batch));
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Pipeline::<Instant>::connect(spec.addr).await?);
    }
    let start = Instant::now();
    let plans: Vec<Plan> = match spec.stop {
        Stop::Time { warmup, measure } => {
            let from = start + warmup;
            vec![Plan::Timed(Window { from, end: from + measure }); n]
        }
        Stop::Messages(m) => {
            let reqs = m.div_ceil(batch as u64);
            (0..n as u64).map(|i| Plan::Requests(reqs / n as u64 + u64::from(i < reqs % n as u64))).collect()
        }
    };
    let handles: Vec<_> = conns
        .into_iter()
        .zip(plans)
        .map(|(c, plan)| {
            let line = line.clone();
            let (depth, timeout) = (spec.in_flight.max(1), spec.reply_timeout);
            tokio::spawn(async move { publish_conn(c, &line, depth, plan, timeout).await })
        })
        .collect();
    let mut requests = 0;
    let mut lat = Latency::new();
    let mut last = start;
    for h in handles {
        let (r, l, t) = h.await.context("a publisher task panicked")??;
        requests += r;
        lat.merge(&l);
        last = last.max(t);
    }
    let seconds = match spec.stop {
        Stop::Time { measure, .. } => measure.as_secs_f64(),
        Stop::Messages(_) => (last - start).as_secs_f64(),
    };
    let messages = requests * batch as u64;
    let rate = messages as f64 / seconds;
    Ok(PublishResult {
        connections: n,
        in_flight: spec.in_flight.max(1),
        payload: spec.payload,
        batch,
        requests,
        messages,
        seconds,
        msgs_per_s: rate,
        mb_per_s: rate * spec.payload as f64 / 1e6,
        latency: lat.summary(),
    })
}

/// Returns the requests counted, their latencies and the time of the last
/// reply.
async fn publish_conn(
    mut c: Pipeline<Instant>,
    line: &[u8],
    depth: usize,
    plan: Plan,
    timeout: Duration,
) -> Result<(u64, Latency, Instant)> {
    let mut lat = Latency::new();
    let mut counted = 0u64;
    let mut left = match plan {
        Plan::Timed(_) => u64::MAX,
        Plan::Requests(r) => r,
    };
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        let sending = match plan {
            Plan::Timed(w) => now < w.end,
            Plan::Requests(_) => left > 0,
        };
        if sending {
            while c.in_flight() < depth && left > 0 {
                c.send(line, now);
                left -= 1;
            }
        }
        if c.in_flight() == 0 {
            return Ok((counted, lat, last));
        }
        c.flush().await?;
        let first = tokio::time::timeout(timeout, c.recv())
            .await
            .map_err(|_| anyhow!("no publish reply for {} s", timeout.as_secs_f64()))??;
        // Everything that came in with the same read shares its arrival time.
        let t = Instant::now();
        let mut next = Some(first);
        while let Some(x) = next {
            match x {
                Incoming::Reply { tag: sent, line } => {
                    check_reply(&line).context("publish")?;
                    let counts = match plan {
                        Plan::Timed(w) => w.counts(t),
                        Plan::Requests(_) => true,
                    };
                    if counts {
                        counted += 1;
                        lat.record(t - sent);
                    }
                }
                Incoming::Push(f) => bail!("a push frame on a publishing connection: {}", preview(&f)),
            }
            next = c.try_recv()?;
        }
        last = t;
    }
}

/// Publishes `messages` messages of `payload` bytes to `queue`, `batch` per
/// request, 16 requests in flight on each of 2 connections: a backlog for
/// [`consume`]. Returns the seconds it took.
pub async fn prefill(addr: SocketAddr, queue: &str, messages: u64, payload: usize, batch: usize) -> Result<f64> {
    let spec = PublishSpec {
        addr,
        queue: queue.into(),
        connections: 2,
        in_flight: 16,
        payload,
        batch: batch.max(1),
        stop: Stop::Messages(messages),
        reply_timeout: Duration::from_secs(60),
    };
    let r = publish(&spec).await?;
    if r.messages < messages {
        bail!("pre-filled {} messages of {messages}", r.messages);
    }
    Ok(r.seconds)
}

// ---------------------------------------------------------------- consume

/// How consumers take messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumeMode {
    /// `consume` of up to `max` messages (manual ack); the `ack` of each
    /// batch is sent together with the next `consume`, so a consumer makes
    /// one round trip per batch.
    Pull {
        /// `max` per consume.
        max: usize,
    },
    /// `subscribe` with `prefetch` (manual ack); the offsets received are
    /// acked in one `ack` whenever the frames that arrived are handled.
    Subscribe {
        /// `prefetch`.
        prefetch: usize,
    },
}

impl ConsumeMode {
    /// `consume max 64`, `subscribe prefetch 256`.
    pub fn label(&self) -> String {
        match self {
            ConsumeMode::Pull { max } => format!("consume max {max}"),
            ConsumeMode::Subscribe { prefetch } => format!("subscribe prefetch {prefetch}"),
        }
    }
}

/// A consume workload over a backlog.
#[derive(Debug, Clone)]
pub struct ConsumeSpec {
    /// The server.
    pub addr: SocketAddr,
    /// The queue holding the backlog.
    pub queue: String,
    /// The group (a new group starts at the oldest message, so a fresh
    /// group name consumes the whole backlog again).
    pub group: String,
    /// Competing consumers, one connection each.
    pub consumers: usize,
    /// How they take messages.
    pub mode: ConsumeMode,
    /// Messages to ack before stopping: the backlog.
    pub messages: u64,
    /// Give up after this long.
    pub timeout: Duration,
}

/// What a [`consume`] workload measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeResult {
    /// Consumers.
    pub consumers: usize,
    /// How they consumed.
    pub mode: ConsumeMode,
    /// Messages acked (the server's `acked` counts).
    pub acked: u64,
    /// Messages delivered, and those delivered more than once.
    pub delivered: u64,
    /// Deliveries with `deliveries > 1`.
    pub redelivered: u64,
    /// `consume` calls, and those that returned no message (pull only).
    pub consume_calls: u64,
    /// Empty `consume` replies.
    pub empty_consumes: u64,
    /// From the start to the ack that completed the backlog, seconds.
    pub seconds: f64,
    /// Acked messages per second.
    pub msgs_per_s: f64,
    /// Payload MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// `consume` → its reply (pull only).
    pub consume_latency: LatencySummary,
    /// `ack` → its reply.
    pub ack_latency: LatencySummary,
}

/// Shared by the consumers of one workload.
#[derive(Debug)]
struct Progress {
    target: u64,
    acked: AtomicU64,
    finished: Mutex<Option<Instant>>,
    done: watch::Sender<bool>,
}

impl Progress {
    fn add(&self, n: u64) {
        let total = self.acked.fetch_add(n, Ordering::AcqRel) + n;
        if total >= self.target && !*self.done.borrow() {
            let mut f = self.finished.lock().unwrap_or_else(|e| e.into_inner());
            f.get_or_insert_with(Instant::now);
            self.done.send_replace(true);
        }
    }

    fn is_done(&self) -> bool {
        *self.done.borrow()
    }
}

#[derive(Debug, Default)]
struct ConsumerStats {
    delivered: u64,
    redelivered: u64,
    bytes: u64,
    calls: u64,
    empty: u64,
    consume: Latency,
    ack: Latency,
}

#[derive(Debug, Clone, Copy)]
enum Req {
    Consume(Instant),
    Ack(Instant, u64),
    Subscribe,
}

/// Runs a consume workload: the consumers connect, then all start at once
/// and stop when the server has acked `messages` messages of the group.
pub async fn consume(spec: &ConsumeSpec) -> Result<ConsumeResult> {
    let n = spec.consumers.max(1);
    let (done, _) = watch::channel(false);
    let progress =
        Arc::new(Progress { target: spec.messages, acked: AtomicU64::new(0), finished: Mutex::new(None), done });
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Pipeline::<Req>::connect(spec.addr).await?);
    }
    let start = Instant::now();
    let deadline = start + spec.timeout;
    let handles: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let (spec, progress) = (spec.clone(), progress.clone());
            tokio::spawn(async move {
                let r = match spec.mode {
                    ConsumeMode::Pull { max } => pull(c, &spec, max, &progress, deadline).await,
                    ConsumeMode::Subscribe { prefetch } => subscribe(c, &spec, prefetch, &progress, deadline).await,
                };
                if r.is_err() {
                    // Let the others stop too.
                    progress.done.send_replace(true);
                }
                r
            })
        })
        .collect();
    let mut all = ConsumerStats::default();
    let mut first_err = None;
    for h in handles {
        match h.await.context("a consumer task panicked")? {
            Ok(s) => {
                all.delivered += s.delivered;
                all.redelivered += s.redelivered;
                all.bytes += s.bytes;
                all.calls += s.calls;
                all.empty += s.empty;
                all.consume.merge(&s.consume);
                all.ack.merge(&s.ack);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let acked = progress.acked.load(Ordering::Acquire);
    let finished = progress.finished.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(Instant::now);
    if acked < spec.messages {
        bail!("acked {acked} messages of a backlog of {}", spec.messages);
    }
    let seconds = (finished - start).as_secs_f64();
    Ok(ConsumeResult {
        consumers: n,
        mode: spec.mode,
        acked,
        delivered: all.delivered,
        redelivered: all.redelivered,
        consume_calls: all.calls,
        empty_consumes: all.empty,
        seconds,
        msgs_per_s: acked as f64 / seconds,
        // Payload of the acked messages (a subscriber may have received a
        // few more than it acked when the backlog ran out).
        mb_per_s: all.bytes as f64 / all.delivered.max(1) as f64 * acked as f64 / seconds / 1e6,
        consume_latency: all.consume.summary(),
        ack_latency: all.ack.summary(),
    })
}

fn left(deadline: Instant, what: &str) -> Result<Duration> {
    deadline.checked_duration_since(Instant::now()).ok_or_else(|| anyhow!("{what}: timed out"))
}

/// Handles an `ack` reply.
fn acked(line: &[u8], sent: Instant, offsets: u64, t: Instant, st: &mut ConsumerStats, p: &Progress) -> Result<()> {
    check_reply(line).context("ack")?;
    st.ack.record(t - sent);
    p.add(reply_u64(line, "acked").unwrap_or(offsets));
    Ok(())
}

fn delivered(line: &[u8], offsets: &mut Vec<u64>, st: &mut ConsumerStats) -> Result<usize> {
    scan_messages(line, |m| {
        offsets.push(m.offset);
        st.bytes += m.payload_bytes as u64;
        st.redelivered += u64::from(m.deliveries > 1);
    })
}

async fn pull(
    mut c: Pipeline<Req>,
    spec: &ConsumeSpec,
    max: usize,
    p: &Progress,
    deadline: Instant,
) -> Result<ConsumerStats> {
    let now_line = request::consume(&spec.queue, &spec.group, max, 0);
    // After an empty reply (the rest of the backlog is leased to the other
    // consumers), wait a little on the server instead of spinning.
    let wait_line = request::consume(&spec.queue, &spec.group, max, 20);
    let mut acks = request::Acks::new(&spec.queue, &spec.group);
    let mut st = ConsumerStats::default();
    let mut offsets: Vec<u64> = Vec::with_capacity(max);
    let mut empty_last = false;
    loop {
        let now = Instant::now();
        if !offsets.is_empty() {
            c.send(acks.line(&offsets), Req::Ack(now, offsets.len() as u64));
            offsets.clear();
        }
        if !p.is_done() {
            c.send(if empty_last { &wait_line } else { &now_line }, Req::Consume(now));
        }
        if c.in_flight() == 0 {
            return Ok(st);
        }
        c.flush().await?;
        while c.in_flight() > 0 {
            let x = tokio::time::timeout(left(deadline, "consume")?, c.recv())
                .await
                .map_err(|_| anyhow!("backlog not consumed within {} s", spec.timeout.as_secs_f64()))??;
            let t = Instant::now();
            match x {
                Incoming::Reply { tag: Req::Ack(sent, n), line } => acked(&line, sent, n, t, &mut st, p)?,
                Incoming::Reply { tag: Req::Consume(sent), line } => {
                    check_reply(&line).context("consume")?;
                    st.consume.record(t - sent);
                    st.calls += 1;
                    let got = delivered(&line, &mut offsets, &mut st)?;
                    st.delivered += got as u64;
                    empty_last = got == 0;
                    st.empty += u64::from(empty_last);
                }
                Incoming::Reply { tag: Req::Subscribe, .. } => bail!("no subscription was asked for"),
                Incoming::Push(f) => bail!("a push frame on a consuming connection: {}", preview(&f)),
            }
        }
    }
}

async fn subscribe(
    mut c: Pipeline<Req>,
    spec: &ConsumeSpec,
    prefetch: usize,
    p: &Progress,
    deadline: Instant,
) -> Result<ConsumerStats> {
    let mut acks = request::Acks::new(&spec.queue, &spec.group);
    let mut st = ConsumerStats::default();
    let mut offsets: Vec<u64> = Vec::with_capacity(prefetch);
    let mut done = p.done.subscribe();
    c.call(&request::subscribe(&spec.queue, &spec.group, prefetch, true), Req::Subscribe).await.context("subscribe")?;
    loop {
        if p.is_done() {
            return Ok(st);
        }
        c.flush().await?;
        let x = tokio::select! {
            x = c.recv() => x?,
            _ = done.wait_for(|d| *d) => return Ok(st),
            _ = tokio::time::sleep(left(deadline, "subscribe")?) => {
                bail!("backlog not consumed within {} s", spec.timeout.as_secs_f64())
            }
        };
        let t = Instant::now();
        let mut next = Some(x);
        while let Some(x) = next {
            match x {
                Incoming::Push(line) => {
                    let got = delivered(&line, &mut offsets, &mut st)?;
                    if got == 0 {
                        bail!("subscription frame without a message: {}", preview(&line));
                    }
                    st.delivered += got as u64;
                }
                Incoming::Reply { tag: Req::Ack(sent, n), line } => acked(&line, sent, n, t, &mut st, p)?,
                Incoming::Reply { line, .. } => bail!("unexpected reply: {}", preview(&line)),
            }
            next = c.try_recv()?;
        }
        if !offsets.is_empty() {
            c.send(acks.line(&offsets), Req::Ack(t, offsets.len() as u64));
            offsets.clear();
        }
    }
}

// ---------------------------------------------------------------- end to end

/// A fixed-rate producer and a subscriber.
#[derive(Debug, Clone)]
pub struct EndToEndSpec {
    /// The server.
    pub addr: SocketAddr,
    /// The queue (created by the workload with the server's defaults).
    pub queue: String,
    /// The subscriber's group.
    pub group: String,
    /// Messages per second, on a fixed schedule.
    pub rate: f64,
    /// Payload bytes per message.
    pub payload: usize,
    /// Run before measuring.
    pub warmup: Duration,
    /// Measured: messages scheduled in this window count.
    pub measure: Duration,
    /// The subscription's prefetch.
    pub prefetch: usize,
    /// Manual ack (the subscriber acks what it received, batched); else
    /// `ack: "auto"`.
    pub manual_ack: bool,
    /// Give up when the last message has not arrived this long after its
    /// scheduled time.
    pub drain_timeout: Duration,
}

/// What an [`end_to_end`] workload measured.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEndResult {
    /// The rate asked for, messages/s.
    pub rate: f64,
    /// Messages published and delivered (all of them, warm-up included).
    pub messages: u64,
    /// Messages scheduled inside the measured window.
    pub measured: u64,
    /// Delivered more than once.
    pub duplicates: u64,
    /// Deliveries per second over the measured window, by scheduled time.
    pub delivered_per_s: f64,
    /// Scheduled send time → delivery to the subscriber.
    pub end_to_end: LatencySummary,
    /// Scheduled send time → the publish's reply.
    pub publish: LatencySummary,
    /// Scheduled send time → the moment the producer wrote the request: the
    /// generator's own lateness (timer wake-ups), included in both figures
    /// above.
    pub send_delay: LatencySummary,
}

/// Nanoseconds after the start at which message `i` is due.
fn due_ns(i: u64, rate: f64) -> u64 {
    (i as f64 * 1e9 / rate) as u64
}

/// Runs an end-to-end latency workload. Message `i` is due at
/// `t0 + i / rate`. A thread of its own sleeps until each message is due and
/// writes it at once (a blocking write on a clone of the producer's socket:
/// the runtime's timer has millisecond resolution, and a hand-over to the
/// runtime's thread would add a wake-up to every send), whatever is still
/// unanswered. A task reads the publish replies (in order: reply k answers
/// message k), and the subscriber notes when each message arrives. The
/// message's `key` carries `i`.
pub async fn end_to_end(spec: &EndToEndSpec) -> Result<EndToEndResult> {
    if !(spec.rate.is_finite() && spec.rate > 0.0) {
        bail!("end-to-end rate must be positive");
    }
    create_queue(spec.addr, &spec.queue).await?;
    let mut sub = Pipeline::<Option<Instant>>::connect(spec.addr).await?;
    sub.call(&request::subscribe(&spec.queue, &spec.group, spec.prefetch, spec.manual_ack), None)
        .await
        .context("subscribe")?;
    let replies = Pipeline::<()>::connect(spec.addr).await?;
    let writer = replies.stream.try_clone_std()?;
    let total = ((spec.warmup + spec.measure).as_secs_f64() * spec.rate).ceil() as u64;
    let rate = spec.rate;
    let t0 = Instant::now() + Duration::from_millis(20);
    let sched = move |i: u64| t0 + Duration::from_nanos(due_ns(i, rate));
    let from = t0 + spec.warmup;
    let end = from + spec.measure;
    let measured = move |i: u64| {
        let s = sched(i);
        s >= from && s < end
    };
    let deadline = sched(total) + spec.drain_timeout;

    let mut prefix =
        serde_json::json!({ "op": "publish", "queue": spec.queue, "payload": gmq_protocol::reply::encode_payload(&pattern(spec.payload)) })
            .to_string()
            .into_bytes();
    prefix.pop();
    prefix.extend_from_slice(b",\"key\":\"");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let pacer = std::thread::Builder::new()
        .name("gmq-load-pacer".into())
        .spawn(move || {
            let r = pace(writer.0, &prefix, total, sched, measured, deadline, &stop_writer);
            if r.is_err() {
                // Wake the reply reader rather than leave it to the deadline.
                let _ = writer.1.shutdown(std::net::Shutdown::Both);
            }
            r
        })
        .context("starting the pacer thread")?;

    let prod = tokio::spawn(async move { publish_replies(replies, total, sched, measured, deadline).await });
    let manual = spec.manual_ack;
    let (queue, group) = (spec.queue.clone(), spec.group.clone());
    let cons =
        tokio::spawn(async move { receive(sub, &queue, &group, manual, total, sched, measured, deadline).await });
    let p = prod.await.context("the publish reply task panicked")?;
    if p.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let r = cons.await.context("the subscriber task panicked")?;
    if r.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let send_delay = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .context("joining the pacer thread")?
        .map_err(|_| anyhow!("the pacer thread panicked"))?;
    let (send_delay, publish, (e2e, received, duplicates)) = (send_delay?, p?, r?);
    let n_measured = (0..total).filter(|&i| measured(i)).count() as u64;
    Ok(EndToEndResult {
        rate: spec.rate,
        messages: received,
        measured: n_measured,
        duplicates,
        delivered_per_s: e2e.count() as f64 / spec.measure.as_secs_f64(),
        end_to_end: e2e.summary(),
        publish: publish.summary(),
        send_delay: send_delay.summary(),
    })
}

/// Two more handles on a tokio socket's file: one to write from a thread,
/// one to shut it down.
trait CloneStd {
    fn try_clone_std(&self) -> Result<(std::net::TcpStream, std::net::TcpStream)>;
}

impl CloneStd for TcpStream {
    fn try_clone_std(&self) -> Result<(std::net::TcpStream, std::net::TcpStream)> {
        use std::os::fd::AsFd;
        let fd = self.as_fd().try_clone_to_owned().context("duplicating the producer's socket")?;
        let a = std::net::TcpStream::from(fd);
        let b = a.try_clone().context("duplicating the producer's socket")?;
        Ok((a, b))
    }
}

/// The pacer: writes message `i` as soon as it is due; returns how late
/// each write completed after its due time.
fn pace(
    mut w: std::net::TcpStream,
    prefix: &[u8],
    total: u64,
    sched: impl Fn(u64) -> Instant,
    measured: impl Fn(u64) -> bool,
    deadline: Instant,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Latency> {
    use std::io::Write as _;
    // Linux lets a thread's sleeps end up to its timer slack (50 µs by
    // default) late, to batch wake-ups; this thread wants them on time. Best
    // effort: the send delay measured below shows what it got.
    let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
    let mut delay = Latency::new();
    let mut line = Vec::with_capacity(prefix.len() + 24);
    for i in 0..total {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let at = sched(i);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        line.clear();
        line.extend_from_slice(prefix);
        let _ = writeln!(line, "{i}\"}}");
        // The socket is in non-blocking mode (tokio shares its file): wait
        // for room by polling, which only happens if the server stops
        // reading.
        let mut off = 0;
        while off < line.len() {
            match w.write(&line[off..]) {
                Ok(0) => bail!("the server closed the producer's connection"),
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("the server stopped reading publishes ({i} of {total} sent)");
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(anyhow::Error::new(e).context("writing a publish")),
            }
        }
        if measured(i) {
            delay.record(Instant::now().saturating_duration_since(at));
        }
    }
    Ok(delay)
}

/// Reads the producer's publish replies: reply k answers message k.
async fn publish_replies(
    mut c: Pipeline<()>,
    total: u64,
    sched: impl Fn(u64) -> Instant,
    measured: impl Fn(u64) -> bool,
    deadline: Instant,
) -> Result<Latency> {
    let mut publish = Latency::new();
    let mut k = 0u64;
    while k < total {
        let first = tokio::select! {
            l = c.recv_line() => l?,
            _ = tokio::time::sleep_until(deadline.into()) => {
                bail!("{k} of {total} publishes answered by the deadline")
            }
        };
        let t = Instant::now();
        let mut next = Some(first);
        while let Some(line) = next {
            if is_push(&line) {
                bail!("a push frame on the producer's connection: {}", preview(&line));
            }
            check_reply(&line).context("publish")?;
            if measured(k) {
                publish.record(t.saturating_duration_since(sched(k)));
            }
            k += 1;
            next = c.try_recv_line();
        }
    }
    Ok(publish)
}

/// A push frame's message, as far as the subscriber needs it.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    message: Option<FrameMessage<'a>>,
    error: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct FrameMessage<'a> {
    offset: u64,
    #[serde(borrow)]
    key: Option<&'a str>,
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    mut c: Pipeline<Option<Instant>>,
    queue: &str,
    group: &str,
    manual: bool,
    total: u64,
    sched: impl Fn(u64) -> Instant,
    measured: impl Fn(u64) -> bool,
    deadline: Instant,
) -> Result<(Latency, u64, u64)> {
    let mut acks = request::Acks::new(queue, group);
    let mut lat = Latency::new();
    let mut seen = vec![false; usize::try_from(total).context("too many messages")?];
    let mut received = 0u64;
    let mut duplicates = 0u64;
    let mut offsets = Vec::new();
    while received < total || c.in_flight() > 0 {
        c.flush().await?;
        let x = tokio::select! {
            x = c.recv() => x?,
            _ = tokio::time::sleep_until(deadline.into()) => {
                bail!("{received} of {total} messages delivered by the deadline")
            }
        };
        let t = Instant::now();
        let mut next = Some(x);
        while let Some(x) = next {
            match x {
                Incoming::Push(line) => {
                    let f: Frame<'_> = serde_json::from_slice(&line)
                        .with_context(|| format!("a push frame that does not parse: {}", preview(&line)))?;
                    if let Some(e) = f.error {
                        bail!("the subscription ended: {e}");
                    }
                    let m = f.message.ok_or_else(|| anyhow!("a push frame without message: {}", preview(&line)))?;
                    let i: u64 = m
                        .key
                        .and_then(|k| k.parse().ok())
                        .filter(|&i| i < total)
                        .ok_or_else(|| anyhow!("a message this workload did not send: {}", preview(&line)))?;
                    offsets.push(m.offset);
                    let slot = &mut seen[i as usize];
                    if *slot {
                        duplicates += 1;
                    } else {
                        *slot = true;
                        received += 1;
                        if measured(i) {
                            lat.record(t.saturating_duration_since(sched(i)));
                        }
                    }
                }
                Incoming::Reply { line, .. } => check_reply(&line).context("ack")?,
            }
            next = c.try_recv()?;
        }
        if manual && !offsets.is_empty() {
            c.send(acks.line(&offsets), Some(t));
        }
        offsets.clear();
    }
    Ok((lat, received, duplicates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked() {
        assert!(check_reply(b"{\"ok\":true,\"offset\":3}").is_ok());
        assert!(check_reply(b"{\"id\":\"x\",\"ok\":true}").is_ok());
        let e = check_reply(b"{\"ok\":false,\"error\":{\"code\":\"queue_full\",\"message\":\"full\"}}").unwrap_err();
        let se = e.downcast_ref::<ServerError>().expect("a ServerError");
        assert_eq!((se.code.as_str(), se.message.as_str()), ("queue_full", "full"));
        assert!(check_reply(b"{\"sub\":\"s1\"}").is_err());
        assert!(check_reply(b"nonsense").is_err());
        assert_eq!(reply_u64(b"{\"ok\":true,\"acked\":64}", "acked"), Some(64));
        assert_eq!(reply_u64(b"{\"ok\":true}", "acked"), None);
    }

    #[test]
    fn message_scan_matches_a_json_parse() {
        use gmq_protocol::Delivered;
        let headers = vec![("h".to_owned(), "{\"offset\":1,\"payload\":\"".to_owned())];
        let payloads: Vec<Vec<u8>> = vec![vec![], vec![1], vec![1, 2], vec![1, 2, 3], pattern(1024)];
        let msgs: Vec<Delivered<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Delivered {
                offset: 1000 + i as u64,
                payload: p,
                event: (i == 1).then_some("ev,\"deliveries\":9"),
                key: (i == 2).then_some("{\"offset\":77,"),
                headers: if i == 3 { &headers } else { &[] },
                timestamp_ms: 1_763_800_000_000,
                deliveries: 1 + i as u32,
                ttl_ms: (i == 4).then_some(5),
                msg_id: (i == 4).then_some("id"),
            })
            .collect();
        let line = gmq_protocol::Reply::ok(None).messages("messages", &msgs).finish();
        let line = &line[..line.len() - 1];
        let mut seen = Vec::new();
        assert_eq!(scan_messages(line, |m| seen.push(m)).unwrap(), msgs.len());
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let parsed: Vec<Seen> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&payloads)
            .map(|(m, p)| Seen {
                offset: m["offset"].as_u64().unwrap(),
                payload_bytes: p.len(),
                deliveries: m["deliveries"].as_u64().unwrap() as u32,
            })
            .collect();
        assert_eq!(seen, parsed);
        // A push frame holds one.
        let frame = gmq_protocol::push_frame("s1", &msgs[4]);
        let mut one = Vec::new();
        assert_eq!(scan_messages(&frame, |m| one.push(m)).unwrap(), 1);
        assert_eq!(one[0], parsed[4]);
        assert!(is_push(&frame));
        assert_eq!(scan_messages(b"{\"ok\":true,\"messages\":[]}", |_| {}).unwrap(), 0);
    }

    #[test]
    fn ack_lines_are_json() {
        let mut a = request::Acks::new("q\"1", "g");
        let v: serde_json::Value = serde_json::from_slice(a.line(&[1, 2, 30])).unwrap();
        assert_eq!(v, serde_json::json!({"op":"ack","queue":"q\"1","group":"g","offsets":[1,2,30]}));
        let v: serde_json::Value = serde_json::from_slice(&request::publish("q", b"hi", 3)).unwrap();
        assert_eq!(v["messages"].as_array().map(Vec::len), Some(3));
        assert!(request::publish("q", b"hi", 1).ends_with(b"\"}\n"));
    }

    #[test]
    fn schedules_are_even() {
        assert_eq!(due_ns(0, 5000.0), 0);
        assert_eq!(due_ns(5000, 5000.0), 1_000_000_000);
        assert_eq!(due_ns(1, 5000.0), 200_000);
    }
}
