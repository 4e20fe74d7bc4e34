//! Which node a function call may run on: fixed lists of PostgreSQL built-ins, the operator's
//! overrides, and the volatility of every function in the catalog (`pg_proc.provolatile`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Pin, Route};

/// Source of [`Functions::id`]: every catalog snapshot gets its own number, so cached
/// decisions made with an older snapshot are never reused with a newer one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A function name as written in a call: each part folded to lower case unless quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FunctionName {
    /// The schema, when the call is qualified (`pg_catalog.nextval`).
    pub schema: Option<String>,
    /// The function's own name.
    pub name: String,
}

impl FunctionName {
    /// Whether the call can only mean a built-in: unqualified or `pg_catalog.`-qualified.
    fn builtin(&self) -> Option<&str> {
        match self.schema.as_deref() {
            None | Some("pg_catalog") => Some(&self.name),
            Some(_) => None,
        }
    }
}

/// What a call means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The call may run on the given node kind.
    Route(Route),
    /// Primary, and the session stays there ([`Pin`]).
    Pin(Pin),
    /// Primary, and a pin ends.
    Unpin(Pin),
    /// `set_config`: decided from its arguments by the caller.
    SetConfig,
    /// `currval` / `lastval`: primary, reading the sequence state of its connection.
    SequenceState,
    /// Not in the catalog (created since it was read, or a typo): primary, and the
    /// catalog is worth reading again.
    Unknown,
}

/// The function catalog as the classifier needs it, plus the operator's overrides.
#[derive(Debug, Clone)]
pub struct Functions {
    id: u64,
    /// Exact name → (schema, whether that overload is volatile), one entry per overload.
    catalog: HashMap<String, Vec<(String, bool)>>,
    /// Lower-cased `name` or `schema.name` entries.
    read_only: Vec<String>,
    write: Vec<String>,
}

impl Functions {
    /// Builds the snapshot from `(schema, name, provolatile)` rows of `pg_proc` (all of it,
    /// `pg_catalog` included) and the configured overrides (`name` or `schema.name`, any case).
    pub fn new(
        rows: impl IntoIterator<Item = (String, String, char)>,
        read_only_overrides: &[String],
        write_overrides: &[String],
    ) -> Functions {
        let mut catalog: HashMap<String, Vec<(String, bool)>> = HashMap::new();
        for (schema, name, volatility) in rows {
            // Anything but 'i' or 's' counts as volatile: the rule of doubt.
            let volatile = !matches!(volatility, 'i' | 's');
            catalog.entry(name).or_default().push((schema, volatile));
        }
        let lower = |list: &[String]| list.iter().map(|s| s.trim().to_lowercase()).collect();
        Functions {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            catalog,
            read_only: lower(read_only_overrides),
            write: lower(write_overrides),
        }
    }

    /// A snapshot for before the catalog has been loaded: only well-known read-only
    /// built-ins go to standbys.
    pub fn empty() -> Functions {
        Functions::new(std::iter::empty(), &[], &[])
    }

    /// A number unique to this snapshot (shared by its clones), for cache keys.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether an override list names this call. A `schema.name` entry also matches the
    /// unqualified call, which usually resolves to it through `search_path`.
    fn overridden(list: &[String], call: &FunctionName) -> bool {
        if list.is_empty() {
            return false;
        }
        let name = call.name.to_lowercase();
        let schema = call.schema.as_deref().map(str::to_lowercase);
        list.iter().any(|entry| match entry.rsplit_once('.') {
            Some((s, n)) => n == name && schema.as_deref().is_none_or(|cs| cs == s),
            None => *entry == name,
        })
    }

    /// Where a call of `call` may run; first match wins: overrides, built-ins with side
    /// effects, read-only volatile built-ins, the catalog, and the rule of doubt.
    pub(crate) fn decide(&self, call: &FunctionName) -> Decision {
        if Functions::overridden(&self.write, call) {
            return Decision::Route(Route::Primary);
        }
        if Functions::overridden(&self.read_only, call) {
            return Decision::Route(Route::Standby);
        }
        if let Some(name) = call.builtin() {
            if let Some(decision) = side_effect_builtin(name) {
                return decision;
            }
            if is_volatile_read_only_builtin(name) {
                return Decision::Route(Route::Standby);
            }
        }
        if let Some(overloads) = self.catalog.get(&call.name) {
            let mut matching = overloads
                .iter()
                .filter(|(schema, _)| call.schema.as_ref().is_none_or(|s| s == schema))
                .peekable();
            if matching.peek().is_some() {
                let volatile = matching.any(|&(_, volatile)| volatile);
                return Decision::Route(if volatile {
                    Route::Primary
                } else {
                    Route::Standby
                });
            }
        }
        if self.catalog.is_empty() {
            if let Some(name) = call.builtin() {
                if is_common_read_only_builtin(name) {
                    return Decision::Route(Route::Standby);
                }
            }
            // Not loaded yet (or not loadable): its loading is asked for already, and a
            // read per call would not help.
            return Decision::Route(Route::Primary);
        }
        // A function created after the last catalog load, or a typo that will fail.
        Decision::Unknown
    }
}

/// Built-ins that write, change session state, or must meet the primary's state.
fn side_effect_builtin(name: &str) -> Option<Decision> {
    let primary = Some(Decision::Route(Route::Primary));
    match name {
        "pg_advisory_lock"
        | "pg_advisory_lock_shared"
        | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared" => Some(Decision::Pin(Pin::AdvisoryLock)),
        "pg_advisory_unlock_all" => Some(Decision::Unpin(Pin::AdvisoryLock)),
        "nextval" | "setval" => Some(Decision::Pin(Pin::Sequence)),
        "set_config" => Some(Decision::SetConfig),
        "currval" | "lastval" => Some(Decision::SequenceState),
        // These assign a transaction id.
        "txid_current" | "txid_current_if_assigned" | "pg_current_xact_id"
        | "pg_current_xact_id_if_assigned"
        | "pg_notify"
        | "pg_advisory_unlock" | "pg_advisory_unlock_shared"
        // Server administration.
        | "pg_terminate_backend" | "pg_cancel_backend" | "pg_reload_conf" | "pg_rotate_logfile"
        | "pg_switch_wal" | "pg_create_restore_point" | "pg_promote" | "pg_wal_replay_pause"
        | "pg_wal_replay_resume" | "pg_backup_start" | "pg_backup_stop" | "pg_start_backup"
        | "pg_stop_backup" | "pg_log_backend_memory_contexts" | "pg_import_system_collations"
        | "pg_replication_origin_create" | "pg_replication_origin_drop"
        | "pg_replication_origin_advance" | "pg_replication_origin_session_setup"
        | "pg_replication_origin_session_reset" | "pg_replication_origin_xact_setup"
        | "pg_create_physical_replication_slot" | "pg_create_logical_replication_slot"
        | "pg_drop_replication_slot" | "pg_replication_slot_advance"
        | "pg_logical_slot_get_changes" | "pg_logical_slot_get_binary_changes"
        | "pg_logical_emit_message" | "pg_export_snapshot" | "pg_file_write"
        | "pg_file_unlink" | "pg_file_rename" | "pg_file_sync"
        // Large objects.
        | "lo_create" | "lo_creat" | "lo_import" | "lo_export" | "lo_unlink" | "lowrite"
        | "lo_put" | "lo_from_bytea" | "lo_truncate" | "lo_truncate64" | "lo_open" | "lo_close"
        | "lo_lseek" | "lo_lseek64" | "lo_tell" | "lo_tell64" | "loread"
        // Session state on one server.
        | "setseed" | "pg_sequence_last_value" => primary,
        _ if name.starts_with("pg_stat_reset")
            || name.starts_with("pg_advisory_xact_lock")
            || name.starts_with("pg_try_advisory_xact_lock")
            || (name.starts_with("pg_copy_") && name.ends_with("_replication_slot"))
            || name.starts_with("pg_replication_origin_") =>
        {
            primary
        }
        _ => None,
    }
}

/// Volatile built-ins that only read: a standby answers them as well as the primary.
fn is_volatile_read_only_builtin(name: &str) -> bool {
    matches!(
        name,
        "random"
            | "random_normal"
            | "clock_timestamp"
            | "timeofday"
            | "statement_timestamp"
            | "transaction_timestamp"
            | "now"
            | "current_timestamp"
            | "localtimestamp"
            | "pg_sleep"
            | "pg_sleep_for"
            | "pg_sleep_until"
            | "gen_random_uuid"
            | "uuidv4"
            | "uuidv7"
            | "pg_is_in_recovery"
            | "pg_last_wal_replay_lsn"
            | "pg_last_wal_receive_lsn"
            | "pg_last_xact_replay_timestamp"
            | "pg_is_wal_replay_paused"
            | "pg_get_wal_replay_pause_state"
            | "pg_backend_pid"
            | "pg_postmaster_start_time"
            | "pg_conf_load_time"
            | "inet_client_addr"
            | "inet_client_port"
            | "inet_server_addr"
            | "inet_server_port"
            | "version"
            | "current_setting"
            | "current_query"
            | "pg_current_logfile"
            | "pg_ls_dir"
            | "pg_ls_logdir"
            | "pg_ls_waldir"
            | "pg_stat_file"
            | "pg_read_file"
            | "pg_read_binary_file"
            | "pg_size_pretty"
            | "pg_database_size"
            | "pg_relation_size"
            | "pg_table_size"
            | "pg_indexes_size"
            | "pg_total_relation_size"
            | "pg_tablespace_size"
            | "pg_blocking_pids"
            | "pg_safe_snapshot_blocking_pids"
            | "txid_current_snapshot"
            | "pg_current_snapshot"
            | "txid_snapshot_xmin"
            | "txid_snapshot_xmax"
            | "pg_get_keywords"
            | "pg_listening_channels"
            | "pg_notification_queue_usage"
            | "pg_trigger_depth"
            | "pg_control_checkpoint"
            | "pg_control_system"
            | "pg_control_recovery"
            | "pg_control_init"
    ) || name.starts_with("pg_stat_get_")
}

/// Read-only built-ins recognised by name while the catalog is not loaded yet; anything
/// else waits for the catalog and meanwhile goes to the primary.
fn is_common_read_only_builtin(name: &str) -> bool {
    matches!(
        name,
        "count"
            | "sum"
            | "avg"
            | "min"
            | "max"
            | "bool_and"
            | "bool_or"
            | "every"
            | "stddev"
            | "variance"
            | "array_agg"
            | "string_agg"
            | "json_agg"
            | "jsonb_agg"
            | "json_object_agg"
            | "jsonb_object_agg"
            | "row_number"
            | "rank"
            | "dense_rank"
            | "percent_rank"
            | "cume_dist"
            | "ntile"
            | "lag"
            | "lead"
            | "first_value"
            | "last_value"
            | "nth_value"
            | "abs"
            | "round"
            | "trunc"
            | "ceil"
            | "ceiling"
            | "floor"
            | "mod"
            | "power"
            | "sqrt"
            | "lower"
            | "upper"
            | "length"
            | "char_length"
            | "octet_length"
            | "substr"
            | "substring"
            | "replace"
            | "split_part"
            | "strpos"
            | "position"
            | "trim"
            | "btrim"
            | "ltrim"
            | "rtrim"
            | "lpad"
            | "rpad"
            | "left"
            | "right"
            | "concat"
            | "concat_ws"
            | "repeat"
            | "reverse"
            | "initcap"
            | "format"
            | "md5"
            | "encode"
            | "decode"
            | "to_char"
            | "to_date"
            | "to_number"
            | "to_timestamp"
            | "date_trunc"
            | "date_part"
            | "extract"
            | "age"
            | "make_date"
            | "make_interval"
            | "generate_series"
            | "unnest"
            | "array_length"
            | "array_to_string"
            | "string_to_array"
            | "cardinality"
            | "jsonb_build_object"
            | "json_build_object"
            | "jsonb_build_array"
            | "json_build_array"
            | "to_json"
            | "to_jsonb"
            | "row_to_json"
            | "jsonb_set"
            | "jsonb_extract_path"
            | "jsonb_extract_path_text"
            | "json_extract_path_text"
            | "jsonb_array_elements"
            | "jsonb_each"
            | "regexp_replace"
            | "regexp_match"
            | "regexp_matches"
            | "current_database"
            | "current_schema"
            | "current_schemas"
            | "pg_typeof"
            | "has_table_privilege"
            | "quote_ident"
            | "quote_literal"
            | "obj_description"
            | "col_description"
            | "format_type"
            | "pg_get_expr"
            | "pg_get_indexdef"
            | "pg_get_constraintdef"
            | "pg_get_userbyid"
            | "pg_table_is_visible"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(schema: Option<&str>, name: &str) -> FunctionName {
        FunctionName {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        }
    }

    fn catalog() -> Functions {
        let rows = [
            ("public", "get_user", 's'),
            ("public", "slugify", 'i'),
            ("public", "bump", 'v'),
            ("app", "audit", 'v'),
            ("app", "lookup", 's'),
            // Overloads of one name: one volatile overload makes every call Primary.
            ("public", "mixed", 's'),
            ("public", "mixed", 'v'),
            ("pg_catalog", "now", 's'),
            ("pg_catalog", "random", 'v'),
            ("pg_catalog", "nextval", 'v'),
            ("pg_catalog", "lower", 'i'),
        ];
        Functions::new(
            rows.iter()
                .map(|&(s, n, v)| (s.to_string(), n.to_string(), v)),
            &["App.Audit".to_string(), "refresh_cache".to_string()],
            &["public.get_user".to_string()],
        )
    }

    #[test]
    fn decisions_in_order() {
        let f = catalog();
        let cases = [
            (call(None, "get_user"), Decision::Route(Route::Primary)),
            (
                call(Some("public"), "get_user"),
                Decision::Route(Route::Primary),
            ),
            (call(Some("app"), "audit"), Decision::Route(Route::Standby)),
            (call(None, "refresh_cache"), Decision::Route(Route::Standby)),
            (call(None, "nextval"), Decision::Pin(Pin::Sequence)),
            (
                call(Some("pg_catalog"), "nextval"),
                Decision::Pin(Pin::Sequence),
            ),
            (call(None, "currval"), Decision::SequenceState),
            (call(None, "random"), Decision::Route(Route::Standby)),
            (call(None, "now"), Decision::Route(Route::Standby)),
            (call(None, "slugify"), Decision::Route(Route::Standby)),
            (call(None, "bump"), Decision::Route(Route::Primary)),
            (call(None, "mixed"), Decision::Route(Route::Primary)),
            (call(Some("app"), "lookup"), Decision::Route(Route::Standby)),
            // Qualified with a schema that has no such function: unknown.
            (call(Some("other"), "lookup"), Decision::Unknown),
            // Loaded catalog, absent name: rule of doubt.
            (call(None, "count"), Decision::Unknown),
            (
                call(None, "pg_advisory_lock"),
                Decision::Pin(Pin::AdvisoryLock),
            ),
            (
                call(None, "pg_advisory_unlock_all"),
                Decision::Unpin(Pin::AdvisoryLock),
            ),
            (
                call(None, "pg_advisory_xact_lock_shared"),
                Decision::Route(Route::Primary),
            ),
            (
                call(None, "pg_stat_reset_shared"),
                Decision::Route(Route::Primary),
            ),
            (
                call(None, "pg_copy_logical_replication_slot"),
                Decision::Route(Route::Primary),
            ),
            (
                call(None, "pg_stat_get_numscans"),
                Decision::Route(Route::Standby),
            ),
            (call(None, "set_config"), Decision::SetConfig),
            // A user's schema-qualified function of a built-in's name is not the built-in.
            (call(Some("app"), "nextval"), Decision::Unknown),
        ];
        for (name, want) in cases {
            assert_eq!(f.decide(&name), want, "{name:?}");
        }
    }

    #[test]
    fn empty_catalog_trusts_only_well_known_builtins() {
        let f = Functions::empty();
        assert_eq!(
            f.decide(&call(None, "count")),
            Decision::Route(Route::Standby)
        );
        assert_eq!(
            f.decide(&call(Some("pg_catalog"), "lower")),
            Decision::Route(Route::Standby)
        );
        assert_eq!(
            f.decide(&call(None, "get_user")),
            Decision::Route(Route::Primary)
        );
        assert_eq!(
            f.decide(&call(Some("public"), "count")),
            Decision::Route(Route::Primary)
        );
    }

    #[test]
    fn ids_are_unique_and_shared_by_clones() {
        let a = Functions::empty();
        let b = Functions::empty();
        assert_ne!(a.id(), b.id());
        assert_eq!(a.clone().id(), a.id());
    }
}
