//! The short crash campaign CI runs: `kill -9` under mixed load, restarts,
//! a killed compaction now and then, and the ledger check at the end.
//! `target/release/campaign crash` is the long run (docs/reliability.md).

use gmq_campaign::crash::{crash_campaign, CrashConfig};

#[test]
fn nothing_acknowledged_is_lost_across_kill_9_under_mixed_load() -> anyhow::Result<()> {
    let seed = gmq_campaign::seed("crash", 1);
    let dir = tempfile::tempdir()?;
    let cfg = CrashConfig { seed, cycles: 6, min_ms: 50, max_ms: 800 };
    let o = crash_campaign(dir.path(), &cfg)?;
    eprintln!("{} kills, {} compactions: {}", o.kills, o.compactions, o.report);
    assert!(o.report.acknowledged > 100, "the load did something: {}", o.report);
    assert!(o.report.clean(), "{}", o.report);
    Ok(())
}
