//! Defaults of the keys a file may leave out.

use std::time::Duration;

/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH), the default
/// `max_startup_packet_size`. The same as `protocol::MAX_STARTUP_PACKET`, which `config`
/// does not import (it depends on nothing else in the crate); a test in `settings` ties
/// the two.
pub const MAX_STARTUP_PACKET: usize = 10_000;

pub(super) fn default_all() -> String {
    "all".into()
}
pub(super) fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
pub(super) fn default_log_level() -> String {
    "info".into()
}
pub(super) fn default_max_client_conn() -> usize {
    1000
}
pub(super) fn default_auth_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_client_write_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_max_message_size() -> usize {
    // PostgreSQL's PQ_LARGE_MESSAGE_LIMIT: MaxAllocSize (1 GiB - 1) minus 1.
    (1 << 30) - 2
}
pub(super) fn default_max_startup_packet_size() -> usize {
    MAX_STARTUP_PACKET
}
pub(super) fn default_monitor_user() -> String {
    "monitor".into()
}
pub(super) fn default_monitor_database() -> String {
    "postgres".into()
}
pub(super) fn default_lag_check_interval() -> Duration {
    Duration::from_millis(500)
}
pub(super) fn default_query_timeout() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn default_max_lag_bytes() -> u64 {
    16 << 20
}
pub(super) fn default_max_lag_time() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_readmit_after_polls() -> u32 {
    2
}
pub(super) fn default_max_ban() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_classify_cache_size() -> usize {
    10_000
}
pub(super) fn default_function_refresh_interval() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_read_your_writes_wait() -> Duration {
    Duration::from_millis(5)
}
pub(super) fn default_max_pool_size() -> usize {
    20
}
pub(super) fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_server_lifetime() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn default_checkout_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_server_check_delay() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_prepared_statements_cache_size() -> usize {
    500
}
pub(super) fn default_weight() -> u32 {
    1
}
