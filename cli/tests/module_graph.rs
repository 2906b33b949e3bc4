//! The CLI's modules import each other without circles.
//!
//! A module is a file of `cli/src`. Its edges are the files its paths name: `use crate::a::b`,
//! `crate::a::b::f(…)` in code, `super::…`, and paths through a module it imported by name
//! (`use crate::commands;` then `commands::demo::run`). A path goes to the deepest file it
//! names (`crate::commands::demo::Demo` → `commands/demo.rs`). Unit-test modules
//! (`#[cfg(test)] mod tests`) and comments are left out: they are not what the code depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as paths relative to `src()`.
fn files(dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read cli/src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(src()).expect("under src");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// The module path of a file: `commands/demo.rs` → `["commands", "demo"]`; the crate roots
/// (`main.rs`, `lib.rs`) and `mod.rs` files name their directory.
fn module_of(file: &str) -> Vec<String> {
    let stem = file.strip_suffix(".rs").expect(".rs");
    let mut parts: Vec<String> = stem.split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod")) {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "main" || parts[0] == "lib") {
        parts.clear();
    }
    parts
}

/// The deepest file that module path `path` reaches, if it names one (or its prefix does).
fn file_of(path: &[String], by_module: &BTreeMap<Vec<String>, String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .find_map(|n| by_module.get(&path[..n]).cloned())
}

/// The source without comments and without the unit-test module at its end.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The `a::b::{c, d::e}` paths of a piece of code, expanded (`a::b::c`, `a::b::d::e`), as
/// segment lists. Paths start at an identifier and continue through `::`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_ident = (chars[i].is_alphabetic() || chars[i] == '_')
            && (i == 0
                || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':'));
        if starts_ident {
            let (found, end) = path_at(&chars, i, Vec::new());
            out.extend(found.into_iter().filter(|p| p.len() > 1));
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The path(s) starting at `chars[i]` (after `prefix`), and where they end.
fn path_at(chars: &[char], mut i: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut segs = prefix;
    loop {
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if i > start {
            segs.push(chars[start..i].iter().collect());
        }
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
            while chars.get(i).is_some_and(|c| c.is_whitespace()) {
                i += 1;
            }
            if chars.get(i) == Some(&'{') {
                // A group: each member continues the path.
                let mut all = Vec::new();
                i += 1;
                loop {
                    while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                        i += 1;
                    }
                    match chars.get(i) {
                        None => return (all, i),
                        Some('}') => return (all, i + 1),
                        Some(_) => {
                            let (found, end) = path_at(chars, i, segs.clone());
                            all.extend(found);
                            // Skip `as x` and anything else up to the next member.
                            i = end;
                            while chars.get(i).is_some_and(|c| *c != ',' && *c != '}') {
                                i += 1;
                            }
                        }
                    }
                }
            }
            continue;
        }
        return (vec![segs], i);
    }
}

/// Module file → the module files it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let by_module: BTreeMap<Vec<String>, String> =
        all.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut graph = BTreeMap::new();
    for file in &all {
        let here = module_of(file);
        let text = std::fs::read_to_string(src().join(file)).expect("read source");
        let code = code_of(&text);
        let found = paths(&code);
        // Names brought in by `use`, which later paths may start with.
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut targets = BTreeSet::new();
        let absolute =
            |p: &[String], aliases: &BTreeMap<String, Vec<String>>| -> Option<Vec<String>> {
                match p[0].as_str() {
                    "crate" => Some(p[1..].to_vec()),
                    "self" => Some(here.iter().cloned().chain(p[1..].iter().cloned()).collect()),
                    "super" => {
                        let mut base = here.clone();
                        let mut rest = p;
                        while rest.first().map(String::as_str) == Some("super") {
                            base.pop();
                            rest = &rest[1..];
                        }
                        Some(base.into_iter().chain(rest.iter().cloned()).collect())
                    }
                    name => aliases
                        .get(name)
                        .map(|a| a.iter().cloned().chain(p[1..].iter().cloned()).collect()),
                }
            };
        for p in &found {
            if let Some(abs) = absolute(p, &aliases) {
                if let Some(last) = abs.last() {
                    aliases.insert(last.clone(), abs.clone());
                }
                if let Some(target) = file_of(&abs, &by_module) {
                    // A path to the crate root, or into this very file, is no edge.
                    if target != *file && !module_of(&target).is_empty() {
                        targets.insert(target);
                    }
                }
            }
        }
        graph.insert(file.clone(), targets);
    }
    graph
}

/// The cycles of `graph`: one per strongly connected part found by depth-first search, each
/// the path back to where it closed, rotated to start at its smallest file.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(at) = stack.iter().position(|s| s == m) {
                let mut c = stack[at..].to_vec();
                let min = c.iter().enumerate().min_by_key(|(_, s)| *s).map(|(i, _)| i);
                c.rotate_left(min.unwrap_or(0));
                if !out.contains(&c) {
                    out.push(c);
                }
            } else if !done.contains(m) {
                visit(m, graph, stack, done, out);
            }
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if !done.contains(n) {
            visit(n, graph, &mut Vec::new(), &mut done, &mut out);
        }
    }
    out
}

#[test]
fn no_module_of_the_cli_imports_itself_through_others() {
    let graph = graph();
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import circles among cli/src modules (each line: a → b → … → a):\n{}",
        found
            .iter()
            .map(|c| format!("  {} → {}", c.join(" → "), c[0]))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Whether `file` is a command: under `commands/` or the replay tool's `replay/`.
fn is_command(file: &str) -> bool {
    file.starts_with("commands/") || file.starts_with("replay/")
}

#[test]
fn shared_modules_import_no_command_and_no_one_imports_cli_rs() {
    // Only `cli.rs` (the one `match`) and the commands themselves may name a command, and no
    // one names `cli.rs`, which names them all.
    let may_name_commands = |file: &str| is_command(file) || file == "cli.rs";
    let wrong: Vec<String> = graph()
        .into_iter()
        .flat_map(|(file, uses)| {
            let shared = !may_name_commands(&file);
            uses.into_iter()
                .filter(move |u| u == "cli.rs" || (shared && is_command(u)))
                .map(move |u| format!("  {file} → {u}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "modules that import cli.rs, or shared modules that import a command (move what they need out of the command):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_graph_sees_uses_groups_aliases_and_super() {
    let p = paths(
        "use crate::commands::{bootstrap, demo::Demo as D};\nlet x = crate::output::line(a::b);",
    );
    let shown: Vec<String> = p.iter().map(|s| s.join("::")).collect();
    assert_eq!(
        shown,
        [
            "crate::commands::bootstrap",
            "crate::commands::demo::Demo",
            "crate::output::line",
            "a::b"
        ]
    );
    let g = graph();
    // cli.rs reaches the command modules through `use crate::commands;`.
    assert!(
        g["cli.rs"].contains("commands/demo.rs"),
        "{:?}",
        g["cli.rs"]
    );
    // `mod generations;` + `super::` inside commands/demo/.
    let mut tiny = BTreeMap::new();
    tiny.insert("a.rs".to_string(), BTreeSet::from(["b.rs".to_string()]));
    tiny.insert("b.rs".to_string(), BTreeSet::from(["a.rs".to_string()]));
    assert_eq!(cycles(&tiny), [["a.rs".to_string(), "b.rs".to_string()]]);
}
