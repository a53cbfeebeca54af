//! Subscriptions: push delivery with `prefetch` credit.
//!
//! Each subscription is a task with its own engine consumer id, so that
//! `unsubscribe` returns exactly its unacked deliveries to the group. It
//! pushes while it has credit:
//! - `ack: "manual"`: deliveries not yet acked, nacked or past their lease
//!   (`ack_timeout_ms`) count against `prefetch`. Acks and nacks sent on the
//!   same connection give the credit back at once; a lease that runs out
//!   gives it back when it expires (the message is then delivered again).
//! - `ack: "auto"`: push frames not yet written to the socket count against
//!   `prefetch`, so a subscriber that stops reading stops the deliveries
//!   (and, past `write_timeout_ms`, is cut off) instead of making the server
//!   buffer without bound.
//!
//! With nothing to deliver it waits on the queue's signal (or, for a queue
//! that does not exist yet, on queue creation) and on the group's next lease
//! deadline: no polling.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gmq_engine::{AckMode, Clock, ConsumeOptions, ConsumerId, SystemClock};
use gmq_protocol::reply::{push_frame_into, push_frame_len};
use gmq_protocol::WireError;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::convert::delivered;
use crate::ops::{consume_once, Consumed};
use crate::session::{release, sleep_until, Shared};

/// What a subscription and its connection share.
#[derive(Debug)]
pub struct SubState {
    /// Queue.
    pub queue: String,
    /// Group.
    pub group: String,
    manual: bool,
    prefetch: usize,
    /// Manual: offset → lease deadline (ms since the epoch).
    outstanding: Mutex<BTreeMap<u64, u64>>,
    /// Auto: frames queued but not yet written.
    unwritten: AtomicUsize,
    credit: Notify,
    /// Set when the subscription stops: its queued frames are dropped.
    ended: std::sync::atomic::AtomicBool,
}

impl SubState {
    /// Offsets acked or nacked on the connection: credit again.
    pub fn settled(&self, offsets: &[u64]) {
        if !self.manual {
            return;
        }
        let mut o = self.outstanding.lock().unwrap_or_else(|e| e.into_inner());
        let before = o.len();
        for off in offsets {
            o.remove(off);
        }
        if o.len() != before {
            self.credit.notify_one();
        }
    }

    /// Deliveries counting against `prefetch` now, and when the next lease
    /// runs out.
    fn in_use(&self, now_ms: u64) -> (usize, Option<u64>) {
        if !self.manual {
            return (self.unwritten.load(Ordering::SeqCst), None);
        }
        let mut o = self.outstanding.lock().unwrap_or_else(|e| e.into_inner());
        o.retain(|_, deadline| *deadline > now_ms);
        (o.len(), o.values().min().copied())
    }
}

/// Push frames on their way to the socket: the deliveries of one consume,
/// one frame (line) each, in one buffer.
#[derive(Debug)]
pub struct Push {
    /// The frames.
    pub frame: Bytes,
    /// How many deliveries they carry.
    count: usize,
    sub: Option<Arc<SubState>>,
}

impl Push {
    /// Whether the frame is to be dropped: its manual-ack subscription
    /// ended before it was written (the message went back to the group).
    /// Auto-ack frames are always written: those messages are already done
    /// for the group, so dropping one would lose it.
    pub fn cancelled(&self) -> bool {
        self.sub.as_ref().is_some_and(|s| s.manual && s.ended.load(Ordering::SeqCst))
    }

    /// The writer queued the frame for the socket.
    pub fn written(&self) {
        if let Some(s) = &self.sub {
            if !s.manual {
                s.unwritten.fetch_sub(self.count, Ordering::SeqCst);
                s.credit.notify_one();
            }
        }
    }
}

/// A running subscription, owned by its connection's session.
#[derive(Debug)]
pub struct Sub {
    /// Shared with the task.
    pub state: Arc<SubState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    pushes: mpsc::Sender<Push>,
}

impl Sub {
    /// Stops the subscription and waits until its leases are back in the
    /// group and (auto ack) every message it took is handed to the writer,
    /// so the `unsubscribe` reply comes after them. A writer that is gone
    /// ends the wait.
    pub async fn stop(self) {
        self.state.ended.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if !self.state.manual {
            loop {
                let written = self.state.credit.notified();
                if self.state.unwritten.load(Ordering::SeqCst) == 0 {
                    break;
                }
                tokio::select! {
                    _ = written => {}
                    _ = self.pushes.closed() => break,
                }
            }
        }
    }

    /// Whether it ended by itself (an error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Options of a new subscription.
#[derive(Debug)]
pub struct SubSpec {
    pub(crate) id: String,
    pub(crate) conn: u64,
    pub(crate) queue: String,
    pub(crate) group: String,
    pub(crate) prefetch: usize,
    pub(crate) ack: AckMode,
    pub(crate) events: Option<Vec<String>>,
    pub(crate) from: Option<gmq_engine::StartFrom>,
}

/// Starts a subscription; it pushes nothing before `started` fires (its
/// reply must be written first).
pub fn start(shared: Arc<Shared>, spec: SubSpec, pushes: mpsc::Sender<Push>, started: oneshot::Receiver<()>) -> Sub {
    let state = Arc::new(SubState {
        queue: spec.queue.clone(),
        group: spec.group.clone(),
        manual: spec.ack == AckMode::Manual,
        prefetch: spec.prefetch,
        outstanding: Mutex::new(BTreeMap::new()),
        unwritten: AtomicUsize::new(0),
        credit: Notify::new(),
        ended: std::sync::atomic::AtomicBool::new(false),
    });
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(shared, spec, state.clone(), pushes.clone(), started, stop_rx));
    Sub { state, stop, task, pushes }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn run(
    shared: Arc<Shared>,
    spec: SubSpec,
    state: Arc<SubState>,
    pushes: mpsc::Sender<Push>,
    started: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
) {
    let consumer: ConsumerId = shared.next_id();
    // Nothing is pushed before the reply is written; an unsubscribe (or the
    // connection closing) before that ends the subscription at once.
    let started = tokio::select! {
        r = started => r.is_ok(),
        _ = stopped(&mut stop) => false,
    };
    if started {
        if let Err(e) = deliver(&shared, &spec, &state, consumer, &pushes, &mut stop).await {
            tracing::warn!(queue = %spec.queue, group = %spec.group, sub = %spec.id, code = %e.code, error = %e.message, "subscription ended by an error");
            let frame = json!({ "sub": spec.id, "error": { "code": e.code.as_str(), "message": e.message } });
            let mut line = serde_json::to_vec(&frame).unwrap_or_default();
            line.push(b'\n');
            let _ = pushes.send(Push { frame: Bytes::from(line), count: 0, sub: None }).await;
        }
    }
    release(&shared, consumer).await;
    shared.registry.detach_sub(&spec.queue, spec.conn, &spec.id);
}

/// Delivers until stopped; an error ends the subscription.
async fn deliver(
    shared: &Arc<Shared>,
    spec: &SubSpec,
    state: &Arc<SubState>,
    consumer: ConsumerId,
    pushes: &mpsc::Sender<Push>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), WireError> {
    let clock = SystemClock;
    loop {
        if *stop.borrow() || shared.is_shutting_down() {
            return Ok(());
        }
        let now = clock.now_ms();
        let (used, next_expiry) = state.in_use(now);
        let credit = state.prefetch.saturating_sub(used);
        if credit == 0 {
            tokio::select! {
                _ = state.credit.notified() => {}
                _ = sleep_until(next_expiry.map(crate::ops::instant_of)) => {}
                _ = stopped(stop) => return Ok(()),
                _ = shared.shutting_down() => return Ok(()),
            }
            continue;
        }
        let (signal, seen) = crate::ops::signal_of(&shared.engine, &spec.queue)?;
        let opts = ConsumeOptions {
            max: credit,
            max_bytes: shared.config.limits.max_inflight_bytes,
            ack: spec.ack,
            events: spec.events.clone(),
            from: spec.from,
        };
        let Consumed { got, next_deadline } = consume_once(shared, consumer, &spec.queue, &spec.group, opts).await?;
        if got.is_empty() {
            tokio::select! {
                biased;
                _ = stopped(stop) => return Ok(()),
                _ = shared.shutting_down() => return Ok(()),
                _ = signal.changed(seen) => {}
                _ = tokio::time::sleep_until(crate::ops::recheck_at(next_deadline)) => {}
            }
            continue;
        }
        let lease_ms = shared.engine.get(&spec.queue).ok().flatten().map_or(0, |q| q.settings().ack_timeout_ms);
        let deadline = clock.now_ms().saturating_add(lease_ms);
        if state.manual {
            let mut o = state.outstanding.lock().unwrap_or_else(|e| e.into_inner());
            o.extend(got.iter().map(|d| (d.record.offset, deadline)));
        } else {
            state.unwritten.fetch_add(got.len(), Ordering::SeqCst);
        }
        // One buffer for the batch: one allocation and one hand-over to
        // the writer instead of one per message.
        let list: Vec<_> = got.iter().map(delivered).collect();
        let mut frames = Vec::with_capacity(list.iter().map(|m| push_frame_len(&spec.id, m)).sum());
        for m in &list {
            push_frame_into(&mut frames, &spec.id, m);
        }
        let push = Push { frame: Bytes::from(frames), count: got.len(), sub: Some(state.clone()) };
        if state.manual {
            // Unsent manual deliveries go back to the group on release.
            tokio::select! {
                r = pushes.send(push) => if r.is_err() { return Ok(()) },
                _ = stopped(stop) => return Ok(()),
            }
        } else if pushes.send(push).await.is_err() {
            // Auto-acked: every message taken is sent, unless the writer is
            // gone (the client with it).
            return Ok(());
        }
    }
}
