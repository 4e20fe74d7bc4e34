//! The listener: accepts clients within `max_client_conn`, runs the topology monitor,
//! forwards cancel requests, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catalog::FunctionCatalogs;
use crate::classify::{CacheStats, Classifier};
use crate::clients::CancelRegistry;
use crate::context::Sources;
use crate::context::{Phase, Shared};
use crate::metrics::Metrics;
use crate::monitor::{Monitor, Positions, Publisher};
use crate::pool::{Limit, PoolSnapshot, Pools};
use crate::prepared::Registry;
use crate::session;
use crate::settings::{Settings, SharedSettings};
use crate::stats::{Stats, StatsSnapshot};
use crate::topology::{SharedTopology, Topology};

/// A running proxy.
pub struct ProxyHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    stop_monitor: watch::Sender<bool>,
}

/// Binds the listener, checks the cluster once, and starts serving; with nothing to
/// reload from.
pub async fn start(settings: Settings) -> std::io::Result<ProxyHandle> {
    start_with(settings, Sources::default()).await
}

/// As [`start`], reloading from `sources` on `RELOAD` and SIGHUP.
pub async fn start_with(settings: Settings, sources: Sources) -> std::io::Result<ProxyHandle> {
    let listener = TcpListener::bind(settings.listen).await?;
    let local_addr = listener.local_addr()?;
    // Bound before anything starts, so a taken port fails the start cleanly.
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let metrics = Metrics::new(metrics_listener.is_some());
    let topology: SharedTopology =
        Arc::new(ArcSwap::from_pointee(Topology::unknown(&settings.nodes)));
    let settings: SharedSettings = Arc::new(ArcSwap::from_pointee(settings));
    let publisher = Arc::new(Publisher::new(Arc::clone(&topology)));
    let mut monitor = Monitor::new(Arc::clone(&settings), Arc::clone(&publisher));
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

    let positions = Positions::new(Arc::clone(&settings), stop.clone());
    let current = settings.load_full();
    let clients = Limit::new(current.raw.max_client_conn);
    let (phase, _) = watch::channel(Phase::Running);
    let shared = Arc::new(Shared {
        tls: ArcSwapOption::from(current.client_tls.clone()),
        classifier: Classifier::new(current.raw.routing.classify_cache_size),
        stats: Stats::new(current.nodes.len(), metrics.query_seconds()),
        settings,
        sources,
        topology,
        publisher,
        clients,
        logins: Arc::default(),
        shutdown_requested: watch::channel(false).0,
        cancels: CancelRegistry::default(),
        phase,
        functions,
        pools,
        statements: Registry::default(),
        positions,
    });
    let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
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
        accept,
        stop_monitor,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Over the limit the client still gets a proper 53300 after its startup packet.
                let permit = Arc::clone(&shared.clients.semaphore)
                    .try_acquire_owned()
                    .ok();
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
        let tls = crate::tls::acceptor(&self.shared.settings.load().raw)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        self.shared.tls.store(tls.map(Arc::new));
        Ok(())
    }

    /// Reads the configuration again and applies it (as SIGHUP does); on an error the
    /// running one stays. Returns the changes.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        crate::reload::reload(&self.shared)
    }

    /// Serves until SIGTERM, SIGINT or the admin console's `SHUTDOWN`, reloading the
    /// configuration on every SIGHUP.
    pub async fn until_stopped(&self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup()).ok();
        let mut requested = self.shared.shutdown_requested.subscribe();
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = requested.wait_for(|r| *r) => return,
                _ = hangup => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // Rejections are logged by the reload itself.
                    let _ = self.reload();
                }
            }
        }
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
        let timeout = self.shared.settings.load().raw.shutdown_timeout;
        let clients = &self.shared.clients;
        let all = u32::try_from(clients.capacity()).unwrap_or(u32::MAX >> 3);
        let drained = tokio::time::timeout(timeout, clients.semaphore.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!(
                ?timeout,
                "sessions still busy after shutdown_timeout; cutting them off"
            );
            let _ = self.shared.phase.send(Phase::Closing);
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                clients.semaphore.acquire_many(all),
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
