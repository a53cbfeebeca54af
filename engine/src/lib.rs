//! GMQ's storage engine: per-queue segmented logs of CRC-checked records,
//! fsync policies with group commit, checkpointed crash recovery that tells a
//! torn tail from corruption, and the offline verify and repair the CLI uses.
//!
//! The engine is synchronous and runtime-agnostic: appends return an
//! [`Append`] that a thread can [`wait`](Append::wait) on or an async task can
//! `.await` without blocking its executor, while a small pool of committer
//! threads writes and syncs batches for every queue.
//!
//! Layout of a data directory:
//!
//! ```text
//! <data>/LOCK                          held by the process that has it open
//! <data>/queues/<name>/00000000000000000000.seg   segment, named by its first offset
//! <data>/queues/<name>/00000000000000000000.idx   its sparse index (derived)
//! <data>/queues/<name>/checkpoint                 recovery checkpoint (derived)
//! <data>/queues/<name>/queue                      settings and incarnation (text)
//! <data>/queues/<name>/groups                     group state log (acks, floors)
//! <data>/bindings                                 topic bindings (text)
//! ```
//!
//! See `docs/storage-format.md` for the bytes and [`recovery`] for the policy.

#[doc(hidden)]
pub mod commit;
mod engine;
mod error;
mod files;
pub mod format;
mod group;
pub mod io;
mod log;
pub mod memfs;
mod queue;
pub mod ranges;
pub mod recovery;
pub mod routing;
mod settings;
pub mod signal;
pub mod sim;
pub mod state;
mod sync;

pub use commit::Append;
pub use engine::{Engine, EngineConfig, Followup, OpenReport, QueueSummary, SETTINGS_FILE};
pub use error::{Error, Result};
pub use format::{Message, Record};
pub use group::{AckMode, ConsumerId, DeadReason, Delivery, Group, GroupCounters};
pub use log::{FsyncPolicy, LogConfig, QueueLog};
pub use queue::{CompactReport, Completion, ConsumeOptions, GroupStats, Pending, Published, Queue, QueueStats};
pub use settings::{Overflow, QueueSettings, QueueSpec, Retention, StartFrom};

/// Wall-clock time source, injectable for tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// Whether `name` is a valid queue name: 1–200 bytes of `[A-Za-z0-9_.-]`, not
/// starting with `.` (which also rules out `.` and `..`). Names become
/// directory names, so this is the path-traversal guard.
pub fn valid_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "jobs", "a.dlq", "A-b_c.9", &"x".repeat(200)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "../x", "a/b", "a b", "é", &"x".repeat(201), "a\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
