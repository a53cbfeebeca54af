//! `campaign`: the long version of the fault campaign.
//!
//! ```text
//! cargo build --release -p gmq-server -p gmq-cli -p gmq-campaign
//! target/release/campaign crash --cycles 50 --seeds 3
//! target/release/campaign corrupt --seeds 200
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
        Cmd::Corrupt { seeds, first_seed, per_queue } => {
            let tmp = tempfile::tempdir()?;
            // GMQ_KEEP=1 keeps the directories to look at.
            let work = if std::env::var_os("GMQ_KEEP").is_some() { tmp.keep() } else { tmp.path().to_path_buf() };
            let outcomes = gmq_campaign::corrupt::corrupt_campaign(&work, first_seed, seeds, per_queue)?;
            let (mut lost, mut corrupted, mut named, mut quarantined, mut intact) = (0, 0, 0, 0, 0);
            for (i, o) in outcomes.iter().enumerate() {
                println!(
                    "seed {}: {}; verify named it: {}; quarantined {:?}; intact {}, lost {}, corrupted {}",
                    first_seed + i as u64,
                    o.damage,
                    o.verify_named_it,
                    o.quarantined,
                    o.intact,
                    o.lost,
                    o.corrupted
                );
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
