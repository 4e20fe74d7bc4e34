//! Cost of routing one statement: `cargo bench --bench classify`.
//!
//! `uncached` is the full classifier (lexer pass, sqlparser, AST walk); `cached_hit` is what a
//! session pays for a statement shape it has seen before (normalize + LRU lookup). Each
//! cached iteration varies the constant, as `pgbench -M simple` does, so the hit comes from
//! the normalized key and not from identical text.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pgsplit::classify::{classify, normalize, Classifier, Functions};

/// Typical statements, each with a `{}` where a constant goes.
const STATEMENTS: &[(&str, &str)] = &[
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
    ),
    (
        "pgbench_update",
        "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = 8417;",
    ),
    (
        "join_order_limit",
        "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
         WHERE o.created_at > now() - interval '7 days' AND c.region = 'eu' \
         ORDER BY o.total DESC LIMIT {}",
    ),
    (
        "insert_returning",
        "INSERT INTO events (kind, payload, user_id, created_at) \
         VALUES ('click', '{\"x\": 1}', {}, now()) RETURNING id",
    ),
    (
        "cte",
        "WITH recent AS (SELECT customer_id, sum(total) AS spent FROM orders \
         WHERE created_at > now() - interval '30 days' GROUP BY customer_id) \
         SELECT c.name, r.spent FROM recent r JOIN customers c ON c.id = r.customer_id \
         WHERE r.spent > {} ORDER BY r.spent DESC",
    ),
];

fn catalog() -> Functions {
    let rows = ["now", "sum", "count", "lower"]
        .iter()
        .map(|n| ("pg_catalog".to_string(), n.to_string(), 's'));
    Functions::new(rows, &[], &[])
}

fn bench(c: &mut Criterion) {
    let functions = catalog();
    let texts: Vec<(&str, Vec<String>)> = STATEMENTS
        .iter()
        .map(|(name, template)| {
            let variants = (0..64)
                .map(|i| template.replacen("{}", &(12345 + i).to_string(), 1))
                .collect();
            (*name, variants)
        })
        .collect();

    let mut group = c.benchmark_group("uncached");
    for (name, variants) in &texts {
        group.bench_with_input(BenchmarkId::from_parameter(name), variants, |b, v| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % v.len();
                black_box(classify(black_box(&v[i]), &functions))
            })
        });
    }
    group.finish();

    // The cache key alone: the part of a hit that grows with the statement's length.
    let mut group = c.benchmark_group("normalize");
    for (name, variants) in &texts {
        group.bench_with_input(BenchmarkId::from_parameter(name), variants, |b, v| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % v.len();
                black_box(normalize(black_box(&v[i])))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("cached_hit");
    for (name, variants) in &texts {
        let classifier = Classifier::new(1024);
        classifier.classify(&variants[0], &functions);
        group.bench_with_input(BenchmarkId::from_parameter(name), variants, |b, v| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % v.len();
                black_box(classifier.classify(black_box(&v[i]), &functions))
            })
        });
        let stats = classifier.stats();
        assert_eq!(
            stats.misses, 1,
            "{name}: every lookup after the first must hit"
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
