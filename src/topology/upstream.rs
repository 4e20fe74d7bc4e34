//! Which node a standby streams from, and which row of the primary's
//! `pg_stat_replication` is its own, whatever the standby is called. Pure functions over
//! what the checks reported, so the matching rules are a table of cases.
//!
//! A standby's `application_name` is `walreceiver` unless its `primary_conninfo` or
//! `cluster_name` names it, and cascading standbys never appear on the primary at all, so
//! the configured node name rarely matches a row. The standby itself says where it
//! streams from (`pg_stat_wal_receiver`); a row is trusted only when the standby streams
//! from the primary and exactly one row fits.

use crate::config::Node;

use super::probe::{Receiver, Replica};

/// The configured node whose address the receiver's sender names, if one does. Host
/// spellings are compared as text (no DNS lookups); loopback spellings count as one host
/// only when every node is on loopback (one machine).
pub fn upstream_of<'a>(receiver: &Receiver, nodes: &[&'a Node]) -> Option<&'a Node> {
    let host = receiver.sender_host.as_deref()?;
    let port = receiver.sender_port?;
    let local = all_local(nodes);
    nodes.iter().copied().find(|node| {
        let (node_host, node_port) = split_address(&node.address);
        node_port == Some(port) && same_host(node_host, host, local)
    })
}

/// The primary's `pg_stat_replication` row for `node`: the one named after the node (the
/// operator's naming), else, when the standby streams from the primary, the one serving
/// its slot, the one carrying its application name, or the one from its address — each
/// only when exactly one row fits.
pub fn row_for<'a>(
    node: &Node,
    receiver: Option<&Receiver>,
    from_primary: bool,
    replicas: &'a [Replica],
    nodes: &[&Node],
) -> Option<&'a Replica> {
    let only = |fits: &dyn Fn(&Replica) -> bool| {
        let mut rows = replicas.iter().filter(|r| fits(r));
        match (rows.next(), rows.next()) {
            (Some(row), None) => Some(row),
            _ => None,
        }
    };
    if let Some(row) = only(&|r| r.application_name == node.name) {
        return Some(row);
    }
    let receiver = receiver.filter(|_| from_primary)?;
    let (host, _) = split_address(&node.address);
    let local = all_local(nodes);
    let from_host = |r: &Replica| {
        r.client_addr
            .as_deref()
            .is_some_and(|a| same_host(a, host, local))
    };
    let slot = receiver.slot_name.as_deref();
    let name = receiver.application_name.as_deref();
    slot.and_then(|slot| only(&|r| r.slot_name.as_deref() == Some(slot)))
        .or_else(|| name.and_then(|name| only(&|r| r.application_name == name && from_host(r))))
        .or_else(|| name.and_then(|name| only(&|r| r.application_name == name)))
        .or_else(|| only(&from_host))
}

/// `host:port`, `[v6]:port` or a bare host, as configured.
fn split_address(address: &str) -> (&str, Option<u16>) {
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => (host, port.parse().ok()),
        _ => (address, None),
    };
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

/// Whether a host spelling is this machine's loopback.
fn loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether every configured node is on loopback: the cluster is on one machine, where
/// `localhost`, `127.0.0.1` and `::1` are the same host.
fn all_local(nodes: &[&Node]) -> bool {
    nodes.iter().all(|n| loopback(split_address(&n.address).0))
}

/// Whether two spellings name the same host: equal ignoring case, or both loopback on a
/// cluster that lives on one machine.
fn same_host(a: &str, b: &str, local: bool) -> bool {
    a.eq_ignore_ascii_case(b) || (local && loopback(a) && loopback(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, address: &str) -> Node {
        Node {
            name: name.into(),
            address: address.into(),
            weight: 1,
        }
    }

    fn row(name: &str, addr: Option<&str>, slot: Option<&str>) -> Replica {
        Replica {
            application_name: name.into(),
            client_addr: addr.map(Into::into),
            slot_name: slot.map(Into::into),
            ..Replica::default()
        }
    }

    fn receiver(name: Option<&str>, slot: Option<&str>) -> Receiver {
        Receiver {
            status: Some("streaming".into()),
            sender_host: Some("10.0.0.1".into()),
            sender_port: Some(5432),
            slot_name: slot.map(Into::into),
            application_name: name.map(Into::into),
            ..Receiver::default()
        }
    }

    #[test]
    fn a_receiver_names_its_upstream_by_address() {
        let nodes = [
            node("pg1", "10.0.0.1:5432"),
            node("pg2", "10.0.0.2:5432"),
            node("local", "localhost:6000"),
            node("v6", "[::1]:6001"),
        ];
        let at = |host: &str, port: u16| Receiver {
            sender_host: Some(host.into()),
            sender_port: Some(port),
            ..Receiver::default()
        };
        let all: Vec<&Node> = nodes.iter().collect();
        let local: Vec<&Node> = nodes[2..].iter().collect();
        #[rustfmt::skip]
        let cases = [
            (&all, at("10.0.0.1", 5432), Some("pg1")),
            (&all, at("10.0.0.2", 5432), Some("pg2")),
            (&all, at("10.0.0.2", 5433), None),
            (&all, at("::1", 6001), Some("v6")),
            // Another machine's loopback is not this cluster's node.
            (&all, at("127.0.0.1", 6000), None),
            // A cluster on one machine: every loopback spelling is the same host.
            (&local, at("127.0.0.1", 6000), Some("local")),
            (&local, at("127.1.2.3", 6001), Some("v6")),
            (&local, at("/var/run/postgresql", 6000), None),
            (&all, Receiver::default(), None),
        ];
        for (nodes, receiver, want) in cases {
            let got = upstream_of(&receiver, nodes).map(|n| n.name.as_str());
            assert_eq!(got, want, "{receiver:?}");
        }
    }

    /// (why, the primary's rows, the standby's receiver, streams from the primary, the
    /// row expected).
    type Case<'a> = (
        &'a str,
        &'a [Replica],
        Option<&'a Receiver>,
        bool,
        Option<usize>,
    );

    #[test]
    fn a_row_is_matched_only_when_exactly_one_fits() {
        let me = node("pg2", "10.0.0.2:5432");
        let walreceivers = [
            row("walreceiver", Some("10.0.0.2"), None),
            row("walreceiver", Some("10.0.0.3"), None),
        ];
        let slots = [
            row("walreceiver", Some("10.0.0.9"), Some("pg2_slot")),
            row("walreceiver", Some("10.0.0.2"), Some("other")),
        ];
        let on_one_host = [
            row("walreceiver", Some("127.0.0.1"), None),
            row("walreceiver", Some("127.0.0.1"), None),
        ];
        let named = [row("pg2", None, None), row("x", Some("10.0.0.2"), None)];
        let clustered = [
            row("main-a", Some("10.0.0.5"), None),
            row("main-b", Some("10.0.0.5"), None),
        ];
        let wr = receiver(Some("walreceiver"), None);
        #[rustfmt::skip]
        let cases: [Case; 10] = [
            ("named after the node, whatever it streams from", &named, None, false, Some(0)),
            ("same name on every row: its address decides", &walreceivers, Some(&wr), true, Some(0)),
            ("its slot decides over names and addresses", &slots, Some(&receiver(None, Some("pg2_slot"))), true, Some(0)),
            ("every row on one host: nothing to tell them apart", &on_one_host, Some(&wr), true, None),
            ("cluster_name picks its row", &clustered, Some(&receiver(Some("main-b"), None)), true, Some(1)),
            ("not streaming from the primary: only the node name counts", &walreceivers, Some(&wr), false, None),
            ("no receiver known: only the node name counts", &walreceivers, None, true, None),
            ("a slot no row serves falls back to the name", &walreceivers, Some(&receiver(Some("walreceiver"), Some("gone"))), true, Some(0)),
            ("no rows", &[], Some(&wr), true, None),
            ("a unique address with another name", &clustered[..1], Some(&receiver(Some("zzz"), None)), true, None),
        ];
        let nodes = [&me];
        for (why, rows, receiver, from_primary, want) in cases {
            let got = row_for(&me, receiver, from_primary, rows, &nodes).map(|r| {
                rows.iter()
                    .position(|x| std::ptr::eq(x, r))
                    .unwrap_or(usize::MAX)
            });
            assert_eq!(got, want, "{why}");
        }
    }
}
