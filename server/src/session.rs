//! One connection: a reader that parses requests and starts them **in
//! request order**, and a writer that sends their replies in the same order
//! while subscription pushes interleave.
//!
//! ```text
//!  socket ──read──▶ LineFramer ──▶ parse ──▶ Session::execute ──▶ Slot ─┐  (bounded: max_inflight)
//!                                                                       ▼
//!  socket ◀──write── writer: replies in order (awaiting the head slot) ◀┤
//!                                        subscription push frames ◀────┘  (bounded)
//! ```
//!
//! Starting requests in order keeps a pipelining producer's messages in the
//! order it sent them; completing them concurrently lets many publishes wait
//! on one group commit. A slot is either a finished reply or a future (a
//! publish waiting for its fsync, a `consume` waiting for messages); the
//! writer awaits only the head, because replies go out in request order.
//!
//! Backpressure, end to end: a client that does not read its replies fills
//! the socket, the writer stops, the slot channel fills, the reader stops
//! reading, and the client's own sends block. Past `write_timeout_ms` of a
//! writer that cannot write, the connection is cut off and it is logged.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use gmq_engine::{Completion, ConsumerId, Engine};
use gmq_protocol::{parse, ErrorCode, LineFramer, Parsed, Reply, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::{Config, User};
use crate::registry::Registry;
use crate::subscription::{Push, Sub};

/// A reply still being produced.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// A reply in the pipeline, in request order.
pub enum Slot {
    /// Finished.
    Ready(Bytes),
    /// Finished once the future completes.
    Wait(ReplyFuture),
    /// Finished; tell the sender once it is queued for writing (a
    /// subscription's first push must follow its reply).
    Then(Bytes, oneshot::Sender<()>),
    /// Finished, and the last thing written: the connection closes after it.
    Last(Bytes),
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::Ready(_) => "Ready",
            Slot::Wait(_) => "Wait",
            Slot::Then(..) => "Then",
            Slot::Last(_) => "Last",
        })
    }
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The configuration.
    pub config: Config,
    /// Clients and rates.
    pub registry: Registry,
    /// Becomes `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    ids: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Shared state over an open engine.
    pub fn new(engine: Arc<Engine>, config: Config, shutdown: watch::Receiver<bool>) -> Shared {
        Shared { engine, config, registry: Registry::default(), shutdown, ids: std::sync::atomic::AtomicU64::new(1) }
    }

    /// A fresh id (connections, consumers and subscriptions share the
    /// counter; consumer ids never reach the engine's reserved `u64::MAX`).
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once the server is shutting down.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Whether the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// A connection's request side: its state and the channels to its writer.
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: u64,
    pub(crate) peer: SocketAddr,
    /// The engine consumer of this connection's `consume` requests.
    pub(crate) consumer: ConsumerId,
    pub(crate) consumed: std::collections::HashSet<(String, String)>,
    pub(crate) subs: std::collections::HashMap<String, Sub>,
    pub(crate) user: Option<User>,
    pub(crate) slots: mpsc::Sender<(Slot, usize)>,
    pub(crate) pushes: mpsc::Sender<Push>,
    /// Publishes of this connection not known to be complete: a read
    /// waits for them (read your own writes), since under `fsync = always`
    /// a message is readable only once synced. They complete on their own
    /// (the engine completes every append), whether or not the writer ever
    /// polls their replies.
    pub(crate) writes: std::collections::VecDeque<Completion>,
    /// Replies queued, and (counted by the writer) written.
    queued: u64,
    answered: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of requests in flight and of their finished replies not yet
    /// written; the reader stops while it is past `max_inflight_bytes`.
    budget: Arc<Budget>,
    /// Consumes running on the blocking pool: the connection's leases are
    /// released only after the last one finished.
    pub(crate) consumes: Arc<tokio::sync::Semaphore>,
    /// Becomes `true` when the reader stops (EOF, error, shutdown): waiting
    /// consumes then answer at once.
    pub(crate) reader_done: watch::Sender<bool>,
}

/// Permits of [`Session::consumes`].
pub(crate) const CONSUME_PERMITS: u32 = 1 << 20;

/// Bytes in flight on a connection.
#[derive(Debug, Default)]
pub struct Budget {
    bytes: std::sync::atomic::AtomicUsize,
    room: tokio::sync::Notify,
}

impl Budget {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn done(&self, n: usize) {
        self.bytes.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        self.room.notify_waiters();
    }

    /// Waits until fewer than `max` bytes are in flight.
    async fn below(&self, max: usize) {
        loop {
            let room = self.room.notified();
            if self.bytes.load(std::sync::atomic::Ordering::SeqCst) < max {
                return;
            }
            room.await;
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("conn", &self.conn).field("peer", &self.peer).finish_non_exhaustive()
    }
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

/// Serves one connection until the client leaves, the connection fails or
/// the server shuts down; then returns the connection's leases to their
/// groups.
pub async fn serve<R, W>(shared: Arc<Shared>, peer: SocketAddr, reader: R, writer: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let conn = shared.next_id();
    shared.registry.connect(conn, peer);
    tracing::debug!(conn, %peer, "connection opened");
    let limits = &shared.config.limits;
    let (slots_tx, slots_rx) = mpsc::channel::<(Slot, usize)>(limits.max_inflight);
    let (push_tx, push_rx) = mpsc::channel(256);
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let budget = Arc::new(Budget::default());
    let out = Out {
        w: writer,
        buf: Vec::new(),
        timeout: ms(limits.write_timeout_ms),
        conn,
        peer,
        answered: answered.clone(),
        budget: budget.clone(),
    };
    let write = tokio::spawn(write_loop(out, slots_rx, push_rx));
    let mut s = Session {
        consumer: shared.next_id(),
        shared: shared.clone(),
        conn,
        peer,
        consumed: Default::default(),
        subs: Default::default(),
        user: None,
        slots: slots_tx,
        pushes: push_tx,
        writes: Default::default(),
        queued: 0,
        answered,
        budget,
        consumes: Arc::new(tokio::sync::Semaphore::new(CONSUME_PERMITS as usize)),
        reader_done: watch::channel(false).0,
    };
    s.read_loop(reader).await;
    s.reader_done.send_replace(true);
    // Subscriptions first (they return their leases), then let the writer
    // finish what is in flight, then return this connection's leases: a
    // `consume` still in flight could otherwise lease after the release.
    for (_, sub) in s.subs.drain() {
        sub.stop().await;
    }
    let (consumer, consumes) = (s.consumer, s.consumes.clone());
    drop(s);
    let _ = write.await;
    // A consume the writer no longer waits for may still be running on the
    // blocking pool; its leases must be released too.
    let _ = consumes.acquire_many(CONSUME_PERMITS).await;
    release(&shared, consumer).await;
    shared.registry.disconnect(conn);
    tracing::debug!(conn, %peer, "connection closed");
}

/// Returns `consumer`'s leases to their groups, off the async workers.
pub(crate) async fn release(shared: &Arc<Shared>, consumer: ConsumerId) {
    let engine = shared.engine.clone();
    let n = tokio::task::spawn_blocking(move || engine.release_consumer(consumer)).await.unwrap_or(0);
    if n > 0 {
        tracing::debug!(consumer, released = n, "unacked deliveries returned to their groups");
    }
}

impl Session {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut r: R) {
        let limits = self.shared.config.limits.clone();
        let mut framer = LineFramer::new(limits.max_frame_bytes);
        let line_timeout = ms(limits.line_timeout_ms);
        let idle_timeout = ms(limits.idle_timeout_ms);
        let mut line_started: Option<Instant> = None;
        let mut last_read = Instant::now();
        let shared = self.shared.clone();
        loop {
            let mut handled = false;
            loop {
                match framer.next_line() {
                    Ok(Some(line)) => {
                        handled = true;
                        if !self.room(limits.max_inflight_bytes).await || !self.handle(&line).await {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(conn = self.conn, peer = %self.peer, max = e.max, "request line too long; closing");
                        let err = WireError::new(ErrorCode::FrameTooLarge, e.to_string());
                        self.send(Slot::Last(Reply::error(None, &err)), 0).await;
                        return;
                    }
                }
            }
            line_started = match (framer.partial() > 0, handled) {
                (false, _) => None,
                (true, true) => Some(Instant::now()),
                (true, false) => line_started.or(Some(Instant::now())),
            };
            let line_deadline = line_started.zip(line_timeout).map(|(t, d)| t + d);
            let idle_deadline = idle_timeout.filter(|_| framer.partial() == 0).map(|d| last_read + d);
            // Idle connections keep small buffers; a busy one reads 16 KiB
            // at a time (many pipelined requests per read).
            let buf = framer.buffer_mut();
            if buf.capacity() - buf.len() < 4 << 10 {
                buf.reserve(16 << 10);
            }
            tokio::select! {
                biased;
                _ = shared.shutting_down() => return,
                _ = self.slots.closed() => return,
                r = r.read_buf(framer.buffer_mut()) => match r {
                    Ok(0) => return,
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => {
                        tracing::debug!(conn = self.conn, peer = %self.peer, error = %e, "read failed");
                        return;
                    }
                },
                _ = sleep_until(line_deadline), if line_deadline.is_some() => {
                    tracing::warn!(conn = self.conn, peer = %self.peer, partial = framer.partial(), "request line not completed in time; closing");
                    let err = WireError::new(ErrorCode::Timeout, format!("request line not completed within line_timeout_ms ({} ms)", limits.line_timeout_ms));
                    self.send(Slot::Last(Reply::error(None, &err)), 0).await;
                    return;
                }
                _ = sleep_until(idle_deadline), if idle_deadline.is_some() => {
                    let inflight = self.queued - self.answered.load(std::sync::atomic::Ordering::Relaxed);
                    if self.subs.is_empty() && inflight == 0 {
                        tracing::info!(conn = self.conn, peer = %self.peer, "idle connection closed (idle_timeout_ms)");
                        return;
                    }
                    // Busy without reading (a subscription, a long poll):
                    // not idle; look again one timeout from now.
                    last_read = Instant::now();
                }
            }
        }
    }

    /// Waits while the connection has `max` bytes in flight; `false` if
    /// the connection is closing meanwhile.
    async fn room(&self, max: usize) -> bool {
        tokio::select! {
            _ = self.budget.below(max) => true,
            _ = self.slots.closed() => false,
            _ = self.shared.shutting_down() => false,
        }
    }

    /// Handles one line; `false` when the connection must close.
    async fn handle(&mut self, line: &[u8]) -> bool {
        let cost = line.len();
        match parse(line) {
            Parsed::Request { id, request } => {
                let slot = self.execute(id, request).await;
                self.send(slot, cost).await
            }
            Parsed::Invalid { id, error } => {
                tracing::debug!(conn = self.conn, peer = %self.peer, code = %error.code, error = %error.message, "bad request");
                self.send(Slot::Ready(Reply::error(id.as_ref(), &error)), cost).await
            }
            Parsed::Legacy(l) => {
                let reply = self.legacy(l).await;
                self.send(Slot::Last(reply), cost).await;
                false
            }
            Parsed::LegacyInvalid { operation, queue, error } => {
                let reply = gmq_protocol::legacy_reply(
                    &operation,
                    &queue,
                    "",
                    Some(&format!("{}: {}", error.code, error.message)),
                );
                self.send(Slot::Last(reply), cost).await;
                false
            }
        }
    }

    /// Queues a reply; `cost` is the bytes of its request. `false` if the
    /// writer is gone or the slot was the last.
    pub(crate) async fn send(&mut self, slot: Slot, cost: usize) -> bool {
        let last = matches!(slot, Slot::Last(_));
        let cost = cost
            + match &slot {
                Slot::Ready(b) | Slot::Then(b, _) | Slot::Last(b) => b.len(),
                Slot::Wait(_) => 0,
            };
        self.queued += 1;
        self.budget.add(cost);
        match self.slots.send((slot, cost)).await {
            Ok(()) => !last,
            Err(_) => {
                self.budget.done(cost);
                false
            }
        }
    }
}

/// Sleeps until `at`, or forever without one (for an optional `select!` arm).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Polls a future once without a task (it is polled properly later).
fn poll_now(f: &mut ReplyFuture) -> Option<Bytes> {
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(b) => Some(b),
        Poll::Pending => None,
    }
}

/// Writes up to this much before flushing to the socket.
const WRITE_CHUNK: usize = 64 << 10;

struct Out<W> {
    w: W,
    buf: Vec<u8>,
    timeout: Option<Duration>,
    conn: u64,
    peer: SocketAddr,
    /// Replies written (pushes not counted).
    answered: Arc<std::sync::atomic::AtomicU64>,
    budget: Arc<Budget>,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let write = async {
            self.w.write_all(&self.buf).await?;
            self.w.flush().await
        };
        let r = match self.timeout {
            Some(t) => tokio::time::timeout(t, write).await,
            None => Ok(write.await),
        };
        match r {
            Ok(Ok(())) => {
                self.buf.clear();
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(conn = self.conn, peer = %self.peer, error = %e, "write failed");
                false
            }
            Err(_) => {
                tracing::warn!(conn = self.conn, peer = %self.peer, pending_bytes = self.buf.len(), "client stopped reading its replies for write_timeout_ms; cutting it off");
                false
            }
        }
    }

    /// Queues a reply; its request's `cost` leaves the budget.
    async fn reply(&mut self, b: &[u8], cost: usize) -> bool {
        self.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.budget.done(cost);
        self.put(b).await
    }

    /// Queues a push frame, unless its subscription has ended (its
    /// `unsubscribe` reply may already be written; the message went back to
    /// the group).
    async fn push(&mut self, p: Push) -> bool {
        if p.cancelled() {
            return true;
        }
        let ok = self.put(&p.frame).await;
        p.written();
        ok
    }

    async fn put(&mut self, b: &[u8]) -> bool {
        self.buf.extend_from_slice(b);
        self.buf.len() < WRITE_CHUNK || self.flush().await
    }
}

/// The writer: replies in slot order, pushes in between, writes batched.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut out: Out<W>,
    mut slots: mpsc::Receiver<(Slot, usize)>,
    mut pushes: mpsc::Receiver<Push>,
) {
    let mut head: Option<(ReplyFuture, usize)> = None;
    let mut slots_open = true;
    let mut pushes_open = true;
    let mut last = false;
    'run: loop {
        // Everything that is ready now goes into one write.
        loop {
            if let Some((f, cost)) = head.as_mut() {
                match poll_now(f) {
                    Some(b) => {
                        let cost = *cost;
                        head = None;
                        if !out.reply(&b, cost).await {
                            break 'run;
                        }
                    }
                    None => break,
                }
            }
            if !slots_open {
                break;
            }
            match slots.try_recv() {
                Ok(slot) => {
                    if !take(slot, &mut head, &mut out, &mut last).await {
                        break 'run;
                    }
                    if last {
                        slots_open = false;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => slots_open = false,
            }
        }
        if !last {
            while let Ok(p) = pushes.try_recv() {
                if !out.push(p).await {
                    break 'run;
                }
            }
        }
        if !out.flush().await {
            break;
        }
        if last || (!slots_open && head.is_none()) {
            break;
        }
        tokio::select! {
            b = async { head.as_mut().expect("guarded").0.as_mut().await }, if head.is_some() => {
                let cost = head.take().map_or(0, |h| h.1);
                if !out.reply(&b, cost).await {
                    break;
                }
            }
            s = slots.recv(), if head.is_none() && slots_open => match s {
                Some(slot) => {
                    if !take(slot, &mut head, &mut out, &mut last).await {
                        break;
                    }
                    if last {
                        slots_open = false;
                    }
                }
                None => slots_open = false,
            },
            p = pushes.recv(), if pushes_open => match p {
                Some(p) => {
                    if !out.push(p).await {
                        break;
                    }
                }
                None => pushes_open = false,
            },
        }
    }
    let _ = out.w.shutdown().await;
}

async fn take<W: AsyncWrite + Unpin>(
    (slot, cost): (Slot, usize),
    head: &mut Option<(ReplyFuture, usize)>,
    out: &mut Out<W>,
    last: &mut bool,
) -> bool {
    match slot {
        Slot::Ready(b) => out.reply(&b, cost).await,
        Slot::Wait(f) => {
            *head = Some((f, cost));
            true
        }
        Slot::Then(b, tx) => {
            let ok = out.reply(&b, cost).await;
            let _ = tx.send(());
            ok
        }
        Slot::Last(b) => {
            *last = true;
            out.reply(&b, cost).await
        }
    }
}
