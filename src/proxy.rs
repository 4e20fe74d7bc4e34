//! The listener: accepts clients within `max_client_conn`, runs the topology monitor,
//! forwards cancel requests, and shuts down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::catalog::FunctionCatalogs;
use crate::classify::{CacheStats, Classifier};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::pool::{PoolSnapshot, Pools};
use crate::prepared::Registry;
use crate::protocol::BackendKey;
use crate::session;
use crate::stats::{Stats, StatsSnapshot};
use crate::topology::{Monitor, SharedTopology, Topology};

/// Where the proxy is in its life; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// No new clients; sessions end at their next idle moment.
    Draining,
    /// Every session ends now.
    Closing,
}

/// The server a cancel key points at.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Server address.
    pub address: String,
    /// The server's own key for that backend.
    pub key: BackendKey,
    /// The connection's count of cancels on their way.
    pub in_flight: Arc<AtomicUsize>,
}

/// Cancel keys pgsplit handed to clients, mapped to the server connection running each
/// client's request (none between requests in transaction pooling).
#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<BackendKey, Option<CancelTarget>>>,
}

impl CancelRegistry {
    /// Hands out a fresh random key, pointing at nothing yet.
    pub fn register(&self) -> BackendKey {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let key = BackendKey {
                pid: rand::random::<i32>() & i32::MAX,
                secret: rand::random(),
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(key) {
                slot.insert(None);
                return key;
            }
        }
    }

    /// The server running the request of the session behind a key, if any, counted as
    /// having a cancel on its way (under the registry's lock, so a session releasing
    /// that connection either sees the count or has already unlinked it).
    pub fn begin_cancel(&self, key: BackendKey) -> Option<CancelTarget> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let target = keys.get(&key).cloned().flatten()?;
        target.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(target)
    }

    /// Points a key at the server now serving the session, or at nothing.
    pub fn update(&self, key: BackendKey, target: Option<CancelTarget>) {
        if let Some(slot) = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
        {
            *slot = target;
        }
    }

    /// Forgets a key when its session ends.
    pub fn remove(&self, key: BackendKey) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// State every session shares.
pub struct Shared {
    /// Validated configuration.
    pub settings: Arc<Settings>,
    /// Latest cluster snapshot.
    pub topology: SharedTopology,
    /// Cancel keys.
    pub cancels: CancelRegistry,
    /// Lifecycle phase.
    pub phase: watch::Sender<Phase>,
    /// The client-side TLS acceptor; swapped when certificates are reloaded.
    pub tls: ArcSwapOption<crate::tls::ClientTls>,
    /// Statement classifier with its cache.
    pub classifier: Classifier,
    /// Function volatility per database.
    pub functions: Arc<FunctionCatalogs>,
    /// Routing counters.
    pub stats: Stats,
    /// Server connection pools.
    pub pools: Arc<Pools>,
    /// Prepared statements by text, under their server-side names.
    pub statements: Registry,
}

/// A running proxy.
pub struct ProxyHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    clients: Arc<Semaphore>,
    max_clients: u32,
    accept: JoinHandle<()>,
    stop_monitor: watch::Sender<bool>,
}

/// Binds the listener, checks the cluster once, and starts serving.
pub async fn start(settings: Settings) -> std::io::Result<ProxyHandle> {
    let listener = TcpListener::bind(settings.listen).await?;
    let local_addr = listener.local_addr()?;
    // Bound before anything starts, so a taken port fails the start cleanly.
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let metrics = Metrics::new(metrics_listener.is_some());
    let settings = Arc::new(settings);
    let topology: SharedTopology =
        Arc::new(ArcSwap::from_pointee(Topology::unknown(&settings.nodes)));
    let mut monitor = Monitor::new(Arc::clone(&settings), Arc::clone(&topology));
    monitor.check().await;
    match topology.load().primary() {
        Some(p) => {
            tracing::info!(primary = %p.node.name, address = %p.node.address, "cluster checked")
        }
        None => tracing::warn!("no primary found yet; clients are refused until one is"),
    }
    let (stop_monitor, stop) = watch::channel(false);
    tokio::spawn(monitor.run(stop.clone()));
    let functions = Arc::new(FunctionCatalogs::new(Arc::clone(&settings)));
    tokio::spawn(Arc::clone(&functions).run(Arc::clone(&topology), stop.clone()));
    let pools =
        Arc::new(Pools::new(Arc::clone(&settings)).time_checkouts(metrics.checkout_seconds()));
    tokio::spawn(Arc::clone(&pools).run(stop.clone()));

    let max_clients = u32::try_from(settings.raw.max_client_conn).unwrap_or(u32::MAX >> 3);
    let clients = Arc::new(Semaphore::new(max_clients as usize));
    let (phase, _) = watch::channel(Phase::Running);
    let tls = crate::tls::acceptor(&settings.raw).map_err(|(key, message)| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{key}: {message}"),
        )
    })?;
    let shared = Arc::new(Shared {
        tls: ArcSwapOption::from(tls.map(Arc::new)),
        classifier: Classifier::new(settings.raw.routing.classify_cache_size),
        stats: Stats::new(settings.nodes.len(), metrics.query_seconds()),
        settings,
        topology,
        cancels: CancelRegistry::default(),
        phase,
        functions,
        pools,
        statements: Registry::default(),
    });
    let accept = tokio::spawn(accept_loop(
        listener,
        Arc::clone(&shared),
        Arc::clone(&clients),
    ));
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            tokio::spawn(crate::metrics::serve(
                listener,
                metrics,
                Arc::clone(&shared),
                stop,
            ));
            tracing::info!(%addr, "metrics and probes on /metrics, /healthz, /readyz");
            Some(addr)
        }
        None => None,
    };
    tracing::info!(%local_addr, "pgsplit listening");
    Ok(ProxyHandle {
        local_addr,
        metrics_addr,
        shared,
        clients,
        max_clients,
        accept,
        stop_monitor,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, clients: Arc<Semaphore>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Over the limit the client still gets a proper 53300 after its startup packet.
                let permit = Arc::clone(&clients).try_acquire_owned().ok();
                tokio::spawn(session::serve(stream, Arc::clone(&shared), permit));
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

impl ProxyHandle {
    /// Address clients connect to (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoint, when
    /// `[metrics] listen` is set (useful when listening on port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Routing counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Classification cache counters so far.
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.classifier.stats()
    }

    /// Reads the TLS certificate and key files again: new connections get them, the
    /// ones open keep theirs. On an error the old ones stay.
    pub fn reload_tls(&self) -> Result<(), String> {
        let tls = crate::tls::acceptor(&self.shared.settings.raw)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        self.shared.tls.store(tls.map(Arc::new));
        Ok(())
    }

    /// Counters of every server connection pool.
    pub fn pools(&self) -> Vec<PoolSnapshot> {
        self.shared.pools.snapshot()
    }

    /// The latest cluster snapshot.
    pub fn topology(&self) -> Arc<Topology> {
        self.shared.topology.load_full()
    }

    /// Stops accepting, lets running queries finish within `shutdown_timeout`,
    /// then ends every remaining session with 57P01.
    pub async fn shutdown(self) {
        self.accept.abort();
        let _ = self.shared.phase.send(Phase::Draining);
        let timeout = self.shared.settings.raw.shutdown_timeout;
        let drained =
            tokio::time::timeout(timeout, self.clients.acquire_many(self.max_clients)).await;
        if drained.is_err() {
            tracing::warn!(
                ?timeout,
                "sessions still busy after shutdown_timeout; cutting them off"
            );
            let _ = self.shared.phase.send(Phase::Closing);
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.clients.acquire_many(self.max_clients),
            )
            .await;
        }
        let _ = self.stop_monitor.send(true);
        let stats = self.stats();
        let cache = self.cache_stats();
        tracing::info!(
            to_primary = stats.to_primary,
            to_standby = stats.to_standby,
            per_node = ?stats.statements_per_node,
            cache_hits = cache.hits,
            cache_misses = cache.misses,
            "pgsplit stopped"
        );
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers Ctrl-C still works through tokio's portable handler.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_keys_are_unique_and_forgotten() {
        let registry = CancelRegistry::default();
        let target = CancelTarget {
            address: "h:1".into(),
            key: BackendKey { pid: 1, secret: 2 },
            in_flight: Arc::default(),
        };
        let a = registry.register();
        let b = registry.register();
        assert_ne!(a, b);
        assert!(a.pid >= 0);
        assert!(registry.begin_cancel(a).is_none());
        registry.update(a, Some(target.clone()));
        registry.update(b, Some(target.clone()));
        assert_eq!(registry.begin_cancel(a).map(|t| t.key.pid), Some(1));
        assert!(registry.begin_cancel(a).is_some());
        assert_eq!(target.in_flight.load(Ordering::SeqCst), 2);
        registry.update(b, None);
        assert!(registry.begin_cancel(b).is_none());
        registry.remove(a);
        assert!(registry.begin_cancel(a).is_none());
        registry.update(a, None);
        assert!(registry.begin_cancel(a).is_none());
    }
}
