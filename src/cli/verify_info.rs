//! `verify-info FILE.json`: checks `ShardInfo` records (one JSON object, or JSON Lines as
//! printed by `seal`) against the seal key derived from the worker token — offline, signature
//! only. When a record fails, says which field looks wrong if the fault is visible without the
//! key (format tag, hex lengths, identifiers, sizes); otherwise that the signature does not
//! match.

use std::path::PathBuf;

use clap::Args;
use vram_residency::ShardInfo;
use vram_residency::seal::claims::{self, SEAL_FORMAT};
use vram_residency::seal::keys::SealKey;
use vram_residency::validation;

use super::Global;
use super::error::CliError;
use super::token::TokenSource;

/// Arguments of `verify-info`.
#[derive(Debug, Args)]
pub struct VerifyInfoArgs {
    /// A ShardInfo JSON file (a single object, or one object per line as printed by `seal`).
    #[arg(value_name = "FILE.json")]
    pub file: PathBuf,
}

/// Runs `verify-info`.
pub fn run(global: &Global, args: VerifyInfoArgs) -> Result<(), CliError> {
    let token = TokenSource::require(global.token_file.as_deref())?.load()?;
    let shown = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError::io(format!("cannot read {shown}"), &e))?;
    let records = parse(&text).map_err(|e| {
        CliError::usage(format!("{shown} is not a ShardInfo JSON record: {e}"))
            .hint("give the JSON printed by `vram-residency seal` (one object, or one per line)")
    })?;
    let key = SealKey::derive(&token);
    drop(token);

    let mut first_failure: Option<CliError> = None;
    for (line, info) in &records {
        let at = if records.len() > 1 {
            format!("{shown}:{line}")
        } else {
            shown.clone()
        };
        if claims::verify(&key, info) {
            println!(
                "ok: {at}: signature valid for shard {} ({}), {} bytes on device {}, sha256 {}, sealed {} by {}",
                info.shard_id,
                info.model_ref,
                info.vram_bytes,
                info.gpu_device,
                info.digest,
                sealed_at(info.sealed_at_unix_nanos),
                info.worker_id
            );
        } else {
            let why = diagnose(info);
            println!("FAILED: {at}: shard {:?}: {why}", info.shard_id);
            if first_failure.is_none() {
                let err = CliError::integrity(format!("{at}: {why}"));
                first_failure = Some(if why == SIGNATURE_MISMATCH {
                    err.hint(
                        "check the token is the one of the worker that sealed it; a record changed after sealing never verifies",
                    )
                } else {
                    err
                });
            }
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

/// Parses one JSON object, or JSON Lines (blank lines ignored). Returns 1-based line numbers.
fn parse(text: &str) -> Result<Vec<(usize, ShardInfo)>, String> {
    if let Ok(info) = serde_json::from_str::<ShardInfo>(text) {
        return Ok(vec![(1, info)]);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i.saturating_add(1);
        if line.trim().is_empty() {
            continue;
        }
        let info = serde_json::from_str::<ShardInfo>(line).map_err(|e| {
            if text.lines().filter(|l| !l.trim().is_empty()).count() > 1 {
                format!("line {n}: {e}")
            } else {
                e.to_string()
            }
        })?;
        out.push((n, info));
    }
    if out.is_empty() {
        return Err("the file is empty".to_string());
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
