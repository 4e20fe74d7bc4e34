//! Function volatility from `pg_proc`, per database, read from the primary at start,
//! on `function_refresh_interval`, when a client changed a function through pgsplit, and
//! when a statement names a function the catalog does not know (at most once a second).

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use crate::backend::{Login, ServerConn};
use crate::classify::Functions;
use crate::settings::{Settings, SharedSettings};
use crate::topology::SharedTopology;

const CATALOG_SQL: &str = "SELECT n.nspname, p.proname, p.provolatile \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

/// The function catalogs of every database clients use.
pub struct FunctionCatalogs {
    settings: SharedSettings,
    by_database: ArcSwap<HashMap<String, Arc<Functions>>>,
    /// Used until a database's catalog is loaded: overrides and well-known built-ins only.
    unloaded: ArcSwap<Functions>,
    wanted: Mutex<HashSet<String>>,
    refresh: Notify,
    /// When a refresh was last asked for an unknown function, in milliseconds since `born`.
    unknown_asked: AtomicU64,
    /// A digest of each database's rows and overrides at its last read: an unchanged
    /// catalog keeps its snapshot (and id), so the classification cache stays warm.
    digests: Mutex<HashMap<String, u64>>,
    born: Instant,
}

/// The least time between two refreshes asked for by unknown functions: a statement that
/// names a function that never exists (a typo, a missing extension) must not have the
/// catalog read on every call.
const UNKNOWN_REFRESH_GAP: Duration = Duration::from_secs(1);

impl FunctionCatalogs {
    /// No catalog loaded yet.
    pub fn new(settings: SharedSettings) -> FunctionCatalogs {
        let unloaded = ArcSwap::new(overrides_only(&settings.load()));
        FunctionCatalogs {
            settings,
            by_database: ArcSwap::from_pointee(HashMap::new()),
            unloaded,
            wanted: Mutex::new(HashSet::new()),
            refresh: Notify::new(),
            unknown_asked: AtomicU64::new(0),
            digests: Mutex::new(HashMap::new()),
            born: Instant::now(),
        }
    }

    /// The functions of `database` (lock-free).
    pub fn for_database(&self, database: &str) -> Arc<Functions> {
        self.by_database
            .load()
            .get(database)
            .cloned()
            .unwrap_or_else(|| self.unloaded.load_full())
    }

    /// The databases clients use, whose catalogs are kept loaded, sorted.
    pub fn databases(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Whether `database`'s catalog has been read.
    pub fn is_loaded(&self, database: &str) -> bool {
        self.by_database.load().contains_key(database)
    }

    /// Asks for `database`'s catalog to be kept loaded.
    pub fn want(&self, database: &str) {
        let new = self
            .wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(database.to_owned());
        if new {
            self.refresh.notify_one();
        }
    }

    /// A reload may have changed `read_only_functions` or `write_functions`: they apply
    /// at once to databases not loaded yet, and to the others at the reload this asks for.
    pub fn reconfigure(&self) {
        self.unloaded.store(overrides_only(&self.settings.load()));
        self.refresh.notify_one();
    }

    /// A client changed a function: reload soon.
    pub fn changed(&self) {
        self.refresh.notify_one();
    }

    /// A statement named a function the catalog does not know: reload soon, unless an
    /// unknown function asked for it less than [`UNKNOWN_REFRESH_GAP`] ago. The statement
    /// itself does not wait: it goes to the primary.
    pub fn unknown_function(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let gap = UNKNOWN_REFRESH_GAP.as_millis() as u64;
        let last = self.unknown_asked.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= gap;
        if due
            && self
                .unknown_asked
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refresh.notify_one();
        }
    }

    /// Reloads wanted catalogs on every interval or request until `stop` changes.
    pub async fn run(self: Arc<Self>, topology: SharedTopology, mut stop: watch::Receiver<bool>) {
        loop {
            let interval = self.settings.load().raw.routing.function_refresh_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.refresh.notified() => {}
                _ = stop.changed() => return,
            }
            self.reload(&topology).await;
        }
    }

    async fn reload(&self, topology: &SharedTopology) {
        let Some(primary) = topology.load().primary().map(|p| p.node.address.clone()) else {
            return;
        };
        let databases = self.databases();
        let settings = self.settings.load_full();
        let routing = &settings.raw.routing;
        let mut next = (**self.by_database.load()).clone();
        for database in databases {
            match self.load(&primary, &database).await {
                Ok(mut rows) => {
                    rows.sort_unstable();
                    let digest = {
                        let mut hasher = DefaultHasher::new();
                        (
                            &rows,
                            &routing.read_only_functions,
                            &routing.write_functions,
                        )
                            .hash(&mut hasher);
                        hasher.finish()
                    };
                    let unchanged = self
                        .digests
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(database.clone(), digest)
                        == Some(digest);
                    if unchanged && next.contains_key(&database) {
                        continue;
                    }
                    let functions = Functions::new(
                        rows,
                        &routing.read_only_functions,
                        &routing.write_functions,
                    );
                    next.insert(database, Arc::new(functions));
                }
                Err(e) => {
                    tracing::warn!(%database, error = %e, "cannot read function volatility; keeping the previous catalog")
                }
            }
        }
        self.by_database.store(Arc::new(next));
    }

    async fn load(
        &self,
        primary: &str,
        database: &str,
    ) -> Result<Vec<(String, String, char)>, String> {
        let settings = self.settings.load_full();
        let monitor = &settings.raw.monitor;
        let login = Login {
            address: primary,
            user: &monitor.user,
            password: &monitor.password,
            database,
            params: &[("application_name".to_owned(), "pgsplit-catalog".to_owned())],
            tls: &settings.server_tls(primary),
        };
        let work = async {
            let mut conn = ServerConn::connect(
                &login,
                settings.raw.connect_timeout,
                settings.raw.max_message_size,
            )
            .await
            .map_err(|e| e.to_string())?;
            let rows = conn
                .simple_query(CATALOG_SQL)
                .await
                .map_err(|e| e.to_string());
            conn.terminate().await;
            rows
        };
        let rows = tokio::time::timeout(monitor.query_timeout * 5, work)
            .await
            .map_err(|_| "timed out".to_string())??;
        Ok(rows
            .into_iter()
            .filter_map(|row| match row.as_slice() {
                [Some(schema), Some(name), Some(volatility)] => Some((
                    schema.clone(),
                    name.clone(),
                    volatility.chars().next().unwrap_or('v'),
                )),
                _ => None,
            })
            .collect())
    }
}

/// The configured overrides and well-known built-ins, for a database not loaded yet.
fn overrides_only(settings: &Settings) -> Arc<Functions> {
    let routing = &settings.raw.routing;
    Arc::new(Functions::new(
        std::iter::empty(),
        &routing.read_only_functions,
        &routing.write_functions,
    ))
}
