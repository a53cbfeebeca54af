//! One producer and one consumer shape for every system, each written with
//! that system's own Rust client: `gmq-client`, `redis` (Streams),
//! `async-nats` (JetStream) and `lapin` (AMQP 0-9-1). The workloads only
//! see [`Producer`] and [`Consumer`], so every system runs the same loop.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

/// A boxed future, as the trait objects return them.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// One connection that publishes.
pub trait Producer: Send + Sync {
    /// Publishes one message. Nothing is sent before the future is first
    /// polled; it resolves when the system has acknowledged the message
    /// (what that promises differs: see [`crate::systems::System::promise`]).
    fn publish(&self, payload: Bytes) -> Fut<'static, ()>;
}

/// One connection that consumes with manual acks, in a group shared by
/// every consumer of the queue (competing consumers).
pub trait Consumer: Send {
    /// Waits up to `wait` for a delivery, then takes what else has already
    /// arrived, up to `max` in all. Empty when nothing came in time.
    fn recv(&mut self, max: usize, wait: Duration) -> Fut<'_, Vec<Bytes>>;
    /// Acks every delivery `recv` returned so far. A system whose acks are
    /// answered may leave the answer outstanding (or send the ack with the
    /// next `recv`); [`finish`](Consumer::finish) waits for all of them.
    fn ack(&mut self) -> Fut<'_, ()>;
    /// Sends any ack still held back and waits for every outstanding answer.
    fn finish(&mut self) -> Fut<'_, ()>;
}

/// Where a system listens, and how a cell's queue is made there.
#[derive(Debug, Clone)]
pub enum Target {
    /// `gmq-server`; queues take the server's `--fsync`.
    Gmq { addr: String },
    /// `redis-server`: a stream per queue, a consumer group per stream.
    Redis { url: String },
    /// `nats-server -js`: a file-storage stream per queue, a durable pull
    /// consumer per stream.
    Nats { url: String },
    /// RabbitMQ: a durable queue of this type, persistent messages,
    /// publisher confirms.
    Rabbit { url: String, quorum: bool },
}

/// The consumer group every consumer joins.
const GROUP: &str = "bench";

/// Outstanding ack answers a consumer keeps before it waits for the oldest
/// (an ack is answered once stored, an fsync later under `always`; the
/// consumer goes on receiving meanwhile).
const ACKS_IN_FLIGHT: usize = 64;

impl Target {
    /// Makes the queue (stream) `queue` and, for consume cells, its group,
    /// starting at the oldest message.
    pub async fn setup(&self, queue: &str) -> Result<()> {
        match self {
            Target::Gmq { addr } => {
                let c = gmq_client::Client::connect(addr).await?;
                c.create(queue, serde_json::json!({})).await?;
            }
            Target::Redis { url } => {
                let mut c = redis_connect(url).await?;
                let _: () = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(queue)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut c)
                    .await
                    .context("XGROUP CREATE")?;
            }
            Target::Nats { url } => {
                let js = async_nats::jetstream::new(nats_connect(url).await?);
                let stream = js
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: queue.to_owned(),
                        subjects: vec![queue.to_owned()],
                        storage: async_nats::jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow!("creating stream {queue}: {e}"))?;
                stream
                    .create_consumer(async_nats::jetstream::consumer::pull::Config {
                        durable_name: Some(GROUP.to_owned()),
                        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                        max_ack_pending: 100_000,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow!("creating consumer on {queue}: {e}"))?;
            }
            Target::Rabbit { url, quorum } => {
                let conn = rabbit_connect(url).await?;
                let ch = conn.create_channel().await?;
                let mut args = lapin::types::FieldTable::default();
                let kind = if *quorum { "quorum" } else { "classic" };
                args.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString(kind.into()));
                ch.queue_declare(
                    queue.into(),
                    lapin::options::QueueDeclareOptions { durable: true, ..Default::default() },
                    args,
                )
                .await
                .with_context(|| format!("declaring {kind} queue {queue}"))?;
                let _ = conn.close(200, "done".into()).await;
            }
        }
        Ok(())
    }

    /// A new connection that publishes to `queue`.
    pub async fn producer(&self, queue: &str) -> Result<Box<dyn Producer>> {
        Ok(match self {
            Target::Gmq { addr } => {
                Box::new(GmqProducer { client: gmq_client::Client::connect(addr).await?, queue: queue.into() })
            }
            Target::Redis { url } => Box::new(RedisProducer { conn: redis_connect(url).await?, key: queue.into() }),
            Target::Nats { url } => Box::new(NatsProducer {
                js: async_nats::jetstream::new(nats_connect(url).await?),
                subject: queue.into(),
            }),
            Target::Rabbit { url, .. } => {
                let conn = rabbit_connect(url).await?;
                let ch = conn.create_channel().await?;
                ch.confirm_select(Default::default()).await?;
                Box::new(RabbitProducer { _conn: conn, ch, queue: queue.into() })
            }
        })
    }

    /// A new connection that consumes `queue` in the shared group, with at
    /// most `prefetch` deliveries unacked.
    pub async fn consumer(&self, queue: &str, prefetch: usize) -> Result<Box<dyn Consumer>> {
        Ok(match self {
            Target::Gmq { addr } => {
                let client = gmq_client::Client::connect(addr).await?;
                let opts =
                    gmq_client::ConsumeOptions::manual(prefetch as u64).group(GROUP).from(gmq_client::Start::Oldest);
                let sub = client.subscribe(queue, &opts).await?;
                Box::new(GmqConsumer { client, sub, queue: queue.into(), unacked: Vec::new(), acks: VecDeque::new() })
            }
            Target::Redis { url } => {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Box::new(RedisConsumer {
                    conn: redis_connect(url).await?,
                    key: queue.into(),
                    name: format!("c{n}"),
                    unacked: Vec::new(),
                    to_ack: Vec::new(),
                })
            }
            Target::Nats { url } => {
                let client = nats_connect(url).await?;
                let js = async_nats::jetstream::new(client.clone());
                let stream = js.get_stream(queue).await.map_err(|e| anyhow!("stream {queue}: {e}"))?;
                let consumer: async_nats::jetstream::consumer::PullConsumer =
                    stream.get_consumer(GROUP).await.map_err(|e| anyhow!("consumer on {queue}: {e}"))?;
                let messages = consumer
                    .stream()
                    .max_messages_per_batch(prefetch)
                    .messages()
                    .await
                    .map_err(|e| anyhow!("pulling from {queue}: {e}"))?;
                Box::new(NatsConsumer { client, messages, unacked: Vec::new() })
            }
            Target::Rabbit { url, .. } => {
                let conn = rabbit_connect(url).await?;
                let ch = conn.create_channel().await?;
                ch.basic_qos(u16::try_from(prefetch).unwrap_or(u16::MAX), Default::default()).await?;
                let consumer = ch
                    .basic_consume(queue.into(), "".into(), Default::default(), Default::default())
                    .await
                    .with_context(|| format!("consuming {queue}"))?;
                Box::new(RabbitConsumer { _conn: conn, ch, consumer, last_tag: None })
            }
        })
    }
}

// ---------------------------------------------------------------- GMQ

struct GmqProducer {
    client: gmq_client::Client,
    queue: Arc<str>,
}

impl Producer for GmqProducer {
    fn publish(&self, payload: Bytes) -> Fut<'static, ()> {
        let (c, q) = (self.client.clone(), self.queue.clone());
        Box::pin(async move {
            c.publish(&q, gmq_client::Message::new(payload)).await?;
            Ok(())
        })
    }
}

struct GmqConsumer {
    client: gmq_client::Client,
    sub: gmq_client::Subscription,
    queue: Arc<str>,
    unacked: Vec<u64>,
    acks: VecDeque<tokio::task::JoinHandle<Result<u64, gmq_client::Error>>>,
}

impl GmqConsumer {
    async fn reap(&mut self, keep: usize) -> Result<()> {
        while self.acks.len() > keep {
            if let Some(h) = self.acks.pop_front() {
                h.await.context("ack task")??;
            }
        }
        Ok(())
    }
}

impl Consumer for GmqConsumer {
    fn recv(&mut self, max: usize, wait: Duration) -> Fut<'_, Vec<Bytes>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let first = match tokio::time::timeout(wait, self.sub.next()).await {
                Err(_) => return Ok(out),
                Ok(None) => bail!("the subscription ended"),
                Ok(Some(d)) => d?,
            };
            self.unacked.push(first.offset);
            out.push(first.payload);
            while out.len() < max {
                match self.sub.try_next() {
                    Some(d) => {
                        let d = d?;
                        self.unacked.push(d.offset);
                        out.push(d.payload);
                    }
                    None => break,
                }
            }
            Ok(out)
        })
    }

    fn ack(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            if self.unacked.is_empty() {
                return Ok(());
            }
            let offsets = std::mem::take(&mut self.unacked);
            let (c, q) = (self.client.clone(), self.queue.clone());
            self.acks.push_back(tokio::spawn(async move { c.ack(&q, GROUP, &offsets).await }));
            self.reap(ACKS_IN_FLIGHT).await
        })
    }

    fn finish(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            self.ack().await?;
            self.reap(0).await
        })
    }
}

// ---------------------------------------------------------------- Redis

async fn redis_connect(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("redis url {url}"))?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    client.get_multiplexed_async_connection_with_config(&config).await.with_context(|| format!("connecting to {url}"))
}

struct RedisProducer {
    conn: redis::aio::MultiplexedConnection,
    key: Arc<str>,
}

impl Producer for RedisProducer {
    fn publish(&self, payload: Bytes) -> Fut<'static, ()> {
        let (mut c, k) = (self.conn.clone(), self.key.clone());
        Box::pin(async move {
            let _: String = redis::cmd("XADD").arg(&*k).arg("*").arg("d").arg(&payload[..]).query_async(&mut c).await?;
            Ok(())
        })
    }
}

/// XREADGROUP for new entries; the XACK of what the previous call returned
/// travels in the same pipeline (one round trip, one AOF write for both).
struct RedisConsumer {
    conn: redis::aio::MultiplexedConnection,
    key: Arc<str>,
    name: String,
    unacked: Vec<String>,
    to_ack: Vec<String>,
}

fn xack(key: &str, ids: &[String]) -> redis::Cmd {
    let mut c = redis::cmd("XACK");
    c.arg(key).arg(GROUP).arg(ids);
    c
}

impl Consumer for RedisConsumer {
    fn recv(&mut self, max: usize, wait: Duration) -> Fut<'_, Vec<Bytes>> {
        Box::pin(async move {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP").arg(GROUP).arg(&self.name).arg("COUNT").arg(max);
            read.arg("BLOCK").arg(wait.as_millis().max(1) as u64).arg("STREAMS").arg(&*self.key).arg(">");
            let reply: Option<redis::streams::StreamReadReply> = if self.to_ack.is_empty() {
                read.query_async(&mut self.conn).await?
            } else {
                let mut p = redis::pipe();
                p.add_command(xack(&self.key, &self.to_ack)).ignore().add_command(read);
                let (r,): (Option<redis::streams::StreamReadReply>,) = p.query_async(&mut self.conn).await?;
                self.to_ack.clear();
                r
            };
            let mut out = Vec::new();
            for k in reply.map(|r| r.keys).unwrap_or_default() {
                for id in k.ids {
                    let payload = match id.map.get("d") {
                        Some(redis::Value::BulkString(b)) => Bytes::from(b.clone()),
                        other => bail!("stream entry {} without its payload: {other:?}", id.id),
                    };
                    self.unacked.push(id.id);
                    out.push(payload);
                }
            }
            Ok(out)
        })
    }

    fn ack(&mut self) -> Fut<'_, ()> {
        self.to_ack.append(&mut self.unacked);
        Box::pin(async { Ok(()) })
    }

    fn finish(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            self.to_ack.append(&mut self.unacked);
            if !self.to_ack.is_empty() {
                let _: u64 = xack(&self.key, &self.to_ack).query_async(&mut self.conn).await?;
                self.to_ack.clear();
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------- NATS

async fn nats_connect(url: &str) -> Result<async_nats::Client> {
    async_nats::connect(url).await.with_context(|| format!("connecting to {url}"))
}

struct NatsProducer {
    js: async_nats::jetstream::Context,
    subject: Arc<str>,
}

impl Producer for NatsProducer {
    fn publish(&self, payload: Bytes) -> Fut<'static, ()> {
        let (js, s) = (self.js.clone(), self.subject.clone());
        Box::pin(async move {
            let ack = js.publish(s.to_string(), payload).await.map_err(|e| anyhow!("publish: {e}"))?;
            ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
            Ok(())
        })
    }
}

/// A pull consumer's message stream. Acks are one fire-and-forget message
/// each (the JetStream way; the server does not answer them).
struct NatsConsumer {
    client: async_nats::Client,
    messages: async_nats::jetstream::consumer::pull::Stream,
    unacked: Vec<async_nats::jetstream::Message>,
}

impl Consumer for NatsConsumer {
    fn recv(&mut self, max: usize, wait: Duration) -> Fut<'_, Vec<Bytes>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let first = match tokio::time::timeout(wait, self.messages.next()).await {
                Err(_) => return Ok(out),
                Ok(None) => bail!("the pull stream ended"),
                Ok(Some(m)) => m.map_err(|e| anyhow!("pull: {e}"))?,
            };
            out.push(first.payload.clone());
            self.unacked.push(first);
            while out.len() < max {
                match self.messages.next().now_or_never() {
                    Some(Some(m)) => {
                        let m = m.map_err(|e| anyhow!("pull: {e}"))?;
                        out.push(m.payload.clone());
                        self.unacked.push(m);
                    }
                    Some(None) => bail!("the pull stream ended"),
                    None => break,
                }
            }
            Ok(out)
        })
    }

    fn ack(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            for m in self.unacked.drain(..) {
                m.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
            }
            Ok(())
        })
    }

    fn finish(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            self.ack().await?;
            self.client.flush().await.map_err(|e| anyhow!("flush: {e}"))
        })
    }
}

// ---------------------------------------------------------------- RabbitMQ

async fn rabbit_connect(url: &str) -> Result<lapin::Connection> {
    lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}"))
}

struct RabbitProducer {
    _conn: lapin::Connection,
    ch: lapin::Channel,
    queue: Arc<str>,
}

impl Producer for RabbitProducer {
    fn publish(&self, payload: Bytes) -> Fut<'static, ()> {
        let (ch, q) = (self.ch.clone(), self.queue.clone());
        Box::pin(async move {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    (&*q).into(),
                    Default::default(),
                    &payload,
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await?;
            if !confirm.is_ack() {
                bail!("the broker nacked a publish");
            }
            Ok(())
        })
    }
}

/// basic.consume with a prefetch; one `basic.ack` with `multiple` per batch
/// (AMQP does not answer acks).
struct RabbitConsumer {
    _conn: lapin::Connection,
    ch: lapin::Channel,
    consumer: lapin::Consumer,
    last_tag: Option<u64>,
}

impl Consumer for RabbitConsumer {
    fn recv(&mut self, max: usize, wait: Duration) -> Fut<'_, Vec<Bytes>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let first = match tokio::time::timeout(wait, self.consumer.next()).await {
                Err(_) => return Ok(out),
                Ok(None) => bail!("the consumer was cancelled"),
                Ok(Some(d)) => d?,
            };
            self.last_tag = Some(first.delivery_tag);
            out.push(Bytes::from(first.data));
            while out.len() < max {
                match self.consumer.next().now_or_never() {
                    Some(Some(d)) => {
                        let d = d?;
                        self.last_tag = Some(d.delivery_tag);
                        out.push(Bytes::from(d.data));
                    }
                    Some(None) => bail!("the consumer was cancelled"),
                    None => break,
                }
            }
            Ok(out)
        })
    }

    fn ack(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            if let Some(tag) = self.last_tag.take() {
                self.ch.basic_ack(tag, lapin::options::BasicAckOptions { multiple: true }).await?;
            }
            Ok(())
        })
    }

    fn finish(&mut self) -> Fut<'_, ()> {
        self.ack()
    }
}
