//! One check of one node: a single query for role and WAL positions, plus
//! `pg_stat_replication` when the node turns out to be a primary.

use std::time::{Duration, Instant};

use crate::backend::{Login, ServerConn};
use crate::config::Node;
use crate::settings::Settings;
use crate::topology::probe::{Probe, Receiver, Replica};
use crate::topology::{Lsn, Outcome};

/// Role, WAL positions and the standby's own WAL receiver in one round trip. The primary's
/// position is its WAL insert position, at or past every commit that has returned (the
/// write position may be behind one under `synchronous_commit = off`). The current
/// LSN and timeline only exist outside recovery (the functions error on a standby), hence
/// the CASEs; the timeline is the first 8 hex digits of the current WAL file's name (the
/// checkpoint's timeline lags a promotion). `pg_stat_wal_receiver` has at most one row,
/// none on a primary or a standby that is not receiving; its columns other than `pid`
/// need `pg_read_all_stats` (part of `pg_monitor`) and are NULL without it.
const NODE_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn() END, \
     CASE WHEN pg_is_in_recovery() THEN NULL \
          ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
     pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
     r.pid, r.status, r.received_tli, r.sender_host, r.sender_port, r.slot_name, r.conninfo \
     FROM (VALUES (1)) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true";

/// What the primary knows about each connected standby (`pg_monitor` shows every
/// column), with the replication slot each walsender serves, if any.
const REPLICATION_QUERY: &str = "SELECT r.application_name, r.state, r.replay_lsn, \
     extract(epoch FROM r.replay_lag), host(r.client_addr), s.slot_name \
     FROM pg_stat_replication AS r LEFT JOIN pg_replication_slots AS s ON s.active_pid = r.pid";

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
    let [recovery, current, timeline, receive, replay, pid, status, received_tli, sender_host, sender_port, slot, conninfo] =
        row.as_slice()
    else {
        return Err(format!(
            "check query returned {} columns, not 12",
            row.len()
        ));
    };
    let in_recovery = match recovery.as_deref() {
        Some("t") => true,
        Some("f") => false,
        other => return Err(format!("unexpected pg_is_in_recovery() result {other:?}")),
    };
    Ok(Probe {
        at,
        in_recovery,
        current: lsn(current, "pg_current_wal_insert_lsn()")?,
        timeline: timeline
            .as_deref()
            .map(|hex| {
                u32::from_str_radix(hex, 16)
                    .map_err(|_| format!("timeline: \"{hex}\" is not hexadecimal"))
            })
            .transpose()?,
        receive: lsn(receive, "pg_last_wal_receive_lsn()")?,
        replay: lsn(replay, "pg_last_wal_replay_lsn()")?,
        receiver: match pid {
            None => None,
            Some(_) => Some(Receiver {
                status: status.clone(),
                timeline: number(received_tli, "pg_stat_wal_receiver.received_tli")?,
                sender_host: sender_host.clone(),
                sender_port: number(sender_port, "pg_stat_wal_receiver.sender_port")?,
                slot_name: slot.clone(),
                application_name: conninfo.as_deref().and_then(application_name),
            }),
        },
        replicas: Vec::new(),
    })
}

/// Reads the answer to [`REPLICATION_QUERY`].
fn parse_replicas(rows: &Rows) -> Result<Vec<Replica>, String> {
    rows.iter()
        .map(|row| {
            let [name, state, replay_lsn, replay_lag, client_addr, slot_name] = row.as_slice()
            else {
                return Err(format!(
                    "pg_stat_replication query returned {} columns, not 6",
                    row.len()
                ));
            };
            Ok(Replica {
                application_name: name.clone().unwrap_or_default(),
                state: state.clone(),
                replay_lsn: lsn(replay_lsn, "pg_stat_replication.replay_lsn")?,
                replay_lag: seconds(replay_lag, "pg_stat_replication.replay_lag")?,
                client_addr: client_addr.clone(),
                slot_name: slot_name.clone(),
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

/// An integer column (a port, a timeline).
fn number<T: std::str::FromStr>(value: &Option<String>, what: &str) -> Result<Option<T>, String> {
    value
        .as_deref()
        .map(|text| {
            text.parse()
                .map_err(|_| format!("{what}: \"{text}\" is not a number"))
        })
        .transpose()
}

/// The name a WAL receiver's connection gives its upstream, from the connection string
/// `pg_stat_wal_receiver.conninfo` shows (`key=value` pairs, values quoted with `'` and
/// backslash escapes when they hold spaces): `application_name`, else
/// `fallback_application_name`.
fn application_name(conninfo: &str) -> Option<String> {
    conninfo_value(conninfo, "application_name")
        .or_else(|| conninfo_value(conninfo, "fallback_application_name"))
}

/// The non-empty value of `wanted` in a libpq `key=value` connection string; only that
/// value is copied. A malformed tail ends the search.
fn conninfo_value(conninfo: &str, wanted: &str) -> Option<String> {
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key_matches = true;
        let mut key_len = 0;
        let mut expected = wanted.chars();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key_matches &= expected.next() == Some(c);
            key_len += 1;
        }
        let wanted_here = key_matches && expected.next().is_none();
        if key_len == 0 {
            return None;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return None;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let mut keep = |c: char| {
            if wanted_here {
                value.push(c);
            }
        };
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => chars.next().into_iter().for_each(&mut keep),
                    Some('\'') => break,
                    Some(c) => keep(c),
                    None => return None,
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                match c {
                    '\\' => chars.next().into_iter().for_each(&mut keep),
                    c => keep(c),
                }
            }
        }
        if wanted_here && !value.is_empty() {
            return Some(value);
        }
    }
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
        let mut primary_row = vec![Some("f"), Some("0/3000148"), Some("0000000A")];
        primary_row.extend([None; 9]);
        let primary = parse_node(&[row(&primary_row)], at).unwrap();
        assert!(!primary.in_recovery);
        assert_eq!(primary.current, Some(Lsn(0x300_0148)));
        assert_eq!(primary.timeline, Some(10));
        assert_eq!((primary.replay, primary.receiver), (None, None));

        let conninfo = "user=replicator passfile=/x channel_binding=prefer \
             dbname=replication host=10.0.0.1 port=5432 \
             fallback_application_name=walreceiver sslmode=prefer";
        let standby = parse_node(
            &[row(&[
                Some("t"),
                None,
                None,
                Some("0/3000200"),
                Some("0/3000148"),
                Some("4242"),
                Some("streaming"),
                Some("3"),
                Some("10.0.0.1"),
                Some("5432"),
                Some("slot_b"),
                Some(conninfo),
            ])],
            at,
        )
        .unwrap();
        assert!(standby.in_recovery);
        assert_eq!((standby.current, standby.timeline), (None, None));
        assert_eq!(standby.receive, Some(Lsn(0x300_0200)));
        assert_eq!(standby.replay, Some(Lsn(0x300_0148)));
        assert_eq!(
            standby.receiver,
            Some(Receiver {
                status: Some("streaming".into()),
                timeline: Some(3),
                sender_host: Some("10.0.0.1".into()),
                sender_port: Some(5432),
                slot_name: Some("slot_b".into()),
                application_name: Some("walreceiver".into()),
            })
        );

        // Without pg_read_all_stats only the receiver's pid shows: it exists, and that
        // is all that is known, so it counts as streaming.
        let mut hidden = vec![
            Some("t"),
            None,
            None,
            Some("0/1"),
            Some("0/1"),
            Some("4242"),
        ];
        hidden.extend([None; 6]);
        let receiver = parse_node(&[row(&hidden)], at).unwrap().receiver.unwrap();
        assert_eq!(receiver, Receiver::default());
        assert!(receiver.streaming());
        assert!(!Receiver {
            status: Some("waiting".into()),
            ..receiver
        }
        .streaming());
    }

    #[test]
    fn the_receivers_application_name_comes_from_its_connection_string() {
        let cases = [
            (
                "host=a fallback_application_name=walreceiver",
                Some("walreceiver"),
            ),
            (
                "host=a fallback_application_name=main application_name=s1",
                Some("s1"),
            ),
            ("application_name='two words' host=a", Some("two words")),
            (r"application_name='it\'s' host=a", Some("it's")),
            ("host=a port=5432", None),
            ("", None),
            ("application_name='unterminated", None),
            ("=x application_name=s1", None),
        ];
        for (conninfo, want) in cases {
            assert_eq!(application_name(conninfo).as_deref(), want, "{conninfo}");
        }
    }

    #[test]
    fn malformed_answers_fail_the_check_without_panicking() {
        let at = Instant::now();
        let with = |cells: &[(usize, &str)]| {
            let mut values = vec![None; 12];
            for &(i, v) in cells {
                values[i] = Some(v);
            }
            row(&values)
        };
        let cases: Vec<Vec<Vec<Option<String>>>> = vec![
            vec![],
            vec![row(&[Some("t")])],
            vec![with(&[(0, "x")])],
            vec![with(&[])],
            vec![with(&[(0, "t"), (3, "zz")])],
            vec![with(&[(0, "f"), (1, "0/1"), (2, "timeline")])],
            vec![with(&[(0, "t"), (5, "1"), (7, "three")])],
            vec![with(&[(0, "t"), (5, "1"), (9, "99999")])],
            vec![with(&[(0, "f")]), with(&[(0, "f")])],
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
                Some("10.0.0.2"),
                Some("slot_1"),
            ]),
            row(&[Some("standby2"), Some("catchup"), None, None, None, None]),
            row(&[
                Some("standby3"),
                Some("streaming"),
                None,
                Some("-0.5"),
                None,
                None,
            ]),
        ];
        let replicas = parse_replicas(&rows).unwrap();
        assert_eq!(replicas[0].application_name, "standby1");
        assert_eq!(replicas[0].replay_lsn, Some(Lsn(0x500_0000)));
        assert_eq!(replicas[0].replay_lag, Some(Duration::from_millis(2)));
        assert_eq!(replicas[0].client_addr.as_deref(), Some("10.0.0.2"));
        assert_eq!(replicas[0].slot_name.as_deref(), Some("slot_1"));
        assert_eq!(
            (replicas[1].replay_lsn, replicas[1].replay_lag),
            (None, None)
        );
        assert_eq!(replicas[2].replay_lag, Some(Duration::ZERO));
        assert!(parse_replicas(&[row(&[Some("x")])]).is_err());
    }
}
