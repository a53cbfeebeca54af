//! Hostile clients against a live server under load: memory stays bounded,
//! the good clients keep going, nothing acknowledged is lost.

use std::time::Duration;

use gmq_campaign::hostile::{hostile_campaign, Hostility};

/// The documented bound on the server's resident memory in this run
/// (docs/reliability.md): far above what it needs, far below what unbounded
/// buffering of the hostile bytes would take.
const RSS_BOUND_KIB: u64 = 512 << 10;

#[test]
fn hostile_clients_neither_exhaust_memory_nor_stop_good_clients() -> anyhow::Result<()> {
    let seed = gmq_campaign::seed("hostile", 1);
    let dir = tempfile::tempdir()?;
    let h = Hostility {
        idle: 2000,
        slow: 50,
        oversized: 20,
        endless: 10,
        garbage: 20,
        deaf: 10,
        vanish: 50,
        duration: Duration::from_secs(6),
    };
    let o = hostile_campaign(dir.path(), seed, &h)?;
    eprintln!(
        "{} hostile connections; RSS {} KiB before, peak {} KiB; good acks {:.0}/s before, {:.0}/s during; {}",
        o.hostile_connections, o.rss_before_kib, o.rss_peak_kib, o.rate_before, o.rate_during, o.report
    );
    assert!(o.rss_peak_kib < RSS_BOUND_KIB, "peak RSS {} KiB", o.rss_peak_kib);
    assert!(o.rate_during > 0.0, "good clients kept going");
    assert!(o.report.acknowledged > 100 && o.report.clean(), "{}", o.report);
    Ok(())
}
