//! Errors pgsplit reports, and the one place they map to SQLSTATEs. Imports nothing
//! from the crate: the protocol encodes these errors (`ProxyError::encode_fatal`, in
//! `protocol`) and every layer returns them.

use std::time::Duration;

use bytes::Bytes;

/// An error in a client session or a server connection.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The peer broke the wire protocol.
    #[error("{0}")]
    Protocol(String),
    /// The client asked for something pgsplit does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// The startup packet named no user.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    /// Authentication failed; the message never says whether the user exists.
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// Startup and authentication did not finish within `auth_timeout`.
    #[error("canceling authentication due to timeout")]
    AuthTimeout,
    /// `max_client_conn` clients are already connected.
    #[error("sorry, too many clients already")]
    TooManyClients,
    /// The user's connection limit (`max_user_connections` or its own `max_connections`)
    /// is reached.
    #[error("too many connections for role \"{0}\"")]
    TooManyForRole(String),
    /// The database's connection limit (`max_db_connections`) is reached.
    #[error("too many connections for database \"{0}\"")]
    TooManyForDatabase(String),
    /// No pooled server connection became free in time.
    #[error("no connection to server {addr} became free within checkout_timeout ({waited:?}; max_pool_size is {size})")]
    CheckoutTimeout {
        /// Node address.
        addr: String,
        /// How long the request waited.
        waited: Duration,
        /// The pool's size.
        size: usize,
    },
    /// A startup parameter pgsplit cannot turn into a setting.
    #[error("{0}")]
    BadStartupParameter(String),
    /// `tls_mode = "require"` and the client did not ask for TLS.
    #[error("pgsplit accepts only TLS connections (tls_mode = \"require\"): connect with sslmode=require")]
    TlsRequired,
    /// No node currently acts as the primary.
    #[error("no primary server is available")]
    NoPrimary,
    /// A server could not be reached or failed during startup.
    #[error("could not connect to server {addr}: {reason}")]
    ServerUnavailable {
        /// Node address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The server sent an ErrorResponse during startup; relayed to the client as sent.
    #[error("server error {}: {}", .fields.code, .fields.message)]
    Server {
        /// Parsed fields, for logs and SQLSTATE.
        fields: ErrorFields,
        /// The complete ErrorResponse frame.
        raw: Bytes,
    },
    /// A user not in `admin_users` asked for the admin console.
    #[error("user \"{0}\" may not use the admin console (not in admin_users)")]
    NotAdmin(String),
    /// The access rules (`[[hba]]`) refuse this client: a `reject` rule or none matching.
    #[error(
        "no pgsplit access rule allows host \"{host}\", user \"{user}\", database \"{database}\""
    )]
    NoAccessRule {
        /// The client's IP address.
        host: String,
        /// The user it named.
        user: String,
        /// The database it named.
        database: String,
    },
    /// A `cert` rule matched, and the client showed no verified certificate naming the user.
    #[error("certificate authentication failed for user \"{0}\": connect over TLS with a client certificate whose CN is the user name")]
    CertFailed(String),
    /// An access rule asks for a method the user's configured password cannot check.
    #[error("user \"{user}\" cannot authenticate with {method}, which an access rule requires: its configured password is a hash or verifier for another method")]
    MethodUnavailable {
        /// The user.
        user: String,
        /// The method the rule requires.
        method: &'static str,
    },
    /// pgsplit is shutting down.
    #[error("terminating connection due to administrator command")]
    Shutdown,
    /// The client read nothing of what pgsplit sent it for `client_write_timeout`.
    #[error("{0}")]
    ClientStalled(WriteStalled),
    /// A socket failed.
    #[error("connection failure: {0}")]
    Io(std::io::Error),
}

/// Why a client write failed: the client read nothing for this long
/// (`client_write_timeout`). Carried inside the `io::Error` (kind `TimedOut`) that the
/// client stream's writer (`tls::StallGuard`) fails with, so that [`ProxyError`] can tell
/// it from a server's or the kernel's timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client read nothing for {0:?} (client_write_timeout)")]
pub struct WriteStalled(pub Duration);

impl From<std::io::Error> for ProxyError {
    fn from(e: std::io::Error) -> Self {
        // A stalled client write arrives as an io::Error, through the same `?` as any
        // other socket failure; it is told apart by what it carries.
        let stalled = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<WriteStalled>())
            .copied();
        match stalled {
            Some(stalled) => ProxyError::ClientStalled(stalled),
            None => ProxyError::Io(e),
        }
    }
}

impl ProxyError {
    /// The SQLSTATE a client sees for this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            ProxyError::Protocol(_) => "08P01",
            ProxyError::Unsupported(_) => "0A000",
            ProxyError::BadStartupParameter(_) => "22023",
            ProxyError::NoUser
            | ProxyError::TlsRequired
            | ProxyError::NotAdmin(_)
            | ProxyError::NoAccessRule { .. }
            | ProxyError::CertFailed(_)
            | ProxyError::MethodUnavailable { .. } => "28000",
            ProxyError::AuthFailed(_) => "28P01",
            ProxyError::AuthTimeout => "08006",
            ProxyError::TooManyClients
            | ProxyError::TooManyForRole(_)
            | ProxyError::TooManyForDatabase(_)
            | ProxyError::CheckoutTimeout { .. } => "53300",
            ProxyError::NoPrimary | ProxyError::ServerUnavailable { .. } => "08006",
            ProxyError::Server { fields, .. } => &fields.code,
            ProxyError::Shutdown => "57P01",
            ProxyError::ClientStalled(_) | ProxyError::Io(_) => "08006",
        }
    }

    /// Whether a server could not be reached or is not taking connections (down,
    /// starting, shutting down): another node may serve instead, unlike a refused login
    /// or a missing database.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ProxyError::ServerUnavailable { .. } | ProxyError::Io(_) => true,
            ProxyError::Server { fields, .. } => {
                fields.code.starts_with("08") || fields.code.starts_with("57")
            }
            _ => false,
        }
    }

    /// Whether the peer simply went away (not worth a warning in the log).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, ProxyError::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        ))
    }
}

/// Severity of an error pgsplit reports itself.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// Fields of an ErrorResponse or NoticeResponse body.
#[derive(Debug, Clone, Default)]
pub struct ErrorFields {
    /// Severity (non-localized when the server sent it).
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
}

impl ErrorFields {
    /// Parses an ErrorResponse/NoticeResponse body; unknown fields are skipped.
    pub fn parse(body: &[u8]) -> Self {
        let mut fields = ErrorFields::default();
        for field in body.split(|b| *b == 0) {
            let Some((&kind, value)) = field.split_first() else {
                continue;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => fields.severity = value,
                b'S' if fields.severity.is_empty() => fields.severity = value,
                b'C' => fields.code = value,
                b'M' => fields.message = value,
                _ => {}
            }
        }
        fields
    }
}
