//! Hostile clients against a live server under load: thousands of idle
//! connections, slow-loris lines, oversized and endless lines, random bytes,
//! subscribers that never read, clients that vanish mid-batch. Meanwhile
//! well-behaved producers and consumers run, checked by the ledger.
//!
//! What must hold: the server's memory stays under a bound, the good clients
//! keep making progress, nothing acknowledged is lost, and the server stops
//! cleanly afterwards.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use gmq_client::{ConsumeOptions, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ledger::{payload, Report};
use crate::process::Server;
use crate::{connect, lock, take_and_ack, Rng, Shared};

/// The limits the server runs with (a config file).
pub const CONFIG: &str = "[limits]
max_connections = 5000
max_frame_bytes = 1048576
max_payload_bytes = 262144
line_timeout_ms = 2000
write_timeout_ms = 2000
idle_timeout_ms = 600000
";

/// How many of each hostile client.
#[derive(Debug, Clone)]
pub struct Hostility {
    /// Connections that connect and say nothing.
    pub idle: usize,
    /// Connections that send a line one byte every 200 ms.
    pub slow: usize,
    /// Connections that send a 2 MiB line (over the 1 MiB limit).
    pub oversized: usize,
    /// Connections that send bytes without a newline until cut off.
    pub endless: usize,
    /// Connections that send seeded random bytes.
    pub garbage: usize,
    /// Subscribers that never read their socket.
    pub deaf: usize,
    /// Clients that send half a batch publish and vanish.
    pub vanish: usize,
    /// How long the hostility lasts.
    pub duration: Duration,
}

/// What a run saw.
#[derive(Debug, Clone, Default)]
pub struct HostileOutcome {
    /// The server's resident memory before the hostile clients (KiB).
    pub rss_before_kib: u64,
    /// Its peak resident memory over the run (KiB, `VmHWM`).
    pub rss_peak_kib: u64,
    /// Messages the good clients got acked per second before the hostility.
    pub rate_before: f64,
    /// The same during it.
    pub rate_during: f64,
    /// Hostile connections opened.
    pub hostile_connections: u64,
    /// The ledger check of the good clients.
    pub report: Report,
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with(key)).with_context(|| format!("{key} in /proc/{pid}/status"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// A good producer: publishes until `stop`.
async fn produce(addr: String, n: u64, ledger: Shared, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let c = connect(&addr).await?;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let id = format!("good{n}.{seq}");
        lock(&ledger).attempt(&id);
        let p = c.publish("good", Message::new(payload(&id, 200, seq))).await?;
        lock(&ledger).published("good", p.offset, &id);
    }
    Ok(())
}

/// A good consumer: consumes and acks until `stop`, counting acks.
async fn consume(
    addr: String,
    me: u64,
    ledger: Shared,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let c = connect(&addr).await?;
    let o = ConsumeOptions::manual(50).group("work").wait_ms(100);
    while !stop.load(Ordering::Relaxed) {
        let n = take_and_ack(&c, &ledger, "good", me, &o).await?;
        acked.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Keeps a hostile connection busy until `stop` or until the server cuts it.
async fn hostile(addr: String, kind: u8, seed: u64, stop: Arc<AtomicBool>) {
    let Ok(mut s) = TcpStream::connect(&addr).await else { return };
    let mut rng = Rng::new(seed);
    let until_stopped = |stop: &AtomicBool| !stop.load(Ordering::Relaxed);
    match kind {
        // Idle.
        0 => {
            while until_stopped(&stop) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Slow-loris: a byte every 200 ms.
        1 => {
            for b in br#"{"op":"publish","queue":"good","payload":"aGk="}"#.iter().cycle() {
                if !until_stopped(&stop) || s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Oversized: a 2 MiB line.
        2 => {
            let mut line = br#"{"op":"publish","queue":"good","payload":""#.to_vec();
            line.resize(2 << 20, b'A');
            line.extend_from_slice(b"\"}\n");
            let _ = s.write_all(&line).await;
        }
        // Endless: bytes without a newline.
        3 => {
            let chunk = vec![b'x'; 64 << 10];
            while until_stopped(&stop) && s.write_all(&chunk).await.is_ok() {}
        }
        // Random bytes, newlines included.
        4 => {
            while until_stopped(&stop) {
                let junk: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
                if s.write_all(&junk).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Subscribes with a large prefetch and never reads.
        5 => {
            let _ =
                s.write_all(b"{\"op\":\"subscribe\",\"queue\":\"big\",\"prefetch\":1000,\"group\":\"deaf\"}\n").await;
            while until_stopped(&stop) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Half a batch, then gone.
        _ => {
            let _ = s.write_all(br#"{"op":"publish","queue":"good","messages":[{"payload":"aGk="},{"payl"#).await;
            return;
        }
    }
    // Whatever the server sent is read and dropped (an ordinary client
    // would); the deaf ones never get here before the stop.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(10), s.read(&mut sink)).await;
}

/// Runs the hostile load against a fresh server on `dir`.
pub fn hostile_campaign(dir: &Path, seed: u64, h: &Hostility) -> anyhow::Result<HostileOutcome> {
    let config = dir.join("gmq.toml");
    std::fs::create_dir_all(dir)?;
    std::fs::write(&config, CONFIG)?;
    let data = dir.join("data");
    let server = Server::start(&data, &["-f", config.to_str().context("path")?], &[])?;
    let pid = server.pid();
    let addr = server.addr.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ledger: Shared = Arc::default();
    lock(&ledger).complete_groups.insert(("good".into(), "work".into()));
    let stop_good = Arc::new(AtomicBool::new(false));
    let stop_bad = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut out = HostileOutcome::default();
    rt.block_on(async {
        // Big messages for the deaf subscribers to choke on.
        let c = connect(&addr).await?;
        let big: Vec<Message> = (0..200).map(|i| Message::new(vec![b'b'; 200 << 10]).event(format!("{i}"))).collect();
        for chunk in big.chunks(3) {
            c.publish_batch("big", chunk).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    out.rss_before_kib = status_kib(pid, "VmRSS:")?;
    let mut good = Vec::new();
    for n in 0..2 {
        good.push(rt.spawn(produce(addr.clone(), n, ledger.clone(), stop_good.clone())));
        good.push(rt.spawn(consume(addr.clone(), n + 1, ledger.clone(), stop_good.clone(), acked.clone())));
    }
    let window = Duration::from_secs(2);
    let a0 = acked.load(Ordering::Relaxed);
    std::thread::sleep(window);
    out.rate_before = (acked.load(Ordering::Relaxed) - a0) as f64 / window.as_secs_f64();

    let mut bad = Vec::new();
    let kinds = [h.idle, h.slow, h.oversized, h.endless, h.garbage, h.deaf, h.vanish];
    let mut rng = Rng::new(seed);
    for (kind, &count) in kinds.iter().enumerate() {
        for _ in 0..count {
            bad.push(rt.spawn(hostile(addr.clone(), kind as u8, rng.next(), stop_bad.clone())));
            out.hostile_connections += 1;
        }
    }
    let started = Instant::now();
    let a1 = acked.load(Ordering::Relaxed);
    std::thread::sleep(h.duration);
    out.rate_during = (acked.load(Ordering::Relaxed) - a1) as f64 / started.elapsed().as_secs_f64();
    out.rss_peak_kib = status_kib(pid, "VmHWM:")?;
    stop_bad.store(true, Ordering::Relaxed);
    stop_good.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for g in good {
            tokio::time::timeout(Duration::from_secs(60), g).await???;
        }
        for b in bad {
            let _ = tokio::time::timeout(Duration::from_secs(60), b).await;
        }
        // Drain what the good consumers left.
        let c = connect(&addr).await?;
        while take_and_ack(&c, &ledger, "good", 99, &ConsumeOptions::manual(1000).group("work")).await? > 0 {}
        Ok::<_, anyhow::Error>(())
    })?;
    let code = server.term()?;
    ensure!(code == Some(0), "gmq-server exited with {code:?} after the hostile clients");
    out.report = lock(&ledger).check();
    Ok(out)
}
