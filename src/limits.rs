//! Per-user and per-database client connection limits (`max_user_connections`,
//! `max_db_connections`, a user's `max_connections`), counted like PostgreSQL's role and
//! database connection limits: over clients that have authenticated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::ProxyError;

/// Clients logged in now, per user and per database.
#[derive(Debug, Default)]
pub struct Logins {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<String, usize>,
    databases: HashMap<String, usize>,
}

impl Logins {
    /// Takes a slot for a client of `user` on `database` when both are under their limits
    /// (0: no limit); the role's limit is checked first, as PostgreSQL does. The slot is
    /// given back when the returned guard drops, on whatever path the session ends.
    pub fn admit(
        self: &Arc<Self>,
        (user, user_limit): (&str, usize),
        (database, db_limit): (&str, usize),
    ) -> Result<Slot, ProxyError> {
        // A poisoned lock only means another session panicked mid-update of two integers;
        // the counts are still the best information there is.
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let full = |map: &HashMap<String, usize>, key: &str, limit: usize| {
            limit > 0 && map.get(key).copied().unwrap_or(0) >= limit
        };
        if full(&counts.users, user, user_limit) {
            return Err(ProxyError::TooManyForRole(user.to_owned()));
        }
        if full(&counts.databases, database, db_limit) {
            return Err(ProxyError::TooManyForDatabase(database.to_owned()));
        }
        *counts.users.entry(user.to_owned()).or_default() += 1;
        *counts.databases.entry(database.to_owned()).or_default() += 1;
        Ok(Slot {
            logins: Arc::clone(self),
            user: user.to_owned(),
            database: database.to_owned(),
        })
    }
}

/// One client's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    logins: Arc<Logins>,
    user: String,
    database: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.logins.counts.lock().unwrap_or_else(|e| e.into_inner());
        release(&mut counts.users, &self.user);
        release(&mut counts.databases, &self.database);
    }
}

/// Counts down one key; a key at zero is removed so that names clients invent cost
/// nothing once they leave.
fn release(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_with_postgresql_wording_and_slots_come_back_on_drop() {
        let logins = Arc::new(Logins::default());
        let a = logins.admit(("app", 2), ("db", 0)).unwrap();
        let b = logins.admit(("app", 2), ("db", 0)).unwrap();
        let refused = logins.admit(("app", 2), ("db", 0)).unwrap_err();
        assert_eq!(refused.sqlstate(), "53300");
        assert_eq!(refused.to_string(), "too many connections for role \"app\"");
        // Another user on the same database is counted apart.
        let other = logins.admit(("report", 0), ("db", 3)).unwrap();
        let refused = logins.admit(("third", 0), ("db", 3)).unwrap_err();
        assert_eq!(refused.sqlstate(), "53300");
        assert_eq!(
            refused.to_string(),
            "too many connections for database \"db\""
        );
        drop((a, other));
        assert_eq!(logins.counts.lock().unwrap().users.get("app"), Some(&1));
        let _c = logins.admit(("app", 2), ("db", 3)).unwrap();
        drop(b);
        // Names at zero are forgotten, so invented names cost nothing once gone.
        assert!(!logins.counts.lock().unwrap().users.contains_key("report"));
    }
}
