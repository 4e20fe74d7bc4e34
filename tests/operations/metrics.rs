//! Prometheus metrics and probes on the real cluster (issue 7): `/metrics` parses as
//! Prometheus text and follows the traffic (reads per standby, writes by reason, latency
//! buckets, pools, clients); `/healthz` answers while the process lives; `/readyz` only
//! while a primary is known; the endpoint closes with the proxy.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::TestProxy;
use pgsplit::route::Decision;
use pgsplit::topology::Role;
use prometheus_parse::{Scrape, Value};
use tokio::net::TcpStream;

const METRICS_ON: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    common::http(addr, "GET", path).await
}

/// `/metrics`, parsed, with its text for failure messages.
async fn scrape(addr: SocketAddr) -> (Scrape, String) {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text ({e}):\n{body}"));
    (parsed, body)
}

/// The value of the sample of `metric` whose labels include all of `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn reads_of(scrape: &Scrape, node: &str) -> f64 {
    value(
        scrape,
        "pgsplit_queries_total",
        &[("node", node), ("route", "read")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_follow_reads_and_writes() {
    assert_eq!(
        TestProxy::start().await.metrics_addr(),
        None,
        "metrics must be off unless [metrics] listen is set"
    );
    let proxy = TestProxy::start_with("", METRICS_ON).await;
    let addr = proxy.metrics_addr().expect("[metrics] listen is set");
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));

    let topology = proxy.topology();
    let name_of = |role: Role| -> Vec<String> {
        topology
            .nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.node.name.clone())
            .collect()
    };
    let (primary, standbys) = (name_of(Role::Primary), name_of(Role::Standby));
    assert_eq!(
        (primary.len(), standbys.len()),
        (1, 2),
        "the test cluster should show one primary and two standbys: {topology:?}"
    );

    // 200 autocommit reads, spread by round robin over the two standbys.
    let (before, _) = scrape(addr).await;
    let reader = proxy.connect().await;
    for i in 0..200 {
        reader
            .simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("read {i} failed: {e}"));
    }
    let (after, text) = scrape(addr).await;
    for node in &standbys {
        let grew = reads_of(&after, node) - reads_of(&before, node);
        assert!(
            (50.0..=200.0).contains(&grew),
            "standby {node}: queries_total{{route=\"read\"}} grew by {grew} over 200 reads \
             (about 100 expected from round robin over two standbys)\n{text}"
        );
    }
    let read_decisions = value(
        &after,
        "pgsplit_routing_decisions_total",
        &[("reason", "read")],
    );
    assert!(
        read_decisions.is_some_and(|n| n >= 200.0),
        "routing_decisions_total{{reason=\"read\"}} is {read_decisions:?} after 200 reads\n{text}"
    );
    assert!(
        text.contains("pgsplit_query_duration_seconds_bucket{route=\"read\",le=\"0.001\"}"),
        "query_duration_seconds should be a histogram with buckets:\n{text}"
    );
    // A few may miss: the function catalog loading meanwhile gives new cache keys.
    let cache_hits = value(&after, "pgsplit_classify_cache_hits_total", &[]);
    let cache_misses = value(&after, "pgsplit_classify_cache_misses_total", &[]);
    assert!(
        cache_hits.is_some_and(|n| n >= 100.0) && cache_misses.is_some_and(|n| n >= 1.0),
        "200 identical reads should mostly hit the classification cache: \
         hits {cache_hits:?}, misses {cache_misses:?}"
    );
    let checkouts = value(&after, "pgsplit_pool_checkouts_total", &[]);
    assert!(
        checkouts.is_some_and(|n| n >= 200.0),
        "transaction pooling checks out a connection per read: checkouts {checkouts:?}"
    );

    // A write, from another client (read-your-writes is per client and would send the
    // reads above to the primary after it).
    let writer = proxy.connect().await;
    writer
        .batch_execute("CREATE TABLE IF NOT EXISTS metrics_t (a int)")
        .await
        .expect("create table");
    let (before, _) = scrape(addr).await;
    let writes = |s: &Scrape| {
        value(s, "pgsplit_routing_decisions_total", &[("reason", "write")]).unwrap_or(0.0)
    };
    writer
        .simple_query("INSERT INTO metrics_t VALUES (1)")
        .await
        .expect("insert");
    let (after, text) = scrape(addr).await;
    assert_eq!(
        writes(&after) - writes(&before),
        1.0,
        "one INSERT is one routing decision with reason \"write\"\n{text}"
    );
    let primary = primary[0].as_str();
    let primary_writes = value(
        &after,
        "pgsplit_queries_total",
        &[("node", primary), ("route", "write")],
    );
    assert!(
        primary_writes.is_some_and(|n| n >= 2.0),
        "the primary {primary} served the CREATE TABLE and the INSERT as writes: {primary_writes:?}\n{text}"
    );

    // The writer's next read must see its INSERT: read-your-writes asked the primary for
    // its WAL position.
    let seen = writer
        .simple_query("SELECT count(*) FROM metrics_t")
        .await
        .expect("read after the write");
    assert!(!seen.is_empty());
    let (after_read, text) = scrape(addr).await;
    let position_queries = value(
        &after_read,
        "pgsplit_read_your_writes_position_queries_total",
        &[("node", primary)],
    );
    assert!(
        position_queries.is_some_and(|n| n >= 1.0),
        "the primary's WAL position is read after a write commits: {position_queries:?}\n{text}"
    );
    assert!(
        text.contains("pgsplit_read_your_writes_waits_total")
            || text.contains("pgsplit_read_your_writes_primary_reads_total"),
        "read-your-writes counters are exported\n{text}"
    );

    // The cluster as the monitor sees it.
    let role = value(
        &after,
        "pgsplit_node_role",
        &[("node", primary), ("role", "primary")],
    );
    assert_eq!(role, Some(1.0), "node_role of {primary}\n{text}");
    for node in &standbys {
        let labels = [("node", node.as_str())];
        assert_eq!(
            value(&after, "pgsplit_node_up", &labels),
            Some(1.0),
            "node_up of {node}"
        );
        assert_eq!(
            value(&after, "pgsplit_node_eligible", &labels),
            Some(1.0),
            "node_eligible of {node}"
        );
        let lag = value(&after, "pgsplit_node_lag_bytes", &labels);
        assert!(
            lag.is_some_and(|b| b >= 0.0),
            "node_lag_bytes of {node}: {lag:?}"
        );
    }
    let connected = value(&after, "pgsplit_clients", &[("state", "connected")]);
    assert!(
        connected.is_some_and(|n| n >= 2.0),
        "two clients are logged in: clients{{state=\"connected\"}} is {connected:?}"
    );
    let pooled: f64 = after
        .samples
        .iter()
        .filter(|s| s.metric == "pgsplit_server_connections")
        .filter_map(|s| match s.value {
            Value::Gauge(v) => Some(v),
            _ => None,
        })
        .sum();
    assert!(
        pooled >= 2.0,
        "server_connections add up to {pooled}\n{text}"
    );

    // The same traffic in the statistics the admin console shows.
    let stats = proxy.stats();
    for (i, n) in topology.nodes.iter().enumerate() {
        if n.role != Role::Standby {
            continue;
        }
        let read = stats
            .per_node
            .iter()
            .find(|s| s.node_index == i && s.route == pgsplit::stats::Served::Read)
            .unwrap_or_else(|| panic!("no read stats for node {i}: {stats:?}"));
        assert!(
            read.queries >= 50
                && read.transactions == read.queries
                && read.bytes_received >= 13 * read.queries
                && read.bytes_sent > read.bytes_received
                && !read.p99_query_time.is_zero()
                && !read.total_query_time.is_zero(),
            "standby {}: autocommit SELECT 1s should be counted as reads, each a \
             transaction, with bytes and times: {read:?}",
            n.node.name
        );
    }
    assert!(stats.decided(Decision::Write) >= 2, "{stats:?}");
}

#[tokio::test]
async fn readyz_fails_without_a_primary_and_the_endpoint_closes_with_the_proxy() {
    // Two ports nothing listens on: every check is refused at once.
    let closed = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    };
    let (a, b) = (closed(), closed());
    let config = format!(
        "listen = \"127.0.0.1:0\"\n\n{METRICS_ON}\n[monitor]\nuser = \"monitor\"\npassword = \"pw\"\n\n\
         [[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
         [[nodes]]\nname = \"gone1\"\naddress = \"127.0.0.1:{a}\"\n\n\
         [[nodes]]\nname = \"gone2\"\naddress = \"127.0.0.1:{b}\"\n"
    );
    let mut proxy = TestProxy::start_text(&config).await;
    let addr = proxy.metrics_addr().expect("[metrics] listen is set");

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "/readyz with every node unreachable: {body}");
    assert!(
        body.contains("no primary") && body.contains("gone1") && body.contains("gone2"),
        "/readyz should say no primary is known and name the nodes: {body}"
    );
    let (scraped, text) = scrape(addr).await;
    for node in ["gone1", "gone2"] {
        let labels = [("node", node)];
        assert_eq!(
            value(&scraped, "pgsplit_node_up", &labels),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(
                &scraped,
                "pgsplit_node_role",
                &[("node", node), ("role", "unknown")]
            ),
            Some(1.0),
            "{text}"
        );
    }
    assert_eq!(get(addr, "/nothing-here").await.0, 404);
    assert_eq!(common::http(addr, "POST", "/metrics").await.0, 405);

    proxy.shutdown().await.expect("shutdown task");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the metrics endpoint {addr} still accepts connections after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
