//! Per-queue settings: what `create` accepts, what a queue keeps in its
//! `queue` file, and the server-wide defaults for auto-created queues.
//!
//! The file is text, one `key = value` per line under a `version` line, so an
//! operator can read it; it is written crash-safely (new file, sync, rename)
//! and checked on load. It also carries the queue's *incarnation*, a random
//! tag that group state is stamped with, so that state left by a deleted
//! queue never applies to a new queue of the same name.

use std::fmt::Write as _;

use crate::log::FsyncPolicy;
use crate::valid_name;

/// What a publish does when the queue is at `max_length` or `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the publish with [`crate::Error::QueueFull`] (default).
    #[default]
    Reject,
    /// Drop the oldest messages, for every group, to make room.
    DropOldest,
}

/// When segments are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// Once every group's durable ack floor has passed them (default). With no
    /// group at all, messages are kept for the first one.
    #[default]
    Acked,
    /// A replayable stream: kept regardless of acks until older than
    /// `max_age_ms` or until the queue holds more than `max_bytes`.
    Stream {
        /// Age limit of a segment's newest record, if any.
        max_age_ms: Option<u64>,
        /// Size limit of the queue's segments, if any.
        max_bytes: Option<u64>,
    },
}

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest retained message (default).
    #[default]
    Oldest,
    /// After the last message stored when the group is created.
    Latest,
    /// At this offset (clamped to what is retained).
    Offset(u64),
    /// At the first message stored at or after this time (ms since the epoch).
    Time(u64),
}

/// A queue's settings, all fields set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Fsync policy of the queue's log and group state. Default `always`.
    pub fsync: FsyncPolicy,
    /// Segment size in bytes. Default 64 MiB, at least 4096.
    pub segment_bytes: u64,
    /// Most messages not yet acknowledged by every group. Default none.
    pub max_length: Option<u64>,
    /// Most bytes of such messages (as stored). Default none.
    pub max_bytes: Option<u64>,
    /// What happens past a limit. Default `reject`.
    pub overflow: Overflow,
    /// Messages older than this are never delivered. Default none.
    pub message_ttl_ms: Option<u64>,
    /// A manual-ack lease lasts this long. Default 30 000 ms.
    pub ack_timeout_ms: u64,
    /// After this many deliveries to a group, a message that is not acked
    /// moves to the dead-letter queue. 0 (default) = no limit.
    pub max_deliveries: u32,
    /// The dead-letter queue. Default `<queue>.dlq`.
    pub dead_letter: Option<String>,
    /// Whether expired messages go to the dead-letter queue (default: they
    /// are dropped).
    pub dead_letter_expired: bool,
    /// When segments are deleted. Default `acked`.
    pub retention: Retention,
    /// A repeated `msg_id` within this window is a duplicate. Default 120 000 ms.
    pub dedup_window_ms: u64,
    /// At most this many msg_ids are remembered (the oldest are forgotten
    /// first). Default 100 000.
    pub dedup_max_ids: u64,
    /// Where a new group starts. Default the oldest retained message.
    pub start: StartFrom,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            max_length: None,
            max_bytes: None,
            overflow: Overflow::Reject,
            message_ttl_ms: None,
            ack_timeout_ms: 30_000,
            max_deliveries: 0,
            dead_letter: None,
            dead_letter_expired: false,
            retention: Retention::Acked,
            dedup_window_ms: 120_000,
            dedup_max_ids: 100_000,
            start: StartFrom::Oldest,
        }
    }
}

/// Settings as a `create` request gives them: fields left out take the
/// defaults, and are not compared when the queue already exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // each field is the `QueueSettings` field of the same name
pub struct QueueSpec {
    pub fsync: Option<FsyncPolicy>,
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
    pub start: Option<StartFrom>,
}

macro_rules! spec_fields {
    ($m:ident) => {
        $m!(fsync, segment_bytes, overflow, ack_timeout_ms, max_deliveries, dead_letter_expired, retention,
            dedup_window_ms, dedup_max_ids, start; max_length, max_bytes, message_ttl_ms, dead_letter)
    };
}

impl QueueSpec {
    /// A spec that gives every field of `s`, so a queue created from it has
    /// exactly those settings (used to recreate a queue from an export).
    pub fn exactly(s: &QueueSettings) -> QueueSpec {
        let mut spec = QueueSpec::default();
        macro_rules! set {
            ($($plain:ident),*; $($opt:ident),*) => {
                $(spec.$plain = Some(s.$plain.clone());)*
                $(spec.$opt = s.$opt.clone();)*
            };
        }
        spec_fields!(set);
        spec
    }

    /// `defaults` with the fields given here replaced.
    pub fn apply(&self, defaults: &QueueSettings) -> QueueSettings {
        let mut s = defaults.clone();
        macro_rules! set {
            ($($plain:ident),*; $($opt:ident),*) => {
                $(if let Some(v) = &self.$plain { s.$plain = v.clone(); })*
                $(if let Some(v) = &self.$opt { s.$opt = Some(v.clone()); })*
            };
        }
        spec_fields!(set);
        s
    }

    /// The first field given here that differs from `s`, as
    /// `(name, given, existing)`.
    pub fn conflict(&self, s: &QueueSettings) -> Option<(&'static str, String, String)> {
        macro_rules! cmp {
            ($($plain:ident),*; $($opt:ident),*) => {
                $(if let Some(v) = &self.$plain {
                    if *v != s.$plain {
                        return Some((stringify!($plain), format!("{v:?}"), format!("{:?}", s.$plain)));
                    }
                })*
                $(if let Some(v) = &self.$opt {
                    if Some(v) != s.$opt.as_ref() {
                        return Some((stringify!($opt), format!("{v:?}"), format!("{:?}", s.$opt)));
                    }
                })*
            };
        }
        spec_fields!(cmp);
        None
    }
}

impl QueueSettings {
    /// Checks the settings of queue `name`, naming the one out of range.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        if self.segment_bytes < 4096 {
            return Err(format!("segment_bytes = {} is below the minimum of 4096", self.segment_bytes));
        }
        if self.fsync == FsyncPolicy::Interval(0) {
            return Err("fsync interval must be at least 1 ms".into());
        }
        for (field, v) in [("max_length", self.max_length), ("max_bytes", self.max_bytes)] {
            if v == Some(0) {
                return Err(format!("{field} must be at least 1"));
            }
        }
        if self.ack_timeout_ms == 0 {
            return Err("ack_timeout_ms must be at least 1".into());
        }
        if let Retention::Stream { max_age_ms: Some(0), .. } | Retention::Stream { max_bytes: Some(0), .. } =
            self.retention
        {
            return Err("retention limits must be at least 1".into());
        }
        let dlq = self.dead_letter_queue(name);
        if self.max_deliveries > 0 || self.dead_letter_expired || self.dead_letter.is_some() {
            if !valid_name(&dlq) {
                return Err(format!("dead_letter queue name {dlq:?} is not a valid queue name"));
            }
            if dlq == name {
                return Err("dead_letter cannot be the queue itself".into());
            }
        }
        Ok(())
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self, name: &str) -> String {
        self.dead_letter.clone().unwrap_or_else(|| format!("{name}.dlq"))
    }

    /// The `queue` file's contents.
    pub fn encode(&self, incarnation: u64) -> String {
        let opt = |v: Option<u64>| v.map_or("none".to_owned(), |v| v.to_string());
        let mut out = String::from("# GMQ queue settings; written by the server, checked on load\n");
        let mut kv = |k: &str, v: String| {
            let _ = writeln!(out, "{k} = {v}");
        };
        kv("version", "1".into());
        kv("incarnation", incarnation.to_string());
        kv(
            "fsync",
            match self.fsync {
                FsyncPolicy::Always => "always".into(),
                FsyncPolicy::Never => "never".into(),
                FsyncPolicy::Interval(ms) => format!("interval:{ms}"),
            },
        );
        kv("segment_bytes", self.segment_bytes.to_string());
        kv("max_length", opt(self.max_length));
        kv("max_bytes", opt(self.max_bytes));
        kv("overflow", if self.overflow == Overflow::Reject { "reject" } else { "drop_oldest" }.into());
        kv("message_ttl_ms", opt(self.message_ttl_ms));
        kv("ack_timeout_ms", self.ack_timeout_ms.to_string());
        kv("max_deliveries", self.max_deliveries.to_string());
        kv("dead_letter", self.dead_letter.clone().unwrap_or_else(|| "none".into()));
        kv("dead_letter_expired", self.dead_letter_expired.to_string());
        kv(
            "retention",
            match self.retention {
                Retention::Acked => "acked".into(),
                Retention::Stream { max_age_ms, max_bytes } => {
                    format!("stream max_age_ms={} max_bytes={}", opt(max_age_ms), opt(max_bytes))
                }
            },
        );
        kv("dedup_window_ms", self.dedup_window_ms.to_string());
        kv("dedup_max_ids", self.dedup_max_ids.to_string());
        kv(
            "start",
            match self.start {
                StartFrom::Oldest => "oldest".into(),
                StartFrom::Latest => "latest".into(),
                StartFrom::Offset(o) => format!("offset:{o}"),
                StartFrom::Time(t) => format!("time:{t}"),
            },
        );
        out
    }

    /// Parses a `queue` file: the settings and the incarnation.
    pub fn decode(text: &str) -> Result<(QueueSettings, u64), String> {
        let mut s = QueueSettings::default();
        let mut incarnation = None;
        let mut version = None;
        for (i, line) in text.lines().enumerate() {
            // `#` starts a comment, also after a value (no value holds one).
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {}: expected key = value", i + 1));
            };
            let (k, v) = (k.trim(), v.trim());
            let bad = |what: &str| format!("line {}: {k} = {v:?}: {what}", i + 1);
            let num = |v: &str| v.parse::<u64>().map_err(|_| bad("expected a number"));
            let opt = |v: &str| if v == "none" { Ok(None) } else { num(v).map(Some) };
            match k {
                "version" if v == "1" => version = Some(1),
                "version" => return Err(bad("unsupported settings version")),
                "incarnation" => incarnation = Some(num(v)?),
                "fsync" => s.fsync = v.parse().map_err(|e: String| bad(&e))?,
                "segment_bytes" => s.segment_bytes = num(v)?,
                "max_length" => s.max_length = opt(v)?,
                "max_bytes" => s.max_bytes = opt(v)?,
                "overflow" => {
                    s.overflow = match v {
                        "reject" => Overflow::Reject,
                        "drop_oldest" => Overflow::DropOldest,
                        _ => return Err(bad("expected reject or drop_oldest")),
                    }
                }
                "message_ttl_ms" => s.message_ttl_ms = opt(v)?,
                "ack_timeout_ms" => s.ack_timeout_ms = num(v)?,
                "max_deliveries" => s.max_deliveries = u32::try_from(num(v)?).map_err(|_| bad("too large"))?,
                "dead_letter" => s.dead_letter = (v != "none").then(|| v.to_owned()),
                "dead_letter_expired" => {
                    s.dead_letter_expired = v.parse().map_err(|_| bad("expected true or false"))?
                }
                "retention" => {
                    s.retention = if v == "acked" {
                        Retention::Acked
                    } else {
                        let mut parts = v.split_whitespace();
                        if parts.next() != Some("stream") {
                            return Err(bad("expected acked or stream ..."));
                        }
                        let (mut age, mut bytes) = (None, None);
                        for p in parts {
                            match p.split_once('=') {
                                Some(("max_age_ms", x)) => age = opt(x)?,
                                Some(("max_bytes", x)) => bytes = opt(x)?,
                                _ => return Err(bad("unknown retention limit")),
                            }
                        }
                        Retention::Stream { max_age_ms: age, max_bytes: bytes }
                    }
                }
                "dedup_window_ms" => s.dedup_window_ms = num(v)?,
                "dedup_max_ids" => s.dedup_max_ids = num(v)?,
                "start" => {
                    s.start = match v {
                        "oldest" => StartFrom::Oldest,
                        "latest" => StartFrom::Latest,
                        _ => match v.split_once(':') {
                            Some(("offset", o)) => StartFrom::Offset(num(o)?),
                            Some(("time", t)) => StartFrom::Time(num(t)?),
                            _ => return Err(bad("expected oldest, latest, offset:N or time:MS")),
                        },
                    }
                }
                _ => return Err(bad("unknown setting")),
            }
        }
        if version.is_none() {
            return Err("no version line".into());
        }
        let incarnation = incarnation.ok_or("no incarnation line")?;
        Ok((s, incarnation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trips_and_spec_conflicts_name_the_field() {
        let s = QueueSettings {
            fsync: FsyncPolicy::Interval(5),
            max_length: Some(10),
            overflow: Overflow::DropOldest,
            dead_letter: Some("dead".into()),
            retention: Retention::Stream { max_age_ms: Some(1000), max_bytes: None },
            start: StartFrom::Time(77),
            ..QueueSettings::default()
        };
        assert_eq!(QueueSettings::decode(&s.encode(42)), Ok((s.clone(), 42)));
        // A spec made from settings recreates them over defaults whose
        // optional limits are unset (a spec cannot say "none").
        let other =
            QueueSettings { ack_timeout_ms: 5, segment_bytes: 8192, max_deliveries: 2, ..QueueSettings::default() };
        assert_eq!(QueueSpec::exactly(&s).apply(&other), s);
        assert_eq!(QueueSpec::exactly(&s).conflict(&s), None);
        let d = QueueSettings::default();
        assert_eq!(QueueSettings::decode(&d.encode(1)), Ok((d.clone(), 1)));
        assert!(QueueSettings::decode("version = 2\nincarnation = 1\n").is_err());
        assert!(QueueSettings::decode("version = 1\nincarnation = 1\nbogus = 3\n").is_err());
        let spec = QueueSpec { ack_timeout_ms: Some(300), ..QueueSpec::default() };
        let applied = spec.apply(&d);
        assert_eq!(applied.ack_timeout_ms, 300);
        assert_eq!(spec.conflict(&applied), None);
        assert_eq!(spec.conflict(&d).map(|c| c.0), Some("ack_timeout_ms"));
        assert_eq!(QueueSpec::default().conflict(&s), None, "fields left out are not compared");
        assert!(QueueSettings { max_deliveries: 3, ..d.clone() }.validate(&"x".repeat(200)).is_err());
        assert!(QueueSettings { max_deliveries: 3, ..d }.validate("jobs").is_ok());
    }
}
