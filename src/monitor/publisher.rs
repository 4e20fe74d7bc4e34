//! Publishing the cluster snapshot. Three writers change it: the monitor after each poll,
//! a configuration reload (nodes added, removed, re-weighted) and operator commands
//! (`BAN`, `PAUSE` in the admin console). They publish through one [`Publisher`], which
//! serializes them under a short lock (never held across `.await`), so a poll that
//! started before a reload or a `BAN` cannot publish over it.
//!
//! Node indexes are stable for the life of the process: a removed node keeps its slot
//! (marked `removed`) and a node added by a reload gets a new slot at the end, so an
//! index a session holds never points at another node.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::config::Node;
use crate::topology::control::overlay;
use crate::topology::{Controls, NodeState, SharedTopology, Topology};

/// The one way snapshots are published.
pub struct Publisher {
    shared: SharedTopology,
    controls: Mutex<Controls>,
    /// Bumped after every change of the controls, for sessions waiting on a pause.
    changed: watch::Sender<u64>,
}

impl Publisher {
    /// A publisher for `shared`, with no overrides.
    pub fn new(shared: SharedTopology) -> Publisher {
        Publisher {
            shared,
            controls: Mutex::new(Controls::default()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Controls> {
        self.controls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Topology> {
        self.shared.load_full()
    }

    /// The operator overrides now.
    pub fn controls(&self) -> Controls {
        self.lock().clone()
    }

    /// Publishes a poll's result. The node list and each node's configuration come from
    /// the snapshot published now (a reload may have changed them while the poll ran);
    /// the poll's findings are kept for the slots it knew.
    pub fn publish_poll(&self, mut next: Topology) {
        let controls = self.lock();
        let current = self.shared.load_full();
        for (slot, now) in next.nodes.iter_mut().zip(&current.nodes) {
            slot.node = now.node.clone();
            slot.removed = now.removed;
        }
        next.nodes
            .extend(current.nodes.iter().skip(next.nodes.len()).cloned());
        overlay(&mut next, &controls);
        self.shared.store(Arc::new(next));
    }

    /// Makes the snapshot's node list the configured one: a known node (same name and
    /// address) keeps its slot and state with its new weight; a node no longer
    /// configured is marked removed; a new one gets a new slot, unknown until checked.
    pub fn reconcile(&self, nodes: &[Node]) {
        let controls = self.lock();
        let mut next = (*self.shared.load_full()).clone();
        for slot in &mut next.nodes {
            match nodes
                .iter()
                .find(|n| n.name == slot.node.name && n.address == slot.node.address)
            {
                Some(configured) => {
                    slot.node = configured.clone();
                    slot.removed = false;
                }
                None => slot.removed = true,
            }
        }
        for node in nodes {
            let known = next
                .nodes
                .iter()
                .any(|s| s.node.name == node.name && s.node.address == node.address);
            if !known {
                next.nodes.push(NodeState::unknown(node.clone()));
            }
        }
        overlay(&mut next, &controls);
        self.shared.store(Arc::new(next));
    }

    /// Changes the operator overrides and publishes their effect at once.
    pub fn control(&self, change: impl FnOnce(&mut Controls)) {
        {
            let mut controls = self.lock();
            change(&mut controls);
            let mut next = (*self.shared.load_full()).clone();
            overlay(&mut next, &controls);
            self.shared.store(Arc::new(next));
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Waits until node `node` is not paused (returns at once when it is not).
    pub async fn wait_resumed(&self, node: usize) {
        let paused = |t: &Topology| t.nodes.get(node).is_some_and(|n| n.paused && !n.removed);
        // The common case, with no subscription to set up.
        if !paused(&self.shared.load()) {
            return;
        }
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            // A node removed while paused: the work goes on, on a connection that closes
            // afterwards.
            if !paused(&self.shared.load()) || changed.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Role, WalHistory};
    use arc_swap::ArcSwap;

    fn node(name: &str, weight: u32) -> Node {
        Node {
            name: name.into(),
            address: format!("{name}:5432"),
            weight,
        }
    }

    fn healthy(name: &str, role: Role) -> NodeState {
        NodeState {
            role,
            error: None,
            eligible: true,
            ..NodeState::unknown(node(name, 1))
        }
    }

    fn publisher(nodes: Vec<NodeState>) -> Publisher {
        Publisher::new(Arc::new(ArcSwap::from_pointee(Topology::new(nodes))))
    }

    fn names(t: &Topology) -> Vec<(String, bool, bool)> {
        t.nodes
            .iter()
            .map(|n| (n.node.name.clone(), n.removed, n.eligible))
            .collect()
    }

    #[test]
    fn a_reload_keeps_indexes_marks_removed_nodes_and_appends_new_ones() {
        let p = publisher(vec![
            healthy("p", Role::Primary),
            healthy("a", Role::Standby),
            healthy("b", Role::Standby),
        ]);
        p.reconcile(&[node("p", 1), node("b", 3), node("c", 1)]);
        let t = p.current();
        assert_eq!(
            names(&t),
            vec![
                ("p".into(), false, true),
                ("a".into(), true, false),
                ("b".into(), false, true),
                ("c".into(), false, false),
            ]
        );
        assert_eq!(t.nodes[2].node.weight, 3, "re-weighted in place");
        assert_eq!(t.nodes[1].role, Role::Unknown);

        // Added back: same slot, out of reads until the monitor has checked it.
        p.reconcile(&[node("p", 1), node("a", 1), node("b", 3), node("c", 1)]);
        let t = p.current();
        assert_eq!(t.nodes.len(), 4);
        assert!(!t.nodes[1].removed && !t.nodes[1].eligible);
    }

    #[test]
    fn a_poll_that_ran_across_a_reload_keeps_the_reloads_node_list() {
        let p = publisher(vec![
            healthy("p", Role::Primary),
            healthy("a", Role::Standby),
        ]);
        let polled = (*p.current()).clone();
        p.reconcile(&[node("p", 1), node("b", 1)]);
        p.publish_poll(polled);
        let t = p.current();
        assert_eq!(
            names(&t),
            vec![
                ("p".into(), false, true),
                ("a".into(), true, false),
                ("b".into(), false, false),
            ]
        );
    }

    #[test]
    fn a_ban_outlives_polls_and_unban_restores_what_the_monitor_found() {
        let p = publisher(vec![
            healthy("p", Role::Primary),
            healthy("a", Role::Standby),
        ]);
        p.control(|c| {
            c.banned.insert("a".into());
        });
        assert!(!p.current().nodes[1].eligible && p.current().nodes[1].admin_ban);
        let polled = (*p.current()).clone();
        p.publish_poll(Topology {
            wal: WalHistory::default(),
            nodes: polled
                .nodes
                .into_iter()
                .map(|n| NodeState {
                    eligible: true,
                    ..n
                })
                .collect(),
        });
        assert!(!p.current().nodes[1].eligible, "a poll does not lift a BAN");
        p.control(|c| {
            c.banned.remove("a");
        });
        assert!(p.current().nodes[1].eligible);
    }

    #[tokio::test]
    async fn work_for_a_paused_node_waits_until_resume() {
        let p = Arc::new(publisher(vec![healthy("p", Role::Primary)]));
        p.control(|c| {
            c.paused.insert("p".into());
        });
        let waiter = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.wait_resumed(0).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "must wait while paused");
        p.control(|c| c.paused.clear());
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("resumed")
            .expect("no panic");
    }
}
