//! pgsplit: a SQL-aware read/write load-balancing proxy for PostgreSQL.
//!
//! A client's bytes flow listener ([`proxy`]) → [`session`], which asks [`classify`] what
//! each request does, [`route`] where it runs (with [`balance`] picking the standby), and
//! relays over [`backend`] server connections checked out of a [`pool`]; the [`monitor`]
//! keeps the [`topology`] snapshot.
//!
//! The modules form layers; a module imports only from its own layer or lower ones, and
//! the import graph has no cycle (checked by a unit test in `layers.rs`):
//!
//! 1. **Core**, pure data and decisions, no I/O: [`protocol`] (framing, encoding),
//!    [`error`], [`config`] (the configuration as data), [`classify`], [`route`] (the
//!    routing state and decision), [`gucs`] (session settings), [`topology`] (the cluster
//!    snapshot and lag rules), [`balance`], [`prepared`] (statement naming).
//! 2. **Services**: [`settings`] (built from the configuration), [`tls`], [`auth`],
//!    [`hba`], [`backend`], [`pool`], [`monitor`], [`catalog`], [`stats`], [`limits`],
//!    [`clients`] (cancel keys).
//! 3. **Context**: [`context`], what every session shares.
//! 4. **Sessions and operators**: [`session`] (the relay), [`admin`], [`metrics`],
//!    [`reload`].
//! 5. **Process**: [`proxy`] (the listener), [`logging`], [`demo`], and the CLI.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod balance;
pub mod catalog;
pub mod classify;
pub mod clients;
pub mod config;
pub mod context;
pub mod demo;
pub mod error;
pub mod gucs;
pub mod hba;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod pool;
pub mod prepared;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod session;
pub mod settings;
pub mod stats;
pub mod tls;
pub mod topology;

#[cfg(test)]
mod layers;
