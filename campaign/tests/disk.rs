//! Disk faults on the real binary (strace fault injection, a full tmpfs).
//! Needs `strace` and root for the tmpfs (`.ci/run` installs strace).

use gmq_campaign::disk;

fn check(name: &str, o: &disk::DiskOutcome) {
    eprintln!("{name}: {o}");
    assert!(o.acknowledged > 0 && o.refused > 0, "{name}: the fault was hit: {o}");
    assert_eq!((o.lost, o.corrupted), (0, 0), "{name}: {o}");
}

#[test]
fn fdatasync_eio_refuses_publishes_and_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let o = disk::fsync_eio(dir.path(), 30)?;
    check("fdatasync EIO", &o);
    Ok(())
}

#[test]
fn write_enospc_stops_the_queue_until_housekeeping_reopens_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let o = disk::write_enospc(dir.path(), 40, 60)?;
    check("pwrite ENOSPC", &o);
    assert!(o.resumed >= 20, "publishing resumed without a restart: {o}");
    Ok(())
}

#[test]
fn a_full_filesystem_refuses_publishes_serves_reads_and_resumes_when_space_frees() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let o = disk::full_tmpfs(&dir.path().join("mnt"), 8)?;
    check("full tmpfs", &o);
    assert!(o.resumed >= 1, "publishing resumed once space was freed: {o}");
    Ok(())
}
