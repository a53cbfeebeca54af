//! Engine errors. Every variant says what failed and where; I/O errors are
//! shared (`Arc`) so one failure can complete every waiter of a batch.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed. Nothing it was storing is acknowledged.
    #[error("storage error on queue '{queue}' while {op}: {source}")]
    Io {
        /// Queue (or `""` for the data directory).
        queue: String,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The queue stopped after an earlier write or sync failure (fail-stop)
    /// and refuses work until it is reopened from disk.
    #[error("queue '{queue}' is stopped after a storage failure ({cause}) until it is reopened from disk (housekeeping retries every second)")]
    Poisoned {
        /// Queue.
        queue: String,
        /// The failure that stopped it.
        cause: String,
    },
    /// Damage that recovery must not guess about: the queue is quarantined
    /// until `repair` runs.
    #[error("queue '{queue}' is quarantined: {}: byte {position}: {reason}", file.display())]
    Corrupt {
        /// Queue.
        queue: String,
        /// Damaged file.
        file: PathBuf,
        /// Byte position of the damage in that file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A queue name outside `[A-Za-z0-9_.-]{1,200}`, starting with `.`.
    #[error("invalid queue name {0:?}: 1-200 bytes of A-Z a-z 0-9 _ . -, not starting with '.'")]
    InvalidName(String),
    /// A record that the format cannot hold.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// No such queue.
    #[error("queue '{0}' not found")]
    NotFound(String),
    /// Another process holds the data directory.
    #[error("data directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// A bug: a committer panicked. The queue is stopped; see the log.
    #[error("internal error: {0}")]
    Internal(String),
    /// The engine is closing.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A publish past `max_length` or `max_bytes` with `overflow = reject`.
    #[error("{0}")]
    QueueFull(String),
    /// `create` of an existing queue with other settings.
    #[error("{0}")]
    Conflict(String),
    /// Settings out of range, or a malformed option (the message names it).
    #[error("{0}")]
    BadRequest(String),
}

impl Error {
    pub(crate) fn io(queue: &str, op: &'static str, e: io::Error) -> Error {
        Error::Io { queue: queue.to_owned(), op, source: Arc::new(e) }
    }

    /// The error later calls get from a queue that `self` stopped.
    pub(crate) fn stopped_by(&self) -> Error {
        match self {
            Error::Io { queue, .. } => Error::Poisoned { queue: queue.clone(), cause: self.to_string() },
            e => e.clone(),
        }
    }

    /// Whether this is a storage failure (the operation was not performed).
    pub fn is_storage(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Poisoned { .. })
    }
}
