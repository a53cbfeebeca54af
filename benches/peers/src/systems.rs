//! The systems compared, what their acknowledgement promises, and their
//! server processes: installed from Debian's packages when missing, started
//! on loopback with a fresh data directory, and never left behind.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gmq_benches::process::{ServerOptions, ServerProcess};

use crate::clients::Target;

/// One configuration of one system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum System {
    /// `gmq-server --fsync POLICY`.
    Gmq(String),
    /// Redis Streams, `appendonly yes`, `appendfsync always`.
    Redis,
    /// NATS JetStream, file storage.
    Nats,
    /// RabbitMQ durable quorum queue.
    RabbitQuorum,
    /// RabbitMQ durable classic queue.
    RabbitClassic,
}

/// The Debian executables, and the packages that carry them.
const REDIS: &str = "/usr/bin/redis-server";
const NATS: &str = "/usr/sbin/nats-server";
const RABBIT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl System {
    /// `gmq-always`, `gmq-interval:100`, `gmq-never`, `redis`, `nats`,
    /// `rabbit-quorum`, `rabbit-classic`.
    pub fn parse(s: &str) -> Result<System, String> {
        Ok(match s {
            "redis" => System::Redis,
            "nats" => System::Nats,
            "rabbit-quorum" => System::RabbitQuorum,
            "rabbit-classic" => System::RabbitClassic,
            _ => match s.strip_prefix("gmq-") {
                Some(p)
                    if p == "always"
                        || p == "never"
                        || p.strip_prefix("interval:").is_some_and(|ms| ms.parse::<u64>().is_ok_and(|ms| ms > 0)) =>
                {
                    System::Gmq(p.to_owned())
                }
                Some(p) => return Err(format!("{s}: the fsync policy {p:?} is not always, never or interval:MS")),
                None => return Err(format!("unknown system {s:?}")),
            },
        })
    }

    /// The name on the command line and in the JSON.
    pub fn key(&self) -> String {
        match self {
            System::Gmq(p) => format!("gmq-{p}"),
            System::Redis => "redis".into(),
            System::Nats => "nats".into(),
            System::RabbitQuorum => "rabbit-quorum".into(),
            System::RabbitClassic => "rabbit-classic".into(),
        }
    }

    /// The name in tables and on the plot.
    pub fn label(&self) -> String {
        match self {
            System::Gmq(p) => format!("GMQ {p}"),
            System::Redis => "Redis Streams".into(),
            System::Nats => "NATS JetStream".into(),
            System::RabbitQuorum => "RabbitMQ quorum".into(),
            System::RabbitClassic => "RabbitMQ classic".into(),
        }
    }

    /// Whether a publish is acknowledged only once it is on stable storage.
    pub fn fsyncs_before_ack(&self) -> bool {
        match self {
            System::Gmq(p) => p == "always",
            System::Redis | System::RabbitQuorum | System::RabbitClassic => true,
            System::Nats => false,
        }
    }

    /// What the acknowledgement of a publish promises, in this setup.
    pub fn promise(&self) -> String {
        match self {
            System::Gmq(p) if p == "always" => {
                "fdatasync of the segment before the reply (group commit across connections)".into()
            }
            System::Gmq(p) if p == "never" => {
                "written to the page cache; the kernel writes back when it likes (synced at segment rolls and \
                 checkpoints)"
                    .into()
            }
            System::Gmq(p) => format!("written to the page cache; fdatasync at most {} later", p.replace(':', " ms ")),
            System::Redis => "XADD is written to the AOF and fsynced before the reply (`appendfsync always`: one \
                              fsync per event-loop turn, before the replies of that turn are sent)"
                .into(),
            System::Nats => "stored in the stream's file by the server, not synced: NATS 2.9 fsyncs file stores \
                             every 2 minutes (`sync_interval`, not settable per message before 2.10)"
                .into(),
            System::RabbitQuorum => "publisher confirm after the Raft log entry is fsynced (ra's WAL, batched)".into(),
            System::RabbitClassic => "publisher confirm for a persistent message once the message store has \
                                      written and fsynced it (batched), or once every queue has delivered and \
                                      had it acked"
                .into(),
        }
    }

    /// What a consumer's ack is, in this setup.
    pub fn ack_kind(&self) -> &'static str {
        match self {
            System::Gmq(_) => "`ack` request, answered (under `always` after the group state is fsynced)",
            System::Redis => "XACK, answered after the AOF fsync; sent in the same pipeline as the next XREADGROUP",
            System::Nats => "one `+ACK` message per delivery, not answered",
            System::RabbitQuorum | System::RabbitClassic => "`basic.ack` with `multiple`, not answered",
        }
    }
}

/// The executables and Debian packages that `systems` need, and fio when
/// the machine's limits are measured.
fn needed(systems: &[System], fio: bool) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    if fio {
        v.push(("/usr/bin/fio", "fio"));
    }
    if systems.contains(&System::Redis) {
        v.push((REDIS, "redis-server"));
    }
    if systems.contains(&System::Nats) {
        v.push((NATS, "nats-server"));
    }
    if systems.iter().any(|s| matches!(s, System::RabbitQuorum | System::RabbitClassic)) {
        v.push((RABBIT, "rabbitmq-server"));
    }
    v
}

/// Installs the Debian packages of whatever is missing (`apt-get install`,
/// after an `apt-get update` if the first try fails), or says what to
/// install when `install` is false.
pub fn ensure_installed(systems: &[System], fio: bool, install: bool) -> Result<()> {
    let missing: Vec<&str> =
        needed(systems, fio).into_iter().filter(|(b, _)| !Path::new(b).exists()).map(|(_, p)| p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !install {
        bail!("missing: {} (apt-get install {0}, or run without --no-install)", missing.join(" "));
    }
    eprintln!("installing {} from Debian's packages", missing.join(" "));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let mut install_args = vec!["install", "-y", "-q"];
    install_args.extend(&missing);
    let installed = apt(&install_args) || (apt(&["update", "-q"]) && apt(&install_args));
    if !installed {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

/// Versions of the installed packages, as dpkg knows them.
pub fn versions() -> Vec<(String, String)> {
    let pkgs = ["redis-server", "nats-server", "rabbitmq-server", "erlang-base", "fio"];
    pkgs.iter()
        .filter_map(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f", "${Version}", p]).output().ok()?;
            let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (out.status.success() && !v.is_empty()).then(|| (p.to_string(), v))
        })
        .collect()
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A running server: GMQ's own process handle, or a spawned peer in its
/// own process group (killed, group and all, when dropped).
#[derive(Debug)]
pub struct Broker {
    target: Target,
    gmq: Option<ServerProcess>,
    child: Option<Child>,
    pid: u32,
    /// How long it took until it accepted connections.
    pub start_time: Duration,
}

/// How a peer is started.
struct Spawn {
    cmd: Command,
    port: u16,
    log: PathBuf,
}

impl Broker {
    /// Starts `system` with its data under `dir` (which must exist and be
    /// empty). RabbitMQ serves both of its queue types from one node, so
    /// the caller may reuse one RabbitMQ broker for both.
    pub fn start(system: &System, gmq_server: &Path, dir: &Path) -> Result<Broker> {
        let t0 = Instant::now();
        if let System::Gmq(policy) = system {
            let p = ServerProcess::start(&ServerOptions::new(gmq_server, dir, policy))?;
            return Ok(Broker {
                target: Target::Gmq { addr: p.addr().to_string() },
                pid: p.pid(),
                gmq: Some(p),
                child: None,
                start_time: t0.elapsed(),
            });
        }
        let port = free_port()?;
        let log = dir.join("server.log");
        let (spawn, target) = match system {
            System::Redis => {
                let mut cmd = Command::new(REDIS);
                cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"]).arg(dir).args([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--protected-mode",
                    "no",
                    "--daemonize",
                    "no",
                ]);
                (Spawn { cmd, port, log }, Target::Redis { url: format!("redis://127.0.0.1:{port}/") })
            }
            System::Nats => {
                let mut cmd = Command::new(NATS);
                cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(dir);
                (Spawn { cmd, port, log }, Target::Nats { url: format!("nats://127.0.0.1:{port}") })
            }
            System::RabbitQuorum | System::RabbitClassic => {
                let cmd = rabbit_command(dir, port)?;
                let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
                (Spawn { cmd, port, log }, Target::Rabbit { url, quorum: *system == System::RabbitQuorum })
            }
            System::Gmq(_) => unreachable!("handled above"),
        };
        let Spawn { mut cmd, port, log } = spawn;
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(out.try_clone()?).stderr(out).stdin(Stdio::null()).process_group(0);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", system.label()))?;
        let pid = child.id();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = t0 + Duration::from_secs(120);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Some(st) = child.try_wait()? {
                bail!("{} exited ({st}) before listening; its log:\n{}", system.label(), tail(&log));
            }
            if Instant::now() > deadline {
                kill_group(pid);
                let _ = child.wait();
                bail!("{} did not listen on {addr} within 120 s; its log:\n{}", system.label(), tail(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Broker { target, gmq: None, child: Some(child), pid, start_time: t0.elapsed() })
    }

    /// How clients reach it.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Its process (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The same RabbitMQ node, seen as the other queue type.
    pub fn rabbit_as(&self, quorum: bool) -> Option<Target> {
        match &self.target {
            Target::Rabbit { url, .. } => Some(Target::Rabbit { url: url.clone(), quorum }),
            _ => None,
        }
    }

    /// Stops it (SIGTERM for GMQ, which must exit cleanly; SIGKILL for the
    /// peers, whose data is thrown away).
    pub fn stop(mut self) -> Result<()> {
        if let Some(p) = self.gmq.take() {
            let st = p.stop(Duration::from_secs(30))?;
            if !st.success() {
                bail!("gmq-server exited with {st}");
            }
        }
        self.kill();
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(self.pid);
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_group(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// RabbitMQ as a node of its own: its own name, ports, cookie, data and
/// log directories and config file, no plugins. It runs as the calling
/// user (the Debian wrapper would switch to the `rabbitmq` user).
fn rabbit_command(dir: &Path, port: u16) -> Result<Command> {
    let dist = free_port()?;
    std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
    std::fs::write(
        dir.join("rabbitmq.conf"),
        format!("listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\ndisk_free_limit.absolute = 100MB\n"),
    )?;
    let mut cmd = Command::new(RABBIT);
    let node = format!("gmqbench{port}@localhost");
    cmd.env("HOME", dir)
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist.to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .current_dir(dir);
    Ok(cmd)
}
