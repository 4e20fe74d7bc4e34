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
        error_fields(
            out,
            &[(b'S', sev), (b'V', sev), (b'C', code), (b'M', message)],
        );
    }

    /// ErrorResponse with the given fields, in order.
    pub fn error_fields(out: &mut BytesMut, fields: &[(u8, &str)]) {
        with_len(out, b'E', |b| {
            for &(field, value) in fields {
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

    /// Parse of `sql` as statement `name`, no parameter types given.
    pub fn parse(out: &mut BytesMut, name: &str, sql: &str) {
        with_len(out, b'P', |b| {
            cstr(b, name);
            cstr(b, sql);
            b.put_i16(0);
        });
    }

    /// Bind of statement `name` to the unnamed portal: no parameters, text results.
    pub fn bind_plain(out: &mut BytesMut, name: &str) {
        with_len(out, b'B', |b| {
            cstr(b, "");
            cstr(b, name);
            b.put_i16(0);
            b.put_i16(0);
            b.put_i16(0);
        });
    }

    /// Execute of the unnamed portal, every row.
    pub fn execute_all(out: &mut BytesMut) {
        with_len(out, b'E', |b| {
            cstr(b, "");
            b.put_i32(0);
        });
    }

    /// Sync.
    pub fn sync(out: &mut BytesMut) {
        with_len(out, b'S', |_| {});
    }

    /// Flush.
    pub fn flush(out: &mut BytesMut) {
        with_len(out, b'H', |_| {});
    }

    /// ParseComplete.
    pub fn parse_complete(out: &mut BytesMut) {
        with_len(out, b'1', |_| {});
    }

    /// CloseComplete.
    pub fn close_complete(out: &mut BytesMut) {
        with_len(out, b'3', |_| {});
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
mod tests;
