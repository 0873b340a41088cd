//! The core's modules import each other without a cycle, and the vocabulary
//! imports nothing: read from the source, so a new `use` that closes a
//! cycle fails here with the cycle named.
//!
//! A module is a top-level module of the crate (`failover` covers
//! `src/failover/*.rs`). Every `crate::<module>` path counts, in `use` lines
//! and in code, outside comments, `#[cfg(test)]` sections and files marked
//! `#![cfg(test)]` (tests may use anything).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules that `code` names through `crate::`.
fn imported(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d}`: the first segment of each item.
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(inner.split(',').map(|item| ident(item.trim())).filter(|m| !m.is_empty()));
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative.components().next().expect("component").as_os_str().to_string_lossy();
        let module = module.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        // A file that starts `#![cfg(test)]` is test code throughout.
        if text.lines().any(|l| l.trim() == "#![cfg(test)]") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        // Comments (doc links included) are not dependencies.
        let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(imported(&code).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle through `start`, if the graph has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn core_modules_import_each_other_without_a_cycle() {
    let graph = graph();
    assert!(graph.len() >= 10, "the scan found too few modules: {graph:?}");
    if let Some(found) = cycle(&graph) {
        panic!("import cycle among core modules: {}\nfull graph: {graph:#?}", found.join(" -> "));
    }
}

#[test]
fn the_vocabulary_imports_nothing_from_the_crate() {
    let graph = graph();
    assert_eq!(graph.get("vocab"), Some(&BTreeSet::new()), "{graph:#?}");
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    let mut graph = graph();
    graph.entry("vocab".to_string()).or_default().insert("apply".to_string());
    assert!(cycle(&graph).is_some());
    assert_eq!(imported("use crate::{failover, kv::put};\nlet x = crate::lease::renewable;"), {
        ["failover", "kv", "lease"].iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    });
}
