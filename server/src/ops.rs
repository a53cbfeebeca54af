//! Each operation of PROTOCOL.md, mapped onto the engine.
//!
//! Engine calls that may wait for an fsync (creating a queue, purge,
//! delete, bind, nack) run on the blocking pool, never on an async worker.
//! A publish to an existing queue only encodes under the queue's lock; its
//! reply waits for the group commit as a future, so the connection goes on
//! reading. Consumes and acks run on the worker too, through the engine's
//! non-blocking calls: what could block there (moving dead letters,
//! rewriting the group state snapshot) comes back as a follow-up for the
//! blocking pool. A consume reads its records on the worker: records just
//! written or read ahead come from memory or the page cache; records the
//! page cache no longer holds make that worker wait for the disk. That
//! trade keeps two thread hand-offs off every delivery batch and every ack
//! (they were a fifth of the server's CPU when draining a backlog).

use std::sync::Arc;

use gmq_engine::signal::Signal;
use gmq_engine::{Completion, ConsumeOptions, Delivery, Engine, Error, Queue};
use gmq_protocol::{
    legacy_reply, reply::encode_payload, Consume, ErrorCode, Id, LegacyRequest, Reply, Request, WireError, WireMessage,
    PROTOCOL_VERSION,
};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::convert::{self, delivered, wire_error};
use crate::session::{Session, Shared, Slot};
use crate::subscription::{self, SubSpec};

type Res<T> = Result<T, WireError>;

/// (queue, group) pairs one connection shows in `stats` as attached.
const MAX_ATTACHED: usize = 1024;

/// Runs an engine call on the blocking pool.
pub(crate) async fn blocking<T, F>(engine: &Arc<Engine>, f: F) -> Res<T>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> gmq_engine::Result<T> + Send + 'static,
{
    let e = engine.clone();
    match tokio::task::spawn_blocking(move || f(&e)).await {
        Ok(r) => r.map_err(|e| wire_error(&e)),
        Err(e) => Err(WireError::new(ErrorCode::Storage, format!("internal error: {e}"))),
    }
}

/// The signal to wait on for `queue`, and its generation now: the queue's
/// own, or queue creation while it does not exist.
pub(crate) fn signal_of(engine: &Engine, queue: &str) -> Res<(Arc<Signal>, u64)> {
    let s = match engine.get(queue).map_err(|e| wire_error(&e))? {
        Some(q) => q.signal().clone(),
        None => engine.created_signal().clone(),
    };
    let g = s.generation();
    Ok((s, g))
}

fn ok(id: Option<&Id>) -> Reply {
    Reply::ok(id)
}

fn forbidden(msg: String) -> WireError {
    WireError::new(ErrorCode::Forbidden, msg)
}

/// The queue, created with the defaults if missing (off the async workers
/// only when it must be created).
async fn queue_or_create(engine: &Arc<Engine>, name: &str) -> Res<Arc<Queue>> {
    if let Some(q) = engine.get(name).map_err(|e| wire_error(&e))? {
        return Ok(q);
    }
    let n = name.to_owned();
    blocking(engine, move |e| e.queue(&n)).await
}

fn check_payloads(shared: &Shared, msgs: &[WireMessage]) -> Res<()> {
    let max = shared.config.limits.max_payload_bytes;
    for (i, m) in msgs.iter().enumerate() {
        if m.payload.len() > max {
            let at = if msgs.len() > 1 { format!("messages[{i}].payload") } else { "payload".into() };
            return Err(WireError::new(
                ErrorCode::PayloadTooLarge,
                format!("{at} is {} bytes; max_payload_bytes is {max}", m.payload.len()),
            ));
        }
    }
    Ok(())
}

/// What one consume found, and when the group next has something due
/// without a publish (a lease running out, a delayed redelivery).
pub(crate) struct Consumed {
    pub(crate) got: Vec<Delivery>,
    pub(crate) next_deadline: Option<u64>,
}

/// Consumes once for a `consume` request, holding one of `running`'s
/// permits until the engine call returns (the connection releases its
/// leases only once none is held).
async fn consume_request(
    shared: &Arc<Shared>,
    running: &Arc<tokio::sync::Semaphore>,
    consumer: u64,
    c: &Consume,
) -> Res<Consumed> {
    let Ok(permit) = running.clone().try_acquire_owned() else {
        // The connection is closing (its permits are being collected).
        return Ok(Consumed { got: Vec::new(), next_deadline: None });
    };
    let opts = ConsumeOptions {
        max: usize::try_from(c.max).unwrap_or(usize::MAX).min(shared.config.limits.max_batch),
        max_bytes: shared.config.limits.max_inflight_bytes,
        ack: convert::ack_mode(c.ack),
        events: c.events.clone(),
        from: c.from.map(convert::start),
    };
    let r = consume_once(shared, consumer, &c.queue, &c.group, opts).await;
    drop(permit);
    r
}

/// Consumes once on the blocking pool, then waits (without blocking) for
/// the group's state to be stored when the ack is automatic; also returns
/// the group's next deadline.
pub(crate) async fn consume_once(
    shared: &Arc<Shared>,
    consumer: u64,
    queue: &str,
    group: &str,
    opts: ConsumeOptions,
) -> Res<Consumed> {
    let e = &shared.engine;
    let (pending, followup) = e.consume_nonblocking(queue, group, consumer, &opts).map_err(|e| wire_error(&e))?;
    follow_up(e, followup);
    let next_deadline = e.get(queue).map_err(|e| wire_error(&e))?.and_then(|q| q.next_deadline(group));
    Ok(Consumed { got: pending.await.map_err(|e| wire_error(&e))?, next_deadline })
}

/// Runs what a non-blocking engine call left on the blocking pool. Its
/// errors are logged: a dead-letter copy that fails is delivered again, and
/// a snapshot that fails is tried again at the next ack or consume.
pub(crate) fn follow_up(engine: &Arc<Engine>, f: gmq_engine::Followup) {
    if f.is_empty() {
        return;
    }
    let e = engine.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(err) = e.run_followup(f) {
            tracing::warn!(error = %err, "deferred consume/ack work failed");
        }
    });
}

/// The instant of a wall-clock deadline (ms since the epoch).
pub(crate) fn instant_of(deadline_ms: u64) -> Instant {
    let now = gmq_engine::Clock::now_ms(&gmq_engine::SystemClock);
    Instant::now() + std::time::Duration::from_millis(deadline_ms.saturating_sub(now))
}

/// When a waiting consumer should look again for messages that become due
/// without a publish: at `next_deadline` if it is still ahead, else (it is
/// due, yet the last consume found nothing for this consumer, e.g. a
/// filter skips it) only on the periodic recheck, so a due message meant
/// for others cannot make the waiter spin.
pub(crate) fn recheck_at(next_deadline: Option<u64>) -> Instant {
    const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
    let later = Instant::now() + RECHECK;
    match next_deadline {
        Some(d) if d > gmq_engine::Clock::now_ms(&gmq_engine::SystemClock) => instant_of(d).min(later),
        _ => later,
    }
}

fn messages_reply(id: Option<&Id>, got: &[Delivery]) -> bytes::Bytes {
    let list: Vec<_> = got.iter().map(delivered).collect();
    ok(id).messages("messages", &list).finish()
}

impl Session {
    /// Starts a request in order; its reply may complete later.
    pub(crate) async fn execute(&mut self, id: Option<Id>, req: Request) -> Slot {
        let op = req.op();
        let queue = req.queue().map(str::to_owned);
        match self.run(id.clone(), req).await {
            Ok(slot) => slot,
            Err(e) => {
                tracing::debug!(conn = self.conn, peer = %self.peer, op, queue = queue.as_deref().unwrap_or(""), code = %e.code, error = %e.message, "request failed");
                Slot::Ready(Reply::error(id.as_ref(), &e))
            }
        }
    }

    fn authorize(&self, req: &Request) -> Res<()> {
        if self.shared.config.auth.users.is_empty() || matches!(req, Request::Auth { .. }) {
            return Ok(());
        }
        let Some(user) = &self.user else {
            return Err(WireError::new(
                ErrorCode::Unauthorized,
                "authenticate first: {\"op\":\"auth\",\"user\":..,\"password\":..}",
            ));
        };
        let admin_op = matches!(
            req,
            Request::Create { .. }
                | Request::Delete { .. }
                | Request::Purge { .. }
                | Request::Bind { .. }
                | Request::Unbind { .. }
        );
        if admin_op && !user.admin {
            return Err(forbidden(format!("user '{}' may not {} (admin only)", user.name, req.op())));
        }
        if let Some(q) = req.queue() {
            if !user.may_use(q) {
                return Err(forbidden(format!("user '{}' may not use queue '{q}'", user.name)));
            }
        }
        if matches!(req, Request::PublishTopic { .. }) && !user.may_use_all() {
            return Err(forbidden(format!("user '{}' may not publish to topics (needs queues = [\"*\"])", user.name)));
        }
        Ok(())
    }

    async fn run(&mut self, id: Option<Id>, req: Request) -> Res<Slot> {
        if self.shared.is_shutting_down() {
            return Err(WireError::new(ErrorCode::ShuttingDown, "the server is shutting down"));
        }
        self.authorize(&req)?;
        let engine = self.shared.engine.clone();
        match req {
            Request::Ping => Ok(Slot::Ready(
                ok(id.as_ref()).field("version", &PROTOCOL_VERSION).field("server", env!("CARGO_PKG_VERSION")).finish(),
            )),
            Request::Auth { user, password } => {
                let found = self
                    .shared
                    .config
                    .auth
                    .users
                    .iter()
                    .find(|u| u.name == user && constant_eq(&u.password, &password));
                match found {
                    Some(u) => {
                        self.user = Some(u.clone());
                        self.shared.registry.authenticated(self.conn, &u.name);
                        Ok(Slot::Ready(ok(id.as_ref()).finish()))
                    }
                    None if self.shared.config.auth.users.is_empty() => Ok(Slot::Ready(ok(id.as_ref()).finish())),
                    None => {
                        self.user = None;
                        tracing::warn!(conn = self.conn, peer = %self.peer, user = %user, "authentication failed");
                        Err(WireError::new(ErrorCode::Unauthorized, "wrong user or password"))
                    }
                }
            }
            Request::Publish { queue, messages, batch } => {
                check_payloads(&self.shared, &messages)?;
                let max = self.shared.config.limits.max_batch;
                if messages.len() > max {
                    return Err(WireError::bad_request(format!(
                        "field 'messages' holds {} messages; max_batch is {max}",
                        messages.len()
                    )));
                }
                let q = queue_or_create(&engine, &queue).await?;
                let msgs: Vec<_> = messages.into_iter().map(convert::message).collect();
                // A plain publish only encodes under the log's lock, so it
                // runs here. Dedup and length limits take the queue's lock,
                // which housekeeping can hold across an fsync: those go to
                // the blocking pool (still in request order).
                let s = q.settings();
                let pending =
                    if msgs.iter().any(|m| m.msg_id.is_some()) || s.max_length.is_some() || s.max_bytes.is_some() {
                        let q = q.clone();
                        tokio::task::spawn_blocking(move || q.publish(&msgs))
                            .await
                            .map_err(|e| WireError::new(ErrorCode::Storage, format!("internal error: {e}")))?
                    } else {
                        q.publish(&msgs)
                    }
                    .map_err(|e| wire_error(&e))?;
                self.write_started(pending.completion());
                Ok(Slot::Wait(Box::pin(async move {
                    match pending.await {
                        Ok(p) => {
                            let r = ok(id.as_ref());
                            if batch {
                                let dups: Vec<u64> =
                                    p.offsets.iter().zip(&p.duplicate).filter(|(_, d)| **d).map(|(o, _)| *o).collect();
                                let r = r.field("offsets", &p.offsets);
                                if dups.is_empty() { r } else { r.field("duplicates", &dups) }.finish()
                            } else {
                                let r = r.field("offset", &p.offsets.first().copied().unwrap_or(0));
                                if p.duplicate.first() == Some(&true) { r.field("duplicate", &true) } else { r }
                                    .finish()
                            }
                        }
                        Err(e) => {
                            tracing::warn!(queue = %queue, error = %e, "publish not stored");
                            Reply::error(id.as_ref(), &wire_error(&e))
                        }
                    }
                })))
            }
            Request::PublishTopic { topic, message } => {
                check_payloads(&self.shared, std::slice::from_ref(&message))?;
                let msg = convert::message(message);
                let t = topic.clone();
                let routed = blocking(&engine, move |e| e.publish_topic(&t, &msg)).await?;
                for (_, p) in &routed {
                    if let Ok(p) = p {
                        self.write_started(p.completion());
                    }
                }
                Ok(Slot::Wait(Box::pin(async move {
                    let mut out = Vec::with_capacity(routed.len());
                    let mut failed = Vec::new();
                    let mut results = Vec::with_capacity(routed.len());
                    for (queue, pending) in routed {
                        let r = match pending {
                            Ok(p) => p.await,
                            Err(e) => Err(e),
                        };
                        results.push((queue, r));
                    }
                    for (queue, r) in results {
                        match r {
                            Ok(p) => {
                                let mut v =
                                    json!({ "queue": queue, "offset": p.offsets.first().copied().unwrap_or(0) });
                                if p.duplicate.first() == Some(&true) {
                                    v["duplicate"] = json!(true);
                                }
                                out.push(v);
                            }
                            Err(e) => failed.push((queue, e)),
                        }
                    }
                    if let Some((q, e)) = failed.first() {
                        let stored: Vec<_> = out.iter().filter_map(|v| v["queue"].as_str()).collect();
                        tracing::warn!(topic = %topic, queue = %q, error = %e, "topic publish not stored in every queue");
                        let w = wire_error(e);
                        return Reply::error(
                            id.as_ref(),
                            &WireError::new(w.code, format!("{} (stored in: [{}])", w.message, stored.join(", "))),
                        );
                    }
                    ok(id.as_ref()).field("routed", &out).finish()
                })))
            }
            Request::Consume(c) => self.consume(id, c).await,
            Request::Ack { queue, group, offsets } => {
                self.settle(&queue, &group, &offsets);
                let (pending, followup) =
                    engine.ack_nonblocking(&queue, &group, &offsets).map_err(|e| wire_error(&e))?;
                follow_up(&engine, followup);
                Ok(Slot::Wait(Box::pin(async move {
                    match pending.await {
                        Ok(n) => ok(id.as_ref()).field("acked", &n).finish(),
                        Err(e) => Reply::error(id.as_ref(), &wire_error(&e)),
                    }
                })))
            }
            Request::Nack { queue, group, offsets, delay_ms, reason } => {
                self.settle(&queue, &group, &offsets);
                let n =
                    blocking(&engine, move |e| e.nack(&queue, &group, &offsets, delay_ms, reason.as_deref())).await?;
                Ok(Slot::Ready(ok(id.as_ref()).field("nacked", &n).finish()))
            }
            Request::Subscribe(c) => self.subscribe(id, c).await,
            Request::Unsubscribe { sub } => match self.subs.remove(&sub) {
                Some(s) => {
                    s.stop().await;
                    Ok(Slot::Ready(ok(id.as_ref()).finish()))
                }
                None => Err(WireError::new(ErrorCode::NotFound, format!("no subscription '{sub}' on this connection"))),
            },
            Request::Create { queue, settings } => {
                let spec = convert::spec(&settings);
                let (_, created) = blocking(&engine, move |e| e.create_queue(&queue, &spec)).await?;
                Ok(Slot::Ready(ok(id.as_ref()).field("created", &created).finish()))
            }
            Request::Delete { queue } => {
                self.own_writes().await;
                blocking(&engine, move |e| e.delete_queue(&queue)).await?;
                Ok(Slot::Ready(ok(id.as_ref()).finish()))
            }
            Request::Purge { queue } => {
                self.own_writes().await;
                let removed = blocking(&engine, move |e| e.purge(&queue)).await?;
                Ok(Slot::Ready(ok(id.as_ref()).field("removed", &removed).finish()))
            }
            Request::Queues => {
                self.own_writes().await;
                let list = blocking(&engine, |e| Ok(e.list())).await?;
                let queues: Vec<_> = list
                    .into_iter()
                    .map(|q| {
                        let mut v = json!({ "name": q.name, "depth": q.depth, "bytes": q.bytes, "groups": q.groups, "consumers": q.consumers });
                        if let Some(r) = q.stopped {
                            v["stopped"] = json!(r);
                        }
                        if let Some(r) = q.quarantined {
                            v["quarantined"] = json!(r);
                        }
                        v
                    })
                    .collect();
                Ok(Slot::Ready(ok(id.as_ref()).field("queues", &queues).finish()))
            }
            Request::Stats { queue } => {
                self.own_writes().await;
                let q = queue.clone();
                let (s, settings) = blocking(&engine, move |e| {
                    let q = e.existing(&q)?;
                    Ok((q.stats(), q.settings().clone()))
                })
                .await?;
                let (publish_rate, deliver_rate) = self.shared.registry.rates(&queue);
                let groups: Vec<_> = s
                    .groups
                    .iter()
                    .map(|g| {
                        json!({
                            "name": g.name, "position": g.position, "cursor": g.cursor, "depth": g.depth,
                            "pending": g.pending, "waiting_retry": g.waiting_retry, "consumers": g.consumers,
                            "delivered": g.counters.delivered, "redelivered": g.counters.redelivered,
                            "acked": g.counters.acked, "dead_lettered": g.counters.dead_lettered, "expired": g.counters.expired,
                        })
                    })
                    .collect();
                let r = ok(id.as_ref())
                    .field("queue", &s.name)
                    .field("depth", &s.depth)
                    .field("bytes", &s.bytes)
                    .field("first_offset", &s.first_offset)
                    .field("next_offset", &s.next_offset)
                    .field("segments", &s.segments)
                    .field("published", &s.published)
                    .field("publish_rate", &publish_rate)
                    .field("deliver_rate", &deliver_rate)
                    .field("consumers", &s.consumers)
                    .field("groups", &groups)
                    .field("clients", &self.shared.registry.clients(&queue))
                    .field("settings", &convert::settings_json(&settings));
                Ok(Slot::Ready(r.finish()))
            }
            Request::Bind { queue, pattern } => {
                blocking(&engine, move |e| e.bind(&queue, &pattern)).await?;
                Ok(Slot::Ready(ok(id.as_ref()).finish()))
            }
            Request::Unbind { queue, pattern } => {
                let (q, p) = (queue.clone(), pattern.clone());
                blocking(&engine, move |e| e.unbind(&q, &p)).await.map_err(|e| match e.code {
                    ErrorCode::NotFound => {
                        WireError::new(e.code, format!("queue '{queue}' is not bound to pattern '{pattern}'"))
                    }
                    _ => e,
                })?;
                Ok(Slot::Ready(ok(id.as_ref()).finish()))
            }
        }
    }

    /// Remembers a publish that starts now (reads after it wait for it).
    fn write_started(&mut self, c: Completion) {
        while self.writes.front().is_some_and(Completion::is_done) {
            self.writes.pop_front();
        }
        self.writes.push_back(c);
    }

    /// Read your own writes: waits until the publishes this connection sent
    /// earlier have completed, so a read after them sees them (under
    /// `fsync = always` a message is readable only once synced). The engine
    /// completes every append (stored or failed), so this always ends.
    async fn own_writes(&mut self) {
        while let Some(c) = self.writes.pop_front() {
            c.await;
        }
    }

    /// Acks or nacks on this connection give its subscriptions credit.
    fn settle(&self, queue: &str, group: &str, offsets: &[u64]) {
        for s in self.subs.values() {
            if s.state.queue == queue && s.state.group == group {
                s.state.settled(offsets);
            }
        }
    }

    async fn consume(&mut self, id: Option<Id>, c: Consume) -> Res<Slot> {
        self.own_writes().await;
        if self.slots.is_closed() {
            // The writer is gone: taking messages now would hand them to no one.
            return Ok(Slot::Ready(messages_reply(id.as_ref(), &[])));
        }
        let deadline = Instant::now() + std::time::Duration::from_millis(c.wait_ms);
        let (mut signal, mut seen) = signal_of(&self.shared.engine, &c.queue)?;
        let first = consume_request(&self.shared, &self.consumes, self.consumer, &c).await?;
        // Attached for `stats` once the queue exists, at most so many
        // (queue, group) pairs per connection.
        if self.consumed.len() < MAX_ATTACHED
            && self.shared.engine.get(&c.queue).ok().flatten().is_some()
            && self.consumed.insert((c.queue.clone(), c.group.clone()))
        {
            self.shared.registry.attach(&c.queue, self.conn, &c.group, None);
        }
        if !first.got.is_empty() || c.wait_ms == 0 {
            return Ok(Slot::Ready(messages_reply(id.as_ref(), &first.got)));
        }
        // Long poll: the connection goes on with the requests after this one
        // while it waits; its reply still comes back in order.
        let shared = self.shared.clone();
        let (consumer, running) = (self.consumer, self.consumes.clone());
        let mut reader_done = self.reader_done.subscribe();
        let mut next_deadline = first.next_deadline;
        Ok(Slot::Wait(Box::pin(async move {
            loop {
                let wake = recheck_at(next_deadline).min(deadline);
                tokio::select! {
                    biased;
                    _ = shared.shutting_down() => return messages_reply(id.as_ref(), &[]),
                    // The client closed its side (or the connection is
                    // closing): taking messages for it now would hand them
                    // to a socket that may be gone.
                    _ = reader_done.wait_for(|v| *v) => return messages_reply(id.as_ref(), &[]),
                    _ = signal.changed(seen) => {}
                    _ = tokio::time::sleep_until(wake) => {}
                }
                match signal_of(&shared.engine, &c.queue) {
                    Ok((s, g)) => (signal, seen) = (s, g),
                    Err(e) => return Reply::error(id.as_ref(), &e),
                }
                match consume_request(&shared, &running, consumer, &c).await {
                    Ok(r) if !r.got.is_empty() || Instant::now() >= deadline => {
                        return messages_reply(id.as_ref(), &r.got);
                    }
                    Ok(r) => next_deadline = r.next_deadline,
                    Err(e) => return Reply::error(id.as_ref(), &e),
                }
            }
        })))
    }

    async fn subscribe(&mut self, id: Option<Id>, c: Consume) -> Res<Slot> {
        // Subscriptions that ended by themselves (an error) no longer count.
        self.subs.retain(|_, s| !s.is_finished());
        if self.subs.len() >= self.shared.config.limits.max_subscriptions {
            return Err(WireError::bad_request(format!(
                "this connection has {} subscriptions (max_subscriptions)",
                self.subs.len()
            )));
        }
        let sub_id = format!("s{}", self.shared.next_id());
        let (tx, rx) = oneshot::channel();
        let spec = SubSpec {
            id: sub_id.clone(),
            conn: self.conn,
            queue: c.queue.clone(),
            group: c.group.clone(),
            prefetch: usize::try_from(c.max).unwrap_or(usize::MAX).min(self.shared.config.limits.max_batch),
            ack: convert::ack_mode(c.ack),
            events: c.events,
            from: c.from.map(convert::start),
        };
        self.shared.registry.attach(&c.queue, self.conn, &c.group, Some(&sub_id));
        let sub = subscription::start(self.shared.clone(), spec, self.pushes.clone(), rx);
        self.subs.insert(sub_id.clone(), sub);
        tracing::debug!(conn = self.conn, peer = %self.peer, queue = %c.queue, group = %c.group, sub = %sub_id, "subscribed");
        Ok(Slot::Then(ok(id.as_ref()).field("sub", &sub_id).finish(), tx))
    }

    /// A GMQ request: `P` publishes, `S` consumes one message (auto ack,
    /// group `default`), `L` is the queue's depth.
    pub(crate) async fn legacy(&mut self, l: LegacyRequest) -> bytes::Bytes {
        let r = self.legacy_run(&l).await;
        if let Err(e) = &r {
            tracing::debug!(conn = self.conn, peer = %self.peer, operation = %l.operation, queue = %l.queue, code = %e.code, "GMQ request failed");
        }
        match r {
            Ok(payload) => legacy_reply(&l.operation, &l.queue, &payload, None),
            Err(e) => legacy_reply(&l.operation, &l.queue, "", Some(&format!("{}: {}", e.code, e.message))),
        }
    }

    async fn legacy_run(&mut self, l: &LegacyRequest) -> Res<String> {
        if !gmq_protocol::valid_name(&l.queue) {
            return Err(WireError::new(ErrorCode::InvalidName, format!("invalid queue name {:?}", l.queue)));
        }
        let as_request = match l.operation.as_str() {
            "P" => Request::Publish { queue: l.queue.clone(), messages: Vec::new(), batch: false },
            "S" | "L" => Request::Stats { queue: l.queue.clone() },
            op => return Err(WireError::bad_request(format!("operation {op:?}: expected \"P\", \"S\" or \"L\""))),
        };
        self.authorize(&as_request)?;
        self.own_writes().await;
        if self.shared.is_shutting_down() {
            return Err(WireError::new(ErrorCode::ShuttingDown, "the server is shutting down"));
        }
        let engine = self.shared.engine.clone();
        match l.operation.as_str() {
            "P" => {
                let payload = gmq_protocol::decode_base64("payload", &l.payload)?;
                let messages = vec![WireMessage { payload, ..WireMessage::default() }];
                check_payloads(&self.shared, &messages)?;
                let q = queue_or_create(&engine, &l.queue).await?;
                let msgs: Vec<_> = messages.into_iter().map(convert::message).collect();
                q.publish(&msgs).map_err(|e| wire_error(&e))?.await.map_err(|e| wire_error(&e))?;
                Ok(String::new())
            }
            "S" => {
                let c = Consume {
                    queue: l.queue.clone(),
                    group: gmq_protocol::DEFAULT_GROUP.into(),
                    max: 1,
                    wait_ms: 0,
                    ack: gmq_protocol::AckMode::Auto,
                    events: None,
                    from: None,
                };
                let r = consume_request(&self.shared, &self.consumes, self.consumer, &c).await?;
                Ok(r.got.first().map(|d| encode_payload(&d.record.message.payload)).unwrap_or_default())
            }
            _ => {
                let q = l.queue.clone();
                blocking(&engine, move |e| match e.get(&q) {
                    Ok(Some(q)) => Ok(q.stats().depth.to_string()),
                    Ok(None) | Err(Error::NotFound(_)) => Ok("0".into()),
                    Err(e) => Err(e),
                })
                .await
            }
        }
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}
