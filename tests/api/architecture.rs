//! The code's shape, checked: no import cycle between the top-level modules of `src/`, and
//! every route of the router described in `/openapi.json` (with its methods).

use crate::helpers::root;
use std::collections::{BTreeMap, BTreeSet};

/// The top-level module a file of `src/` belongs to (`src/store/sqlite/tx.rs` -> `store`).
fn module_of(path: &std::path::Path, src: &std::path::Path) -> Option<String> {
    let rel = path.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_owned();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// Which top-level modules each one uses (`crate::x` in code, not in comments).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let uses = regex::Regex::new(r"crate::([a-z_]+)").unwrap();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let Some(module) = module_of(entry.path(), &src) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for c in uses.captures_iter(code) {
                if c[1] != module {
                    deps.insert(c[1].to_owned());
                }
            }
        }
    }
    graph
}

/// A cycle through `node`, if any (depth-first).
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == node) {
        let mut found = path[i..].to_vec();
        found.push(node.to_owned());
        return Some(found);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(c) = cycle(graph, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn no_top_level_module_of_src_imports_one_that_imports_it_back() {
    let graph = module_graph();
    assert!(graph.len() > 10, "the modules were found: {graph:?}");
    assert!(
        graph["store"].contains("recording"),
        "uses are read: {graph:?}"
    );
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = cycle(&graph, node, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
            .collect();
    let found = cycle(&graph, "a", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(found.unwrap(), ["a", "b", "c", "a"]);
}

/// Every `.route("PATH", get(..).post(..))` of `src/http`, with its methods.
fn routes_in_source() -> BTreeMap<String, BTreeSet<String>> {
    let route =
        regex::Regex::new(r#"\.route\(\s*"([^"]+)",\s*((?:\w+\(\w+\)\s*\.?\s*)+)\)"#).unwrap();
    let method = regex::Regex::new(r"(\w+)\(\w+\)").unwrap();
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("src/http")).unwrap() {
        let path = entry.unwrap().path();
        // The console's routes are HTML pages for a browser, not the API.
        if path.file_name().is_some_and(|f| f == "console.rs") {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for c in route.captures_iter(&text) {
            let methods = routes.entry(c[1].to_owned()).or_default();
            for m in method.captures_iter(&c[2]) {
                methods.insert(m[1].to_owned());
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_route_of_the_router_is_described_with_its_methods() {
    let routes = routes_in_source();
    assert!(routes.len() >= 16, "the routes were found: {routes:?}");
    let app = crate::server::spawn_app().await;
    let served: serde_json::Value = app
        .get("/openapi.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, methods) in &routes {
        let described = &served["paths"][path];
        assert!(described.is_object(), "{path} is not described");
        for m in methods {
            assert!(
                described[m].is_object(),
                "{} {path} is not described",
                m.to_uppercase()
            );
        }
    }
    // And nothing is described that the router does not route.
    for (path, ops) in served["paths"].as_object().unwrap() {
        let methods = routes
            .get(path)
            .unwrap_or_else(|| panic!("{path} is described, not routed"));
        for m in ops.as_object().unwrap().keys() {
            assert!(methods.contains(m), "{m} {path} is described, not routed");
        }
    }
}
