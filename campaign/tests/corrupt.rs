//! Seeded corruption of a stopped data directory: the server starts and
//! serves healthy queues, verify names the damage, repair keeps every
//! record the damage did not touch.

use gmq_campaign::corrupt::corrupt_campaign;

#[test]
fn damaged_files_never_take_down_the_server_and_repair_keeps_every_intact_record() -> anyhow::Result<()> {
    let first = gmq_campaign::seed("corrupt", 1);
    let work = tempfile::tempdir()?;
    let seeds = 12;
    let outcomes = corrupt_campaign(work.path(), first, seeds, 120)?;
    let mut named = 0;
    for (i, o) in outcomes.iter().enumerate() {
        eprintln!("seed {}: {o}", first + i as u64);
        assert_eq!((o.lost, o.corrupted), (0, 0), "seed {}: {}", first + i as u64, o.damage);
        named += u64::from(o.verify_named_it);
        assert!(
            !o.changed || o.verify_named_it || o.valid_rollback,
            "seed {}: verify did not name the damaged file: {o}",
            first + i as u64
        );
    }
    assert!(named * 2 >= seeds, "verify named the damaged file in {named} of {seeds} seeds");
    Ok(())
}
