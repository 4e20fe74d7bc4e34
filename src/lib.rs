//! pgsplit: a SQL-aware read/write load-balancing proxy for PostgreSQL.
//!
//! A client's bytes flow listener → [`session`] → [`backend`] server connection; the
//! [`topology`] monitor keeps a snapshot of which node is the primary.

pub mod auth;
pub mod backend;
pub mod classify;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod protocol;
pub mod proxy;
pub mod session;
pub mod topology;
