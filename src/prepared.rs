//! Prepared statements shared between clients: a client's named statement maps to a
//! server-side statement named by pgsplit after its text and parameter types, so two
//! clients' `s1` never collide on a pooled connection and clients preparing the same
//! text share one server-side statement. Each server connection remembers which it
//! holds, least recently used first out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use lru::LruCache;

/// The registry is first pruned of statements no client holds any more when it reaches
/// this many entries.
const PRUNE_ABOVE: usize = 100_000;

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Statement {
    /// Unique for the life of the proxy.
    pub id: u64,
    /// Its name on the servers.
    pub name: String,
    /// A Parse message that creates it under that name.
    pub parse: Bytes,
}

/// Statements by text and parameter types, shared by every session.
#[derive(Default)]
pub struct Registry {
    by_text: Mutex<Interned>,
    next: AtomicU64,
}

/// The registry's map and when it is next pruned.
#[derive(Default)]
struct Interned {
    map: HashMap<Bytes, Arc<Statement>>,
    /// Size at which the next insert first prunes: twice what the last pruning left (at
    /// least [`PRUNE_ABOVE`]), so a pass over the map comes after as many inserts as it
    /// has entries and an insert costs O(1) amortized, however many statements clients
    /// hold. (Pruning at a fixed size made every insert scan the map once clients held
    /// more statements than that.)
    prune_at: usize,
    /// Pruning passes so far.
    prunes: u64,
}

impl Registry {
    /// The server-side statement for a Parse body without its name (text, then types).
    pub fn intern(&self, text_and_types: &[u8]) -> Arc<Statement> {
        let mut interned = self.by_text.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(statement) = interned.map.get(text_and_types) {
            return Arc::clone(statement);
        }
        if interned.map.len() >= interned.prune_at.max(PRUNE_ABOVE) {
            interned.map.retain(|_, s| Arc::strong_count(s) > 1);
            interned.prune_at = interned.map.len().saturating_mul(2);
            interned.prunes += 1;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let name = server_name(id);
        let statement = Arc::new(Statement {
            id,
            parse: encode_parse(&name, text_and_types),
            name,
        });
        interned.map.insert(
            Bytes::copy_from_slice(text_and_types),
            Arc::clone(&statement),
        );
        statement
    }

    /// A fresh identity for a client's unnamed statement.
    pub fn unnamed_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Statements interned and pruning passes so far.
    #[cfg(test)]
    fn counts(&self) -> (usize, u64) {
        let interned = self.by_text.lock().unwrap_or_else(|e| e.into_inner());
        (interned.map.len(), interned.prunes)
    }
}

/// A Parse message for `name` with the given text-and-types tail.
pub fn encode_parse(name: &str, text_and_types: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + name.len() + 1 + text_and_types.len());
    out.put_u8(b'P');
    out.put_i32((4 + name.len() + 1 + text_and_types.len()) as i32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(text_and_types);
    out.freeze()
}

/// The statements one server connection holds, least recently used first out, with the
/// result shape each was described with there, once known.
#[derive(Debug)]
pub struct ServerStatements {
    /// By statement id, in order of use: a lookup, a use and an eviction cost O(1)
    /// however many the connection holds.
    held: LruCache<u64, Held>,
}

impl Default for ServerStatements {
    fn default() -> Self {
        ServerStatements {
            held: LruCache::unbounded(),
        }
    }
}

#[derive(Debug)]
struct Held {
    /// RowDescription or NoData of a Describe of it on this connection.
    shape: Option<Bytes>,
}

impl ServerStatements {
    /// Whether the connection holds statement `id`; marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.held.promote(&id)
    }

    /// Records that `id` is being prepared; returns the least recently used statements to
    /// close so at most `capacity` stay, never one of `keep`. Only the statements of
    /// `keep` are passed over on the way, so an insert costs no more when many are held.
    pub fn insert(&mut self, id: u64, capacity: usize, keep: &[u64]) -> Vec<u64> {
        self.held.put(id, Held { shape: None });
        let mut evicted = Vec::new();
        while self.held.len() > capacity {
            let victim = self
                .held
                .iter()
                .rev()
                .map(|(k, _)| *k)
                .find(|k| !keep.contains(k) && *k != id);
            match victim {
                Some(k) => {
                    self.held.pop(&k);
                    evicted.push(k);
                }
                None => break,
            }
        }
        evicted
    }

    /// The result shape statement `id` was described with here, if it is held and was.
    pub fn shape(&self, id: u64) -> Option<&Bytes> {
        self.held.peek(&id)?.shape.as_ref()
    }

    /// Records the shape a Describe of statement `id` returned here (`None`: prepared
    /// anew, not described yet).
    pub fn set_shape(&mut self, id: u64, shape: Option<Bytes>) {
        if let Some(held) = self.held.peek_mut(&id) {
            held.shape = shape;
        }
    }

    /// Forgets a statement the server did not create after all.
    pub fn remove(&mut self, id: u64) {
        self.held.pop(&id);
    }

    /// Forgets everything (after DEALLOCATE ALL or DISCARD ALL on the connection).
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// How many statements the connection holds.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Whether two statement descriptions (RowDescription or NoData messages) give the same
/// result shape: the same columns, by name, type and type modifier, in the same order.
/// PostgreSQL refuses to run a prepared statement whose shape changed (0A000); a client
/// told one shape must never get rows of another.
pub fn same_shape(a: &[u8], b: &[u8]) -> bool {
    fn columns(message: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
        let (&tag, rest) = message.split_first()?;
        if tag == b'n' {
            return Some(Vec::new());
        }
        if tag != b'T' {
            return None;
        }
        let body = rest.get(4..)?;
        let count = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
        let mut at = 2;
        let mut columns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name_len = body.get(at..)?.iter().position(|b| *b == 0)?;
            let name = &body[at..at + name_len];
            at += name_len + 1;
            // Table OID (4), column number (2), then type OID (4), size (2), modifier (4).
            let fields = body.get(at..at + 18)?;
            columns.push((name, &fields[6..16]));
            at += 18;
        }
        Some(columns)
    }
    match (columns(a), columns(b)) {
        (Some(a), Some(b)) => {
            a.iter()
                .zip(&b)
                .all(|((na, ta), (nb, tb))| na == nb && ta[..4] == tb[..4] && ta[6..] == tb[6..])
                && a.len() == b.len()
        }
        _ => false,
    }
}

/// The server-side name of statement `id`.
pub fn server_name(id: u64) -> String {
    format!("__pgsplit_{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_text_and_types_share_one_server_statement() {
        let registry = Registry::default();
        let a = registry.intern(b"SELECT 1\0\0\0");
        let b = registry.intern(b"SELECT 1\0\0\0");
        let c = registry.intern(b"SELECT 1\0\0\x01\0\0\0\x17");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.name, server_name(a.id));
        assert_eq!(&a.parse[5..5 + a.name.len()], a.name.as_bytes());
        assert_eq!(
            i32::from_be_bytes([a.parse[1], a.parse[2], a.parse[3], a.parse[4]]) as usize,
            a.parse.len() - 1
        );
    }

    #[test]
    fn a_large_registry_is_pruned_in_passes_that_double_apart() {
        let registry = Registry::default();
        let text = |i: usize| format!("SELECT {i}\0\0\0").into_bytes();
        // Clients hold more statements than the pruning threshold: one pass at the
        // threshold finds nothing to drop, and the next waits until the map doubled
        // (pruning every insert past the threshold made each one scan the whole map).
        let held: Vec<_> = (0..150_000).map(|i| registry.intern(&text(i))).collect();
        assert_eq!(registry.counts(), (150_000, 1));
        assert!(
            Arc::ptr_eq(&held[7], &registry.intern(&text(7))),
            "still shared"
        );
        drop(held);
        // Nobody holds any now: the pass at 200 000 drops them all.
        for i in 150_000..210_000 {
            registry.intern(&text(i));
        }
        assert_eq!(registry.counts(), (10_000, 2));
    }

    #[test]
    fn many_held_statements_evict_one_at_a_time_oldest_first() {
        const CAPACITY: u64 = 100_000;
        let mut held = ServerStatements::default();
        for id in 0..CAPACITY {
            assert!(held.insert(id, CAPACITY as usize, &[]).is_empty());
        }
        // Each insert past the capacity closes the one least recently used: a list in
        // order of use, not a scan of what the connection holds.
        assert!(held.touch(0));
        assert_eq!(held.insert(CAPACITY, CAPACITY as usize, &[]), vec![1]);
        // One statement in use by the request is passed over, every time.
        for id in CAPACITY + 1..CAPACITY + 90_000 {
            let oldest = id - CAPACITY + 2;
            assert_eq!(held.insert(id, CAPACITY as usize, &[2]), vec![oldest]);
        }
        assert_eq!(held.len(), CAPACITY as usize);
        assert!(held.touch(2), "in use, kept");
        assert!(held.touch(0), "used recently, kept");
    }

    /// A RowDescription of (name, type OID, type modifier) columns, from table `table`.
    fn row_description(table: u32, columns: &[(&str, u32, i32)]) -> Vec<u8> {
        let mut body = (columns.len() as u16).to_be_bytes().to_vec();
        for (i, (name, oid, modifier)) in columns.iter().enumerate() {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&table.to_be_bytes());
            body.extend_from_slice(&(i as u16 + 1).to_be_bytes());
            body.extend_from_slice(&oid.to_be_bytes());
            body.extend_from_slice(&4i16.to_be_bytes());
            body.extend_from_slice(&modifier.to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
        }
        let mut message = vec![b'T'];
        message.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        message.extend(body);
        message
    }

    #[test]
    fn shapes_compare_by_column_names_types_and_modifiers() {
        let int = row_description(1, &[("a", 23, -1), ("b", 23, -1)]);
        let no_data = b"n\0\0\0\x04".to_vec();
        let cases: &[(&str, Vec<u8>, Vec<u8>, bool)] = &[
            ("identical", int.clone(), int.clone(), true),
            (
                "another table OID (recreated)",
                int.clone(),
                row_description(2, &[("a", 23, -1), ("b", 23, -1)]),
                true,
            ),
            (
                "a column's type changed",
                int.clone(),
                row_description(1, &[("a", 23, -1), ("b", 700, -1)]),
                false,
            ),
            (
                "a type modifier changed",
                row_description(1, &[("v", 1043, 14)]),
                row_description(1, &[("v", 1043, 24)]),
                false,
            ),
            (
                "a column renamed",
                int.clone(),
                row_description(1, &[("a", 23, -1), ("c", 23, -1)]),
                false,
            ),
            (
                "a column added",
                int.clone(),
                row_description(1, &[("a", 23, -1), ("b", 23, -1), ("c", 23, -1)]),
                false,
            ),
            ("no data both", no_data.clone(), no_data.clone(), true),
            ("rows against no data", int.clone(), no_data.clone(), false),
            (
                "truncated",
                int.clone(),
                int[..int.len() - 3].to_vec(),
                false,
            ),
            (
                "not a description",
                int.clone(),
                b"Z\0\0\0\x05I".to_vec(),
                false,
            ),
        ];
        for (case, a, b, same) in cases {
            assert_eq!(same_shape(a, b), *same, "{case}");
            assert_eq!(same_shape(b, a), *same, "{case}, the other way");
        }
    }

    #[test]
    fn a_statement_prepared_again_has_no_known_shape() {
        let mut held = ServerStatements::default();
        held.insert(1, 10, &[]);
        assert_eq!(held.shape(1), None);
        held.set_shape(1, Some(Bytes::from_static(b"n\0\0\0\x04")));
        assert!(held.shape(1).is_some());
        held.insert(1, 10, &[]);
        assert_eq!(
            held.shape(1),
            None,
            "prepared again: its shape is to be described"
        );
        held.set_shape(2, Some(Bytes::from_static(b"n\0\0\0\x04")));
        assert_eq!(held.shape(2), None, "not held");
    }

    #[test]
    fn the_least_recently_used_statement_is_evicted_but_never_one_in_use() {
        let mut held = ServerStatements::default();
        assert!(held.insert(1, 2, &[]).is_empty());
        assert!(held.insert(2, 2, &[]).is_empty());
        assert!(held.touch(1));
        assert_eq!(held.insert(3, 2, &[]), vec![2]);
        assert!(!held.touch(2));
        assert_eq!(held.insert(4, 2, &[1, 3]), Vec::<u64>::new());
        assert_eq!(held.len(), 3);
        held.remove(4);
        held.clear();
        assert!(held.is_empty());
    }
}
