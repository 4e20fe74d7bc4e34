//! What every session shares: the settings, the cluster snapshot, the pools, the
//! clients logged in, and the proxy's phase. Built by the listener, read by sessions,
//! the admin console, metrics and reload.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::catalog::FunctionCatalogs;
use crate::classify::Classifier;
use crate::clients::CancelRegistry;
use crate::monitor::{Positions, Publisher};
use crate::pool::{Limit, Pools};
use crate::prepared::Registry;
use crate::settings::{Settings, SharedSettings};
use crate::stats::Stats;
use crate::topology::SharedTopology;

/// Reads and validates the configuration again (file and environment).
pub type Loader = Arc<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// Applies a new log filter (`log_level`).
pub type LogFilter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Where a reload gets its configuration and what it tells the logger.
#[derive(Default)]
pub struct Sources {
    /// The configuration's source; without one, `RELOAD` has nothing to read.
    pub loader: Option<Loader>,
    /// The log filter's setter; without one, `log_level` changes need a restart.
    pub log_filter: Option<LogFilter>,
    /// One reload at a time (SIGHUP and RELOAD may coincide).
    lock: std::sync::Mutex<()>,
}

impl Sources {
    /// Reloads from `loader`, with `log_filter` when given.
    pub fn new(loader: Loader, log_filter: Option<LogFilter>) -> Sources {
        Sources {
            loader: Some(loader),
            log_filter,
            lock: std::sync::Mutex::default(),
        }
    }
}

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

/// State every session shares.
pub struct Shared {
    /// Validated configuration, swapped by a reload.
    pub settings: SharedSettings,
    /// Where a reload reads the configuration again.
    pub sources: Sources,
    /// Latest cluster snapshot.
    pub topology: SharedTopology,
    /// Publishes cluster snapshots: polls, reloads and operator commands.
    pub publisher: Arc<Publisher>,
    /// Clients admitted at once (`max_client_conn`).
    pub clients: Limit,
    /// Clients logged in per user and per database, for their connection limits.
    pub logins: Arc<crate::limits::Logins>,
    /// Set when the admin console asks the process to shut down.
    pub shutdown_requested: watch::Sender<bool>,
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
    /// WAL positions read on demand for read-your-writes.
    pub positions: Positions,
}

impl Sources {
    /// Held while a reload runs: one at a time.
    pub fn one_at_a_time(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}
