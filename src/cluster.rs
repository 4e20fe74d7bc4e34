//! Throwaway local PostgreSQL replication clusters for tests, the demo and benchmarks.
