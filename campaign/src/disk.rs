//! Disk faults on the real binary: `fdatasync` failing with EIO and `pwrite`
//! failing with ENOSPC (injected with `strace -e inject=...`), and a
//! genuinely full filesystem (a small tmpfs).
//!
//! What must hold: a publish is answered `ok` only when it is stored; the
//! failing queue is stopped (`storage` answers) and reopened by housekeeping
//! once the fault is gone, so publishing resumes without a restart; reads go
//! on meanwhile; after a restart every publish answered `ok` is delivered,
//! intact, and a publish answered `storage` is either absent or intact,
//! never half-written.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use gmq_client::{Client, ConsumeOptions, ErrorCode, Message};
use serde_json::json;

use crate::ledger::{check_payload, payload};
use crate::process::Server;
use crate::{connect, runtime};

/// What a disk-fault run saw.
#[derive(Debug, Default, Clone)]
pub struct DiskOutcome {
    /// Publishes answered `ok`.
    pub acknowledged: u64,
    /// Publishes answered `storage`.
    pub refused: u64,
    /// Publishes answered `ok` after the first `storage` answer (the queue
    /// was reopened and the fault was over).
    pub resumed: u64,
    /// Acknowledged publishes missing after the restart (must be 0).
    pub lost: u64,
    /// Deliveries whose payload does not check out (must be 0).
    pub corrupted: u64,
    /// Refused publishes that are present after the restart (allowed: a
    /// failed fsync does not undo the write; clients retry with `msg_id`).
    pub refused_present: u64,
}

impl std::fmt::Display for DiskOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledged {}, refused {}, acknowledged after a refusal {}, lost {}, corrupted {}, refused but present {}",
            self.acknowledged, self.refused, self.resumed, self.lost, self.corrupted, self.refused_present
        )
    }
}

/// Kills (-9) the gmq-server process under `strace` (the wrapper's child);
/// strace then exits.
fn kill_traced(server: Server) -> anyhow::Result<()> {
    let parent = server.pid().to_string();
    let mut killed = 0;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(parent.as_str()) {
            killed += u32::from(Command::new("kill").arg("-9").arg(e.file_name()).status()?.success());
        }
    }
    ensure!(killed > 0, "no traced gmq-server to kill");
    server.wait_exit(Duration::from_secs(30))
}

/// Publishes one message at a time to `queue` while `keep_going` says so;
/// returns `(id, answer)` in order: `Ok(offset)` or the error code.
async fn publish_loop(
    c: &Client,
    queue: &str,
    size: usize,
    prefix: &str,
    mut keep_going: impl FnMut(&[(String, Result<u64, ErrorCode>)]) -> bool,
) -> anyhow::Result<Vec<(String, Result<u64, ErrorCode>)>> {
    let mut log = Vec::new();
    let mut n = 0u64;
    while keep_going(&log) {
        n += 1;
        let id = format!("{prefix}.{n}");
        let r = match c.publish(queue, Message::new(payload(&id, size, n))).await {
            Ok(p) => Ok(p.offset),
            Err(e) => match e.code() {
                Some(code) => Err(code),
                None => bail!("publish {id}: {e}"),
            },
        };
        if let Err(code) = &r {
            ensure!(*code == ErrorCode::Storage, "publish {id} refused with {code:?}, not storage");
        }
        log.push((id, r));
    }
    Ok(log)
}

/// Restarts on `dir` without faults, drains `queue` and checks every
/// answer against what is delivered.
fn check_after_restart(
    dir: &Path,
    queue: &str,
    log: &[(String, Result<u64, ErrorCode>)],
) -> anyhow::Result<DiskOutcome> {
    let server = Server::start(dir, &[], &[])?;
    let got = runtime()?.block_on(async {
        let c = connect(&server.addr).await?;
        let mut all = Vec::new();
        loop {
            let batch = c.consume(queue, &ConsumeOptions::auto(1000).group("check")).await?;
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let code = server.term()?;
    ensure!(code == Some(0), "gmq-server exited with {code:?}");
    let mut o = DiskOutcome::default();
    let mut present: BTreeMap<String, u64> = BTreeMap::new();
    for d in &got {
        match check_payload(&d.payload) {
            Ok(id) => {
                present.insert(id, d.offset);
            }
            Err(_) => o.corrupted += 1,
        }
    }
    let mut refused_yet = false;
    for (id, r) in log {
        match r {
            Ok(offset) => {
                o.acknowledged += 1;
                if refused_yet {
                    o.resumed += 1;
                }
                if present.get(id) != Some(offset) {
                    o.lost += 1;
                }
            }
            Err(_) => {
                o.refused += 1;
                refused_yet = true;
                if present.contains_key(id) {
                    o.refused_present += 1;
                }
            }
        }
    }
    Ok(o)
}

fn create(addr: &str, queue: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let c = connect(addr).await?;
        c.create(queue, json!({"fsync": "always"})).await?;
        Ok(())
    })
}

/// Creates queue `d` (fsync `always`) on a clean directory, then starts the
/// server again under `strace -e inject=SYSCALL:FAULT`.
fn traced(dir: &Path, syscall: &str, fault: &str) -> anyhow::Result<Server> {
    let s = Server::start(dir, &[], &[])?;
    create(&s.addr, "d")?;
    ensure!(s.term()? == Some(0), "clean stop");
    let (trace, inject) = (format!("trace={syscall}"), format!("inject={syscall}:{fault}"));
    Server::start(dir, &[], &["strace", "-f", "-qq", "-o", "/dev/null", "-e", &trace, "-e", &inject])
}

/// `fdatasync` fails with EIO from its `from`-th call on (per thread, as
/// strace counts): publishes are refused with `storage`, never acknowledged
/// unless stored; after a restart every acknowledged one is there.
pub fn fsync_eio(dir: &Path, from: u32) -> anyhow::Result<DiskOutcome> {
    let server = traced(dir, "fdatasync", &format!("error=EIO:when={from}+"))?;
    let log = runtime()?.block_on(async {
        let c = connect(&server.addr).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until 20 refusals in a row: the fault is permanent.
        publish_loop(&c, "d", 200, "eio", |log| {
            Instant::now() < deadline && (log.len() < 20 || log.iter().rev().take(20).any(|(_, r)| r.is_ok()))
        })
        .await
    })?;
    let stopped = server.log_text().contains("storage failure") || server.log_text().contains("publish not stored");
    kill_traced(server)?;
    ensure!(stopped, "the server logged no storage failure");
    check_after_restart(dir, "d", &log)
}

/// `pwrite` fails with ENOSPC for calls `from..=to` (per thread): the queue
/// stops, housekeeping reopens it, and publishing resumes without a restart.
pub fn write_enospc(dir: &Path, from: u32, to: u32) -> anyhow::Result<DiskOutcome> {
    let server = traced(dir, "pwrite64", &format!("error=ENOSPC:when={from}..{to}"))?;
    let log = runtime()?.block_on(async {
        let c = connect(&server.addr).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        // Until 20 acknowledged in a row after a refusal: resumed.
        publish_loop(&c, "d", 200, "nospc", |log| {
            let refused_at = log.iter().position(|(_, r)| r.is_err());
            let resumed =
                refused_at.is_some_and(|i| log[i..].iter().rev().take_while(|(_, r)| r.is_ok()).count() >= 20);
            Instant::now() < deadline && !resumed
        })
        .await
    })?;
    kill_traced(server)?;
    check_after_restart(dir, "d", &log)
}

/// A genuinely full filesystem: the data directory on a tmpfs of `mib` MiB
/// with a ballast file. Publishes of 64 KiB fill it and are refused; reads go
/// on; removing the ballast frees space and publishing resumes (housekeeping
/// reopens the queue); after a restart every acknowledged publish is there.
pub fn full_tmpfs(mount_point: &Path, mib: u64) -> anyhow::Result<DiskOutcome> {
    std::fs::create_dir_all(mount_point)?;
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(mount_point)
        .status()
        .context("running mount")?;
    ensure!(st.success(), "mounting a tmpfs on {} (needs root)", mount_point.display());
    let result = (|| {
        let dir = mount_point.join("data");
        let ballast = mount_point.join("ballast");
        std::fs::write(&ballast, vec![0u8; (mib as usize / 4) << 20])?;
        let server = Server::start(&dir, &[], &[])?;
        let log = runtime()?.block_on(async {
            let c = connect(&server.addr).await?;
            c.create("d", json!({"fsync": "always"})).await?;
            // Fill it.
            let mut log = publish_loop(&c, "d", 64 << 10, "full", |log| {
                log.iter().rev().take(5).filter(|(_, r)| r.is_err()).count() < 5 && log.len() < 10_000
            })
            .await?;
            ensure!(log.iter().any(|(_, r)| r.is_err()), "the filesystem never filled");
            // Reads go on while it is full.
            let peek = c.consume("d", &ConsumeOptions::manual(1).group("peek")).await?;
            ensure!(peek.len() == 1 && check_payload(&peek[0].payload).is_ok(), "a read while the disk is full");
            std::fs::remove_file(&ballast)?;
            // Space again: housekeeping reopens the queue within a second or two.
            let deadline = Instant::now() + Duration::from_secs(30);
            let more = publish_loop(&c, "d", 1024, "freed", |l| {
                Instant::now() < deadline && l.last().is_none_or(|(_, r)| r.is_err())
            })
            .await?;
            log.extend(more);
            Ok::<_, anyhow::Error>(log)
        })?;
        ensure!(server.term()? == Some(0), "clean stop after the disk was full");
        check_after_restart(&dir, "d", &log)
    })();
    let _ = Command::new("umount").arg(mount_point).status();
    result
}
