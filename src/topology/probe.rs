//! One check of one node: a single query for role and WAL positions, plus
//! `pg_stat_replication` when the node turns out to be a primary.

use std::time::{Duration, Instant};

use crate::backend::{Login, ServerConn};
use crate::config::{Node, Settings};

use super::lsn::Lsn;
use super::Outcome;

/// Role and WAL positions in one round trip. The current LSN only exists outside
/// recovery (the function errors on a standby), hence the CASE. The age of the last
/// replayed commit is computed by the server so no timestamp parsing is needed here.
const NODE_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, \
     pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
     extract(epoch FROM now() - pg_last_xact_replay_timestamp())";

/// What the primary knows about each connected standby (`pg_monitor` shows every column).
const REPLICATION_QUERY: &str = "SELECT application_name, state, replay_lsn, \
     extract(epoch FROM replay_lag) FROM pg_stat_replication";

/// A standby as one row of the primary's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// `application_name` from the standby's `primary_conninfo`; matched to a node's name.
    pub application_name: String,
    /// `streaming`, `catchup`, …
    pub state: Option<String>,
    /// Replay position the standby last reported.
    pub replay_lsn: Option<Lsn>,
    /// Time the primary measured for its WAL to be replayed there; NULL once idle.
    pub replay_lag: Option<Duration>,
}

/// The answer of one successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Taken just before the query was sent: every position below was read at or after it.
    pub at: Instant,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` (primary only).
    pub current: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()` (standby only).
    pub receive: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()` (standby only).
    pub replay: Option<Lsn>,
    /// `now() - pg_last_xact_replay_timestamp()` (standby only, once a commit was replayed).
    pub since_last_replay: Option<Duration>,
    /// `pg_stat_replication` (primary only).
    pub replicas: Vec<Replica>,
}

/// Checks one node, reusing its monitor connection. A reused connection that fails is
/// retried once on a fresh one: a connection dropped by the server (idle timeout,
/// `pg_terminate_backend`) says nothing about the node, and banning the primary for it
/// would refuse writes for no reason.
pub async fn check(node: &Node, conn: &mut Option<ServerConn>, settings: &Settings) -> Outcome {
    let reused = conn.is_some();
    let result = match check_once(node, conn, settings).await {
        Err(Failure::Broken(_)) if reused => check_once(node, conn, settings).await,
        other => other,
    };
    match result {
        Ok(probe) => Outcome::Checked(Ok(probe)),
        Err(Failure::Broken(message)) => Outcome::Checked(Err(message)),
        Err(Failure::TimedOut(message)) => Outcome::TimedOut(message),
    }
}

/// Why a check failed: a timeout is not retried (the node is slow, asking again would
/// double the wait), anything else on a reused connection is.
enum Failure {
    Broken(String),
    TimedOut(String),
}

async fn check_once(
    node: &Node,
    conn: &mut Option<ServerConn>,
    settings: &Settings,
) -> Result<Probe, Failure> {
    let result = connect_and_query(node, conn, settings).await;
    if result.is_err() {
        // A connection that failed or timed out mid-query is in an unknown state.
        *conn = None;
    }
    result
}

async fn connect_and_query(
    node: &Node,
    conn: &mut Option<ServerConn>,
    settings: &Settings,
) -> Result<Probe, Failure> {
    let monitor = &settings.raw.monitor;
    let server = match conn {
        Some(server) => server,
        None => {
            let login = Login {
                address: &node.address,
                user: &monitor.user,
                password: &monitor.password,
                database: &monitor.database,
                params: &[("application_name".to_owned(), "pgsplit-monitor".to_owned())],
                tls: &settings.server_tls(&node.address),
            };
            // A node that cannot take a connection within the check's own bound fails the
            // check: a frozen node accepts TCP and then says nothing, and every node's
            // next picture waits for the slowest check of the poll.
            let fresh = ServerConn::connect(
                &login,
                settings.raw.connect_timeout.min(monitor.query_timeout),
                settings.raw.max_message_size,
            )
            .await
            .map_err(|e| Failure::Broken(e.to_string()))?;
            conn.insert(fresh)
        }
    };
    let timeout = monitor.query_timeout;
    match tokio::time::timeout(timeout, query(server)).await {
        Ok(result) => result.map_err(Failure::Broken),
        Err(_) => Err(Failure::TimedOut(format!(
            "check query timed out after {timeout:?}"
        ))),
    }
}

async fn query(server: &mut ServerConn) -> Result<Probe, String> {
    let at = Instant::now();
    let rows = server
        .simple_query(NODE_QUERY)
        .await
        .map_err(|e| e.to_string())?;
    let mut probe = parse_node(&rows, at)?;
    if !probe.in_recovery {
        let rows = server
            .simple_query(REPLICATION_QUERY)
            .await
            .map_err(|e| e.to_string())?;
        probe.replicas = parse_replicas(&rows)?;
    }
    Ok(probe)
}

type Rows = [Vec<Option<String>>];

/// Reads the answer to [`NODE_QUERY`].
fn parse_node(rows: &Rows, at: Instant) -> Result<Probe, String> {
    let [row] = rows else {
        return Err(format!("check query returned {} rows, not 1", rows.len()));
    };
    let [recovery, current, receive, replay, since] = row.as_slice() else {
        return Err(format!("check query returned {} columns, not 5", row.len()));
    };
    let in_recovery = match recovery.as_deref() {
        Some("t") => true,
        Some("f") => false,
        other => return Err(format!("unexpected pg_is_in_recovery() result {other:?}")),
    };
    Ok(Probe {
        at,
        in_recovery,
        current: lsn(current, "pg_current_wal_lsn()")?,
        receive: lsn(receive, "pg_last_wal_receive_lsn()")?,
        replay: lsn(replay, "pg_last_wal_replay_lsn()")?,
        since_last_replay: seconds(since, "age of the last replayed commit")?,
        replicas: Vec::new(),
    })
}

/// Reads the answer to [`REPLICATION_QUERY`].
fn parse_replicas(rows: &Rows) -> Result<Vec<Replica>, String> {
    rows.iter()
        .map(|row| {
            let [name, state, replay_lsn, replay_lag] = row.as_slice() else {
                return Err(format!(
                    "pg_stat_replication query returned {} columns, not 4",
                    row.len()
                ));
            };
            Ok(Replica {
                application_name: name.clone().unwrap_or_default(),
                state: state.clone(),
                replay_lsn: lsn(replay_lsn, "pg_stat_replication.replay_lsn")?,
                replay_lag: seconds(replay_lag, "pg_stat_replication.replay_lag")?,
            })
        })
        .collect()
}

fn lsn(value: &Option<String>, what: &str) -> Result<Option<Lsn>, String> {
    value
        .as_deref()
        .map(|text| text.parse().map_err(|e| format!("{what}: {e}")))
        .transpose()
}

/// Seconds as `extract(epoch …)` prints them. Negative values (clocks of primary and
/// standby disagreeing) count as zero rather than failing the check.
fn seconds(value: &Option<String>, what: &str) -> Result<Option<Duration>, String> {
    let Some(text) = value.as_deref() else {
        return Ok(None);
    };
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{what}: \"{text}\" is not a number of seconds"))?;
    if secs.is_nan() {
        return Err(format!("{what}: \"{text}\" is not a number of seconds"));
    }
    Duration::try_from_secs_f64(secs.max(0.0))
        .map(Some)
        .map_err(|e| format!("{what}: \"{text}\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn a_primary_and_a_standby_answer_differently() {
        let at = Instant::now();
        let primary = parse_node(
            &[row(&[Some("f"), Some("0/3000148"), None, None, None])],
            at,
        )
        .unwrap();
        assert!(!primary.in_recovery);
        assert_eq!(primary.current, Some(Lsn(0x300_0148)));
        assert_eq!((primary.replay, primary.since_last_replay), (None, None));

        let standby = parse_node(
            &[row(&[
                Some("t"),
                None,
                Some("0/3000200"),
                Some("0/3000148"),
                Some("1.250000"),
            ])],
            at,
        )
        .unwrap();
        assert!(standby.in_recovery);
        assert_eq!(standby.current, None);
        assert_eq!(standby.receive, Some(Lsn(0x300_0200)));
        assert_eq!(standby.replay, Some(Lsn(0x300_0148)));
        assert_eq!(standby.since_last_replay, Some(Duration::from_millis(1250)));
    }

    #[test]
    fn malformed_answers_fail_the_check_without_panicking() {
        let at = Instant::now();
        let cases: Vec<Vec<Vec<Option<String>>>> = vec![
            vec![],
            vec![row(&[Some("t")])],
            vec![row(&[Some("x"), None, None, None, None])],
            vec![row(&[None, None, None, None, None])],
            vec![row(&[Some("t"), None, Some("zz"), None, None])],
            vec![row(&[Some("t"), None, None, None, Some("soon")])],
            vec![row(&[Some("t"), None, None, None, Some("NaN")])],
            vec![row(&[Some("t"), None, None, None, Some("1e300")])],
            vec![
                row(&[Some("f"), None, None, None, None]),
                row(&[Some("f"), None, None, None, None]),
            ],
        ];
        for rows in cases {
            assert!(parse_node(&rows, at).is_err(), "{rows:?} should be refused");
        }
    }

    #[test]
    fn replication_rows_keep_nulls_and_clamp_clock_skew() {
        let rows = [
            row(&[
                Some("standby1"),
                Some("streaming"),
                Some("0/5000000"),
                Some("0.002"),
            ]),
            row(&[Some("standby2"), Some("catchup"), None, None]),
            row(&[Some("standby3"), Some("streaming"), None, Some("-0.5")]),
        ];
        let replicas = parse_replicas(&rows).unwrap();
        assert_eq!(replicas[0].application_name, "standby1");
        assert_eq!(replicas[0].replay_lsn, Some(Lsn(0x500_0000)));
        assert_eq!(replicas[0].replay_lag, Some(Duration::from_millis(2)));
        assert_eq!(
            (replicas[1].replay_lsn, replicas[1].replay_lag),
            (None, None)
        );
        assert_eq!(replicas[2].replay_lag, Some(Duration::ZERO));
        assert!(parse_replicas(&[row(&[Some("x")])]).is_err());
    }
}
