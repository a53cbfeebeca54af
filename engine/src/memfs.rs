//! Memory mode's storage: a filesystem that lives in the process, so the
//! whole engine — segments, group state, settings, recovery — runs with the
//! same API and semantics and no files (GMQ's memory storage). Syncs cost
//! nothing and nothing survives the process.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::io::{Mapped, OpenMode, VFile, Vfs};

type Data = Arc<RwLock<Vec<u8>>>;

#[derive(Debug, Default)]
struct Tree {
    files: BTreeMap<PathBuf, Data>,
    dirs: BTreeSet<PathBuf>,
}

/// An in-memory [`Vfs`].
#[derive(Debug, Default, Clone)]
pub struct MemFs {
    tree: Arc<Mutex<Tree>>,
}

#[derive(Debug)]
struct MemFile(Data);

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl MemFs {
    /// An empty filesystem.
    pub fn new() -> Self {
        MemFs::default()
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn parent_exists(t: &Tree, path: &Path) -> bool {
        let p = crate::io::parent(path);
        p == Path::new(".") || p == Path::new("/") || t.dirs.contains(p)
    }
}

impl VFile for MemFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let d = self.0.read().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(pos).unwrap_or(usize::MAX).min(d.len());
        let n = buf.len().min(d.len() - start);
        buf[..n].copy_from_slice(&d[start..start + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let pos = usize::try_from(pos).map_err(|_| io::Error::other("position out of range"))?;
        let mut d = self.0.write().unwrap_or_else(|e| e.into_inner());
        if d.len() < pos + buf.len() {
            d.resize(pos + buf.len(), 0);
        }
        d[pos..pos + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length out of range"))?;
        self.0.write().unwrap_or_else(|e| e.into_inner()).resize(len, 0);
        Ok(())
    }
}

struct Snapshot(Vec<u8>);

impl AsRef<[u8]> for Snapshot {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Vfs for MemFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VFile>> {
        let mut t = self.tree();
        let data = match mode {
            OpenMode::Read | OpenMode::ReadWrite => t.files.get(path).cloned().ok_or_else(|| not_found(path))?,
            OpenMode::CreateNew | OpenMode::CreateTruncate => {
                if !MemFs::parent_exists(&t, path) {
                    return Err(not_found(crate::io::parent(path)));
                }
                match t.files.get(path) {
                    Some(_) if mode == OpenMode::CreateNew => {
                        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}", path.display())))
                    }
                    // Truncation makes a new file: open handles keep the old bytes.
                    _ => {
                        let d: Data = Arc::default();
                        t.files.insert(path.to_path_buf(), d.clone());
                        d
                    }
                }
            }
        };
        Ok(Arc::new(MemFile(data)))
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let d = self.tree().files.get(path).cloned().ok_or_else(|| not_found(path))?;
        let bytes = d.read().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(Arc::new(Snapshot(bytes)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut t = self.tree();
        for a in path.ancestors() {
            if !a.as_os_str().is_empty() {
                t.dirs.insert(a.to_path_buf());
            }
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let t = self.tree();
        if !t.dirs.contains(path) {
            return Err(not_found(path));
        }
        let child = |p: &PathBuf| {
            (p.parent() == Some(path)).then(|| p.file_name().and_then(|n| n.to_str()).map(str::to_owned)).flatten()
        };
        let mut names: Vec<String> = t.files.keys().chain(t.dirs.iter()).filter_map(child).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.tree().files.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut t = self.tree();
        t.files.retain(|p, _| !p.starts_with(path));
        t.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut t = self.tree();
        let d = t.files.remove(from).ok_or_else(|| not_found(from))?;
        t.files.insert(to.to_path_buf(), d);
        Ok(())
    }

    fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let t = self.tree();
        t.files.contains_key(path) || t.dirs.contains(path)
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        Ok(Box::new("memory"))
    }
}
