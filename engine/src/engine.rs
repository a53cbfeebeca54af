//! The engine: one data directory, its queues, and the threads and files
//! they share; and the operations that span queues (dead-letter moves,
//! topic routing).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::commit::CommitPool;
use crate::error::{Error, Result};
use crate::files::{Env, FileCache};
use crate::format::{self, Message};
use crate::group::{ConsumerId, DeadReason, Delivery};
use crate::io::{RealFs, Vfs};
use crate::log::{create_segment, LogConfig, QueueLog, Recovered};
use crate::queue::{CompactReport, ConsumeOptions, DeadLetter, Pending, Published, Queue, QueueStats};
use crate::recovery::{self, RecoveryStats};
use crate::routing::{self, Bindings, BINDINGS_FILE};
use crate::settings::{QueueSettings, QueueSpec};
use crate::signal::Signal;
use crate::{valid_name, Clock, SystemClock};

/// File name of a queue's settings in its directory.
pub const SETTINGS_FILE: &str = "queue";

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (`./gmq-data` for the server's default).
    pub data_dir: PathBuf,
    /// Settings of queues created without their own (auto-created queues),
    /// and defaults for the fields a `create` leaves out.
    pub defaults: QueueSettings,
    /// A recovery checkpoint is written after this many bytes of a queue's
    /// log, so a crash rescans at most this much. Default 16 MiB.
    pub checkpoint_bytes: u64,
    /// Committer threads shared by all queues. Default 2. Zero gives a
    /// manual pool driven by [`Engine::run_committers`] (deterministic tests).
    pub committer_threads: usize,
    /// Bound on open files (each queue needs one only while it is read or
    /// written). Default 1024.
    pub max_open_files: usize,
    /// Threads that recover queues at open. Default 8 (a cold open is
    /// random reads, which the disk serves faster in parallel). With
    /// `committer_threads = 0` (deterministic tests) recovery runs on the
    /// caller's thread.
    pub recovery_threads: usize,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            defaults: QueueSettings::default(),
            checkpoint_bytes: 16 << 20,
            committer_threads: 2,
            max_open_files: 1024,
            recovery_threads: 8,
        }
    }

    fn log_config(&self, s: &QueueSettings) -> LogConfig {
        LogConfig { fsync: s.fsync, segment_bytes: s.segment_bytes, checkpoint_bytes: self.checkpoint_bytes }
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

/// Work a non-blocking engine call left for a thread that may block (see
/// [`Engine::consume_nonblocking`]).
#[derive(Debug, Default)]
#[must_use = "a follow-up left undone leaves dead letters unmoved and the state log growing"]
pub struct Followup {
    queue: Option<Arc<Queue>>,
    dead: Vec<DeadLetter>,
    snapshot: bool,
}

impl Followup {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.dead.is_empty() && !self.snapshot
    }
}

/// A queue in [`Engine::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSummary {
    /// Name.
    pub name: String,
    /// Messages not yet done for every group.
    pub depth: u64,
    /// Bytes of its segments.
    pub bytes: u64,
    /// Its groups' names.
    pub groups: Vec<String>,
    /// Consumers attached.
    pub consumers: u64,
    /// Why it is quarantined, if it is.
    pub quarantined: Option<String>,
    /// The storage failure that stopped it, until housekeeping reopens it.
    pub stopped: Option<String>,
}

/// A recovered queue and what its recovery found.
type Recovery = (Arc<Queue>, RecoveryStats);

#[derive(Debug)]
enum Entry {
    Open(Arc<Queue>),
    Quarantined(Error),
}

/// A data directory of queues.
///
/// ```
/// use gmq_engine::{AckMode, ConsumeOptions, Engine, EngineConfig, Message};
/// let dir = tempfile::tempdir()?;
/// let engine = Engine::open(EngineConfig::new(dir.path()))?;
/// let stored = engine.publish("jobs", &[Message::new("hello")])?.wait()?; // durable now
/// assert_eq!(stored.offsets, vec![0]);
/// let opts = ConsumeOptions { max: 10, ack: AckMode::Manual, ..Default::default() };
/// let got = engine.consume("jobs", "workers", 1, &opts)?.wait()?;
/// assert_eq!(&got[0].record.message.payload[..], b"hello");
/// engine.ack("jobs", "workers", &[got[0].record.offset])?.wait()?;
/// engine.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Engine {
    env: Arc<Env>,
    cfg: EngineConfig,
    root: PathBuf,
    queues_dir: PathBuf,
    queues: RwLock<BTreeMap<String, Entry>>,
    creating: Mutex<()>,
    hints: Mutex<HashMap<String, (u64, u64)>>,
    bindings: Mutex<Bindings>,
    created: Arc<Signal>,
    lock: Mutex<Option<Box<dyn std::fmt::Debug + Send + Sync>>>,
    report: OpenReport,
    memory: bool,
}

fn new_incarnation() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

impl Engine {
    /// Opens (creating if needed) a data directory on the real filesystem.
    pub fn open(cfg: EngineConfig) -> Result<Engine> {
        Engine::open_with(cfg, Arc::new(RealFs), Arc::new(SystemClock))
    }

    /// Memory mode: the same engine with no files; nothing survives the
    /// process. `cfg.data_dir` only names it.
    pub fn open_memory(cfg: EngineConfig) -> Result<Engine> {
        let mut e = Engine::open_with(cfg, Arc::new(crate::memfs::MemFs::new()), Arc::new(SystemClock))?;
        e.memory = true;
        Ok(e)
    }

    /// Whether this is a memory-mode engine.
    pub fn is_memory(&self) -> bool {
        self.memory
    }

    /// Opens a data directory on any [`Vfs`] with any clock.
    pub fn open_with(cfg: EngineConfig, vfs: Arc<dyn Vfs>, clock: Arc<dyn Clock>) -> Result<Engine> {
        cfg.log_config(&cfg.defaults).validate().map_err(Error::BadRequest)?;
        cfg.defaults.validate("defaults").map_err(Error::BadRequest)?;
        let root = cfg.data_dir.clone();
        let queues_dir = root.join(format::QUEUES_DIR);
        let ioe = |op| move |e| Error::io("", op, e);
        vfs.create_dir_all(&queues_dir).map_err(ioe("creating the data directory"))?;
        vfs.sync_dir(&queues_dir).map_err(ioe("syncing the data directory"))?;
        vfs.sync_dir(&root).map_err(ioe("syncing the data directory"))?;
        vfs.sync_dir(crate::io::parent(&root)).map_err(ioe("syncing the data directory"))?;
        let lock = recovery::lock_data_dir(vfs.as_ref(), &root)?;
        let bindings_path = root.join(BINDINGS_FILE);
        let bindings = if vfs.exists(&bindings_path) {
            let text = vfs.read_file(&bindings_path).map_err(ioe("reading the bindings"))?;
            Bindings::decode(&String::from_utf8_lossy(&text)).map_err(|reason| Error::Corrupt {
                queue: String::new(),
                file: bindings_path.clone(),
                position: 0,
                reason,
            })?
        } else {
            Bindings::default()
        };
        let env = Arc::new(Env {
            files: FileCache::new(vfs.clone(), cfg.max_open_files),
            vfs,
            pool: CommitPool::new(cfg.committer_threads).map_err(ioe("starting the committer threads"))?,
            clock,
        });
        let mut engine = Engine {
            env,
            cfg,
            root,
            queues_dir,
            queues: RwLock::new(BTreeMap::new()),
            creating: Mutex::new(()),
            hints: Mutex::new(HashMap::new()),
            bindings: Mutex::new(bindings),
            created: Arc::new(Signal::default()),
            lock: Mutex::new(Some(lock)),
            report: OpenReport::default(),
            memory: false,
        };
        let names = engine.env.vfs.read_dir(&engine.queues_dir).map_err(ioe("listing queues"))?;
        let mut report = OpenReport::default();
        let mut map = BTreeMap::new();
        let names: Vec<String> = names
            .into_iter()
            .filter(|name| {
                let ok = valid_name(name);
                if !ok {
                    tracing::warn!(entry = %name, "ignoring a directory entry that is not a queue name");
                }
                ok
            })
            .collect();
        for (name, r) in names.iter().zip(engine.recover_all(&names)) {
            match r {
                Ok((q, st)) => {
                    report.scanned_bytes += st.scanned_bytes;
                    report.torn_bytes += st.torn_bytes;
                    report.queues += 1;
                    map.insert(name.clone(), Entry::Open(q));
                }
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::error!(queue = %name, error = %e, "queue quarantined; run `gmq repair`");
                    report.quarantined.push((name.clone(), e.clone()));
                    map.insert(name.clone(), Entry::Quarantined(e));
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
        engine.queues = RwLock::new(map);
        engine.report = report;
        Ok(engine)
    }

    /// Recovers queues on up to `recovery_threads` threads (a cold open is
    /// random reads, which a disk serves faster in parallel); results in the
    /// order of `names`.
    fn recover_all(&self, names: &[String]) -> Vec<Result<Recovery>> {
        let threads = if self.cfg.committer_threads == 0 { 1 } else { self.cfg.recovery_threads };
        let threads = threads.min(names.len().div_ceil(16)).max(1);
        if threads == 1 {
            return names.iter().map(|n| self.recover(n, None, None)).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let out: Mutex<Vec<Option<Result<Recovery>>>> = Mutex::new((0..names.len()).map(|_| None).collect());
        let work = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(name) = names.get(i) else { break };
            let r = self.recover(name, None, None);
            out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
        };
        std::thread::scope(|s| {
            for _ in 1..threads {
                // A thread that cannot start leaves its share to the others.
                if let Err(e) = std::thread::Builder::new().name("gmq-recover".into()).spawn_scoped(s, work) {
                    tracing::warn!(error = %e, "cannot start a recovery thread");
                }
            }
            work();
        });
        out.into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("a queue was not recovered".into()))))
            .collect()
    }

    /// Reads a queue's settings file; a queue without one (made by an
    /// interrupted create) gets the defaults and a new incarnation.
    fn load_settings(&self, name: &str, dir: &Path) -> Result<(QueueSettings, u64)> {
        let path = dir.join(SETTINGS_FILE);
        let vfs = &self.env.vfs;
        if !vfs.exists(&path) {
            let (s, inc) = (self.cfg.defaults.clone(), new_incarnation());
            vfs.write_atomic(&path, s.encode(inc).as_bytes())
                .map_err(|e| Error::io(name, "writing the queue settings", e))?;
            return Ok((s, inc));
        }
        let text = vfs.read_file(&path).map_err(|e| Error::io(name, "reading the queue settings", e))?;
        let corrupt =
            |reason: String| Error::Corrupt { queue: name.to_owned(), file: path.clone(), position: 0, reason };
        let text = String::from_utf8(text).map_err(|_| corrupt("settings file is not UTF-8".into()))?;
        let (s, inc) = QueueSettings::decode(&text).map_err(corrupt)?;
        s.validate(name).map_err(corrupt)?;
        Ok((s, inc))
    }

    fn recover(&self, name: &str, hint: Option<(u64, u64)>, state_hint: Option<u64>) -> Result<Recovery> {
        let dir = self.queues_dir.join(name);
        let (settings, inc) = self.load_settings(name, &dir)?;
        let (r, st) = recovery::recover_queue(&self.env, &dir, name, hint)?;
        let log = QueueLog::open(name, dir.clone(), self.cfg.log_config(&settings), self.env.clone(), r);
        let q = Queue::open(self.env.clone(), dir, settings, inc, log, state_hint)?;
        Ok((q, st))
    }

    /// The queue map for changes.
    fn map(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.queues.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue map for lookups (every operation makes one: shared).
    fn map_read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
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

    /// The settings auto-created queues get.
    pub fn defaults(&self) -> &QueueSettings {
        &self.cfg.defaults
    }

    /// Notified whenever a queue is created (a consumer waiting on a queue
    /// that does not exist yet waits on this).
    pub fn created_signal(&self) -> &Arc<Signal> {
        &self.created
    }

    /// Creates queue `name` with `spec` over the defaults. If it exists, the
    /// settings `spec` gives must equal the queue's ([`Error::Conflict`]
    /// otherwise). Returns the queue and whether it was created.
    pub fn create_queue(&self, name: &str, spec: &QueueSpec) -> Result<(Arc<Queue>, bool)> {
        if !valid_name(name) {
            return Err(Error::InvalidName(name.to_owned()));
        }
        // Creations are serialized by their own lock, so the files are made
        // without holding the queue map (whose lock every operation takes).
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        match self.map_read().get(name) {
            Some(Entry::Open(q)) => {
                if let Some((field, given, have)) = spec.conflict(q.settings()) {
                    return Err(Error::Conflict(format!("queue '{name}' exists with {field} = {have}, not {given}")));
                }
                return Ok((q.clone(), false));
            }
            Some(Entry::Quarantined(e)) => return Err(e.clone()),
            None => {}
        }
        let settings = spec.apply(&self.cfg.defaults);
        settings.validate(name).map_err(Error::BadRequest)?;
        let dir = self.queues_dir.join(name);
        let ioe = |op| move |e| Error::io(name, op, e);
        let inc = new_incarnation();
        let vfs = &self.env.vfs;
        vfs.create_dir_all(&dir).map_err(ioe("creating the queue directory"))?;
        // Settings first: a crash before the segment exists leaves a queue
        // that opens empty with these settings.
        vfs.write_atomic(&dir.join(SETTINGS_FILE), settings.encode(inc).as_bytes())
            .map_err(ioe("writing the queue settings"))?;
        create_segment(&self.env, &dir, 0, self.env.clock.now_ms()).map_err(ioe("creating a segment"))?;
        vfs.sync_dir(&self.queues_dir).map_err(ioe("syncing the queues directory"))?;
        let r = Recovered {
            clean: false,
            sealed: Vec::new(),
            active_base: 0,
            active_len: format::SEGMENT_HEADER_LEN,
            active_index: Vec::new(),
            next_offset: 0,
        };
        let log = QueueLog::open(name, dir.clone(), self.cfg.log_config(&settings), self.env.clone(), r);
        let q = Queue::open(self.env.clone(), dir, settings, inc, log, None)?;
        self.map().insert(name.to_owned(), Entry::Open(q.clone()));
        tracing::info!(queue = name, "queue created");
        self.created.notify();
        Ok((q, true))
    }

    /// The queue `name`, created with the default settings if it does not
    /// exist. A quarantined queue is an [`Error::Corrupt`].
    pub fn queue(&self, name: &str) -> Result<Arc<Queue>> {
        if let Some(q) = self.get(name)? {
            return Ok(q);
        }
        self.create_queue(name, &QueueSpec::default()).map(|(q, _)| q)
    }

    /// The queue `name` if it exists.
    pub fn get(&self, name: &str) -> Result<Option<Arc<Queue>>> {
        match self.map_read().get(name) {
            Some(Entry::Open(q)) => Ok(Some(q.clone())),
            Some(Entry::Quarantined(e)) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// The queue `name`, or [`Error::NotFound`].
    pub fn existing(&self, name: &str) -> Result<Arc<Queue>> {
        self.get(name)?.ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    /// Names of all queues, quarantined ones included, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        self.map_read().keys().cloned().collect()
    }

    fn open_queues(&self) -> Vec<Arc<Queue>> {
        self.map_read().values().filter_map(|e| if let Entry::Open(q) = e { Some(q.clone()) } else { None }).collect()
    }

    /// Every queue with its depth, bytes, groups and consumers.
    pub fn list(&self) -> Vec<QueueSummary> {
        let entries: Vec<(String, std::result::Result<Arc<Queue>, String>)> = self
            .map_read()
            .iter()
            .map(|(n, e)| {
                (
                    n.clone(),
                    match e {
                        Entry::Open(q) => Ok(q.clone()),
                        Entry::Quarantined(e) => Err(e.to_string()),
                    },
                )
            })
            .collect();
        entries
            .into_iter()
            .map(|(name, e)| match e {
                Ok(q) => {
                    let s = q.stats();
                    QueueSummary {
                        name,
                        depth: s.depth,
                        bytes: s.bytes,
                        groups: s.groups.into_iter().map(|g| g.name).collect(),
                        consumers: s.consumers,
                        quarantined: q.failure().filter(|e| matches!(e, Error::Corrupt { .. })).map(|e| e.to_string()),
                        stopped: q.failure().filter(Error::is_storage).map(|e| e.to_string()),
                    }
                }
                Err(reason) => QueueSummary {
                    name,
                    depth: 0,
                    bytes: 0,
                    groups: Vec::new(),
                    consumers: 0,
                    quarantined: Some(reason),
                    stopped: None,
                },
            })
            .collect()
    }

    /// A queue's figures; [`Error::NotFound`] if it does not exist.
    pub fn stats(&self, name: &str) -> Result<QueueStats> {
        Ok(self.existing(name)?.stats())
    }

    /// Quarantined queues and why, including queues whose corruption was
    /// found by a read after opening.
    pub fn quarantined(&self) -> Vec<(String, Error)> {
        self.map_read()
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
    pub fn reopen(&self, name: &str) -> Result<Arc<Queue>> {
        let mut map = self.map();
        let (hint, state_hint) = match map.get(name) {
            Some(Entry::Open(q)) => {
                let hint = q.log().failure().filter(Error::is_storage).map(|_| q.log().durable_hint());
                let state_hint = q.state_hint();
                q.shut();
                // Waiters on the old handle look the queue up again.
                q.signal().notify();
                (hint, state_hint)
            }
            Some(Entry::Quarantined(_)) => (None, None),
            None => return Err(Error::NotFound(name.to_owned())),
        };
        let hint = hint.or_else(|| self.hints.lock().unwrap_or_else(|e| e.into_inner()).remove(name));
        self.env.files.forget_dir(&self.queues_dir.join(name));
        match self.recover(name, hint, state_hint) {
            Ok((q, _)) => {
                map.insert(name.to_owned(), Entry::Open(q.clone()));
                self.created.notify();
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

    /// Deletes a queue, its files and its bindings.
    pub fn delete_queue(&self, name: &str) -> Result<()> {
        let mut map = self.map();
        let Some(entry) = map.remove(name) else {
            return Err(Error::NotFound(name.to_owned()));
        };
        if let Entry::Open(q) = entry {
            q.shut();
            // Consumers waiting on it see it gone.
            q.signal().notify();
        }
        let dir = self.queues_dir.join(name);
        self.env.files.forget_dir(&dir);
        let ioe = |op| move |e| Error::io(name, op, e);
        self.env.vfs.remove_dir_all(&dir).map_err(ioe("deleting the queue directory"))?;
        self.env.vfs.sync_dir(&self.queues_dir).map_err(ioe("syncing the queues directory"))?;
        drop(map);
        let mut b = self.bindings_lock();
        if b.remove_queue(name) {
            self.save_bindings(&b)?;
        }
        tracing::info!(queue = name, "queue deleted");
        Ok(())
    }

    /// Removes every stored message of a queue; returns how many were not
    /// yet done. [`Error::NotFound`] if it does not exist.
    pub fn purge(&self, name: &str) -> Result<u64> {
        self.existing(name)?.purge()
    }

    /// Publishes to `queue` (created with the defaults if missing): see
    /// [`Queue::publish`].
    pub fn publish(&self, queue: &str, msgs: &[Message]) -> Result<Pending<Published>> {
        self.queue(queue)?.publish(msgs)
    }

    /// Consumes from `group` of `queue` for `consumer`: see
    /// [`ConsumeOptions`]. A queue that does not exist has nothing (an empty
    /// list, not an error). Messages past `max_deliveries`, or expired when
    /// the queue dead-letters expired messages, are moved to the dead-letter
    /// queue on the way.
    pub fn consume(
        &self,
        queue: &str,
        group: &str,
        consumer: ConsumerId,
        opts: &ConsumeOptions,
    ) -> Result<Pending<Vec<Delivery>>> {
        let Some(q) = self.get(queue)? else {
            if !valid_name(group) {
                return Err(Error::InvalidName(group.to_owned()));
            }
            return Ok(Pending::ready(Vec::new()));
        };
        let (p, dead, _) = q.consume(group, consumer, opts, true)?;
        if !dead.is_empty() {
            self.dead_letter(&q, dead);
        }
        Ok(p)
    }

    /// [`Engine::consume`] without the parts that may block, for callers on
    /// an async worker: moving dead letters and rewriting the group state
    /// snapshot come back as a [`Followup`] to run elsewhere (or drop, if
    /// [`Followup::is_empty`]). Records are read from the page cache or the
    /// disk: a read of records not in memory waits for the disk.
    pub fn consume_nonblocking(
        &self,
        queue: &str,
        group: &str,
        consumer: ConsumerId,
        opts: &ConsumeOptions,
    ) -> Result<(Pending<Vec<Delivery>>, Followup)> {
        let Some(q) = self.get(queue)? else {
            if !valid_name(group) {
                return Err(Error::InvalidName(group.to_owned()));
            }
            return Ok((Pending::ready(Vec::new()), Followup::default()));
        };
        let (p, dead, snapshot) = q.consume(group, consumer, opts, false)?;
        Ok((p, Followup { queue: Some(q), dead, snapshot }))
    }

    /// [`Engine::ack`] that never blocks: see [`Engine::consume_nonblocking`].
    pub fn ack_nonblocking(&self, queue: &str, group: &str, offsets: &[u64]) -> Result<(Pending<usize>, Followup)> {
        match self.get(queue)? {
            Some(q) => {
                let (p, snapshot) = q.ack_nonblocking(group, offsets)?;
                Ok((p, Followup { queue: Some(q), dead: Vec::new(), snapshot }))
            }
            None => Ok((Pending::ready(0), Followup::default())),
        }
    }

    /// Runs what a non-blocking call left: moves its dead letters and
    /// rewrites the group state snapshot if it is (still) due. Blocks.
    pub fn run_followup(&self, f: Followup) -> Result<()> {
        let Some(q) = f.queue else { return Ok(()) };
        if !f.dead.is_empty() {
            self.dead_letter(&q, f.dead);
        }
        if f.snapshot {
            q.snapshot_if_due()?;
        }
        Ok(())
    }

    /// Copies dead letters to the queue's dead-letter queue; the source
    /// offsets are acked once the copies are stored. A crash in between
    /// leaves the message in its queue (it is delivered, and moved, again):
    /// never lost, never in neither place. The copy's `msg_id` is derived
    /// from its origin, so the dead-letter queue's dedup window drops a
    /// second copy.
    fn dead_letter(&self, q: &Arc<Queue>, dead: Vec<DeadLetter>) {
        let dlq_name = q.settings().dead_letter_queue(q.name());
        let mut by_group: BTreeMap<String, (Vec<u64>, Vec<Message>)> = BTreeMap::new();
        for d in dead {
            let mut m = d.record.message;
            let mut h = std::mem::take(&mut m.headers);
            let (reason, nack) = match d.reason {
                DeadReason::MaxDeliveries(r) => ("max_deliveries", r),
                DeadReason::Expired => ("expired", None),
            };
            h.push(("x-dead-letter-queue".into(), q.name().to_owned()));
            h.push(("x-dead-letter-group".into(), d.group.clone()));
            h.push(("x-dead-letter-offset".into(), d.record.offset.to_string()));
            h.push(("x-dead-letter-deliveries".into(), d.deliveries.to_string()));
            h.push(("x-dead-letter-reason".into(), reason.into()));
            h.push(("x-dead-letter-timestamp-ms".into(), d.record.timestamp_ms.to_string()));
            if let Some(r) = nack {
                h.push(("x-dead-letter-nack-reason".into(), r));
            }
            if let Some(id) = m.msg_id.take() {
                h.push(("x-original-msg-id".into(), id));
            }
            m.headers = h;
            m.ttl_ms = None;
            m.msg_id = Some(format!("dlq:{}:{}:{}", q.name(), d.group, d.record.offset));
            let e = by_group.entry(d.group).or_default();
            e.0.push(d.record.offset);
            e.1.push(m);
        }
        for (group, (offsets, msgs)) in by_group {
            match self.queue(&dlq_name).and_then(|dlq| dlq.publish(&msgs)) {
                Ok(p) => {
                    tracing::info!(queue = %q.name(), group = %group, count = offsets.len(), dead_letter = %dlq_name, "moving messages to the dead-letter queue");
                    q.moving(&group, offsets, p);
                }
                Err(e) => {
                    tracing::warn!(queue = %q.name(), group = %group, dead_letter = %dlq_name, error = %e, "cannot store dead letters; they stay in the queue");
                    q.unmove(&group, &offsets);
                }
            }
        }
    }

    /// Acks offsets of a group: see [`Queue::ack`]. A missing queue acks nothing.
    pub fn ack(&self, queue: &str, group: &str, offsets: &[u64]) -> Result<Pending<usize>> {
        match self.get(queue)? {
            Some(q) => q.ack(group, offsets),
            None => Ok(Pending::ready(0)),
        }
    }

    /// Nacks offsets of a group: see [`Queue::nack`].
    pub fn nack(
        &self,
        queue: &str,
        group: &str,
        offsets: &[u64],
        delay_ms: u64,
        reason: Option<&str>,
    ) -> Result<usize> {
        Ok(self.get(queue)?.map_or(0, |q| q.nack(group, offsets, delay_ms, reason)))
    }

    /// `consumer` went away: its leases on every queue go back to their
    /// groups. Returns how many messages were released.
    pub fn release_consumer(&self, consumer: ConsumerId) -> usize {
        self.open_queues().iter().map(|q| q.release(consumer)).sum()
    }

    fn bindings_lock(&self) -> MutexGuard<'_, Bindings> {
        self.bindings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save_bindings(&self, b: &Bindings) -> Result<()> {
        self.env
            .vfs
            .write_atomic(&self.root.join(BINDINGS_FILE), b.encode().as_bytes())
            .map_err(|e| Error::io("", "writing the bindings", e))
    }

    /// Binds `queue` (created with the defaults if missing) to topics
    /// matching `pattern`. Durable when it returns.
    pub fn bind(&self, queue: &str, pattern: &str) -> Result<()> {
        if !routing::valid_pattern(pattern) {
            return Err(Error::InvalidName(pattern.to_owned()));
        }
        self.queue(queue)?;
        let mut b = self.bindings_lock();
        if b.bind(queue, pattern) {
            if let Err(e) = self.save_bindings(&b) {
                b.unbind(queue, pattern);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes a binding; [`Error::NotFound`] if there was none.
    pub fn unbind(&self, queue: &str, pattern: &str) -> Result<()> {
        let mut b = self.bindings_lock();
        if !b.unbind(queue, pattern) {
            return Err(Error::NotFound(format!("binding {queue} <- {pattern}")));
        }
        if let Err(e) = self.save_bindings(&b) {
            b.bind(queue, pattern);
            return Err(e);
        }
        Ok(())
    }

    /// Every binding as `(queue, pattern)`.
    pub fn bindings(&self) -> Vec<(String, String)> {
        self.bindings_lock().list()
    }

    /// Publishes a copy of `msg` to every queue bound to a pattern matching
    /// `topic`; returns each queue with its pending publish or why that copy
    /// was refused (an empty list when nothing matches). Each copy is atomic
    /// on its own: one queue refusing (full, failed) does not stop the
    /// others, so the caller can say exactly which copies were stored.
    #[allow(clippy::type_complexity)]
    pub fn publish_topic(&self, topic: &str, msg: &Message) -> Result<Vec<(String, Result<Pending<Published>>)>> {
        if !routing::valid_topic(topic) {
            return Err(Error::InvalidName(topic.to_owned()));
        }
        let queues = self.bindings_lock().route(topic);
        let mut out = Vec::with_capacity(queues.len());
        for name in queues {
            let p = self.queue(&name).and_then(|q| q.publish(std::slice::from_ref(msg)));
            out.push((name, p));
        }
        Ok(out)
    }

    /// Housekeeping for every queue (dead-letter moves, retention), and a
    /// reopen from disk of every queue a storage failure stopped (a full
    /// disk that has space again, a transient I/O error): the reopen drops
    /// what was never acknowledged, and the queue takes writes again. The
    /// server runs it periodically. Returns segments deleted; a queue that
    /// fails is logged and skipped.
    pub fn maintain(&self) -> usize {
        let mut n = 0;
        for q in self.open_queues() {
            if let Some(cause) = q.failure().filter(Error::is_storage) {
                match self.reopen(q.name()) {
                    Ok(_) => tracing::warn!(queue = %q.name(), %cause, "reopened from disk after a storage failure"),
                    Err(e) => tracing::debug!(queue = %q.name(), error = %e, "still failing after a storage failure"),
                }
                continue;
            }
            match q.maintain() {
                Ok(d) => n += d,
                Err(e) => tracing::warn!(queue = %q.name(), error = %e, "housekeeping failed"),
            }
        }
        n
    }

    /// Compacts a queue: see [`Queue::compact`].
    pub fn compact(&self, name: &str, threshold: f64, dry_run: bool) -> Result<CompactReport> {
        self.existing(name)?.compact(threshold, dry_run)
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
        let mut first = None;
        for q in self.open_queues() {
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
