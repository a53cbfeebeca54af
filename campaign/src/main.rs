//! `campaign`: the long version of the fault campaign.
//!
//! ```text
//! cargo build --release -p gmq-server -p gmq-cli -p gmq-campaign
//! target/release/campaign crash --cycles 50 --seeds 3
//! target/release/campaign corrupt --seeds 200
//! target/release/campaign disk --runs 5
//! target/release/campaign hostile --seconds 60 --idle 4000
//! ```

use clap::{Parser, Subcommand};
use gmq_campaign::crash::{crash_campaign, CrashConfig};

#[derive(Debug, Parser)]
#[command(about = "GMQ's fault campaign against the real gmq-server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// kill -9 under mixed load, restart, check the ledger.
    Crash {
        /// Crash cycles per seed.
        #[arg(long, default_value_t = 50)]
        cycles: u32,
        /// Seeds to run, from --first-seed on.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// Longest load time before a kill (ms).
        #[arg(long, default_value_t = 1500)]
        max_ms: u64,
    },
    /// Disk faults: fdatasync EIO and pwrite ENOSPC at varying points, and a full tmpfs.
    Disk {
        /// Runs of each fault.
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// Hostile clients against a live server under load.
    Hostile {
        /// Seconds of hostility.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Idle connections.
        #[arg(long, default_value_t = 4000)]
        idle: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Seeded damage to a stopped data directory; start, verify, repair.
    Corrupt {
        /// Seeds to run.
        #[arg(long, default_value_t = 200)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// Messages per queue in the fixture.
        #[arg(long, default_value_t = 400)]
        per_queue: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crash { cycles, seeds, first_seed, max_ms } => {
            let mut failed = 0;
            for seed in first_seed..first_seed + seeds {
                let dir = tempfile::tempdir()?;
                let cfg = CrashConfig { seed, cycles, min_ms: 50, max_ms };
                let o = crash_campaign(dir.path(), &cfg)?;
                println!("seed {seed}: {} kills, {} compactions: {}", o.kills, o.compactions, o.report);
                if !o.report.clean() {
                    failed += 1;
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} seeds broke the contract");
            }
            Ok(())
        }
        Cmd::Disk { runs } => {
            use gmq_campaign::disk;
            let mut bad = 0;
            for run in 0..runs {
                let d = tempfile::tempdir()?;
                let from = 10 + 15 * run;
                let results = [
                    (format!("fdatasync EIO from call {from}"), disk::fsync_eio(&d.path().join("eio"), from)?),
                    (
                        format!("pwrite ENOSPC for calls {}..{}", 2 * from, 2 * from + 20),
                        disk::write_enospc(&d.path().join("nospc"), 2 * from, 2 * from + 20)?,
                    ),
                    ("full tmpfs of 8 MiB".to_owned(), disk::full_tmpfs(&d.path().join("mnt"), 8)?),
                ];
                for (what, o) in results {
                    println!("run {run}: {what}: {o}");
                    bad += u32::from(o.lost + o.corrupted > 0 || o.refused == 0);
                }
            }
            if bad > 0 {
                anyhow::bail!("{bad} runs lost or corrupted acknowledged messages (or never hit the fault)");
            }
            Ok(())
        }
        Cmd::Hostile { seconds, idle, seed } => {
            use gmq_campaign::hostile::{hostile_campaign, Hostility};
            let d = tempfile::tempdir()?;
            let h = Hostility {
                idle,
                slow: 100,
                oversized: 50,
                endless: 20,
                garbage: 50,
                deaf: 20,
                vanish: 200,
                duration: std::time::Duration::from_secs(seconds),
            };
            let o = hostile_campaign(d.path(), seed, &h)?;
            println!(
                "{} hostile connections for {seconds} s; RSS {} KiB before, peak {} KiB; good acks {:.0}/s before, {:.0}/s during; {}",
                o.hostile_connections, o.rss_before_kib, o.rss_peak_kib, o.rate_before, o.rate_during, o.report
            );
            if !o.report.clean() {
                anyhow::bail!("the good clients' ledger broke the contract");
            }
            Ok(())
        }
        Cmd::Corrupt { seeds, first_seed, per_queue } => {
            let tmp = tempfile::tempdir()?;
            // GMQ_KEEP=1 keeps the directories to look at.
            let work = if std::env::var_os("GMQ_KEEP").is_some() { tmp.keep() } else { tmp.path().to_path_buf() };
            let outcomes = gmq_campaign::corrupt::corrupt_campaign(&work, first_seed, seeds, per_queue)?;
            let (mut lost, mut corrupted, mut named, mut quarantined, mut intact) = (0, 0, 0, 0, 0);
            for (i, o) in outcomes.iter().enumerate() {
                println!("seed {}: {o}", first_seed + i as u64);
                lost += o.lost;
                corrupted += o.corrupted;
                intact += o.intact;
                named += u64::from(o.verify_named_it);
                quarantined += u64::from(!o.quarantined.is_empty());
            }
            println!(
                "{seeds} seeds: verify named the damaged file in {named}, a queue was quarantined in {quarantined}; intact records {intact}, lost {lost}, corrupted {corrupted}"
            );
            if lost + corrupted > 0 {
                anyhow::bail!("damage spread beyond what it touched");
            }
            Ok(())
        }
    }
}
