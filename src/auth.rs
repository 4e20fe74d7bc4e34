//! Authentication: pgsplit checks clients itself (SCRAM-SHA-256, md5, trust) and logs in
//! to servers with configured credentials (SCRAM-SHA-256, md5 or cleartext as they ask).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::BytesMut;
use md5::{Digest, Md5};
use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::redacted;
pub use crate::config::AuthMethod;
use crate::error::ProxyError;
use crate::protocol::{encode, flush_to, read_cstr, FrameReader};

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// A user ready for authentication: secrets derived once at load time.
#[derive(Clone)]
pub struct User {
    /// Client-facing name.
    pub name: String,
    /// Client authentication method.
    pub method: AuthMethod,
    /// What the client must prove.
    pub secret: Secret,
    /// Role on the servers.
    pub server_user: String,
    /// Password on the servers.
    pub server_password: String,
    /// Most clients logged in as this user at once; 0: no limit.
    pub max_connections: usize,
}

// By hand: a derived Debug would print the server password.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("secret", &self.secret)
            .field("server_user", &self.server_user)
            .field("server_password", &redacted(&self.server_password))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it in `pg_authid`.
#[derive(Clone)]
pub struct ScramVerifier {
    iterations: usize,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(<redacted>)")
    }
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key>`.
    pub fn parse(s: &str) -> Result<ScramVerifier, String> {
        let bad = || {
            "is not a valid SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey> verifier"
                .to_string()
        };
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let decode = |v: &str| STANDARD.decode(v).map_err(|_| bad());
        let verifier = ScramVerifier {
            iterations: iterations.parse().map_err(|_| bad())?,
            salt: decode(salt)?,
            stored_key: decode(stored)?,
            server_key: decode(server)?,
        };
        if verifier.iterations == 0
            || verifier.stored_key.len() != 32
            || verifier.server_key.len() != 32
        {
            return Err(bad());
        }
        Ok(verifier)
    }

    fn from_password(password: &str) -> ScramVerifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // The crate's own output always has the documented shape.
        ScramVerifier::parse(&text).unwrap_or_else(|_| ScramVerifier::random())
    }

    /// A verifier no password matches: unknown users go through the same exchange.
    fn random() -> ScramVerifier {
        ScramVerifier {
            iterations: 4096,
            salt: rand::random::<[u8; 16]>().to_vec(),
            stored_key: rand::random::<[u8; 32]>().to_vec(),
            server_key: rand::random::<[u8; 32]>().to_vec(),
        }
    }

    fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// What a user's client must prove, derived once from the configured password.
#[derive(Clone)]
pub enum Secret {
    /// A plaintext password: every method works.
    Plain {
        /// The password.
        password: String,
        /// Its SCRAM verifier.
        scram: ScramVerifier,
        /// `md5` + md5(password + user).
        md5: String,
    },
    /// Only a SCRAM verifier is known.
    Scram(ScramVerifier),
    /// Only an md5 hash is known.
    Md5(String),
    /// No password (trust only).
    Empty,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain { .. } => "Secret::Plain(<redacted>)",
            Secret::Scram(_) => "Secret::Scram(<redacted>)",
            Secret::Md5(_) => "Secret::Md5(<redacted>)",
            Secret::Empty => "Secret::Empty",
        })
    }
}

impl Secret {
    /// Derives the secret for `method` from a configured password string.
    pub fn from_config(user: &str, password: &str, method: AuthMethod) -> Result<Secret, String> {
        let secret = if password.starts_with("SCRAM-SHA-256$") {
            Secret::Scram(ScramVerifier::parse(password)?)
        } else if password.len() == 35
            && password.starts_with("md5")
            && password[3..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            Secret::Md5(password.to_ascii_lowercase())
        } else if password.is_empty() {
            Secret::Empty
        } else {
            Secret::Plain {
                password: password.to_owned(),
                scram: ScramVerifier::from_password(password),
                md5: postgres_protocol::password::md5(password.as_bytes(), user),
            }
        };
        match (method, &secret) {
            (AuthMethod::Trust, _)
            | (AuthMethod::ScramSha256, Secret::Plain { .. } | Secret::Scram(_))
            | (AuthMethod::Md5, Secret::Plain { .. } | Secret::Md5(_)) => Ok(secret),
            (_, Secret::Empty) => Err("is empty: set a password, or use auth_method = \"trust\"".into()),
            (AuthMethod::ScramSha256, _) => {
                Err("is an md5 hash, which cannot check SCRAM-SHA-256: give the plaintext or a SCRAM verifier".into())
            }
            (AuthMethod::Md5, _) => {
                Err("is a SCRAM verifier, which cannot check md5: give the plaintext or an md5 hash".into())
            }
        }
    }

    /// Whether this secret can check a client authenticating with `method`.
    pub fn can_check(&self, method: AuthMethod) -> bool {
        match method {
            AuthMethod::Trust => true,
            AuthMethod::ScramSha256 => self.scram().is_some(),
            AuthMethod::Md5 => self.md5().is_some(),
        }
    }

    /// The plaintext, when configured as such.
    pub fn plaintext(&self) -> Option<&str> {
        match self {
            Secret::Plain { password, .. } => Some(password),
            _ => None,
        }
    }

    fn scram(&self) -> Option<&ScramVerifier> {
        match self {
            Secret::Plain { scram, .. } | Secret::Scram(scram) => Some(scram),
            _ => None,
        }
    }

    fn md5(&self) -> Option<&str> {
        match self {
            Secret::Plain { md5, .. } | Secret::Md5(md5) => Some(md5),
            _ => None,
        }
    }
}

/// Authenticates a client that named `name` with `method` (the access rules' choice, or
/// the user's own); `user` is its configuration, if any.
/// An unknown user goes through the same exchange as a known one and fails the same way.
/// Over TLS, `channel_binding` is the certificate (PEM) the client was shown: SCRAM is
/// then offered with channel binding too (SCRAM-SHA-256-PLUS, tls-server-end-point).
pub async fn authenticate_client<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    name: &str,
    (user, method): (Option<&User>, AuthMethod),
    channel_binding: Option<&[u8]>,
) -> Result<(), ProxyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let fail = || ProxyError::AuthFailed(name.to_owned());
    let mut out = BytesMut::new();
    match method {
        AuthMethod::Trust => Ok(()),
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            encode::auth(&mut out, AUTH_MD5, &salt);
            flush_to(writer, &mut out).await?;
            let answer = read_password(reader).await?;
            let mut body = answer.as_slice();
            let given = read_cstr(&mut body).ok_or_else(fail)?;
            let stored = user.and_then(|u| u.secret.md5()).ok_or_else(fail)?;
            let mut hash = Md5::new();
            hash.update(&stored.as_bytes()[3..]);
            hash.update(salt);
            let expected = format!("md5{}", hex(&hash.finalize()));
            if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(fail())
            }
        }
        AuthMethod::ScramSha256 => {
            let verifier = user
                .and_then(|u| u.secret.scram().cloned())
                .unwrap_or_else(ScramVerifier::random);
            let mut scram = ScramServerAuth::new();
            let mechanisms = match channel_binding {
                Some(pem) => {
                    scram
                        .configure_certificate(pem)
                        .map_err(|e| ProxyError::Protocol(format!("channel binding: {e}")))?;
                    format!("{SCRAM_PLUS}\0{SCRAM}\0\0")
                }
                None => format!("{SCRAM}\0\0"),
            };
            encode::auth(&mut out, AUTH_SASL, mechanisms.as_bytes());
            flush_to(writer, &mut out).await?;
            let initial = read_password(reader).await?;
            let mut body = initial.as_slice();
            let mechanism = read_cstr(&mut body).ok_or_else(fail)?;
            let offered =
                mechanism == SCRAM || (mechanism == SCRAM_PLUS && channel_binding.is_some());
            if !offered || body.len() < 4 {
                return Err(ProxyError::Protocol(format!(
                    "client selected an invalid SASL authentication mechanism \"{mechanism}\""
                )));
            }
            let client_first = &body[4..];
            // The GS2 header must agree with the mechanism: binding data ("p=") with
            // -PLUS and only with it.
            if (mechanism == SCRAM_PLUS) != client_first.starts_with(b"p=") {
                return Err(ProxyError::Protocol(
                    "malformed SCRAM message: channel binding flag does not match the mechanism"
                        .into(),
                ));
            }
            let (server_first, waiting) = scram
                .on_client_first_message_with_secret(client_first, verifier.secret())
                .map_err(|_| fail())?;
            encode::auth(&mut out, AUTH_SASL_CONTINUE, server_first.as_bytes());
            flush_to(writer, &mut out).await?;
            let client_final = read_password(reader).await?;
            let server_final = waiting
                .on_client_final_message(&client_final)
                .map_err(|_| fail())?;
            if user.is_none() {
                return Err(fail());
            }
            encode::auth(&mut out, AUTH_SASL_FINAL, server_final.as_bytes());
            flush_to(writer, &mut out).await?;
            Ok(())
        }
    }
}

async fn read_password<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> Result<Vec<u8>, ProxyError> {
    match reader.next().await? {
        Some(frame) if frame.tag == b'p' => Ok(frame.body().to_vec()),
        Some(frame) => Err(ProxyError::Protocol(format!(
            "expected password response, got message type \"{}\"",
            frame.tag.escape_ascii()
        ))),
        None => Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

/// Server-side authentication state while pgsplit logs in to a server.
pub enum ServerAuth {
    /// No exchange in progress.
    Idle,
    /// A SCRAM exchange waiting for SASLContinue / SASLFinal.
    Scram(Box<ScramSha256>),
}

impl ServerAuth {
    /// Answers one Authentication request from a server; `Ok(true)` once it said AuthenticationOk.
    pub fn respond(
        &mut self,
        body: &[u8],
        user: &str,
        password: &str,
        out: &mut BytesMut,
    ) -> Result<bool, String> {
        let (kind, payload) = body
            .split_first_chunk::<4>()
            .map(|(k, p)| (i32::from_be_bytes(*k), p))
            .ok_or("short authentication request")?;
        match kind {
            AUTH_OK => return Ok(true),
            AUTH_CLEARTEXT => {
                let mut pw = password.as_bytes().to_vec();
                pw.push(0);
                encode::password(out, &pw);
            }
            AUTH_MD5 => {
                let salt: [u8; 4] = payload.try_into().map_err(|_| "bad md5 salt")?;
                let mut hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    password.as_bytes(),
                    salt,
                )
                .into_bytes();
                hash.push(0);
                encode::password(out, &hash);
            }
            AUTH_SASL => {
                let offers_scram = payload.split(|b| *b == 0).any(|m| m == SCRAM.as_bytes());
                if !offers_scram {
                    return Err("server offers no SASL mechanism pgsplit supports".into());
                }
                let scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                encode::sasl_initial(out, SCRAM, scram.message());
                *self = ServerAuth::Scram(Box::new(scram));
            }
            AUTH_SASL_CONTINUE => {
                let ServerAuth::Scram(scram) = self else {
                    return Err("unexpected SASLContinue".into());
                };
                scram.update(payload).map_err(|e| e.to_string())?;
                encode::password(out, scram.message());
            }
            AUTH_SASL_FINAL => {
                let ServerAuth::Scram(scram) = self else {
                    return Err("unexpected SASLFinal".into());
                };
                scram
                    .finish(payload)
                    .map_err(|e| format!("server signature rejected: {e}"))?;
            }
            other => {
                return Err(format!(
                    "server asked for unsupported authentication method {other}"
                ))
            }
        }
        Ok(false)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_passwords_fit_their_method() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let md5 = postgres_protocol::password::md5(b"pw", "app");
        let cases = [
            ("pw", AuthMethod::ScramSha256, true),
            ("pw", AuthMethod::Md5, true),
            (verifier.as_str(), AuthMethod::ScramSha256, true),
            (verifier.as_str(), AuthMethod::Md5, false),
            (md5.as_str(), AuthMethod::Md5, true),
            (md5.as_str(), AuthMethod::ScramSha256, false),
            ("", AuthMethod::Trust, true),
            ("", AuthMethod::ScramSha256, false),
            ("SCRAM-SHA-256$garbage", AuthMethod::ScramSha256, false),
        ];
        for (password, method, ok) in cases {
            assert_eq!(
                Secret::from_config("app", password, method).is_ok(),
                ok,
                "{password:?} {method:?}"
            );
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Secret::from_config("app", "hunter2", AuthMethod::ScramSha256).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
