//! Connections from pgsplit to PostgreSQL servers: startup, authentication, and a
//! small simple-query client for the monitor.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{ServerRead, ServerTls, ServerWrite};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::ServerAuth;
use crate::error::ProxyError;
use crate::protocol::{encode, flush_to, read_cstr, BackendKey, ErrorFields, FrameReader};

/// Who to log in as, where, and with which session parameters.
#[derive(Clone)]
pub struct Login<'a> {
    /// Server address `host:port`.
    pub address: &'a str,
    /// Role name.
    pub user: &'a str,
    /// Its password.
    pub password: &'a str,
    /// Database.
    pub database: &'a str,
    /// Other startup parameters (application_name, options, GUCs).
    pub params: &'a [(String, String)],
    /// TLS toward that server.
    pub tls: &'a ServerTls,
}

// By hand: a derived Debug would print the password.
impl std::fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("address", &self.address)
            .field("user", &self.user)
            .field("password", &crate::config::redacted(self.password))
            .field("database", &self.database)
            .field("params", &self.params)
            .field("tls", &self.tls)
            .finish()
    }
}

/// An authenticated server connection, ready for queries.
pub struct ServerConn {
    /// Frames from the server.
    pub reader: FrameReader<ServerRead>,
    /// Bytes to the server.
    pub writer: ServerWrite,
    /// ParameterStatus values the server reported, as they stand now.
    pub params: Vec<(String, String)>,
    /// The server's cancel key.
    pub key: BackendKey,
    /// Address it was reached at.
    pub address: String,
    /// Cancel requests on their way to this backend: it is not handed to another client
    /// until they have arrived.
    pub cancels_in_flight: Arc<AtomicUsize>,
    /// When the connection was opened (for the admin console).
    pub connected_at: std::time::SystemTime,
}

impl ServerConn {
    /// Connects and logs in, all within `timeout`.
    pub async fn connect(
        login: &Login<'_>,
        timeout: Duration,
        max_message: usize,
    ) -> Result<ServerConn, ProxyError> {
        let unavailable = |reason: String| ProxyError::ServerUnavailable {
            addr: login.address.to_owned(),
            reason,
        };
        match tokio::time::timeout(timeout, Self::connect_inner(login, max_message)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(ProxyError::Io(e))) => Err(unavailable(e.to_string())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(unavailable(format!("timed out after {timeout:?}"))),
        }
    }

    async fn connect_inner(
        login: &Login<'_>,
        max_message: usize,
    ) -> Result<ServerConn, ProxyError> {
        let stream = TcpStream::connect(login.address).await?;
        stream.set_nodelay(true)?;
        let host = host_of(login.address);
        let (read, mut writer) = login.tls.connect(stream, host).await.map_err(|reason| {
            ProxyError::ServerUnavailable {
                addr: login.address.to_owned(),
                reason,
            }
        })?;
        let mut reader = FrameReader::new(read, max_message);
        let mut out = BytesMut::new();
        let mut params: Vec<(&str, &str)> =
            vec![("user", login.user), ("database", login.database)];
        params.extend(login.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        encode::startup(&mut out, &params);
        flush_to(&mut writer, &mut out).await?;

        let mut auth = ServerAuth::Idle;
        let mut server_params = Vec::new();
        let mut key = BackendKey { pid: 0, secret: 0 };
        loop {
            let frame = reader
                .next()
                .await?
                .ok_or_else(|| ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
            match frame.tag {
                b'R' => {
                    auth.respond(frame.body(), login.user, login.password, &mut out)
                        .map_err(|reason| ProxyError::ServerUnavailable {
                            addr: login.address.to_owned(),
                            reason,
                        })?;
                    flush_to(&mut writer, &mut out).await?;
                }
                b'S' => {
                    let mut body = frame.body();
                    if let (Some(k), Some(v)) = (read_cstr(&mut body), read_cstr(&mut body)) {
                        server_params.push((k, v));
                    }
                }
                b'K' => {
                    let b = frame.body();
                    if b.len() >= 8 {
                        key = BackendKey {
                            pid: i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                            secret: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                        };
                    }
                }
                b'E' => {
                    return Err(ProxyError::Server {
                        fields: ErrorFields::parse(frame.body()),
                        raw: frame.raw,
                    })
                }
                b'Z' => {
                    return Ok(ServerConn {
                        reader,
                        writer,
                        params: server_params,
                        key,
                        address: login.address.to_owned(),
                        cancels_in_flight: Arc::default(),
                        connected_at: std::time::SystemTime::now(),
                    })
                }
                // NoticeResponse and NegotiateProtocolVersion need no answer.
                _ => {}
            }
        }
    }

    /// Runs statement `name` (prepared from `sql` first when `prepare`) with the extended
    /// protocol and returns its rows as text: a query run often is parsed and planned
    /// once per connection.
    pub async fn prepared_query(
        &mut self,
        name: &str,
        sql: &str,
        prepare: bool,
    ) -> Result<Vec<Vec<Option<String>>>, ProxyError> {
        let mut out = BytesMut::new();
        if prepare {
            encode::parse(&mut out, name, sql);
        }
        encode::bind_plain(&mut out, name);
        encode::execute_all(&mut out);
        encode::sync(&mut out);
        flush_to(&mut self.writer, &mut out).await?;
        self.rows_until_ready().await
    }

    /// Runs one simple query and returns its rows as text; an ErrorResponse becomes an
    /// error. Every ParameterStatus it causes is noted: whatever runs here (a client's
    /// rollback, a reset), `params` stays what the server says.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ProxyError> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql);
        flush_to(&mut self.writer, &mut out).await?;
        self.rows_until_ready().await
    }

    /// The rows of the answer up to ReadyForQuery; an ErrorResponse becomes an error.
    async fn rows_until_ready(&mut self) -> Result<Vec<Vec<Option<String>>>, ProxyError> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self
                .reader
                .next()
                .await?
                .ok_or_else(|| ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
            match frame.tag {
                b'D' => rows.push(parse_data_row(frame.body())?),
                b'S' => {
                    let mut body = frame.body();
                    if let (Some(k), Some(v)) = (read_cstr(&mut body), read_cstr(&mut body)) {
                        self.note_parameter(&k, &v);
                    }
                }
                b'E' => {
                    error = Some(ProxyError::Server {
                        fields: ErrorFields::parse(frame.body()),
                        raw: frame.raw,
                    })
                }
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Records a ParameterStatus the server sent, so `params` stays current for the next
    /// client that logs in over this connection.
    pub fn note_parameter(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.params.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Sends Terminate and closes the socket.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        encode::terminate(&mut out);
        let _ = self.writer.write_all(&out).await;
        let _ = self.writer.flush().await;
        let _ = self.writer.shutdown().await;
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Asks a server to cancel the query running under `key` (a fresh connection, as the protocol wants).
pub async fn send_cancel(
    address: &str,
    key: BackendKey,
    timeout: Duration,
) -> Result<(), ProxyError> {
    let mut out = BytesMut::new();
    encode::cancel_request(&mut out, key);
    let send = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(&out).await?;
        stream.shutdown().await?;
        // The server closes the connection once it has acted on the request.
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await?;
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ProxyError::ServerUnavailable {
            addr: address.to_owned(),
            reason: "cancel request timed out".into(),
        }),
    }
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ProxyError> {
    let bad = || ProxyError::Protocol("malformed DataRow from server".into());
    let (count, mut rest) = body.split_first_chunk::<2>().ok_or_else(bad)?;
    let count = u16::from_be_bytes(*count) as usize;
    let mut row = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, after) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            row.push(None);
            rest = after;
        } else {
            let len = len as usize;
            let value = after.get(..len).ok_or_else(bad)?;
            row.push(Some(String::from_utf8_lossy(value).into_owned()));
            rest = &after[len..];
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_parse_nulls_and_values() {
        let body = [0, 2, 0, 0, 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            parse_data_row(&body).unwrap(),
            vec![Some("t".to_string()), None]
        );
        assert!(parse_data_row(&[0, 1, 0, 0, 0, 5, b'x']).is_err());
    }
}
