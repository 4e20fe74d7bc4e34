//! Routing on a real cluster: where each statement, transaction and session goes, read-
//! your-writes, a mixed workload drawn from every row of ROUTING.md, and what a standby
//! refuses. One shared cluster; the tests that delay replay build their own.

#[path = "../common/mod.rs"]
mod common;

mod mixed_workload;
mod read_your_writes;
mod routing;
mod standby_surprises;
