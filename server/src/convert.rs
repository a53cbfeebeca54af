//! Mapping between the wire types and the engine's: errors to their stable
//! codes, `create` settings to a queue spec, records to delivered messages,
//! settings and stats to JSON.

use gmq_engine::{Delivery, Error, FsyncPolicy, Message, QueueSettings, QueueSpec, StartFrom};
use gmq_protocol::{request, Delivered, ErrorCode, WireError, WireMessage};
use serde_json::{json, Value};

/// The wire error for an engine error.
pub fn wire_error(e: &Error) -> WireError {
    let code = match e {
        Error::Io { .. } | Error::Poisoned { .. } | Error::Corrupt { .. } | Error::Internal(_) | Error::Locked(_) => {
            ErrorCode::Storage
        }
        Error::InvalidName(_) => ErrorCode::InvalidName,
        Error::InvalidRecord(_) => ErrorCode::PayloadTooLarge,
        Error::NotFound(_) => ErrorCode::NotFound,
        Error::ShuttingDown => ErrorCode::ShuttingDown,
        Error::QueueFull(_) => ErrorCode::QueueFull,
        Error::Conflict(_) => ErrorCode::Conflict,
        Error::BadRequest(_) => ErrorCode::BadRequest,
    };
    let message = match e {
        Error::InvalidName(n) => {
            format!("invalid name {n:?}: 1-200 bytes of A-Z a-z 0-9 _ . - (topic words separated by '.'), not starting with '.'")
        }
        e => e.to_string(),
    };
    WireError::new(code, message)
}

/// A published message as the engine stores it.
pub fn message(m: WireMessage) -> Message {
    Message { payload: m.payload, event: m.event, key: m.key, headers: m.headers, ttl_ms: m.ttl_ms, msg_id: m.msg_id }
}

/// A delivery as it goes on the wire.
pub fn delivered(d: &Delivery) -> Delivered<'_> {
    let m = &d.record.message;
    Delivered {
        offset: d.record.offset,
        payload: &m.payload,
        event: m.event.as_deref(),
        key: m.key.as_deref(),
        headers: &m.headers,
        timestamp_ms: d.record.timestamp_ms,
        deliveries: d.deliveries,
        ttl_ms: m.ttl_ms,
        msg_id: m.msg_id.as_deref(),
    }
}

/// The engine's ack mode for the wire's.
pub fn ack_mode(a: gmq_protocol::AckMode) -> gmq_engine::AckMode {
    match a {
        gmq_protocol::AckMode::Auto => gmq_engine::AckMode::Auto,
        gmq_protocol::AckMode::Manual => gmq_engine::AckMode::Manual,
    }
}

/// Where a group starts.
pub fn start(f: request::Start) -> StartFrom {
    match f {
        request::Start::Oldest => StartFrom::Oldest,
        request::Start::Latest => StartFrom::Latest,
        request::Start::Offset(o) => StartFrom::Offset(o),
        request::Start::Time(t) => StartFrom::Time(t),
    }
}

/// `create` settings as the engine's spec.
pub fn spec(s: &request::Settings) -> QueueSpec {
    QueueSpec {
        fsync: s.fsync.map(|f| match f {
            request::Fsync::Always => FsyncPolicy::Always,
            request::Fsync::Never => FsyncPolicy::Never,
            request::Fsync::Interval(ms) => FsyncPolicy::Interval(ms),
        }),
        segment_bytes: s.segment_bytes,
        max_length: s.max_length,
        max_bytes: s.max_bytes,
        overflow: s.overflow.map(|o| match o {
            request::Overflow::Reject => gmq_engine::Overflow::Reject,
            request::Overflow::DropOldest => gmq_engine::Overflow::DropOldest,
        }),
        message_ttl_ms: s.message_ttl_ms,
        ack_timeout_ms: s.ack_timeout_ms,
        max_deliveries: s.max_deliveries,
        dead_letter: s.dead_letter.clone(),
        dead_letter_expired: s.dead_letter_expired,
        retention: s.retention.map(|r| match r {
            request::Retention::Acked => gmq_engine::Retention::Acked,
            request::Retention::Stream { max_age_ms, max_bytes } => {
                gmq_engine::Retention::Stream { max_age_ms, max_bytes }
            }
        }),
        dedup_window_ms: s.dedup_window_ms,
        dedup_max_ids: s.dedup_max_ids,
        start: s.from.map(start),
    }
}

/// A queue's settings as `stats` reports them (the shapes `create` takes).
pub fn settings_json(s: &QueueSettings) -> Value {
    json!({
        "fsync": match s.fsync {
            FsyncPolicy::Always => json!("always"),
            FsyncPolicy::Never => json!("never"),
            FsyncPolicy::Interval(ms) => json!({ "interval_ms": ms }),
        },
        "segment_bytes": s.segment_bytes,
        "max_length": s.max_length,
        "max_bytes": s.max_bytes,
        "overflow": match s.overflow {
            gmq_engine::Overflow::Reject => "reject",
            gmq_engine::Overflow::DropOldest => "drop_oldest",
        },
        "message_ttl_ms": s.message_ttl_ms,
        "ack_timeout_ms": s.ack_timeout_ms,
        "max_deliveries": s.max_deliveries,
        "dead_letter": s.dead_letter,
        "dead_letter_expired": s.dead_letter_expired,
        "retention": match s.retention {
            gmq_engine::Retention::Acked => json!("acked"),
            gmq_engine::Retention::Stream { max_age_ms, max_bytes } => {
                json!({ "max_age_ms": max_age_ms, "max_bytes": max_bytes })
            }
        },
        "dedup_window_ms": s.dedup_window_ms,
        "dedup_max_ids": s.dedup_max_ids,
        "from": match s.start {
            StartFrom::Oldest => json!("oldest"),
            StartFrom::Latest => json!("latest"),
            StartFrom::Offset(o) => json!(o),
            StartFrom::Time(t) => json!({ "time_ms": t }),
        },
    })
}
