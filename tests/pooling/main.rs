//! Pooled server connections: many clients on a few connections, nothing crossing between
//! clients, the life of a connection, session state released through the pool, idle
//! transactions. The 400-client test runs alone; every other test takes a shared turn
//! (`common::turns`).

#[path = "../common/mod.rs"]
mod common;

mod idle_transactions;
mod pool_isolation;
mod pool_lifecycle;
mod pool_session_state;
mod pooling;
