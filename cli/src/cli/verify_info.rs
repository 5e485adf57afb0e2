//! `verify-info FILE.json`: checks seal records — `ShardInfo` (`vram-seal-v1`) and tensor-parallel
//! `GroupInfo` (`vram-group-v1`), one JSON object, or JSON Lines as printed by `seal` — against
//! the seal key derived from the worker token: offline, signatures only. A group is checked the
//! way a peer checks it (shape, every member seal, the group signature). When a record fails,
//! says which field looks wrong if the fault is visible without the key (format tag, hex lengths,
//! identifiers, sizes, member positions); otherwise that the signature does not match.
//!
//! The file comes from a peer: it is read only up to 1 MiB (a larger one is refused, exit 2),
//! and every field, JSON error and member name it holds is sanitised and bounded before it is
//! printed.

use std::path::PathBuf;

use clap::Args;
use vram_residency::seal::claims::{self, SEAL_FORMAT};
use vram_residency::seal::group_record::{self, GROUP_FORMAT};
use vram_residency::seal::keys::SealKey;
use vram_residency::{GroupInfo, ShardInfo, validation};

use super::Global;
use super::error::CliError;
use super::token::TokenSource;
use super::untrusted;

/// Arguments of `verify-info`.
#[derive(Debug, Args)]
pub struct VerifyInfoArgs {
    /// A ShardInfo or GroupInfo JSON file (a single object, or one object per line as printed
    /// by `seal`; at most 1 MiB).
    #[arg(value_name = "FILE.json")]
    pub file: PathBuf,
}

/// One record of the file: a shard's seal or a group's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A `vram-seal-v1` record.
    Shard(ShardInfo),
    /// A `vram-group-v1` record.
    Group(GroupInfo),
}

/// Runs `verify-info`.
pub fn run(global: &Global, args: VerifyInfoArgs) -> Result<(), CliError> {
    let token = TokenSource::require(global.token_file.as_deref())?.load()?;
    let shown = validation::shown_path(&args.file);
    let text = untrusted::read_json_file(&args.file, "ShardInfo file")?;
    let records = parse(&text).map_err(|e| {
        CliError::usage(format!(
            "{shown} is not a ShardInfo or GroupInfo JSON record: {e}"
        ))
        .hint("give the JSON printed by `vram-residency seal` (one object, or one per line)")
    })?;
    let key = SealKey::derive(&token);
    drop(token);

    let mut first_failure: Option<CliError> = None;
    for (line, record) in &records {
        let at = if records.len() > 1 {
            format!("{shown}:{line}")
        } else {
            shown.clone()
        };
        // Every field below was written by whoever made the file (a valid signature only says
        // a holder of the token signed it): sanitised and bounded before it is printed.
        let failed = match record {
            Record::Shard(info) => check_shard(&key, &at, info),
            Record::Group(info) => check_group(&key, &at, info),
        };
        if let Some(why) = failed
            && first_failure.is_none()
        {
            let err = CliError::integrity(format!("{at}: {why}"));
            first_failure = Some(if why.ends_with(SIGNATURE_MISMATCH) {
                err.hint(
                    "check the token is the one of the worker that sealed it; a record changed after sealing never verifies",
                )
            } else {
                err
            });
        }
    }
    println!(
        "note: this checks the seal record offline; it does not show that the shard is still resident"
    );
    match first_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One line describing a member or a shard whose seal verified.
fn describe(info: &ShardInfo) -> String {
    format!(
        "shard {} ({}), {} bytes on device {}, sha256 {}, sealed {} by {}",
        untrusted::field(&info.shard_id, validation::MAX_ID_LEN),
        untrusted::field(&info.model_ref, validation::MAX_MODEL_REF_LEN),
        info.vram_bytes,
        info.gpu_device,
        untrusted::field(&info.digest, 64),
        sealed_at(info.sealed_at_unix_nanos),
        untrusted::field(&info.worker_id, validation::MAX_ID_LEN)
    )
}

/// Checks one shard record and prints its verdict; returns why it failed (sanitised).
fn check_shard(key: &SealKey, at: &str, info: &ShardInfo) -> Option<String> {
    if claims::verify(key, info) {
        println!("ok: {at}: signature valid for {}", describe(info));
        return None;
    }
    let why = untrusted::text(&diagnose(info));
    println!(
        "FAILED: {at}: shard {:?}: {why}",
        untrusted::field(&info.shard_id, validation::MAX_ID_LEN)
    );
    Some(why)
}

/// Checks one group record as a peer does (shape, every member seal, the group signature),
/// printing the verdict and, when it holds, one line per member; returns why it failed.
fn check_group(key: &SealKey, at: &str, info: &GroupInfo) -> Option<String> {
    let name = untrusted::field(&info.group_id, validation::MAX_ID_LEN);
    match diagnose_group(key, info) {
        None => {
            println!(
                "ok: {at}: group {name} ({}): {} member(s), group signature and every member seal valid, sealed {} by {}",
                untrusted::field(&info.model_ref, validation::MAX_MODEL_REF_LEN),
                info.members.len(),
                sealed_at(info.sealed_at_unix_nanos),
                untrusted::field(&info.worker_id, validation::MAX_ID_LEN)
            );
            for (i, member) in info.members.iter().enumerate() {
                println!("  member {i}: {}", describe(member));
            }
            None
        }
        Some(why) => {
            let why = untrusted::text(&why);
            println!("FAILED: {at}: group {name:?}: {why}");
            Some(why)
        }
    }
}

/// Why a group record does not verify, or `None` when it does.
pub fn diagnose_group(key: &SealKey, info: &GroupInfo) -> Option<String> {
    if info.format != GROUP_FORMAT {
        return Some(format!(
            "format is {:?}, expected {GROUP_FORMAT:?}",
            info.format.chars().take(32).collect::<String>()
        ));
    }
    if let Err(e) = info.check_structure() {
        return Some(plain(e));
    }
    if let Some((i, member)) = info
        .members
        .iter()
        .enumerate()
        .find(|(_, m)| !claims::verify(key, m))
    {
        return Some(format!(
            "member {i} ({}): {}",
            untrusted::field(&member.shard_id, validation::MAX_ID_LEN),
            diagnose(member)
        ));
    }
    if group_record::verify(key, info) {
        return None;
    }
    for (field, value) in [("worker_id", &info.worker_id), ("group_id", &info.group_id)] {
        if let Err(e) = validation::validate_identifier(field, value) {
            return Some(plain(e));
        }
    }
    if let Err(e) = validation::validate_model_ref(&info.model_ref) {
        return Some(plain(e));
    }
    if let Some(p) = hex_problem("signature", &info.signature) {
        return Some(p);
    }
    Some(format!("group {SIGNATURE_MISMATCH}"))
}

/// Longest rendering of a JSON parse error, in characters (serde_json quotes unknown member
/// names and bad values from the file in full).
const MAX_PARSE_ERROR_CHARS: usize = 400;

/// A JSON parse error as it may be shown: sanitised (serde_json quotes an unknown member's name
/// raw, escape sequences included) and bounded.
fn parse_error(e: &serde_json::Error) -> String {
    untrusted::bounded(&e.to_string(), MAX_PARSE_ERROR_CHARS)
}

/// Parses one record: a `GroupInfo` when it says it is one (its format tag, or a `members`
/// list), a `ShardInfo` otherwise, so a parse error speaks of the record it was meant to be.
fn parse_record(text: &str) -> Result<Record, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default)]
        format: Option<String>,
        #[serde(default)]
        members: Option<serde::de::IgnoredAny>,
    }
    let group = serde_json::from_str::<Peek>(text)
        .is_ok_and(|p| p.format.as_deref() == Some(GROUP_FORMAT) || p.members.is_some());
    if group {
        serde_json::from_str::<GroupInfo>(text).map(Record::Group)
    } else {
        serde_json::from_str::<ShardInfo>(text).map(Record::Shard)
    }
}

/// Parses one JSON object, or JSON Lines (blank lines ignored). Returns 1-based line numbers.
/// Error messages are sanitised and bounded.
fn parse(text: &str) -> Result<Vec<(usize, Record)>, String> {
    let whole = match parse_record(text) {
        Ok(record) => return Ok(vec![(1, record)]),
        Err(e) => e,
    };
    let several = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .nth(1)
        .is_some();
    if !several {
        return match text.trim() {
            "" => Err("the file is empty".to_string()),
            _ => Err(parse_error(&whole)),
        };
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i.saturating_add(1);
        if line.trim().is_empty() {
            continue;
        }
        match parse_record(line) {
            Ok(record) => out.push((n, record)),
            // The first line is not a whole value: one object spread over several lines
            // (pretty-printed), whose own error says more than "EOF on line 1".
            Err(e) if out.is_empty() && e.is_eof() => return Err(parse_error(&whole)),
            Err(e) => return Err(format!("line {n}: {}", parse_error(&e))),
        }
    }
    Ok(out)
}

fn hex_problem(field: &str, value: &str) -> Option<String> {
    let chars = value.chars().count();
    if chars != 64 {
        return Some(format!(
            "{field} must be 64 lowercase hex characters (32 bytes), got {chars} characters"
        ));
    }
    if let Some((pos, c)) = value.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Some(format!(
            "{field} has a non-hex character {c:?} at position {pos}"
        ));
    }
    if let Some((pos, c)) = value.char_indices().find(|(_, c)| c.is_ascii_uppercase()) {
        return Some(format!(
            "{field} has an uppercase hex digit {c:?} at position {pos}; vram-seal-v1 uses lowercase hex"
        ));
    }
    None
}

/// Says which field looks wrong, when that can be seen without the key.
pub fn diagnose(info: &ShardInfo) -> String {
    if info.format != SEAL_FORMAT {
        return format!(
            "format is {:?}, expected {SEAL_FORMAT:?}",
            info.format.chars().take(32).collect::<String>()
        );
    }
    for (field, value) in [
        ("digest", &info.digest),
        ("merkle_root", &info.merkle_root),
        ("signature", &info.signature),
    ] {
        if let Some(p) = hex_problem(field, value) {
            return p;
        }
    }
    for (field, value) in [("worker_id", &info.worker_id), ("shard_id", &info.shard_id)] {
        if let Err(e) = validation::validate_identifier(field, value) {
            return plain(e);
        }
    }
    if let Err(e) = validation::validate_model_ref(&info.model_ref) {
        return plain(e);
    }
    if let Err(e) = validation::validate_chunk_size(info.chunk_size) {
        return plain(e);
    }
    if info.vram_bytes == 0 {
        return "vram_bytes is 0; a sealed shard is never empty".to_string();
    }
    match (info.shard_index, info.total_shards) {
        (Some(_), None) | (None, Some(_)) => {
            return "shard_index and total_shards must be both present or both null".to_string();
        }
        (Some(i), Some(t)) => {
            if let Err(e) = validation::validate_tensor_parallel(i, t) {
                return plain(e);
            }
        }
        (None, None) => {}
    }
    SIGNATURE_MISMATCH.to_string()
}

const SIGNATURE_MISMATCH: &str =
    "signature does not match: the record was altered or signed with another token";

fn plain(e: vram_residency::VramError) -> String {
    match e {
        vram_residency::VramError::InvalidInput(m) => m,
        other => other.to_string(),
    }
}

/// RFC 3339 time of a seal, or the raw nanoseconds when out of range.
pub fn sealed_at(nanos: u64) -> String {
    i64::try_from(nanos)
        .ok()
        .map(chrono::DateTime::from_timestamp_nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{nanos} ns after the epoch"))
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // test code
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vram_residency::WorkerToken;

    fn clean(s: &str) -> bool {
        untrusted::text(s) == s
    }

    fn record() -> ShardInfo {
        ShardInfo {
            format: SEAL_FORMAT.into(),
            worker_id: "worker-1".into(),
            shard_id: "shard_a".into(),
            model_ref: "hf:org/model@rev".into(),
            gpu_device: 0,
            vram_bytes: 1 << 20,
            digest: "ab".repeat(32),
            merkle_root: "cd".repeat(32),
            chunk_size: 1 << 20,
            sealed_at_unix_nanos: 1_700_000_000_000_000_000,
            shard_index: None,
            total_shards: None,
            signature: String::new(),
        }
    }

    #[test]
    fn unknown_member_names_come_back_sanitised() {
        let mut v = serde_json::to_value(record()).unwrap();
        v["\u{1b}]0;pwned\u{7}\u{1b}[31mred\u{9b}2J\u{202e}"] = 1.into();
        let one = v.to_string();
        let err = parse(&one).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        assert!(clean(&err), "{err:?}");
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let err = parse(&pretty).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        assert!(clean(&err), "{err:?}");
        let lines = format!("{}\n{one}\n", serde_json::to_string(&record()).unwrap());
        let err = parse(&lines).unwrap_err();
        assert!(err.starts_with("line 2: unknown field"), "{err}");
        assert!(clean(&err), "{err:?}");
    }

    #[test]
    fn a_huge_member_name_gives_a_bounded_error() {
        let name = "x".repeat(500_000);
        let err = parse(&format!("{{\"{name}\":1}}")).unwrap_err();
        assert!(
            err.chars().count() <= MAX_PARSE_ERROR_CHARS + 1,
            "{}",
            err.len()
        );
        assert!(err.contains("column"), "{err}");
    }

    #[test]
    fn empty_and_blank_files_are_refused() {
        assert_eq!(parse("").unwrap_err(), "the file is empty");
        assert_eq!(parse(" \n\n\t\n").unwrap_err(), "the file is empty");
    }

    fn shard_info() -> impl Strategy<Value = ShardInfo> {
        (
            (
                any::<String>(),
                any::<String>(),
                any::<String>(),
                any::<String>(),
            ),
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
            ("[0-9a-fA-F]{0,70}", "[0-9a-fA-Fg]{62,66}", any::<String>()),
            (any::<Option<u32>>(), any::<Option<u32>>()),
        )
            .prop_map(
                |((f, w, s, m), (g, v, c, t), (d, r, sig), (i, n))| ShardInfo {
                    format: f,
                    worker_id: w,
                    shard_id: s,
                    model_ref: m,
                    gpu_device: g,
                    vram_bytes: v,
                    digest: d,
                    merkle_root: r,
                    chunk_size: c,
                    sealed_at_unix_nanos: t,
                    shard_index: i,
                    total_shards: n,
                    signature: sig,
                },
            )
    }

    /// A signed two-member group (placeholder digests and roots) under `token`.
    fn signed_group(key: &SealKey) -> GroupInfo {
        let members = (0..2u32)
            .map(|i| {
                let mut m = ShardInfo {
                    shard_id: format!("g-{i}"),
                    gpu_device: i,
                    shard_index: Some(i),
                    total_shards: Some(2),
                    ..record()
                };
                m.signature = claims::sign(key, &m).unwrap();
                m
            })
            .collect();
        let mut g = GroupInfo {
            format: GROUP_FORMAT.into(),
            worker_id: "worker-1".into(),
            group_id: "g".into(),
            model_ref: "hf:org/model@rev".into(),
            sealed_at_unix_nanos: 1_700_000_000_000_000_001,
            members,
            signature: String::new(),
        };
        g.signature = group_record::sign(key, &g).unwrap();
        g
    }

    #[test]
    fn groups_and_shards_parse_side_by_side_and_groups_are_diagnosed() {
        let token = WorkerToken::new(b"verify-info-unit-test-token".to_vec()).unwrap();
        let key = SealKey::derive(&token);
        let g = signed_group(&key);
        let lines = format!(
            "{}\n{}\n",
            serde_json::to_string(&g).unwrap(),
            serde_json::to_string(&g.members[0]).unwrap()
        );
        let parsed = parse(&lines).unwrap();
        assert_eq!(parsed[0], (1, Record::Group(g.clone())));
        assert_eq!(parsed[1], (2, Record::Shard(g.members[0].clone())));
        assert_eq!(diagnose_group(&key, &g), None);

        let mut swapped = g.clone();
        swapped.members.swap(0, 1);
        let why = diagnose_group(&key, &swapped).unwrap();
        assert!(
            why.contains("member 0 (g-1)") && why.contains("shard_index"),
            "{why}"
        );
        let mut tampered = g.clone();
        tampered.members[1].vram_bytes += 1;
        let why = diagnose_group(&key, &tampered).unwrap();
        assert_eq!(why, format!("member 1 (g-1): {SIGNATURE_MISMATCH}"));
        let mut renamed = g.clone();
        renamed.model_ref.push('!');
        let why = diagnose_group(&key, &renamed).unwrap();
        assert_eq!(why, format!("group {SIGNATURE_MISMATCH}"));
        // An unknown member in a group is a parse error that speaks of the group's fields.
        let mut v = serde_json::to_value(&g).unwrap();
        v["extra"] = 1.into();
        let err = parse(&v.to_string()).unwrap_err();
        assert!(
            err.contains("unknown field") && err.contains("members"),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the file holds: no panic, and an error is clean and bounded.
        #[test]
        fn parse_never_panics_and_errors_are_clean(text in any::<String>()) {
            if let Err(e) = parse(&text) {
                prop_assert!(clean(&e), "{e:?}");
                prop_assert!(e.chars().count() <= MAX_PARSE_ERROR_CHARS + 20, "{e:?}");
            }
        }

        /// JSON Lines of records parse back to the same records, with their line numbers.
        #[test]
        fn json_lines_round_trip(infos in prop::collection::vec(shard_info(), 1..4), blank in any::<bool>()) {
            let sep = if blank { "\n\n" } else { "\n" };
            let text = infos
                .iter()
                .map(|i| serde_json::to_string(i).unwrap())
                .collect::<Vec<_>>()
                .join(sep);
            let parsed = parse(&text).unwrap();
            prop_assert_eq!(parsed.len(), infos.len());
            for (k, ((line, got), want)) in parsed.iter().zip(&infos).enumerate() {
                prop_assert_eq!(got, &Record::Shard(want.clone()));
                prop_assert_eq!(*line, if blank { 2 * k + 1 } else { k + 1 });
            }
        }

        /// Any record, however hostile its fields: `diagnose` does not panic, its words are
        /// printable once sanitised, and a record it finds nothing wrong with passes the
        /// format checks (the verdict is left to the signature).
        #[test]
        fn diagnose_never_panics(info in shard_info()) {
            let why = diagnose(&info);
            prop_assert!(why.chars().count() < 1024, "{why:?}");
            if why == SIGNATURE_MISMATCH {
                prop_assert!(info.claims().is_ok());
            }
        }

        /// A signed record diagnoses as a signature mismatch only under another key, and any
        /// malformed hex field is named.
        #[test]
        fn hex_fields_are_named(pos in 0usize..64, c in any::<char>(), field in 0usize..3) {
            let token = WorkerToken::new(b"verify-info-unit-test-token".to_vec()).unwrap();
            let mut info = record();
            info.signature = claims::sign(&SealKey::derive(&token), &info).unwrap();
            prop_assert!(claims::verify(&SealKey::derive(&token), &info));
            prop_assert_eq!(diagnose(&info), SIGNATURE_MISMATCH);
            prop_assume!(!c.is_ascii_digit() && !('a'..='f').contains(&c));
            let target = match field {
                0 => &mut info.digest,
                1 => &mut info.merkle_root,
                _ => &mut info.signature,
            };
            let mut chars: Vec<char> = target.chars().collect();
            chars[pos] = c;
            *target = chars.into_iter().collect();
            let name = ["digest", "merkle_root", "signature"][field];
            let why = diagnose(&info);
            prop_assert!(why.starts_with(name), "{why}");
            prop_assert!(!claims::verify(&SealKey::derive(&token), &info));
            prop_assert!(clean(&untrusted::text(&why)));
        }

        /// The CLI's own hex check: exactly 64 lowercase hex digits pass, anything else is
        /// named, with a bounded, clean message.
        #[test]
        fn hex_problem_accepts_exactly_lowercase_sha256_hex(
            good in "[0-9a-f]{64}",
            other in any::<String>(),
        ) {
            prop_assert_eq!(hex_problem("digest", &good), None);
            prop_assert!(hex_problem("digest", &good.to_uppercase()).is_some() || !good.contains(|c: char| c.is_ascii_alphabetic()));
            let lowercase_hex = other.len() == 64 && other.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            match hex_problem("digest", &other) {
                None => prop_assert!(lowercase_hex, "{other:?}"),
                Some(p) => {
                    prop_assert!(!lowercase_hex);
                    prop_assert!(p.starts_with("digest "), "{p}");
                    prop_assert!(p.chars().count() < 200, "{p:?}");
                }
            }
        }

        #[test]
        fn sealed_at_never_panics(nanos in any::<u64>()) {
            prop_assert!(!sealed_at(nanos).is_empty());
        }
    }
}
