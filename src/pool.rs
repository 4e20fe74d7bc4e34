//! Server connection pools, one per (node address, server user, database). A checkout
//! waits at most `checkout_timeout` for a free connection (then 53300), reuses an idle
//! one after a cheap health check, or opens a new one within `max_pool_size`. A
//! background task closes connections idle past `idle_timeout` or older than
//! `server_lifetime`, and keeps `min_pool_size` open.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncRead;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::backend::{Login, ServerConn};
use crate::error::ProxyError;
use crate::gucs::Gucs;
use crate::prepared::ServerStatements;
use crate::settings::SharedSettings;

/// Which pool a connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Server `host:port`.
    pub address: String,
    /// Role pgsplit logs in as.
    pub user: String,
    /// Database its connections are to.
    pub database: String,
}

/// A server connection and what pgsplit knows about its session state.
pub struct Pooled {
    /// The open server connection.
    pub server: ServerConn,
    /// Settings applied on it beyond the server defaults; `None` when unknown (after a
    /// failed statement of pgsplit's own), so the next sync starts with RESET ALL.
    pub gucs: Option<Gucs>,
    /// Prepared statements (pgsplit's server-side names) it holds.
    pub statements: ServerStatements,
    /// Which client Parse its unnamed statement came from.
    pub unnamed: Option<u64>,
    /// The process id pgsplit gave the client it serves (or served last); 0 for none.
    pub serving: Arc<AtomicI32>,
    created: Instant,
    idle_since: Instant,
}

impl Pooled {
    fn new(server: ServerConn, serving: Arc<AtomicI32>) -> Pooled {
        let now = Instant::now();
        Pooled {
            server,
            gucs: Some(Gucs::new()),
            statements: ServerStatements::default(),
            unnamed: None,
            serving,
            created: now,
            idle_since: now,
        }
    }

    /// Forgets every prepared statement (the server dropped them).
    pub fn forget_statements(&mut self) {
        self.statements.clear();
        self.unnamed = None;
    }

    /// Whether the socket is still open with nothing unexpected on it (an idle server
    /// only writes to say it is closing): costs no round trip.
    fn looks_alive(&mut self) -> bool {
        if self.server.reader.has_buffered() {
            return false;
        }
        // A read that is not ready yet means an open, quiet socket.
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        std::pin::Pin::new(self.server.reader.get_mut())
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }
}

/// A connection checked out of its pool; goes back with [`Lease::release`] and is
/// closed (and uncounted) if dropped instead.
pub struct Lease {
    conn: Option<Box<Pooled>>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for Lease {
    type Target = Pooled;
    fn deref(&self) -> &Pooled {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until released")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Pooled {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until released")
    }
}

impl Lease {
    /// Returns a clean, idle connection (no transaction, nothing in flight) to its pool;
    /// once any cancel on its way to it has arrived, so none reaches its next user.
    pub fn release(mut self) {
        if self.server.cancels_in_flight.load(Ordering::SeqCst) > 0 {
            tokio::spawn(async move {
                let deadline = Instant::now() + self.pool.settings.load().raw.connect_timeout;
                while self.server.cancels_in_flight.load(Ordering::SeqCst) > 0 {
                    if Instant::now() > deadline {
                        // Never handed on: dropped, so closed.
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                self.release();
            });
            return;
        }
        if let Some(mut conn) = self.conn.take() {
            let lifetime = self.pool.settings.load().raw.pool.server_lifetime;
            if conn.created.elapsed() >= lifetime || self.pool.retired() {
                self.pool.closed(conn);
                return;
            }
            conn.idle_since = Instant::now();
            self.pool.lock_idle().push_back(conn);
        }
    }

    /// Resets a connection whose session may hold state pgsplit does not track (a
    /// departed client's pins, transaction or SQL PREPAREs), then returns it; in the
    /// background, so the client's session ends now.
    pub fn reset_and_release(mut self, rollback: bool) {
        tokio::spawn(async move {
            let timeout = self.pool.settings.load().raw.connect_timeout;
            let reset = async {
                if rollback {
                    self.server.simple_query("ROLLBACK").await?;
                }
                self.server.simple_query("DISCARD ALL").await?;
                Ok::<_, ProxyError>(())
            };
            match tokio::time::timeout(timeout, reset).await {
                Ok(Ok(_)) => {
                    self.forget_statements();
                    self.gucs = Some(Gucs::new());
                    self.release();
                }
                _ => {
                    tracing::warn!(address = %self.server.address, "could not reset a server connection; closing it")
                }
            }
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.closed(conn);
        }
    }
}

/// A semaphore whose size a reload can change: growing adds permits at once; shrinking
/// takes free permits away now and the rest as they come back ([`Limit::resize`] again).
pub struct Limit {
    /// One permit per connection or client admitted.
    pub semaphore: Arc<Semaphore>,
    size: Mutex<(usize, usize)>,
}

impl Limit {
    /// `size` permits.
    pub fn new(size: usize) -> Limit {
        Limit {
            semaphore: Arc::new(Semaphore::new(size)),
            size: Mutex::new((size, 0)),
        }
    }

    /// The size asked for last.
    pub fn size(&self) -> usize {
        self.size.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Permits in existence: the size plus those still to be taken away.
    pub fn capacity(&self) -> usize {
        let (size, owed) = *self.size.lock().unwrap_or_else(|e| e.into_inner());
        size + owed
    }

    /// Moves toward `target` permits; permits in use are taken away as they are freed,
    /// by later calls (the pool maintenance calls it every second).
    pub fn resize(&self, target: usize) {
        let mut guard = self.size.lock().unwrap_or_else(|e| e.into_inner());
        let (size, owed) = &mut *guard;
        if target >= *size {
            let grow = target - *size;
            let cancelled = grow.min(*owed);
            *owed -= cancelled;
            self.semaphore.add_permits(grow - cancelled);
        } else {
            *owed += *size - target;
        }
        *size = target;
        if *owed > 0 {
            *owed -= self.semaphore.forget_permits(*owed);
        }
    }
}

/// The client each open server connection serves, by server address and backend pid: a
/// notification names the backend that sent it, and a client of pgsplit knows its
/// notifier by the pid pgsplit gave it, never by a pooled backend's.
#[derive(Default)]
pub struct Backends {
    by_pid: Mutex<HashMap<(String, i32), Arc<AtomicI32>>>,
}

impl Backends {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), Arc<AtomicI32>>> {
        self.by_pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pid pgsplit gave the client that backend `pid` at `address` serves (or
    /// served last), if it is one of pgsplit's connections and has served anyone.
    pub fn client_pid(&self, address: &str, pid: i32) -> Option<i32> {
        let serving = self
            .lock()
            .get(&(address.to_owned(), pid))?
            .load(Ordering::Relaxed);
        (serving != 0).then_some(serving)
    }
}

/// Checkouts of every pool together, for `/metrics`.
#[derive(Default)]
pub struct Checkouts {
    done: AtomicU64,
    waited: AtomicU64,
    /// `pgsplit_pool_checkout_duration_seconds`; `None` when metrics are off, so a
    /// checkout does not even read the clock for it.
    seconds: Option<metrics::Histogram>,
}

impl Checkouts {
    /// Checkouts that got a connection, and checkouts (done or failed) that had to wait
    /// for a free slot in their pool.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.waited.load(Ordering::Relaxed),
        )
    }
}

/// The server connections of one node, role and database: idle ones to hand out, and
/// the permits that bound how many are open.
pub struct Pool {
    key: PoolKey,
    password: Mutex<String>,
    settings: SharedSettings,
    permits: Limit,
    // Boxed: a connection's state is large, and it moves between the pool, leases and
    // sessions' slots several times per transaction.
    idle: Mutex<VecDeque<Box<Pooled>>>,
    open: AtomicUsize,
    waiting: AtomicUsize,
    retired: std::sync::atomic::AtomicBool,
    checkouts: Arc<Checkouts>,
    backends: Arc<Backends>,
}

/// An idle pooled connection, for the admin console.
#[derive(Debug, Clone)]
pub struct IdleServer {
    /// Server `host:port`.
    pub address: String,
    /// Role pgsplit logs in as.
    pub user: String,
    /// Database connected to.
    pub database: String,
    /// The backend's process id.
    pub pid: i32,
    /// When it was opened.
    pub connected_at: std::time::SystemTime,
    /// When it last went idle.
    pub idle_since: Instant,
}

/// Counters of one pool at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Server `host:port`.
    pub address: String,
    /// Role pgsplit logs in as.
    pub user: String,
    /// Database connected to.
    pub database: String,
    /// Connections open (idle and in use).
    pub open: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
}

impl Pool {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Box<Pooled>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn closed(&self, conn: Box<Pooled>) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.backends
            .lock()
            .remove(&(self.key.address.clone(), conn.server.key.pid));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(conn.server.terminate());
        }
    }

    async fn connect(&self) -> Result<Box<Pooled>, ProxyError> {
        let settings = self.settings.load_full();
        let tls = settings.server_tls(&self.key.address);
        let password = self
            .password
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let login = Login {
            address: &self.key.address,
            user: &self.key.user,
            password: &password,
            database: &self.key.database,
            params: &[],
            tls: &tls,
        };
        let raw = &settings.raw;
        let server = ServerConn::connect(&login, raw.connect_timeout, raw.max_message_size).await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        let serving = Arc::new(AtomicI32::new(0));
        self.backends.lock().insert(
            (self.key.address.clone(), server.key.pid),
            Arc::clone(&serving),
        );
        Ok(Box::new(Pooled::new(server, serving)))
    }

    /// A connection for one client, within `checkout_timeout`.
    pub async fn checkout(self: &Arc<Self>) -> Result<Lease, ProxyError> {
        let started = self.checkouts.seconds.as_ref().map(|_| Instant::now());
        let lease = self.lease().await;
        if lease.is_ok() {
            self.checkouts.done.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(started), Some(seconds)) = (started, &self.checkouts.seconds) {
            seconds.record(started.elapsed().as_secs_f64());
        }
        lease
    }

    async fn lease(self: &Arc<Self>) -> Result<Lease, ProxyError> {
        let (checkout_timeout, max_pool_size) = {
            let settings = self.settings.load();
            (
                settings.raw.pool.checkout_timeout,
                settings.raw.pool.max_pool_size,
            )
        };
        let permit = match Arc::clone(&self.permits.semaphore).try_acquire_owned() {
            Ok(permit) => Ok(Ok(permit)),
            Err(_) => {
                self.checkouts.waited.fetch_add(1, Ordering::Relaxed);
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let permit = tokio::time::timeout(
                    checkout_timeout,
                    Arc::clone(&self.permits.semaphore).acquire_owned(),
                )
                .await;
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                permit
            }
        };
        let permit = match permit {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(ProxyError::CheckoutTimeout {
                    addr: self.key.address.clone(),
                    waited: checkout_timeout,
                    size: max_pool_size,
                })
            }
        };
        loop {
            let idle = self.lock_idle().pop_back();
            let Some(mut conn) = idle else { break };
            if self.healthy(&mut conn).await {
                return Ok(Lease {
                    conn: Some(conn),
                    pool: Arc::clone(self),
                    _permit: permit,
                });
            }
            tracing::debug!(address = %self.key.address, "pooled server connection closed, past its lifetime or failed its check; replacing it");
            self.closed(conn);
        }
        let conn = self.connect().await?;
        Ok(Lease {
            conn: Some(conn),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }

    async fn healthy(&self, conn: &mut Pooled) -> bool {
        let settings = self.settings.load();
        let config = &settings.raw;
        if !conn.looks_alive() || conn.created.elapsed() >= config.pool.server_lifetime {
            return false;
        }
        if conn.idle_since.elapsed() < config.pool.server_check_delay {
            return true;
        }
        let check = conn.server.simple_query("");
        // A Query destroys the unnamed statement.
        conn.unnamed = None;
        matches!(
            tokio::time::timeout(config.connect_timeout, check).await,
            Ok(Ok(_))
        )
    }

    /// Closes idle connections past their idle time or lifetime, then opens connections
    /// up to `min_pool_size`.
    async fn maintain(self: &Arc<Self>) {
        let settings = self.settings.load_full();
        let config = &settings.raw.pool;
        self.permits.resize(config.max_pool_size);
        let expired: Vec<Box<Pooled>> = {
            let mut idle = self.lock_idle();
            let open = self.open.load(Ordering::Relaxed);
            let mut keep = VecDeque::with_capacity(idle.len());
            let mut expired = Vec::new();
            // Oldest idle first: those are the ones past idle_timeout.
            for mut conn in idle.drain(..) {
                let surplus = open.saturating_sub(expired.len()) > config.min_pool_size;
                let too_old = conn.created.elapsed() >= config.server_lifetime;
                let too_idle = surplus && conn.idle_since.elapsed() >= config.idle_timeout;
                if too_old || too_idle || self.retired() || !conn.looks_alive() {
                    expired.push(conn);
                } else {
                    keep.push_back(conn);
                }
            }
            *idle = keep;
            expired
        };
        for conn in expired {
            self.closed(conn);
        }
        while !self.retired() && self.open.load(Ordering::Relaxed) < config.min_pool_size {
            let Ok(permit) = Arc::clone(&self.permits.semaphore).try_acquire_owned() else {
                break;
            };
            match self.connect().await {
                Ok(conn) => self.lock_idle().push_front(conn),
                Err(e) => {
                    tracing::warn!(address = %self.key.address, error = %e, "cannot open a connection for min_pool_size");
                    break;
                }
            }
            drop(permit);
        }
    }

    fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            address: self.key.address.clone(),
            user: self.key.user.clone(),
            database: self.key.database.clone(),
            open: self.open.load(Ordering::Relaxed),
            idle: self.lock_idle().len(),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }
}

/// Every pool of the proxy.
pub struct Pools {
    settings: SharedSettings,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    checkouts: Arc<Checkouts>,
    backends: Arc<Backends>,
}

impl Pools {
    /// No pools yet: each is created on first use.
    pub fn new(settings: SharedSettings) -> Pools {
        Pools {
            settings,
            pools: Mutex::new(HashMap::new()),
            checkouts: Arc::default(),
            backends: Arc::default(),
        }
    }

    /// Records how long each checkout takes in `seconds`, if given (`/metrics` is on).
    pub fn time_checkouts(mut self, seconds: Option<metrics::Histogram>) -> Pools {
        self.checkouts = Arc::new(Checkouts {
            seconds,
            ..Checkouts::default()
        });
        self
    }

    /// Checkouts of every pool so far.
    pub fn checkouts(&self) -> &Checkouts {
        &self.checkouts
    }

    /// Which client each open server connection serves.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The pool for a server, role and database.
    pub fn get(&self, address: &str, user: &str, password: &str, database: &str) -> Arc<Pool> {
        let key = PoolKey {
            address: address.to_owned(),
            user: user.to_owned(),
            database: database.to_owned(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.entry(key.clone()).or_insert_with(|| {
            Arc::new(Pool {
                key,
                password: Mutex::new(password.to_owned()),
                settings: Arc::clone(&self.settings),
                permits: Limit::new(self.settings.load().raw.pool.max_pool_size),
                idle: Mutex::new(VecDeque::new()),
                open: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                retired: false.into(),
                checkouts: Arc::clone(&self.checkouts),
                backends: Arc::clone(&self.backends),
            })
        });
        let mut known = pool.password.lock().unwrap_or_else(|e| e.into_inner());
        if *known != password {
            // A reload changed the server password: new connections use it.
            password.clone_into(&mut known);
        }
        drop(known);
        Arc::clone(pool)
    }

    /// Takes a reloaded configuration: pools of nodes no longer configured are retired
    /// (their connections close once their clients are done with them), pools of
    /// configured nodes serve again, and pool sizes follow `max_pool_size`.
    pub fn reconcile(&self) {
        let settings = self.settings.load();
        for pool in self.all() {
            let configured = settings.nodes.iter().any(|n| n.address == pool.key.address);
            pool.retired.store(!configured, Ordering::Relaxed);
            pool.permits.resize(settings.raw.pool.max_pool_size);
        }
    }

    fn all(&self) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every idle pooled connection.
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let mut all = Vec::new();
        for pool in self.all() {
            let key = &pool.key;
            all.extend(pool.lock_idle().iter().map(|c| IdleServer {
                address: key.address.clone(),
                user: key.user.clone(),
                database: key.database.clone(),
                pid: c.server.key.pid,
                connected_at: c.server.connected_at,
                idle_since: c.idle_since,
            }));
        }
        all
    }

    /// Counters of every pool.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        let mut all: Vec<PoolSnapshot> = self.all().iter().map(|p| p.snapshot()).collect();
        all.sort_by(|a, b| {
            (&a.address, &a.user, &a.database).cmp(&(&b.address, &b.user, &b.database))
        });
        all
    }

    /// Maintains every pool each second until `stop`; then closes idle connections.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            for pool in self.all() {
                pool.maintain().await;
            }
            // Pools nobody uses any more (a database that does not exist, a node that
            // left) are forgotten; one in use holds its own reference.
            self.pools
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, pool| {
                    Arc::strong_count(pool) > 1
                        || pool.open.load(Ordering::Relaxed) > 0
                        || pool.waiting.load(Ordering::Relaxed) > 0
                });
        }
        for pool in self.all() {
            pool.retired.store(true, Ordering::Relaxed);
            pool.maintain().await;
        }
    }
}
