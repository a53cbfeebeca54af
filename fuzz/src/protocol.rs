//! The wire protocol under arbitrary input.
//!
//! * [`request_parse`]: every line of the input through `gmq_protocol::parse`
//!   (no panics; a request that parses parses the same after its JSON is
//!   re-serialised, so the fast path for publishes and the general path
//!   agree), and the input through the line framer in chunks.
//! * [`session`]: the input as the byte stream of one client connection to a
//!   server session over an in-memory engine; the session must answer with
//!   JSON lines only and end when the client closes its side.

use std::sync::Arc;
use std::time::Duration;

use gmq_engine::{Engine, EngineConfig};
use gmq_protocol::{LineFramer, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Line limit used for the framer and the session.
pub const MAX_FRAME: usize = 4096;

/// See the module documentation.
pub fn request_parse(data: &[u8]) {
    if data.len() > crate::MAX_INPUT {
        return;
    }
    for line in data.split(|&b| b == b'\n') {
        let first = gmq_protocol::parse(line);
        if let (Parsed::Request { .. } | Parsed::Legacy(_), Ok(v)) =
            (&first, serde_json::from_slice::<serde_json::Value>(line))
        {
            let again = gmq_protocol::parse(&serde_json::to_vec(&v).expect("a Value serialises"));
            assert_eq!(format!("{first:?}"), format!("{again:?}"), "same request, other formatting: {v}");
        }
    }
    // The framer, fed in chunks whose sizes come from the data itself.
    let mut framer = LineFramer::new(MAX_FRAME);
    let mut rest = data;
    let mut step = 1usize;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        framer.extend(&rest[..n]);
        rest = &rest[n..];
        step = (step * 7 + usize::from(rest.first().copied().unwrap_or(0))) % 977 + 1;
        loop {
            match framer.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= MAX_FRAME, "a line longer than the limit");
                    assert!(!line.contains(&b'\n'), "a line holds a newline");
                }
                Ok(None) => break,
                // The session closes the connection here.
                Err(_) => return,
            }
        }
    }
}

/// See the module documentation.
pub fn session(data: &[u8]) {
    if data.len() > 1 << 16 {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let out = rt.block_on(async {
        let mut cfg = EngineConfig::new("/fuzz");
        cfg.committer_threads = 1;
        cfg.recovery_threads = 1;
        let engine = Arc::new(Engine::open_memory(cfg).expect("memory engine"));
        let mut config = gmq_server::Config::default();
        config.limits.max_frame_bytes = MAX_FRAME;
        config.limits.max_batch = 64;
        config.limits.max_payload_bytes = 1024;
        config.limits.line_timeout_ms = 5_000;
        config.limits.idle_timeout_ms = 5_000;
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let shared = Arc::new(gmq_server::session::Shared::new(engine, config, shutdown));
        let (client, server) = tokio::io::duplex(1 << 16);
        let (sr, sw) = tokio::io::split(server);
        let peer = "127.0.0.1:9".parse().expect("address");
        let task = tokio::spawn(gmq_server::session::serve(shared, peer, sr, sw));
        let (mut cr, mut cw) = tokio::io::split(client);
        let write = async {
            // The server may close first (an oversized line); that is fine.
            let _ = cw.write_all(data).await;
            let _ = cw.shutdown().await;
        };
        let read = async {
            let mut out = Vec::new();
            let _ = cr.read_to_end(&mut out).await;
            out
        };
        let both = async { tokio::join!(write, read).1 };
        let out =
            tokio::time::timeout(Duration::from_secs(20), both).await.expect("the session ends when the client closes");
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("the session task ends").expect("no panic");
        out
    });
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!("the server wrote a line that is not JSON ({e}): {}", String::from_utf8_lossy(line))
        });
        assert!(v.is_object(), "{v}");
    }
}
