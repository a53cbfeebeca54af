//! `gmq-server`: GMQ's broker. It maps the wire protocol of PROTOCOL.md
//! (`gmq-protocol`) onto the storage engine (`gmq-engine`) over TCP.
//!
//! - [`config`]: defaults, TOML file, flags, validation.
//! - [`server`]: the listener, the connection cap, housekeeping, shutdown.
//! - [`session`]: one connection — ordered pipelining, the writer, limits.
//! - `ops`: each operation on the engine; [`subscription`]: push delivery.
//! - [`registry`]: connected clients and rates for `stats`.
//!
//! The binary is a shim over [`start`]; tests start servers in-process the
//! same way, on `127.0.0.1:0`.

pub mod config;
pub mod convert;
mod ops;
pub mod registry;
pub mod server;
pub mod session;
pub mod subscription;

use std::sync::Arc;

use anyhow::Context;
use gmq_engine::Engine;
use tokio::net::TcpListener;

pub use config::{Config, Flags, Storage};

/// Opens the engine the configuration names (recovering it), and logs what
/// recovery found.
pub fn open_engine(config: &Config) -> anyhow::Result<Engine> {
    let ec = config.engine_config()?;
    let engine = match config.storage {
        Storage::Filesystem => Engine::open(ec).with_context(|| format!("opening {}", config.data_dir.display()))?,
        Storage::Memory => Engine::open_memory(ec)?,
    };
    let r = engine.open_report();
    tracing::info!(
        storage = ?config.storage,
        data_dir = %config.data_dir.display(),
        queues = r.queues,
        scanned_bytes = r.scanned_bytes,
        torn_bytes = r.torn_bytes,
        quarantined = r.quarantined.len(),
        "storage opened"
    );
    for (q, e) in &r.quarantined {
        tracing::error!(queue = %q, error = %e, "queue quarantined: run `gmq repair` on it");
    }
    Ok(engine)
}

/// A server listening, ready to [`Running::serve`].
#[derive(Debug)]
pub struct Running {
    /// The engine (shared with the sessions).
    pub engine: Arc<Engine>,
    /// The bound listener.
    pub listener: TcpListener,
    /// The configuration.
    pub config: Config,
}

/// Opens the engine and binds the listener; logs `listening on ADDR:PORT`.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let c = config.clone();
    let engine = tokio::task::spawn_blocking(move || open_engine(&c)).await??;
    let addr = config.listen_addr()?;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!("listening on {local}");
    Ok(Running { engine: Arc::new(engine), listener, config })
}

impl Running {
    /// The address actually bound (the real port for `:0`).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, drains, then syncs and closes the
    /// engine.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let engine = self.engine.clone();
        server::run(self.engine, self.config, self.listener, shutdown).await?;
        close_engine(engine).await
    }
}

/// Syncs and closes the engine once no one else holds it (sessions that
/// outlived the grace period still might).
pub async fn close_engine(engine: Arc<Engine>) -> anyhow::Result<()> {
    let closed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(engine) {
        Ok(e) => e.close().map(|()| true),
        Err(_) => Ok(false),
    })
    .await??;
    if closed {
        tracing::info!("storage synced and closed");
    } else {
        tracing::warn!("storage still in use by unfinished connections; it closes when they end");
    }
    Ok(())
}
