//! The listener: accepts connections under the connection cap, runs
//! housekeeping, and shuts down gracefully.
//!
//! Shutdown: stop accepting; tell every session (they stop reading, finish
//! what is in flight, end their subscriptions and return leased messages);
//! wait for them up to `shutdown_timeout_ms`; the caller then closes the
//! engine (sync and clean checkpoints).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gmq_engine::Engine;
use gmq_protocol::{ErrorCode, Reply, WireError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::session::{serve, Shared};

/// Serves `listener` until `shutdown` resolves, then drains the connections.
/// The engine stays open: the caller closes it.
pub async fn run(
    engine: Arc<Engine>,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(engine, config, stop_rx));
    let limits = shared.config.limits.clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut sessions = JoinSet::new();
    let housekeeping = tokio::spawn(housekeeping(shared.clone()));
    tokio::pin!(shutdown);
    loop {
        // Reap finished sessions so the set stays the size of the live ones.
        while sessions.try_join_next().is_some() {}
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let shared = shared.clone();
                            sessions.spawn(async move {
                                let (r, w) = sock.into_split();
                                serve(shared, peer, r, w).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            tracing::warn!(%peer, max = limits.max_connections, "connection refused: too many connections");
                            tokio::spawn(refuse(sock, limits.max_connections));
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we
                    // have and try again shortly, rather than spin or exit.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    tracing::info!(
        connections = shared.registry.connections(),
        "shutting down: no new connections; finishing requests in flight"
    );
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = Duration::from_millis(limits.shutdown_timeout_ms);
    let drained = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = sessions.len(),
            "connections still open after shutdown_timeout_ms; cutting them off (their leases return at the next start)"
        );
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
    }
    // Housekeeping finishes its round (it may be syncing) and stops.
    let _ = housekeeping.await;
    Ok(())
}

async fn refuse(mut sock: TcpStream, max: usize) {
    let line = Reply::error(
        None,
        &WireError::new(ErrorCode::TooManyConnections, format!("the server holds its maximum of {max} connections")),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        sock.write_all(&line).await?;
        sock.shutdown().await
    })
    .await;
}

/// Retention, dead-letter moves and rate samples, once per
/// `maintain_interval_ms`, on the blocking pool.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.config.engine.maintain_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutting_down() => return,
        }
        let s = shared.clone();
        let r = tokio::task::spawn_blocking(move || {
            let deleted = s.engine.maintain();
            s.registry.sample(&s.engine);
            deleted
        })
        .await;
        match r {
            Ok(n) if n > 0 => tracing::debug!(segments = n, "retention deleted segments"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "housekeeping failed"),
        }
    }
}
