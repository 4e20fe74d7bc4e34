//! Running pgsplit: the admin console and hot reload, metrics and probes, the binary
//! configured by `PGSPLIT_*` variables alone (a sidecar), and `pgsplit demo` as a user runs
//! it.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod demo;
mod metrics;
mod sidecar;
