//! The admin console: a client that logs in to the virtual database `pgsplit` as one of
//! the `admin_users` gets a console instead of a server session. It speaks the simple
//! query protocol (psql) and answers with ordinary result sets: `SHOW NODES`, `POOLS`,
//! `CLIENTS`, `SERVERS`, `STATS`, `CONFIG`, `VERSION`, `HELP`; and acts on `RELOAD`,
//! `PAUSE`/`RESUME`, `BAN`/`UNBAN` and `SHUTDOWN`. Commands are parsed in [`command`] and
//! tables built in [`show`]; this module only does the I/O.

pub mod command;
pub mod show;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::sync::watch;

use crate::context::{Phase, Shared};
use crate::error::ProxyError;
use crate::gucs::Gucs;
use crate::protocol::{encode, flush_to, BackendKey, FrameReader, Severity};
use crate::route::RoutingState;
use crate::tls::{ClientRead, ClientWrite};
use command::{Command, Show};
use show::Table;

/// The database name that opens the console.
pub const DATABASE: &str = "pgsplit";

/// How often `PAUSE` looks whether the node's transactions have finished.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Serves an authenticated admin user until it leaves or pgsplit shuts down.
pub async fn serve(
    mut reader: FrameReader<ClientRead>,
    mut write: ClientWrite,
    shared: &Arc<Shared>,
    user: &str,
    phase: &mut watch::Receiver<Phase>,
) -> Result<(), ProxyError> {
    let mut out = BytesMut::new();
    encode::auth(&mut out, 0, &[]);
    for (name, value) in [
        ("server_version", "15.0 (pgsplit admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgsplit"),
    ] {
        encode::parameter_status(&mut out, name, value);
    }
    // The console runs nothing a cancel could stop: a key that points nowhere.
    encode::backend_key(
        &mut out,
        BackendKey {
            pid: rand::random::<i32>() & i32::MAX,
            secret: rand::random(),
        },
    );
    encode::ready_for_query(&mut out, b'I');
    flush_to(&mut write, &mut out).await?;
    tracing::info!(%user, "admin console session started");
    // After an extended-protocol message was refused, the rest of its batch is skipped.
    let mut skipping = false;
    loop {
        let frame = tokio::select! {
            frame = reader.next() => frame?,
            _ = phase.changed() => None,
        };
        if *phase.borrow() != Phase::Running {
            ProxyError::Shutdown.encode_fatal(&mut out);
            flush_to(&mut write, &mut out).await?;
            return Ok(());
        }
        let Some(frame) = frame else {
            return Ok(());
        };
        match frame.tag {
            b'Q' => {
                let body = frame.body();
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                let commands = command::parse_all(&text);
                if commands.is_empty() {
                    encode::empty_query(&mut out);
                }
                for parsed in commands {
                    let result = match parsed {
                        Ok(command) => {
                            tracing::info!(%user, ?command, "admin command");
                            run(shared, command, &mut out).await
                        }
                        Err(message) => Err(("42601", message)),
                    };
                    if let Err((code, message)) = result {
                        encode::error(&mut out, Severity::Error, code, &message);
                        break;
                    }
                }
                encode::ready_for_query(&mut out, b'I');
            }
            b'X' => return Ok(()),
            b'S' => {
                skipping = false;
                encode::ready_for_query(&mut out, b'I');
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F' => {
                if !skipping {
                    encode::error(
                        &mut out,
                        Severity::Error,
                        "0A000",
                        "the admin console speaks the simple query protocol only (as psql does)",
                    );
                    skipping = frame.tag != b'F';
                }
                if frame.tag == b'F' {
                    encode::ready_for_query(&mut out, b'I');
                }
            }
            other => {
                let e = ProxyError::Protocol(format!(
                    "unexpected message type '{}' in the admin console",
                    other as char
                ));
                e.encode_fatal(&mut out);
                flush_to(&mut write, &mut out).await?;
                return Err(e);
            }
        }
        flush_to(&mut write, &mut out).await?;
    }
}

/// Runs one command, writing its reply; an error is (SQLSTATE, message).
async fn run(
    shared: &Arc<Shared>,
    command: Command,
    out: &mut BytesMut,
) -> Result<(), (&'static str, String)> {
    match command {
        Command::Show(what) => {
            write_table(out, &table(shared, what));
            encode::command_complete(out, "SHOW");
        }
        Command::Reload => {
            let changes = crate::reload::reload(shared).map_err(|e| ("F0000", e))?;
            for change in &changes {
                encode::notice(out, "NOTICE", "00000", change);
            }
            encode::command_complete(out, "RELOAD");
        }
        Command::Pause(node) => {
            let names = nodes_named(shared, node.as_deref())?;
            shared.publisher.control(|c| match &node {
                Some(name) => {
                    c.paused.insert(name.clone());
                }
                None => c.paused_all = true,
            });
            let busy = drain(shared, &names).await;
            if busy > 0 {
                encode::notice(
                    out,
                    "WARNING",
                    "01000",
                    &format!(
                        "paused, but {busy} server connection(s) still serve transactions after shutdown_timeout"
                    ),
                );
            }
            encode::command_complete(out, "PAUSE");
        }
        Command::Resume(node) => {
            nodes_named(shared, node.as_deref())?;
            shared.publisher.control(|c| match &node {
                Some(name) => {
                    c.paused.remove(name);
                }
                None => {
                    c.paused_all = false;
                    c.paused.clear();
                }
            });
            encode::command_complete(out, "RESUME");
        }
        Command::Ban(node) => {
            nodes_named(shared, Some(&node))?;
            shared.publisher.control(|c| {
                c.banned.insert(node.clone());
            });
            encode::command_complete(out, "BAN");
        }
        Command::Unban(node) => {
            nodes_named(shared, Some(&node))?;
            shared.publisher.control(|c| {
                c.banned.remove(&node);
            });
            encode::command_complete(out, "UNBAN");
        }
        Command::Shutdown => {
            tracing::info!("SHUTDOWN from the admin console");
            shared.shutdown_requested.send_replace(true);
            encode::command_complete(out, "SHUTDOWN");
        }
        Command::Set => encode::command_complete(out, "SET"),
        Command::ExplainRoute {
            database,
            statement,
        } => {
            let database = match database {
                Some(name) => name,
                None => default_database(shared)?,
            };
            let functions = shared.functions.for_database(&database);
            let explained = shared.classifier.explain(&statement, &functions);
            let mode = shared.settings.load().raw.routing.transaction_routing;
            let mut fresh = RoutingState::new(mode, Gucs::new());
            let single = explained.class.statements == 1;
            let plan = fresh.plan_query(&explained.class, &statement, single, None);
            let loaded = shared.functions.is_loaded(&database);
            write_table(
                out,
                &show::explain_route(&explained, &plan, &database, loaded),
            );
            encode::command_complete(out, "EXPLAIN");
        }
    }
    Ok(())
}

/// The database `EXPLAIN ROUTE` explains for when none is named: the only one clients
/// use.
fn default_database(shared: &Shared) -> Result<String, (&'static str, String)> {
    let databases = shared.functions.databases();
    match &databases[..] {
        [only] => Ok(only.clone()),
        [] => Err((
            "42602",
            "no client has used a database yet: name one, EXPLAIN ROUTE DATABASE name statement"
                .into(),
        )),
        several => Err((
            "42602",
            format!(
                "clients use several databases ({}): name one, EXPLAIN ROUTE DATABASE name statement",
                several.join(", ")
            ),
        )),
    }
}

/// The addresses of the configured node named `name`, or of every node.
fn nodes_named(shared: &Shared, name: Option<&str>) -> Result<Vec<String>, (&'static str, String)> {
    let topology = shared.topology.load();
    let configured = topology.nodes.iter().filter(|n| !n.removed);
    let addresses: Vec<String> = configured
        .filter(|n| name.is_none_or(|name| n.node.name == name))
        .map(|n| n.node.address.clone())
        .collect();
    match (name, addresses.is_empty()) {
        (Some(name), true) => Err((
            "42704",
            format!("no node named \"{name}\" (see SHOW NODES)"),
        )),
        _ => Ok(addresses),
    }
}

/// Waits until no server connection to `addresses` serves a client, at most
/// `shutdown_timeout`; returns how many still do.
async fn drain(shared: &Shared, addresses: &[String]) -> usize {
    let deadline = Instant::now() + shared.settings.load().raw.shutdown_timeout;
    loop {
        let busy: usize = shared
            .pools
            .snapshot()
            .iter()
            .filter(|p| addresses.contains(&p.address))
            .map(|p| p.open.saturating_sub(p.idle))
            .sum();
        if busy == 0 || Instant::now() >= deadline {
            return busy;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Builds the table a `SHOW` asks for from the current snapshots.
fn table(shared: &Shared, what: Show) -> Table {
    let topology = shared.topology.load_full();
    let settings = shared.settings.load_full();
    match what {
        Show::Nodes => {
            let queries: Vec<u64> = topology
                .nodes
                .iter()
                .map(|n| shared.positions.queries(&n.node.address))
                .collect();
            show::nodes(
                &topology,
                &shared.stats.snapshot(),
                &queries,
                (Instant::now(), SystemTime::now()),
            )
        }
        Show::Pools => show::pools(
            &topology,
            &shared.pools.snapshot(),
            &shared.cancels.clients(),
            &settings,
        ),
        Show::Clients => show::clients(&topology, &shared.cancels.clients()),
        Show::Servers => show::servers(
            &topology,
            &shared.pools.idle_servers(),
            &shared.cancels.clients(),
            Instant::now(),
        ),
        Show::Stats => show::stats(&topology, &shared.stats.snapshot()),
        Show::Config => show::config(&settings),
        Show::Version => show::version(),
        Show::Help => show::help(),
    }
}

fn write_table(out: &mut BytesMut, table: &Table) {
    encode::row_description(out, &table.columns);
    for row in &table.rows {
        encode::data_row(out, row);
    }
}
