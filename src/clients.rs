//! The clients logged in, each under the cancel key pgsplit handed it, and where a
//! cancel request for one of them goes.
//!
//! A cancel that arrives while its client's request is on its way to a server (a pooled
//! connection being opened, settings synced, a statement described first) is held and
//! sent right after the request: sent earlier it would stop pgsplit's own work or reach
//! an idle server, which ignores it, and the client's query would run to its end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::backend::send_cancel;
use crate::protocol::BackendKey;

/// The server a cancel key points at.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Server address.
    pub address: String,
    /// The server's own key for that backend.
    pub key: BackendKey,
    /// The connection's count of cancels on their way.
    pub in_flight: Arc<AtomicUsize>,
    /// When that server connection was opened.
    pub connected_at: SystemTime,
}

impl CancelTarget {
    /// Sends the cancel counted by `begin_cancel` or `request_sent`, and uncounts it.
    pub async fn send(self, timeout: Duration) {
        if let Err(e) = send_cancel(&self.address, self.key, timeout).await {
            tracing::warn!(error = %e, "could not forward a cancel request");
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn counted(&self) -> CancelTarget {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.clone()
    }
}

/// Who a client is, for the admin console's SHOW CLIENTS.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// User name it logged in as.
    pub user: String,
    /// Role pgsplit uses for it on the servers.
    pub server_user: String,
    /// Database it logged in to.
    pub database: String,
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// pgsplit's address it reached.
    pub local_addr: Option<SocketAddr>,
    /// When it logged in.
    pub connected_at: SystemTime,
    /// Whether it speaks TLS.
    pub tls: bool,
    /// Its startup `application_name`.
    pub application_name: String,
}

/// Where the client's cancel key leads now.
#[derive(Default)]
struct Pointer {
    /// The server connection serving the client.
    server: Option<CancelTarget>,
    /// A request is on its way to a server: a cancel waits for it.
    holding: bool,
    /// A cancel arrived while holding.
    owed: bool,
}

/// A logged-in client: who it is, and the server connection running its request, if
/// any. The session points it at its server itself, without the registry's lock (that
/// happens twice per request).
pub struct ClientEntry {
    /// Who the client is.
    pub info: Arc<ClientInfo>,
    /// The process id pgsplit told it (the pid of its cancel key).
    pub pid: i32,
    pointer: Mutex<Pointer>,
}

impl ClientEntry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pointer> {
        self.pointer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Points the client's cancel key at the server now serving it, or at nothing.
    pub fn point_at(&self, target: Option<CancelTarget>) {
        let previous = std::mem::replace(&mut self.lock().server, target);
        // Dropped outside the lock.
        drop(previous);
    }

    /// A request is on its way to a server: cancels wait until it is sent.
    pub fn hold(&self) {
        self.lock().holding = true;
    }

    /// The request went out: a cancel that waited for it is returned, counted, to be sent.
    pub fn request_sent(&self) -> Option<CancelTarget> {
        let mut pointer = self.lock();
        pointer.holding = false;
        if !std::mem::take(&mut pointer.owed) {
            return None;
        }
        pointer.server.as_ref().map(CancelTarget::counted)
    }

    /// The request was answered without reaching a server: a cancel that waited for it
    /// is dropped, as a server drops one that finds it idle.
    pub fn release(&self) {
        let mut pointer = self.lock();
        pointer.holding = false;
        pointer.owed = false;
    }

    /// The server to cancel now, counted as having a cancel on its way (under this lock,
    /// so a session releasing that connection either sees the count or has already
    /// unlinked it); while a request is on its way the cancel is owed instead.
    fn begin_cancel(&self) -> Cancel {
        let mut pointer = self.lock();
        if pointer.holding {
            pointer.owed = true;
            return Cancel::Owed;
        }
        match &pointer.server {
            Some(server) => Cancel::Now(server.counted()),
            None => Cancel::Idle,
        }
    }
}

/// A session's side of its cancel key: the server it points at, and whether a request
/// is on its way to one. Touches the shared entry only when something changes.
pub struct CancelLink {
    entry: Arc<ClientEntry>,
    points_at: Option<BackendKey>,
    holding: bool,
}

impl CancelLink {
    /// The link of a client just registered.
    pub fn new(entry: Arc<ClientEntry>) -> CancelLink {
        CancelLink {
            entry,
            points_at: None,
            holding: false,
        }
    }

    /// The process id pgsplit told the client.
    pub fn pid(&self) -> i32 {
        self.entry.pid
    }

    /// A request is on its way to a server: cancels wait until it is sent.
    pub fn hold(&mut self) {
        if !self.holding {
            self.holding = true;
            self.entry.hold();
        }
    }

    /// Points the key at the server about to get the request (`target` is built only
    /// when that server is a new one).
    pub fn point_at(&mut self, key: BackendKey, target: impl FnOnce() -> CancelTarget) {
        if self.points_at != Some(key) {
            self.entry.point_at(Some(target()));
            self.points_at = Some(key);
        }
    }

    /// The request went out: the cancel that waited for it, if any, to be sent now.
    pub fn request_sent(&mut self) -> Option<CancelTarget> {
        if !std::mem::take(&mut self.holding) {
            return None;
        }
        self.entry.request_sent()
    }

    /// The request was answered without reaching a server: a cancel for it is dropped.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.holding) {
            self.entry.release();
        }
    }

    /// The key stops pointing at a server connection handed back, so a late cancel
    /// cannot reach that connection's next user.
    pub fn unlink(&mut self, key: BackendKey) {
        if self.points_at == Some(key) {
            self.clear();
        }
    }

    /// The key points at nothing.
    pub fn clear(&mut self) {
        self.entry.point_at(None);
        self.points_at = None;
    }
}

/// What becomes of a cancel request.
#[derive(Debug)]
pub enum Cancel {
    /// Send it to this server now.
    Now(CancelTarget),
    /// The session sends it once its request reaches a server.
    Owed,
    /// The session has nothing running: dropped, as a server drops it.
    Idle,
    /// No session has that key.
    Unknown,
}

/// The clients logged in, each under the cancel key pgsplit handed it.
#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<BackendKey, Arc<ClientEntry>>>,
}

impl CancelRegistry {
    /// Hands out a fresh random key for a client, pointing at no server yet.
    pub fn register(&self, info: ClientInfo) -> (BackendKey, Arc<ClientEntry>) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let info = Arc::new(info);
        loop {
            // Never 0, which stands for no client in `Pooled::serving`.
            let key = BackendKey {
                pid: (rand::random::<i32>() & i32::MAX).max(1),
                secret: rand::random(),
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(key) {
                let entry = Arc::new(ClientEntry {
                    info: Arc::clone(&info),
                    pid: key.pid,
                    pointer: Mutex::default(),
                });
                slot.insert(Arc::clone(&entry));
                return (key, entry);
            }
        }
    }

    /// Every client with the server connection it holds now.
    pub fn clients(&self) -> Vec<(Arc<ClientInfo>, Option<CancelTarget>)> {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| (Arc::clone(&e.info), e.lock().server.clone()))
            .collect()
    }

    /// What to do with a cancel request for the session behind a key.
    pub fn begin_cancel(&self, key: BackendKey) -> Cancel {
        let entry = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .map(Arc::clone);
        match entry {
            Some(entry) => entry.begin_cancel(),
            None => Cancel::Unknown,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: i32) -> CancelTarget {
        CancelTarget {
            address: "h:1".into(),
            key: BackendKey { pid, secret: 2 },
            in_flight: Arc::default(),
            connected_at: SystemTime::now(),
        }
    }

    fn now(cancel: Cancel) -> Option<i32> {
        match cancel {
            Cancel::Now(target) => Some(target.key.pid),
            _ => None,
        }
    }

    fn info() -> ClientInfo {
        ClientInfo {
            user: "app".into(),
            server_user: "app".into(),
            database: "db".into(),
            addr: None,
            local_addr: None,
            connected_at: SystemTime::now(),
            tls: false,
            application_name: String::new(),
        }
    }

    #[test]
    fn cancel_keys_are_unique_and_forgotten() {
        let registry = CancelRegistry::default();
        let target = target(1);
        let (a, entry_a) = registry.register(info());
        let (b, entry_b) = registry.register(info());
        assert_eq!(registry.clients().len(), 2);
        assert_ne!(a, b);
        assert!(a.pid >= 0);
        assert!(matches!(registry.begin_cancel(a), Cancel::Idle));
        entry_a.point_at(Some(target.clone()));
        entry_b.point_at(Some(target.clone()));
        assert_eq!(now(registry.begin_cancel(a)), Some(1));
        assert_eq!(now(registry.begin_cancel(a)), Some(1));
        assert_eq!(target.in_flight.load(Ordering::SeqCst), 2);
        entry_b.point_at(None);
        assert!(matches!(registry.begin_cancel(b), Cancel::Idle));
        registry.remove(a);
        assert!(matches!(registry.begin_cancel(a), Cancel::Unknown));
    }

    #[test]
    fn a_cancel_during_a_request_on_its_way_is_sent_after_it() {
        let registry = CancelRegistry::default();
        let (key, entry) = registry.register(info());
        entry.hold();
        assert!(
            matches!(registry.begin_cancel(key), Cancel::Owed),
            "no server yet"
        );
        let server = target(7);
        entry.point_at(Some(server.clone()));
        assert!(
            matches!(registry.begin_cancel(key), Cancel::Owed),
            "the server has not got the request yet"
        );
        let owed = entry.request_sent().map(|t| t.key.pid);
        assert_eq!(owed, Some(7));
        assert_eq!(server.in_flight.load(Ordering::SeqCst), 1);
        assert!(entry.request_sent().is_none(), "sent once");
    }

    #[test]
    fn a_cancel_while_idle_or_for_an_unsent_request_is_dropped() {
        let registry = CancelRegistry::default();
        let (key, entry) = registry.register(info());
        assert!(matches!(registry.begin_cancel(key), Cancel::Idle));
        entry.hold();
        entry.point_at(Some(target(3)));
        entry.request_sent();
        assert!(entry.request_sent().is_none(), "idle: nothing owed");
        entry.hold();
        assert!(matches!(registry.begin_cancel(key), Cancel::Owed));
        entry.release();
        entry.hold();
        assert!(
            entry.request_sent().is_none(),
            "the cancel of an unsent request does not stop the next one"
        );
    }
}
