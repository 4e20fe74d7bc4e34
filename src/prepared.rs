//! Prepared statements shared between clients: a client's named statement maps to a
//! server-side statement named by pgsplit after its text and parameter types, so two
//! clients' `s1` never collide on a pooled connection and clients preparing the same
//! text share one server-side statement. Each server connection remembers which it
//! holds, least recently used first out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};

/// Registry entries beyond this are pruned of statements no client holds any more.
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
    by_text: Mutex<HashMap<Bytes, Arc<Statement>>>,
    next: AtomicU64,
}

impl Registry {
    /// The server-side statement for a Parse body without its name (text, then types).
    pub fn intern(&self, text_and_types: &[u8]) -> Arc<Statement> {
        let mut map = self.by_text.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(statement) = map.get(text_and_types) {
            return Arc::clone(statement);
        }
        if map.len() >= PRUNE_ABOVE {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("__pgsplit_{id}");
        let statement = Arc::new(Statement {
            id,
            parse: encode_parse(&name, text_and_types),
            name,
        });
        map.insert(
            Bytes::copy_from_slice(text_and_types),
            Arc::clone(&statement),
        );
        statement
    }

    /// A fresh identity for a client's unnamed statement.
    pub fn unnamed_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
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

/// The statements one server connection holds, with a use counter for LRU eviction.
#[derive(Debug, Default)]
pub struct ServerStatements {
    held: HashMap<u64, u64>,
    clock: u64,
}

impl ServerStatements {
    /// Whether the connection holds statement `id`; marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.clock += 1;
        match self.held.get_mut(&id) {
            Some(used) => {
                *used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records that `id` is being prepared; returns the least recently used statements to
    /// close so at most `capacity` stay, never one of `keep`.
    pub fn insert(&mut self, id: u64, capacity: usize, keep: &[u64]) -> Vec<u64> {
        self.clock += 1;
        self.held.insert(id, self.clock);
        let mut evicted = Vec::new();
        while self.held.len() > capacity {
            let victim = self
                .held
                .iter()
                .filter(|(k, _)| !keep.contains(k) && **k != id)
                .min_by_key(|(_, used)| **used)
                .map(|(k, _)| *k);
            match victim {
                Some(k) => {
                    self.held.remove(&k);
                    evicted.push(k);
                }
                None => break,
            }
        }
        evicted
    }

    /// Forgets a statement the server did not create after all.
    pub fn remove(&mut self, id: u64) {
        self.held.remove(&id);
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
