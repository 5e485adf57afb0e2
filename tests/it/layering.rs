//! The crate's layers point one way. Each top-level module of the library has a rank; code in a
//! module may name (through `crate::…`) only modules of a lower rank, or itself. Modules of the
//! same rank are peers and do not reach each other. This test reads the sources, so a `use`
//! that reaches upward fails CI with the file, the line and the rule it breaks.
//!
//! ```text
//!  0  text, types           plain values and the sanitiser
//!  1  error                 the one error type
//!  2  validation, telemetry input rules; the crate's metric names and recorders;
//!     provenance            signed model releases, DSSE
//!  3  seal                  digest, Merkle tree, claims, keys
//!  4  audit, gpu, attestation   log format/writer/verifier; device backends; attestations
//!  5  config
//!  6  messages              what the actors say to each other
//!  7  actors                device actors, seal keeper, audit actor, supervisor
//!  8  shard                 the handles a caller holds
//!  9  group                 tensor-parallel groups of those handles
//! 10  system                VramResidency
//! 11  bench                 the benchmark suite (feature `cli`)
//! ```
//!
//! `src/lib.rs` (the public face, re-exporting from every layer) and the command line
//! (`src/main.rs`, `src/cli/`, a separate crate that uses only the public API) stand outside.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // test code fails loudly

use crate::common;

use common::rust_files;

use std::collections::BTreeMap;
use std::path::Path;

pub(crate) const LAYERS: &[(&str, u32)] = &[
    ("text", 0),
    ("types", 0),
    ("error", 1),
    ("validation", 2),
    ("telemetry", 2),
    ("provenance", 2),
    ("seal", 3),
    ("audit", 4),
    ("gpu", 4),
    ("attestation", 4),
    ("config", 5),
    ("messages", 6),
    ("actors", 7),
    ("shard", 8),
    ("tensor_parallel", 9),
    ("system", 10),
    ("bench", 11),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The top-level module a source file belongs to (`src/actors/gpu_actor/seal.rs` → `actors`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Code without comments (line comments, doc comments, block comments) and string contents,
/// so that prose and messages mentioning `crate::x` do not count.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut in_str, mut block) = (false, 0u32);
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        let before = std::mem::replace(&mut prev, c);
        if block > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block -= 1;
            } else if c == '\n' {
                out.push('\n');
            }
            continue;
        }
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_str = false,
                '\n' => out.push('\n'),
                _ => {}
            }
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                block += 1;
            }
            '"' => in_str = true,
            // A raw string `r"…"` / `r#"…"#`: skip to the matching close.
            'r' if !before.is_alphanumeric()
                && before != '_'
                && matches!(chars.peek(), Some('#') | Some('"')) =>
            {
                let mut hashes = 0usize;
                while chars.peek() == Some(&'#') {
                    chars.next();
                    hashes += 1;
                }
                if chars.next() != Some('"') {
                    continue; // `r#ident`, not a string
                }
                let close: String = std::iter::once('"')
                    .chain("#".repeat(hashes).chars())
                    .collect();
                let mut body = String::new();
                for n in chars.by_ref() {
                    body.push(n);
                    if body.ends_with(&close) {
                        break;
                    }
                }
                out.extend(body.chars().filter(|c| *c == '\n'));
            }
            // A character literal such as `'"'` or `'\''` (not a lifetime).
            '\'' => {
                let mut look = chars.clone();
                match (look.next(), look.next()) {
                    (Some('\\'), _) => {
                        chars.next();
                        chars.next();
                        for n in chars.by_ref() {
                            if n == '\'' {
                                break;
                            }
                        }
                    }
                    (Some(_), Some('\'')) => {
                        chars.next();
                        chars.next();
                    }
                    _ => out.push(c),
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every top-level module named through `crate::`, with its line number: `crate::a::…` and each
/// first segment of a group `crate::{a::…, b}`.
fn references(code: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    let mut rest = code;
    let mut consumed = 0usize;
    while let Some(i) = rest.find("crate::") {
        let at = consumed + i;
        let line = code[..at].matches('\n').count() + 1;
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut first_segment = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    if !item.trim().is_empty() {
                        refs.push((line, item.trim().to_string()));
                    }
                    item.clear();
                    first_segment = true;
                    if depth == 0 {
                        break;
                    }
                    continue;
                }
                if depth == 1 && first_segment {
                    if c == ':' {
                        first_segment = false;
                    } else {
                        item.push(c);
                    }
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            refs.push((line, name));
        }
        consumed = at + "crate::".len();
        rest = &code[consumed..];
    }
    refs
}

#[test]
fn no_module_reaches_upward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" || module == "cli" {
            continue;
        }
        let Some(own) = rank(&module) else {
            problems.push(format!(
                "{}: module `{module}` has no layer; add it to LAYERS in tests/it/layering.rs",
                file.display()
            ));
            continue;
        };
        seen.insert(module.clone(), own);
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (line, target) in references(&code) {
            if target == module || target == "self" {
                continue;
            }
            match rank(&target) {
                Some(r) if r < own => {}
                Some(r) => problems.push(format!(
                    "{}:{line}: `{module}` (layer {own}) reaches `crate::{target}` (layer {r}); \
                     a module may only use lower layers",
                    file.display()
                )),
                None => problems.push(format!(
                    "{}:{line}: `crate::{target}` is not a module with a layer (a root \
                     re-export hides which layer it comes from: name the defining module)",
                    file.display()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        seen.len() >= 12,
        "the check found too few modules: {seen:?}"
    );
}

#[test]
fn the_checker_sees_what_it_must() {
    let code = code_only(
        "use crate::{error::VramError, seal::keys};\n// crate::system in a comment\n\
         let s = \"crate::bench\"; let q = '\"'; let r = r#\"x\"crate::shard\"#;\n\
         use crate::actors::ask;\n",
    );
    let refs = references(&code);
    let names: Vec<&str> = refs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["error", "seal", "actors"]);
    assert_eq!(refs[2].0, 4);
}
