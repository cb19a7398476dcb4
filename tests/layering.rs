//! The architecture fitness function: imports run one way, down the layers
//! of `ARCHITECTURE.md`, and no two parts of one folder use each other.
//!
//! Every `crate::`, `super::` and `self::` path in `src/` (in code, in `use`
//! lines and macro arguments alike; comments and strings are skipped) is
//! resolved to the file module it names. Two rules, each failure naming the
//! file, the line and the path:
//! - **Layers.** A top-level module may use only its own layer or layers
//!   below it. The layer table is read from `ARCHITECTURE.md`, its one home;
//!   a top-level module missing from it fails too.
//! - **No cycles.** In every folder, the parts (its files, and its
//!   sub-folders taken whole) must not use each other in a circle. A
//!   folder's `mod.rs` is its front door, not a part: its children may use
//!   it and it them.
//!
//! Needs no broker: it runs with plain `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside the crate: `["http", "ingest"]`; the crate root is `[]`.
type ModulePath = Vec<String>;

/// One path found in a file: where, as written, and the module it resolves to.
#[derive(Debug, Clone)]
struct Use {
    line: usize,
    written: String,
    target: ModulePath,
}

/// A source file of the crate and what it uses.
#[derive(Debug)]
struct SourceFile {
    path: PathBuf,
    module: ModulePath,
    uses: Vec<Use>,
}

#[test]
fn imports_run_down_the_layers_and_form_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = layer_table(&architecture);
    let files = read_crate(&root.join("src"));
    let edges: usize = files.iter().map(|file| file.uses.len()).sum();
    assert!(
        edges > 100,
        "found only {edges} crate paths in src/: the scanner is broken"
    );
    let mut failures = layer_violations(&files, &layers);
    failures.extend(cycles(&files));
    assert!(
        failures.is_empty(),
        "{} import(s) break the layering of ARCHITECTURE.md:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `layer name -> rank` for every top-level module, from the rows of the
/// table between `<!-- layers -->` and `<!-- /layers -->`: `| rank | `a`, `b` | ... |`.
fn layer_table(architecture: &str) -> BTreeMap<String, u32> {
    let start = architecture
        .find("<!-- layers -->")
        .expect("ARCHITECTURE.md has a <!-- layers --> table");
    let end = architecture
        .find("<!-- /layers -->")
        .expect("the layer table ends with <!-- /layers -->");
    let mut layers = BTreeMap::new();
    for row in architecture[start..end].lines() {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(rank) = cells.get(1).and_then(|cell| cell.parse::<u32>().ok()) else {
            continue;
        };
        for module in cells[2].split(',') {
            let module = module.trim().trim_matches('`');
            assert!(
                layers.insert(module.to_owned(), rank).is_none(),
                "ARCHITECTURE.md puts `{module}` in two layers"
            );
        }
    }
    assert!(
        layers.len() > 5,
        "the layer table has too few rows: {layers:?}"
    );
    layers
}

/// The name of a top-level module as the layer table spells it; the crate
/// root file is `lib`.
fn top_level(module: &[String]) -> &str {
    module.first().map_or("lib", String::as_str)
}

fn layer_violations(files: &[SourceFile], layers: &BTreeMap<String, u32>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut unplaced = BTreeSet::new();
    for file in files {
        let from = top_level(&file.module);
        let Some(&from_rank) = layers.get(from) else {
            unplaced.insert(from.to_owned());
            continue;
        };
        for used in &file.uses {
            let to = top_level(&used.target);
            match layers.get(to) {
                None => {
                    unplaced.insert(to.to_owned());
                }
                Some(&to_rank) if to_rank > from_rank => failures.push(format!(
                    "{}:{}: `{}` runs up: `{from}` (layer {from_rank}) uses `{to}` (layer {to_rank})",
                    file.path.display(),
                    used.line,
                    used.written
                )),
                Some(_) => {}
            }
        }
    }
    for module in unplaced {
        failures.push(format!(
            "src/{module}: in no layer of ARCHITECTURE.md; add it to the table"
        ));
    }
    failures
}

/// Circles among the parts of each folder, each named with the imports that
/// close it.
fn cycles(files: &[SourceFile]) -> Vec<String> {
    // folder -> part -> part it uses -> the first import that does.
    let mut graphs: BTreeMap<ModulePath, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for file in files {
        for used in &file.uses {
            let Some((folder, from, to)) = parts_of(&file.module, &used.target) else {
                continue;
            };
            graphs
                .entry(folder)
                .or_default()
                .entry(from)
                .or_default()
                .entry(to)
                .or_insert_with(|| {
                    format!("{}:{}: `{}`", file.path.display(), used.line, used.written)
                });
        }
    }
    let mut failures = Vec::new();
    for (folder, graph) in &graphs {
        for circle in circles(graph) {
            let folder = if folder.is_empty() {
                "src".to_owned()
            } else {
                format!("src/{}", folder.join("/"))
            };
            let mut text = format!("cycle in {folder}/: {}", circle.join(" -> "));
            for pair in circle.windows(2) {
                text.push_str(&format!("\n    {}", graph[&pair[0]][&pair[1]]));
            }
            failures.push(text);
        }
    }
    failures
}

/// The folder in which `from` using `to` is an edge between two parts, and
/// those parts: the children of the deepest folder holding both. `None` when
/// one contains the other: a folder's `mod.rs` is the folder's own module,
/// so it and its parts may use each other.
fn parts_of(from: &[String], to: &[String]) -> Option<(ModulePath, String, String)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let from_part = from.get(common)?;
    let to_part = to.get(common)?;
    Some((from[..common].to_vec(), from_part.clone(), to_part.clone()))
}

/// Every elementary circle's representative: one per strongly connected
/// component with more than one part, as a closed walk through it.
fn circles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = graph
        .keys()
        .chain(graph.values().flat_map(BTreeMap::keys))
        .collect();
    let reaches = |from: &String, to: &String| -> Option<Vec<String>> {
        // Breadth-first, so the circle shown is a shortest one.
        let mut previous: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(node) = queue.pop_front() {
            for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
                if next == to {
                    let mut walk = vec![to.clone(), node.clone()];
                    let mut at = node;
                    while at != from {
                        at = previous[at];
                        walk.push(at.clone());
                    }
                    walk.reverse();
                    return Some(walk);
                }
                if next != from && !previous.contains_key(next) {
                    previous.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        None
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut found = Vec::new();
    for node in nodes {
        if seen.contains(node) {
            continue;
        }
        if let Some(walk) = reaches(node, node) {
            seen.extend(walk.iter().cloned());
            found.push(walk);
        }
    }
    found
}

/// Every `.rs` file under `src`, with the crate paths it uses.
fn read_crate(src: &Path) -> Vec<SourceFile> {
    let mut paths = Vec::new();
    collect_rs(src, &mut paths);
    paths.sort();
    let modules: BTreeSet<ModulePath> = paths.iter().map(|path| module_of(src, path)).collect();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let in_main = path == src.join("main.rs");
            let shown = path.strip_prefix(src.parent().unwrap()).unwrap();
            source_file(shown, module_of(src, &path), &text, in_main, &modules)
        })
        .collect()
}

/// A file of module `module` with its text: the crate paths it uses,
/// resolved, except those naming the module itself.
fn source_file(
    path: &Path,
    module: ModulePath,
    text: &str,
    in_main: bool,
    modules: &BTreeSet<ModulePath>,
) -> SourceFile {
    let uses = crate_paths(text, &module, in_main)
        .into_iter()
        .map(|(line, written, absolute)| Use {
            line,
            written,
            target: resolve(&absolute, modules),
        })
        .filter(|used| used.target != module)
        .collect();
    SourceFile {
        path: path.to_owned(),
        module,
        uses,
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// `src/http/ingest.rs` -> `[http, ingest]`, `src/http/mod.rs` -> `[http]`,
/// `src/lib.rs` -> `[]`, `src/main.rs` -> `[main]` (a crate of its own, on top).
fn module_of(src: &Path, path: &Path) -> ModulePath {
    let relative = path.strip_prefix(src).unwrap().with_extension("");
    let mut module: ModulePath = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if module
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        module.pop();
    }
    module
}

/// The longest module that is a prefix of `path` (an item's path names the
/// module that holds it).
fn resolve(path: &[String], modules: &BTreeSet<ModulePath>) -> ModulePath {
    (0..=path.len())
        .rev()
        .map(|len| path[..len].to_vec())
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}

/// The crate paths in `text` (a file of module `module`), as `(line, written,
/// absolute path)`: `crate::a::b`, `super::x`, `self::y`, and in `main.rs`
/// the library's name; use-trees (`crate::a::{b, c::d}`) give one path per
/// leaf. Inline modules (`mod tests { ... }`) shift what `super` means.
fn crate_paths(text: &str, module: &[String], in_main: bool) -> Vec<(usize, String, ModulePath)> {
    let code = strip_comments_and_strings(text);
    let tokens = tokenize(&code);
    let inline = inline_modules(&tokens);
    let mut found = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        let (word, line, offset) = (&tokens[at].text, tokens[at].line, tokens[at].offset);
        let is_root = matches!(word.as_str(), "crate" | "super" | "self")
            || (in_main && word == "superfone_bridge");
        let preceded_by_path = at > 0 && tokens[at - 1].text == "::";
        if !is_root || preceded_by_path || tokens.get(at + 1).map(|t| t.text.as_str()) != Some("::")
        {
            at += 1;
            continue;
        }
        let mut here: ModulePath = module.to_vec();
        here.extend(
            inline
                .iter()
                .filter(|(_, open, close)| *open < offset && offset < *close)
                .map(|(name, _, _)| name.clone()),
        );
        let (leaves, end) = use_tree(&tokens, at);
        for leaf in leaves {
            let written = leaf.join("::");
            if let Some(absolute) = absolute(&leaf, &here, in_main) {
                found.push((line, written, absolute));
            }
        }
        at = end;
    }
    found
}

/// A path as written, made absolute from module `here`.
fn absolute(written: &[String], here: &[String], in_main: bool) -> Option<ModulePath> {
    let mut segments = written.iter().peekable();
    let mut path: ModulePath = match segments.next()?.as_str() {
        "crate" if in_main => vec!["main".to_owned()],
        "crate" | "superfone_bridge" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    while segments.peek().is_some_and(|segment| *segment == "super") {
        segments.next();
        path.pop()?;
    }
    path.extend(segments.filter(|segment| *segment != "self").cloned());
    Some(path)
}

#[derive(Debug, Clone)]
struct Token {
    text: String,
    line: usize,
    offset: usize,
}

/// Identifiers, `::`, and single punctuation characters, with their line.
fn tokenize(code: &str) -> Vec<Token> {
    let bytes = code.as_bytes();
    let mut tokens = Vec::new();
    let (mut at, mut line) = (0, 1);
    while at < bytes.len() {
        let c = bytes[at];
        if c == b'\n' {
            line += 1;
            at += 1;
        } else if c.is_ascii_whitespace() {
            at += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let start = at;
            while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
                at += 1;
            }
            let text = code[start..at].to_owned();
            tokens.push(Token {
                text,
                line,
                offset: start,
            });
        } else if code[at..].starts_with("::") {
            tokens.push(Token {
                text: "::".into(),
                line,
                offset: at,
            });
            at += 2;
        } else {
            let width = code[at..].chars().next().map_or(1, char::len_utf8);
            tokens.push(Token {
                text: code[at..at + width].to_owned(),
                line,
                offset: at,
            });
            at += width;
        }
    }
    tokens
}

/// Reads a use-tree starting at token `at` (`a::b::{c, d::*}`): its leaves
/// as segment lists, and the index of the first token after it.
fn use_tree(tokens: &[Token], at: usize) -> (Vec<ModulePath>, usize) {
    let mut prefix = Vec::new();
    let mut at = at;
    loop {
        match tokens.get(at).map(|token| token.text.as_str()) {
            Some("{") => {
                let mut leaves = Vec::new();
                at += 1;
                while let Some(token) = tokens.get(at) {
                    match token.text.as_str() {
                        "}" => {
                            at += 1;
                            break;
                        }
                        "," => at += 1,
                        _ => {
                            let (inner, end) = use_tree(tokens, at);
                            for leaf in inner {
                                // `{self, ..}` names the prefix itself.
                                let mut full = prefix.clone();
                                full.extend(leaf.into_iter().filter(|segment| segment != "self"));
                                leaves.push(full);
                            }
                            at = end;
                            // Skip `as name` and anything up to the next item.
                            while let Some(next) = tokens.get(at) {
                                if next.text == "," || next.text == "}" {
                                    break;
                                }
                                at += 1;
                            }
                        }
                    }
                }
                return (leaves, at);
            }
            Some("*") => return (vec![prefix], at + 1),
            Some(word) if is_ident(word) => {
                prefix.push(word.to_owned());
                at += 1;
                if tokens.get(at).map(|token| token.text.as_str()) == Some("::") {
                    at += 1;
                    continue;
                }
                return (vec![prefix], at);
            }
            _ => return (vec![prefix], at),
        }
    }
}

fn is_ident(word: &str) -> bool {
    word.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

/// `(name, offset of its "{", offset of its "}")` of every inline `mod name { ... }`.
fn inline_modules(tokens: &[Token]) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        if token.text != "mod" {
            continue;
        }
        let (Some(name), Some(open)) = (tokens.get(at + 1), tokens.get(at + 2)) else {
            continue;
        };
        if open.text != "{" {
            continue;
        }
        let mut depth = 0;
        for token in &tokens[at + 2..] {
            match token.text.as_str() {
                "{" => depth += 1,
                "}" => {
                    depth -= 1;
                    if depth == 0 {
                        found.push((name.text.clone(), open.offset, token.offset));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    found
}

/// The code with comments and string literals blanked, newlines kept (so
/// lines still count) and lengths kept (so offsets still match).
fn strip_comments_and_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    let blank = |byte: u8| if byte == b'\n' { b'\n' } else { b' ' };
    while at < bytes.len() {
        let rest = &text[at..];
        if rest.starts_with("//") {
            while at < bytes.len() && bytes[at] != b'\n' {
                out.push(b' ');
                at += 1;
            }
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(bytes.len(), |end| at + end + 2);
            out.extend(bytes[at..end].iter().map(|&byte| blank(byte)));
            at = end;
        } else if let Some(hashes) = raw_string_start(rest) {
            let closing = format!("\"{}", "#".repeat(hashes));
            let body = at + 2 + hashes;
            let end = text[body..]
                .find(&closing)
                .map_or(bytes.len(), |end| body + end + closing.len());
            out.extend(bytes[at..end].iter().map(|&byte| blank(byte)));
            at = end;
        } else if bytes[at] == b'"' {
            let mut end = at + 1;
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let end = (end + 1).min(bytes.len());
            out.extend(bytes[at..end].iter().map(|&byte| blank(byte)));
            at = end;
        } else if bytes[at] == b'\'' && char_literal_len(rest).is_some() {
            let len = char_literal_len(rest).unwrap();
            out.extend(std::iter::repeat_n(b' ', len));
            at += len;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII blanks were written over whole literals")
}

/// `r"`, `r#"`, `br##"` ...: the number of `#`s.
fn raw_string_start(rest: &str) -> Option<usize> {
    let rest = rest.strip_prefix('b').unwrap_or(rest);
    let rest = rest.strip_prefix('r')?;
    let hashes = rest.bytes().take_while(|&byte| byte == b'#').count();
    (rest.as_bytes().get(hashes) == Some(&b'"')).then_some(hashes)
}

/// The byte length of a char literal at the start of `rest` (`'a'`, `'\n'`,
/// `'"'`), or `None` for a lifetime.
fn char_literal_len(rest: &str) -> Option<usize> {
    let mut chars = rest.char_indices().skip(1);
    let (_, first) = chars.next()?;
    if first == '\\' {
        // After the backslash and the escaped character: `'\''`, `'\u{..}'`.
        return Some(3 + rest.get(3..)?.find('\'')? + 1);
    }
    let (at, close) = chars.next()?;
    (close == '\'').then_some(at + 1)
}

/// The scanner and both rules, on made-up files: an upward import and a
/// circle are found, what is allowed is not.
#[test]
fn the_check_finds_an_upward_import_and_a_circle() {
    let modules: BTreeSet<ModulePath> = [
        vec![],
        vec!["low".into()],
        vec!["high".into()],
        vec!["high".into(), "a".into()],
        vec!["high".into(), "b".into()],
    ]
    .into_iter()
    .collect();
    let layers: BTreeMap<String, u32> = [("lib", 9), ("low", 0), ("high", 1)]
        .map(|(name, rank)| (name.to_owned(), rank))
        .into_iter()
        .collect();
    let file = |path: &str, module: &[&str], text: &str| {
        let module: ModulePath = module.iter().map(|s| s.to_string()).collect();
        source_file(Path::new(path), module, text, false, &modules)
    };
    let files = [
        file(
            "src/low.rs",
            &["low"],
            "// crate::high in a comment is no import\nconst S: &str = \"crate::high::a\";\nfn f() { crate::high::b::g(); }",
        ),
        file(
            "src/high/a.rs",
            &["high", "a"],
            "use crate::{low, high::b::{self, Thing as Other}};\nuse super::b::*;",
        ),
        file(
            "src/high/b.rs",
            &["high", "b"],
            "fn g() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::high::a::X;\n}",
        ),
    ];
    let upward = layer_violations(&files, &layers);
    assert_eq!(
        upward,
        ["src/low.rs:3: `crate::high::b::g` runs up: `low` (layer 0) uses `high` (layer 1)"]
    );
    // The upward import also closes a circle between the layers.
    let circles = cycles(&files);
    assert_eq!(circles.len(), 2, "{circles:?}");
    assert_eq!(
        circles[0],
        "cycle in src/: high -> low -> high\n    src/high/a.rs:1: `crate::low`\n    src/low.rs:3: `crate::high::b::g`"
    );
    assert_eq!(
        circles[1],
        "cycle in src/high/: a -> b -> a\n    src/high/a.rs:1: `crate::high::b`\n    src/high/b.rs:5: `crate::high::a::X`"
    );
    // `super::*` in b's tests is b itself; `self` in a use-tree is its prefix.
    assert!(files[2].uses.iter().all(|used| used.written != "super"));
    assert!(files[1]
        .uses
        .iter()
        .any(|used| used.written == "crate::high::b" && used.line == 1));
}
