//! TLS toward clients: the acceptor built from the configured certificate and key
//! (rustls with the `ring` provider: nothing beyond a C compiler to build), and the
//! client stream that is plain TCP or TLS after an SSLRequest.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsMode};

/// What serves TLS clients: the acceptor, and the certificate as PEM for SCRAM channel
/// binding (`tls-server-end-point` hashes the certificate the client saw).
pub struct ClientTls {
    /// Handshakes with clients.
    pub acceptor: TlsAcceptor,
    /// The certificate chain file's contents.
    pub cert_pem: Vec<u8>,
}

/// Builds the client-side TLS from the configuration; `None` when TLS is disabled.
/// Errors name the key and the file.
pub fn acceptor(config: &Config) -> Result<Option<ClientTls>, (String, String)> {
    if config.tls_mode == TlsMode::Disable {
        return Ok(None);
    }
    let file = |key: &str, value: &Option<String>| {
        value.clone().ok_or_else(|| {
            (
                key.to_owned(),
                "required when tls_mode is not \"disable\"".to_owned(),
            )
        })
    };
    let cert_file = file("tls_cert_file", &config.tls_cert_file)?;
    let key_file = file("tls_key_file", &config.tls_key_file)?;
    let certs = certificates(&cert_file).map_err(|m| ("tls_cert_file".to_owned(), m))?;
    let cert_pem = std::fs::read(&cert_file)
        .map_err(|e| ("tls_cert_file".to_owned(), format!("{cert_file}: {e}")))?;
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| ("tls_key_file".to_owned(), format!("{key_file}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ("tls_mode".to_owned(), e.to_string()))?;
    let builder = if config.verify_client {
        let ca_file = file("tls_ca_file", &config.tls_ca_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(&ca_file).map_err(|m| ("tls_ca_file".to_owned(), m))? {
            roots
                .add(cert)
                .map_err(|e| ("tls_ca_file".to_owned(), format!("{ca_file}: {e}")))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ("tls_ca_file".to_owned(), e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let server = builder.with_single_cert(certs, key).map_err(|e| {
        (
            "tls_key_file".to_owned(),
            format!("does not fit the certificate: {e}"),
        )
    })?;
    Ok(Some(ClientTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        cert_pem,
    }))
}

fn certificates(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(Path::new(file))
        .map_err(|e| format!("{file}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{file}: no certificate in it"));
    }
    Ok(certs)
}

/// A client connection: plain TCP, or TLS once the client asked for it.
pub enum ClientStream {
    /// No encryption.
    Plain(TcpStream),
    /// TLS, after an SSLRequest.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Separate read and write halves; plain TCP splits without a lock.
    pub fn split(self) -> (ClientRead, ClientWrite) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Plain(r), ClientWrite::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
        }
    }
}

/// The reading half of a [`ClientStream`].
pub enum ClientRead {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half of a [`ClientStream`].
pub enum ClientWrite {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS.
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientRead::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientWrite::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientWrite::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientWrite::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
