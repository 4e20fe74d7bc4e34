//! How a throwaway cluster's standbys are wired: what each calls itself to the node it
//! streams from, whether it holds a replication slot there, and which node that is.
//!
//! Real clusters are rarely named after pgsplit's nodes: `pg_basebackup -R` leaves
//! `application_name` unset, so every standby shows up as `walreceiver` (or as its
//! `cluster_name`), and a cascading standby streams from another standby, so it never
//! shows up on the primary at all. Tests build these shapes to prove pgsplit copes.
//! Pure: [`Shape::links`] decides, `Cluster::build` does the I/O.

use super::{ClusterError, Result, DEFAULT_STANDBYS};

/// What the standbys of a cluster look like to their upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// How many standbys (`standby1`, `standby2`, …; the node names never change).
    pub standbys: usize,
    /// How each standby names itself in its upstream's `pg_stat_replication`.
    pub naming: Naming,
    /// Whether the last standby streams from `standby1` instead of the primary; needs
    /// two standbys or more.
    pub cascade: bool,
}

impl Default for Shape {
    /// [`DEFAULT_STANDBYS`] standbys named after their nodes, all streaming from the primary.
    fn default() -> Self {
        Shape {
            standbys: DEFAULT_STANDBYS,
            naming: Naming::NodeNames,
            cascade: false,
        }
    }
}

/// How the standbys are made and what `application_name` that gives them.
///
/// Only [`Naming::NodeNames`] holds slots on the primary named after the nodes; the
/// others never use a node's name anywhere, so nothing can match a standby to its node
/// by name by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `application_name=standbyI` in `primary_conninfo` and a slot `standbyI`: the
    /// harness's own wiring, which matches pgsplit's node names.
    NodeNames,
    /// `pg_basebackup -R -X stream` and nothing else: `primary_conninfo` as `-R` writes
    /// it, no `application_name`, so each standby is `walreceiver`, and no slot (the
    /// primary keeps WAL with `wal_keep_size` instead, as slotless setups do).
    Default,
    /// `pg_basebackup -R` plus `cluster_name` in each standby's `postgresql.conf`, which the
    /// WAL receiver then uses as its `application_name`. The value is the same on every
    /// standby, as Debian's `pg_createcluster` writes it (`15/main`).
    ClusterName,
    /// `pg_basebackup -R -S replica_a` (slot `replica_a`, written to `primary_slot_name` by
    /// `-R`) and `application_name=replica-a` in `primary_conninfo`: carefully named, but
    /// not after pgsplit's nodes.
    Other,
}

/// How standby `I` (node index `I`) is wired to the node it streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Index in `Cluster::nodes` of the node it streams from: 0 (the primary), or 1 for
    /// the cascading standby of [`Shape::cascade`].
    pub upstream: usize,
    /// What the upstream's `pg_stat_replication` calls it; not unique in every shape.
    pub application_name: String,
    /// Its physical replication slot on the upstream, if it has one.
    pub slot: Option<String>,
    /// Whether `primary_conninfo` carries `application_name` (otherwise it is
    /// `cluster_name` or `walreceiver`, chosen by the server).
    pub names_itself: bool,
}

/// The WAL receiver's `application_name` when neither `primary_conninfo` nor
/// `cluster_name` sets one.
pub const WALRECEIVER: &str = "walreceiver";

impl Shape {
    /// Today's harness: `standbys` standbys named after their nodes, with slots.
    pub fn node_names(standbys: usize) -> Self {
        Shape {
            standbys,
            ..Shape::default()
        }
    }

    /// One [`Link`] per standby, `standby1` first; `cluster_name` is the value
    /// [`Naming::ClusterName`] sets.
    pub fn links(&self, cluster_name: &str) -> Result<Vec<Link>> {
        if self.cascade && self.standbys < 2 {
            return Err(ClusterError::Unexpected(format!(
                "a cascading standby needs another standby to stream from; the shape has {}",
                self.standbys
            )));
        }
        let links = (1..=self.standbys).map(|i| {
            let upstream = usize::from(self.cascade && i == self.standbys);
            let (application_name, slot, names_itself) = match self.naming {
                Naming::NodeNames => (format!("standby{i}"), Some(format!("standby{i}")), true),
                Naming::Default => (WALRECEIVER.to_string(), None, false),
                Naming::ClusterName => (cluster_name.to_string(), None, false),
                Naming::Other => {
                    let tag = letters(i);
                    (
                        format!("replica-{tag}"),
                        Some(format!("replica_{tag}")),
                        true,
                    )
                }
            };
            Link {
                upstream,
                application_name,
                slot,
                names_itself,
            }
        });
        Ok(links.collect())
    }
}

/// `a`, `b`, … `z`, `aa`, `ab`, …: names that share nothing with `standbyI`.
fn letters(i: usize) -> String {
    let mut n = i;
    let mut out = Vec::new();
    while n > 0 {
        n -= 1;
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(standbys: usize, naming: Naming, cascade: bool) -> Shape {
        Shape {
            standbys,
            naming,
            cascade,
        }
    }

    /// (upstream, application_name, slot) of each standby.
    fn wiring(shape: Shape) -> Vec<(usize, String, Option<String>)> {
        let links = shape.links("15/main").expect("a valid shape");
        links
            .into_iter()
            .map(|l| (l.upstream, l.application_name, l.slot))
            .collect()
    }

    #[test]
    fn each_naming_gives_the_standbys_the_names_a_user_would_see() {
        let some = |s: &str| Some(s.to_string());
        #[rustfmt::skip]
        let cases = [
            ("today's harness", shape(2, Naming::NodeNames, false),
                vec![(0, "standby1", some("standby1")), (0, "standby2", some("standby2"))]),
            ("pg_basebackup -R", shape(2, Naming::Default, false),
                vec![(0, "walreceiver", None), (0, "walreceiver", None)]),
            ("cluster_name", shape(2, Naming::ClusterName, false),
                vec![(0, "15/main", None), (0, "15/main", None)]),
            ("names of their own", shape(2, Naming::Other, false),
                vec![(0, "replica-a", some("replica_a")), (0, "replica-b", some("replica_b"))]),
            ("the last standby cascades", shape(3, Naming::Default, true),
                vec![(0, "walreceiver", None), (0, "walreceiver", None), (1, "walreceiver", None)]),
            ("a cascade keeps its slot, on standby1", shape(2, Naming::Other, true),
                vec![(0, "replica-a", some("replica_a")), (1, "replica-b", some("replica_b"))]),
        ];
        for (why, shape, want) in cases {
            let want: Vec<_> = want
                .into_iter()
                .map(|(up, name, slot)| (up, name.to_string(), slot))
                .collect();
            assert_eq!(wiring(shape), want, "{why}: {shape:?}");
        }
    }

    #[test]
    fn the_default_shape_is_todays_harness() {
        assert_eq!(Shape::default(), Shape::node_names(DEFAULT_STANDBYS));
        let links = Shape::default().links("unused").unwrap();
        assert!(links.iter().all(|l| l.names_itself && l.upstream == 0));
    }

    #[test]
    fn a_cascade_needs_a_standby_to_stream_from() {
        assert!(shape(1, Naming::Default, true).links("x").is_err());
        assert!(shape(0, Naming::Default, true).links("x").is_err());
    }

    #[test]
    fn other_names_never_repeat() {
        let names: std::collections::HashSet<_> = (1..=800).map(letters).collect();
        assert_eq!(names.len(), 800);
        assert_eq!([letters(1), letters(26), letters(27)], ["a", "z", "aa"]);
    }
}
