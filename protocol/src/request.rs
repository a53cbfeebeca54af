//! Requests: one JSON object per line, parsed and validated into
//! [`Request`], with the exact error code PROTOCOL.md gives for each way a
//! request can be wrong.
//!
//! Rules beyond the table in PROTOCOL.md (documented in `docs/protocol.md`):
//! - Fields an operation does not know are `bad_request`: a misspelt
//!   optional field (`wait_msec`, `ack_timeout`) would otherwise be silently
//!   ignored, which is worse than an error.
//! - `null` for an optional field means "not given".
//! - `group` defaults to `"default"` for `ack` and `nack` too, so acks match a
//!   `consume` that left it out.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{ErrorCode, WireError};

/// The group a request without `group` uses.
pub const DEFAULT_GROUP: &str = "default";
/// `subscribe`'s default `prefetch`.
pub const DEFAULT_PREFETCH: u64 = 64;

/// A request's `id`, echoed in its reply: a string or an integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    /// A string id.
    Str(String),
    /// A non-negative integer id.
    Uint(u64),
    /// A negative integer id.
    Int(i64),
}

/// A message as a client publishes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireMessage {
    /// Raw payload (decoded from base64).
    pub payload: Bytes,
    /// Optional event name (subscriptions and consumers can filter on it).
    pub event: Option<String>,
    /// Optional key.
    pub key: Option<String>,
    /// Headers, in the order given.
    pub headers: Vec<(String, String)>,
    /// Time to live in ms.
    pub ttl_ms: Option<u64>,
    /// Dedup id.
    pub msg_id: Option<String>,
}

/// `ack` mode of a consume or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// Handed over and done at once (at-most-once).
    #[default]
    Auto,
    /// Leased until acked (at-least-once).
    Manual,
}

/// Where a new group starts (`from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `"oldest"`: the oldest retained message (the default).
    Oldest,
    /// `"latest"`: only messages published after the group is created.
    Latest,
    /// An offset.
    Offset(u64),
    /// `{"time_ms": T}`: the first message stored at or after T.
    Time(u64),
}

/// `fsync` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `"always"`.
    Always,
    /// `"never"`.
    Never,
    /// `{"interval_ms": N}`.
    Interval(u64),
}

/// `overflow` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `"reject"`: `queue_full`.
    Reject,
    /// `"drop_oldest"`.
    DropOldest,
}

/// `retention` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// `"acked"`.
    Acked,
    /// `{"max_age_ms": N, "max_bytes": N}` (either may be left out).
    Stream {
        /// Age limit.
        max_age_ms: Option<u64>,
        /// Size limit.
        max_bytes: Option<u64>,
    },
}

/// Queue settings of `create`; `None` = not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // each field is the setting of the same name in PROTOCOL.md
pub struct Settings {
    pub fsync: Option<Fsync>,
    pub segment_bytes: Option<u64>,
    pub max_length: Option<u64>,
    pub max_bytes: Option<u64>,
    pub overflow: Option<Overflow>,
    pub message_ttl_ms: Option<u64>,
    pub ack_timeout_ms: Option<u64>,
    pub max_deliveries: Option<u32>,
    pub dead_letter: Option<String>,
    pub dead_letter_expired: Option<bool>,
    pub retention: Option<Retention>,
    pub dedup_window_ms: Option<u64>,
    pub dedup_max_ids: Option<u64>,
    pub from: Option<Start>,
}

/// `consume` and `subscribe` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consume {
    /// Queue.
    pub queue: String,
    /// Group (default `"default"`).
    pub group: String,
    /// `consume`: most messages (default 1). `subscribe`: `prefetch`.
    pub max: u64,
    /// `consume` only: how long to wait for a message (default 0).
    pub wait_ms: u64,
    /// Ack mode.
    pub ack: AckMode,
    /// Deliver only these events.
    pub events: Option<Vec<String>>,
    /// Where the group starts if this creates it.
    pub from: Option<Start>,
}

/// A parsed, validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `ping`.
    Ping,
    /// `auth`.
    Auth {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// `publish` to a queue: one message (`batch = false`) or a batch.
    Publish {
        /// Queue.
        queue: String,
        /// The messages (one unless `batch`).
        messages: Vec<WireMessage>,
        /// Whether the request used `messages` (reply with `offsets`).
        batch: bool,
    },
    /// `publish` with `topic`.
    PublishTopic {
        /// Topic.
        topic: String,
        /// The message.
        message: WireMessage,
    },
    /// `consume`.
    Consume(Consume),
    /// `ack`.
    Ack {
        /// Queue.
        queue: String,
        /// Group.
        group: String,
        /// Offsets.
        offsets: Vec<u64>,
    },
    /// `nack`.
    Nack {
        /// Queue.
        queue: String,
        /// Group.
        group: String,
        /// Offsets.
        offsets: Vec<u64>,
        /// Delay before redelivery.
        delay_ms: u64,
        /// Why (kept for the dead-letter headers).
        reason: Option<String>,
    },
    /// `subscribe` (`max` is the prefetch).
    Subscribe(Consume),
    /// `unsubscribe`.
    Unsubscribe {
        /// Subscription id.
        sub: String,
    },
    /// `create`.
    Create {
        /// Queue.
        queue: String,
        /// Settings given.
        settings: Box<Settings>,
    },
    /// `delete`.
    Delete {
        /// Queue.
        queue: String,
    },
    /// `purge`.
    Purge {
        /// Queue.
        queue: String,
    },
    /// `queues`.
    Queues,
    /// `stats`.
    Stats {
        /// Queue.
        queue: String,
    },
    /// `bind`.
    Bind {
        /// Queue.
        queue: String,
        /// Topic pattern.
        pattern: String,
    },
    /// `unbind`.
    Unbind {
        /// Queue.
        queue: String,
        /// Topic pattern.
        pattern: String,
    },
}

impl Request {
    /// The operation's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Auth { .. } => "auth",
            Request::Publish { .. } | Request::PublishTopic { .. } => "publish",
            Request::Consume(_) => "consume",
            Request::Ack { .. } => "ack",
            Request::Nack { .. } => "nack",
            Request::Subscribe(_) => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Create { .. } => "create",
            Request::Delete { .. } => "delete",
            Request::Purge { .. } => "purge",
            Request::Queues => "queues",
            Request::Stats { .. } => "stats",
            Request::Bind { .. } => "bind",
            Request::Unbind { .. } => "unbind",
        }
    }

    /// The queue the request is about, if one.
    pub fn queue(&self) -> Option<&str> {
        match self {
            Request::Publish { queue, .. }
            | Request::Ack { queue, .. }
            | Request::Nack { queue, .. }
            | Request::Create { queue, .. }
            | Request::Delete { queue }
            | Request::Purge { queue }
            | Request::Stats { queue }
            | Request::Bind { queue, .. }
            | Request::Unbind { queue, .. } => Some(queue),
            Request::Consume(c) | Request::Subscribe(c) => Some(&c.queue),
            _ => None,
        }
    }
}

/// A GMQ request (`operation` instead of `op`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyRequest {
    /// `P`, `S` or `L` (anything else is answered with an error).
    pub operation: String,
    /// Queue.
    pub queue: String,
    /// The `payload` field as sent (base64 for `P`).
    pub payload: String,
}

/// What a line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A request.
    Request {
        /// Its id.
        id: Option<Id>,
        /// The request.
        request: Request,
    },
    /// A GMQ request: answer in GMQ's shape, then close the connection.
    Legacy(LegacyRequest),
    /// A GMQ request that cannot be served (a field of the wrong type):
    /// answer `confirmation: "N"` in GMQ's shape, then close.
    LegacyInvalid {
        /// `operation` as sent (empty if not a string).
        operation: String,
        /// `queue` as sent (empty if not a string).
        queue: String,
        /// Why.
        error: WireError,
    },
    /// A request that cannot be served: answer with the error (echoing the
    /// id when it could be read); the connection stays open.
    Invalid {
        /// Its id, if readable.
        id: Option<Id>,
        /// Why.
        error: WireError,
    },
}

/// Whether `name` is a valid queue or group name: 1–200 bytes of
/// `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses one request line (without its newline).
pub fn parse(line: &[u8]) -> Parsed {
    fast_publish(line).unwrap_or_else(|| parse_general(line))
}

/// Any request, through a JSON tree (exact errors for every field).
fn parse_general(line: &[u8]) -> Parsed {
    let obj = match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(o)) => o,
        Ok(_) => {
            return Parsed::Invalid { id: None, error: WireError::bad_request("a request must be a JSON object") };
        }
        Err(e) => return Parsed::Invalid { id: None, error: WireError::new(ErrorCode::BadJson, e.to_string()) },
    };
    if !obj.contains_key("op") && obj.contains_key("operation") {
        return legacy(obj);
    }
    let mut f = Fields { obj, op: "" };
    let id = match f.id() {
        Ok(id) => id,
        Err(error) => return Parsed::Invalid { id: None, error },
    };
    match f.request() {
        Ok(request) => Parsed::Request { id, request },
        Err(error) => Parsed::Invalid { id, error },
    }
}

/// The most common request, a single publish, read without building a
/// JSON tree: strings are borrowed from the line (base64 never needs
/// escapes), nothing goes through a map. Anything this does not take as it
/// is — an escaped string, headers, a batch, a topic, another op, any
/// error — returns `None` and goes the general way, which gives the same
/// result for a valid request and the precise error for an invalid one.
fn fast_publish(line: &[u8]) -> Option<Parsed> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Publish<'a> {
        op: &'a str,
        #[serde(default, borrow)]
        id: Option<FastId<'a>>,
        queue: &'a str,
        payload: &'a str,
        #[serde(default)]
        event: Option<&'a str>,
        #[serde(default)]
        key: Option<&'a str>,
        #[serde(default)]
        ttl_ms: Option<u64>,
        #[serde(default)]
        msg_id: Option<&'a str>,
    }
    enum FastId<'a> {
        Str(&'a str),
        Uint(u64),
        Int(i64),
    }
    // By hand: serde's untagged enums buffer the value and build an error
    // for every variant that does not match, on every request.
    impl<'de: 'a, 'a> serde::Deserialize<'de> for FastId<'a> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = FastId<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a string or an integer")
                }
                fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                    Ok(FastId::Str(s))
                }
                fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                    Ok(FastId::Uint(n))
                }
                fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                    Ok(FastId::Int(n))
                }
            }
            d.deserialize_any(V)
        }
    }
    let p: Publish<'_> = serde_json::from_slice(line).ok()?;
    if p.op != "publish" || !valid_name(p.queue) {
        return None;
    }
    let payload = decode_base64("payload", p.payload).ok()?;
    let id = p.id.map(|i| match i {
        FastId::Str(s) => Id::Str(s.to_owned()),
        FastId::Uint(n) => Id::Uint(n),
        FastId::Int(n) => Id::Int(n),
    });
    let message = WireMessage {
        payload,
        event: p.event.map(str::to_owned),
        key: p.key.map(str::to_owned),
        headers: Vec::new(),
        ttl_ms: p.ttl_ms,
        msg_id: p.msg_id.map(str::to_owned),
    };
    Some(Parsed::Request {
        id,
        request: Request::Publish { queue: p.queue.to_owned(), messages: vec![message], batch: false },
    })
}

fn legacy(mut obj: Map<String, Value>) -> Parsed {
    // GMQ's client sends its whole struct (`confirmation`, `error` too), so
    // other fields are ignored here.
    let mut error = None;
    let mut text = |k: &str| match obj.remove(k) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(v) => {
            error.get_or_insert_with(|| wrong(k, "a string", &v));
            String::new()
        }
    };
    let (operation, queue, payload) = (text("operation"), text("queue"), text("payload"));
    match error {
        None => Parsed::Legacy(LegacyRequest { operation, queue, payload }),
        Some(error) => Parsed::LegacyInvalid { operation, queue, error },
    }
}

type R<T> = Result<T, WireError>;

struct Fields {
    obj: Map<String, Value>,
    op: &'static str,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() => "an integer",
        Value::Number(n) if n.is_i64() => "a negative number",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: &str, expected: &str, got: &Value) -> WireError {
    WireError::bad_request(format!("field '{field}' must be {expected}, not {}", type_name(got)))
}

fn as_u64(field: &str, v: &Value) -> R<u64> {
    v.as_u64().ok_or_else(|| wrong(field, "a non-negative integer", v))
}

fn as_name(field: &str, v: Value) -> R<String> {
    let s = match v {
        Value::String(s) => s,
        v => return Err(wrong(field, "a string", &v)),
    };
    if !valid_name(&s) {
        return Err(WireError::new(
            ErrorCode::InvalidName,
            format!("invalid {field} name {s:?}: 1-200 bytes of A-Z a-z 0-9 _ . -, not starting with '.'"),
        ));
    }
    Ok(s)
}

fn decode_payload(field: &str, v: Value) -> R<Bytes> {
    let Value::String(s) = v else { return Err(wrong(field, "a base64 string", &v)) };
    decode_base64(field, &s)
}

/// Decodes a payload: strict standard base64 with padding; the error names
/// `field`.
pub fn decode_base64(field: &str, s: &str) -> Result<Bytes, WireError> {
    if let Some(raw) = crate::b64::decode(s.as_bytes()) {
        return Ok(Bytes::from(raw));
    }
    // Refused: the scalar codec says exactly why (it refuses the same
    // inputs; if it ever accepted one, its answer would stand).
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map(Bytes::from).map_err(|e| {
        WireError::bad_request(format!("field '{field}' is not valid base64 (standard alphabet, padded): {e}"))
    })
}

impl Fields {
    fn take(&mut self, k: &str) -> Option<Value> {
        match self.obj.remove(k) {
            None | Some(Value::Null) => None,
            v => v,
        }
    }

    fn need(&mut self, k: &str) -> R<Value> {
        self.take(k).ok_or_else(|| WireError::bad_request(format!("missing field '{k}' for op '{}'", self.op)))
    }

    fn id(&mut self) -> R<Option<Id>> {
        Ok(match self.take("id") {
            None => None,
            Some(Value::String(s)) => Some(Id::Str(s)),
            Some(Value::Number(n)) if n.is_u64() => n.as_u64().map(Id::Uint),
            Some(Value::Number(n)) if n.is_i64() => n.as_i64().map(Id::Int),
            Some(v) => return Err(wrong("id", "a string or an integer", &v)),
        })
    }

    fn string(&mut self, k: &str) -> R<Option<String>> {
        match self.take(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong(k, "a string", &v)),
        }
    }

    fn need_string(&mut self, k: &str) -> R<String> {
        match self.need(k)? {
            Value::String(s) => Ok(s),
            v => Err(wrong(k, "a string", &v)),
        }
    }

    fn u64(&mut self, k: &str) -> R<Option<u64>> {
        self.take(k).map(|v| as_u64(k, &v)).transpose()
    }

    fn bool(&mut self, k: &str) -> R<Option<bool>> {
        match self.take(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(wrong(k, "true or false", &v)),
        }
    }

    fn name(&mut self, k: &str) -> R<String> {
        let v = self.need(k)?;
        as_name(k, v)
    }

    fn opt_name(&mut self, k: &str) -> R<Option<String>> {
        self.take(k).map(|v| as_name(k, v)).transpose()
    }

    fn group(&mut self) -> R<String> {
        Ok(self.opt_name("group")?.unwrap_or_else(|| DEFAULT_GROUP.to_owned()))
    }

    fn offsets(&mut self) -> R<Vec<u64>> {
        match self.need("offsets")? {
            Value::Array(a) => a.iter().map(|v| as_u64("offsets", v)).collect(),
            v => Err(wrong("offsets", "a list of non-negative integers", &v)),
        }
    }

    fn ack_mode(&mut self) -> R<AckMode> {
        match self.take("ack") {
            None => Ok(AckMode::Auto),
            Some(Value::String(s)) if s == "auto" => Ok(AckMode::Auto),
            Some(Value::String(s)) if s == "manual" => Ok(AckMode::Manual),
            Some(v) => Err(WireError::bad_request(format!(
                "field 'ack' must be \"auto\" or \"manual\", not {}",
                match &v {
                    Value::String(s) => format!("{s:?}"),
                    v => type_name(v).to_owned(),
                }
            ))),
        }
    }

    fn events(&mut self) -> R<Option<Vec<String>>> {
        match self.take("events") {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    v => Err(wrong("events", "a list of strings", &v)),
                })
                .collect::<R<Vec<_>>>()
                .map(Some),
            Some(v) => Err(wrong("events", "a list of strings", &v)),
        }
    }

    fn from(&mut self) -> R<Option<Start>> {
        let Some(v) = self.take("from") else { return Ok(None) };
        let bad = || {
            WireError::bad_request(
                "field 'from' must be \"oldest\", \"latest\", an offset or {\"time_ms\": T}".to_owned(),
            )
        };
        Ok(Some(match v {
            Value::String(s) if s == "oldest" => Start::Oldest,
            Value::String(s) if s == "latest" => Start::Latest,
            Value::Number(n) => Start::Offset(n.as_u64().ok_or_else(bad)?),
            Value::Object(mut o) if o.len() == 1 => {
                Start::Time(o.remove("time_ms").and_then(|t| t.as_u64()).ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        }))
    }

    fn headers(&mut self, field: &str) -> R<Vec<(String, String)>> {
        match self.take("headers") {
            None => Ok(Vec::new()),
            Some(Value::Object(o)) => o
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    v => Err(wrong(&format!("{field}headers.{k}"), "a string", &v)),
                })
                .collect(),
            Some(v) => Err(wrong(&format!("{field}headers"), "an object of strings", &v)),
        }
    }

    /// The message fields of a publish or of one element of `messages`.
    fn message(&mut self, prefix: &str) -> R<WireMessage> {
        let payload = match self.take("payload") {
            Some(v) => decode_payload(&format!("{prefix}payload"), v)?,
            None => {
                return Err(WireError::bad_request(format!("missing field '{prefix}payload' for op 'publish'")));
            }
        };
        let pre = |k: &str| format!("{prefix}{k}");
        let text = |f: &mut Fields, k: &str| -> R<Option<String>> {
            match f.take(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(v) => Err(wrong(&pre(k), "a string", &v)),
            }
        };
        let ttl_ms = match self.take("ttl_ms") {
            None => None,
            Some(v) => Some(as_u64(&pre("ttl_ms"), &v)?),
        };
        Ok(WireMessage {
            payload,
            event: text(self, "event")?,
            key: text(self, "key")?,
            headers: self.headers(prefix)?,
            ttl_ms,
            msg_id: text(self, "msg_id")?,
        })
    }

    fn done(self) -> R<()> {
        match self.obj.keys().next() {
            None => Ok(()),
            Some(k) => Err(WireError::bad_request(format!("unknown field '{k}' for op '{}'", self.op))),
        }
    }

    fn request(&mut self) -> R<Request> {
        let op = match self.take("op") {
            Some(Value::String(s)) => s,
            Some(v) => return Err(wrong("op", "a string", &v)),
            None => return Err(WireError::bad_request("missing field 'op'")),
        };
        self.op = match OPS.iter().find(|o| **o == op) {
            Some(o) => o,
            None => {
                return Err(WireError::new(ErrorCode::UnknownOp, format!("unknown op {op:?}")));
            }
        };
        let req = match self.op {
            "ping" => Request::Ping,
            "auth" => Request::Auth { user: self.need_string("user")?, password: self.need_string("password")? },
            "publish" => self.publish()?,
            "consume" | "subscribe" => {
                let queue = self.name("queue")?;
                let group = self.group()?;
                let sub = self.op == "subscribe";
                let max =
                    if sub { self.u64("prefetch")?.unwrap_or(DEFAULT_PREFETCH) } else { self.u64("max")?.unwrap_or(1) };
                if max == 0 {
                    return Err(WireError::bad_request(format!(
                        "field '{}' must be at least 1",
                        if sub { "prefetch" } else { "max" }
                    )));
                }
                let wait_ms = if sub { 0 } else { self.u64("wait_ms")?.unwrap_or(0) };
                let c = Consume {
                    queue,
                    group,
                    max,
                    wait_ms,
                    ack: self.ack_mode()?,
                    events: self.events()?,
                    from: self.from()?,
                };
                if sub {
                    Request::Subscribe(c)
                } else {
                    Request::Consume(c)
                }
            }
            "ack" => Request::Ack { queue: self.name("queue")?, group: self.group()?, offsets: self.offsets()? },
            "nack" => Request::Nack {
                queue: self.name("queue")?,
                group: self.group()?,
                offsets: self.offsets()?,
                delay_ms: self.u64("delay_ms")?.unwrap_or(0),
                reason: self.string("reason")?,
            },
            "unsubscribe" => Request::Unsubscribe {
                sub: match self.need("sub")? {
                    Value::String(s) => s,
                    Value::Number(n) if n.is_u64() => n.to_string(),
                    v => return Err(wrong("sub", "a string", &v)),
                },
            },
            "create" => Request::Create { queue: self.name("queue")?, settings: Box::new(self.settings()?) },
            "delete" => Request::Delete { queue: self.name("queue")? },
            "purge" => Request::Purge { queue: self.name("queue")? },
            "queues" => Request::Queues,
            "stats" => Request::Stats { queue: self.name("queue")? },
            "bind" | "unbind" => {
                let queue = self.name("queue")?;
                let pattern = self.need_string("pattern")?;
                if self.op == "bind" {
                    Request::Bind { queue, pattern }
                } else {
                    Request::Unbind { queue, pattern }
                }
            }
            _ => return Err(WireError::new(ErrorCode::UnknownOp, format!("unknown op {op:?}"))),
        };
        let rest = Fields { obj: std::mem::take(&mut self.obj), op: self.op };
        rest.done()?;
        Ok(req)
    }

    fn publish(&mut self) -> R<Request> {
        let queue = self.take("queue");
        let topic = self.take("topic");
        let messages = self.take("messages");
        match (queue, topic, messages) {
            (Some(_), Some(_), _) => Err(WireError::bad_request("give 'queue' or 'topic', not both")),
            (None, None, _) => Err(WireError::bad_request("missing field 'queue' (or 'topic') for op 'publish'")),
            (None, Some(_), Some(_)) => Err(WireError::bad_request(
                "a batch ('messages') goes to a 'queue'; publish to a topic one message at a time",
            )),
            (Some(_), None, Some(_)) if self.obj.contains_key("payload") => {
                Err(WireError::bad_request("give 'payload' or 'messages', not both"))
            }
            (Some(q), None, Some(m)) => {
                let queue = as_name("queue", q)?;
                let Value::Array(list) = m else { return Err(wrong("messages", "a list of message objects", &m)) };
                if list.is_empty() {
                    return Err(WireError::bad_request("field 'messages' must hold at least one message"));
                }
                let mut messages = Vec::with_capacity(list.len());
                for (i, v) in list.into_iter().enumerate() {
                    let prefix = format!("messages[{i}].");
                    let Value::Object(obj) = v else { return Err(wrong(&format!("messages[{i}]"), "an object", &v)) };
                    let mut f = Fields { obj, op: "publish" };
                    messages.push(f.message(&prefix)?);
                    if let Some(k) = f.obj.keys().next() {
                        return Err(WireError::bad_request(format!("unknown field '{prefix}{k}' for op 'publish'")));
                    }
                }
                Ok(Request::Publish { queue, messages, batch: true })
            }
            (Some(q), None, None) => {
                let queue = as_name("queue", q)?;
                Ok(Request::Publish { queue, messages: vec![self.message("")?], batch: false })
            }
            (None, Some(t), None) => {
                let Value::String(topic) = t else { return Err(wrong("topic", "a string", &t)) };
                Ok(Request::PublishTopic { topic, message: self.message("")? })
            }
        }
    }

    fn settings(&mut self) -> R<Settings> {
        let fsync = match self.take("fsync") {
            None => None,
            Some(Value::String(s)) if s == "always" => Some(Fsync::Always),
            Some(Value::String(s)) if s == "never" => Some(Fsync::Never),
            Some(Value::Object(mut o)) if o.len() == 1 => match o.remove("interval_ms").and_then(|v| v.as_u64()) {
                Some(ms) if ms > 0 => Some(Fsync::Interval(ms)),
                _ => return Err(bad_fsync()),
            },
            Some(_) => return Err(bad_fsync()),
        };
        let overflow = match self.take("overflow") {
            None => None,
            Some(Value::String(s)) if s == "reject" => Some(Overflow::Reject),
            Some(Value::String(s)) if s == "drop_oldest" => Some(Overflow::DropOldest),
            Some(_) => return Err(WireError::bad_request("field 'overflow' must be \"reject\" or \"drop_oldest\"")),
        };
        let retention = match self.take("retention") {
            None => None,
            Some(Value::String(s)) if s == "acked" => Some(Retention::Acked),
            Some(Value::Object(o)) => {
                let mut f = Fields { obj: o, op: "create" };
                let r = Retention::Stream { max_age_ms: f.u64("max_age_ms")?, max_bytes: f.u64("max_bytes")? };
                if let Some(k) = f.obj.keys().next() {
                    return Err(WireError::bad_request(format!("unknown field 'retention.{k}' for op 'create'")));
                }
                Some(r)
            }
            Some(_) => {
                return Err(WireError::bad_request(
                    "field 'retention' must be \"acked\" or {\"max_age_ms\": N, \"max_bytes\": N}",
                ))
            }
        };
        let max_deliveries =
            match self.u64("max_deliveries")? {
                None => None,
                Some(n) => Some(u32::try_from(n).map_err(|_| {
                    WireError::bad_request(format!("field 'max_deliveries' must be at most {}", u32::MAX))
                })?),
            };
        Ok(Settings {
            fsync,
            segment_bytes: self.u64("segment_bytes")?,
            max_length: self.u64("max_length")?,
            max_bytes: self.u64("max_bytes")?,
            overflow,
            message_ttl_ms: self.u64("message_ttl_ms")?,
            ack_timeout_ms: self.u64("ack_timeout_ms")?,
            max_deliveries,
            dead_letter: self.opt_name("dead_letter")?,
            dead_letter_expired: self.bool("dead_letter_expired")?,
            retention,
            dedup_window_ms: self.u64("dedup_window_ms")?,
            dedup_max_ids: self.u64("dedup_max_ids")?,
            from: self.from()?,
        })
    }
}

fn bad_fsync() -> WireError {
    WireError::bad_request("field 'fsync' must be \"always\", \"never\" or {\"interval_ms\": N} with N > 0")
}

/// Every operation of the protocol, as `op` names it.
pub const OPS: [&str; 15] = [
    "ping",
    "auth",
    "publish",
    "consume",
    "ack",
    "nack",
    "subscribe",
    "unsubscribe",
    "create",
    "delete",
    "purge",
    "queues",
    "stats",
    "bind",
    "unbind",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path takes the common single publishes and gives exactly
    /// what the general path gives; what it does not take falls through.
    #[test]
    fn fast_publish_agrees_with_the_general_path() {
        for (line, fast) in [
            (r#"{"op":"publish","queue":"q","payload":"aGk="}"#, true),
            (
                r#"{"id":7,"op":"publish","queue":"q","payload":"aGk=","event":"e","key":"k","ttl_ms":5,"msg_id":"m"}"#,
                true,
            ),
            (r#"{"id":"x","op":"publish","queue":"q","payload":""}"#, true),
            (r#"{"id":-2,"op":"publish","queue":"q","payload":"","event":null}"#, true),
            (r#"{"op":"publish","queue":"q","payload":"aGk=","headers":{"a":"b"}}"#, false),
            (r#"{"op":"publish","queue":"q","payload":"aGk=","event":"\u0041"}"#, false),
            (r#"{"op":"publish","queue":"../x","payload":"aGk="}"#, false),
            (r#"{"op":"publish","queue":"q","payload":"aGk"}"#, false),
            (r#"{"op":"publish","queue":"q","payload":"aGk=","ttl_ms":-1}"#, false),
            (r#"{"op":"publish","queue":"q","payload":"aGk=","id":1.5}"#, false),
            (r#"{"op":"publish","queue":"q","payload":"aGk=","nope":1}"#, false),
            (r#"{"op":"consume","queue":"q"}"#, false),
        ] {
            let general = parse_general(line.as_bytes());
            match fast_publish(line.as_bytes()) {
                Some(p) => {
                    assert!(fast, "{line}: the fast path should not take it");
                    assert_eq!(p, general, "{line}");
                }
                None => assert!(!fast, "{line}: the fast path should take it"),
            }
            assert_eq!(parse(line.as_bytes()), general, "{line}");
        }
    }
}
