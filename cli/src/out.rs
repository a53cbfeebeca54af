//! Output conventions: data on stdout, diagnostics on stderr, failures as
//! documented exit codes, a closed stdout (`| head`) as a quiet success.

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;

use gmq_client::ErrorCode;

/// Why a command failed; each kind has its exit code (see `gmq --help`).
#[derive(Debug)]
pub enum Fail {
    /// Anything else: a local file, bad input data (exit 1).
    Other(String),
    /// A usage error clap cannot see (exit 2).
    Usage(String),
    /// The server refused the request (exit 3).
    Server(ErrorCode, String),
    /// The server could not be reached, or the connection failed (exit 4).
    Connection(String),
    /// Damage was found (exit 5); the report is already printed.
    Damage(String),
    /// A running server holds the data directory (exit 6).
    Locked(PathBuf),
    /// `request`: no answer in time (exit 7).
    NoReply(String),
    /// Stdout was closed by its reader: stop quietly (exit 0).
    BrokenPipe,
}

impl Fail {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Fail::BrokenPipe => 0,
            Fail::Other(_) => 1,
            Fail::Usage(_) => 2,
            Fail::Server(..) => 3,
            Fail::Connection(_) => 4,
            Fail::Damage(_) => 5,
            Fail::Locked(_) => 6,
            Fail::NoReply(_) => 7,
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Other(m) | Fail::Usage(m) | Fail::Connection(m) | Fail::Damage(m) | Fail::NoReply(m) => {
                f.write_str(m)
            }
            Fail::Server(code, m) => write!(f, "{}: {m}", code.as_str()),
            Fail::Locked(d) => write!(
                f,
                "{} is held by a running server (its LOCK is taken); stop the server first, or use a read-only command",
                d.display()
            ),
            Fail::BrokenPipe => f.write_str("stdout closed"),
        }
    }
}

impl From<gmq_client::Error> for Fail {
    fn from(e: gmq_client::Error) -> Fail {
        use gmq_client::Error as E;
        match e {
            E::Server { code, message } => Fail::Server(code, message),
            E::Io(m) => Fail::Connection(m),
            E::Closed => Fail::Connection("the server closed the connection".into()),
            E::Timeout(t) => Fail::Connection(format!("no answer from the server within {} ms", t.as_millis())),
            E::Protocol(m) => Fail::Connection(format!("unexpected answer from the server: {m}")),
        }
    }
}

impl From<gmq_engine::Error> for Fail {
    fn from(e: gmq_engine::Error) -> Fail {
        match e {
            gmq_engine::Error::Locked(d) => Fail::Locked(d),
            e => Fail::Other(e.to_string()),
        }
    }
}

/// Result of a command.
pub type Res<T = ()> = Result<T, Fail>;

/// An I/O error on stdout: a closed pipe is a quiet stop.
pub fn stdout_err(e: io::Error) -> Fail {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Fail::BrokenPipe
    } else {
        Fail::Other(format!("writing to stdout: {e}"))
    }
}

/// A local I/O error, naming what was being done.
pub fn local(what: impl fmt::Display) -> impl FnOnce(io::Error) -> Fail {
    move |e| Fail::Other(format!("{what}: {e}"))
}

/// Buffered stdout.
#[derive(Debug)]
pub struct Out {
    w: io::BufWriter<io::Stdout>,
}

impl Out {
    /// Stdout, buffered.
    pub fn new() -> Out {
        Out { w: io::BufWriter::with_capacity(64 << 10, io::stdout()) }
    }

    /// Writes bytes.
    pub fn bytes(&mut self, b: &[u8]) -> Res {
        self.w.write_all(b).map_err(stdout_err)
    }

    /// Writes a line.
    pub fn line(&mut self, s: impl fmt::Display) -> Res {
        writeln!(self.w, "{s}").map_err(stdout_err)
    }

    /// Writes a JSON value as one line.
    pub fn json(&mut self, v: &serde_json::Value) -> Res {
        self.line(v)
    }

    /// Pushes everything written so far to the reader.
    pub fn flush(&mut self) -> Res {
        self.w.flush().map_err(stdout_err)
    }
}

/// A table with aligned columns; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    let mut row = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 < width.len() {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            } else {
                line.push_str(c);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    };
    row(&mut headers.iter().copied());
    for r in rows {
        row(&mut r.iter().map(String::as_str));
    }
    s.pop();
    s
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Milliseconds since the epoch as `2026-11-24T03:04:05.678Z`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A progress bar on stderr for offline work over `total` bytes: drawn only
/// when stderr is a terminal and the work is large enough to wait for.
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if total < 64 << 20 || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_sizes_and_tables() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]), "A    BB\nxxx  y");
    }
}
