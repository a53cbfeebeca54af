//! Exercises the engine on its embedded default (`./gmq-data`, fsync
//! `always`) until the server exists: recovers the directory, publishes
//! messages to the queue `demo` from many threads (so they share fsyncs),
//! consumes them with four competing consumers of the group `demo-workers`
//! acking in batches, and prints what it measured.
//!
//! `cargo run --release -p gmq-engine --example engine-demo -- [DATA_DIR] [COUNT]`

use std::sync::Arc;
use std::time::Instant;

use gmq_engine::{AckMode, ConsumeOptions, Engine, EngineConfig, Message};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "./gmq-data".into());
    let count: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let engine = Arc::new(Engine::open(EngineConfig::new(&dir))?);
    let r = engine.open_report();
    println!(
        "opened {dir}: {} queues, {} bytes scanned, {} torn bytes truncated, {} quarantined",
        r.queues,
        r.scanned_bytes,
        r.torn_bytes,
        r.quarantined.len()
    );
    for (q, e) in &r.quarantined {
        println!("  quarantined {q}: {e}");
    }
    let queue = engine.queue("demo")?;
    let q = queue.log().clone();
    let start_offset = q.next_offset();
    let threads = 16;
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let e = engine.clone();
            std::thread::spawn(move || -> Result<(), gmq_engine::Error> {
                for i in 0..count / threads {
                    e.publish("demo", &[Message::new(format!("message {i} from thread {t}"))])?.wait()?;
                }
                Ok(())
            })
        })
        .collect();
    for h in hs {
        h.join().map_err(|_| "appender panicked")??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = q.next_offset() - start_offset;
    println!("appended {n} messages durably (fsync always) in {secs:.2}s: {:.0} msg/s", n as f64 / secs);
    let t0 = Instant::now();
    let consumers: Vec<_> = (1..=4u64)
        .map(|c| {
            let e = engine.clone();
            std::thread::spawn(move || -> Result<u64, gmq_engine::Error> {
                let opts = ConsumeOptions { max: 64, ack: AckMode::Manual, ..ConsumeOptions::default() };
                let mut n = 0;
                loop {
                    let got = e.consume("demo", "demo-workers", c, &opts)?.wait()?;
                    if got.is_empty() {
                        return Ok(n);
                    }
                    let offsets: Vec<u64> = got.iter().map(|d| d.record.offset).collect();
                    e.ack("demo", "demo-workers", &offsets)?.wait()?;
                    n += offsets.len() as u64;
                }
            })
        })
        .collect();
    let mut consumed = 0;
    for h in consumers {
        consumed += h.join().map_err(|_| "consumer panicked")??;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("4 consumers took and acked {consumed} messages in {secs:.2}s: {:.0} msg/s", consumed as f64 / secs);
    let removed = engine.maintain();
    let s = queue.stats();
    println!(
        "queue demo: depth {}, offsets {}..{} in {} segment(s) ({removed} deleted by retention)",
        s.depth, s.first_offset, s.next_offset, s.segments
    );
    drop((q, queue));
    Arc::try_unwrap(engine).map_err(|_| "engine still shared")?.close()?;
    Ok(())
}
