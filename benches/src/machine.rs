//! What the machine is, read from `/proc` and `/sys`, so that every report
//! says where its figures come from — and how busy the machine was.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The machine a benchmark runs on.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// CPU model name, if known.
    pub cpu_model: String,
    /// Memory in GiB.
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// Where the data directory lives.
    pub disk: DiskInfo,
}

/// The filesystem and block device holding a directory.
#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    /// The directory asked about.
    pub dir: PathBuf,
    /// Mount point of its filesystem.
    pub mount_point: String,
    /// Filesystem type (`ext4`, `tmpfs`, ...).
    pub fs_type: String,
    /// Mount source (`/dev/vda`, ...).
    pub device: String,
    /// Mount options.
    pub options: String,
    /// `rotational` flag of the block device, if it has one.
    pub rotational: Option<bool>,
    /// Device model, if the kernel knows one.
    pub model: Option<String>,
}

impl DiskInfo {
    /// Whether writes there reach no disk at all (tmpfs, ramfs).
    pub fn is_memory(&self) -> bool {
        matches!(self.fs_type.as_str(), "tmpfs" | "ramfs")
    }
}

impl MachineInfo {
    /// Describes this machine, with `data_dir`'s filesystem.
    pub fn probe(data_dir: &Path) -> MachineInfo {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        MachineInfo {
            cpus,
            cpu_model,
            mem_gib: mem_kib / (1024.0 * 1024.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            disk: DiskInfo::probe(data_dir),
        }
    }

    /// One line per fact, for the head of a report.
    pub fn describe(&self) -> String {
        let d = &self.disk;
        let mut dev = format!("{} ({}, mounted on {})", d.device, d.fs_type, d.mount_point);
        if let Some(m) = &d.model {
            dev.push_str(&format!(", model {m}"));
        }
        if let Some(r) = d.rotational {
            dev.push_str(if r { ", reports rotational" } else { ", reports non-rotational" });
        }
        format!(
            "- CPUs: {} × {}\n- memory: {:.1} GiB\n- kernel: Linux {}\n- data directory: {} on {}\n",
            self.cpus,
            self.cpu_model,
            self.mem_gib,
            self.kernel,
            d.dir.display(),
            dev
        )
    }
}

impl DiskInfo {
    /// Finds the mount holding `dir` (the longest mount point that prefixes
    /// its canonical path) in `/proc/mounts`.
    pub fn probe(dir: &Path) -> DiskInfo {
        let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mounts = read("/proc/mounts");
        let best = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4).then(|| (unescape(f[1]), f[2].to_owned(), f[0].to_owned(), f[3].to_owned()))
            })
            .filter(|(mp, ..)| canon.starts_with(mp))
            .max_by_key(|(mp, ..)| mp.len());
        let (mount_point, fs_type, device, options) =
            best.unwrap_or_else(|| ("?".into(), "unknown".into(), "unknown".into(), String::new()));
        let block = device.strip_prefix("/dev/").map(|d| d.to_owned());
        let sys = |file: &str| {
            block.as_ref().and_then(|b| {
                let direct = format!("/sys/class/block/{b}/{file}");
                std::fs::read_to_string(&direct)
                    .or_else(|_| std::fs::read_to_string(format!("/sys/class/block/{b}/../{file}")))
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            })
        };
        DiskInfo {
            dir: canon,
            mount_point,
            fs_type,
            device,
            options,
            rotational: sys("queue/rotational").map(|v| v == "1"),
            model: sys("device/model"),
        }
    }
}

/// The 1-minute load average (`/proc/loadavg`), `NaN` if unreadable.
pub fn load_average() -> f64 {
    read("/proc/loadavg").split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// CPU time counters of the whole machine and of this process, to tell
/// afterwards how busy the rest of the machine was during a measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// Ticks of every CPU, busy or not (`/proc/stat`).
    total: u64,
    /// Busy ticks of every CPU: user, nice, system, irq, softirq, steal.
    busy: u64,
    /// Ticks the hypervisor ran something else while a CPU wanted to run.
    steal: u64,
    /// Ticks of this process and its waited-for children (`/proc/self/stat`).
    own: u64,
}

/// How busy the machine was between two [`CpuSample`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuUse {
    /// CPUs kept busy by everything but this process (and its children),
    /// on average: 0 on a quiet machine, up to the CPU count.
    pub others_cpus: f64,
    /// CPUs kept busy by this process, on average.
    pub own_cpus: f64,
    /// Share of CPU time stolen by the hypervisor, %.
    pub steal_pct: f64,
}

impl CpuSample {
    /// Reads the counters now (zeros where they cannot be read).
    pub fn now() -> CpuSample {
        let stat = read("/proc/stat");
        let cpu: Vec<u64> = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default();
        let f = |i: usize| cpu.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is
        // already inside user and nice).
        let busy = f(0) + f(1) + f(2) + f(5) + f(6) + f(7);
        let total = busy + f(3) + f(4);
        let me = read("/proc/self/stat");
        // Fields after the parenthesised command name: utime is the 14th
        // field of the line, i.e. the 12th after `) `.
        let own = me
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().skip(11).take(4).filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        CpuSample { total, busy, steal: f(7), own }
    }

    /// Use between `self` (earlier) and `later`, over `cpus` CPUs.
    pub fn until(&self, later: &CpuSample, cpus: usize) -> CpuUse {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return CpuUse::default();
        }
        let per_cpu = total as f64 / cpus.max(1) as f64;
        let busy = later.busy.saturating_sub(self.busy);
        let own = later.own.saturating_sub(self.own);
        CpuUse {
            others_cpus: busy.saturating_sub(own) as f64 / per_cpu,
            own_cpus: own as f64 / per_cpu,
            steal_pct: later.steal.saturating_sub(self.steal) as f64 / total as f64 * 100.0,
        }
    }
}

impl CpuSample {
    /// Use between `self` (earlier) and `later`, over `cpus` CPUs, with a
    /// child process that used `child_ticks` (see [`process_ticks`]) in the
    /// meantime counted apart: it is left out of `others_cpus`, and returned
    /// as the CPUs it kept busy.
    pub fn until_with_child(&self, later: &CpuSample, cpus: usize, child_ticks: u64) -> (CpuUse, f64) {
        let mut u = self.until(later, cpus);
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return (u, 0.0);
        }
        let child = child_ticks as f64 / (total as f64 / cpus.max(1) as f64);
        u.others_cpus = (u.others_cpus - child).max(0.0);
        (u, child)
    }
}

/// CPU time (user + system, in clock ticks, as `/proc/stat` counts) that
/// process `pid` has used so far; `None` once it is gone.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // utime and stime are the 14th and 15th fields of the line: the 12th and
    // 13th after the command name.
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    (f.len() == 2).then(|| f[0] + f[1])
}

/// Waits, one second at a time and at most `limit`, until other processes
/// keep at most `max_others` CPUs busy. Returns how long it waited.
pub fn wait_quiet(max_others: f64, limit: std::time::Duration, cpus: usize) -> std::time::Duration {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    loop {
        let a = CpuSample::now();
        std::thread::sleep(Duration::from_secs(1));
        let others = a.until(&CpuSample::now(), cpus).others_cpus;
        if others <= max_others || start.elapsed() >= limit {
            return start.elapsed().saturating_sub(Duration::from_secs(1));
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_unescape() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }

    #[test]
    fn cpu_use_counts_this_process() {
        let m = MachineInfo::probe(Path::new("."));
        let a = CpuSample::now();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let u = a.until(&CpuSample::now(), m.cpus);
        assert!(u.own_cpus > 0.3, "{u:?}");
        assert!(u.others_cpus >= 0.0 && u.steal_pct >= 0.0, "{u:?}");
    }

    #[test]
    fn child_ticks_are_counted_apart() {
        let me = process_ticks(std::process::id()).expect("our own /proc/PID/stat");
        let a = CpuSample::now();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = CpuSample::now();
        let used = process_ticks(std::process::id()).unwrap_or(0) - me;
        assert!(used > 0);
        let (u, child) = a.until_with_child(&b, 1, used);
        assert!(child > 0.0 && u.others_cpus >= 0.0, "{u:?} {child}");
        assert_eq!(process_ticks(u32::MAX), None);
    }

    #[test]
    fn probes_this_machine() {
        let m = MachineInfo::probe(Path::new("."));
        assert!(m.cpus >= 1);
        assert!(m.describe().contains("data directory"));
    }
}

/// How busy the machine was during one run of a benchmark.
#[derive(Debug, Clone, Copy)]
pub struct RunLoad<'a> {
    /// Load average before the run.
    pub before: f64,
    /// Load average after it.
    pub after: f64,
    /// CPU use during it.
    pub cpu: &'a CpuUse,
}

/// The "Runs" table every report ends with: per run, the machine's load,
/// other processes' CPUs and steal, then `extra` columns whose cells
/// `row` gives along with the run's load.
pub fn runs_table<'a, R: 'a>(
    runs: &'a [R],
    extra: &[(&str, crate::table::Align)],
    row: impl Fn(&'a R) -> (RunLoad<'a>, Vec<String>),
) -> String {
    use crate::table::{pct, Align, Table};
    let mut t = Table::new(
        [
            ("run", Align::Right),
            ("load avg before → after", Align::Left),
            ("others' CPUs", Align::Right),
            ("steal", Align::Right),
        ]
        .into_iter()
        .chain(extra.iter().copied()),
    );
    for (i, r) in runs.iter().enumerate() {
        let (load, cells) = row(r);
        let fixed = [
            (i + 1).to_string(),
            format!("{:.2} → {:.2}", load.before, load.after),
            format!("{:.2}", load.cpu.others_cpus),
            pct(load.cpu.steal_pct),
        ];
        t.row(fixed.into_iter().chain(cells));
    }
    t.to_markdown()
}
