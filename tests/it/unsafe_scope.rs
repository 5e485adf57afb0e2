//! `unsafe` lives only in the CUDA backend (`src/gpu/cuda/`, FFI to the driver). The crate's
//! lint level is `deny` rather than `forbid` only so that module can allow it; this test keeps
//! everything else honest: no `unsafe` block, fn or impl and no `allow(unsafe_code)` anywhere
//! else, and every `unsafe` inside the CUDA module preceded by a `// SAFETY:` comment (an
//! `unsafe fn` by a `# Safety` doc section).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use crate::common;

use common::rust_files;

use std::path::Path;

/// Whether a line (outside comments) uses the `unsafe` keyword.
fn uses_unsafe(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|word| word == "unsafe")
}

#[test]
fn unsafe_appears_only_in_the_cuda_backend_and_always_with_a_safety_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cuda = root.join("src/gpu/cuda");
    let mut files = Vec::new();
    // The library and the command line (its own package in the workspace).
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("cli/src"), &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let inside = file.starts_with(&cuda);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let at = format!("{}:{}", file.strip_prefix(root).unwrap().display(), i + 1);
            if !inside && (line.contains("allow(unsafe_code)") || uses_unsafe(line)) {
                problems.push(format!("{at}: unsafe outside src/gpu/cuda"));
            }
            if inside && uses_unsafe(line) {
                // An `unsafe fn` states its contract in a `# Safety` doc section; any other
                // `unsafe` (block, impl) has a `// SAFETY:` comment on one of the lines just
                // above (a comment block may run a few lines).
                let above = lines[i.saturating_sub(10)..i].join("\n");
                let declares_fn = line.contains("unsafe fn ");
                let ok = if declares_fn {
                    above.contains("# Safety")
                } else {
                    above.contains("SAFETY:") || line.contains("SAFETY:")
                };
                if !ok {
                    problems.push(format!(
                        "{at}: unsafe without {}",
                        if declares_fn {
                            "a `# Safety` doc section"
                        } else {
                            "a `// SAFETY:` comment"
                        }
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
