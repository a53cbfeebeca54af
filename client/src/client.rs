//! The connection: a writer shared by every request (pipelining) and a
//! reader task that hands each reply to its request by id, and each push
//! frame to its subscription.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gmq_protocol::ErrorCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    table: Arc<Mutex<Table>>,
    next_id: AtomicU64,
    opts: Options,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
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

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
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
        let table = Arc::new(Mutex::new(Table::default()));
        let reader = tokio::spawn(read_loop(r, table.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                writer: tokio::sync::Mutex::new(w),
                table,
                next_id: AtomicU64::new(1),
                opts,
                reader,
            }),
        })
    }

    /// Sends any request (an object with `op`) and returns the reply's
    /// object on `ok: true`; a refusal is [`Error::Server`].
    pub async fn request(&self, req: Value) -> Result<Value, Error> {
        self.send(req, None, None).await
    }

    async fn send(&self, mut req: Value, pushes: Option<Pushes>, extra_wait: Option<Duration>) -> Result<Value, Error> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        req["id"] = json!(id);
        let mut line = serde_json::to_vec(&req).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        {
            let mut t = lock(&self.inner.table);
            if let Some(e) = &t.closed {
                return Err(e.clone());
            }
            let w = match pushes {
                Some(p) => Waiter::Subscribe(tx, p),
                None => Waiter::Reply(tx),
            };
            t.waiters.insert(id, w);
        }
        let written = self.inner.writer.lock().await.write_all(&line).await;
        if let Err(e) = written {
            lock(&self.inner.table).waiters.remove(&id);
            return Err(Error::Io(format!("sending: {e}")));
        }
        let reply = match self.inner.opts.request_timeout.map(|t| t + extra_wait.unwrap_or_default()) {
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r,
                Err(_) => {
                    lock(&self.inner.table).waiters.remove(&id);
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
        let mut req = json!({"op":"publish","queue":queue});
        if let Value::Object(o) = &mut req {
            m.fields(o);
        }
        let v = self.request(req).await?;
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

async fn read_loop(r: OwnedReadHalf, table: Arc<Mutex<Table>>) {
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let why = loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) => break Error::Closed,
            Ok(_) => {}
            Err(e) => break Error::Io(format!("receiving: {e}")),
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => break Error::Protocol(format!("the server sent invalid JSON ({e})")),
        };
        if v.get("ok").is_none() {
            if let Some(sub) = v.get("sub").and_then(Value::as_str) {
                let push = match (v.get("message"), v.get("error")) {
                    (Some(m), _) => Delivery::from_json(m),
                    (None, Some(e)) => Err(Error::Server {
                        code: e["code"].as_str().and_then(ErrorCode::parse).unwrap_or(ErrorCode::Storage),
                        message: e["message"].as_str().unwrap_or_default().to_owned(),
                    }),
                    _ => Err(Error::Protocol(format!("push frame without message: {v}"))),
                };
                let ended = push.is_err();
                let tx = {
                    let mut t = lock(&table);
                    if ended {
                        t.subs.remove(sub)
                    } else {
                        t.subs.get(sub).cloned()
                    }
                };
                if let Some(tx) = tx {
                    // Bounded: a subscriber that does not read slows the
                    // connection (and the server stops pushing).
                    let _ = tx.send(push).await;
                }
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
        let w = lock(&table).waiters.remove(&id);
        match w {
            Some(Waiter::Reply(tx)) => {
                let _ = tx.send(Ok(v));
            }
            Some(Waiter::Subscribe(tx, pushes)) => {
                if let Some(sub) = v.get("sub").and_then(Value::as_str) {
                    lock(&table).subs.insert(sub.to_owned(), pushes);
                }
                let _ = tx.send(Ok(v));
            }
            None => {}
        }
    };
    let (waiters, subs) = {
        let mut t = lock(&table);
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
