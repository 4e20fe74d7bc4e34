//! The cluster as it changes: lag and exclusion, promotion and split brain, and clusters
//! built the ways users build them. Nearly every test builds its own cluster, since it
//! stops, pauses or promotes nodes.

#[path = "../common/mod.rs"]
mod common;

mod failover;
mod real_clusters;
mod topology;
