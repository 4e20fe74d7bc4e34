//! Choosing the node that serves a read: weights, strategy, and the primary as fallback.
//! Pure functions over a topology snapshot; the session does the I/O.

use crate::topology::{Role, Topology};

pub use crate::config::{PrimaryReads, Strategy};

/// Where a read should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTarget {
    /// The standby at this index of the topology.
    Standby(usize),
    /// The primary.
    Primary,
    /// Nowhere (only with `primary_reads = "never"`).
    Nowhere,
}

/// Picks a node for a read among the eligible standbys (up, not banned, within the lag
/// bounds), skipping `exclude` (nodes that just failed for this client); with none left,
/// the primary as `primary_reads` allows.
///
/// `turn` is a counter that advances on every pick (round robin); `outstanding[i]` is the
/// number of clients currently reading from node `i`; `dice` is a random number.
pub fn pick_read(
    topology: &Topology,
    strategy: Strategy,
    primary_reads: PrimaryReads,
    exclude: &[usize],
    outstanding: &[usize],
    turn: u64,
    dice: u64,
) -> ReadTarget {
    let mut candidates: Vec<(usize, u32)> = topology
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| {
            let wanted = n.role == Role::Standby
                || (n.role == Role::Primary && primary_reads == PrimaryReads::Always);
            wanted && n.eligible && n.node.weight > 0 && !exclude.contains(i)
        })
        .map(|(i, n)| (i, n.node.weight))
        .collect();
    if topology.primary().is_none() {
        candidates.retain(|(i, _)| topology.nodes[*i].role == Role::Standby);
    }
    let total: u64 = candidates.iter().map(|(_, w)| u64::from(*w)).sum();
    let chosen = if total == 0 {
        None
    } else {
        match strategy {
            Strategy::WeightedRoundRobin => by_weight(&candidates, turn % total),
            Strategy::Random => by_weight(&candidates, dice % total),
            Strategy::LeastOutstanding => candidates
                .iter()
                .min_by_key(|(i, w)| {
                    // Compare load per unit of weight; the turn breaks ties fairly.
                    let load = outstanding.get(*i).copied().unwrap_or(0) as u64 * 1_000_000
                        / u64::from(*w);
                    (
                        load,
                        (*i as u64).wrapping_add(turn) % candidates.len() as u64,
                    )
                })
                .map(|(i, _)| *i),
        }
    };
    match chosen {
        Some(i) if topology.nodes[i].role == Role::Primary => ReadTarget::Primary,
        Some(i) => ReadTarget::Standby(i),
        None if primary_reads == PrimaryReads::Never => ReadTarget::Nowhere,
        None => ReadTarget::Primary,
    }
}

fn by_weight(candidates: &[(usize, u32)], mut point: u64) -> Option<usize> {
    for (i, w) in candidates {
        if point < u64::from(*w) {
            return Some(*i);
        }
        point -= u64::from(*w);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Node;
    use crate::topology::{NodeState, WalHistory};

    fn topology(nodes: &[(Role, u32)]) -> Topology {
        Topology {
            wal: WalHistory::default(),
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, (role, weight))| NodeState {
                    role: *role,
                    error: None,
                    eligible: *role != Role::Unknown,
                    ..NodeState::unknown(Node {
                        name: format!("n{i}"),
                        address: format!("h:{}", i + 1),
                        weight: *weight,
                    })
                })
                .collect(),
        }
    }

    fn shares(t: &Topology, strategy: Strategy, primary_reads: PrimaryReads) -> Vec<usize> {
        let mut counts = vec![0; t.nodes.len() + 1];
        for turn in 0..1200u64 {
            let dice = turn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7;
            match pick_read(t, strategy, primary_reads, &[], &[], turn, dice) {
                ReadTarget::Standby(i) => counts[i] += 1,
                ReadTarget::Primary => counts[0] += 1,
                ReadTarget::Nowhere => counts[t.nodes.len()] += 1,
            }
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights() {
        let t = topology(&[(Role::Primary, 1), (Role::Standby, 1), (Role::Standby, 2)]);
        assert_eq!(
            shares(&t, Strategy::WeightedRoundRobin, PrimaryReads::Fallback),
            vec![0, 400, 800, 0]
        );
        assert_eq!(
            shares(&t, Strategy::WeightedRoundRobin, PrimaryReads::Always),
            vec![300, 300, 600, 0]
        );
    }

    #[test]
    fn random_roughly_follows_weights() {
        let t = topology(&[(Role::Primary, 1), (Role::Standby, 1), (Role::Standby, 3)]);
        let c = shares(&t, Strategy::Random, PrimaryReads::Fallback);
        assert_eq!(c[0], 0);
        assert!(
            c[2] > 2 * c[1],
            "weight 3 should get about three times weight 1: {c:?}"
        );
    }

    #[test]
    fn least_outstanding_prefers_the_idle_standby() {
        let t = topology(&[(Role::Primary, 1), (Role::Standby, 1), (Role::Standby, 1)]);
        let target = pick_read(
            &t,
            Strategy::LeastOutstanding,
            PrimaryReads::Fallback,
            &[],
            &[0, 5, 1],
            0,
            0,
        );
        assert_eq!(target, ReadTarget::Standby(2));
    }

    #[test]
    fn without_an_available_standby_reads_fall_back_as_configured() {
        let cases = [
            (
                vec![(Role::Primary, 1), (Role::Unknown, 1)],
                PrimaryReads::Fallback,
                ReadTarget::Primary,
            ),
            (
                vec![(Role::Primary, 1), (Role::Unknown, 1)],
                PrimaryReads::Never,
                ReadTarget::Nowhere,
            ),
            (
                vec![(Role::Primary, 1), (Role::Standby, 0)],
                PrimaryReads::Fallback,
                ReadTarget::Primary,
            ),
            (
                vec![(Role::Unknown, 1), (Role::Standby, 1)],
                PrimaryReads::Always,
                ReadTarget::Standby(1),
            ),
        ];
        for (nodes, primary_reads, want) in cases {
            let t = topology(&nodes);
            assert_eq!(
                pick_read(
                    &t,
                    Strategy::WeightedRoundRobin,
                    primary_reads,
                    &[],
                    &[],
                    0,
                    0
                ),
                want,
                "{nodes:?}"
            );
        }
    }

    #[test]
    fn excluded_standbys_are_skipped() {
        let t = topology(&[(Role::Primary, 1), (Role::Standby, 1), (Role::Standby, 1)]);
        for turn in 0..10 {
            let got = pick_read(
                &t,
                Strategy::WeightedRoundRobin,
                PrimaryReads::Fallback,
                &[1],
                &[],
                turn,
                0,
            );
            assert_eq!(got, ReadTarget::Standby(2));
        }
        let got = pick_read(
            &t,
            Strategy::WeightedRoundRobin,
            PrimaryReads::Fallback,
            &[1, 2],
            &[],
            0,
            0,
        );
        assert_eq!(got, ReadTarget::Primary);
    }

    #[test]
    fn ineligible_standbys_serve_no_reads() {
        // A lagging or banned standby keeps its role in the snapshot but is not eligible.
        let mut t = topology(&[(Role::Primary, 1), (Role::Standby, 1), (Role::Standby, 1)]);
        t.nodes[1].eligible = false;
        for strategy in [
            Strategy::WeightedRoundRobin,
            Strategy::Random,
            Strategy::LeastOutstanding,
        ] {
            for turn in 0..10 {
                let got = pick_read(
                    &t,
                    strategy,
                    PrimaryReads::Fallback,
                    &[],
                    &[0, 0, 9],
                    turn,
                    turn * 7,
                );
                assert_eq!(got, ReadTarget::Standby(2), "{strategy:?}, turn {turn}");
            }
        }
        t.nodes[2].eligible = false;
        let cases = [
            (PrimaryReads::Fallback, ReadTarget::Primary),
            (PrimaryReads::Always, ReadTarget::Primary),
            (PrimaryReads::Never, ReadTarget::Nowhere),
        ];
        for (primary_reads, want) in cases {
            let got = pick_read(
                &t,
                Strategy::WeightedRoundRobin,
                primary_reads,
                &[],
                &[],
                0,
                0,
            );
            assert_eq!(
                got, want,
                "no eligible standby, primary_reads {primary_reads:?}"
            );
        }
    }
}
