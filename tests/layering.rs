//! The top-level modules form a DAG that follows the layer table in `src/lib.rs`'s docs.
//!
//! Reads every `src/**/*.rs` (code only: comments, string literals and `#[cfg(test)]` items are
//! left out), collects each `crate::` path (in `use` lines, brace groups included, and inline
//! `crate::x::y` paths; a `super::` chain that climbs to the root counts as `crate::`), maps
//! each file to its top-level module, and fails on an import that
//! goes up the table (a lower layer naming a higher one) and on any cycle, printing it. Within
//! one layer imports are allowed as long as they form no cycle.
//!
//! The layer table is read from `lib.rs` (the `## Layers` section), so the documentation and the
//! check cannot drift apart; every `pub mod` of `lib.rs` must appear in it exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One import of one top-level module by another, and the file it is in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    file: String,
}

/// The layers of `lib.rs`'s `## Layers` table, lowest first: (layer name, modules).
fn layer_table(lib: &str) -> Vec<(String, Vec<String>)> {
    let docs: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let start = docs
        .iter()
        .position(|l| *l == "## Layers")
        .expect("lib.rs docs have a `## Layers` section");
    let mut layers = Vec::new();
    for line in &docs[start + 1..] {
        if line.starts_with('#') {
            break;
        }
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 2 || cells[0] == "layer" || cells[0].starts_with("---") {
            continue;
        }
        let modules: Vec<String> = cells[1]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|m| m.trim_end_matches('/').to_string())
            .collect();
        assert!(!modules.is_empty(), "layer row without modules: {line}");
        layers.push((cells[0].to_string(), modules));
    }
    assert!(
        !layers.is_empty(),
        "the `## Layers` table of lib.rs is empty"
    );
    layers
}

/// `pub mod x;` declarations of `lib.rs`.
fn declared_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

/// `src` without comments and with every string and char literal emptied, so only code is
/// searched (a doc link to a higher layer is a reference, not a dependency).
fn strip_comments_and_strings(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && raw_string_hashes(&b[i..]).is_some() && !ident_byte_before(b, i) {
            let hashes = raw_string_hashes(&b[i..]).unwrap_or(0);
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && char_literal_len(&b[i..]).is_some() {
            i += char_literal_len(&b[i..]).unwrap_or(1);
            out.push_str("' '");
        } else {
            let c = src[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn ident_byte_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `Some(n)` when `b` starts a raw string `r#..#"` with `n` hashes.
fn raw_string_hashes(b: &[u8]) -> Option<usize> {
    let hashes = b[1..].iter().take_while(|&&c| c == b'#').count();
    (b.get(1 + hashes) == Some(&b'"')).then_some(hashes)
}

/// The length of a char literal at the start of `b` (`'a'`, `'\n'`, `'\u{1F600}'`), `None` for
/// a lifetime.
fn char_literal_len(b: &[u8]) -> Option<usize> {
    if b.get(1) == Some(&b'\\') {
        let end = b[2..].iter().position(|&c| c == b'\'')?;
        return Some(end + 3);
    }
    let s = std::str::from_utf8(&b[1..b.len().min(6)])
        .unwrap_or_else(|e| std::str::from_utf8(&b[1..1 + e.valid_up_to()]).unwrap_or_default());
    let c = s.chars().next()?;
    (s[c.len_utf8()..].starts_with('\'')).then_some(c.len_utf8() + 2)
}

/// `code` without the items under `#[cfg(test)]` (test modules, test-only functions and
/// imports): the end of an item is its `;` or the `}` closing its first `{`.
fn drop_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The top-level modules `code` names through `crate::`: `use crate::a::X`, `crate::b::f()`,
/// and each branch of `use crate::{c::Y, d::{self, Z}}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let b = code.as_bytes();
    let mut found = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        if start > 0 && (ident_byte_before(b, start) || b[start - 1] == b'$') {
            continue;
        }
        let after = code[from..].trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1usize;
            let mut branch = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    if let Some(m) = first_ident(&branch) {
                        found.insert(m);
                    }
                    branch.clear();
                    if depth == 0 {
                        break;
                    }
                } else if depth == 1 {
                    branch.push(c);
                } else if branch.trim().is_empty() {
                    // A nested group starts the branch: impossible in valid Rust at this level.
                } else {
                    branch.push(c);
                }
            }
        } else if let Some(m) = first_ident(after) {
            found.insert(m);
        }
    }
    found
}

/// `code` with every `super::` chain that climbs to the crate root written as `crate::`, for a
/// file whose module is `depth` levels below the root (`src/a.rs`, `src/a/mod.rs`: 1;
/// `src/a/b.rs`: 2), so `super::super::x` from `src/a/b.rs` counts as an import of `x`.
fn root_supers_as_crate(code: &str, depth: usize) -> String {
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < code.len() {
        if code[i..].starts_with("super::")
            && !ident_byte_before(b, i)
            && !(i >= 2 && &code[i - 2..i] == "::")
        {
            let mut k = 0;
            let mut j = i;
            while code[j..].starts_with("super::") {
                k += 1;
                j += "super::".len();
            }
            if k >= depth {
                out.push_str("crate::");
                i = j;
                continue;
            }
            out.push_str(&code[i..j]);
            i = j;
            continue;
        }
        let c = code[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn first_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every import between two different top-level modules of the crate under `src`.
fn edges(src: &Path, known: &BTreeSet<String>) -> Vec<Edge> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = Vec::new();
    for path in files {
        let rel = path.strip_prefix(src).expect("under src");
        let first = rel
            .components()
            .next()
            .expect("a file")
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        assert!(
            known.contains(&module),
            "{} belongs to no `pub mod` of lib.rs",
            rel.display()
        );
        let text = std::fs::read_to_string(&path).expect("readable source");
        let depth =
            rel.components().count() - usize::from(rel.file_name().is_some_and(|f| f == "mod.rs"));
        let code =
            root_supers_as_crate(&drop_test_items(&strip_comments_and_strings(&text)), depth);
        for to in crate_paths(&code) {
            assert!(
                known.contains(&to),
                "{} names crate::{to}, which is not a top-level module",
                rel.display()
            );
            if to != module {
                edges.push(Edge {
                    from: module.clone(),
                    to,
                    file: rel.display().to_string(),
                });
            }
        }
    }
    edges.sort();
    edges.dedup();
    edges
}

/// The imports that go up the table: `(edge, layer of from, layer of to)`.
fn upward(edges: &[Edge], layers: &[(String, Vec<String>)]) -> Vec<String> {
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, (_, ms))| ms.iter().map(move |m| (m.as_str(), i)))
        .collect();
    edges
        .iter()
        .filter(|e| rank[e.to.as_str()] > rank[e.from.as_str()])
        .map(|e| {
            format!(
                "{} (layer {:?}) imports {} (layer {:?}, higher) in src/{}",
                e.from,
                layers[rank[e.from.as_str()]].0,
                e.to,
                layers[rank[e.to.as_str()]].0,
                e.file
            )
        })
        .collect()
}

/// Every module `start` imports, directly or not.
fn reachable(edges: &[Edge], start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.to_string()];
    while let Some(m) = todo.pop() {
        for e in edges.iter().filter(|e| e.from == m) {
            if seen.insert(e.to.clone()) {
                todo.push(e.to.clone());
            }
        }
    }
    seen
}

/// A cycle of the module graph, as `a -> b -> ... -> a`, if there is one.
fn find_cycle(edges: &[Edge]) -> Option<Vec<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().insert(&e.to);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        marks.insert(node, Mark::OnPath);
        path.push(node);
        for &next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let at = path.iter().position(|&n| n == next).unwrap_or(0);
                    let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
                    cycle.push(next.to_string());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, graph, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    let nodes: Vec<&str> = graph.keys().copied().collect();
    for node in nodes {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(node, &graph, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn top_level_modules_form_a_dag_that_follows_the_layer_table_of_lib_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let layers = layer_table(&lib);
    let declared = declared_modules(&lib);
    let mut listed = BTreeSet::new();
    for (name, modules) in &layers {
        for m in modules {
            assert!(
                listed.insert(m.clone()),
                "{m} is listed twice in lib.rs's layer table (again in {name:?})"
            );
        }
    }
    assert_eq!(
        listed, declared,
        "lib.rs's layer table must list every `pub mod` of lib.rs exactly once"
    );
    let edges = edges(&src, &declared);
    assert!(
        edges.len() > 20,
        "suspiciously few imports found ({}): is the parser broken?",
        edges.len()
    );
    if let Some(cycle) = find_cycle(&edges) {
        let files: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let e = edges
                    .iter()
                    .find(|e| e.from == w[0] && e.to == w[1])
                    .expect("edge of the cycle");
                format!("  {} -> {} (src/{})", e.from, e.to, e.file)
            })
            .collect();
        panic!("module cycle: {}\n{}", cycle.join(" -> "), files.join("\n"));
    }
    let run_reaches = reachable(&edges, "service");
    assert!(
        !run_reaches.contains("sim"),
        "the simulators are on the path `run` takes: {run_reaches:?}"
    );
    let up = upward(&edges, &layers);
    assert!(
        up.is_empty(),
        "imports that go up lib.rs's layer table (pass the value in, or move the type down):\n  {}",
        up.join("\n  ")
    );
}

// The checker itself: each of these would let a broken layering pass if it were wrong.

#[test]
fn crate_paths_are_found_in_brace_groups_inline_paths_and_nested_groups() {
    let code = "use crate::a::X;\nuse crate::{b::Y, c::{self, Z}, d};\nfn f() { crate::e::g(); }\n\
                macro_rules! m { () => { $crate::h::i() } }\nlet x = notcrate::j::k;";
    let found: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "e"]);
}

#[test]
fn super_chains_that_reach_the_crate_root_are_imports() {
    let code = "use super::super::service::X;\nuse super::sibling::Y;\nfn f() { super::super::admin::g() }";
    let deep: Vec<String> = crate_paths(&root_supers_as_crate(code, 2))
        .into_iter()
        .collect();
    assert_eq!(deep, ["admin", "service"]);
    let top: Vec<String> = crate_paths(&root_supers_as_crate("use super::hec::Z;", 1))
        .into_iter()
        .collect();
    assert_eq!(top, ["hec"]);
}

#[test]
fn comments_strings_and_test_items_are_not_dependencies() {
    let text = r##"
//! See [`crate::doc_only`].
/* block crate::block_only */
use crate::real::A;
const S: &str = "crate::in_string";
const R: &str = r#"crate::in_raw"#;
const C: char = '"';
fn lifetimes<'a>(x: &'a str) -> &'a str { crate::inline::f(x) }
#[cfg(test)]
mod tests {
    use crate::test_only::B;
    fn g() { let _ = '}'; }
}
#[cfg(test)]
use crate::test_import::C;
"##;
    let code = drop_test_items(&strip_comments_and_strings(text));
    let found: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(found, ["inline", "real"]);
}

#[test]
fn the_checker_reports_a_cycle_and_an_upward_import() {
    let edge = |from: &str, to: &str| Edge {
        from: from.into(),
        to: to.into(),
        file: format!("{from}.rs"),
    };
    let layers = vec![
        ("leaves".to_string(), vec!["low".to_string()]),
        ("top".to_string(), vec!["a".to_string(), "b".to_string()]),
    ];
    let fine = [edge("a", "b"), edge("b", "low")];
    assert_eq!(find_cycle(&fine), None);
    assert!(upward(&fine, &layers).is_empty());
    let cycle = [edge("a", "b"), edge("b", "a")];
    assert_eq!(find_cycle(&cycle).expect("a cycle"), ["a", "b", "a"]);
    let up = [edge("low", "a")];
    assert_eq!(upward(&up, &layers).len(), 1);
}
