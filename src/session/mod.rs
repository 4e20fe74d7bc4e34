//! One client's life: startup, authentication, a first pooled server connection that
//! takes the client's startup settings, then the relay ([`relay`]) that routes each
//! request by the routing state and decision (`crate::route`).

mod relay;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::authenticate_client;
use crate::clients::{Cancel, CancelLink, ClientInfo};
use crate::config::TlsMode;
use crate::context::{Phase, Shared};
use crate::error::ProxyError;
use crate::gucs::{guc_sync_sql, startup_gucs, Gucs};
use crate::limits::Slot;
use crate::pool::Lease;
use crate::protocol::{encode, flush_to, read_startup, BackendKey, FrameReader, StartupRequest};
use crate::route::Conn;
use crate::tls::{ClientRead, ClientStream, ClientTls, ClientWrite};
use crate::topology::Role;
use relay::Relay;

/// An authenticated client, its first server connection (which one, and on which node),
/// its startup parameters, the settings they make, and its place under the user and
/// database connection limits (held for the session's life).
type Handshake = (
    FrameReader<ClientRead>,
    (Conn, Lease, usize),
    Startup,
    Gucs,
    Slot,
);

/// Where a login leads.
enum Login {
    /// A client session, relayed to the servers.
    Client(Box<Handshake>),
    /// An admin user opening the console.
    Admin(FrameReader<ClientRead>, String),
}

/// What the client asked for in its StartupMessage.
pub struct Startup {
    /// User name.
    pub user: String,
    /// Database name.
    pub database: String,
    /// Parameters passed on to servers (application_name, options, GUCs).
    pub params: Vec<(String, String)>,
    /// Role and password on the servers, as configured when the client logged in (a
    /// reload that changes or removes the user leaves this session as it was).
    pub server_login: (String, String),
}

/// Serves one client connection until it ends; never panics on client input.
pub async fn serve(tcp: TcpStream, shared: Arc<Shared>, permit: Option<OwnedSemaphorePermit>) {
    let (peer_addr, local_addr) = (tcp.peer_addr().ok(), tcp.local_addr().ok());
    let peer = peer_addr.map(|a| a.to_string()).unwrap_or_default();
    let _ = tcp.set_nodelay(true);
    let mut phase = shared.phase.subscribe();
    let (deadline, write_timeout) = {
        let settings = shared.settings.load();
        let raw = &settings.raw;
        (
            tokio::time::Instant::now() + raw.auth_timeout,
            raw.client_write_timeout,
        )
    };
    let negotiated = tokio::time::timeout_at(
        deadline,
        Box::pin(negotiate(ClientStream::Plain(tcp), &shared)),
    )
    .await;
    let (stream, packet, tls) = match negotiated {
        Ok(Ok(Some(negotiated))) => negotiated,
        // A cancel request, done; or a client that never sent a startup packet.
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err((e, Some(stream)))) => {
            let (_, mut write) = stream.split(write_timeout);
            return report(&mut write, &peer, e).await;
        }
        Ok(Err((e, None))) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    if shared.settings.load().raw.tls_mode == TlsMode::Require && !stream.is_tls() {
        let (_, mut write) = stream.split(write_timeout);
        return report(&mut write, &peer, ProxyError::TlsRequired).await;
    }
    // Read before the split: the access rules' `cert` method needs the client's certificate.
    let client = Client {
        addr: peer_addr.map(|a| a.ip()),
        cert_name: stream.peer_common_name(),
        channel_binding: tls.as_deref().and_then(|t| t.cert_pem.as_deref()),
    };
    let (read, mut write) = stream.split(write_timeout);
    let started = tokio::time::timeout_at(
        deadline,
        // Boxed: the login's state is large and short-lived; an idle session should not
        // carry its space.
        Box::pin(handshake(
            read,
            &mut write,
            packet,
            client,
            &shared,
            permit.is_some(),
        )),
    )
    .await;
    let (client, (conn, server, node), startup, defaults, slot) = match started {
        Ok(Ok(Login::Client(ready))) => *ready,
        Ok(Ok(Login::Admin(reader, user))) => {
            if let Err(e) = crate::admin::serve(reader, write, &shared, &user, &mut phase).await {
                log_end(&peer, &user, &e);
            }
            drop(permit);
            return;
        }
        Ok(Err(e)) => return report(&mut write, &peer, e).await,
        Err(_) => return report(&mut write, &peer, ProxyError::AuthTimeout).await,
    };
    tracing::debug!(%peer, user = %startup.user, database = %startup.database, server = %server.server.address, "client ready");
    let (key, cancel) = shared.cancels.register(ClientInfo {
        user: startup.user.clone(),
        server_user: startup.server_login.0.clone(),
        database: startup.database.clone(),
        addr: peer_addr,
        local_addr,
        connected_at: std::time::SystemTime::now(),
        tls: tls.is_some(),
        application_name: startup
            .params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
    });
    let mut out = BytesMut::new();
    encode::backend_key(&mut out, key);
    encode::ready_for_query(&mut out, b'I');
    let user = startup.user.clone();
    let result = match flush_to(&mut write, &mut out).await {
        Ok(()) => {
            shared.functions.want(&startup.database);
            let relay = Relay::new(
                client,
                write,
                (conn, server, node),
                &shared,
                startup,
                CancelLink::new(cancel),
                defaults,
            );
            relay.run(&mut phase).await
        }
        Err(e) => Err(e.into()),
    };
    shared.cancels.remove(key);
    if let Err(e) = result {
        log_end(&peer, &user, &e);
    }
    drop((slot, permit));
}

/// Logs why a logged-in session ended, unless the client simply left.
fn log_end(peer: &str, user: &str, e: &ProxyError) {
    match e {
        ProxyError::ClientStalled(_) => {
            tracing::warn!(%peer, %user, error = %e, "client stopped reading: session ended, the server connection answering it closed")
        }
        e if e.is_disconnect() => {}
        e => tracing::info!(%peer, %user, error = %e, "session ended with an error"),
    }
}

async fn report(write: &mut ClientWrite, peer: &str, e: ProxyError) {
    if e.is_disconnect() {
        return;
    }
    if let ProxyError::ClientStalled(_) = e {
        tracing::warn!(%peer, error = %e, "client stopped reading during login: connection closed");
        return;
    }
    tracing::info!(%peer, sqlstate = e.sqlstate(), error = %e, "client refused");
    let mut out = BytesMut::new();
    e.encode_fatal(&mut out);
    let _ = flush_to(write, &mut out).await;
    let _ = write.shutdown().await;
}

/// A startup packet and its parameters (with the protocol's minor version).
type StartupPacket = (Vec<(String, String)>, u16);

/// A client stream ready for its startup packet, and the TLS it negotiated, if any.
type Negotiated = (ClientStream, StartupPacket, Option<Arc<ClientTls>>);

/// The packets before the StartupMessage: SSLRequest (answered `S` and a TLS handshake
/// when TLS is configured, else `N`), GSSENCRequest (`N`), CancelRequest (forwarded;
/// `Ok(None)`). An error comes back with the stream, when it is still there to answer on.
async fn negotiate(
    mut stream: ClientStream,
    shared: &Shared,
) -> Result<Option<Negotiated>, (ProxyError, Option<ClientStream>)> {
    let mut tls = None;
    let mut ssl_asked = false;
    let max_packet = shared.settings.load().raw.max_startup_packet_size;
    loop {
        let request = match read_startup(&mut stream, max_packet).await {
            Ok(request) => request,
            Err(e) => return Err((e, Some(stream))),
        };
        match request {
            StartupRequest::Ssl if ssl_asked => {
                // PostgreSQL accepts one SSLRequest per connection.
                let e = ProxyError::Unsupported("SSLRequest sent twice".into());
                return Err((e, Some(stream)));
            }
            StartupRequest::Ssl => {
                ssl_asked = true;
                let configured = shared.tls.load_full();
                stream = match (stream, configured) {
                    (ClientStream::Plain(mut tcp), Some(configured)) => {
                        if let Err(e) = tcp.write_all(b"S").await {
                            return Err((e.into(), None));
                        }
                        match configured.acceptor.accept(tcp).await {
                            Ok(encrypted) => {
                                tls = Some(configured);
                                ClientStream::Tls(Box::new(encrypted))
                            }
                            Err(e) => return Err((e.into(), None)),
                        }
                    }
                    (mut other, _) => {
                        if let Err(e) = other.write_all(b"N").await {
                            return Err((e.into(), None));
                        }
                        other
                    }
                };
            }
            // GSSAPI encryption is not offered: 'N' tells the client to go on without.
            StartupRequest::GssEnc => {
                if let Err(e) = stream.write_all(b"N").await {
                    return Err((e.into(), None));
                }
            }
            StartupRequest::Cancel(key) => {
                forward_cancel(shared, key).await;
                return Ok(None);
            }
            StartupRequest::Startup { params, minor } => {
                return Ok(Some((stream, (params, minor), tls)))
            }
        }
    }
}

/// What the connection itself says about the client, for the access rules and SCRAM.
struct Client<'a> {
    /// The TCP peer's IP address, if known.
    addr: Option<IpAddr>,
    /// The CN of its verified TLS client certificate, if it showed one.
    cert_name: Option<String>,
    /// The certificate (PEM) pgsplit showed it, for SCRAM channel binding.
    channel_binding: Option<&'a [u8]>,
}

/// Startup parameters, the access rules, authentication and the server login.
async fn handshake(
    read: ClientRead,
    write: &mut ClientWrite,
    (params, minor): StartupPacket,
    client: Client<'_>,
    shared: &Shared,
    admitted: bool,
) -> Result<Login, ProxyError> {
    let mut out = BytesMut::new();
    let startup = parse_params(params, minor, &mut out)?;
    flush_to(write, &mut out).await?;
    if !admitted {
        return Err(ProxyError::TooManyClients);
    }
    if *shared.phase.borrow() != Phase::Running {
        return Err(ProxyError::Shutdown);
    }
    let settings = shared.settings.load_full();
    // Clients mostly send small messages, and most of them sit idle: small reads.
    let mut reader = FrameReader::with_chunk(read, settings.raw.max_message_size, 1024);
    let user = settings.user(&startup.user);
    // Checked before any password is asked, as PostgreSQL checks pg_hba.conf; admin
    // console logins (database `pgsplit`) pass the same rules.
    let method = crate::hba::admit(
        &settings.hba,
        client.addr,
        &startup.database,
        &startup.user,
        user,
        client.cert_name.as_deref(),
    )?;
    authenticate_client(
        &mut reader,
        write,
        &startup.user,
        (user, method),
        client.channel_binding,
    )
    .await?;
    let user = user.ok_or_else(|| ProxyError::AuthFailed(startup.user.clone()))?;
    if startup.database == crate::admin::DATABASE {
        if !settings.raw.admin_users.contains(&startup.user) {
            return Err(ProxyError::NotAdmin(startup.user));
        }
        return Ok(Login::Admin(reader, startup.user));
    }
    // After authentication, as PostgreSQL checks role and database connection limits; the
    // admin console above is exempt, as superusers are, so an operator can always look.
    let slot = shared.logins.admit(
        (&startup.user, user.max_connections),
        (&startup.database, settings.raw.max_db_connections),
    )?;
    let mut startup = startup;
    startup.server_login = (user.server_user.clone(), user.server_password.clone());

    // The first server connection answers the login (and proves the database exists):
    // the primary, or while there is none (or it cannot be reached, before the monitor
    // notices) a standby, so reads keep working in a failover.
    let topology = shared.topology.load_full();
    let candidates = topology
        .primary_index()
        .map(|i| (Conn::Primary, i))
        .into_iter()
        .chain(
            (0..topology.nodes.len())
                .filter(|i| {
                    let n = &topology.nodes[*i];
                    n.role == Role::Standby && n.eligible
                })
                .map(|i| (Conn::Standby, i)),
        );
    let defaults = startup_gucs(&startup.params).map_err(ProxyError::BadStartupParameter)?;
    let mut first = Err(ProxyError::NoPrimary);
    for (conn, node) in candidates {
        shared.publisher.wait_resumed(node).await;
        let checkout = shared
            .pools
            .get(
                &topology.nodes[node].node.address,
                &user.server_user,
                &user.server_password,
                &startup.database,
            )
            .checkout()
            .await;
        match checkout {
            Ok(server) => {
                first = Ok((conn, server, node));
                break;
            }
            Err(e) if e.is_unreachable() => {
                tracing::warn!(node = %topology.nodes[node].node.name, error = %e, "first server connection failed; trying the next node");
                first = Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    let (conn, mut server, node) = first?;
    take_settings(&mut server, &defaults).await?;
    encode::auth(&mut out, 0, &[]);
    for (name, value) in &server.server.params {
        encode::parameter_status(&mut out, name, value);
    }
    flush_to(write, &mut out).await?;
    Ok(Login::Client(Box::new((
        reader,
        (conn, server, node),
        startup,
        defaults,
        slot,
    ))))
}

/// Applies a client's startup settings on its first connection (pooled connections log
/// in without them), noting the parameter values the server reports; a setting the
/// server refuses fails the login with the server's error.
async fn take_settings(server: &mut Lease, wanted: &Gucs) -> Result<(), ProxyError> {
    let Some(sql) = guc_sync_sql(server.gucs.as_ref(), wanted) else {
        return Ok(());
    };
    server.gucs = None;
    server.unnamed = None;
    server.server.simple_query(&sql).await?;
    server.gucs = Some(wanted.clone());
    Ok(())
}

/// Checks the StartupMessage parameters; writes NegotiateProtocolVersion when the client
/// asked for a newer minor version or for protocol options pgsplit does not know.
fn parse_params(
    params: Vec<(String, String)>,
    minor: u16,
    out: &mut BytesMut,
) -> Result<Startup, ProxyError> {
    let mut user = None;
    let mut database = None;
    let mut passed = Vec::new();
    let mut unknown_options = Vec::new();
    for (key, value) in params {
        match key.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            "replication" if !matches!(value.as_str(), "false" | "off" | "no" | "0") => {
                return Err(ProxyError::Unsupported(
                    "replication connections are not supported by pgsplit; connect to the primary directly".into(),
                ))
            }
            "replication" => {}
            _ if key.starts_with("_pq_.") => unknown_options.push(key),
            _ => passed.push((key, value)),
        }
    }
    if minor > 0 || !unknown_options.is_empty() {
        let names: Vec<&str> = unknown_options.iter().map(String::as_str).collect();
        encode::negotiate_version(out, 0, &names);
    }
    let user = user.filter(|u| !u.is_empty()).ok_or(ProxyError::NoUser)?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(Startup {
        user,
        database,
        params: passed,
        server_login: Default::default(),
    })
}

async fn forward_cancel(shared: &Shared, key: BackendKey) {
    match shared.cancels.begin_cancel(key) {
        Cancel::Now(target) => {
            tracing::debug!(server = %target.address, "forwarding a cancel request");
            target
                .send(shared.settings.load().raw.connect_timeout)
                .await
        }
        Cancel::Owed => tracing::debug!("cancel request held until its request reaches a server"),
        Cancel::Idle => tracing::debug!("cancel request for an idle session ignored"),
        Cancel::Unknown => tracing::debug!("cancel request with an unknown key ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn startup_parameters_split_into_user_database_and_passed_on() {
        let mut out = BytesMut::new();
        let s = parse_params(
            params(&[
                ("user", "app"),
                ("application_name", "psql"),
                ("options", "-c work_mem=8MB"),
            ]),
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!((s.user.as_str(), s.database.as_str()), ("app", "app"));
        assert_eq!(
            s.params,
            params(&[("application_name", "psql"), ("options", "-c work_mem=8MB")])
        );
        assert!(out.is_empty());
    }

    #[test]
    fn newer_minor_versions_and_protocol_options_are_negotiated_down() {
        let mut out = BytesMut::new();
        let s = parse_params(params(&[("user", "app"), ("_pq_.x", "1")]), 2, &mut out).unwrap();
        assert!(s.params.is_empty());
        assert_eq!(out[0], b'v');
    }

    #[test]
    fn bad_startup_parameters_are_refused_with_their_sqlstate() {
        let cases = [
            (params(&[("database", "db")]), "28000"),
            (params(&[("user", "")]), "28000"),
            (
                params(&[("user", "app"), ("replication", "database")]),
                "0A000",
            ),
        ];
        for (p, code) in cases {
            let err = parse_params(p.clone(), 0, &mut BytesMut::new()).err();
            assert_eq!(err.as_ref().map(|e| e.sqlstate()), Some(code), "{p:?}");
        }
    }
}
