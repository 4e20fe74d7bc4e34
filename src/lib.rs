//! pgsplit: a SQL-aware read/write load-balancing proxy for PostgreSQL.

pub mod cluster;
