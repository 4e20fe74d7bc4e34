//! The cluster as pgsplit sees it: each node's role and health, checked in the background
//! and published as an immutable snapshot that sessions read without locks.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::backend::{Login, ServerConn};
use crate::config::{Node, Settings};
use crate::error::ProxyError;

/// What a node currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes (`pg_is_in_recovery()` is false).
    Primary,
    /// A hot standby in recovery.
    Standby,
    /// Not reachable, so not known.
    Unknown,
}

/// One node in a snapshot.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// Configured node.
    pub node: Node,
    /// Role at the last check.
    pub role: Role,
    /// Why the last check failed, if it did.
    pub error: Option<String>,
}

/// An immutable picture of the cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Every configured node, in configuration order.
    pub nodes: Vec<NodeState>,
}

impl Topology {
    /// A picture where nothing is known yet.
    pub fn unknown(nodes: &[Node]) -> Topology {
        Topology {
            nodes: nodes
                .iter()
                .map(|node| NodeState {
                    node: node.clone(),
                    role: Role::Unknown,
                    error: Some("not checked yet".into()),
                })
                .collect(),
        }
    }

    /// The node that accepts writes, if exactly one does.
    pub fn primary(&self) -> Option<&NodeState> {
        self.primary_index().map(|i| &self.nodes[i])
    }

    /// Index of the node that accepts writes, if exactly one does.
    pub fn primary_index(&self) -> Option<usize> {
        let mut primaries = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == Role::Primary);
        match (primaries.next(), primaries.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }
}

/// The snapshot shared by the monitor (writer) and every session (readers).
pub type SharedTopology = Arc<ArcSwap<Topology>>;

/// Keeps one monitoring connection per node and publishes a snapshot after each round.
pub struct Monitor {
    settings: Arc<Settings>,
    conns: Vec<Option<ServerConn>>,
    shared: SharedTopology,
}

impl Monitor {
    /// A monitor for the configured nodes, publishing into `shared`.
    pub fn new(settings: Arc<Settings>, shared: SharedTopology) -> Monitor {
        let conns = settings.nodes.iter().map(|_| None).collect();
        Monitor {
            settings,
            conns,
            shared,
        }
    }

    /// Checks every node once and publishes the result.
    pub async fn check(&mut self) {
        let settings = Arc::clone(&self.settings);
        let settings = &*settings;
        let monitor = &settings.raw.monitor;
        let checks =
            settings
                .nodes
                .iter()
                .zip(self.conns.iter_mut())
                .map(|(node, conn)| async move {
                    let result = tokio::time::timeout(
                        monitor.query_timeout,
                        check_node(node, conn, settings),
                    )
                    .await;
                    let result = result.unwrap_or_else(|_| {
                        Err(format!("check timed out after {:?}", monitor.query_timeout))
                    });
                    if result.is_err() {
                        // A connection that failed or timed out mid-query is in an unknown state.
                        *conn = None;
                    }
                    match result {
                        Ok(role) => NodeState {
                            node: node.clone(),
                            role,
                            error: None,
                        },
                        Err(error) => NodeState {
                            node: node.clone(),
                            role: Role::Unknown,
                            error: Some(error),
                        },
                    }
                });
        let nodes = futures_util::future::join_all(checks).await;
        let next = Topology { nodes };
        let before = self.shared.load();
        for (old, new) in before.nodes.iter().zip(&next.nodes) {
            if old.role != new.role {
                tracing::info!(node = %new.node.name, from = ?old.role, to = ?new.role, error = ?new.error, "node role changed");
            }
        }
        if next
            .nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .count()
            > 1
        {
            tracing::error!(
                "more than one node is out of recovery; writes are refused until one remains"
            );
        }
        self.shared.store(Arc::new(next));
    }

    /// Checks every `lag_check_interval` until `stop` changes.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.raw.monitor.lag_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check().await,
                _ = stop.changed() => return,
            }
        }
    }
}

async fn check_node(
    node: &Node,
    conn: &mut Option<ServerConn>,
    settings: &Settings,
) -> Result<Role, String> {
    let monitor = &settings.raw.monitor;
    if conn.is_none() {
        let login = Login {
            address: &node.address,
            user: &monitor.user,
            password: &monitor.password,
            database: &monitor.database,
            params: &[("application_name".to_owned(), "pgsplit-monitor".to_owned())],
        };
        let fresh = ServerConn::connect(
            &login,
            settings.raw.connect_timeout,
            settings.raw.max_message_size,
        )
        .await
        .map_err(|e: ProxyError| e.to_string())?;
        *conn = Some(fresh);
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let rows = c
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .map_err(|e| e.to_string())?;
    match rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_deref())
    {
        Some("t") => Ok(Role::Standby),
        Some("f") => Ok(Role::Primary),
        other => Err(format!("unexpected pg_is_in_recovery() result {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, role: Role) -> NodeState {
        NodeState {
            node: Node {
                name: name.into(),
                address: "h:1".into(),
                weight: 1,
            },
            role,
            error: None,
        }
    }

    #[test]
    fn primary_is_the_single_node_out_of_recovery() {
        let cases = [
            (
                vec![Role::Standby, Role::Primary, Role::Standby],
                Some("n1"),
            ),
            (vec![Role::Standby, Role::Unknown], None),
            (vec![Role::Primary, Role::Primary], None),
        ];
        for (roles, want) in cases {
            let t = Topology {
                nodes: roles
                    .iter()
                    .enumerate()
                    .map(|(i, r)| state(&format!("n{i}"), *r))
                    .collect(),
            };
            assert_eq!(t.primary().map(|n| n.node.name.as_str()), want, "{roles:?}");
        }
    }
}
