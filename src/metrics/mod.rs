//! Prometheus metrics. Each proxy has its own recorder, never installed as the process's
//! global one: a process may run several proxies (the tests do), and each must report
//! only its own traffic.
//!
//! Almost everything is counted once, by [`crate::stats::Stats`], the pools and the
//! classifier, which the admin console reads too; a scrape copies those counts into
//! the recorder ([`Metrics::render`]), so the request path pays for no second counter.
//! Only the latency histograms are recorded as requests happen, through handles kept
//! from registration (an atomic push each, no lookup); with metrics off they are no-ops.

mod http;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::context::Shared;
use crate::stats::Served;
use crate::topology::Role;

pub use http::serve;

/// Histogram buckets of every `_seconds` metric: from 100 µs (a cached read on a local
/// standby) to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The recorder ignores metadata; registration still asks for some.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// What a metric is, for its `# TYPE` and help line.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric, with its help text (the README's "Metrics and probes" lists the same).
const METRICS: &[(&str, Kind, &str)] = &[
    (
        "pgsplit_queries_total",
        Kind::Counter,
        "Client requests answered (ReadyForQuery), by node and route (read or write).",
    ),
    (
        "pgsplit_transactions_total",
        Kind::Counter,
        "Transactions and autocommit statements ended, by node and route.",
    ),
    (
        "pgsplit_client_received_bytes_total",
        Kind::Counter,
        "Bytes clients sent for their requests, by node and route.",
    ),
    (
        "pgsplit_client_sent_bytes_total",
        Kind::Counter,
        "Bytes of answers sent to clients, by node and route.",
    ),
    (
        "pgsplit_query_duration_seconds",
        Kind::Histogram,
        "Time from a request sent to a server to its ReadyForQuery, by route.",
    ),
    (
        "pgsplit_routing_decisions_total",
        Kind::Counter,
        "Requests sent, by where they went and why (reason).",
    ),
    (
        "pgsplit_read_your_writes_waits_total",
        Kind::Counter,
        "Reads after the client's write that waited for a standby to be seen past it, by \
         node and outcome (replayed, missed: the read went to the primary).",
    ),
    (
        "pgsplit_read_your_writes_wait_microseconds_total",
        Kind::Counter,
        "Time those reads waited, by node.",
    ),
    (
        "pgsplit_read_your_writes_position_queries_total",
        Kind::Counter,
        "WAL position queries sent to a node for read-your-writes, by node.",
    ),
    (
        "pgsplit_read_your_writes_checked_reads_total",
        Kind::Counter,
        "Reads a standby served after it was seen past the client's write, by node.",
    ),
    (
        "pgsplit_read_your_writes_primary_reads_total",
        Kind::Counter,
        "Reads the primary served because no standby had the client's write, by node.",
    ),
    (
        "pgsplit_classify_cache_hits_total",
        Kind::Counter,
        "Statement classifications answered from the cache.",
    ),
    (
        "pgsplit_classify_cache_misses_total",
        Kind::Counter,
        "Statement classifications that parsed the text.",
    ),
    (
        "pgsplit_classify_cache_entries",
        Kind::Gauge,
        "Classifications held in the cache.",
    ),
    (
        "pgsplit_node_lag_bytes",
        Kind::Gauge,
        "WAL bytes a standby has yet to replay (0 on the primary, NaN when unknown).",
    ),
    (
        "pgsplit_node_lag_seconds",
        Kind::Gauge,
        "How far a standby's replay is behind (0 on the primary, NaN when unknown).",
    ),
    (
        "pgsplit_node_up",
        Kind::Gauge,
        "1 when the node's last check succeeded.",
    ),
    (
        "pgsplit_node_eligible",
        Kind::Gauge,
        "1 when the node may serve reads (up, and for a standby within the lag bounds).",
    ),
    (
        "pgsplit_node_role",
        Kind::Gauge,
        "1 for the node's current role (primary, standby or unknown), 0 for the others.",
    ),
    (
        "pgsplit_clients",
        Kind::Gauge,
        "Clients logged in (state=connected) and holding a server connection (state=active).",
    ),
    (
        "pgsplit_pinned_clients",
        Kind::Gauge,
        "Clients keeping a server connection for a pin in transaction pooling.",
    ),
    (
        "pgsplit_server_connections",
        Kind::Gauge,
        "Pooled server connections by node, idle or active (checked out).",
    ),
    (
        "pgsplit_pool_checkouts_total",
        Kind::Counter,
        "Server connections checked out of the pools.",
    ),
    (
        "pgsplit_pool_waits_total",
        Kind::Counter,
        "Checkouts that found their pool full and had to wait.",
    ),
    (
        "pgsplit_pool_checkout_duration_seconds",
        Kind::Histogram,
        "Time a checkout took: waiting, checking and connecting.",
    ),
];

/// The recorder of one proxy, or nothing when `[metrics] listen` is unset.
pub struct Metrics {
    exporter: Option<(PrometheusRecorder, PrometheusHandle)>,
}

impl Metrics {
    /// A recorder with latency buckets and every metric described; `on = false` gives
    /// no recorder, and no-op handles.
    pub fn new(on: bool) -> Metrics {
        if !on {
            return Metrics { exporter: None };
        }
        // Only an empty bucket list is refused, and this one is not.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "latency buckets refused; histograms become summaries");
                PrometheusBuilder::new()
            });
        let recorder = builder.build_recorder();
        for (name, kind, help) in METRICS {
            let (name, help) = (KeyName::from_const_str(name), (*help).into());
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        Metrics {
            exporter: Some((recorder, handle)),
        }
    }

    /// `pgsplit_query_duration_seconds` for reads and writes, in [`Served::ALL`] order.
    pub fn query_seconds(&self) -> [Histogram; 2] {
        Served::ALL.map(|route| {
            self.histogram(
                "pgsplit_query_duration_seconds",
                vec![Label::new("route", route.as_str())],
            )
        })
    }

    /// `pgsplit_pool_checkout_duration_seconds`, when metrics are on.
    pub fn checkout_seconds(&self) -> Option<Histogram> {
        self.exporter
            .as_ref()
            .map(|_| self.histogram("pgsplit_pool_checkout_duration_seconds", vec![]))
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        match &self.exporter {
            Some((recorder, _)) => {
                recorder.register_histogram(&Key::from_parts(name, labels), &METADATA)
            }
            None => Histogram::noop(),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        match &self.exporter {
            Some((recorder, _)) => {
                recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
            }
            None => Counter::noop(),
        }
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        match &self.exporter {
            Some((recorder, _)) => {
                recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
            }
            None => Gauge::noop(),
        }
    }

    /// Moves recorded latencies into their buckets, so they do not pile up between
    /// scrapes (a scrape does the same).
    pub fn upkeep(&self) {
        if let Some((_, handle)) = &self.exporter {
            handle.run_upkeep();
        }
    }

    /// The Prometheus text of the proxy's metrics now: the counts kept elsewhere are
    /// copied in first.
    pub fn render(&self, shared: &Shared) -> String {
        let Some((_, handle)) = &self.exporter else {
            return String::new();
        };
        self.refresh(shared);
        handle.render()
    }

    /// Sets every scrape-time value from the stats, the topology, the pools and the
    /// classifier. Counters are set to their totals (`absolute`), gauges to their values.
    fn refresh(&self, shared: &Shared) {
        let stats = shared.stats.snapshot();
        let topology = shared.topology.load();
        // Node indexes are stable; a node the topology does not show yet goes by index.
        let name = |i: usize| {
            topology
                .nodes
                .get(i)
                .map_or_else(|| i.to_string(), |n| n.node.name.clone())
        };
        for s in &stats.per_node {
            let labels = || {
                vec![
                    Label::new("node", name(s.node_index)),
                    Label::new("route", s.route.as_str()),
                ]
            };
            self.counter("pgsplit_queries_total", labels())
                .absolute(s.queries);
            self.counter("pgsplit_transactions_total", labels())
                .absolute(s.transactions);
            self.counter("pgsplit_client_received_bytes_total", labels())
                .absolute(s.bytes_received);
            self.counter("pgsplit_client_sent_bytes_total", labels())
                .absolute(s.bytes_sent);
        }
        for (decision, count) in &stats.decisions {
            self.counter(
                "pgsplit_routing_decisions_total",
                vec![Label::new("reason", decision.as_str())],
            )
            .absolute(*count);
        }
        for (i, fresh) in stats.freshness.iter().enumerate() {
            let node = || vec![Label::new("node", name(i))];
            let outcome =
                |o: &'static str| vec![Label::new("node", name(i)), Label::new("outcome", o)];
            self.counter("pgsplit_read_your_writes_waits_total", outcome("replayed"))
                .absolute(fresh.waits - fresh.waits_missed.min(fresh.waits));
            self.counter("pgsplit_read_your_writes_waits_total", outcome("missed"))
                .absolute(fresh.waits_missed);
            let micros = u64::try_from(fresh.wait_time.as_micros()).unwrap_or(u64::MAX);
            self.counter("pgsplit_read_your_writes_wait_microseconds_total", node())
                .absolute(micros);
            self.counter("pgsplit_read_your_writes_checked_reads_total", node())
                .absolute(fresh.checked_reads);
            self.counter("pgsplit_read_your_writes_primary_reads_total", node())
                .absolute(fresh.own_write_reads);
        }
        for n in &topology.nodes {
            self.counter(
                "pgsplit_read_your_writes_position_queries_total",
                vec![Label::new("node", n.node.name.clone())],
            )
            .absolute(shared.positions.queries(&n.node.address));
        }
        let cache = shared.classifier.stats();
        self.counter("pgsplit_classify_cache_hits_total", vec![])
            .absolute(cache.hits);
        self.counter("pgsplit_classify_cache_misses_total", vec![])
            .absolute(cache.misses);
        self.gauge("pgsplit_classify_cache_entries", vec![])
            .set(cache.entries as f64);

        let pools = shared.pools.snapshot();
        for n in &topology.nodes {
            let node = || vec![Label::new("node", n.node.name.clone())];
            let primary = n.role == Role::Primary;
            let lag_bytes = match n.lag_bytes {
                Some(bytes) => bytes as f64,
                None if primary => 0.0,
                None => f64::NAN,
            };
            let lag_seconds = match n.lag_time {
                Some(lag) => lag.as_secs_f64(),
                None if primary => 0.0,
                None => f64::NAN,
            };
            self.gauge("pgsplit_node_lag_bytes", node()).set(lag_bytes);
            self.gauge("pgsplit_node_lag_seconds", node())
                .set(lag_seconds);
            self.gauge("pgsplit_node_up", node())
                .set(flag(n.error.is_none()));
            self.gauge("pgsplit_node_eligible", node())
                .set(flag(n.eligible));
            for (role, label) in [
                (Role::Primary, "primary"),
                (Role::Standby, "standby"),
                (Role::Unknown, "unknown"),
            ] {
                let mut labels = node();
                labels.push(Label::new("role", label));
                self.gauge("pgsplit_node_role", labels)
                    .set(flag(n.role == role));
            }
            // Every pool of the node: one per server user and database.
            let (open, idle) = pools
                .iter()
                .filter(|p| p.address == n.node.address)
                .fold((0, 0), |(open, idle), p| (open + p.open, idle + p.idle));
            for (state, count) in [("idle", idle), ("active", open.saturating_sub(idle))] {
                let mut labels = node();
                labels.push(Label::new("state", state));
                self.gauge("pgsplit_server_connections", labels)
                    .set(count as f64);
            }
        }

        for (state, count) in [
            ("connected", stats.clients),
            ("active", stats.active_clients),
        ] {
            self.gauge("pgsplit_clients", vec![Label::new("state", state)])
                .set(count as f64);
        }
        self.gauge("pgsplit_pinned_clients", vec![])
            .set(stats.pinned_clients as f64);
        let (checkouts, waits) = shared.pools.checkouts().counts();
        self.counter("pgsplit_pool_checkouts_total", vec![])
            .absolute(checkouts);
        self.counter("pgsplit_pool_waits_total", vec![])
            .absolute(waits);
    }
}

/// A boolean as a gauge value.
fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}
