//! PostgreSQL v3 wire protocol: framing in both directions, the startup packet,
//! and the few messages pgsplit writes itself. Everything else is forwarded as raw bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ProxyError;
pub use crate::error::{ErrorFields, Severity};

/// Protocol version 3.0, the only one pgsplit speaks.
pub const PROTOCOL_V3: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH), the default
/// of `max_startup_packet_size`.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// What a client sends before any regular message.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupRequest {
    /// SSLRequest: the client asks for TLS.
    Ssl,
    /// GSSENCRequest: the client asks for GSSAPI encryption.
    GssEnc,
    /// CancelRequest for the session holding this key.
    Cancel(BackendKey),
    /// StartupMessage with its parameters (user, database, options, GUCs)
    /// and the protocol minor version the client asked for.
    Startup {
        /// Parameters in the order the client sent them.
        params: Vec<(String, String)>,
        /// Requested minor version of protocol 3; pgsplit negotiates down to 0.
        minor: u16,
    },
}

/// Process id and secret that identify a session for cancel requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// Process id (on a server) or session id (in pgsplit).
    pub pid: i32,
    /// Secret that authorises a cancel request.
    pub secret: i32,
}

/// Reads one startup-phase packet (length-prefixed, no type byte) of at most `max_len`
/// bytes, length included.
pub async fn read_startup<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> Result<StartupRequest, ProxyError> {
    let len = r.read_i32().await? as i64;
    if len == i64::from(i32::from_be_bytes([b'X', 0, 0, 0])) && r.read_u8().await.ok() == Some(4) {
        // A Terminate before any startup packet (node-postgres closing a connection that
        // is still opening): the client is leaving, and PostgreSQL closes without a word.
        return Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !(8..=max_len as i64).contains(&len) {
        // PostgreSQL's wording first, then what an operator needs to act on it.
        return Err(ProxyError::Protocol(format!(
            "invalid length of startup packet: {len} bytes (between 8 and max_startup_packet_size, {max_len})"
        )));
    }
    let want = len as usize - 4;
    // Read through `take` rather than into a zeroed buffer of the claimed size: memory
    // follows the bytes that arrive.
    let mut body = Vec::new();
    r.take(want as u64).read_to_end(&mut body).await?;
    if body.len() < want {
        return Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    parse_startup(&body)
}

fn parse_startup(mut body: &[u8]) -> Result<StartupRequest, ProxyError> {
    let code = body.get_i32();
    match code {
        SSL_REQUEST => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST => Ok(StartupRequest::GssEnc),
        CANCEL_REQUEST if body.len() == 8 => Ok(StartupRequest::Cancel(BackendKey {
            pid: body.get_i32(),
            secret: body.get_i32(),
        })),
        _ if code >> 16 == 3 => {
            let mut params = Vec::new();
            let mut fields = body.split(|b| *b == 0);
            loop {
                let key = fields.next().ok_or_else(startup_layout)?;
                if key.is_empty() {
                    break;
                }
                let value = fields.next().ok_or_else(startup_layout)?;
                params.push((utf8(key)?, utf8(value)?));
            }
            Ok(StartupRequest::Startup {
                params,
                minor: (code & 0xffff) as u16,
            })
        }
        _ if code >> 16 != 1234 => Err(ProxyError::Unsupported(format!(
            "unsupported frontend protocol {}.{}: server supports 3.0",
            code >> 16,
            code & 0xffff
        ))),
        _ => Err(startup_layout()),
    }
}

fn startup_layout() -> ProxyError {
    ProxyError::Protocol("invalid startup packet layout: expected terminator as last byte".into())
}

fn utf8(b: &[u8]) -> Result<String, ProxyError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| ProxyError::Protocol("invalid UTF-8 in startup packet".into()))
}

/// One protocol message: its type byte and the whole frame (type, length, body).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Message type byte.
    pub tag: u8,
    /// The complete message as it travels on the wire.
    pub raw: Bytes,
}

impl Frame {
    /// The message body after the type byte and length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// A buffer that grew past this for one large message is given back once empty.
const KEEP_BUFFER: usize = 64 * 1024;

/// Splits a byte stream into frames; owns its buffer so reads are cancel-safe in `select!`.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
    /// Bytes asked of each read.
    chunk: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a server connection: reads in 8 KiB chunks, for large results.
    pub fn new(inner: R, max_len: usize) -> Self {
        Self::with_chunk(inner, max_len, 8 * 1024)
    }

    /// Wraps a reader that reads `chunk` bytes at a time; the buffer is allocated on the
    /// first read, so thousands of idle clients cost little.
    pub fn with_chunk(inner: R, max_len: usize, chunk: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            max_len,
            chunk,
        }
    }

    /// Next frame, or `None` at a clean end of stream between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, ProxyError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(Some(frame));
            }
            if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER {
                self.buf = BytesMut::new();
            }
            if self.buf.capacity() - self.buf.len() < self.chunk / 2 {
                self.buf.reserve(self.growth());
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProxyError::Protocol(
                        "connection closed inside a message".into(),
                    ))
                };
            }
        }
    }

    /// Resolves when the peer closes its end (`Ok`) or the socket fails, while the caller
    /// is not taking frames: bytes that arrive meanwhile are kept for `next`, up to about
    /// `limit`; with that much buffered it waits for good, so a peer that keeps sending
    /// is held back by TCP rather than by memory.
    pub async fn closed(&mut self, limit: usize) -> Result<(), ProxyError> {
        loop {
            if self.buf.len() >= limit {
                return std::future::pending().await;
            }
            if self.buf.capacity() - self.buf.len() < self.chunk / 2 {
                self.buf.reserve(self.growth());
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Ok(());
            }
        }
    }

    /// The next frame when `reading`; otherwise `None` once the peer has closed (see
    /// [`FrameReader::closed`]), so one select branch serves both.
    pub async fn next_or_closed(
        &mut self,
        reading: bool,
        limit: usize,
    ) -> Result<Option<Frame>, ProxyError> {
        if reading {
            self.next().await
        } else {
            self.closed(limit).await.map(|()| None)
        }
    }

    /// The largest message it accepts (`max_message_size` when it was made).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Whether any bytes are buffered, complete frame or not.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Whether another complete frame is already buffered (so a writer can batch).
    pub fn has_frame(&self) -> bool {
        self.buf.len() >= 5 && {
            let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            len >= 4 && self.buf.len() > len as usize
        }
    }

    /// How much room to add before the next read. Memory grows with the bytes actually
    /// received, never with a length the peer merely announced: a client that claims a
    /// 1 GB message and sends nothing costs one chunk. Doubling what is buffered keeps a
    /// genuinely large message to a few reallocations; the rest of the frame, when it is
    /// known to be smaller, caps the step.
    fn growth(&self) -> usize {
        let step = self.chunk.max(self.buf.len());
        match self.missing() {
            Some(missing) => step.min(missing.max(self.chunk)),
            None => step,
        }
    }

    /// Bytes still to come for the frame at the front, once its header is buffered.
    fn missing(&self) -> Option<usize> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let total = usize::try_from(len).ok()?.saturating_add(1);
        Some(total.saturating_sub(self.buf.len()))
    }

    fn try_frame(&mut self) -> Result<Option<Frame>, ProxyError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len < 4 || len as usize > self.max_len {
            return Err(ProxyError::Protocol(format!(
                "invalid message length {len} for message type \"{}\" (max_message_size is {})",
                self.buf[0].escape_ascii(),
                self.max_len
            )));
        }
        let total = len as usize + 1;
        if self.buf.len() < total {
            // No reservation of `total` here: the length is the peer's claim, and memory
            // must follow the bytes that arrive (see `growth`).
            return Ok(None);
        }
        let raw = self.buf.split_to(total).freeze();
        Ok(Some(Frame { tag: raw[0], raw }))
    }
}

/// Builders for the messages pgsplit writes itself.
pub mod encode {
    use super::*;

    fn with_len(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        out.put_u8(tag);
        let at = out.len();
        out.put_i32(0);
        body(out);
        let len = (out.len() - at) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn cstr(out: &mut BytesMut, s: &str) {
        out.put_slice(s.as_bytes());
        out.put_u8(0);
    }

    /// ErrorResponse with severity, SQLSTATE and message.
    pub fn error(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
        let sev = match severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        with_len(out, b'E', |b| {
            for (field, value) in [(b'S', sev), (b'V', sev), (b'C', code), (b'M', message)] {
                b.put_u8(field);
                cstr(b, value);
            }
            b.put_u8(0);
        });
    }

    /// NoticeResponse: `severity` is NOTICE or WARNING.
    pub fn notice(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
        with_len(out, b'N', |b| {
            for (field, value) in [
                (b'S', severity),
                (b'V', severity),
                (b'C', code),
                (b'M', message),
            ] {
                b.put_u8(field);
                cstr(b, value);
            }
            b.put_u8(0);
        });
    }

    /// RowDescription of text columns.
    pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
        with_len(out, b'T', |b| {
            b.put_i16(i16::try_from(columns.len()).unwrap_or(i16::MAX));
            for name in columns {
                cstr(b, name);
                b.put_i32(0); // table oid
                b.put_i16(0); // column number
                b.put_i32(25); // text
                b.put_i16(-1); // variable length
                b.put_i32(-1); // no type modifier
                b.put_i16(0); // text format
            }
        });
    }

    /// DataRow of text values; `None` is NULL.
    pub fn data_row(out: &mut BytesMut, values: &[Option<String>]) {
        with_len(out, b'D', |b| {
            b.put_i16(i16::try_from(values.len()).unwrap_or(i16::MAX));
            for value in values {
                match value {
                    Some(v) => {
                        b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                        b.put_slice(v.as_bytes());
                    }
                    None => b.put_i32(-1),
                }
            }
        });
    }

    /// EmptyQueryResponse, for a query string with no statement.
    pub fn empty_query(out: &mut BytesMut) {
        with_len(out, b'I', |_| {});
    }

    /// CommandComplete with a tag.
    pub fn command_complete(out: &mut BytesMut, tag: &str) {
        with_len(out, b'C', |b| cstr(b, tag));
    }

    /// Authentication request of the given kind with extra payload.
    pub fn auth(out: &mut BytesMut, kind: i32, payload: &[u8]) {
        with_len(out, b'R', |b| {
            b.put_i32(kind);
            b.put_slice(payload);
        });
    }

    /// ParameterStatus.
    pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
        with_len(out, b'S', |b| {
            cstr(b, name);
            cstr(b, value);
        });
    }

    /// BackendKeyData.
    pub fn backend_key(out: &mut BytesMut, key: BackendKey) {
        with_len(out, b'K', |b| {
            b.put_i32(key.pid);
            b.put_i32(key.secret);
        });
    }

    /// ReadyForQuery with a transaction status byte.
    pub fn ready_for_query(out: &mut BytesMut, status: u8) {
        with_len(out, b'Z', |b| b.put_u8(status));
    }

    /// StartupMessage (protocol 3.0) with parameters.
    pub fn startup(out: &mut BytesMut, params: &[(&str, &str)]) {
        let at = out.len();
        out.put_i32(0);
        out.put_i32(PROTOCOL_V3);
        for (k, v) in params {
            cstr(out, k);
            cstr(out, v);
        }
        out.put_u8(0);
        let len = (out.len() - at) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// CancelRequest packet for a server's key.
    pub fn cancel_request(out: &mut BytesMut, key: BackendKey) {
        out.put_i32(16);
        out.put_i32(CANCEL_REQUEST);
        out.put_i32(key.pid);
        out.put_i32(key.secret);
    }

    /// PasswordMessage / SASLResponse: a `p` message with a raw payload.
    pub fn password(out: &mut BytesMut, payload: &[u8]) {
        with_len(out, b'p', |b| b.put_slice(payload));
    }

    /// SASLInitialResponse for a mechanism.
    pub fn sasl_initial(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
        with_len(out, b'p', |b| {
            cstr(b, mechanism);
            b.put_i32(data.len() as i32);
            b.put_slice(data);
        });
    }

    /// NegotiateProtocolVersion: newest minor version supported and options not recognised.
    pub fn negotiate_version(out: &mut BytesMut, minor: i32, unrecognized: &[&str]) {
        with_len(out, b'v', |b| {
            b.put_i32(minor);
            b.put_i32(unrecognized.len() as i32);
            for option in unrecognized {
                cstr(b, option);
            }
        });
    }

    /// Simple Query.
    pub fn query(out: &mut BytesMut, sql: &str) {
        with_len(out, b'Q', |b| cstr(b, sql));
    }

    /// A simple Query as a frame, for a request pgsplit makes in a client's place.
    pub fn query_frame(sql: &str) -> Frame {
        let mut out = BytesMut::new();
        query(&mut out, sql);
        Frame {
            tag: b'Q',
            raw: out.freeze(),
        }
    }

    /// Sync.
    pub fn sync(out: &mut BytesMut) {
        with_len(out, b'S', |_| {});
    }

    /// Flush.
    pub fn flush(out: &mut BytesMut) {
        with_len(out, b'H', |_| {});
    }

    /// Terminate.
    pub fn terminate(out: &mut BytesMut) {
        with_len(out, b'X', |_| {});
    }
}

impl ProxyError {
    /// Appends this error as a FATAL ErrorResponse (or the server's own frame).
    pub fn encode_fatal(&self, out: &mut BytesMut) {
        match self {
            ProxyError::Server { raw, .. } => out.extend_from_slice(raw),
            _ => encode::error(out, Severity::Fatal, self.sqlstate(), &self.to_string()),
        }
    }
}

/// Reads a NUL-terminated string from the front of `buf`.
pub fn read_cstr(buf: &mut &[u8]) -> Option<String> {
    let end = buf.iter().position(|b| *b == 0)?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Some(s)
}

/// Writes buffered bytes and clears the buffer.
pub async fn flush_to<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        w.write_all(out).await?;
        // TLS buffers what it accepts: flush, or the last bytes may wait for the next write.
        w.flush().await?;
        out.clear();
        if out.capacity() > KEEP_BUFFER {
            *out = BytesMut::new();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((8 + rest.len()) as i32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    #[tokio::test]
    async fn startup_packets_decode() {
        let cases: Vec<(Vec<u8>, Result<StartupRequest, &str>)> = vec![
            (packet(SSL_REQUEST, b""), Ok(StartupRequest::Ssl)),
            (packet(GSSENC_REQUEST, b""), Ok(StartupRequest::GssEnc)),
            (
                packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]),
                Ok(StartupRequest::Cancel(BackendKey { pid: 7, secret: 9 })),
            ),
            (
                packet(PROTOCOL_V3, b"user\0app\0database\0db\0\0"),
                Ok(StartupRequest::Startup {
                    params: vec![
                        ("user".into(), "app".into()),
                        ("database".into(), "db".into()),
                    ],
                    minor: 0,
                }),
            ),
            (
                packet(PROTOCOL_V3 + 2, b"user\0app\0\0"),
                Ok(StartupRequest::Startup {
                    params: vec![("user".into(), "app".into())],
                    minor: 2,
                }),
            ),
            (packet(PROTOCOL_V3, b"user\0app"), Err("08P01")),
            (packet(2 << 16, b""), Err("0A000")),
            (vec![0, 0, 0, 3, 1, 2, 3], Err("08P01")),
            (vec![0x7f, 0, 0, 0], Err("08P01")),
            (vec![b'X', 0, 0, 0, 5], Err("08P01")),
        ];
        for (bytes, want) in cases {
            let got = read_startup(&mut &bytes[..], MAX_STARTUP_PACKET).await;
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err(e), Err(code)) => assert_eq!(e.sqlstate(), code, "{e}"),
                (g, w) => panic!("bytes {bytes:?}: got {g:?}, want {w:?}"),
            }
        }
        // A Terminate instead of a startup packet is a client leaving: nothing to answer.
        let got = read_startup(&mut &[b'X', 0, 0, 0, 4][..], MAX_STARTUP_PACKET).await;
        assert!(
            got.as_ref().is_err_and(ProxyError::is_disconnect),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn frames_split_and_reject_absurd_lengths() {
        let mut data = BytesMut::new();
        encode::query(&mut data, "SELECT 1");
        encode::terminate(&mut data);
        let mut reader = FrameReader::new(&data[..], 1024);
        let q = reader.next().await.unwrap().unwrap();
        assert_eq!((q.tag, q.body()), (b'Q', &b"SELECT 1\0"[..]));
        assert!(reader.has_frame());
        assert_eq!(reader.next().await.unwrap().unwrap().tag, b'X');
        assert!(reader.next().await.unwrap().is_none());

        let huge = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        let err = FrameReader::new(&huge[..], 1024).next().await.unwrap_err();
        assert_eq!(err.sqlstate(), "08P01");
        let negative = [b'Q', 0, 0, 0, 2];
        assert!(FrameReader::new(&negative[..], 1024).next().await.is_err());
    }

    #[tokio::test]
    async fn closed_sees_the_peer_leave_and_keeps_what_came_before() {
        let mut data = BytesMut::new();
        encode::query(&mut data, "SELECT 1");
        let mut reader = FrameReader::with_chunk(&data[..], 1024, 16);
        reader.closed(1024).await.unwrap();
        assert_eq!(reader.next().await.unwrap().map(|f| f.tag), Some(b'Q'));
        assert!(reader.next().await.unwrap().is_none());

        // Past the limit it reads no further: the peer is left to TCP's flow control.
        let mut reader = FrameReader::with_chunk(&data[..], 1024, 4);
        let wait = tokio::time::timeout(std::time::Duration::from_millis(50), reader.closed(4));
        assert!(wait.await.is_err(), "waits once the limit is buffered");
        assert!(reader.buf.len() < data.len());
    }

    #[test]
    fn error_fields_parse() {
        let mut out = BytesMut::new();
        encode::error(
            &mut out,
            Severity::Fatal,
            "3D000",
            "database \"x\" does not exist",
        );
        let f = ErrorFields::parse(&out[5..]);
        assert_eq!(f.code, "3D000");
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.message, "database \"x\" does not exist");
    }

    /// Property tests: whatever bytes arrive, in whatever pieces, decoding neither panics
    /// nor holds more memory than what arrived, and the pieces never change the outcome.
    mod props {
        use super::*;
        use futures_util::FutureExt;
        use proptest::prelude::*;
        use std::collections::VecDeque;
        use std::pin::Pin;
        use std::task::{Context, Poll};

        /// A socket that hands over the chunks pushed so far, one per read, then
        /// waits (`Pending`) until more are pushed or it is closed.
        #[derive(Default)]
        struct Trickle {
            chunks: VecDeque<Vec<u8>>,
            closed: bool,
        }

        impl AsyncRead for Trickle {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                let Some(mut chunk) = self.chunks.pop_front() else {
                    return if self.closed {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                };
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
                Poll::Ready(Ok(()))
            }
        }

        /// `data` cut at the given points (taken modulo its length).
        fn cut(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            at.push(0);
            at.push(data.len());
            at.sort_unstable();
            at.dedup();
            at.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
        }

        /// How a decode ended: the frames, then a clean end (`None`) or an error's SQLSTATE.
        type Outcome = (Vec<(u8, Vec<u8>)>, Option<String>);

        /// Decodes `chunks` as they arrive one by one, checking after every step that the
        /// buffer holds no more than twice what arrived plus two read chunks (64 bytes at least).
        fn decode_frames(chunks: Vec<Vec<u8>>, max_len: usize, chunk: usize) -> Outcome {
            let mut reader = FrameReader::with_chunk(Trickle::default(), max_len, chunk);
            let mut frames = Vec::new();
            let mut received = 0;
            let mut pending = chunks.into_iter();
            loop {
                match reader.next().now_or_never() {
                    Some(Ok(Some(f))) => {
                        assert!(f.raw.len() <= max_len + 1, "frame over the limit");
                        frames.push((f.tag, f.raw.to_vec()));
                    }
                    Some(Ok(None)) => return (frames, None),
                    Some(Err(e)) => return (frames, Some(e.sqlstate().to_owned())),
                    None => match pending.next() {
                        Some(c) => {
                            received += c.len();
                            reader.get_mut().chunks.push_back(c);
                        }
                        None => reader.get_mut().closed = true,
                    },
                }
                // A read into a full BytesMut grows it by at least 64 bytes (its
                // `chunk_mut`), whatever the read chunk.
                let held = reader.buf.capacity();
                assert!(
                    held <= 2 * received + 2 * chunk.max(64),
                    "buffer of {held} bytes after receiving {received}"
                );
            }
        }

        fn encode_frame(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag];
            v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            v.extend_from_slice(body);
            v
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_bytes_decode_the_same_whatever_the_chunking(
                data in proptest::collection::vec(any::<u8>(), 0..4096),
                cuts in proptest::collection::vec(any::<usize>(), 0..64),
                max_len in 4usize..2048,
                chunk in 1usize..2048,
            ) {
                let whole = decode_frames(vec![data.clone()], max_len, chunk);
                let pieces = decode_frames(cut(&data, &cuts), max_len, chunk);
                prop_assert_eq!(&whole, &pieces);
                // Only a protocol violation or a stream cut inside a message ends it.
                if let Some(code) = whole.1 {
                    prop_assert_eq!(code, "08P01");
                }
            }

            #[test]
            fn frames_round_trip_in_any_chunking(
                frames in proptest::collection::vec(
                    (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..3000)),
                    0..16,
                ),
                cuts in proptest::collection::vec(any::<usize>(), 0..64),
                chunk in 1usize..9000,
            ) {
                let wire: Vec<u8> = frames.iter().flat_map(|(t, b)| encode_frame(*t, b)).collect();
                let (got, end) = decode_frames(cut(&wire, &cuts), 4096, chunk);
                let want: Vec<(u8, Vec<u8>)> =
                    frames.iter().map(|(t, b)| (*t, encode_frame(*t, b))).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(end, None);
            }

            #[test]
            fn bad_lengths_fail_as_soon_as_the_header_arrives(
                tag in any::<u8>(),
                len in prop_oneof![i32::MIN..4, 4097..=i32::MAX],
            ) {
                let mut header = vec![tag];
                header.extend_from_slice(&len.to_be_bytes());
                let mut reader = FrameReader::with_chunk(Trickle::default(), 4096, 1024);
                reader.get_mut().chunks.push_back(header);
                // Nothing more arrives and the stream stays open: the error must not wait.
                match reader.next().now_or_never() {
                    Some(Err(e)) => prop_assert_eq!(e.sqlstate(), "08P01"),
                    other => prop_assert!(false, "length {} gave {:?}", len, other.map(|r| r.map(|f| f.map(|f| f.tag)))),
                }
            }

            #[test]
            fn a_huge_announced_message_costs_only_what_arrives(
                sent in 0usize..20_000,
                chunk in 1usize..8192,
            ) {
                // PostgreSQL's own limit: 1 GB may be announced; only `sent` bytes follow.
                let max = (1 << 30) - 2;
                let mut wire = vec![b'Q'];
                wire.extend_from_slice(&(max as i32).to_be_bytes());
                wire.extend(std::iter::repeat_n(b'x', sent));
                let mut reader = FrameReader::with_chunk(Trickle::default(), max, chunk);
                reader.get_mut().chunks.push_back(wire);
                prop_assert!(reader.next().now_or_never().is_none(), "a partial frame must wait");
                let held = reader.buf.capacity();
                prop_assert!(held <= 2 * (sent + 5) + 2 * chunk, "{} bytes held for {} received", held, sent + 5);
            }

            #[test]
            fn arbitrary_startup_packets_never_panic_and_ignore_chunking(
                body in proptest::collection::vec(any::<u8>(), 0..256),
                code in prop_oneof![
                    Just(PROTOCOL_V3), Just(PROTOCOL_V3 + 1), Just(SSL_REQUEST),
                    Just(GSSENC_REQUEST), Just(CANCEL_REQUEST), any::<i32>(),
                ],
                len_delta in prop_oneof![Just(0i64), -12i64..12, any::<i32>().prop_map(i64::from)],
                cuts in proptest::collection::vec(any::<usize>(), 0..16),
            ) {
                let len = (8 + body.len() as i64 + len_delta).clamp(i32::MIN.into(), i32::MAX.into()) as i32;
                let mut wire = len.to_be_bytes().to_vec();
                wire.extend_from_slice(&code.to_be_bytes());
                wire.extend_from_slice(&body);
                let whole = startup_outcome(vec![wire.clone()]);
                let pieces = startup_outcome(cut(&wire, &cuts));
                prop_assert_eq!(&whole, &pieces);
                if !(8..=MAX_STARTUP_PACKET as i64).contains(&i64::from(len)) {
                    prop_assert_eq!(whole, Err("08P01".to_owned()));
                }
            }
        }

        /// A startup packet read from `chunks` then end of stream: the request, or the
        /// error's SQLSTATE.
        fn startup_outcome(chunks: Vec<Vec<u8>>) -> Result<StartupRequest, String> {
            let mut socket = Trickle {
                chunks: chunks.into(),
                closed: true,
            };
            match read_startup(&mut socket, MAX_STARTUP_PACKET).now_or_never() {
                Some(r) => r.map_err(|e| e.sqlstate().to_owned()),
                None => Err("pending".into()),
            }
        }
    }
}
