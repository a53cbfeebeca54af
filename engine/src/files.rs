//! What every queue of an engine shares: the filesystem, a bounded cache of
//! open files, the committer pool and the clock.
//!
//! The cache is what lets 10 000 queues live in one data directory with a
//! bounded number of descriptors: a queue holds no file open between
//! operations; the cache keeps the most recently used ones.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::commit::CommitPool;
use crate::io::{OpenMode, VFile, Vfs};
use crate::Clock;

/// Shared by every queue of one engine.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) files: FileCache,
    pub(crate) pool: CommitPool,
    pub(crate) clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<PathBuf, (Arc<dyn VFile>, u64)>,
    tick: u64,
}

/// Least-recently-used cache of open segment files (read-write).
#[derive(Debug)]
pub(crate) struct FileCache {
    vfs: Arc<dyn Vfs>,
    cap: usize,
    inner: Mutex<CacheInner>,
}

impl FileCache {
    pub(crate) fn new(vfs: Arc<dyn Vfs>, cap: usize) -> Self {
        FileCache { vfs, cap: cap.max(1), inner: Mutex::new(CacheInner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open file at `path`, opening it (and closing the least recently
    /// used one past the bound) when needed. A handle in use stays valid after
    /// eviction; it closes when its last user drops it.
    pub(crate) fn get(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        {
            let mut c = self.lock();
            c.tick += 1;
            let t = c.tick;
            if let Some(e) = c.map.get_mut(path) {
                e.1 = t;
                return Ok(e.0.clone());
            }
        }
        let f = self.vfs.open(path, OpenMode::ReadWrite)?;
        let mut c = self.lock();
        c.tick += 1;
        let t = c.tick;
        if c.map.len() >= self.cap {
            if let Some(victim) = c.map.iter().min_by_key(|(_, (_, used))| *used).map(|(p, _)| p.clone()) {
                c.map.remove(&victim);
            }
        }
        c.map.insert(path.to_path_buf(), (f.clone(), t));
        Ok(f)
    }

    /// Drops the cached handle of `path` (before it is deleted or replaced).
    pub(crate) fn forget(&self, path: &Path) {
        self.lock().map.remove(path);
    }

    /// Drops every cached handle under `dir`.
    pub(crate) fn forget_dir(&self, dir: &Path) {
        self.lock().map.retain(|p, _| !p.starts_with(dir));
    }
}
