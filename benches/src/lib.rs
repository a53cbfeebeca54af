//! GMQ's benchmarks, as a library the benchmark binaries share.
//!
//! - [`append`]: the engine's append path, one matrix cell at a time (fsync
//!   policy × payload size × appenders, closed loop or pipelined).
//! - [`cli`]: options more than one benchmark takes.
//! - [`fio`]: the machine's own limits, measured with fio on the same disk
//!   (fdatasync latency, sequential durable bandwidth), with the exact
//!   command line so a report can print it.
//! - [`latency`]: an HDR histogram of latencies in nanoseconds.
//! - [`load`]: the end-to-end load generator, a client of a running
//!   `gmq-server` over TCP (publish, consume + ack, fixed-rate end-to-end
//!   latency).
//! - [`machine`]: what the machine is (CPUs, kernel, filesystem, load).
//! - [`process`]: a `gmq-server` child process that is never left behind.
//! - [`stats`]: medians and spreads over repeated runs.
//! - [`table`]: markdown tables and number formatting.
//!
//! Benchmarks are run on a shared, noisy machine: every figure a report
//! shows is the median of several runs, and the machine's load is recorded
//! next to it.

pub mod append;
pub mod cli;
pub mod fio;
pub mod latency;
pub mod load;
pub mod machine;
pub mod process;
pub mod report;
pub mod stats;
pub mod table;

/// Parses a byte size: a plain number of bytes, or a number followed by
/// `k`/`K`/`KiB`, `m`/`M`/`MiB` or `g`/`G`/`GiB` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("size {s:?}: expected a number of bytes such as 100, 1k or 64KiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("size {s:?}: unknown unit {unit:?} (use k, m or g: powers of 1024)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

/// A byte size as people write it: `100 B`, `1 KiB`, `64 KiB`, `1.5 MiB`.
pub fn size_label(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, unit) in UNITS {
        if bytes >= unit {
            return if bytes.is_multiple_of(unit) {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// Runs `git` in the repository this crate is in; its trimmed output, if
/// it succeeded.
pub fn git(args: &[&str]) -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// The commit this crate's source tree is at, and whether the engine had
/// uncommitted changes (the figures then belong to that working tree).
pub fn engine_version() -> Option<String> {
    let head = git(&["log", "-1", "--format=%h %s"])?;
    let dirty = git(&["status", "--porcelain", "--", "engine"]).is_some_and(|s| !s.is_empty());
    Some(format!("commit {head}{}", if dirty { " (plus uncommitted changes under engine/)" } else { "" }))
}

/// An fsync policy as the command line and configuration write it:
/// `always`, `interval:MS`, `never`.
pub fn policy_label(p: gmq_engine::FsyncPolicy) -> String {
    match p {
        gmq_engine::FsyncPolicy::Always => "always".into(),
        gmq_engine::FsyncPolicy::Interval(ms) => format!("interval:{ms}"),
        gmq_engine::FsyncPolicy::Never => "never".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmq_engine::FsyncPolicy;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16m"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("k").is_err());
        assert_eq!(size_label(100), "100 B");
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(65536), "64 KiB");
        assert_eq!(size_label(1536), "1.5 KiB");
        assert_eq!(size_label(1 << 30), "1 GiB");
    }

    #[test]
    fn policy_labels_round_trip() {
        for p in [FsyncPolicy::Always, FsyncPolicy::Interval(10), FsyncPolicy::Never] {
            assert_eq!(policy_label(p).parse::<FsyncPolicy>(), Ok(p));
        }
    }
}
