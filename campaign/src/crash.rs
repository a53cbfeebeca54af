//! `kill -9` at random moments under mixed load, restart, and in the end a
//! drain and the ledger check.
//!
//! Load per cycle: three producers (single publishes, batches, publishes
//! with `msg_id` that are retried after a crash), a topic publisher, two
//! competing manual-ack consumers per queue in group `work`, a
//! subscription (group `sub`, manual ack), and an auto-ack consumer (group
//! `auto`, which must never see an offset twice). Between some cycles the offline
//! compaction runs on the stopped directory and is itself killed at a random
//! moment. The server is killed after a seeded random time.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gmq_client::{ConsumeOptions, Message};
use serde_json::json;

use crate::ledger::{payload, Report};
use crate::process::{binary, Server};
use crate::{connect, lock, take_and_ack, Rng, Shared};

/// The queues under load, and the topic queue.
pub const QUEUES: [&str; 2] = ["c.a", "c.b"];
/// Bound to `ev.*`.
pub const TOPIC_QUEUE: &str = "c.t";

/// How a crash campaign runs.
#[derive(Debug, Clone)]
pub struct CrashConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Crash cycles.
    pub cycles: u32,
    /// Load time before each kill, drawn in this range (ms).
    pub min_ms: u64,
    /// See `min_ms`.
    pub max_ms: u64,
}

/// Producer state that survives a crash: its next sequence number and a
/// `msg_id` publish whose answer the crash took.
#[derive(Debug, Default, Clone)]
struct Producer {
    seq: u64,
    retry: Option<(String, String, Vec<u8>)>,
}

static CONSUMERS: AtomicU64 = AtomicU64::new(1);

/// Publishes until the connection dies. Returns the state to resume from.
async fn produce(addr: String, n: u64, mut st: Producer, seed: u64, ledger: Shared) -> Producer {
    let Ok(c) = connect(&addr).await else { return st };
    let mut rng = Rng::new(seed);
    loop {
        if let Some((queue, id, body)) = st.retry.clone() {
            // The same msg_id again: stored once, whatever the crash did.
            match c.publish(&queue, Message::new(body).msg_id(id.clone())).await {
                Ok(p) => {
                    lock(&ledger).published(&queue, p.offset, &id);
                    st.retry = None;
                }
                Err(_) => return st,
            }
        }
        let queue = QUEUES[rng.below(QUEUES.len() as u64) as usize];
        let kind = rng.below(20);
        let filler = rng.below(300) as usize;
        if kind < 2 {
            st.seq += 1;
            let id = format!("p{n}.{}", st.seq);
            let body = payload(&id, filler, st.seq);
            lock(&ledger).attempt_with_msg_id(&id);
            st.retry = Some((queue.to_owned(), id, body));
            continue;
        }
        if kind < 6 {
            let k = 1 + rng.below(20);
            let mut ids = Vec::new();
            let mut msgs = Vec::new();
            for _ in 0..k {
                st.seq += 1;
                let id = format!("p{n}.{}", st.seq);
                msgs.push(Message::new(payload(&id, filler, st.seq)));
                lock(&ledger).attempt(&id);
                ids.push(id);
            }
            match c.publish_batch(queue, &msgs).await {
                Ok(offsets) => {
                    let mut l = lock(&ledger);
                    for (o, id) in offsets.iter().zip(&ids) {
                        l.published(queue, *o, id);
                    }
                }
                Err(_) => return st,
            }
            continue;
        }
        st.seq += 1;
        let id = format!("p{n}.{}", st.seq);
        lock(&ledger).attempt(&id);
        match c.publish(queue, Message::new(payload(&id, filler, st.seq))).await {
            Ok(p) => lock(&ledger).published(queue, p.offset, &id),
            Err(_) => return st,
        }
    }
}

/// Publishes to topic `ev.x` until the connection dies.
async fn topic(addr: String, mut seq: u64, ledger: Shared) -> u64 {
    let Ok(c) = connect(&addr).await else { return seq };
    loop {
        seq += 1;
        let id = format!("t.{seq}");
        lock(&ledger).attempt(&id);
        match c.publish_topic("ev.x", Message::new(payload(&id, 50, seq))).await {
            Ok(routed) => {
                let mut l = lock(&ledger);
                for r in routed {
                    l.published(&r.queue, r.offset, &id);
                }
            }
            Err(_) => return seq,
        }
    }
}

/// Consumes with manual ack, acking each batch, until the connection dies.
async fn consume(addr: String, queue: &'static str, group: &'static str, ledger: Shared) {
    let Ok(c) = connect(&addr).await else { return };
    let me = CONSUMERS.fetch_add(1, Ordering::Relaxed);
    let o = ConsumeOptions::manual(10).group(group).wait_ms(100);
    while take_and_ack(&c, &ledger, queue, me, &o).await.is_ok() {}
}

/// An auto-ack consumer in group `auto` on the second queue: at most once,
/// across crashes too.
async fn consume_auto(addr: String, ledger: Shared) {
    let Ok(c) = connect(&addr).await else { return };
    let me = CONSUMERS.fetch_add(1, Ordering::Relaxed);
    let queue = QUEUES[1];
    let o = ConsumeOptions::auto(10).group("auto").wait_ms(100);
    while let Ok(got) = c.consume(queue, &o).await {
        let mut l = lock(&ledger);
        for d in &got {
            l.delivered(queue, "auto", me, d.offset, &d.payload, d.deliveries);
        }
    }
}

/// A subscription in group `sub` on the first queue, acking as it goes.
async fn subscribe(addr: String, ledger: Shared) {
    let Ok(c) = connect(&addr).await else { return };
    let me = CONSUMERS.fetch_add(1, Ordering::Relaxed);
    let queue = QUEUES[0];
    let Ok(mut sub) = c.subscribe(queue, &ConsumeOptions::manual(16).group("sub")).await else { return };
    while let Some(Ok(d)) = sub.next().await {
        lock(&ledger).delivered(queue, "sub", me, d.offset, &d.payload, d.deliveries);
        lock(&ledger).acking(queue, "sub", &[d.offset]);
        match sub.ack(&[d.offset]).await {
            Ok(_) => lock(&ledger).acked(queue, "sub", &[d.offset]),
            Err(_) => return,
        }
    }
}

/// Creates the queues (small segments, so retention and compaction have
/// work) and the binding.
async fn setup(addr: &str) -> anyhow::Result<()> {
    let c = connect(addr).await?;
    for q in QUEUES.iter().chain([&TOPIC_QUEUE]) {
        c.create(q, json!({"segment_bytes": 16384})).await?;
    }
    c.bind(TOPIC_QUEUE, "ev.*").await?;
    Ok(())
}

/// Runs the offline compaction and kills it at a random moment (or lets it
/// finish).
fn compact_and_maybe_kill(dir: &Path, rng: &mut Rng) -> anyhow::Result<()> {
    let mut child = std::process::Command::new(binary("gmq")?)
        .args(["compact", "--threshold", "0.9", "-d"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Often before the engine is open, sometimes amid a segment swap.
    let after = Duration::from_millis(rng.below(300));
    std::thread::sleep(after);
    let _ = child.kill();
    child.wait()?;
    Ok(())
}

/// Drains every group that must see everything, acking, until each is empty.
async fn drain(addr: &str, ledger: &Shared) -> anyhow::Result<()> {
    let c = connect(addr).await?;
    let me = CONSUMERS.fetch_add(1, Ordering::Relaxed);
    let groups: BTreeSet<(String, String)> = lock(ledger).complete_groups.clone();
    for (queue, group) in groups {
        let deadline = Instant::now() + Duration::from_secs(60);
        let o = ConsumeOptions::manual(500).group(&group).wait_ms(200);
        while take_and_ack(&c, ledger, &queue, me, &o).await? > 0 {
            if Instant::now() > deadline {
                bail!("{queue}/{group} did not drain within 60 s");
            }
        }
    }
    Ok(())
}

/// What a campaign did.
#[derive(Debug)]
pub struct Outcome {
    /// The ledger check.
    pub report: Report,
    /// Crashes injected.
    pub kills: u32,
    /// Compactions run (and killed or finished).
    pub compactions: u32,
}

/// Runs the campaign on `dir` (created if needed).
pub fn crash_campaign(dir: &Path, cfg: &CrashConfig) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ledger: Shared = Arc::default();
    {
        let mut l = lock(&ledger);
        for q in QUEUES.iter().chain([&TOPIC_QUEUE]) {
            l.complete_groups.insert((q.to_string(), "work".into()));
        }
        l.complete_groups.insert((QUEUES[0].into(), "sub".into()));
        l.auto_groups.insert((QUEUES[1].into(), "auto".into()));
    }
    let mut rng = Rng::new(cfg.seed);
    let mut producers = vec![Producer::default(); 3];
    let mut topic_seq = 0;
    let mut out = Outcome { report: Report::default(), kills: 0, compactions: 0 };
    for cycle in 0..cfg.cycles {
        let server = Server::start(dir, &[], &[])?;
        let addr = server.addr.clone();
        if cycle == 0 {
            rt.block_on(setup(&addr)).context("setting up queues")?;
        }
        let mut tasks = Vec::new();
        let handles: Vec<_> = producers
            .iter()
            .enumerate()
            .map(|(i, p)| rt.spawn(produce(addr.clone(), i as u64, p.clone(), rng.next(), ledger.clone())))
            .collect();
        let t = rt.spawn(topic(addr.clone(), topic_seq, ledger.clone()));
        for q in QUEUES.iter().chain([&TOPIC_QUEUE]) {
            for _ in 0..2 {
                tasks.push(rt.spawn(consume(addr.clone(), q, "work", ledger.clone())));
            }
        }
        tasks.push(rt.spawn(subscribe(addr.clone(), ledger.clone())));
        tasks.push(rt.spawn(consume_auto(addr.clone(), ledger.clone())));
        let run = cfg.min_ms + rng.below(cfg.max_ms.saturating_sub(cfg.min_ms).max(1));
        std::thread::sleep(Duration::from_millis(run));
        server.kill9();
        out.kills += 1;
        rt.block_on(async {
            for (i, h) in handles.into_iter().enumerate() {
                producers[i] = tokio::time::timeout(Duration::from_secs(60), h).await??;
            }
            topic_seq = tokio::time::timeout(Duration::from_secs(60), t).await??;
            for h in tasks {
                tokio::time::timeout(Duration::from_secs(60), h).await??;
            }
            Ok::<_, anyhow::Error>(())
        })
        .context("clients did not stop after the kill")?;
        if rng.below(2) == 0 {
            compact_and_maybe_kill(dir, &mut rng)?;
            out.compactions += 1;
        }
    }
    let server = Server::start(dir, &[], &[])?;
    // Publishes with msg_id whose answer a crash took are retried once more.
    rt.block_on(async {
        let c = connect(&server.addr).await?;
        for p in &producers {
            if let Some((queue, id, body)) = &p.retry {
                let r = c.publish(queue, Message::new(body.clone()).msg_id(id.clone())).await?;
                lock(&ledger).published(queue, r.offset, id);
            }
        }
        drain(&server.addr, &ledger).await
    })?;
    let code = server.term()?;
    if code != Some(0) {
        bail!("gmq-server exited with {code:?} on SIGTERM");
    }
    let verify = std::process::Command::new(binary("gmq")?).args(["verify", "-d"]).arg(dir).output()?;
    if !verify.status.success() {
        bail!("gmq verify after the campaign: {}", String::from_utf8_lossy(&verify.stdout));
    }
    out.report = lock(&ledger).check();
    Ok(out)
}
