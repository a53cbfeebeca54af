//! Runs every example of `docs/protocol.md` against a real server.
//!
//! The protocol reference shows its examples in fenced blocks with the info
//! string `gmq-example`; this test extracts each one, starts a fresh
//! in-process server for it (configured by the block's `# config:` lines),
//! plays the lines over real TCP connections and compares every frame the
//! server sends with the one the document shows. The conventions (what `…`,
//! `$name`, `«N*x»`, `>-`, `EOF`, `! sleep` and named connections mean) are
//! written down at the top of `docs/protocol.md`, section "How to read the
//! examples"; this file implements exactly that.
//!
//! It guards against the document drifting from the server: a reply field
//! added, renamed or dropped, an error code changed, a rule of ordering or
//! closing broken. A failure names the document line and shows both frames.
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{test_config, TestServer};
use gmq_server::Config;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The info string that marks an executable example.
const INFO: &str = "gmq-example";
/// In an expected frame, matches any value.
const ANY: &str = "…";
/// How long a block waits for one expected frame.
const FRAME_DEADLINE: Duration = Duration::from_secs(15);
/// After a block's last line, frames arriving within this are unexpected.
const QUIET: Duration = Duration::from_millis(100);
/// Blocks run at once (each on its own server).
const PARALLEL: usize = 4;

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md")
}

/// One line of a block.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `> text` (newline added) or `>- text` (sent as is).
    Send { conn: String, text: String, newline: bool },
    /// `> EOF`: the client closes its sending side.
    Close { conn: String },
    /// `< {frame}`.
    Expect { conn: String, frame: Value },
    /// `< EOF`: the server closes the connection (after the frames before).
    Eof { conn: String },
    /// `< nothing`: no frame arrives for a moment ([`QUIET`]).
    Nothing { conn: String },
    /// `! sleep MS`.
    Sleep(u64),
    /// `! shutdown`: the server is told to stop, as on SIGTERM.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq)]
struct Line {
    /// 1-based line number in the document.
    no: usize,
    text: String,
    step: Step,
}

#[derive(Debug, Clone, PartialEq)]
struct Block {
    /// Line of the opening fence.
    no: usize,
    /// `(line, dotted path, value)` of each `# config:` line.
    config: Vec<(usize, String, Value)>,
    lines: Vec<Line>,
}

/// Extracts the `gmq-example` blocks of a markdown text.
fn extract(doc: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, raw) in doc.lines().enumerate() {
        let no = i + 1;
        let text = raw.trim_end();
        match open.as_mut() {
            None => {
                if let Some(info) = text.strip_prefix("```") {
                    if info.trim() == INFO {
                        open = Some(Block { no, config: Vec::new(), lines: Vec::new() });
                    }
                }
            }
            Some(b) => {
                if text.starts_with("```") {
                    if b.lines.is_empty() {
                        return Err(format!("line {}: empty {INFO} block", b.no));
                    }
                    blocks.extend(open.take());
                    continue;
                }
                if text.trim().is_empty() {
                    continue;
                }
                if let Some(rest) = text.strip_prefix("# config:") {
                    if !b.lines.is_empty() {
                        return Err(format!("line {no}: `# config:` must come before the first step"));
                    }
                    let (path, value) = rest
                        .trim()
                        .split_once('=')
                        .ok_or_else(|| format!("line {no}: expected `# config: a.b=value`"))?;
                    let value = value.trim();
                    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
                    b.config.push((no, path.trim().to_owned(), value));
                    continue;
                }
                if text.starts_with('#') {
                    continue;
                }
                let step = parse_step(text).map_err(|e| format!("line {no}: {e}: {text}"))?;
                b.lines.push(Line { no, text: text.to_owned(), step });
            }
        }
    }
    if let Some(b) = open {
        return Err(format!("line {}: {INFO} block not closed", b.no));
    }
    Ok(blocks)
}

fn parse_step(text: &str) -> Result<Step, String> {
    if let Some(rest) = text.strip_prefix("! ") {
        let rest = rest.trim();
        if rest == "shutdown" {
            return Ok(Step::Shutdown);
        }
        if let Some(ms) = rest.strip_prefix("sleep ") {
            return ms.trim().parse().map(Step::Sleep).map_err(|_| "expected `! sleep MS`".to_owned());
        }
        return Err("unknown directive".into());
    }
    let at = text.find(['>', '<']).ok_or("expected `>`, `<`, `!` or `#`")?;
    let conn = &text[..at];
    if !conn.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err("a connection name is lower-case letters and digits".into());
    }
    let conn = conn.to_owned();
    let rest = &text[at..];
    if let Some(body) = rest.strip_prefix(">- ") {
        return Ok(Step::Send { conn, text: body.to_owned(), newline: false });
    }
    if let Some(body) = rest.strip_prefix("> ") {
        if body.trim() == "EOF" {
            return Ok(Step::Close { conn });
        }
        return Ok(Step::Send { conn, text: body.to_owned(), newline: true });
    }
    if let Some(body) = rest.strip_prefix("< ") {
        if body.trim() == "EOF" {
            return Ok(Step::Eof { conn });
        }
        if body.trim() == "nothing" {
            return Ok(Step::Nothing { conn });
        }
        let frame = serde_json::from_str(body).map_err(|e| format!("expected frame is not JSON ({e})"))?;
        return Ok(Step::Expect { conn, frame });
    }
    Err("expected `> `, `>- ` or `< ` after the connection name".into())
}

/// Expands `«N*text»` to `text` repeated N times.
fn expand(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('«') {
        out.push_str(&rest[..start]);
        let after = &rest[start + '«'.len_utf8()..];
        let end = after.find('»').ok_or("`«` without `»`")?;
        let (n, s) = after[..end].split_once('*').ok_or("expected `«N*text»`")?;
        let n: usize = n.trim().parse().map_err(|_| "expected a count in `«N*text»`")?;
        out.push_str(&s.repeat(n));
        rest = &after[end + '»'.len_utf8()..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var(s: &str) -> bool {
    s.strip_prefix('$').is_some_and(|n| {
        n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Replaces every `"$name"` of a request by the value captured for it.
fn substitute(text: &str, vars: &HashMap<String, Value>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("\"$") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        if is_var(name) {
            let v = vars.get(name).ok_or_else(|| format!("{name} is used before a reply captured it"))?;
            out.push_str(&v.to_string());
        } else {
            out.push('"');
            out.push_str(name);
            out.push('"');
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `actual` matches `expected`: the same keys, the same values,
/// where `"…"` matches anything, `"text…"` any string starting with
/// `text`, and `"$name"` captures a value (or must equal the one captured).
fn matches(expected: &Value, actual: &Value, vars: &mut HashMap<String, Value>, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(e), _) if e == ANY => Ok(()),
        (Value::String(e), _) if is_var(e) => match vars.get(e.as_str()) {
            Some(v) if v == actual => Ok(()),
            Some(v) => Err(format!("at {path}: {e} is {v}, got {actual}")),
            None => {
                vars.insert(e.clone(), actual.clone());
                Ok(())
            }
        },
        (Value::String(e), Value::String(a)) if e.ends_with(ANY) => {
            let prefix = &e[..e.len() - ANY.len()];
            if a.starts_with(prefix) {
                Ok(())
            } else {
                Err(format!("at {path}: expected a string starting with {prefix:?}, got {a:?}"))
            }
        }
        (Value::Object(e), Value::Object(a)) => {
            let ek: BTreeSet<&String> = e.keys().collect();
            let ak: BTreeSet<&String> = a.keys().collect();
            let missing: Vec<_> = ek.difference(&ak).collect();
            let extra: Vec<_> = ak.difference(&ek).collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(format!("at {path}: keys missing {missing:?}, unexpected {extra:?}"));
            }
            for (k, ev) in e {
                matches(ev, &a[k], vars, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!("at {path}: expected {} elements, got {}", e.len(), a.len()));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                matches(ev, av, vars, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("at {path}: expected {e}, got {a}")),
    }
}

/// A push frame of a subscription (as opposed to a reply).
fn is_push(v: &Value) -> bool {
    v.get("sub").is_some() && v.get("ok").is_none()
}

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: Option<OwnedWriteHalf>,
    /// Subscription ids announced by replies so far.
    subs: HashSet<String>,
    /// The server closed the connection.
    eof: bool,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Result<Conn, String> {
        let s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let (r, w) = s.into_split();
        Ok(Conn { r: BufReader::new(r), w: Some(w), subs: HashSet::new(), eof: false })
    }

    /// The next frame as `(raw line, JSON)`, `None` at EOF, `Err` past the
    /// deadline or on a frame that is not one JSON line.
    async fn next(&mut self, deadline: Duration) -> Result<Option<(String, Value)>, String> {
        if self.eof {
            return Ok(None);
        }
        let mut line = String::new();
        match tokio::time::timeout(deadline, self.r.read_line(&mut line)).await {
            Err(_) => Err(format!("no frame within {deadline:?}")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.eof = true;
                Ok(None)
            }
            Ok(Err(e)) => Err(format!("read failed: {e}")),
            Ok(Ok(0)) => {
                self.eof = true;
                Ok(None)
            }
            Ok(Ok(_)) => {
                if !line.ends_with('\n') {
                    return Err(format!("frame without its newline before EOF: {line:?}"));
                }
                let line = line.trim_end_matches('\n').to_owned();
                let v: Value = serde_json::from_str(&line)
                    .map_err(|e| format!("server sent a line that is not JSON ({e}): {line}"))?;
                if !v.is_object() {
                    return Err(format!("server sent a frame that is not an object: {line}"));
                }
                if is_push(&v) {
                    let sub = v["sub"].as_str().unwrap_or_default();
                    if !self.subs.contains(sub) {
                        return Err(format!("push frame before the reply that announced its subscription: {line}"));
                    }
                } else if let Some(sub) = v.get("sub").and_then(Value::as_str) {
                    self.subs.insert(sub.to_owned());
                }
                Ok(Some((line, v)))
            }
        }
    }
}

/// A failure of one block, located at a document line.
#[derive(Debug)]
struct Failure {
    line: usize,
    block: usize,
    message: String,
}

struct Run {
    block: usize,
    server: Option<TestServer>,
    stopping: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    conns: BTreeMap<String, Conn>,
    vars: HashMap<String, Value>,
    addr: std::net::SocketAddr,
}

fn configure(block: &Block, dir: &std::path::Path) -> Result<Config, Failure> {
    let c = test_config(dir);
    let mut v = serde_json::to_value(&c).expect("config serializes");
    for (no, path, value) in &block.config {
        let fail = |m: String| Failure { line: *no, block: block.no, message: m };
        let mut at = &mut v;
        let keys: Vec<&str> = path.split('.').collect();
        for (i, k) in keys.iter().enumerate() {
            let obj = at.as_object_mut().ok_or_else(|| fail(format!("config {path}: {k} is not in a table")))?;
            if i + 1 == keys.len() {
                obj.insert((*k).to_owned(), value.clone());
                break;
            }
            at = obj.entry(*k).or_insert_with(|| Value::Object(Default::default()));
        }
    }
    let c: Config = serde_json::from_value(v).map_err(|e| Failure {
        line: block.config.first().map_or(block.no, |c| c.0),
        block: block.no,
        message: format!("config does not parse: {e}"),
    })?;
    c.validate().map_err(|e| Failure {
        line: block.config.first().map_or(block.no, |c| c.0),
        block: block.no,
        message: format!("config is not valid (the server would refuse it): {e:#}"),
    })?;
    Ok(c)
}

impl Run {
    async fn conn(&mut self, name: &str) -> Result<&mut Conn, String> {
        if !self.conns.contains_key(name) {
            let c = Conn::open(self.addr).await?;
            self.conns.insert(name.to_owned(), c);
        }
        Ok(self.conns.get_mut(name).expect("inserted"))
    }

    async fn step(&mut self, l: &Line) -> Result<(), String> {
        match &l.step {
            Step::Send { conn, text, newline } => {
                let mut bytes = substitute(&expand(text)?, &self.vars)?.into_bytes();
                if *newline {
                    bytes.push(b'\n');
                }
                let c = self.conn(conn).await?;
                let w = c.w.as_mut().ok_or("send after `> EOF`")?;
                w.write_all(&bytes).await.map_err(|e| format!("send failed: {e}"))
            }
            Step::Close { conn } => {
                let c = self.conn(conn).await?;
                let mut w = c.w.take().ok_or("`> EOF` twice")?;
                w.shutdown().await.map_err(|e| format!("close failed: {e}"))
            }
            Step::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                Ok(())
            }
            Step::Shutdown => {
                let s = self.server.take().ok_or("`! shutdown` twice")?;
                self.stopping = Some(tokio::spawn(s.stop()));
                Ok(())
            }
            Step::Expect { .. } | Step::Eof { .. } | Step::Nothing { .. } => {
                unreachable!("expectations run in groups")
            }
        }
    }

    /// Reads the frames a run of `<` lines of one connection expects and
    /// matches them: replies in request order, push frames in their own
    /// order, the two interleaved as they come (PROTOCOL.md allows pushes
    /// between replies).
    async fn expect(&mut self, group: &[&Line]) -> Result<(), Failure> {
        let conn = match &group[0].step {
            Step::Expect { conn, .. } | Step::Eof { conn } | Step::Nothing { conn } => conn.clone(),
            _ => unreachable!("a group holds expectations"),
        };
        let block = self.block;
        let fail = move |line: usize, message: String| Failure { line, block, message };
        let frames: Vec<(&Line, &Value)> = group
            .iter()
            .filter_map(|l| match &l.step {
                Step::Expect { frame, .. } => Some((*l, frame)),
                _ => None,
            })
            .collect();
        let eof = group.iter().find(|l| matches!(l.step, Step::Eof { .. }));
        let nothing = group.iter().find(|l| matches!(l.step, Step::Nothing { .. }));
        let c = self.conn(&conn).await.map_err(|e| fail(group[0].no, e))?;
        let mut got: Vec<(String, Value)> = Vec::new();
        for (l, _) in &frames {
            match c.next(FRAME_DEADLINE).await {
                Ok(Some(f)) => got.push(f),
                Ok(None) => {
                    return Err(fail(
                        l.no,
                        format!("the server closed the connection; expected\n  {}{}", l.text, shown(&got)),
                    ))
                }
                Err(e) => return Err(fail(l.no, format!("{e}; expected\n  {}{}", l.text, shown(&got)))),
            }
        }
        let (exp_push, exp_reply): (Vec<&(&Line, &Value)>, Vec<_>) = frames.iter().partition(|(_, f)| is_push(f));
        let (got_push, got_reply): (Vec<&(String, Value)>, Vec<_>) = got.iter().partition(|(_, f)| is_push(f));
        if exp_push.len() != got_push.len() {
            let l = exp_push.first().or(exp_reply.first()).map_or(group[0], |x| x.0);
            return Err(fail(
                l.no,
                format!(
                    "expected {} replies and {} push frames, got {} and {}:{}",
                    exp_reply.len(),
                    exp_push.len(),
                    got_reply.len(),
                    got_push.len(),
                    shown(&got)
                ),
            ));
        }
        for ((l, e), (raw, a)) in exp_reply.iter().chain(&exp_push).zip(got_reply.iter().chain(&got_push)) {
            matches(e, a, &mut self.vars, "frame")
                .map_err(|m| fail(l.no, format!("{m}\n  expected: {}\n  got:      {raw}", l.text)))?;
        }
        if let Some(l) = eof {
            let c = self.conn(&conn).await.map_err(|e| fail(l.no, e))?;
            match c.next(FRAME_DEADLINE).await {
                Ok(None) => {}
                Ok(Some((raw, _))) => return Err(fail(l.no, format!("expected the server to close, got {raw}"))),
                Err(e) => return Err(fail(l.no, format!("expected the server to close: {e}"))),
            }
        }
        if let Some(l) = nothing {
            let c = self.conn(&conn).await.map_err(|e| fail(l.no, e))?;
            match c.next(QUIET).await {
                Ok(Some((raw, _))) => return Err(fail(l.no, format!("expected nothing for {QUIET:?}, got {raw}"))),
                Ok(None) => return Err(fail(l.no, "expected nothing, but the server closed the connection".into())),
                Err(_) => {}
            }
        }
        Ok(())
    }
}

fn shown(got: &[(String, Value)]) -> String {
    if got.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n  received:");
    for (raw, _) in got {
        s.push_str("\n    ");
        s.push_str(raw);
    }
    s
}

/// Runs one block on a fresh server.
async fn run_block(block: Block) -> Result<(), Failure> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = configure(&block, dir.path())?;
    let server = TestServer::start_config(config).await;
    let addr = server.addr;
    let mut run = Run {
        block: block.no,
        server: Some(server),
        stopping: None,
        _dir: dir,
        conns: BTreeMap::new(),
        vars: HashMap::new(),
        addr,
    };
    let result = play(&mut run, &block).await;
    // Frames nobody expected are a failure too (checked after the last line).
    let result = match result {
        Ok(()) => quiet(&mut run, &block).await,
        e => e,
    };
    drop(std::mem::take(&mut run.conns));
    if let Some(s) = run.server.take() {
        s.stop().await.map_err(|e| Failure { line: block.no, block: block.no, message: format!("stop: {e:#}") })?;
    }
    if let Some(t) = run.stopping.take() {
        t.await.expect("join").map_err(|e| Failure {
            line: block.no,
            block: block.no,
            message: format!("shutdown: {e:#}"),
        })?;
    }
    result
}

async fn play(run: &mut Run, block: &Block) -> Result<(), Failure> {
    let mut i = 0;
    while i < block.lines.len() {
        let l = &block.lines[i];
        let conn_of = |s: &Step| match s {
            Step::Expect { conn, .. } | Step::Eof { conn } | Step::Nothing { conn } => Some(conn.clone()),
            _ => None,
        };
        if let Some(conn) = conn_of(&l.step) {
            let mut group = vec![l];
            let mut j = i + 1;
            while j < block.lines.len()
                && conn_of(&block.lines[j].step).as_ref() == Some(&conn)
                && !matches!(group.last().map(|g| &g.step), Some(Step::Eof { .. } | Step::Nothing { .. }))
            {
                group.push(&block.lines[j]);
                j += 1;
            }
            run.expect(&group).await?;
            i = j;
        } else {
            run.step(l).await.map_err(|m| Failure { line: l.no, block: block.no, message: m })?;
            i += 1;
        }
    }
    Ok(())
}

async fn quiet(run: &mut Run, block: &Block) -> Result<(), Failure> {
    let last = block.lines.last().map_or(block.no, |l| l.no);
    for (name, c) in run.conns.iter_mut() {
        // EOF is fine, and so is silence (the read times out).
        if let Ok(Some((raw, _))) = c.next(QUIET).await {
            return Err(Failure {
                line: last,
                block: block.no,
                message: format!("unexpected frame on connection {name:?} after the last line: {raw}"),
            });
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_in_protocol_md_hold() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let blocks = extract(&doc).unwrap_or_else(|e| panic!("docs/protocol.md: {e}"));
    assert!(blocks.len() >= 40, "docs/protocol.md has only {} {INFO} blocks", blocks.len());
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for b in blocks.clone() {
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            run_block(b).await
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(f) = r.expect("block task panicked") {
            failures.push(f);
        }
    }
    failures.sort_by_key(|f| f.line);
    if !failures.is_empty() {
        let mut report = format!("{} of {} examples in docs/protocol.md failed:\n", failures.len(), blocks.len());
        for f in &failures {
            report.push_str(&format!("\ndocs/protocol.md:{} (block at line {}): {}\n", f.line, f.block, f.message));
        }
        panic!("{report}");
    }
}

/// Every error code of the protocol is documented, and the examples
/// exercise every operation and every code that can be triggered on demand.
#[test]
fn examples_cover_the_protocol() {
    let doc = std::fs::read_to_string(doc_path()).expect("docs/protocol.md");
    for code in gmq_protocol::ErrorCode::ALL {
        assert!(doc.contains(&format!("`{}`", code.as_str())), "error code `{code}` is not documented");
    }
    let blocks = extract(&doc).expect("blocks parse");
    let mut ops = BTreeSet::new();
    let mut codes = BTreeSet::new();
    let mut legacy = false;
    for l in blocks.iter().flat_map(|b| &b.lines) {
        match &l.step {
            Step::Send { text, .. } => {
                if let Ok(v) = serde_json::from_str::<Value>(text) {
                    if let Some(op) = v.get("op").and_then(Value::as_str) {
                        ops.insert(op.to_owned());
                    }
                    legacy |= v.get("operation").is_some();
                }
            }
            Step::Expect { frame, .. } => {
                let code = frame.pointer("/error/code").and_then(Value::as_str);
                codes.extend(code.map(str::to_owned));
            }
            _ => {}
        }
    }
    let all_ops = gmq_protocol::request::OPS;
    for op in all_ops {
        assert!(ops.contains(op), "no example sends op {op:?}");
    }
    // `storage` and `shutting_down` cannot be caused on demand.
    for code in gmq_protocol::ErrorCode::ALL {
        if !matches!(code, gmq_protocol::ErrorCode::Storage | gmq_protocol::ErrorCode::ShuttingDown) {
            assert!(codes.contains(code.as_str()), "no example shows error code `{code}`");
        }
    }
    assert!(legacy, "no example of a GMQ request");
}

/// The runner's own rules: a check that cannot fail is no check.
#[test]
fn runner_matches_exactly() {
    let mut vars = HashMap::new();
    let m = |e: &str, a: &str, vars: &mut HashMap<String, Value>| {
        matches(&serde_json::from_str(e).unwrap(), &serde_json::from_str(a).unwrap(), vars, "frame")
    };
    assert!(m(r#"{"ok":true,"offset":0}"#, r#"{"ok":true,"offset":0}"#, &mut vars).is_ok());
    assert!(m(r#"{"ok":true,"offset":0}"#, r#"{"ok":true,"offset":1}"#, &mut vars).is_err());
    assert!(m(r#"{"ok":true}"#, r#"{"ok":true,"extra":1}"#, &mut vars).is_err(), "extra keys fail");
    assert!(m(r#"{"ok":true,"x":1}"#, r#"{"ok":true}"#, &mut vars).is_err(), "missing keys fail");
    assert!(m(r#"{"t":"…"}"#, r#"{"t":{"a":[1]}}"#, &mut vars).is_ok(), "… matches anything");
    assert!(m(r#"{"m":"expected…"}"#, r#"{"m":"expected value"}"#, &mut vars).is_ok());
    assert!(m(r#"{"m":"expected…"}"#, r#"{"m":"unexpected"}"#, &mut vars).is_err());
    assert!(m(r#"[1,2]"#, r#"[1,2,3]"#, &mut vars).is_err());
    assert!(m(r#"{"sub":"$s"}"#, r#"{"sub":"s9"}"#, &mut vars).is_ok());
    assert!(m(r#"{"sub":"$s"}"#, r#"{"sub":"s8"}"#, &mut vars).is_err(), "a variable keeps its value");
    assert_eq!(substitute(r#"{"sub":"$s","x":"$"}"#, &vars).unwrap(), r#"{"sub":"s9","x":"$"}"#);
    assert!(substitute(r#"{"sub":"$t"}"#, &vars).is_err());
    assert_eq!(expand("a«3*xy»b").unwrap(), "axyxyxyb");
    let blocks =
        extract("x\n```gmq-example\n# config: limits.max_frame_bytes=2048\n> {\"op\":\"ping\"}\nb< EOF\n```\n")
            .unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].no, 2);
    assert_eq!(blocks[0].config, vec![(3, "limits.max_frame_bytes".to_owned(), Value::from(2048))]);
    assert_eq!(blocks[0].lines[1].step, Step::Eof { conn: "b".into() });
    assert!(extract("```gmq-example\n> x\n").is_err(), "unclosed block");
    assert!(extract("```gmq-example\n? x\n```\n").is_err(), "unknown line");
}
