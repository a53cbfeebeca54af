//! Replies and push frames, encoded straight into bytes (one line each).
//!
//! Field order is fixed (`id`, `ok`, then the op's fields) so that replies
//! are easy to read in a terminal and byte-stable for tests of examples.

use bytes::Bytes;
use serde::Serialize;

use crate::error::WireError;
use crate::request::Id;

/// A success reply being built: `Reply::ok(id).field(..).finish()`.
#[derive(Debug)]
pub struct Reply {
    buf: Vec<u8>,
}

fn push_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) {
    // Writing into a Vec cannot fail, and our values have string keys only.
    if serde_json::to_writer(&mut *buf, v).is_err() {
        buf.extend_from_slice(b"null");
    }
}

fn push_id(buf: &mut Vec<u8>, id: Option<&Id>) {
    match id {
        None => {}
        Some(Id::Str(s)) => {
            buf.extend_from_slice(b"\"id\":");
            push_json(buf, s);
            buf.push(b',');
        }
        Some(Id::Uint(n)) => {
            buf.extend_from_slice(format!("\"id\":{n},").as_bytes());
        }
        Some(Id::Int(n)) => {
            buf.extend_from_slice(format!("\"id\":{n},").as_bytes());
        }
    }
}

impl Reply {
    /// `{"id":..,"ok":true`.
    pub fn ok(id: Option<&Id>) -> Reply {
        let mut buf = Vec::with_capacity(64);
        buf.push(b'{');
        push_id(&mut buf, id);
        buf.extend_from_slice(b"\"ok\":true");
        Reply { buf }
    }

    /// Adds `"key":value`.
    pub fn field<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Reply {
        self.key(key);
        push_json(&mut self.buf, value);
        self
    }

    /// Adds `"key":[message, ...]`.
    pub fn messages(mut self, key: &str, messages: &[Delivered<'_>]) -> Reply {
        self.key(key);
        self.buf.reserve(messages.iter().map(Delivered::size_hint).sum());
        self.buf.push(b'[');
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            m.write(&mut self.buf);
        }
        self.buf.push(b']');
        self
    }

    fn key(&mut self, key: &str) {
        self.buf.push(b',');
        push_json(&mut self.buf, key);
        self.buf.push(b':');
    }

    /// The finished line, newline included.
    pub fn finish(mut self) -> Bytes {
        self.buf.extend_from_slice(b"}\n");
        Bytes::from(self.buf)
    }

    /// `{"id":..,"ok":false,"error":{"code":..,"message":..}}`.
    pub fn error(id: Option<&Id>, e: &WireError) -> Bytes {
        let mut buf = Vec::with_capacity(96 + e.message.len());
        buf.push(b'{');
        push_id(&mut buf, id);
        buf.extend_from_slice(b"\"ok\":false,\"error\":{\"code\":\"");
        buf.extend_from_slice(e.code.as_str().as_bytes());
        buf.extend_from_slice(b"\",\"message\":");
        push_json(&mut buf, &e.message);
        buf.extend_from_slice(b"}}\n");
        Bytes::from(buf)
    }
}

/// A message as delivered: borrowed from the stored record.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    /// Offset.
    pub offset: u64,
    /// Raw payload (sent as base64).
    pub payload: &'a [u8],
    /// Event.
    pub event: Option<&'a str>,
    /// Key.
    pub key: Option<&'a str>,
    /// Headers, in stored order.
    pub headers: &'a [(String, String)],
    /// When it was stored (ms since the epoch).
    pub timestamp_ms: u64,
    /// Deliveries to this group, this one included.
    pub deliveries: u32,
    /// Its time to live, if it has one.
    pub ttl_ms: Option<u64>,
    /// Its dedup id, if it has one.
    pub msg_id: Option<&'a str>,
}

impl Delivered<'_> {
    fn size_hint(&self) -> usize {
        self.payload.len().div_ceil(3) * 4 + 96
    }

    /// Writes the message object.
    pub fn write(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(format!("{{\"offset\":{},\"payload\":\"", self.offset).as_bytes());
        crate::b64::encode_append(self.payload, buf);
        buf.push(b'"');
        if let Some(e) = self.event {
            buf.extend_from_slice(b",\"event\":");
            push_json(buf, e);
        }
        if let Some(k) = self.key {
            buf.extend_from_slice(b",\"key\":");
            push_json(buf, k);
        }
        if !self.headers.is_empty() {
            buf.extend_from_slice(b",\"headers\":{");
            for (i, (k, v)) in self.headers.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                push_json(buf, k);
                buf.push(b':');
                push_json(buf, v);
            }
            buf.push(b'}');
        }
        if let Some(t) = self.ttl_ms {
            buf.extend_from_slice(format!(",\"ttl_ms\":{t}").as_bytes());
        }
        if let Some(m) = self.msg_id {
            buf.extend_from_slice(b",\"msg_id\":");
            push_json(buf, m);
        }
        buf.extend_from_slice(
            format!(",\"timestamp_ms\":{},\"deliveries\":{}}}", self.timestamp_ms, self.deliveries).as_bytes(),
        );
    }
}

/// A subscription's push frame: `{"sub":"s1","message":{...}}`.
pub fn push_frame(sub: &str, m: &Delivered<'_>) -> Bytes {
    let mut buf = Vec::with_capacity(push_frame_len(sub, m));
    push_frame_into(&mut buf, sub, m);
    Bytes::from(buf)
}

/// About how many bytes [`push_frame`] makes (for reserving).
pub fn push_frame_len(sub: &str, m: &Delivered<'_>) -> usize {
    m.size_hint() + 16 + sub.len()
}

/// Appends a push frame (newline included) to `buf`: several frames may
/// share one buffer and go to the socket as one piece.
pub fn push_frame_into(buf: &mut Vec<u8>, sub: &str, m: &Delivered<'_>) {
    buf.extend_from_slice(b"{\"sub\":");
    push_json(buf, sub);
    buf.extend_from_slice(b",\"message\":");
    m.write(buf);
    buf.extend_from_slice(b"}\n");
}

/// GMQ's reply: `{"operation":..,"queue":..,"payload":..,"confirmation":"Y"|"N","error":null|".."}`.
pub fn legacy_reply(operation: &str, queue: &str, payload: &str, error: Option<&str>) -> Bytes {
    #[derive(Serialize)]
    struct Legacy<'a> {
        operation: &'a str,
        queue: &'a str,
        payload: &'a str,
        confirmation: &'a str,
        error: Option<&'a str>,
    }
    let mut buf = Vec::with_capacity(96 + payload.len());
    push_json(
        &mut buf,
        &Legacy { operation, queue, payload, confirmation: if error.is_none() { "Y" } else { "N" }, error },
    );
    buf.push(b'\n');
    Bytes::from(buf)
}

/// Base64 of raw bytes, as payloads travel.
pub fn encode_payload(raw: &[u8]) -> String {
    crate::b64::encode(raw)
}
