//! The import rule, checked: every `crate::` path in `src/` names a module in the same
//! layer or a lower one (see the crate documentation), and the modules' import graph has
//! no cycle. Test code is left out: a test may build whatever it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and its layer, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "core",
        &[
            "protocol", "error", "config", "classify", "route", "gucs", "topology", "balance",
            "prepared",
        ],
    ),
    (
        "services",
        &[
            "settings", "tls", "auth", "hba", "backend", "pool", "monitor", "catalog", "stats",
            "limits", "clients",
        ],
    ),
    ("context", &["context"]),
    ("session", &["session", "admin", "metrics", "reload"]),
    ("process", &["proxy", "logging", "demo"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The source of a file without its `#[cfg(test)]` modules.
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// Top-level module → the top-level modules its non-test code names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "tests") {
                    pending.push(path);
                }
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let name = relative.to_string_lossy();
            let is_test = name.ends_with("tests.rs") || name.ends_with("_tests.rs");
            if path.extension().is_none_or(|e| e != "rs") || is_test {
                continue;
            }
            let top = relative
                .components()
                .next()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_owned()
                })
                .unwrap_or_default();
            if top == "lib" || top == "main" || top == "layers" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let used = graph.entry(top.clone()).or_default();
            for (at, _) in without_tests(&text).match_indices("crate::") {
                let rest = &text[at + "crate::".len()..];
                let module: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !module.is_empty() && module != top {
                    used.insert(module);
                }
            }
        }
    }
    graph
}

/// The imports that point to a higher layer, as "from → to" lines.
fn upward(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (from, used) in graph {
        let Some(from_layer) = layer_of(from) else {
            found.push(format!("{from} is in no layer"));
            continue;
        };
        for to in used {
            match layer_of(to) {
                Some(to_layer) if to_layer > from_layer => found.push(format!(
                    "{from} ({}) → {to} ({})",
                    LAYERS[from_layer].0, LAYERS[to_layer].0
                )),
                Some(_) => {}
                None => found.push(format!("{from} → {to}, which is in no layer")),
            }
        }
    }
    found
}

/// A cycle in the graph, if there is one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn crate_graph() -> BTreeMap<String, BTreeSet<String>> {
    imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn imports_point_down_or_sideways_never_up() {
    let upward = upward(&crate_graph());
    assert!(
        upward.is_empty(),
        "upward imports (see the layers in lib.rs):\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    if let Some(found) = cycle(&crate_graph()) {
        panic!("import cycle: {}", found.join(" → "));
    }
}

#[test]
fn an_upward_import_or_a_cycle_is_caught() {
    let mut graph = BTreeMap::new();
    graph.insert(
        "protocol".to_owned(),
        BTreeSet::from(["session".to_owned()]),
    );
    graph.insert(
        "session".to_owned(),
        BTreeSet::from(["protocol".to_owned()]),
    );
    assert_eq!(upward(&graph), vec!["protocol (core) → session (session)"]);
    assert_eq!(
        cycle(&graph),
        Some(vec!["protocol".into(), "session".into(), "protocol".into()])
    );
}
