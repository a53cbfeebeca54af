//! `peer-bench` end to end against GMQ alone (the peers need their Debian
//! packages and minutes; GMQ needs neither): every workload runs, the JSON
//! carries a result for each, and the report names the targets.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

#[test]
fn every_workload_against_gmq() {
    let bench = env!("CARGO_BIN_EXE_peer-bench");
    let server = Path::new(bench).with_file_name(format!("gmq-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        server.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p gmq-server`)",
        server.display()
    );
    // On the disk the repository is on: the benchmark refuses tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let json = dir.path().join("runs.json");
    let out = Command::new(bench)
        .args(["--runs", "1", "--systems", "gmq-always,gmq-never", "--no-limits", "--no-install"])
        .args(["--duration", "0.3", "--warmup", "0.1", "--backlog", "3000", "--rate", "500"])
        .args(["--e2e-duration", "0.5", "--e2e-warmup", "0.1", "--max-others-cpu", "2", "--quiet-wait", "0"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--server")
        .arg(&server)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "peer-bench failed:\n{}\n{}", report, String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let systems = v["runs"][0]["systems"].as_array().unwrap();
    assert_eq!(systems.len(), 2);
    for s in systems {
        let name = s["system"].as_str().unwrap();
        for w in ["publish", "latency"] {
            let rate = s[w]["result"]["msgs_per_s"].as_f64().unwrap();
            assert!(rate > 0.0, "{name} {w}: {rate} msgs/s");
        }
        assert_eq!(s["consume"]["result"]["delivered"].as_u64(), Some(3000), "{name}: the whole backlog");
        assert_eq!(s["e2e"]["result"]["missing"].as_u64(), Some(0), "{name}: every scheduled message delivered");
        assert!(s["e2e"]["result"]["e2e"]["count"].as_u64().unwrap() >= 250, "{name}: 0.5 s at 500/s");
    }
    for section in ["### (1) Durable publish", "### (2)", "### (3)", "### (4)", "### Targets", "| GMQ always"] {
        assert!(report.contains(section), "the report lacks {section:?}:\n{report}");
    }
}
