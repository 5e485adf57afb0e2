//! `verify-attestation FILE --nonce HEX`: checks an attestation a worker sent in answer to a
//! challenge, the way the challenger does, and prints one line: `ok: …` (exit 0) or why not
//! (exit 3).
//!
//! * `vram-attest-v3` (a sigstore bundle, single shard or group): checked with
//!   `--public-key PEM` alone — the worker's identity key, as `identity` prints it.
//! * `vram-attest-v2` (and v2 group attestations): checked with the worker token.
//!
//! The policy flags pin what was asked: `--expect-shard`, `--expect-digest`, `--max-age`,
//! `--require-mode`, `--require-device-memory`, `--min-audit-seq`, `--require-provenance`. No
//! age limit applies unless `--max-age` is given. A bad nonce or key argument is a usage error
//! (exit 2); everything wrong with the attestation itself is exit 3. The file is read only up
//! to 1 MiB, and every field printed is sanitised and bounded.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use vram_residency::VerifyMode;
use vram_residency::attestation::ResidencyClaims;
use vram_residency::attestation::signed::{
    GROUP_ATTEST_V3_PREDICATE, GroupResidencyClaims, verify_signed_group_attestation,
};
use vram_residency::provenance::dsse::base64_decode;
use vram_residency::provenance::publisher_key::MAX_PUBLIC_KEY_PEM_BYTES;
use vram_residency::{
    Attestation, AttestationPolicy, GroupAttestation, SignedAttestation, validation,
    verify_attestation_with, verify_group_attestation_with, verify_signed_attestation,
};

use super::Global;
use super::error::CliError;
use super::token::TokenSource;
use super::untrusted;
use super::verify_info::sealed_at;

/// Arguments of `verify-attestation`.
#[derive(Debug, Args)]
pub struct VerifyAttestationArgs {
    /// The attestation (JSON: a vram-attest-v3 bundle, or a vram-attest-v2 attestation or
    /// group attestation; at most 1 MiB).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The nonce the challenge sent, hex (16..=1024 bytes).
    #[arg(long, value_name = "HEX")]
    pub nonce: String,

    /// The worker's identity public key (PEM, as `identity` prints it): checks a v3
    /// attestation without the token.
    #[arg(long, value_name = "PEM")]
    pub public_key: Option<PathBuf>,

    /// Refuse an attestation verified longer ago than SECS (default: no age limit).
    #[arg(long, value_name = "SECS")]
    pub max_age: Option<u64>,

    /// Refuse a verification weaker than MODE: full, sampled(K) or signature-only.
    #[arg(long, value_name = "MODE")]
    pub require_mode: Option<String>,

    /// Refuse an attestation from a simulated device.
    #[arg(long)]
    pub require_device_memory: bool,

    /// Refuse an attestation about any other shard (for a group: the group id).
    #[arg(long, value_name = "ID")]
    pub expect_shard: Option<String>,

    /// Refuse an attestation whose shard (for a group: every member) has another SHA-256.
    #[arg(long, value_name = "HEX")]
    pub expect_digest: Option<String>,

    /// Refuse an attestation whose audit head is before SEQ (a log that moved backwards).
    #[arg(long, value_name = "SEQ")]
    pub min_audit_seq: Option<u64>,

    /// Refuse a shard not sealed with provenance from the signed model whose subject digest
    /// is HEX (v3 only).
    #[arg(long, value_name = "HEX")]
    pub require_provenance: Option<String>,
}

fn policy(args: &VerifyAttestationArgs) -> Result<AttestationPolicy, CliError> {
    let mut p = AttestationPolicy::default();
    if let Some(secs) = args.max_age {
        p = p.max_age(Duration::from_secs(secs));
    }
    if let Some(m) = &args.require_mode {
        let mode = m.parse::<VerifyMode>().map_err(|_| {
            CliError::usage(format!(
                "--require-mode {:?} is not a mode",
                untrusted::field(m, 32)
            ))
            .hint("use full, sampled(K) with K >= 1, or signature-only")
        })?;
        p = p.require_mode(mode);
    }
    p = p.require_device_memory(args.require_device_memory);
    if let Some(id) = &args.expect_shard {
        validation::validate_identifier("--expect-shard", id)?;
        p = p.expect_shard_id(id.clone());
    }
    if let Some(h) = &args.expect_digest {
        p = p.expect_digest(validation::validate_hex_digest("--expect-digest", h)?);
    }
    if let Some(seq) = args.min_audit_seq {
        p = p.min_audit_seq(seq);
    }
    if let Some(h) = &args.require_provenance {
        p = p.require_provenance(validation::validate_hex_digest("--require-provenance", h)?);
    }
    Ok(p)
}

/// One line saying what a verified attestation attests.
fn describe(c: &ResidencyClaims) -> String {
    let provenance = c
        .provenance
        .as_ref()
        .map(|p| {
            format!(
                ", file {} of signed model {} (publisher key {})",
                untrusted::field(&p.resource, 256),
                untrusted::field(&p.model_subject_sha256, 64),
                untrusted::field(&p.publisher_keyid, 64)
            )
        })
        .unwrap_or_default();
    format!(
        "shard {} (sha256 {}) resident on {} device {}, verified {} at {}, audit head seq {}{provenance}",
        untrusted::field(&c.shard.shard_id, validation::MAX_ID_LEN),
        untrusted::field(&c.shard.digest, 64),
        c.backend,
        untrusted::field(&c.device_id, 128),
        c.verified_mode,
        sealed_at(c.verified_at_unix_nanos),
        c.audit_head.seq
    )
}

fn describe_group(g: &GroupResidencyClaims) -> String {
    let first = g.members.first().map(describe).unwrap_or_default();
    format!(
        "group {} of {} member(s), all resident and verified; member 0: {first}",
        untrusted::field(&g.group.group_id, validation::MAX_ID_LEN),
        g.members.len()
    )
}

fn malformed(e: &serde_json::Error) -> CliError {
    CliError::integrity(format!(
        "attestation invalid: the document is malformed: {}",
        untrusted::field(&e.to_string(), 200)
    ))
}

/// Whether a v3 bundle's (still unverified) payload names the group predicate: only to pick
/// the checker; the checker verifies everything.
fn is_group(att: &SignedAttestation) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "predicateType")]
        predicate_type: String,
    }
    att.bundle
        .dsse_envelope
        .as_ref()
        .and_then(|e| base64_decode(&e.payload))
        .and_then(|p| serde_json::from_slice::<Kind>(&p).ok())
        .is_some_and(|k| k.predicate_type == GROUP_ATTEST_V3_PREDICATE)
}

/// Runs `verify-attestation`.
pub fn run(global: &Global, args: VerifyAttestationArgs) -> Result<(), CliError> {
    let nonce = hex::decode(&args.nonce).map_err(|_| {
        CliError::usage("--nonce must be hex").hint("give the nonce the challenge sent, as hex")
    })?;
    vram_residency::attestation::check_nonce(&nonce)?;
    let policy = policy(&args)?;
    let text = untrusted::read_json_file(&args.file, "attestation file")?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "{} is not JSON: {}",
            validation::shown_path(&args.file),
            untrusted::field(&e.to_string(), 200)
        ))
    })?;
    let line = if value.get("mediaType").is_some() {
        let Some(key_path) = &args.public_key else {
            return Err(CliError::usage(
                "a vram-attest-v3 attestation is checked with the worker's public key: pass --public-key PEM",
            )
            .hint("the worker prints it with `vram-residency identity`"));
        };
        let pem = super::untrusted::read_bounded(key_path, "public key", MAX_PUBLIC_KEY_PEM_BYTES)?;
        let att: SignedAttestation = serde_json::from_value(value).map_err(|e| malformed(&e))?;
        if is_group(&att) {
            describe_group(&verify_signed_group_attestation(
                &att, &pem, &nonce, &policy,
            )?)
        } else {
            describe(&verify_signed_attestation(&att, &pem, &nonce, &policy)?)
        }
    } else {
        if args.public_key.is_some() {
            return Err(CliError::usage(
                "this is not a vram-attest-v3 bundle; a vram-attest-v2 attestation is checked with the worker token, not a public key",
            ));
        }
        let token = TokenSource::require(global.token_file.as_deref())?.load()?;
        if value.get("group").is_some() {
            let att: GroupAttestation = serde_json::from_value(value).map_err(|e| malformed(&e))?;
            verify_group_attestation_with(&att, &token, &nonce, &policy)?;
            format!(
                "group {} of {} member(s), all resident and verified (vram-attest-v2)",
                untrusted::field(&att.group.group_id, validation::MAX_ID_LEN),
                att.members.len()
            )
        } else {
            let att: Attestation = serde_json::from_value(value).map_err(|e| malformed(&e))?;
            verify_attestation_with(&att, &token, &nonce, &policy)?;
            describe(&ResidencyClaims::from_v2(&att)?) + " (vram-attest-v2)"
        }
    };
    println!("ok: {line}");
    Ok(())
}
