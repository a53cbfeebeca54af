//! The client's types: messages, deliveries, options, errors.

use std::collections::BTreeMap;

use bytes::Bytes;
use gmq_protocol::{ErrorCode, Start};
use serde_json::{json, Map, Value};

/// Client errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused the request; `code` is its stable error code.
    #[error("{code}: {message}")]
    Server {
        /// The code (`queue_full`, `storage`, ...).
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// Connecting, reading or writing failed.
    #[error("connection error: {0}")]
    Io(String),
    /// The connection is closed; requests in flight have no answer.
    #[error("the connection is closed")]
    Closed,
    /// No answer within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Raw payload.
    pub payload: Bytes,
    /// Event name.
    pub event: Option<String>,
    /// Key.
    pub key: Option<String>,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// Time to live, ms.
    pub ttl_ms: Option<u64>,
    /// Dedup id: a retry with the same id stores nothing twice.
    pub msg_id: Option<String>,
}

impl Message {
    /// A message with only a payload.
    pub fn new(payload: impl Into<Bytes>) -> Message {
        Message { payload: payload.into(), ..Message::default() }
    }

    /// With an event name.
    pub fn event(mut self, e: impl Into<String>) -> Message {
        self.event = Some(e.into());
        self
    }

    /// With a dedup id.
    pub fn msg_id(mut self, id: impl Into<String>) -> Message {
        self.msg_id = Some(id.into());
        self
    }

    /// With a header.
    pub fn header(mut self, k: impl Into<String>, v: impl Into<String>) -> Message {
        self.headers.insert(k.into(), v.into());
        self
    }

    /// Only a payload: nothing else to send.
    pub(crate) fn is_plain(&self) -> bool {
        self.event.is_none()
            && self.key.is_none()
            && self.headers.is_empty()
            && self.ttl_ms.is_none()
            && self.msg_id.is_none()
    }

    /// The message's fields as a request carries them.
    pub(crate) fn fields(&self, into: &mut Map<String, Value>) {
        into.insert("payload".into(), json!(gmq_protocol::b64::encode(&self.payload)));
        if let Some(e) = &self.event {
            into.insert("event".into(), json!(e));
        }
        if let Some(k) = &self.key {
            into.insert("key".into(), json!(k));
        }
        if !self.headers.is_empty() {
            into.insert("headers".into(), json!(self.headers));
        }
        if let Some(t) = self.ttl_ms {
            into.insert("ttl_ms".into(), json!(t));
        }
        if let Some(m) = &self.msg_id {
            into.insert("msg_id".into(), json!(m));
        }
    }
}

/// A message as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Offset in its queue.
    pub offset: u64,
    /// Raw payload.
    pub payload: Bytes,
    /// Event name.
    pub event: Option<String>,
    /// Key.
    pub key: Option<String>,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// When it was stored (ms since the epoch).
    pub timestamp_ms: u64,
    /// Deliveries to this group, this one included (> 1: a redelivery).
    pub deliveries: u32,
    /// Dedup id, if it had one.
    pub msg_id: Option<String>,
}

impl Delivery {
    pub(crate) fn from_json(v: &Value) -> Result<Delivery, Error> {
        let bad = |what: &str| Error::Protocol(format!("delivered message: {what} in {v}"));
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let payload = v.get("payload").and_then(Value::as_str).ok_or_else(|| bad("no payload"))?;
        let payload = gmq_protocol::b64::decode(payload.as_bytes()).ok_or_else(|| bad("payload is not base64"))?;
        let headers = match v.get("headers") {
            Some(Value::Object(m)) => {
                m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
            }
            _ => BTreeMap::new(),
        };
        Ok(Delivery {
            offset: v.get("offset").and_then(Value::as_u64).ok_or_else(|| bad("no offset"))?,
            payload: Bytes::from(payload),
            event: text("event"),
            key: text("key"),
            headers,
            timestamp_ms: v.get("timestamp_ms").and_then(Value::as_u64).unwrap_or(0),
            deliveries: v.get("deliveries").and_then(Value::as_u64).map_or(1, |d| u32::try_from(d).unwrap_or(u32::MAX)),
            msg_id: text("msg_id"),
        })
    }
}

/// What a publish stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its offset (the original one for a duplicate).
    pub offset: u64,
    /// The `msg_id` was already stored: nothing was stored this time.
    pub duplicate: bool,
}

/// Where a topic publish stored a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Queue.
    pub queue: String,
    /// Offset of the copy.
    pub offset: u64,
    /// The copy was a duplicate (`msg_id`).
    pub duplicate: bool,
}

/// A queue in the `queues` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Name.
    pub name: String,
    /// Messages not yet done for every group.
    pub depth: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Its groups.
    pub groups: Vec<String>,
    /// Consumers attached.
    pub consumers: u64,
}

/// How to consume or subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Group (default `"default"`).
    pub group: String,
    /// `consume`: most messages; `subscribe`: prefetch.
    pub max: u64,
    /// `consume` only: wait up to this long for a message.
    pub wait_ms: u64,
    /// Manual ack (leases) instead of auto.
    pub manual: bool,
    /// Only these events.
    pub events: Option<Vec<String>>,
    /// Where the group starts if this request creates it (default: oldest).
    pub from: Option<Start>,
}

impl ConsumeOptions {
    /// Auto ack, at most `max` messages (prefetch `max` for a subscription).
    pub fn auto(max: u64) -> ConsumeOptions {
        ConsumeOptions {
            group: gmq_protocol::DEFAULT_GROUP.into(),
            max,
            wait_ms: 0,
            manual: false,
            events: None,
            from: None,
        }
    }

    /// Manual ack, at most `max` messages (prefetch `max`).
    pub fn manual(max: u64) -> ConsumeOptions {
        ConsumeOptions { manual: true, ..ConsumeOptions::auto(max) }
    }

    /// In group `g`.
    pub fn group(mut self, g: impl Into<String>) -> ConsumeOptions {
        self.group = g.into();
        self
    }

    /// Waiting up to `ms` for a message (`consume`).
    pub fn wait_ms(mut self, ms: u64) -> ConsumeOptions {
        self.wait_ms = ms;
        self
    }

    /// Only messages with one of these events.
    pub fn events(mut self, events: impl IntoIterator<Item = impl Into<String>>) -> ConsumeOptions {
        self.events = Some(events.into_iter().map(Into::into).collect());
        self
    }

    /// Starting at `from` if this creates the group.
    pub fn from(mut self, from: Start) -> ConsumeOptions {
        self.from = Some(from);
        self
    }

    pub(crate) fn request(&self, op: &str, queue: &str) -> Value {
        let mut v =
            json!({"op": op, "queue": queue, "group": self.group, "ack": if self.manual { "manual" } else { "auto" }});
        v[if op == "subscribe" { "prefetch" } else { "max" }] = json!(self.max.max(1));
        if op == "consume" && self.wait_ms > 0 {
            v["wait_ms"] = json!(self.wait_ms);
        }
        if let Some(e) = &self.events {
            v["events"] = json!(e);
        }
        if let Some(f) = self.from {
            v["from"] = start_json(f);
        }
        v
    }
}

/// `from` as a request carries it.
pub fn start_json(f: Start) -> Value {
    match f {
        Start::Oldest => json!("oldest"),
        Start::Latest => json!("latest"),
        Start::Offset(o) => json!(o),
        Start::Time(t) => json!({ "time_ms": t }),
    }
}
