//! The engine: one data directory, its queues, and the threads and files
//! they share.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::commit::CommitPool;
use crate::error::{Error, Result};
use crate::files::{Env, FileCache};
use crate::format;
use crate::io::{RealFs, Vfs};
use crate::log::{create_segment, LogConfig, QueueLog, Recovered};
use crate::recovery::{self, RecoveryStats};
use crate::{valid_name, Clock, SystemClock};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (`./gmq-data` for the server's default).
    pub data_dir: PathBuf,
    /// Log settings for queues created without their own.
    pub log: LogConfig,
    /// Committer threads shared by all queues. Default 2. Zero gives a
    /// manual pool driven by [`Engine::run_committers`] (deterministic tests).
    pub committer_threads: usize,
    /// Bound on open segment files (each queue needs one only while it is
    /// read or written). Default 1024.
    pub max_open_files: usize,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            log: LogConfig::default(),
            committer_threads: 2,
            max_open_files: 1024,
        }
    }
}

/// What opening the data directory found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Queues opened.
    pub queues: usize,
    /// Bytes of active segments scanned (zero after a clean stop).
    pub scanned_bytes: u64,
    /// Bytes of torn tails truncated.
    pub torn_bytes: u64,
    /// Queues that were quarantined, with the reason.
    pub quarantined: Vec<(String, Error)>,
}

#[derive(Debug)]
enum Entry {
    Open(Arc<QueueLog>),
    Quarantined(Error),
}

/// A data directory of queues.
///
/// ```
/// use gmq_engine::{Engine, EngineConfig, Message};
/// let dir = tempfile::tempdir()?;
/// let engine = Engine::open(EngineConfig::new(dir.path()))?;
/// let q = engine.queue("jobs")?;
/// let offsets = q.append(&Message::new("hello"))?.wait()?; // durable now
/// let records = q.read(offsets.start, 10, usize::MAX)?;
/// assert_eq!(&records[0].message.payload[..], b"hello");
/// engine.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Engine {
    env: Arc<Env>,
    root: PathBuf,
    queues_dir: PathBuf,
    log: LogConfig,
    queues: Mutex<BTreeMap<String, Entry>>,
    hints: Mutex<HashMap<String, (u64, u64)>>,
    lock: Mutex<Option<Box<dyn std::fmt::Debug + Send + Sync>>>,
    report: OpenReport,
}

impl Engine {
    /// Opens (creating if needed) a data directory on the real filesystem.
    pub fn open(cfg: EngineConfig) -> Result<Engine> {
        Engine::open_with(cfg, Arc::new(RealFs), Arc::new(SystemClock))
    }

    /// Opens a data directory on any [`Vfs`] with any clock.
    pub fn open_with(cfg: EngineConfig, vfs: Arc<dyn Vfs>, clock: Arc<dyn Clock>) -> Result<Engine> {
        cfg.log.validate().map_err(Error::InvalidRecord)?;
        let root = cfg.data_dir.clone();
        let queues_dir = root.join(format::QUEUES_DIR);
        let ioe = |op| move |e| Error::io("", op, e);
        vfs.create_dir_all(&queues_dir).map_err(ioe("creating the data directory"))?;
        vfs.sync_dir(&queues_dir).map_err(ioe("syncing the data directory"))?;
        vfs.sync_dir(&root).map_err(ioe("syncing the data directory"))?;
        vfs.sync_dir(crate::io::parent(&root)).map_err(ioe("syncing the data directory"))?;
        let lock = recovery::lock_data_dir(vfs.as_ref(), &root)?;
        let env = Arc::new(Env {
            files: FileCache::new(vfs.clone(), cfg.max_open_files),
            vfs,
            pool: CommitPool::new(cfg.committer_threads).map_err(ioe("starting the committer threads"))?,
            clock,
        });
        let mut engine = Engine {
            env,
            root,
            queues_dir,
            log: cfg.log,
            queues: Mutex::new(BTreeMap::new()),
            hints: Mutex::new(HashMap::new()),
            lock: Mutex::new(Some(lock)),
            report: OpenReport::default(),
        };
        let names = engine.env.vfs.read_dir(&engine.queues_dir).map_err(ioe("listing queues"))?;
        let mut report = OpenReport::default();
        let mut map = BTreeMap::new();
        for name in names {
            if !valid_name(&name) {
                tracing::warn!(entry = %name, "ignoring a directory entry that is not a queue name");
                continue;
            }
            match engine.recover(&name, None) {
                Ok((q, st)) => {
                    report.scanned_bytes += st.scanned_bytes;
                    report.torn_bytes += st.torn_bytes;
                    report.queues += 1;
                    map.insert(name, Entry::Open(q));
                }
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::error!(queue = %name, error = %e, "queue quarantined; run `gmq repair`");
                    report.quarantined.push((name.clone(), e.clone()));
                    map.insert(name, Entry::Quarantined(e));
                }
                Err(e) => {
                    engine.env.pool.shutdown();
                    return Err(e);
                }
            }
        }
        tracing::info!(
            queues = report.queues,
            quarantined = report.quarantined.len(),
            scanned_bytes = report.scanned_bytes,
            torn_bytes = report.torn_bytes,
            "data directory opened"
        );
        engine.queues = Mutex::new(map);
        engine.report = report;
        Ok(engine)
    }

    fn recover(&self, name: &str, hint: Option<(u64, u64)>) -> Result<(Arc<QueueLog>, RecoveryStats)> {
        let dir = self.queues_dir.join(name);
        let (r, st) = recovery::recover_queue(&self.env, &dir, name, hint)?;
        Ok((QueueLog::open(name, dir, self.log, self.env.clone(), r), st))
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What opening the data directory found.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// With `committer_threads = 0`, runs up to `max` commit rounds on this
    /// thread and returns how many ran; otherwise does nothing.
    #[doc(hidden)]
    pub fn run_committers(&self, max: usize) -> usize {
        self.env.pool.run_pending(max)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.root
    }

    /// The queue `name`, created with the default settings if it does not
    /// exist. A quarantined queue is an [`Error::Corrupt`].
    pub fn queue(&self, name: &str) -> Result<Arc<QueueLog>> {
        if !valid_name(name) {
            return Err(Error::InvalidName(name.to_owned()));
        }
        let mut map = self.map();
        match map.get(name) {
            Some(Entry::Open(q)) => return Ok(q.clone()),
            Some(Entry::Quarantined(e)) => return Err(e.clone()),
            None => {}
        }
        let dir = self.queues_dir.join(name);
        let ioe = |op| move |e| Error::io(name, op, e);
        self.env.vfs.create_dir_all(&dir).map_err(ioe("creating the queue directory"))?;
        create_segment(&self.env, &dir, 0, self.env.clock.now_ms()).map_err(ioe("creating a segment"))?;
        self.env.vfs.sync_dir(&self.queues_dir).map_err(ioe("syncing the queues directory"))?;
        let r = Recovered {
            sealed: Vec::new(),
            active_base: 0,
            active_len: format::SEGMENT_HEADER_LEN,
            active_index: Vec::new(),
            next_offset: 0,
        };
        let q = QueueLog::open(name, dir, self.log, self.env.clone(), r);
        map.insert(name.to_owned(), Entry::Open(q.clone()));
        tracing::info!(queue = name, "queue created");
        Ok(q)
    }

    /// The queue `name` if it exists.
    pub fn get(&self, name: &str) -> Result<Option<Arc<QueueLog>>> {
        match self.map().get(name) {
            Some(Entry::Open(q)) => Ok(Some(q.clone())),
            Some(Entry::Quarantined(e)) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// Names of all queues, quarantined ones included, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Quarantined queues and why, including queues whose corruption was
    /// found by a read after opening.
    pub fn quarantined(&self) -> Vec<(String, Error)> {
        self.map()
            .iter()
            .filter_map(|(n, e)| match e {
                Entry::Quarantined(e) => Some((n.clone(), e.clone())),
                Entry::Open(q) => match q.failure() {
                    Some(e @ Error::Corrupt { .. }) => Some((n.clone(), e)),
                    _ => None,
                },
            })
            .collect()
    }

    /// Reopens a queue from what is on disk: after a fail-stop, bytes written
    /// after the last acknowledged append are dropped first. Also retries a
    /// quarantined queue (after an offline repair).
    pub fn reopen(&self, name: &str) -> Result<Arc<QueueLog>> {
        let mut map = self.map();
        let hint = match map.get(name) {
            Some(Entry::Open(q)) => {
                let hint = q.failure().filter(Error::is_storage).map(|_| q.durable_hint());
                q.shut();
                hint
            }
            Some(Entry::Quarantined(_)) => None,
            None => return Err(Error::NotFound(name.to_owned())),
        };
        let hint = hint.or_else(|| self.hints.lock().unwrap_or_else(|e| e.into_inner()).remove(name));
        self.env.files.forget_dir(&self.queues_dir.join(name));
        match self.recover(name, hint) {
            Ok((q, _)) => {
                map.insert(name.to_owned(), Entry::Open(q.clone()));
                Ok(q)
            }
            Err(e) => {
                if let Some(h) = hint {
                    self.hints.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), h);
                }
                if matches!(e, Error::Corrupt { .. }) {
                    map.insert(name.to_owned(), Entry::Quarantined(e.clone()));
                }
                Err(e)
            }
        }
    }

    /// Deletes a queue and its files.
    pub fn delete_queue(&self, name: &str) -> Result<()> {
        let mut map = self.map();
        let Some(entry) = map.remove(name) else {
            return Err(Error::NotFound(name.to_owned()));
        };
        if let Entry::Open(q) = entry {
            q.shut();
        }
        let dir = self.queues_dir.join(name);
        self.env.files.forget_dir(&dir);
        let ioe = |op| move |e| Error::io(name, op, e);
        self.env.vfs.remove_dir_all(&dir).map_err(ioe("deleting the queue directory"))?;
        self.env.vfs.sync_dir(&self.queues_dir).map_err(ioe("syncing the queues directory"))?;
        Ok(())
    }

    /// Flushes every queue, writes clean checkpoints (so the next open scans
    /// nothing), stops the committers and releases the directory. Returns the
    /// first error met; every queue is closed regardless.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let Some(lock) = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        let queues: Vec<Arc<QueueLog>> =
            self.map().values().filter_map(|e| if let Entry::Open(q) = e { Some(q.clone()) } else { None }).collect();
        let mut first = None;
        for q in queues {
            if let Err(e) = q.close() {
                tracing::warn!(queue = q.name(), error = %e, "queue did not close cleanly");
                first.get_or_insert(e);
            }
        }
        self.env.pool.shutdown();
        drop(lock);
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
