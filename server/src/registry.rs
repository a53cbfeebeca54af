//! Who is connected and attached to what, and publish/deliver rates: what
//! `stats` and `queues` report beyond the engine's own figures, so an
//! operator can see which clients consume from which queues.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use gmq_engine::Engine;
use serde_json::{json, Value};

/// Samples kept per queue for rates (at one per housekeeping round, about
/// the last ten seconds).
const SAMPLES: usize = 11;

#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    since: Instant,
    user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Attachment {
    conn: u64,
    group: String,
    /// The subscription id, or `None` for `consume` requests.
    sub: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    published: u64,
    delivered: u64,
}

#[derive(Debug, Default)]
struct Inner {
    conns: HashMap<u64, Conn>,
    attached: BTreeMap<String, Vec<Attachment>>,
    samples: HashMap<String, VecDeque<Sample>>,
}

/// The registry. Cheap to lock: every method is a few map operations.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection was accepted.
    pub fn connect(&self, conn: u64, peer: SocketAddr) {
        self.lock().conns.insert(conn, Conn { peer, since: Instant::now(), user: None });
    }

    /// A connection authenticated.
    pub fn authenticated(&self, conn: u64, user: &str) {
        if let Some(c) = self.lock().conns.get_mut(&conn) {
            c.user = Some(user.to_owned());
        }
    }

    /// A connection closed: it is no longer attached anywhere.
    pub fn disconnect(&self, conn: u64) {
        let mut g = self.lock();
        g.conns.remove(&conn);
        g.attached.retain(|_, v| {
            v.retain(|a| a.conn != conn);
            !v.is_empty()
        });
    }

    /// Connections open.
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// `conn` consumes from `group` of `queue` (with a subscription `sub`).
    pub fn attach(&self, queue: &str, conn: u64, group: &str, sub: Option<&str>) {
        let a = Attachment { conn, group: group.to_owned(), sub: sub.map(str::to_owned) };
        let mut g = self.lock();
        let v = g.attached.entry(queue.to_owned()).or_default();
        if !v.contains(&a) {
            v.push(a);
        }
    }

    /// A subscription ended.
    pub fn detach_sub(&self, queue: &str, conn: u64, sub: &str) {
        let mut g = self.lock();
        if let Some(v) = g.attached.get_mut(queue) {
            v.retain(|a| !(a.conn == conn && a.sub.as_deref() == Some(sub)));
            if v.is_empty() {
                g.attached.remove(queue);
            }
        }
    }

    /// The clients attached to `queue`, for `stats`.
    pub fn clients(&self, queue: &str) -> Vec<Value> {
        let g = self.lock();
        let Some(v) = g.attached.get(queue) else { return Vec::new() };
        v.iter()
            .map(|a| {
                let c = g.conns.get(&a.conn);
                json!({
                    "conn": a.conn,
                    "peer": c.map(|c| c.peer.to_string()),
                    "user": c.and_then(|c| c.user.clone()),
                    "connected_s": c.map(|c| c.since.elapsed().as_secs()),
                    "group": a.group,
                    "kind": if a.sub.is_some() { "subscribe" } else { "consume" },
                    "sub": a.sub,
                })
            })
            .collect()
    }

    /// Records every queue's publish and deliver counters (called once per
    /// housekeeping round).
    pub fn sample(&self, engine: &Engine) {
        let now = Instant::now();
        let mut seen = Vec::new();
        for name in engine.queue_names() {
            let Ok(s) = engine.stats(&name) else { continue };
            let delivered = s.groups.iter().map(|g| g.counters.delivered).sum();
            seen.push((name, Sample { at: now, published: s.published, delivered }));
        }
        let mut g = self.lock();
        let keep: std::collections::HashSet<&String> = seen.iter().map(|(n, _)| n).collect();
        g.samples.retain(|n, _| keep.contains(n));
        drop(keep);
        for (name, s) in seen {
            let v = g.samples.entry(name).or_default();
            if v.len() == SAMPLES {
                v.pop_front();
            }
            v.push_back(s);
        }
    }

    /// `(publish, deliver)` rates of `queue` in messages per second over the
    /// last samples (zero until two samples exist).
    pub fn rates(&self, queue: &str) -> (f64, f64) {
        let g = self.lock();
        let Some(v) = g.samples.get(queue) else { return (0.0, 0.0) };
        match (v.front(), v.back()) {
            (Some(a), Some(b)) if b.at > a.at => {
                let dt = (b.at - a.at).as_secs_f64();
                let rate = |x: u64, y: u64| (y.saturating_sub(x) as f64 / dt * 10.0).round() / 10.0;
                (rate(a.published, b.published), rate(a.delivered, b.delivered))
            }
            _ => (0.0, 0.0),
        }
    }
}
