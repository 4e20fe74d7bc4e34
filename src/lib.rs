//! pgsplit: a SQL-aware read/write load-balancing proxy for PostgreSQL.
//!
//! A client's bytes flow listener ([`proxy`]) → [`session`], which asks [`classify`] what
//! each request does and [`balance`] which standby serves reads, then relays over
//! [`backend`] server connections checked out of a [`pool`]; the [`monitor`] keeps the [`topology`] snapshot.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod balance;
pub mod catalog;
pub mod classify;
pub mod clients;
pub mod cluster;
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
