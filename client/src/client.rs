//! The connection: every request appends its line to one outbox, which a
//! writer task sends with as few writes as it can (pipelining: requests
//! issued together leave in one segment), and a reader task hands each
//! reply to its request by id, and each push frame to its subscription.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use gmq_protocol::ErrorCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::types::{ConsumeOptions, Delivery, Error, Message, Published, QueueInfo, Routed};

/// Connection options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Give up connecting after this long. Default 5 s.
    pub connect_timeout: Duration,
    /// Give up waiting for a reply after this long (`None`: wait as long as
    /// the connection lives). Default 30 s. A `consume` with `wait_ms`
    /// gets its wait on top.
    pub request_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options { connect_timeout: Duration::from_secs(5), request_timeout: Some(Duration::from_secs(30)) }
    }
}

type Reply = Result<Value, Error>;
type Pushes = mpsc::Sender<Result<Delivery, Error>>;

enum Waiter {
    Reply(oneshot::Sender<Reply>),
    /// A subscribe: its push frames go to `pushes` from the frame after its
    /// reply on (installed by the reader, so none is missed).
    Subscribe(oneshot::Sender<Reply>, Pushes),
}

#[derive(Default)]
struct Table {
    waiters: HashMap<u64, Waiter>,
    subs: HashMap<String, Pushes>,
    closed: Option<Error>,
}

/// What the tasks and the requests share.
#[derive(Default)]
struct Shared {
    table: Mutex<Table>,
    /// Request lines not yet handed to the socket.
    outbox: Mutex<Vec<u8>>,
    /// Wakes the writer when the outbox gains a line.
    wake: tokio::sync::Notify,
}

struct Inner {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    opts: Options,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A connection to a GMQ server. Clones share it.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

fn lock<T>(t: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connects to `addr` (`host:port`) with the default options.
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        Client::connect_with(addr, Options::default()).await
    }

    /// Connects with `opts`.
    pub async fn connect_with(addr: &str, opts: Options) -> Result<Client, Error> {
        let sock = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(opts.connect_timeout))?
            .map_err(|e| Error::Io(format!("connecting to {addr}: {e}")))?;
        let _ = sock.set_nodelay(true);
        let (r, w) = sock.into_split();
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_loop(r, shared.clone()));
        let writer = tokio::spawn(write_loop(w, shared.clone()));
        Ok(Client { inner: Arc::new(Inner { shared, next_id: AtomicU64::new(1), opts, reader, writer }) })
    }

    /// Sends any request (an object with `op`) and returns the reply's
    /// object on `ok: true`; a refusal is [`Error::Server`].
    pub async fn request(&self, req: Value) -> Result<Value, Error> {
        self.send(req, None, None).await
    }

    async fn send(&self, mut req: Value, pushes: Option<Pushes>, extra_wait: Option<Duration>) -> Result<Value, Error> {
        self.send_with(
            move |id, out| {
                req["id"] = json!(id);
                serde_json::to_writer(&mut *out, &req).map_err(|e| Error::Protocol(e.to_string()))
            },
            pushes,
            extra_wait,
        )
        .await
    }

    /// Sends the line `write` appends (given the request's id; the newline
    /// is added) and waits for its reply.
    async fn send_with(
        &self,
        write: impl FnOnce(u64, &mut Vec<u8>) -> Result<(), Error>,
        pushes: Option<Pushes>,
        extra_wait: Option<Duration>,
    ) -> Result<Value, Error> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = &self.inner.shared;
        let (tx, rx) = oneshot::channel();
        {
            let mut t = lock(&shared.table);
            if let Some(e) = &t.closed {
                return Err(e.clone());
            }
            let w = match pushes {
                Some(p) => Waiter::Subscribe(tx, p),
                None => Waiter::Reply(tx),
            };
            t.waiters.insert(id, w);
        }
        {
            let mut out = lock(&shared.outbox);
            let start = out.len();
            if let Err(e) = write(id, &mut out) {
                out.truncate(start);
                drop(out);
                lock(&shared.table).waiters.remove(&id);
                return Err(e);
            }
            out.push(b'\n');
        }
        shared.wake.notify_one();
        let reply = match self.inner.opts.request_timeout.map(|t| t + extra_wait.unwrap_or_default()) {
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r,
                Err(_) => {
                    lock(&shared.table).waiters.remove(&id);
                    return Err(Error::Timeout(t));
                }
            },
            None => rx.await,
        };
        let v = reply.map_err(|_| Error::Closed)??;
        if v.get("ok") == Some(&json!(true)) {
            return Ok(v);
        }
        let code = v.pointer("/error/code").and_then(Value::as_str).unwrap_or_default();
        let message = v.pointer("/error/message").and_then(Value::as_str).unwrap_or_default().to_owned();
        Err(match ErrorCode::parse(code) {
            Some(code) => Error::Server { code, message },
            None => Error::Protocol(format!("unknown error code {code:?}: {message}")),
        })
    }

    /// `ping`: the protocol version.
    pub async fn ping(&self) -> Result<u64, Error> {
        let v = self.request(json!({"op":"ping"})).await?;
        v["version"].as_u64().ok_or_else(|| Error::Protocol(format!("ping reply without version: {v}")))
    }

    /// `auth`.
    pub async fn auth(&self, user: &str, password: &str) -> Result<(), Error> {
        self.request(json!({"op":"auth","user":user,"password":password})).await.map(drop)
    }

    /// Publishes one message (the queue is created if missing).
    pub async fn publish(&self, queue: &str, m: Message) -> Result<Published, Error> {
        let v = if m.is_plain() {
            // The common case, written straight into the outbox: no JSON
            // value, and the base64 encoded in place.
            let write = |id: u64, out: &mut Vec<u8>| {
                out.extend_from_slice(b"{\"op\":\"publish\",\"queue\":");
                serde_json::to_writer(&mut *out, queue).map_err(|e| Error::Protocol(e.to_string()))?;
                out.extend_from_slice(format!(",\"id\":{id},\"payload\":\"").as_bytes());
                gmq_protocol::b64::encode_append(&m.payload, out);
                out.extend_from_slice(b"\"}");
                Ok(())
            };
            self.send_with(write, None, None).await?
        } else {
            let mut req = json!({"op":"publish","queue":queue});
            if let Value::Object(o) = &mut req {
                m.fields(o);
            }
            self.request(req).await?
        };
        Ok(Published { offset: u64_of(&v, "offset")?, duplicate: v["duplicate"] == json!(true) })
    }

    /// Publishes a batch atomically (all or none); their offsets.
    pub async fn publish_batch(&self, queue: &str, msgs: &[Message]) -> Result<Vec<u64>, Error> {
        let list: Vec<Value> = msgs
            .iter()
            .map(|m| {
                let mut o = serde_json::Map::new();
                m.fields(&mut o);
                Value::Object(o)
            })
            .collect();
        let v = self.request(json!({"op":"publish","queue":queue,"messages":list})).await?;
        offsets_of(&v["offsets"])
    }

    /// Publishes to every queue bound to a pattern matching `topic`.
    pub async fn publish_topic(&self, topic: &str, m: Message) -> Result<Vec<Routed>, Error> {
        let mut req = json!({"op":"publish","topic":topic});
        if let Value::Object(o) = &mut req {
            m.fields(o);
        }
        let v = self.request(req).await?;
        let list = v["routed"].as_array().ok_or_else(|| Error::Protocol(format!("no routed list: {v}")))?;
        list.iter()
            .map(|r| {
                Ok(Routed {
                    queue: r["queue"].as_str().unwrap_or_default().to_owned(),
                    offset: u64_of(r, "offset")?,
                    duplicate: r["duplicate"] == json!(true),
                })
            })
            .collect()
    }

    /// Consumes (an empty list when nothing is available).
    pub async fn consume(&self, queue: &str, o: &ConsumeOptions) -> Result<Vec<Delivery>, Error> {
        let v = self.send(o.request("consume", queue), None, Some(Duration::from_millis(o.wait_ms))).await?;
        let list = v["messages"].as_array().ok_or_else(|| Error::Protocol(format!("no messages list: {v}")))?;
        list.iter().map(Delivery::from_json).collect()
    }

    /// Acks offsets of `group`; how many were acked.
    pub async fn ack(&self, queue: &str, group: &str, offsets: &[u64]) -> Result<u64, Error> {
        let v = self.request(json!({"op":"ack","queue":queue,"group":group,"offsets":offsets})).await?;
        Ok(v["acked"].as_u64().unwrap_or(0))
    }

    /// Nacks offsets of `group`: delivered again after `delay_ms`.
    pub async fn nack(&self, queue: &str, group: &str, offsets: &[u64], delay_ms: u64) -> Result<u64, Error> {
        let v = self
            .request(json!({"op":"nack","queue":queue,"group":group,"offsets":offsets,"delay_ms":delay_ms}))
            .await?;
        Ok(v["nacked"].as_u64().unwrap_or(0))
    }

    /// Subscribes: deliveries are pushed while fewer than `o.max` are
    /// unacked (manual) or unread (auto).
    pub async fn subscribe(&self, queue: &str, o: &ConsumeOptions) -> Result<Subscription, Error> {
        let cap = usize::try_from(o.max.clamp(1, 4096)).unwrap_or(4096);
        let (tx, rx) = mpsc::channel(cap);
        let v = self.send(o.request("subscribe", queue), Some(tx), None).await?;
        let sub = v["sub"].as_str().ok_or_else(|| Error::Protocol(format!("no sub id: {v}")))?.to_owned();
        Ok(Subscription { client: self.clone(), sub, queue: queue.to_owned(), group: o.group.clone(), rx })
    }

    /// Creates a queue with settings (an object of PROTOCOL.md's settings,
    /// e.g. `json!({"ack_timeout_ms": 300})`); whether it was created.
    pub async fn create(&self, queue: &str, settings: Value) -> Result<bool, Error> {
        let mut req = json!({"op":"create","queue":queue});
        if let (Value::Object(r), Value::Object(s)) = (&mut req, settings) {
            r.extend(s);
        }
        Ok(self.request(req).await?["created"] == json!(true))
    }

    /// Deletes a queue.
    pub async fn delete(&self, queue: &str) -> Result<(), Error> {
        self.request(json!({"op":"delete","queue":queue})).await.map(drop)
    }

    /// Purges a queue; how many messages were removed.
    pub async fn purge(&self, queue: &str) -> Result<u64, Error> {
        u64_of(&self.request(json!({"op":"purge","queue":queue})).await?, "removed")
    }

    /// Every queue.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let v = self.request(json!({"op":"queues"})).await?;
        let list = v["queues"].as_array().ok_or_else(|| Error::Protocol(format!("no queues list: {v}")))?;
        Ok(list
            .iter()
            .map(|q| QueueInfo {
                name: q["name"].as_str().unwrap_or_default().to_owned(),
                depth: q["depth"].as_u64().unwrap_or(0),
                bytes: q["bytes"].as_u64().unwrap_or(0),
                groups: q["groups"]
                    .as_array()
                    .map(|g| g.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
                consumers: q["consumers"].as_u64().unwrap_or(0),
            })
            .collect())
    }

    /// A queue's figures, as the server reports them.
    pub async fn stats(&self, queue: &str) -> Result<Value, Error> {
        self.request(json!({"op":"stats","queue":queue})).await
    }

    /// Binds `queue` to topics matching `pattern`.
    pub async fn bind(&self, queue: &str, pattern: &str) -> Result<(), Error> {
        self.request(json!({"op":"bind","queue":queue,"pattern":pattern})).await.map(drop)
    }

    /// Removes a binding.
    pub async fn unbind(&self, queue: &str, pattern: &str) -> Result<(), Error> {
        self.request(json!({"op":"unbind","queue":queue,"pattern":pattern})).await.map(drop)
    }
}

fn u64_of(v: &Value, k: &str) -> Result<u64, Error> {
    v[k].as_u64().ok_or_else(|| Error::Protocol(format!("reply without {k}: {v}")))
}

fn offsets_of(v: &Value) -> Result<Vec<u64>, Error> {
    let list = v.as_array().ok_or_else(|| Error::Protocol(format!("no offsets list: {v}")))?;
    list.iter().map(|o| o.as_u64().ok_or_else(|| Error::Protocol(format!("bad offset {o}")))).collect()
}

/// Pushed deliveries of one subscription.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    sub: String,
    queue: String,
    group: String,
    rx: mpsc::Receiver<Result<Delivery, Error>>,
}

impl Subscription {
    /// The server's id for it.
    pub fn id(&self) -> &str {
        &self.sub
    }

    /// The next delivery; `None` once the subscription or the connection
    /// has ended (an error first says why).
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        self.rx.recv().await
    }

    /// The next delivery if one has already arrived; `None` when none is
    /// waiting (or the subscription has ended: [`next`](Self::next) says so).
    pub fn try_next(&mut self) -> Option<Result<Delivery, Error>> {
        self.rx.try_recv().ok()
    }

    /// Acks deliveries (on the subscription's connection, so its credit
    /// comes back at once).
    pub async fn ack(&self, offsets: &[u64]) -> Result<u64, Error> {
        self.client.ack(&self.queue, &self.group, offsets).await
    }

    /// Nacks deliveries: delivered again after `delay_ms`.
    pub async fn nack(&self, offsets: &[u64], delay_ms: u64) -> Result<u64, Error> {
        self.client.nack(&self.queue, &self.group, offsets, delay_ms).await
    }

    /// Ends it; unacked deliveries go back to the group.
    pub async fn unsubscribe(self) -> Result<(), Error> {
        self.client.request(json!({"op":"unsubscribe","sub":self.sub})).await.map(drop)
    }
}

/// Sends what the outbox holds, all of it in one write when it can.
async fn write_loop(mut w: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut spare = Vec::new();
    loop {
        shared.wake.notified().await;
        loop {
            let buf = std::mem::replace(&mut *lock(&shared.outbox), std::mem::take(&mut spare));
            if buf.is_empty() {
                spare = buf;
                break;
            }
            if let Err(e) = w.write_all(&buf).await {
                close(&shared, Error::Io(format!("sending: {e}")));
                return;
            }
            spare = buf;
            spare.clear();
        }
    }
}

/// A subscription's push frame, read without building a JSON value: the
/// payload is borrowed from the line and decoded once.
#[derive(serde::Deserialize)]
struct PushFrame<'a> {
    #[serde(borrow)]
    sub: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    message: WireDelivery<'a>,
}

#[derive(serde::Deserialize)]
struct WireDelivery<'a> {
    offset: u64,
    #[serde(borrow)]
    payload: std::borrow::Cow<'a, str>,
    event: Option<String>,
    key: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    timestamp_ms: u64,
    #[serde(default = "one")]
    deliveries: u32,
    msg_id: Option<String>,
}

fn one() -> u32 {
    1
}

impl WireDelivery<'_> {
    fn into_delivery(self) -> Result<Delivery, Error> {
        let payload = gmq_protocol::b64::decode(self.payload.as_bytes())
            .ok_or_else(|| Error::Protocol(format!("delivered message {}: payload is not base64", self.offset)))?;
        Ok(Delivery {
            offset: self.offset,
            payload: payload.into(),
            event: self.event,
            key: self.key,
            headers: self.headers,
            timestamp_ms: self.timestamp_ms,
            deliveries: self.deliveries,
            msg_id: self.msg_id,
        })
    }
}

/// The push frame of a message with only a payload, as the server writes
/// it (`{"sub":"..","message":{"offset":N,"payload":"..","timestamp_ms":N,
/// "deliveries":N}}`), read by position: no JSON parser, no UTF-8 check of
/// the payload. Anything else (other fields, escapes, other spacing) is
/// `None`, and the JSON parser reads it.
fn plain_push(line: &[u8]) -> Option<(&str, Result<Delivery, Error>)> {
    fn number(b: &[u8]) -> Option<(u64, &[u8])> {
        let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let v = std::str::from_utf8(&b[..n]).ok()?.parse().ok()?;
        Some((v, &b[n..]))
    }
    fn quoted(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let q = memchr::memchr(b'"', b)?;
        let (inside, rest) = b.split_at(q);
        (!inside.contains(&b'\\')).then_some((inside, &rest[1..]))
    }
    let (sub, rest) = quoted(line.strip_prefix(b"{\"sub\":\"")?)?;
    let (offset, rest) = number(rest.strip_prefix(b",\"message\":{\"offset\":")?)?;
    let (payload, rest) = quoted(rest.strip_prefix(b",\"payload\":\"")?)?;
    let (timestamp_ms, rest) = number(rest.strip_prefix(b",\"timestamp_ms\":")?)?;
    let (deliveries, rest) = number(rest.strip_prefix(b",\"deliveries\":")?)?;
    if rest != b"}}\n" && rest != b"}}" {
        return None;
    }
    let sub = std::str::from_utf8(sub).ok()?;
    let d = match gmq_protocol::b64::decode(payload) {
        Some(p) => Ok(Delivery {
            offset,
            payload: p.into(),
            event: None,
            key: None,
            headers: Default::default(),
            timestamp_ms,
            deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
            msg_id: None,
        }),
        None => Err(Error::Protocol(format!("delivered message {offset}: payload is not base64"))),
    };
    Some((sub, d))
}

/// Hands a push to its subscription: `false` if the subscription is gone.
async fn push(shared: &Shared, sub: &str, push: Result<Delivery, Error>) {
    let ended = push.is_err();
    let tx = {
        let mut t = lock(&shared.table);
        if ended {
            t.subs.remove(sub)
        } else {
            t.subs.get(sub).cloned()
        }
    };
    if let Some(tx) = tx {
        // Bounded: a subscriber that does not read slows the connection
        // (and the server stops pushing).
        let _ = tx.send(push).await;
    }
}

async fn read_loop(mut r: OwnedReadHalf, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut scanned = 0;
    let why = 'conn: loop {
        let line = match memchr::memchr(b'\n', &buf[scanned..]) {
            Some(i) => {
                let end = scanned + i;
                scanned = 0;
                buf.split_to(end + 1)
            }
            None => {
                scanned = buf.len();
                if buf.capacity() - buf.len() < 16 << 10 {
                    buf.reserve(64 << 10);
                }
                match r.read_buf(&mut buf).await {
                    Ok(0) => break Error::Closed,
                    Ok(_) => continue,
                    Err(e) => break Error::Io(format!("receiving: {e}")),
                }
            }
        };
        if line.starts_with(b"{\"sub\":") {
            if let Some((sub, d)) = plain_push(&line) {
                push(&shared, sub, d).await;
                continue 'conn;
            }
            if let Ok(f) = serde_json::from_slice::<PushFrame<'_>>(&line) {
                let sub = f.sub.clone().into_owned();
                push(&shared, &sub, f.message.into_delivery()).await;
                continue 'conn;
            }
        }
        let v: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => break Error::Protocol(format!("the server sent invalid JSON ({e})")),
        };
        if v.get("ok").is_none() {
            if let Some(sub) = v.get("sub").and_then(Value::as_str) {
                let p = match (v.get("message"), v.get("error")) {
                    (Some(m), _) => Delivery::from_json(m),
                    (None, Some(e)) => Err(Error::Server {
                        code: e["code"].as_str().and_then(ErrorCode::parse).unwrap_or(ErrorCode::Storage),
                        message: e["message"].as_str().unwrap_or_default().to_owned(),
                    }),
                    _ => Err(Error::Protocol(format!("push frame without message: {v}"))),
                };
                push(&shared, sub, p).await;
                continue;
            }
        }
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            // A reply without our id: the server refused the connection
            // (too_many_connections) or could not read a line.
            let msg = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("reply without id").to_owned();
            break match v.pointer("/error/code").and_then(Value::as_str).and_then(ErrorCode::parse) {
                Some(code) => Error::Server { code, message: msg },
                None => Error::Protocol(msg),
            };
        };
        let w = lock(&shared.table).waiters.remove(&id);
        match w {
            Some(Waiter::Reply(tx)) => {
                let _ = tx.send(Ok(v));
            }
            Some(Waiter::Subscribe(tx, pushes)) => {
                if let Some(sub) = v.get("sub").and_then(Value::as_str) {
                    lock(&shared.table).subs.insert(sub.to_owned(), pushes);
                }
                let _ = tx.send(Ok(v));
            }
            None => {}
        }
    };
    close(&shared, why);
}

/// Ends the connection for every request and subscription: each hears why.
fn close(shared: &Shared, why: Error) {
    let (waiters, subs) = {
        let mut t = lock(&shared.table);
        if t.closed.is_some() {
            return;
        }
        t.closed = Some(why.clone());
        (std::mem::take(&mut t.waiters), std::mem::take(&mut t.subs))
    };
    for (_, w) in waiters {
        let (Waiter::Reply(tx) | Waiter::Subscribe(tx, _)) = w;
        let _ = tx.send(Err(why.clone()));
    }
    for (_, tx) in subs {
        let _ = tx.try_send(Err(why.clone()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    fn by_json(line: &[u8]) -> (String, Delivery) {
        let f: PushFrame<'_> = serde_json::from_slice(line).unwrap();
        (f.sub.clone().into_owned(), f.message.into_delivery().unwrap())
    }

    /// The positional reader takes exactly the frames the server writes for
    /// plain messages, with the JSON parser's result, and leaves the rest.
    #[test]
    fn plain_push_agrees_with_the_json_reader() {
        let raw: Vec<u8> = (0..=255u8).collect();
        let m = gmq_protocol::reply::Delivered {
            offset: 42,
            payload: &raw,
            event: None,
            key: None,
            headers: &[],
            timestamp_ms: 1_763_800_000_123,
            deliveries: 3,
            ttl_ms: None,
            msg_id: None,
        };
        let line = gmq_protocol::push_frame("s7", &m);
        let (sub, d) = plain_push(&line).expect("a plain frame");
        assert_eq!((sub.to_owned(), d.unwrap()), by_json(&line));
        assert_eq!(&by_json(&line).1.payload[..], &raw[..]);

        let headers = [("k".to_owned(), "v".to_owned())];
        for other in [
            gmq_protocol::reply::Delivered { event: Some("e"), ..m },
            gmq_protocol::reply::Delivered { headers: &headers, ..m },
            gmq_protocol::reply::Delivered { msg_id: Some("id"), ..m },
            gmq_protocol::reply::Delivered { ttl_ms: Some(5), ..m },
        ] {
            let line = gmq_protocol::push_frame("s7", &other);
            assert!(plain_push(&line).is_none(), "{}", String::from_utf8_lossy(&line));
        }
        let escaped = gmq_protocol::push_frame("s\"7", &m);
        assert!(plain_push(&escaped).is_none());
        assert_eq!(by_json(&escaped).0, "s\"7");
        let bad = br#"{"sub":"s1","message":{"offset":1,"payload":"QR==","timestamp_ms":1,"deliveries":1}}"#;
        assert!(matches!(plain_push(bad), Some((_, Err(Error::Protocol(_))))));
    }
}
