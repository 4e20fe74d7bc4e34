//! Small wire-level helpers of the relay.

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use super::Slot;
use crate::error::ProxyError;
use crate::pool::Lease;
use crate::protocol::{read_cstr, Frame};

pub(super) async fn next_frame(conn: &mut Option<Lease>) -> Result<Option<Frame>, ProxyError> {
    match conn {
        Some(c) => c.server.reader.next().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn write_to(slot: &mut Slot, bytes: &[u8]) -> Result<(), ProxyError> {
    match slot.conn.as_mut() {
        Some(lease) => {
            lease.server.writer.write_all(bytes).await?;
            // TLS buffers what it accepts: flush, or the request may sit there.
            lease.server.writer.flush().await?;
            Ok(())
        }
        None => Err(ProxyError::NoPrimary),
    }
}

pub(super) fn query_text(body: &[u8]) -> &str {
    let body = body.strip_suffix(&[0]).unwrap_or(body);
    std::str::from_utf8(body).unwrap_or("")
}

/// The prepared statement a Bind or a Describe('S') names.
pub(super) fn statement_named(frame: &Frame) -> Option<String> {
    let mut body = frame.body();
    match frame.tag {
        b'B' => {
            read_cstr(&mut body)?;
            read_cstr(&mut body)
        }
        b'D' if body.first() == Some(&b'S') => {
            body = &body[1..];
            read_cstr(&mut body)
        }
        _ => None,
    }
}

/// Whether an ErrorResponse body is FATAL or PANIC (the server closes next).
pub(super) fn is_fatal(body: &[u8]) -> bool {
    matches!(
        crate::protocol::ErrorFields::parse(body).severity.as_str(),
        "FATAL" | "PANIC"
    )
}

/// The prepared statement a Close('S') names.
pub(super) fn closed_statement(frame: &Frame) -> Option<String> {
    let mut body = frame.body();
    if frame.tag != b'C' || body.first() != Some(&b'S') {
        return None;
    }
    body = &body[1..];
    read_cstr(&mut body)
}

/// A Describe (`b'D'`) or Close (`b'C'`) of the prepared statement `name`.
pub(super) fn encode_statement_message(out: &mut BytesMut, tag: u8, name: &str) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

/// An ErrorResponse with every mention of `ours` (a name pgsplit uses on the servers)
/// replaced by `client`'s, appended to `out`; returns its length.
pub(super) fn rename_in_error(raw: &[u8], ours: &str, client: &str, out: &mut BytesMut) -> usize {
    let body = raw.get(5..).unwrap_or_default();
    let mut renamed = Vec::with_capacity(body.len() + client.len());
    let mut rest = body;
    while let Some(at) = rest.windows(ours.len()).position(|w| w == ours.as_bytes()) {
        renamed.extend_from_slice(&rest[..at]);
        renamed.extend_from_slice(client.as_bytes());
        rest = &rest[at + ours.len()..];
    }
    renamed.extend_from_slice(rest);
    out.put_u8(b'E');
    out.put_i32((4 + renamed.len()) as i32);
    out.put_slice(&renamed);
    5 + renamed.len()
}

/// The first column of a DataRow body as text; None when it is NULL or not text.
pub(super) fn first_value(body: &[u8]) -> Option<&str> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(body.get(6..6 + len)?).ok()
}
