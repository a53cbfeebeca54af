//! The server's configuration: built-in defaults, a TOML file (`-f`), then
//! command-line flags (flags win). Every field is documented with its
//! default and unit; [`Config::validate`] checks them all at start-up and
//! names the one that is wrong. `gmq.sample.toml` is the commented sample;
//! a test keeps it equal to the defaults here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use gmq_engine::{EngineConfig, FsyncPolicy, Overflow, QueueSettings, Retention, StartFrom};
use serde::{Deserialize, Serialize};

/// Where queues live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Segment files under `data_dir` (default): durable.
    #[default]
    Filesystem,
    /// In memory: fast, and gone when the process stops.
    Memory,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on. Default `127.0.0.1:4567`.
    pub listen: String,
    /// Data directory (filesystem storage). Default `./gmq-data`.
    pub data_dir: PathBuf,
    /// `filesystem` (default) or `memory`.
    pub storage: Storage,
    /// Log filter: `error`, `warn`, `info` (default), `debug`, `trace`, or a
    /// `tracing` filter such as `gmq_server=debug,info`.
    pub log_level: String,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// Storage engine tuning.
    pub engine: EngineSection,
    /// Settings of queues created without their own.
    pub defaults: Defaults,
    /// Authentication (off unless users are listed).
    pub auth: Auth,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:4567".into(),
            data_dir: PathBuf::from("./gmq-data"),
            storage: Storage::Filesystem,
            log_level: "info".into(),
            limits: Limits::default(),
            engine: EngineSection::default(),
            defaults: Defaults::default(),
            auth: Auth::default(),
        }
    }
}

/// Connection limits. Times in milliseconds, sizes in bytes; 0 turns a
/// timeout off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections served at once; more are refused with
    /// `too_many_connections`. Default 10 000.
    pub max_connections: usize,
    /// Longest request line; longer ones get `frame_too_large` and the
    /// connection is closed. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Largest payload (decoded) of one message: `payload_too_large`.
    /// Default 16 MiB; at most 63 MiB (the storage format's record limit).
    pub max_payload_bytes: usize,
    /// Most messages in one batch publish (`bad_request` beyond) and in one
    /// `consume` reply (a larger `max` is served up to this). Default 10 000.
    pub max_batch: usize,
    /// Requests of one connection in flight (pipelined, not yet answered);
    /// the server stops reading from the connection while it has this many.
    /// Default 1024.
    pub max_inflight: usize,
    /// Bytes of one connection's requests in flight plus their finished
    /// replies not yet written; past it the server stops reading from the
    /// connection. One `consume` reply also stops growing at about this
    /// many payload bytes (it always holds at least one message). Default
    /// 64 MiB.
    pub max_inflight_bytes: usize,
    /// Subscriptions on one connection. Default 1024.
    pub max_subscriptions: usize,
    /// A connection with no request, no subscription and nothing in flight
    /// for this long is closed. Default 600 000 (10 minutes); 0 = never.
    pub idle_timeout_ms: u64,
    /// A request line must be complete this long after its first byte
    /// arrived, or the connection gets `timeout` and is closed (slow-loris).
    /// Default 30 000; 0 = no limit.
    pub line_timeout_ms: u64,
    /// A client that does not read what the server writes for this long is
    /// cut off (logged). Default 30 000; 0 = no limit.
    pub write_timeout_ms: u64,
    /// On SIGINT/SIGTERM, connections get this long to finish their
    /// requests before the engine is closed regardless. Default 10 000.
    pub shutdown_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_frame_bytes: 16 << 20,
            max_payload_bytes: 16 << 20,
            max_batch: 10_000,
            max_inflight: 1024,
            max_inflight_bytes: 64 << 20,
            max_subscriptions: 1024,
            idle_timeout_ms: 600_000,
            line_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            shutdown_timeout_ms: 10_000,
        }
    }
}

/// Engine tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Threads writing and syncing batches for all queues. Default 2.
    pub committer_threads: usize,
    /// Bound on files open at once. Default 1024.
    pub max_open_files: usize,
    /// A recovery checkpoint every this many bytes of a queue's log (a crash
    /// rescans at most this much). Default 16 MiB.
    pub checkpoint_bytes: u64,
    /// Threads recovering queues at start-up. Default 8.
    pub recovery_threads: usize,
    /// Housekeeping (retention, dead-letter moves) runs this often.
    /// Default 1000 ms.
    pub maintain_interval_ms: u64,
}

impl Default for EngineSection {
    fn default() -> Self {
        let e = EngineConfig::new(".");
        EngineSection {
            committer_threads: e.committer_threads,
            max_open_files: e.max_open_files,
            checkpoint_bytes: e.checkpoint_bytes,
            recovery_threads: e.recovery_threads,
            maintain_interval_ms: 1000,
        }
    }
}

/// Default queue settings (PROTOCOL.md "Queue settings").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// `always` (default), `never` or `interval:MS`.
    pub fsync: String,
    /// Segment size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Most unacknowledged messages per queue. Default none.
    pub max_length: Option<u64>,
    /// Most bytes of them. Default none.
    pub max_bytes: Option<u64>,
    /// `reject` (default) or `drop_oldest`.
    pub overflow: String,
    /// Messages older than this are not delivered. Default none.
    pub message_ttl_ms: Option<u64>,
    /// Manual-ack lease. Default 30 000.
    pub ack_timeout_ms: u64,
    /// Deliveries before dead-lettering; 0 (default) = unlimited.
    pub max_deliveries: u32,
    /// Expired messages go to the dead-letter queue. Default false.
    pub dead_letter_expired: bool,
    /// `acked` (default) or `stream`.
    pub retention: String,
    /// With `retention = "stream"`: keep segments this long. Default none.
    pub retention_max_age_ms: Option<u64>,
    /// With `retention = "stream"`: keep at most this many bytes. Default none.
    pub retention_max_bytes: Option<u64>,
    /// Dedup window for `msg_id`. Default 120 000.
    pub dedup_window_ms: u64,
    /// Most remembered `msg_id`s per queue. Default 100 000.
    pub dedup_max_ids: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        let s = QueueSettings::default();
        Defaults {
            fsync: "always".into(),
            segment_bytes: s.segment_bytes,
            max_length: None,
            max_bytes: None,
            overflow: "reject".into(),
            message_ttl_ms: None,
            ack_timeout_ms: s.ack_timeout_ms,
            max_deliveries: s.max_deliveries,
            dead_letter_expired: s.dead_letter_expired,
            retention: "acked".into(),
            retention_max_age_ms: None,
            retention_max_bytes: None,
            dedup_window_ms: s.dedup_window_ms,
            dedup_max_ids: s.dedup_max_ids,
        }
    }
}

/// Authentication: when `users` is not empty, every connection must `auth`
/// first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Users allowed in.
    pub users: Vec<User>,
}

/// One user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Name.
    pub name: String,
    /// Password (keep the config file readable by the server's user only).
    pub password: String,
    /// Queues the user may use: exact names, or prefixes ending in `*`.
    /// Default `["*"]` (all).
    #[serde(default = "all_queues")]
    pub queues: Vec<String>,
    /// May create, delete, purge, bind and unbind. Default false.
    #[serde(default)]
    pub admin: bool,
}

fn all_queues() -> Vec<String> {
    vec!["*".into()]
}

impl User {
    /// Whether the user may use every queue.
    pub fn may_use_all(&self) -> bool {
        self.queues.iter().any(|p| p == "*")
    }

    /// Whether the user may use `queue`.
    pub fn may_use(&self, queue: &str) -> bool {
        self.queues.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => queue.starts_with(prefix),
            None => p == queue,
        })
    }
}

/// Command-line flags that override the file.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "gmq-server", version, about = "GMQ: a durable message-queue server (JSON over TCP, port 4567)")]
pub struct Flags {
    /// Config file (TOML); see gmq.sample.toml.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:4567].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Data directory [default: ./gmq-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage mode [default: filesystem].
    #[arg(long, value_enum)]
    pub storage: Option<Storage>,
    /// Default fsync policy of new queues: always, never or interval:MS [default: always].
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<String>,
    /// Longest request line in bytes [default: 16777216].
    #[arg(long, value_name = "N")]
    pub max_frame_bytes: Option<usize>,
    /// Most connections at once [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Log level or tracing filter [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        Config::from_toml(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Defaults, then the file named by the flags, then the flags; validated.
    pub fn load(flags: &Flags) -> anyhow::Result<Config> {
        let mut c = match &flags.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = &flags.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &flags.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = flags.storage {
            c.storage = v;
        }
        if let Some(v) = &flags.fsync {
            c.defaults.fsync = v.clone();
        }
        if let Some(v) = flags.max_frame_bytes {
            c.limits.max_frame_bytes = v;
        }
        if let Some(v) = flags.max_connections {
            c.limits.max_connections = v;
        }
        if let Some(v) = &flags.log_level {
            c.log_level = v.clone();
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every field; the error names the one that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_batch", l.max_batch),
            ("limits.max_inflight", l.max_inflight),
            ("limits.max_inflight_bytes", l.max_inflight_bytes),
            ("limits.max_subscriptions", l.max_subscriptions),
            ("engine.max_open_files", self.engine.max_open_files),
            ("engine.recovery_threads", self.engine.recovery_threads),
            ("engine.committer_threads", self.engine.committer_threads),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if l.max_frame_bytes < 1024 {
            bail!("limits.max_frame_bytes = {} is below the minimum of 1024", l.max_frame_bytes);
        }
        if l.max_payload_bytes == 0 || l.max_payload_bytes > MAX_PAYLOAD {
            bail!("limits.max_payload_bytes must be between 1 and {MAX_PAYLOAD} (the storage format's limit)");
        }
        if self.engine.maintain_interval_ms == 0 {
            bail!("engine.maintain_interval_ms must be at least 1");
        }
        if self.engine.checkpoint_bytes < 4096 {
            bail!("engine.checkpoint_bytes must be at least 4096");
        }
        self.queue_defaults()?;
        for u in &self.auth.users {
            if u.name.is_empty() || u.password.is_empty() {
                bail!("auth.users: every user needs a name and a password");
            }
        }
        Ok(())
    }

    /// The listen address.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen
            .parse()
            .with_context(|| format!("listen = {:?}: expected ADDR:PORT such as 127.0.0.1:4567", self.listen))
    }

    /// The queue defaults as the engine takes them.
    pub fn queue_defaults(&self) -> anyhow::Result<QueueSettings> {
        let d = &self.defaults;
        let s = QueueSettings {
            fsync: d.fsync.parse::<FsyncPolicy>().map_err(|e| anyhow::anyhow!("defaults.fsync: {e}"))?,
            segment_bytes: d.segment_bytes,
            max_length: d.max_length,
            max_bytes: d.max_bytes,
            overflow: match d.overflow.as_str() {
                "reject" => Overflow::Reject,
                "drop_oldest" => Overflow::DropOldest,
                o => bail!("defaults.overflow = {o:?}: expected \"reject\" or \"drop_oldest\""),
            },
            message_ttl_ms: d.message_ttl_ms,
            ack_timeout_ms: d.ack_timeout_ms,
            max_deliveries: d.max_deliveries,
            dead_letter: None,
            dead_letter_expired: d.dead_letter_expired,
            retention: match d.retention.as_str() {
                "acked" => {
                    if d.retention_max_age_ms.is_some() || d.retention_max_bytes.is_some() {
                        bail!("defaults.retention_max_age_ms and retention_max_bytes need retention = \"stream\"");
                    }
                    Retention::Acked
                }
                "stream" => Retention::Stream { max_age_ms: d.retention_max_age_ms, max_bytes: d.retention_max_bytes },
                r => bail!("defaults.retention = {r:?}: expected \"acked\" or \"stream\""),
            },
            dedup_window_ms: d.dedup_window_ms,
            dedup_max_ids: d.dedup_max_ids,
            start: StartFrom::Oldest,
        };
        s.validate("defaults").map_err(|e| anyhow::anyhow!("defaults: {e}"))?;
        Ok(s)
    }

    /// The engine's configuration.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let mut e = EngineConfig::new(&self.data_dir);
        e.defaults = self.queue_defaults()?;
        e.committer_threads = self.engine.committer_threads;
        e.max_open_files = self.engine.max_open_files;
        e.checkpoint_bytes = self.engine.checkpoint_bytes;
        e.recovery_threads = self.engine.recovery_threads;
        Ok(e)
    }
}

/// The largest payload the storage format holds with room for a record's
/// other fields.
pub const MAX_PAYLOAD: usize = 63 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn sample_config_is_the_defaults() {
        let text = include_str!("../gmq.sample.toml");
        let c = Config::from_toml(text).expect("sample parses");
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gmq.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nstorage = \"memory\"\n[limits]\nmax_frame_bytes = 4096\n")
            .unwrap();
        let flags = Flags::parse_from([
            "gmq-server",
            "-f",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--fsync",
            "interval:5",
        ]);
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.storage, Storage::Memory);
        assert_eq!(c.limits.max_frame_bytes, 4096);
        assert_eq!(c.queue_defaults().unwrap().fsync, FsyncPolicy::Interval(5));
    }

    #[test]
    fn bad_settings_name_the_field() {
        for (toml, needle) in [
            ("listen = \"nowhere\"", "listen"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            ("[limits]\nmax_frame_bytes = 10", "limits.max_frame_bytes"),
            ("[defaults]\nfsync = \"sometimes\"", "defaults.fsync"),
            ("[defaults]\noverflow = \"explode\"", "defaults.overflow"),
            ("[defaults]\nsegment_bytes = 10", "segment_bytes"),
            ("[limits]\nmax_payload_bytes = 100000000", "max_payload_bytes"),
        ] {
            let err = Config::from_toml(toml).and_then(|c| c.validate().map(|_| c)).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{toml}: {err:#}");
        }
        let err = Config::from_toml("[limits]\nmax_conections = 5").unwrap_err();
        assert!(format!("{err:#}").contains("max_conections"), "{err:#}");
    }

    #[test]
    fn user_queue_patterns() {
        let u =
            User { name: "a".into(), password: "b".into(), queues: vec!["jobs".into(), "tmp.*".into()], admin: false };
        assert!(u.may_use("jobs") && u.may_use("tmp.x") && !u.may_use("jobs2") && !u.may_use("tmp"));
    }
}
