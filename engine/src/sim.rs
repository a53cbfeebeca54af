//! A simulated disk for tests: the real engine runs on it unchanged.
//!
//! It keeps, per file, a *durable image* and the writes made since the last
//! sync (the volatile overlay), and for the namespace the directory entries
//! that were synced and the operations that were not. [`SimFs::crash`] is a
//! power cut: every file falls back to its durable image plus a random prefix
//! of its unsynced writes, the last of which may be torn at a 512-byte sector
//! boundary; the namespace keeps a random prefix of its unsynced operations.
//! Handles opened before the crash fail from then on, as a dead process's would.
//!
//! Faults: the next or a random fraction of syncs fail with EIO (and, as
//! Linux does after a failed writeback, the unsynced writes then never reach
//! the durable image though reads still see them), and writes fail with
//! ENOSPC after writing a random prefix. Everything random comes from one
//! seed, so a failing run replays exactly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::io::{Mapped, OpenMode, VFile, Vfs};

/// Sector size at which a crash may tear a write.
pub const SECTOR: u64 = 512;

/// Which operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `sync_data` and `sync_dir` fail with EIO.
    Sync,
    /// `write_at` writes a random prefix, then fails with ENOSPC.
    Write,
}

#[derive(Debug, Clone)]
enum Op {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct FileData {
    data: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, Node),
    Unlink(PathBuf),
}

impl DirOp {
    fn parent(&self) -> &Path {
        match self {
            DirOp::Link(p, _) | DirOp::Unlink(p) => crate::io::parent(p),
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    countdown: HashMap<FaultKind, u64>,
    per_million: HashMap<FaultKind, u32>,
    full: bool,
}

#[derive(Debug)]
struct State {
    rng: u64,
    epoch: u64,
    next_id: u64,
    files: HashMap<u64, FileData>,
    names: BTreeMap<PathBuf, Node>,
    durable_names: BTreeMap<PathBuf, Node>,
    dir_ops: Vec<DirOp>,
    faults: Faults,
    locks: HashSet<PathBuf>,
    syncs: u64,
}

impl State {
    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    fn fault(&mut self, kind: FaultKind) -> bool {
        if let Some(c) = self.faults.countdown.get_mut(&kind) {
            if *c == 0 {
                self.faults.countdown.remove(&kind);
                return true;
            }
            *c -= 1;
        }
        match self.faults.per_million.get(&kind).copied() {
            Some(p) if p > 0 => self.below(1_000_000) < u64::from(p),
            _ => false,
        }
    }

    fn link(&mut self, path: &Path, node: Node) {
        self.names.insert(path.to_path_buf(), node);
        self.dir_ops.push(DirOp::Link(path.to_path_buf(), node));
    }

    fn unlink(&mut self, path: &Path) {
        self.names.remove(path);
        self.dir_ops.push(DirOp::Unlink(path.to_path_buf()));
    }

    fn file_id(&self, path: &Path) -> io::Result<u64> {
        match self.names.get(path) {
            Some(Node::File(id)) => Ok(*id),
            Some(Node::Dir) => Err(io::Error::other(format!("{} is a directory", path.display()))),
            None => Err(not_found(path)),
        }
    }

    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        let p = crate::io::parent(path);
        if p == Path::new(".") || p == Path::new("/") || self.names.get(p) == Some(&Node::Dir) {
            Ok(())
        } else {
            Err(not_found(p))
        }
    }
}

fn apply_dir_op(names: &mut BTreeMap<PathBuf, Node>, op: &DirOp) {
    match op {
        DirOp::Link(p, n) => {
            names.insert(p.clone(), *n);
        }
        DirOp::Unlink(p) => {
            names.remove(p);
        }
    }
}

fn apply_op(data: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { pos, data: d } => {
            let pos = *pos as usize;
            if data.len() < pos + d.len() {
                data.resize(pos + d.len(), 0);
            }
            data[pos..pos + d.len()].copy_from_slice(d);
        }
        Op::SetLen(n) => data.resize(*n as usize, 0),
    }
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", p.display()))
}

fn eio() -> io::Error {
    io::Error::other("simulated EIO")
}

fn crashed() -> io::Error {
    io::Error::other("simulated process crash: handle is stale")
}

/// The simulated disk. Cheap to clone; clones share the disk.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    /// The process this handle belongs to: after a crash, only handles from
    /// [`SimFs::crash`] work.
    epoch: u64,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFs").finish_non_exhaustive()
    }
}

impl SimFs {
    /// An empty disk whose random choices all come from `seed`.
    pub fn new(seed: u64) -> Self {
        SimFs {
            state: Arc::new(Mutex::new(State {
                rng: seed,
                epoch: 0,
                next_id: 0,
                files: HashMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dir_ops: Vec::new(),
                faults: Faults::default(),
                locks: HashSet::new(),
                syncs: 0,
            })),
            epoch: 0,
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The disk state for an operation of this handle's process.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = self.st();
        if st.epoch != self.epoch {
            return Err(crashed());
        }
        Ok(st)
    }

    /// A power cut. See the module documentation. Returns the handle for the
    /// next process; every earlier handle and open file fails from now on.
    pub fn crash(&self) -> SimFs {
        let mut st = self.st();
        st.epoch += 1;
        st.locks.clear();
        let ops = std::mem::take(&mut st.dir_ops);
        let keep = st.below(ops.len() as u64 + 1) as usize;
        let mut names = st.durable_names.clone();
        for op in &ops[..keep] {
            apply_dir_op(&mut names, op);
        }
        st.durable_names = names.clone();
        st.names = names;
        let mut ids: Vec<u64> = st.files.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(mut f) = st.files.remove(&id) else {
                continue;
            };
            let n = f.unsynced.len();
            let keep = st.below(n as u64 + 1) as usize;
            let mut img = f.durable.clone();
            for (i, op) in f.unsynced.iter().enumerate().take(keep) {
                match op {
                    Op::Write { pos, data } if i + 1 == keep && st.below(2) == 0 => {
                        // Tear the last surviving write at a sector boundary.
                        let end = pos + data.len() as u64;
                        let first = (pos / SECTOR + 1) * SECTOR;
                        let cuts: Vec<u64> = (first..end).step_by(SECTOR as usize).collect();
                        let cut = if cuts.is_empty() { *pos } else { cuts[st.below(cuts.len() as u64) as usize] };
                        let torn = Op::Write { pos: *pos, data: data[..(cut - pos) as usize].to_vec() };
                        apply_op(&mut img, &torn);
                    }
                    op => apply_op(&mut img, op),
                }
            }
            f.durable = img.clone();
            f.data = img;
            f.unsynced.clear();
            st.files.insert(id, f);
        }
        let live: HashSet<u64> =
            st.names.values().filter_map(|n| if let Node::File(id) = n { Some(*id) } else { None }).collect();
        st.files.retain(|id, _| live.contains(id));
        SimFs { state: self.state.clone(), epoch: st.epoch }
    }

    /// Fails the sync or write that comes after `after` more of its kind.
    pub fn fail_after(&self, kind: FaultKind, after: u64) {
        self.st().faults.countdown.insert(kind, after);
    }

    /// Fails this fraction (per million) of operations of `kind`.
    pub fn set_fault_rate(&self, kind: FaultKind, per_million: u32) {
        self.st().faults.per_million.insert(kind, per_million);
    }

    /// Clears every fault, including a full disk.
    pub fn clear_faults(&self) {
        self.st().faults = Faults::default();
    }

    /// While set, every write that would grow a file fails with ENOSPC.
    pub fn set_full(&self, full: bool) {
        self.st().faults.full = full;
    }

    /// Number of successful file syncs so far.
    pub fn syncs(&self) -> u64 {
        self.st().syncs
    }

    /// The current (volatile) contents of a file, for tests that damage files.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.st();
        let id = st.file_id(path).ok()?;
        st.files.get(&id).map(|f| f.data.clone())
    }

    /// Replaces a file's contents durably (for tests that damage files).
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) -> io::Result<()> {
        let mut st = self.st();
        let id = st.file_id(path)?;
        let f = st.files.get_mut(&id).ok_or_else(|| not_found(path))?;
        f.data = data.clone();
        f.durable = data;
        f.unsynced.clear();
        Ok(())
    }

    /// Every file path that currently exists, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.st().names.iter().filter(|(_, n)| matches!(n, Node::File(_))).map(|(p, _)| p.clone()).collect()
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    id: u64,
    epoch: u64,
    writable: bool,
}

impl SimFile {
    fn with<R>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<R>) -> io::Result<R> {
        let mut st = self.fs.st();
        if st.epoch != self.epoch {
            return Err(crashed());
        }
        f(&mut st, self.id)
    }
}

fn file_mut(st: &mut State, id: u64) -> io::Result<&mut FileData> {
    st.files.get_mut(&id).ok_or_else(|| io::Error::other("simulated file vanished"))
}

impl VFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.with(|st, id| {
            let f = file_mut(st, id)?;
            let pos = pos as usize;
            if pos >= f.data.len() {
                return Ok(0);
            }
            let n = buf.len().min(f.data.len() - pos);
            buf[..n].copy_from_slice(&f.data[pos..pos + n]);
            Ok(n)
        })
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only handle"));
        }
        self.with(|st, id| {
            let len = file_mut(st, id)?.data.len() as u64;
            let grows = pos + buf.len() as u64 > len;
            let fail = st.fault(FaultKind::Write) || (grows && st.faults.full);
            let n = if fail { st.below(buf.len() as u64) as usize } else { buf.len() };
            let op = Op::Write { pos, data: buf[..n].to_vec() };
            let f = file_mut(st, id)?;
            if n > 0 {
                apply_op(&mut f.data, &op);
                f.unsynced.push(op);
            }
            if fail {
                Err(io::Error::new(io::ErrorKind::StorageFull, "simulated ENOSPC"))
            } else {
                Ok(())
            }
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|st, id| {
            if st.fault(FaultKind::Sync) {
                // As Linux after a failed writeback: the dirty data is dropped
                // from the durable path, though reads still return it.
                file_mut(st, id)?.unsynced.clear();
                return Err(eio());
            }
            let f = file_mut(st, id)?;
            f.durable = f.data.clone();
            f.unsynced.clear();
            st.syncs += 1;
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|st, id| Ok(file_mut(st, id)?.data.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|st, id| {
            let f = file_mut(st, id)?;
            let op = Op::SetLen(len);
            apply_op(&mut f.data, &op);
            f.unsynced.push(op);
            Ok(())
        })
    }
}

impl Vfs for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VFile>> {
        let mut st = self.live()?;
        let id = match mode {
            OpenMode::Read | OpenMode::ReadWrite => st.file_id(path)?,
            OpenMode::CreateNew | OpenMode::CreateTruncate => {
                st.parent_exists(path)?;
                match st.names.get(path) {
                    Some(Node::File(id)) if mode == OpenMode::CreateTruncate => {
                        let id = *id;
                        let f = file_mut(&mut st, id)?;
                        f.data.clear();
                        f.unsynced.push(Op::SetLen(0));
                        id
                    }
                    Some(_) => {
                        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())))
                    }
                    None => {
                        let id = st.next_id;
                        st.next_id += 1;
                        st.files.insert(id, FileData::default());
                        st.link(path, Node::File(id));
                        id
                    }
                }
            }
        };
        Ok(Arc::new(SimFile { fs: self.clone(), id, epoch: st.epoch, writable: mode != OpenMode::Read }))
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let st = self.live()?;
        let id = st.file_id(path)?;
        let data = st.files.get(&id).map(|f| f.data.clone()).unwrap_or_default();
        Ok(Arc::new(data))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        let mut cur = PathBuf::new();
        for c in path.components() {
            cur.push(c);
            if cur == Path::new("/") {
                continue;
            }
            match st.names.get(&cur) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => return Err(io::Error::other(format!("{} is a file", cur.display()))),
                None => st.link(&cur, Node::Dir),
            }
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.live()?;
        if st.names.get(path) != Some(&Node::Dir) {
            return Err(not_found(path));
        }
        let mut out: Vec<String> = st
            .names
            .range(path.to_path_buf()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| p.parent() == Some(path))
            .filter_map(|(p, _)| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        st.file_id(path)?;
        st.unlink(path);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        if st.names.get(path) != Some(&Node::Dir) {
            return Err(not_found(path));
        }
        let doomed: Vec<PathBuf> = st.names.keys().filter(|p| p.starts_with(path)).cloned().collect();
        for p in doomed.iter().rev() {
            st.unlink(p);
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        let node = *st.names.get(from).ok_or_else(|| not_found(from))?;
        st.parent_exists(to)?;
        st.unlink(from);
        st.link(to, node);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        if st.fault(FaultKind::Sync) {
            return Err(eio());
        }
        let ops = std::mem::take(&mut st.dir_ops);
        let (mine, rest): (Vec<DirOp>, Vec<DirOp>) = ops.into_iter().partition(|op| op.parent() == path);
        for op in &mine {
            apply_dir_op(&mut st.durable_names, op);
        }
        st.dir_ops = rest;
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.live().is_ok_and(|st| st.names.contains_key(path))
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let mut st = self.live()?;
        if !st.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{} is locked", path.display())));
        }
        Ok(Box::new(SimLock { fs: self.clone(), path: path.to_path_buf(), epoch: st.epoch }))
    }
}

#[derive(Debug)]
struct SimLock {
    fs: SimFs,
    path: PathBuf,
    epoch: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self.fs.st();
        if st.epoch == self.epoch {
            st.locks.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_data_and_drops_unsynced_names() {
        for seed in 0..50 {
            let fs = SimFs::new(seed);
            fs.create_dir_all(Path::new("/d")).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            let f = fs.open(Path::new("/d/a"), OpenMode::CreateNew).unwrap();
            f.write_at(&[1; 1000], 0).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            f.write_at(&[2; 2000], 1000).unwrap();
            let g = fs.open(Path::new("/d/b"), OpenMode::CreateNew).unwrap();
            g.sync_data().unwrap();
            let old = fs.clone();
            let fs = fs.crash();
            assert!(old.open(Path::new("/d/c"), OpenMode::CreateNew).is_err(), "a dead process cannot write");
            assert!(f.len().is_err(), "stale handle must fail");
            let data = fs.read_file(Path::new("/d/a")).unwrap();
            assert!(data.len() >= 1000 && data.len() <= 3000, "seed {seed}");
            assert_eq!(&data[..1000], &[1; 1000][..]);
            assert!(data[1000..].iter().all(|&b| b == 2));
            let len = data.len() as u64;
            assert!(
                len == 1000 || len == 3000 || len.is_multiple_of(SECTOR),
                "seed {seed}: torn at {len}, not a sector boundary"
            );
        }
    }

    #[test]
    fn failed_sync_loses_unsynced_writes_at_crash() {
        let fs = SimFs::new(1);
        let f = fs.open(Path::new("a"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(Path::new(".")).unwrap();
        f.write_at(b"xyz", 0).unwrap();
        fs.fail_after(FaultKind::Sync, 0);
        assert!(f.sync_data().is_err());
        assert_eq!(fs.read_file(Path::new("a")).unwrap(), b"xyz");
        let fs = fs.crash();
        assert_eq!(fs.read_file(Path::new("a")).unwrap(), b"");
    }
}
