//! WAL positions learned when a read needs them, between the monitor's polls: the
//! primary's after a client's write commits, a standby's replay position when a read
//! must know it has passed that write. One sampler per node address with a connection
//! of its own (the monitor's login), opened on first use and closed when idle; one query
//! in flight per node, whose answer serves every session waiting on that node; no query
//! while nobody waits, so a fleet of idle sidecars adds nothing to the servers' load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::backend::{Login, ServerConn};
use crate::settings::{Settings, SharedSettings};
use crate::topology::Lsn;

/// One query answers both: a standby's replay position, or the primary's WAL insert
/// position (at or past every commit that has returned, also under
/// `synchronous_commit = off`, where the write position may still be behind it).
const POSITION_QUERY: &str = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END";

/// The server-side name of [`POSITION_QUERY`] on a sampler's connection.
const POSITION_STATEMENT: &str = "pgsplit_position";

/// A sampler's connection is closed after this long without a question.
const IDLE_CLOSE: Duration = Duration::from_secs(60);

/// One answer of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// When the query was sent: the node had reached `lsn` by the time it answered, and
    /// a primary's position covers every commit that returned before this instant.
    pub started: Instant,
    /// The replay position (standby) or the WAL insert position (primary); `None` when
    /// the query failed or the standby has replayed nothing.
    pub lsn: Option<Lsn>,
    /// The node answered that it is in recovery.
    pub standby: bool,
}

/// What a waiter makes of a reading.
enum Verdict {
    /// What it waited for.
    Done,
    /// Not yet: ask again.
    Again,
    /// It will not come from this node (the query failed, or the node has the other role).
    Never,
}

/// The samplers of every node address sessions have asked about.
pub struct Positions {
    settings: SharedSettings,
    stop: watch::Receiver<bool>,
    samplers: Mutex<HashMap<String, Arc<Sampler>>>,
}

impl Positions {
    /// Samplers that log in with `settings`' monitor login and stop when `stop` turns.
    pub fn new(settings: SharedSettings, stop: watch::Receiver<bool>) -> Positions {
        Positions {
            settings,
            stop,
            samplers: Mutex::default(),
        }
    }

    /// The sampler of the node at `address`, made on first use (its task starts at the
    /// first question).
    pub fn of(&self, address: &str) -> Arc<Sampler> {
        let mut samplers = self.samplers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sampler) = samplers.get(address) {
            return Arc::clone(sampler);
        }
        let sampler = Arc::new(Sampler {
            address: address.to_owned(),
            latest: watch::channel(None).0,
            demand: Notify::new(),
            running: AtomicBool::new(false),
            in_flight: Mutex::new(None),
            queries: AtomicU64::new(0),
            settings: Arc::clone(&self.settings),
            stop: self.stop.clone(),
        });
        samplers.insert(address.to_owned(), Arc::clone(&sampler));
        sampler
    }

    /// Position queries sent to the node at `address` so far.
    pub fn queries(&self, address: &str) -> u64 {
        let samplers = self.samplers.lock().unwrap_or_else(|e| e.into_inner());
        samplers
            .get(address)
            .map_or(0, |s| s.queries.load(Ordering::Relaxed))
    }

    /// The latest reading of the node at `address`, if one was ever asked for.
    pub fn latest(&self, address: &str) -> Option<Reading> {
        let samplers = self.samplers.lock().unwrap_or_else(|e| e.into_inner());
        samplers.get(address).and_then(|s| s.latest())
    }
}

/// Reads one node's WAL position on demand.
pub struct Sampler {
    address: String,
    latest: watch::Sender<Option<Reading>>,
    /// A question waiting for the next query (at most one is stored: every waiter that
    /// asks while a query runs is answered by the one after it).
    demand: Notify,
    running: AtomicBool,
    /// When the query now in flight was sent.
    in_flight: Mutex<Option<Instant>>,
    /// Queries sent.
    queries: AtomicU64,
    settings: SharedSettings,
    stop: watch::Receiver<bool>,
}

impl Sampler {
    /// The latest reading, if any.
    pub fn latest(&self) -> Option<Reading> {
        *self.latest.borrow()
    }

    /// A session's check, sent at `started`, saw this standby past `lsn`: a reading for
    /// every session, unless a newer one says more.
    pub fn learned(&self, started: Instant, lsn: Lsn) {
        self.latest.send_if_modified(|latest| {
            let newer = latest.is_none_or(|r| !r.standby || r.lsn.is_none_or(|l| l < lsn));
            if newer {
                *latest = Some(Reading {
                    started,
                    lsn: Some(lsn),
                    standby: true,
                });
            }
            newer
        });
    }

    /// Counts a position query a session asked on its own connection to this node.
    pub fn count_query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks for a reading started from now on, without waiting for it.
    pub fn ask(self: &Arc<Self>) {
        if !self.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(Arc::clone(self).run());
        }
        self.demand.notify_one();
    }

    /// Asks for a reading, without waiting for it, unless one is in flight or the latest
    /// is younger than `fresh_for`: what a read that did not wait leaves for the next one.
    pub fn refresh(self: &Arc<Self>, fresh_for: Duration) {
        if self.lock_in_flight().is_some() {
            return;
        }
        if self
            .latest()
            .is_none_or(|r| r.started.elapsed() >= fresh_for)
        {
            self.ask();
        }
    }

    /// A primary's WAL position read at or after `since`, waiting until `deadline`; None
    /// if none came in time or the node is not a primary.
    pub async fn primary_since(self: &Arc<Self>, since: Instant, deadline: Instant) -> Option<Lsn> {
        self.wait(since, deadline, |r| match (r.standby, r.lsn) {
            (false, Some(_)) if r.started >= since => Verdict::Done,
            (false, Some(_)) => Verdict::Again,
            _ if r.started >= since => Verdict::Never,
            _ => Verdict::Again,
        })
        .await
        .and_then(|r| r.lsn)
    }

    /// Waits until this standby is seen to have replayed `target` by a reading started
    /// after `since`, until `deadline`.
    pub async fn replayed(
        self: &Arc<Self>,
        target: Lsn,
        since: Instant,
        deadline: Instant,
    ) -> bool {
        let asked = Instant::now();
        self.wait(since, deadline, |r| match (r.standby, r.lsn) {
            (true, Some(lsn)) if lsn >= target && r.started > since => Verdict::Done,
            (true, _) => Verdict::Again,
            _ if r.started >= asked => Verdict::Never,
            _ => Verdict::Again,
        })
        .await
        .is_some()
    }

    /// Asks for readings until `judge` is satisfied by one, it says none will do, or the
    /// deadline passes. A query sent after `since` and still in flight may answer: no
    /// other is asked for until it has.
    async fn wait(
        self: &Arc<Self>,
        since: Instant,
        deadline: Instant,
        judge: impl Fn(&Reading) -> Verdict,
    ) -> Option<Reading> {
        let mut latest = self.latest.subscribe();
        loop {
            let reading = *latest.borrow_and_update();
            match reading.as_ref().map(&judge) {
                Some(Verdict::Done) => return reading,
                Some(Verdict::Never) => return None,
                Some(Verdict::Again) | None => {}
            }
            // The reading just judged may be that query's answer, published a moment
            // before the query stopped counting as in flight.
            let answering = self
                .lock_in_flight()
                .is_some_and(|sent| sent >= since && reading.is_none_or(|r| r.started < sent));
            if !answering {
                self.ask();
            }
            let next = tokio::time::timeout_at(deadline.into(), latest.changed()).await;
            if !matches!(next, Ok(Ok(()))) {
                return None;
            }
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers questions one query at a time until the proxy stops.
    async fn run(self: Arc<Self>) {
        /// Lets the next question start the task again should this one end.
        struct Running<'a>(&'a AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _running = Running(&self.running);
        let mut stop = self.stop.clone();
        let mut conn: Option<ServerConn> = None;
        loop {
            tokio::select! {
                _ = self.demand.notified() => {}
                _ = tokio::time::sleep(IDLE_CLOSE), if conn.is_some() => {
                    conn = None;
                    continue;
                }
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let started = Instant::now();
            *self.lock_in_flight() = Some(started);
            self.queries.fetch_add(1, Ordering::Relaxed);
            let settings = self.settings.load_full();
            let reused = conn.is_some();
            let mut answer = read(&self.address, &mut conn, &settings).await;
            if answer.is_err() && reused {
                // A connection the server closed (idle timeout, restart) says nothing about
                // the node: asked once more on a fresh one.
                conn = None;
                answer = read(&self.address, &mut conn, &settings).await;
            }
            let reading = match answer {
                Ok((standby, lsn)) => Reading {
                    started,
                    lsn,
                    standby,
                },
                Err(error) => {
                    tracing::debug!(address = %self.address, %error, "WAL position query failed");
                    conn = None;
                    Reading {
                        started,
                        lsn: None,
                        standby: false,
                    }
                }
            };
            // Published before the query stops counting as in flight: a waiter that saw
            // it in flight is woken by this reading (and tells the two apart by `started`).
            self.latest.send_replace(Some(reading));
            *self.lock_in_flight() = None;
        }
    }
}

/// One position query, on `conn` or a fresh connection.
async fn read(
    address: &str,
    conn: &mut Option<ServerConn>,
    settings: &Settings,
) -> Result<Answer, String> {
    let monitor = &settings.raw.monitor;
    let bound = settings.raw.connect_timeout.min(monitor.query_timeout);
    let (server, prepare) = match conn {
        Some(server) => (server, false),
        None => {
            let login = Login {
                address,
                user: &monitor.user,
                password: &monitor.password,
                database: &monitor.database,
                params: &[(
                    "application_name".to_owned(),
                    "pgsplit-positions".to_owned(),
                )],
                tls: &settings.server_tls(address),
            };
            let fresh = ServerConn::connect(&login, bound, settings.raw.max_message_size)
                .await
                .map_err(|e| e.to_string())?;
            (conn.insert(fresh), true)
        }
    };
    let query = server.prepared_query(POSITION_STATEMENT, POSITION_QUERY, prepare);
    let rows = tokio::time::timeout(monitor.query_timeout, query)
        .await
        .map_err(|_| format!("no answer within {:?}", monitor.query_timeout))?
        .map_err(|e| e.to_string())?;
    parse(&rows)
}

/// Whether the node is in recovery, and its position.
type Answer = (bool, Option<Lsn>);

/// Reads the answer to [`POSITION_QUERY`].
fn parse(rows: &[Vec<Option<String>>]) -> Result<Answer, String> {
    let [row] = rows else {
        return Err(format!(
            "position query returned {} rows, not 1",
            rows.len()
        ));
    };
    let [recovery, lsn] = row.as_slice() else {
        return Err(format!(
            "position query returned {} columns, not 2",
            row.len()
        ));
    };
    let standby = match recovery.as_deref() {
        Some("t") => true,
        Some("f") => false,
        other => return Err(format!("pg_is_in_recovery() returned {other:?}")),
    };
    let lsn = match lsn {
        Some(text) => Some(text.parse::<Lsn>().map_err(|e| e.to_string())?),
        None => None,
    };
    Ok((standby, lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<Vec<Option<String>>>;

    fn row(cells: &[Option<&str>]) -> Vec<Option<String>> {
        cells.iter().map(|c| c.map(str::to_owned)).collect()
    }

    #[test]
    fn answers_are_read_or_refused_with_a_reason() {
        let cases: [(Rows, Result<Answer, ()>); 6] = [
            (
                vec![row(&[Some("f"), Some("0/3000060")])],
                Ok((false, Some(Lsn(0x300_0060)))),
            ),
            (
                vec![row(&[Some("t"), Some("1/0")])],
                Ok((true, Some(Lsn(1 << 32)))),
            ),
            (vec![row(&[Some("t"), None])], Ok((true, None))),
            (vec![row(&[Some("x"), Some("0/1")])], Err(())),
            (vec![row(&[Some("f"), Some("nonsense")])], Err(())),
            (vec![], Err(())),
        ];
        for (rows, want) in cases {
            assert_eq!(parse(&rows).map_err(|_| ()), want, "{rows:?}");
        }
    }
}
