//! A `gmq-server` child process for benchmarks: started from a built
//! binary on a data directory of the caller's choice, ready once it logs
//! `listening on ADDR:PORT`, and never left behind — dropping a
//! [`ServerProcess`] kills the server (SIGKILL) and reaps it.
//!
//! The server's stderr is read to the end by a thread of ours, so that its
//! log can never fill the pipe and stall it; the last lines are kept for
//! error messages, and warnings are counted.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The `gmq-server` executable.
    pub binary: PathBuf,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--fsync`: `always`, `never` or `interval:MS`.
    pub fsync: String,
    /// More arguments, after the others.
    pub extra_args: Vec<String>,
    /// Copy the server's log lines to our stderr, prefixed.
    pub echo_log: bool,
    /// Give up when it has not logged `listening on` by then.
    pub start_timeout: Duration,
}

impl ServerOptions {
    /// `binary --listen 127.0.0.1:0 --data-dir DIR --fsync POLICY`.
    pub fn new(binary: impl Into<PathBuf>, data_dir: impl Into<PathBuf>, fsync: &str) -> ServerOptions {
        ServerOptions {
            binary: binary.into(),
            data_dir: data_dir.into(),
            fsync: fsync.into(),
            extra_args: Vec::new(),
            echo_log: false,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// The server's stderr as our reader thread saw it.
#[derive(Debug, Default)]
struct Log {
    tail: Mutex<VecDeque<String>>,
    warnings: AtomicU64,
}

const TAIL_LINES: usize = 40;

impl Log {
    fn push(&self, line: String) {
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            self.warnings.fetch_add(1, Ordering::Relaxed);
        }
        let mut t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }

    fn tail(&self) -> String {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|l| format!("  {l}\n")).collect()
    }
}

/// A running `gmq-server`; killed and reaped when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    addr: SocketAddr,
    started: Duration,
    log: Arc<Log>,
    reader: Option<JoinHandle<()>>,
}

/// The address in a log line `... listening on 127.0.0.1:4567`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

impl ServerProcess {
    /// Starts the server on `127.0.0.1:0` and waits until it listens.
    pub fn start(o: &ServerOptions) -> Result<ServerProcess> {
        if !o.binary.is_file() {
            bail!(
                "no server binary at {} (build it: cargo build --release -p gmq-server, or pass its path)",
                o.binary.display()
            );
        }
        let t = Instant::now();
        let mut cmd = Command::new(&o.binary);
        cmd.args(["--listen", "127.0.0.1:0", "--fsync", &o.fsync])
            .arg("--data-dir")
            .arg(&o.data_dir)
            .args(&o.extra_args)
            // The log filter comes from the flags, not from our environment.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {}", o.binary.display()))?;
        let stderr = child.stderr.take().context("the server's stderr")?;
        let mut server = ServerProcess {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            started: Duration::ZERO,
            log: Arc::default(),
            reader: None,
        };
        let (tx, rx) = mpsc::channel();
        let (log, echo) = (server.log.clone(), o.echo_log);
        server.reader = Some(
            std::thread::Builder::new()
                .name("gmq-server-log".into())
                .spawn(move || {
                    let mut tx = Some(tx);
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if echo {
                            eprintln!("[gmq-server] {line}");
                        }
                        if let Some(a) = listening_addr(&line) {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(a);
                            }
                        }
                        log.push(line);
                    }
                })
                .context("starting the log reader thread")?,
        );
        match rx.recv_timeout(o.start_timeout) {
            Ok(addr) => {
                server.addr = addr;
                server.started = t.elapsed();
                Ok(server)
            }
            Err(e) => {
                let status = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                let why = match (e, status) {
                    (_, Some(s)) => format!("it exited ({s})"),
                    (mpsc::RecvTimeoutError::Timeout, None) => {
                        format!("it did not log `listening on` within {} s", o.start_timeout.as_secs_f64())
                    }
                    (mpsc::RecvTimeoutError::Disconnected, None) => "it closed its stderr".into(),
                };
                // Reap it before reading the last lines.
                server.kill();
                bail!("gmq-server did not start: {why}; its last log lines:\n{}", server.log.tail())
            }
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How long it took from spawning to `listening on`.
    pub fn start_time(&self) -> Duration {
        self.started
    }

    /// Its process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// CPU ticks it has used so far (see [`crate::machine::process_ticks`]).
    pub fn cpu_ticks(&self) -> u64 {
        crate::machine::process_ticks(self.pid()).unwrap_or(0)
    }

    /// Log lines at WARN or ERROR so far.
    pub fn warnings(&self) -> u64 {
        self.log.warnings.load(Ordering::Relaxed)
    }

    /// Its last log lines, indented, one per line.
    pub fn log_tail(&self) -> String {
        self.log.tail()
    }

    /// Fails, with its last log lines, if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(s) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            self.child = None;
            bail!("gmq-server exited ({s}); its last log lines:\n{}", self.log.tail());
        }
        Ok(())
    }

    /// Graceful stop: SIGTERM, then up to `grace` for it to drain, sync and
    /// exit; SIGKILL after that. Returns its exit status.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else { bail!("the server was already stopped") };
        let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        if term.is_ok_and(|s| s.success()) {
            while Instant::now() < deadline {
                if let Some(s) = child.try_wait().context("waiting for the server")? {
                    self.join_reader();
                    return Ok(s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let s = child.wait().context("waiting for the killed server")?;
        self.join_reader();
        bail!("gmq-server did not stop within {} s of SIGTERM; killed ({s})", grace.as_secs_f64())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.join_reader();
    }

    fn join_reader(&mut self) {
        // Its stderr is closed once it is gone, so the reader ends.
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_the_log_line() {
        let l = "2025-11-22T10:00:00.123456Z  INFO gmq_server: listening on 127.0.0.1:41234";
        assert_eq!(listening_addr(l), Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(listening_addr("listening on [::1]:80 now"), Some("[::1]:80".parse().unwrap()));
        assert_eq!(listening_addr("storage opened"), None);
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let o = ServerOptions::new("/nonexistent/gmq-server", "/tmp/x", "always");
        let e = ServerProcess::start(&o).unwrap_err().to_string();
        assert!(e.contains("cargo build --release -p gmq-server"), "{e}");
    }

    #[test]
    fn a_server_that_exits_at_once_is_reported() {
        // `sh` refuses `--listen` and exits: a server failing at start-up.
        let dir = tempfile::tempdir().unwrap();
        let o = ServerOptions::new("/bin/sh", dir.path(), "always");
        let e = format!("{:#}", ServerProcess::start(&o).unwrap_err());
        assert!(e.contains("did not start"), "{e}");
    }
}
