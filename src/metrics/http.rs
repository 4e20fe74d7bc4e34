//! The HTTP endpoint: `GET /metrics` (Prometheus text), `GET /healthz` (the process is
//! alive) and `GET /readyz` (it can take clients: configuration loaded, a primary known,
//! not shutting down). HTTP/1.1 only, which is what Prometheus and container probes speak.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Metrics;
use crate::context::{Phase, Shared};
use crate::topology::{Role, Topology};

/// How often recorded latencies are moved into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A client that does not finish its request headers in this time is dropped, so idle
/// sockets cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the endpoint on `listener` until `stop` changes (or its sender is gone).
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = Arc::new(metrics);
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = upkeep.tick() => {
                metrics.upkeep();
                continue;
            }
            _ = stop.changed() => break,
        };
        let (metrics, shared, mut stop) = (Arc::clone(&metrics), Arc::clone(&shared), stop.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&request, &metrics, &shared);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = connection => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

/// Answers one request.
fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut refused = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
        refused
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return refused;
    }
    match path {
        "/metrics" => reply(StatusCode::OK, PROMETHEUS_TEXT, metrics.render(shared)),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => {
            let phase = *shared.phase.borrow();
            match readiness(phase, &shared.topology.load()) {
                Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
                Err(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                ),
            }
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Whether the proxy can take clients. Its configuration was loaded and validated before
/// it started, so what is left is: not shutting down, and exactly one primary known
/// (clients are refused until one is). The error says why not, naming the nodes.
fn readiness(phase: Phase, topology: &Topology) -> Result<(), String> {
    if phase != Phase::Running {
        return Err("shutting down".into());
    }
    if topology.primary().is_some() {
        return Ok(());
    }
    let primaries: Vec<&str> = topology
        .nodes
        .iter()
        .filter(|n| n.role == Role::Primary)
        .map(|n| n.node.name.as_str())
        .collect();
    if primaries.len() > 1 {
        return Err(format!(
            "split brain: {} all claim to be primary",
            primaries.join(", ")
        ));
    }
    let nodes: Vec<String> = topology
        .nodes
        .iter()
        .map(|n| {
            let state = match (&n.error, n.role) {
                (Some(error), _) => error.clone(),
                (None, Role::Standby) => "standby".to_string(),
                (None, _) => "not known".to_string(),
            };
            format!("{} ({}): {state}", n.node.name, n.node.address)
        })
        .collect();
    Err(format!("no primary known; {}", nodes.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Node;
    use crate::topology::{NodeState, WalHistory};

    fn topology(roles: &[(Role, Option<&str>)]) -> Topology {
        Topology {
            wal: WalHistory::default(),
            nodes: roles
                .iter()
                .enumerate()
                .map(|(i, (role, error))| NodeState {
                    role: *role,
                    error: error.map(str::to_string),
                    ..NodeState::unknown(Node {
                        name: format!("pg{i}"),
                        address: format!("h:{}", i + 1),
                        weight: 1,
                    })
                })
                .collect(),
        }
    }

    #[test]
    fn ready_with_one_primary_while_running() {
        let healthy = topology(&[(Role::Primary, None), (Role::Standby, None)]);
        assert_eq!(readiness(Phase::Running, &healthy), Ok(()));
        assert_eq!(
            readiness(Phase::Draining, &healthy),
            Err("shutting down".to_string())
        );
    }

    #[test]
    fn not_ready_says_why() {
        let down = topology(&[
            (Role::Unknown, Some("connection refused")),
            (Role::Standby, None),
        ]);
        assert_eq!(
            readiness(Phase::Running, &down),
            Err("no primary known; pg0 (h:1): connection refused; pg1 (h:2): standby".into())
        );
        let split = topology(&[(Role::Primary, None), (Role::Primary, None)]);
        assert_eq!(
            readiness(Phase::Running, &split),
            Err("split brain: pg0, pg1 all claim to be primary".into())
        );
    }
}
