//! The machine's own limits, measured with fio on the disk a benchmark uses:
//! how long one `fdatasync` of a small append takes (which bounds `always`
//! without group commit), and how fast sequential writes go when every MiB
//! is made durable (which bounds `always` with large records).
//!
//! A [`FioJob`] knows its exact command line, so a report can print how its
//! limits were measured.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One fio job: sequential `write`s of `bs` bytes, each followed by an
/// `fdatasync`, with the `sync` engine, until `size` bytes are written.
#[derive(Debug, Clone)]
pub struct FioJob {
    /// The fio executable.
    pub fio: PathBuf,
    /// Job name (also names fio's file).
    pub name: String,
    /// Block size of each write, as fio reads it (`1k`, `1m`).
    pub bs: String,
    /// Bytes written in total, as fio reads it (`8m`, `512m`).
    pub size: String,
    /// Directory on the disk being measured.
    pub directory: PathBuf,
}

impl FioJob {
    /// `fdatasync` after each 1 KiB append: sync latency and syncs/s.
    pub fn sync_latency(fio: &Path, directory: &Path, size: &str) -> FioJob {
        FioJob {
            fio: fio.into(),
            name: "fsync".into(),
            bs: "1k".into(),
            size: size.into(),
            directory: directory.into(),
        }
    }

    /// `fdatasync` after each 1 MiB append: sequential durable bandwidth.
    pub fn sequential(fio: &Path, directory: &Path, size: &str) -> FioJob {
        FioJob {
            fio: fio.into(),
            name: "seqwrite".into(),
            bs: "1m".into(),
            size: size.into(),
            directory: directory.into(),
        }
    }

    /// The arguments after the executable. `--unlink=1` removes fio's file
    /// afterwards; nothing else differs from a plain fdatasync job.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--name={}", self.name),
            "--rw=write".into(),
            format!("--bs={}", self.bs),
            format!("--size={}", self.size),
            "--fdatasync=1".into(),
            "--ioengine=sync".into(),
            format!("--directory={}", self.directory.display()),
            "--unlink=1".into(),
            "--output-format=json".into(),
        ]
    }

    /// The command line, as a person would type it.
    pub fn command_line(&self) -> String {
        std::iter::once(self.fio.display().to_string())
            .chain(self.args())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the job and reads its JSON report.
    pub fn run(&self) -> Result<FioResult> {
        let out = Command::new(&self.fio)
            .args(self.args())
            .output()
            .with_context(|| format!("running {}", self.command_line()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}{}",
                self.command_line(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            );
        }
        parse(&stdout).with_context(|| format!("reading the JSON report of {}", self.command_line()))
    }
}

/// What one fio job measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FioResult {
    /// Bytes written.
    pub bytes: u64,
    /// Wall time of the job (writes and syncs), seconds.
    pub seconds: f64,
    /// Writes done.
    pub writes: u64,
    /// `fdatasync` calls done.
    pub syncs: u64,
    /// Syncs per second of job time: each is one write plus one fdatasync.
    pub syncs_per_s: f64,
    /// Durable bandwidth, MB/s (10^6 bytes): bytes over job time.
    pub mb_per_s: f64,
    /// Median fdatasync latency, µs.
    pub sync_p50_us: f64,
    /// 99th-percentile fdatasync latency, µs.
    pub sync_p99_us: f64,
}

/// Reads fio's `--output-format=json` report of a single job. Anything
/// before the first `{` (fio prints notes there at times) is skipped.
pub fn parse(report: &str) -> Result<FioResult> {
    let start = report.find('{').context("no JSON object in fio's output")?;
    let v: serde_json::Value = serde_json::from_str(&report[start..]).context("fio's output is not JSON")?;
    let job = v.get("jobs").and_then(|j| j.get(0)).context("no job in fio's report")?;
    if let Some(e) = job.get("error").and_then(serde_json::Value::as_i64).filter(|&e| e != 0) {
        bail!("fio reports error {e}");
    }
    let num = |path: &[&str]| -> Result<f64> {
        let mut at = job;
        for k in path {
            at = at.get(k).with_context(|| format!("fio's report has no {}", path.join(".")))?;
        }
        at.as_f64().with_context(|| format!("fio's {} is not a number", path.join(".")))
    };
    let ms = num(&["job_runtime"])?;
    if ms <= 0.0 {
        bail!("fio ran for {ms} ms");
    }
    let seconds = ms / 1000.0;
    let bytes = num(&["write", "io_bytes"])?;
    let syncs = num(&["sync", "lat_ns", "N"])?;
    let pct = |q: &str| num(&["sync", "lat_ns", "percentile", q]).map(|ns| ns / 1000.0);
    Ok(FioResult {
        bytes: bytes as u64,
        seconds,
        writes: num(&["write", "total_ios"])? as u64,
        syncs: syncs as u64,
        syncs_per_s: syncs / seconds,
        mb_per_s: bytes / seconds / 1e6,
        sync_p50_us: pct("50.000000")?,
        sync_p99_us: pct("99.000000")?,
    })
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"note: a line fio printed first
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "fsync",
      "error" : 0,
      "write" : { "io_bytes" : 4194304, "total_ios" : 4096, "runtime" : 937 },
      "sync" : {
        "total_ios" : 0,
        "lat_ns" : {
          "min" : 94927, "max" : 3377542, "mean" : 220295.3, "N" : 4095,
          "percentile" : { "50.000000" : 189440, "99.000000" : 593920 }
        }
      },
      "job_runtime" : 936
    }
  ]
}"#;

    #[test]
    fn parses_a_sync_job() -> Result<()> {
        let r = parse(REPORT)?;
        assert_eq!(r.bytes, 4_194_304);
        assert_eq!(r.writes, 4096);
        assert_eq!(r.syncs, 4095);
        assert!((r.seconds - 0.936).abs() < 1e-9);
        assert!((r.syncs_per_s - 4095.0 / 0.936).abs() < 1e-6);
        assert!((r.mb_per_s - 4.194304 / 0.936).abs() < 1e-9);
        assert!((r.sync_p50_us - 189.44).abs() < 1e-9);
        assert!((r.sync_p99_us - 593.92).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn rejects_broken_reports() {
        assert!(parse("fio: command not understood").is_err());
        assert!(parse(r#"{"jobs": []}"#).is_err());
        assert!(parse(&REPORT.replace(r#""error" : 0"#, r#""error" : 5"#)).is_err());
        assert!(parse(&REPORT.replace(r#""N" : 4095,"#, "")).is_err());
    }

    #[test]
    fn command_line() {
        let j = FioJob::sync_latency(Path::new("fio"), Path::new("/work/my dir"), "8m");
        assert_eq!(
            j.command_line(),
            "fio --name=fsync --rw=write --bs=1k --size=8m --fdatasync=1 --ioengine=sync \
             '--directory=/work/my dir' --unlink=1 --output-format=json"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
