//! Top-level modules depend one way: no import cycle between `src/<name>.rs` /
//! `src/<name>/` modules.
//!
//! Data flows config → routing snapshot → request path, with leaf modules (the
//! clock, certificate loading, per-connection guards) below everything. A cycle
//! means two modules can only be understood, tested and changed together, so
//! this reads every `crate::<name>` reference in src/ (comments excluded; test
//! code included: it is built too) and fails on any cycle in the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles still allowed, each as the pair of modules and the reason. Empty is
/// the goal; an entry here must say why it cannot be removed yet.
const ALLOWED: &[(&str, &str, &str)] = &[];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to; None for the crate root files.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(m) => Some(m.to_string()),
        None => Some(first),
    }
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Modules named by `crate::` paths in `code`, including `crate::{a, b::c}`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `$crate::` in macros and `fulcrum_crate::` are not this crate's paths
        if i > 0 {
            let prev = code.as_bytes()[i - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' || prev == b'$' {
                continue;
            }
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // top-level items of the group: split on commas at depth 0
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()).to_string());
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()).to_string());
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest).to_string());
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // a `//` inside a string literal is rare in this code base; a
            // line comment never holds code we need
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// module -> (module it uses -> files that use it)
fn graph() -> Graph {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let tops: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut g = Graph::new();
    for f in &files {
        let Some(from) = module_of(&src, f) else {
            continue;
        };
        let code = strip_comments(&std::fs::read_to_string(f).unwrap());
        let entry = g.entry(from.clone()).or_default();
        for to in crate_refs(&code) {
            if to != from && tops.contains(&to) {
                let rel = f.strip_prefix(&src).unwrap().display().to_string();
                entry.entry(to).or_default().insert(rel);
            }
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph, allowed: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        allowed: &'a BTreeSet<(String, String)>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(edges) = t.g.get(v) {
            for w in edges.keys() {
                if t.allowed.contains(&(v.to_string(), w.clone())) {
                    continue;
                }
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        allowed,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn allowed() -> BTreeSet<(String, String)> {
    ALLOWED
        .iter()
        .map(|(a, b, _)| (a.to_string(), b.to_string()))
        .collect()
}

fn describe(g: &Graph, comp: &[String]) -> String {
    let mut s = format!("cycle among {{{}}}:\n", comp.join(", "));
    for a in comp {
        for (b, files) in &g[a] {
            if comp.contains(b) {
                let files: Vec<_> = files.iter().cloned().collect();
                s += &format!("  {a} -> {b}  ({})\n", files.join(", "));
            }
        }
    }
    s
}

#[test]
fn no_cycles_between_top_level_modules() {
    let g = graph();
    assert!(g.len() > 10, "too few modules found: {:?}", g.keys());
    let found = cycles(&g, &allowed());
    let report: Vec<String> = found.iter().map(|c| describe(&g, c)).collect();
    assert!(
        found.is_empty(),
        "modules must depend one way (README, Development):\n{}",
        report.join("")
    );
}

/// Every allowed exception still exists; a stale one would hide a new cycle
/// through the same pair.
#[test]
fn allowed_exceptions_are_real() {
    let g = graph();
    for (a, b, why) in ALLOWED {
        assert!(!why.is_empty(), "{a} -> {b}: say why it is allowed");
        assert!(
            g.get(*a).is_some_and(|e| e.contains_key(*b)),
            "{a} -> {b} is allowed but no longer used: remove it from ALLOWED"
        );
    }
}

/// The checker finds a cycle when there is one, and parses grouped imports.
#[test]
fn the_checker_detects_a_cycle() {
    assert_eq!(
        crate_refs("use crate::{a::B, b, c::{d, e}};\nlet x = crate::f::g();"),
        ["a", "b", "c", "f"].iter().map(|s| s.to_string()).collect()
    );
    assert!(crate_refs("$crate::x; my_crate::y").is_empty());
    let mut g = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default()
            .insert("f.rs".into());
    };
    edge(&mut g, "config", "server");
    edge(&mut g, "server", "clock");
    assert!(cycles(&g, &BTreeSet::new()).is_empty());
    edge(&mut g, "clock", "config");
    assert_eq!(
        cycles(&g, &BTreeSet::new()),
        vec![vec!["clock".to_string(), "config".into(), "server".into()]]
    );
    let allow = [("clock".to_string(), "config".to_string())].into();
    assert!(cycles(&g, &allow).is_empty());
}
