//! The four workloads, written once against [`Producer`] and
//! [`Consumer`](crate::clients::Consumer),
//! and the loopback echo that bounds them all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use gmq_benches::latency::{Latency, LatencySummary};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clients::{Producer, Target};

/// Throughput and latency of a publish (or echo) cell.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rate {
    /// Acknowledged messages per second in the measured window.
    pub msgs_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Send to acknowledgement.
    pub latency: LatencySummary,
}

/// How long a publish cell runs.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Warm up, then count what is acknowledged in the measured window.
    Timed { warmup: Duration, measure: Duration },
    /// Publish exactly this many messages in all (a pre-fill).
    Count(u64),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `producers` connections, each keeping `window` publishes of `payload`
/// in flight; a new one is sent as soon as one is acknowledged.
pub async fn publish(
    target: &Target,
    queue: &str,
    producers: usize,
    window: usize,
    payload: usize,
    until: Until,
) -> Result<Rate> {
    let body = Bytes::from(gmq_benches::load::pattern(payload));
    let mut conns = Vec::with_capacity(producers);
    for _ in 0..producers {
        conns.push(target.producer(queue).await?);
    }
    let t0 = Instant::now();
    let (from, to) = match until {
        Until::Timed { warmup, measure } => (t0 + warmup, t0 + warmup + measure),
        Until::Count(_) => (t0, t0 + Duration::from_secs(3600)),
    };
    let budget = Arc::new(AtomicU64::new(match until {
        Until::Count(n) => n,
        Until::Timed { .. } => u64::MAX,
    }));
    let mut tasks = Vec::new();
    for p in conns {
        let (body, budget) = (body.clone(), budget.clone());
        tasks.push(tokio::spawn(async move { producer_loop(p, body, window, from, to, &budget).await }));
    }
    let (acked, lat) = join_counted(tasks, "producer task").await?;
    let secs = match until {
        Until::Timed { measure, .. } => measure.as_secs_f64(),
        Until::Count(_) => t0.elapsed().as_secs_f64(),
    };
    let msgs_per_s = acked as f64 / secs;
    Ok(Rate { msgs_per_s, mb_per_s: msgs_per_s * payload as f64 / 1e6, latency: lat.summary() })
}

/// Waits for every task, summing their counts and merging their latencies.
async fn join_counted(
    tasks: Vec<tokio::task::JoinHandle<Result<(u64, Latency)>>>,
    what: &str,
) -> Result<(u64, Latency)> {
    let mut lat = Latency::new();
    let mut n = 0;
    for t in tasks {
        let (k, l) = t.await.with_context(|| what.to_owned())??;
        n += k;
        lat.merge(&l);
    }
    Ok((n, lat))
}

/// Takes one message from the shared budget.
fn take(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok()
}

async fn producer_loop(
    p: Box<dyn Producer>,
    body: Bytes,
    window: usize,
    from: Instant,
    to: Instant,
    budget: &AtomicU64,
) -> Result<(u64, Latency)> {
    let mut lat = Latency::new();
    let mut acked = 0u64;
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < window && Instant::now() < to && take(budget) {
            let t = Instant::now();
            let f = p.publish(body.clone());
            inflight.push(async move { f.await.map(|()| t) });
        }
        let Some(r) = inflight.next().await else { break };
        let sent = r?;
        let now = Instant::now();
        if now >= from && now < to {
            acked += 1;
            lat.record(now - sent);
        }
    }
    Ok((acked, lat))
}

/// A drained backlog.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Drain {
    /// The backlog over the time until every consumer's last ack went out
    /// (and, where acks are answered, was answered).
    pub msgs_per_s: f64,
    /// Payload MB/s.
    pub mb_per_s: f64,
    /// Deliveries seen (the backlog, plus any redelivery).
    pub delivered: u64,
    /// Seconds to drain.
    pub seconds: f64,
    /// Seconds the pre-fill took (not measured).
    pub prefill_seconds: f64,
}

/// Fills `queue` with `backlog` messages, then drains it with `consumers`
/// connections of one group (manual acks, up to `batch` per ack).
pub async fn consume(
    target: &Target,
    queue: &str,
    consumers: usize,
    backlog: u64,
    payload: usize,
    prefetch: usize,
    batch: usize,
) -> Result<Drain> {
    let t = Instant::now();
    publish(target, queue, 4, 256, payload, Until::Count(backlog)).await.context("pre-fill")?;
    let prefill_seconds = t.elapsed().as_secs_f64();
    let seen = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let c = target.consumer(queue, prefetch).await?;
        let (seen, done_tx, mut done_rx) = (seen.clone(), done_tx.clone(), done_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            let deadline = Instant::now() + Duration::from_secs(600);
            while !*done_rx.borrow() {
                if Instant::now() > deadline {
                    bail!("the backlog was not drained within 600 s ({} seen)", seen.load(Ordering::Relaxed));
                }
                let got = tokio::select! {
                    r = c.recv(batch, Duration::from_millis(200)) => r?,
                    _ = done_rx.changed() => break,
                };
                if got.is_empty() {
                    continue;
                }
                let n = got.len() as u64;
                c.ack().await?;
                if seen.fetch_add(n, Ordering::Relaxed) + n >= backlog {
                    let _ = done_tx.send(true);
                }
            }
            c.finish().await?;
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    let mut end = t0;
    for t in tasks {
        end = end.max(t.await.context("consumer task")??);
    }
    let seconds = (end - t0).as_secs_f64();
    let delivered = seen.load(Ordering::Relaxed);
    if delivered < backlog {
        bail!("drained {delivered} of {backlog}");
    }
    let msgs_per_s = backlog as f64 / seconds;
    Ok(Drain { msgs_per_s, mb_per_s: msgs_per_s * payload as f64 / 1e6, delivered, seconds, prefill_seconds })
}

/// A fixed-rate run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndToEnd {
    /// Deliveries per second over the measured window.
    pub delivered_per_s: f64,
    /// Scheduled send time to delivery.
    pub e2e: LatencySummary,
    /// Scheduled send time to the publish's acknowledgement.
    pub publish: LatencySummary,
    /// Scheduled send time to the moment the producer task called publish.
    pub send_delay: LatencySummary,
    /// Messages of the measured window never delivered before the deadline.
    pub missing: u64,
}

/// One producer publishes message `i` at `t0 + i / rate` whatever is still
/// unanswered (a thread of its own sleeps until each is due, then hands it
/// to the producer task); one consumer (prefetch `prefetch`, manual acks)
/// receives them. The first 8 payload bytes carry `i`, so latency runs from
/// the **scheduled** time: a stall counts against every message due during
/// it (no coordinated omission).
pub async fn end_to_end(
    target: &Target,
    queue: &str,
    rate: f64,
    payload: usize,
    warmup: Duration,
    measure: Duration,
    prefetch: usize,
) -> Result<EndToEnd> {
    if !(rate.is_finite() && rate > 0.0) || payload < 8 {
        bail!("the rate must be positive and the payload at least 8 bytes");
    }
    let first = (warmup.as_secs_f64() * rate) as u64;
    let total = ((warmup + measure).as_secs_f64() * rate) as u64;
    let mut consumer = target.consumer(queue, prefetch).await?;
    let producer: Arc<dyn Producer> = Arc::from(target.producer(queue).await?);
    let t0 = Instant::now() + Duration::from_millis(20);
    let due = move |i: u64| t0 + Duration::from_nanos((i as f64 * 1e9 / rate) as u64);
    let measured = move |i: u64| i >= first && i < total;
    let deadline = due(total) + Duration::from_secs(10);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let stop = Arc::new(AtomicBool::new(false));
    let pacer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Sleeps may end up to the timer slack (50 µs by default) late;
            // this thread wants them on time (best effort).
            let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
            for i in 0..total {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = Instant::now();
                if due(i) > now {
                    std::thread::sleep(due(i) - now);
                }
                if tx.send(i).is_err() {
                    break;
                }
            }
        })
    };
    let publish_lat = Arc::new(Mutex::new(Latency::new()));
    let failed = Arc::new(Mutex::new(None::<String>));
    let base = gmq_benches::load::pattern(payload);
    let prod = {
        let (publish_lat, failed, producer) = (publish_lat.clone(), failed.clone(), producer.clone());
        tokio::spawn(async move {
            let mut delay = Latency::new();
            while let Some(i) = rx.recv().await {
                if measured(i) {
                    delay.record(Instant::now().saturating_duration_since(due(i)));
                }
                let mut b = BytesMut::with_capacity(base.len());
                b.put_u64_le(i);
                b.extend_from_slice(&base[8..]);
                let f = producer.publish(b.freeze());
                let (publish_lat, failed) = (publish_lat.clone(), failed.clone());
                tokio::spawn(async move {
                    match f.await {
                        Ok(()) if measured(i) => lock(&publish_lat).record(Instant::now() - due(i)),
                        Ok(()) => {}
                        Err(e) => {
                            lock(&failed).get_or_insert_with(|| format!("publish {i}: {e:#}"));
                        }
                    }
                });
            }
            delay
        })
    };

    let mut e2e = Latency::new();
    let mut got = vec![false; total as usize];
    let want = total - first;
    let mut in_window = 0u64;
    while in_window < want && Instant::now() < deadline {
        if let Some(e) = lock(&failed).take() {
            stop.store(true, Ordering::Relaxed);
            bail!(e);
        }
        let batch = consumer.recv(prefetch, Duration::from_millis(100)).await?;
        let now = Instant::now();
        for p in &batch {
            let i = u64::from_le_bytes(p.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0xff; 8]));
            let Some(slot) = got.get_mut(i as usize) else { bail!("a delivery carried no known sequence number") };
            if !*slot {
                *slot = true;
                if measured(i) {
                    in_window += 1;
                    e2e.record(now.saturating_duration_since(due(i)));
                }
            }
        }
        if !batch.is_empty() {
            consumer.ack().await?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    consumer.finish().await?;
    let _ = pacer.join();
    let delay = prod.await.context("producer task")?;
    if let Some(e) = lock(&failed).take() {
        bail!(e);
    }
    let publish_summary = lock(&publish_lat).summary();
    Ok(EndToEnd {
        delivered_per_s: in_window as f64 / measure.as_secs_f64(),
        e2e: e2e.summary(),
        publish: publish_summary,
        send_delay: delay.summary(),
        missing: want - in_window,
    })
}

/// A trivial TCP echo on loopback, fed the frames GMQ would be sent (a
/// publish line of `payload` bytes, base64 in JSON): what the transport
/// and the load generator cost with no broker at all. `conns` connections
/// each keep `window` frames in flight.
pub async fn echo(conns: usize, window: usize, payload: usize, warmup: Duration, measure: Duration) -> Result<Rate> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the echo server")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    // The echo runs on a thread and runtime of its own, as a server would.
    let server = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener)?;
            let mut served = Vec::new();
            for _ in 0..conns {
                let (mut s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                served.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 << 10];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }));
            }
            // Serve until the clients hang up.
            for s in served {
                let _ = s.await;
            }
            Ok::<_, anyhow::Error>(())
        })
    });
    let frame = gmq_benches::load::request::publish("q", &gmq_benches::load::pattern(payload), 1);
    let t0 = Instant::now();
    let (from, to) = (t0 + warmup, t0 + warmup + measure);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let frame = frame.clone();
        tasks.push(tokio::spawn(async move {
            let mut p = gmq_benches::load::Pipeline::<Instant>::connect(addr).await?;
            let mut lat = Latency::new();
            let mut n = 0u64;
            loop {
                let now = Instant::now();
                while p.in_flight() < window && now < to {
                    p.send(&frame, now);
                }
                if p.in_flight() == 0 {
                    break;
                }
                p.flush().await?;
                let mut next = Some(p.recv().await?);
                while let Some(incoming) = next {
                    if let gmq_benches::load::Incoming::Reply { tag, .. } = incoming {
                        let now = Instant::now();
                        if now >= from && now < to {
                            n += 1;
                            lat.record(now - tag);
                        }
                    }
                    next = p.try_recv()?;
                }
            }
            Ok::<_, anyhow::Error>((n, lat))
        }));
    }
    let (n, lat) = join_counted(tasks, "echo client").await?;
    server.join().map_err(|_| anyhow::anyhow!("the echo server panicked"))??;
    let msgs_per_s = n as f64 / measure.as_secs_f64();
    Ok(Rate { msgs_per_s, mb_per_s: msgs_per_s * payload as f64 / 1e6, latency: lat.summary() })
}
