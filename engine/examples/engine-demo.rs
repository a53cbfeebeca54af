//! Exercises the storage engine on its embedded default (`./gmq-data`, fsync
//! `always`) until the server exists: recovers the directory, appends
//! messages to the queue `demo` from many threads (so they share fsyncs),
//! reads them back and prints what it measured.
//!
//! `cargo run --release -p gmq-engine --example engine-demo -- [DATA_DIR] [COUNT]`

use std::sync::Arc;
use std::time::Instant;

use gmq_engine::{Engine, EngineConfig, Message};

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
    let q = engine.queue("demo")?.log().clone();
    let start_offset = q.next_offset();
    let threads = 16;
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || -> Result<(), gmq_engine::Error> {
                for i in 0..count / threads {
                    q.append(&Message::new(format!("message {i} from thread {t}")))?.wait()?;
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
    let read = q.read(start_offset, usize::MAX, usize::MAX)?;
    println!(
        "read back {} messages; queue holds offsets {}..{} in {} segment(s)",
        read.len(),
        q.first_offset(),
        q.next_offset(),
        q.segment_count()
    );
    drop(q);
    Arc::try_unwrap(engine).map_err(|_| "engine still shared")?.close()?;
    Ok(())
}
