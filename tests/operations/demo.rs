//! `pgsplit demo`, run as a user would: it prints where to connect, and what it prints works.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The demo process, interrupted (as Ctrl-C) and waited for when the test ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value after `label` on the first line that starts with it.
fn after<'a>(lines: &'a [String], label: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the demo printed no {label:?} line:\n{}", lines.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_working_admin_console_uri_and_metrics_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pgsplit demo");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Demo(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads to the end, so the demo never writes into a closed pipe.
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let ready = line.starts_with("Press Ctrl-C");
            lines.push(line);
            if ready && !sent {
                sent = tx.send(lines.clone()).is_ok();
            }
        }
        if !sent {
            let _ = tx.send(lines);
        }
    });
    let lines = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
        .await
        .expect("reader task")
        .expect("the demo starts within 2 minutes");

    let admin = after(&lines, "admin ");
    assert!(admin.ends_with("/pgsplit"), "{admin}");
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin}: {e}"));
    tokio::spawn(conn);
    let nodes: Vec<String> = client
        .simple_query("SHOW NODES")
        .await
        .expect("SHOW NODES")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("role").map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(nodes, ["primary", "standby", "standby"]);
    let metrics = after(&lines, "metrics ");
    let addr: std::net::SocketAddr = metrics
        .strip_prefix("http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("metrics URL {metrics:?}"));
    let (status, body) = common::http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pgsplit_node_up"), "{body}");
    let config = after(&lines, "config ");
    assert!(config.contains("pgsplit.toml"), "{config}");
    drop(demo);
}
