//! Operator overrides (`BAN`, `PAUSE` in the admin console) and how they, and nodes a
//! reload removed, show in a snapshot.

use std::collections::BTreeSet;

use super::{Role, Topology};

/// Operator overrides, by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    /// Nodes banned from reads by `BAN`.
    pub banned: BTreeSet<String>,
    /// Nodes paused by `PAUSE node`.
    pub paused: BTreeSet<String>,
    /// Every node paused by a bare `PAUSE`.
    pub paused_all: bool,
}

impl Controls {
    /// Whether new work for the node named `name` must wait.
    pub fn is_paused(&self, name: &str) -> bool {
        self.paused_all || self.paused.contains(name)
    }
}

/// Applies configuration and operator state to a snapshot: removed nodes are out of
/// everything; banned ones serve no reads; paused ones are marked.
pub fn overlay(topology: &mut Topology, controls: &Controls) {
    for n in &mut topology.nodes {
        if n.removed {
            n.role = Role::Unknown;
            n.error = Some("removed from the configuration".into());
            n.lsn = None;
            n.lag_bytes = None;
            n.lag_time = None;
            n.stall = None;
            n.upstream = None;
            n.ban = None;
        }
        n.admin_ban = controls.banned.contains(&n.node.name);
        n.paused = controls.is_paused(&n.node.name);
        n.eligible = n.checked_eligible() && !n.admin_ban && !n.removed;
    }
}
