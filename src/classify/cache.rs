//! A bounded LRU of classifications keyed by normalized text, so that the statements an
//! application repeats with different constants are parsed once.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::{classify, normalize, Classification, Functions, Route};

/// Cache counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that ran the classifier.
    pub misses: u64,
    /// Entries held now.
    pub entries: usize,
}

/// Key: the catalog snapshot's id, so a reloaded catalog never reuses old decisions, and the
/// normalized text.
type Key = (u64, String);

/// Texts of Parse messages as sent, with the catalog snapshot they were classified with.
type Exact = LruCache<String, (u64, Arc<Classification>)>;

/// [`classify`] behind a bounded LRU cache; shareable across sessions.
pub struct Classifier {
    /// None when the capacity is 0: every call classifies.
    cache: Option<Mutex<LruCache<Key, Arc<Classification>>>>,
    /// In front of `cache` for Parse texts, which clients send again word for word (the
    /// unnamed statements of the extended protocol): a hit skips normalizing, which
    /// costs more than the lookup.
    exact: Option<Mutex<Exact>>,
    /// Normalized texts of statements a standby refused: primary-bound whatever the
    /// classifier says, learned at run time. Bounded; consulted only on cache misses.
    refused: Mutex<LruCache<String, ()>>,
    /// Whether `refused` holds anything: until a standby refuses something, no lookup
    /// normalizes or locks for it.
    any_refused: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Shapes of refused statements remembered at most.
const REFUSED_CAPACITY: NonZeroUsize = match NonZeroUsize::new(1024) {
    Some(n) => n,
    None => unreachable!(),
};

/// The answer of [`Classifier::explain`]: a statement's classification and where it came
/// from.
#[derive(Debug, Clone)]
pub struct Explained {
    /// What the session would be told.
    pub class: Arc<Classification>,
    /// Whether it was in the cache (for the same catalog snapshot).
    pub cached: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of an LRU whose
    // entries are immutable values: keep using it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Classifier {
    /// A classifier caching up to `capacity` decisions; 0 disables the cache.
    pub fn new(capacity: usize) -> Classifier {
        Classifier {
            cache: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            exact: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            refused: Mutex::new(LruCache::new(REFUSED_CAPACITY)),
            any_refused: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Classifies `sql`, from the cache when a statement of the same shape was seen with the
    /// same catalog snapshot. Results that depend on constants are never stored.
    pub fn classify(&self, sql: &str, functions: &Functions) -> Arc<Classification> {
        let Some(cache) = &self.cache else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(self.classify_fresh(sql, None, functions));
        };
        let key = (functions.id(), normalize(sql));
        let cached = lock(cache).get(&key).cloned();
        if let Some(found) = cached {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return found;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Classify without the lock held: parsing takes microseconds.
        let result = Arc::new(self.classify_fresh(sql, Some(&key.1), functions));
        if result.cacheable {
            lock(cache).put(key, Arc::clone(&result));
        }
        result
    }

    /// The classifier's answer, unless a standby refused this shape before; `normalized`
    /// is `sql` normalized when the caller has it.
    fn classify_fresh(
        &self,
        sql: &str,
        normalized: Option<&str>,
        functions: &Functions,
    ) -> Classification {
        let class = classify(sql, functions);
        if class.route == Route::Primary || !self.any_refused.load(Ordering::Relaxed) {
            return class;
        }
        let normalized = match normalized {
            Some(key) => std::borrow::Cow::Borrowed(key),
            None => std::borrow::Cow::Owned(normalize(sql)),
        };
        let was_refused = lock(&self.refused).contains(normalized.as_ref());
        if was_refused {
            class.refused_by_standby()
        } else {
            class
        }
    }

    /// A standby refused `sql` as a write (`25006`): statements of its shape go to the
    /// primary from now on. True the first time this shape is refused.
    pub fn refused_by_standby(&self, sql: &str, functions: &Functions) -> bool {
        let normalized = normalize(sql);
        let new = lock(&self.refused).put(normalized.clone(), ()).is_none();
        self.any_refused.store(true, Ordering::Relaxed);
        if let Some(exact) = &self.exact {
            lock(exact).pop(sql);
        }
        if let Some(cache) = &self.cache {
            lock(cache).pop(&(functions.id(), normalized));
        }
        new
    }

    /// How `sql` is classified now, and whether the answer was cached, without changing
    /// the cache (for the console's `EXPLAIN ROUTE`).
    pub fn explain(&self, sql: &str, functions: &Functions) -> Explained {
        let normalized = normalize(sql);
        let exact = self.exact.as_ref().and_then(|exact| {
            lock(exact)
                .peek(sql)
                .filter(|(id, _)| *id == functions.id())
                .map(|(_, class)| Arc::clone(class))
        });
        let cached = exact.or_else(|| {
            let cache = self.cache.as_ref()?;
            lock(cache)
                .peek(&(functions.id(), normalized.clone()))
                .cloned()
        });
        match cached {
            Some(class) => Explained {
                class,
                cached: true,
            },
            None => Explained {
                class: Arc::new(self.classify_fresh(sql, Some(&normalized), functions)),
                cached: false,
            },
        }
    }

    /// As [`Classifier::classify`], for the text of a Parse message: looked up as sent
    /// first. Simple-query texts do not go through here, as their constants vary.
    pub fn classify_parsed(&self, sql: &str, functions: &Functions) -> Arc<Classification> {
        let Some(exact) = &self.exact else {
            return self.classify(sql, functions);
        };
        if let Some((id, found)) = lock(exact).get(sql) {
            if *id == functions.id() {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Arc::clone(found);
            }
        }
        let result = self.classify(sql, functions);
        if result.cacheable {
            lock(exact).put(sql.to_owned(), (functions.id(), Arc::clone(&result)));
        }
        result
    }

    /// Hit and miss counts and the number of entries held.
    pub fn stats(&self) -> CacheStats {
        let entries = self.cache.as_ref().map_or(0, |cache| lock(cache).len());
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Reason;
    use super::*;

    #[test]
    fn parse_texts_hit_as_sent_and_follow_the_catalog() {
        let classifier = Classifier::new(100);
        let functions = Functions::empty();
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
        let a = classifier.classify_parsed(sql, &functions);
        let b = classifier.classify_parsed(sql, &functions);
        assert!(Arc::ptr_eq(&a, &b), "the second lookup should be a hit");
        assert_eq!(classifier.stats().hits, 1);
        // A text cached under another catalog snapshot is classified again.
        let other = Functions::new(std::iter::empty(), &[], &["f".into()]);
        assert_ne!(other.id(), functions.id());
        let misses = classifier.stats().misses;
        let c = classifier.classify_parsed("SELECT f($1)", &other);
        assert_eq!(c.route, Route::Primary);
        classifier.classify_parsed("SELECT f($1)", &functions);
        assert_eq!(classifier.stats().misses, misses + 2);
    }

    #[test]
    fn a_shape_a_standby_refused_goes_to_the_primary_from_then_on() {
        for capacity in [100, 0] {
            let classifier = Classifier::new(capacity);
            let functions = Functions::empty();
            let sql = "SELECT * FROM writing_view WHERE id = 1";
            assert_eq!(classifier.classify(sql, &functions).route, Route::Standby);
            assert_eq!(
                classifier.classify_parsed(sql, &functions).route,
                Route::Standby
            );
            assert!(
                classifier.refused_by_standby(sql, &functions),
                "first refusal"
            );
            assert!(
                !classifier.refused_by_standby(sql, &functions),
                "logged once"
            );
            for other in ["select * from writing_view where id = 2", sql] {
                let class = classifier.classify(other, &functions);
                assert_eq!(
                    (class.route, class.reason),
                    (Route::Primary, Reason::StandbyRefused),
                    "{capacity}: {other}"
                );
            }
            let parsed = classifier.classify_parsed(sql, &functions);
            assert_eq!(parsed.reason, Reason::StandbyRefused, "{capacity}");
            // A new catalog snapshot does not forget it.
            let reloaded = Functions::empty();
            assert_eq!(
                classifier.classify(sql, &reloaded).reason,
                Reason::StandbyRefused
            );
            let unrelated = classifier.classify("SELECT 1", &functions);
            assert_eq!(unrelated.route, Route::Standby);
        }
    }

    #[test]
    fn explain_says_whether_the_answer_was_cached_and_changes_nothing() {
        let classifier = Classifier::new(100);
        let functions = Functions::empty();
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 7";
        let before = classifier.explain(sql, &functions);
        assert!(!before.cached);
        assert_eq!(before.class.route, Route::Standby);
        assert_eq!(classifier.stats().entries, 0, "explain caches nothing");
        classifier.classify(sql, &functions);
        let stats = classifier.stats();
        let after = classifier.explain(
            "select abalance from pgbench_accounts where aid = 9",
            &functions,
        );
        assert!(after.cached);
        assert_eq!(classifier.stats(), stats, "explain counts no hit");
        classifier.classify_parsed("SELECT $1::int", &functions);
        assert!(classifier.explain("SELECT $1::int", &functions).cached);
    }

    #[test]
    fn transaction_boundaries_are_cached_but_set_transaction_is_not() {
        let classifier = Classifier::new(100);
        let functions = Functions::empty();
        for sql in [
            "BEGIN",
            "begin",
            "END",
            "COMMIT",
            "BEGIN READ ONLY",
            "begin read only",
        ] {
            classifier.classify(sql, &functions);
        }
        assert_eq!(
            classifier.stats().hits,
            2,
            "BEGIN and BEGIN READ ONLY hit once each"
        );
        let on = classifier.classify("SET transaction_read_only = 'on'", &functions);
        let off = classifier.classify("SET transaction_read_only = 'off'", &functions);
        assert!(!Arc::ptr_eq(&on, &off));
        assert_ne!(on.effects, off.effects);
        let read_only = classifier.classify("BEGIN READ ONLY", &functions);
        let read_write = classifier.classify("BEGIN READ WRITE", &functions);
        assert_ne!(read_only.effects, read_write.effects);
    }

    #[test]
    fn pgbench_simple_statements_share_a_key() {
        let classifier = Classifier::new(100);
        let functions = Functions::empty();
        let a = classifier.classify(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            &functions,
        );
        let b = classifier.classify(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 777;",
            &functions,
        );
        assert_eq!(a.route, Route::Standby);
        assert!(Arc::ptr_eq(&a, &b), "the second lookup should be a hit");
        assert_eq!(
            classifier.stats(),
            CacheStats {
                hits: 1,
                misses: 1,
                entries: 1
            }
        );
    }

    #[test]
    fn settings_are_never_cached() {
        let classifier = Classifier::new(100);
        let functions = Functions::empty();
        for value in ["'a'", "'b'", "'a'"] {
            let c = classifier.classify(&format!("SET application_name = {value}"), &functions);
            assert!(!c.cacheable);
        }
        for local in ["false", "true"] {
            classifier.classify(
                &format!("SELECT set_config('search_path', 'x', {local})"),
                &functions,
            );
        }
        let stats = classifier.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (0, 5, 0));
    }

    #[test]
    fn do_bodies_are_never_shared() {
        // Both normalize to `do ?`; only the second takes a session lock.
        let classifier = Classifier::new(100);
        let functions = Functions::empty();
        classifier.classify("DO $$ BEGIN END $$", &functions);
        let locking = classifier.classify(
            "DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$",
            &functions,
        );
        assert_eq!(
            locking.effects,
            vec![super::super::Effect::Pin(super::super::Pin::AdvisoryLock)]
        );
    }

    #[test]
    fn catalog_snapshots_do_not_share_entries() {
        let classifier = Classifier::new(100);
        let old = Functions::empty();
        let new = Functions::new([("public".to_string(), "f".to_string(), 's')], &[], &[]);
        assert_eq!(
            classifier.classify("SELECT f(1)", &old).route,
            Route::Primary
        );
        assert_eq!(
            classifier.classify("SELECT f(2)", &new).route,
            Route::Standby
        );
        let stats = classifier.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (0, 2, 2));
    }

    #[test]
    fn hints_are_part_of_the_key() {
        let classifier = Classifier::new(100);
        let functions = Functions::empty();
        assert_eq!(
            classifier.classify("SELECT 1", &functions).route,
            Route::Standby
        );
        assert_eq!(
            classifier
                .classify("/* pgsplit:primary */ SELECT 2", &functions)
                .route,
            Route::Primary
        );
        assert_eq!(classifier.stats().hits, 0);
    }

    #[test]
    fn capacity_bounds_and_zero_disables() {
        let classifier = Classifier::new(2);
        let functions = Functions::empty();
        for table in ["a", "b", "c"] {
            classifier.classify(&format!("SELECT * FROM {table}"), &functions);
        }
        assert_eq!(classifier.stats().entries, 2);

        let off = Classifier::new(0);
        off.classify("SELECT 1", &functions);
        off.classify("SELECT 1", &functions);
        assert_eq!(
            off.stats(),
            CacheStats {
                hits: 0,
                misses: 2,
                entries: 0
            }
        );
    }
}
