//! TLS with rustls (the `ring` provider: nothing beyond a C compiler to build): toward
//! clients, the acceptor built from the configured certificate and key and the client
//! stream that is plain TCP or TLS after an SSLRequest; toward servers, libpq's `sslmode`
//! meanings (`server_tls`) and the server stream.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::client::TlsStream as ClientTlsStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ServerTlsMode, TlsMode};
use crate::error::WriteStalled;

/// What serves TLS clients: the acceptor, and the certificate as PEM for SCRAM channel
/// binding (`tls-server-end-point` hashes the certificate the client saw).
pub struct ClientTls {
    /// Handshakes with clients.
    pub acceptor: TlsAcceptor,
    /// The certificate chain file's contents, when channel binding can use it (its
    /// signature algorithm has a hash binding is defined for).
    pub cert_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("channel_binding", &self.cert_pem.is_some())
            .finish_non_exhaustive()
    }
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
        let roots = root_store(&ca_file).map_err(|m| ("tls_ca_file".to_owned(), m))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
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
    let binding = pgwire::api::auth::sasl::scram::ScramServerAuth::new()
        .configure_certificate(&cert_pem)
        .map(|_| cert_pem)
        .map_err(|e| {
            tracing::warn!(file = %cert_file, error = %e, "SCRAM channel binding is not offered with this certificate");
        })
        .ok();
    Ok(Some(ClientTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        cert_pem: binding,
    }))
}

/// The CA certificates in a PEM file, as trust anchors.
fn root_store(file: &str) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(file)? {
        roots.add(cert).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(Arc::new(roots))
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

    /// The common name (CN) of the client's certificate: rustls only completes a
    /// handshake with one that chains to `tls_ca_file`, so it is verified.
    pub fn peer_common_name(&self) -> Option<String> {
        match self {
            ClientStream::Plain(_) => None,
            ClientStream::Tls(s) => common_name(s.get_ref().1.peer_certificates()?.first()?),
        }
    }

    /// Separate read and write halves; plain TCP splits without a lock. Writes that make
    /// no progress for `write_timeout` fail (`Duration::ZERO`: never).
    pub fn split(self, write_timeout: Duration) -> (ClientRead, ClientWrite) {
        let (read, write) = match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Plain(r), ClientSink::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ClientRead::Tls(r), ClientSink::Tls(w))
            }
        };
        (read, StallGuard::new(write, write_timeout))
    }
}

/// The last common name (CN, OID 2.5.4.3) in a DER certificate's subject. A small DER
/// walk rather than an X.509 crate: only this one field is needed, and malformed input
/// yields `None`, never a panic.
fn common_name(cert: &[u8]) -> Option<String> {
    const CN: [u8; 3] = [0x55, 0x04, 0x03];
    let (_, certificate, _) = der_element(cert)?;
    let (_, tbs, _) = der_element(certificate)?;
    // TBSCertificate: [0] version (optional), serial, signature, issuer, validity, subject.
    let mut fields = tbs;
    let (tag, _, rest) = der_element(fields)?;
    if tag == 0xa0 {
        fields = rest;
    }
    for _ in 0..4 {
        fields = der_element(fields)?.2;
    }
    let (_, mut rdns, _) = der_element(fields)?;
    let mut found = None;
    // Name: SEQUENCE OF SET OF SEQUENCE { type OID, value }.
    while !rdns.is_empty() {
        let (_, mut attributes, rest) = der_element(rdns)?;
        rdns = rest;
        while !attributes.is_empty() {
            let (_, attribute, rest) = der_element(attributes)?;
            attributes = rest;
            let (tag, oid, value) = der_element(attribute)?;
            if tag == 0x06 && oid == CN {
                let (_, text, _) = der_element(value)?;
                found = Some(String::from_utf8(text.to_vec()).ok()?);
            }
        }
    }
    found
}

/// One DER element of `input`: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length bytes; certificates need at most 4.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The reading half of a [`ClientStream`].
pub enum ClientRead {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half of a [`ClientStream`], cut off when the client stops reading.
pub type ClientWrite = StallGuard<ClientSink>;

/// The writing half of a [`ClientStream`] itself.
pub enum ClientSink {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS.
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

/// A writer whose writes fail once they have made no progress for a time limit, so a
/// session whose client stops reading ends instead of holding its server connection
/// forever. The timer exists only while a write waits: writes that complete at once
/// (nearly all) register nothing.
pub struct StallGuard<W> {
    inner: W,
    /// `None`: writes may wait forever.
    limit: Option<Duration>,
    /// Armed by the first write that had to wait, dropped at the next progress. Once it
    /// fired it stays, so later waiting writes fail at once instead of waiting again.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<W> StallGuard<W> {
    /// Guards `inner` with `limit` (`Duration::ZERO`: no limit).
    pub fn new(inner: W, limit: Duration) -> StallGuard<W> {
        StallGuard {
            inner,
            limit: (!limit.is_zero()).then_some(limit),
            timer: None,
        }
    }

    /// Passes on a result of the inner writer: readiness is progress and disarms the
    /// timer; waiting arms it, and fails once it has fired.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            WriteStalled(limit),
        )))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallGuard<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, polled)
    }
}

/// AsyncRead / AsyncWrite for an enum whose two variants wrap plain and TLS streams.
macro_rules! either_io {
    (read $name:ident) => {
        impl AsyncRead for $name {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $name::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
    (write $name:ident) => {
        impl AsyncWrite for $name {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $name::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_flush(cx),
                    $name::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $name::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

either_io!(read ClientStream);
either_io!(write ClientStream);
either_io!(read ClientRead);
either_io!(write ClientSink);
either_io!(read ServerRead);
either_io!(write ServerWrite);

/// The reading half of a server connection.
pub enum ServerRead {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<ClientTlsStream<TcpStream>>),
}

/// The writing half of a server connection.
pub enum ServerWrite {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS.
    Tls(WriteHalf<ClientTlsStream<TcpStream>>),
}

/// TLS toward one server, as `server_tls` says (libpq's `sslmode` meanings).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The mode.
    pub mode: ServerTlsMode,
    /// Verification as the mode wants it; `None` when TLS is off.
    config: Option<Arc<rustls::ClientConfig>>,
}

impl ServerTls {
    /// No TLS.
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: ServerTlsMode::Disable,
            config: None,
        }
    }

    /// TLS in `mode`, verifying against the CA certificates in `ca_file` where the mode
    /// verifies (verify-ca, verify-full). Errors say what is wrong with the file.
    pub fn new(mode: ServerTlsMode, ca_file: Option<&str>) -> Result<ServerTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let roots = || root_store(ca_file.ok_or("a CA file is required to verify servers")?);
        let config = match mode {
            ServerTlsMode::Disable => return Ok(ServerTls::disabled()),
            // libpq: with a root certificate at hand, require verifies like verify-ca.
            ServerTlsMode::Prefer | ServerTlsMode::Require
                if !(mode == ServerTlsMode::Require && ca_file.is_some()) =>
            {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verify::Unverified(provider)))
                    .with_no_client_auth()
            }
            ServerTlsMode::Prefer | ServerTlsMode::Require | ServerTlsMode::VerifyCa => {
                let chain =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots()?, provider)
                        .build()
                        .map_err(|e| e.to_string())?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verify::ChainOnly(chain)))
                    .with_no_client_auth()
            }
            ServerTlsMode::VerifyFull => builder
                .with_root_certificates(roots()?)
                .with_no_client_auth(),
        };
        Ok(ServerTls {
            mode,
            config: Some(Arc::new(config)),
        })
    }

    /// Opens the connection's TLS when the mode asks for it: SSLRequest, then the
    /// handshake on `S`; on `N` plain TCP where the mode allows it.
    pub async fn connect(
        &self,
        mut tcp: TcpStream,
        host: &str,
    ) -> Result<(ServerRead, ServerWrite), String> {
        let Some(config) = &self.config else {
            let (r, w) = tcp.into_split();
            return Ok((ServerRead::Plain(r), ServerWrite::Plain(w)));
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        tcp.write_all(&ssl_request)
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        match answer[0] {
            b'S' => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("{host} is not a server name TLS can check: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                let (r, w) = tokio::io::split(tls);
                Ok((ServerRead::Tls(r), ServerWrite::Tls(w)))
            }
            b'N' if self.mode == ServerTlsMode::Prefer => {
                let (r, w) = tcp.into_split();
                Ok((ServerRead::Plain(r), ServerWrite::Plain(w)))
            }
            b'N' => Err(format!(
                "the server does not accept TLS, and server_tls is \"{}\"",
                self.mode.name()
            )),
            other => Err(format!(
                "unexpected answer {:?} to SSLRequest",
                char::from(other)
            )),
        }
    }
}

/// Certificate verifiers for the modes webpki's own does not cover.
mod verify {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    /// `prefer` / `require`: encrypted, the certificate unchecked (as libpq without a root
    /// certificate); the handshake signatures are still verified.
    #[derive(Debug)]
    pub struct Unverified(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for Unverified {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `verify-ca`: the chain must lead to the CA; the name is not checked.
    #[derive(Debug)]
    pub struct ChainOnly(pub Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_limit_and_later_ones_at_once() {
        // A 64-byte pipe whose reading end is kept but never read.
        let (_reader, writer) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(writer, LIMIT);
        let started = tokio::time::Instant::now();
        let e = guarded.write_all(&[0; 1024]).await.expect_err("stalled");
        assert!(
            started.elapsed() >= LIMIT,
            "failed after {:?}",
            started.elapsed()
        );
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let e = crate::error::ProxyError::from(e);
        assert!(
            matches!(
                e,
                crate::error::ProxyError::ClientStalled(WriteStalled(LIMIT))
            ),
            "{e:?}"
        );
        let again = tokio::time::Instant::now();
        guarded
            .write_all(&[0; 1024])
            .await
            .expect_err("still stalled");
        assert!(
            again.elapsed() < LIMIT,
            "waited again: {:?}",
            again.elapsed()
        );
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        let (mut reader, writer) = tokio::io::duplex(64);
        let drain = tokio::spawn(async move {
            let mut buf = [0; 64];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(LIMIT / 4).await;
                total += reader.read(&mut buf).await.expect("read");
            }
            total
        });
        let mut guarded = StallGuard::new(writer, LIMIT);
        let started = tokio::time::Instant::now();
        guarded
            .write_all(&[0; 1024])
            .await
            .expect("a reader that keeps reading");
        assert!(started.elapsed() > LIMIT * 2, "the writes did wait, in all");
        assert_eq!(drain.await.expect("reader"), 1024);
    }

    #[tokio::test]
    async fn a_zero_limit_lets_a_write_wait_forever() {
        let (_reader, writer) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(writer, Duration::ZERO);
        let waited = tokio::time::timeout(LIMIT * 2, guarded.write_all(&[0; 1024])).await;
        assert!(waited.is_err(), "the write ended: {waited:?}");
    }

    fn certificate(cn: Option<&str>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "pgsplit tests");
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        assert_eq!(
            common_name(&certificate(Some("app"))),
            Some("app".to_owned())
        );
        assert_eq!(common_name(&certificate(None)), None);
    }

    #[test]
    fn malformed_certificates_have_no_common_name() {
        let der = certificate(Some("app"));
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert_eq!(common_name(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
