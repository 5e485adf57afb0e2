//! Text and JSON that came from a file (a ShardInfo record, an audit log, a JSON member name) on
//! its way to a terminal, and the bounded read of the JSON files the command takes.
//!
//! Nothing a peer wrote reaches stdout or stderr raw: every such string passes
//! [`vram_residency::text::sanitize`] (control characters, ANSI/OSC escapes, bidi overrides and
//! zero-width characters become U+FFFD) and is cut to a bounded length. `CliError::report` does
//! the same to every `error:` and `hint:` line, so an error that quotes a file cannot smuggle an
//! escape sequence out either. JSON output (`--json`) is sanitised value by value, keys included:
//! `serde_json` escapes C0 controls but passes C1 controls and bidi overrides through.

use std::io::Read;
use std::path::Path;

use vram_residency::text::sanitize;
use vram_residency::validation::shown_path;

use super::error::CliError;

/// Largest JSON input the command reads (`verify-info FILE.json`): 1 MiB. A ShardInfo record is
/// a few hundred bytes; a file of JSON Lines holds thousands of them within this bound.
pub const MAX_JSON_INPUT: u64 = 1 << 20;

/// Longest rendering of one error message (in characters) before its middle is elided.
pub const MAX_MESSAGE_CHARS: usize = 2048;

/// `s` safe for a terminal: see [`vram_residency::text::sanitize`].
pub fn text(s: &str) -> String {
    sanitize(s)
}

/// `s` sanitised and cut to `max_chars` characters (plus `…` when cut).
pub fn field(s: &str, max_chars: usize) -> String {
    let clean = sanitize(s);
    let mut chars = clean.chars();
    let mut out: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// `s` sanitised, with its middle elided when it is longer than `max_chars` characters, so both
/// the start (what failed) and the end (where: serde_json puts `at line L column C` last) stay.
pub fn bounded(s: &str, max_chars: usize) -> String {
    let clean = sanitize(s);
    let count = clean.chars().count();
    if count <= max_chars {
        return clean;
    }
    let tail_len = max_chars / 4;
    let head_len = max_chars.saturating_sub(tail_len);
    let head: String = clean.chars().take(head_len).collect();
    let tail: String = clean.chars().skip(count.saturating_sub(tail_len)).collect();
    format!("{head}…{tail}")
}

/// A JSON value with every string (and every object key) sanitised, for `--json` output.
pub fn json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(sanitize(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (sanitize(&k), json(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Reads a JSON file the user named, refusing (usage error, exit 2) one larger than
/// [`MAX_JSON_INPUT`] without reading more than one byte past the limit, a directory, and bytes
/// that are not UTF-8. `what` names the file in messages ("ShardInfo file").
pub fn read_json_file(path: &Path, what: &str) -> Result<String, CliError> {
    let shown = shown_path(path);
    let buf = read_bounded(
        path,
        what,
        usize::try_from(MAX_JSON_INPUT).unwrap_or(usize::MAX),
    )?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_JSON_INPUT {
        return Err(CliError::usage(format!(
            "{what} {shown} is larger than {MAX_JSON_INPUT} bytes (1 MiB); refusing to read it"
        ))
        .hint("give the JSON printed by `vram-residency seal` (a few hundred bytes per record)"));
    }
    String::from_utf8(buf).map_err(|e| {
        CliError::usage(format!(
            "{what} {shown} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Reads at most `limit + 1` bytes of a file the user named (so a caller can tell a file over
/// `limit` without reading it all), refusing a directory.
pub fn read_bounded(path: &Path, what: &str, limit: usize) -> Result<Vec<u8>, CliError> {
    let shown = shown_path(path);
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::io(format!("cannot read {what} {shown}"), &e))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(CliError::usage(format!(
            "{what} {shown} is a directory, not a file"
        )));
    }
    let mut buf = Vec::new();
    file.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| CliError::io(format!("cannot read {what} {shown}"), &e))?;
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // test code
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn clean(s: &str) -> bool {
        s.chars().all(|c| !c.is_control()) && !s.contains('\u{202E}') && !s.contains('\u{200B}')
    }

    #[test]
    fn escapes_are_replaced() {
        assert_eq!(text("a\u{1b}]0;t\u{7}b"), "a\u{FFFD}b");
        assert_eq!(field("\u{1b}[31mred", 2), "\u{FFFD}r…");
        assert_eq!(field("abc", 3), "abc");
        let v = json(serde_json::json!({"k\u{9b}": ["\u{202E}x", 1, {"\u{1b}[2J": null}]}));
        assert_eq!(
            v.to_string(),
            "{\"k\u{FFFD}\":[\"\u{FFFD}x\",1,{\"\u{FFFD}\":null}]}"
        );
    }

    #[test]
    fn bounded_keeps_both_ends() {
        let long = format!("start {} end", "x".repeat(10_000));
        let b = bounded(&long, 100);
        assert!(b.starts_with("start "), "{b}");
        assert!(b.ends_with(" end"), "{b}");
        assert!(b.chars().count() <= 101, "{b}");
        assert_eq!(bounded("short", 100), "short");
    }

    #[test]
    fn oversized_and_non_utf8_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_JSON_INPUT as usize) + 1]).unwrap();
        let e = read_json_file(&big, "file").unwrap_err();
        assert_eq!(e.code, super::super::error::Code::Usage);
        assert!(e.message.contains("larger than"), "{}", e.message);
        let exact = dir.path().join("exact.json");
        std::fs::write(&exact, vec![b' '; MAX_JSON_INPUT as usize]).unwrap();
        assert!(read_json_file(&exact, "file").is_ok());
        let bin = dir.path().join("bin.json");
        std::fs::write(&bin, b"{\"a\":\"\xff\"}").unwrap();
        let e = read_json_file(&bin, "file").unwrap_err();
        assert_eq!(e.code, super::super::error::Code::Usage);
        let e = read_json_file(dir.path(), "file").unwrap_err();
        assert_eq!(e.code, super::super::error::Code::Usage);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn nothing_unsafe_survives(s in any::<String>(), max in 0usize..64) {
            prop_assert!(clean(&text(&s)));
            let f = field(&s, max);
            prop_assert!(clean(&f));
            prop_assert!(f.chars().count() <= max.saturating_add(1));
            let b = bounded(&s, max.saturating_add(8));
            prop_assert!(clean(&b));
            prop_assert!(b.chars().count() <= max.saturating_add(9));
            let v = json(serde_json::json!({ s.clone(): [s.clone()] }));
            prop_assert!(clean(&v.to_string()));
        }
    }
}
