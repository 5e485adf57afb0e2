//! The in-toto statement inside a model-signing bundle, and the checks model-signing itself
//! makes of it: statement v1, predicate `https://model_signing/signature/v1.0`, serialization
//! `files` with SHA-256, one subject whose digest is SHA-256 over the resources' raw digests
//! concatenated in manifest order.
//!
//! Only the `files` serialization is accepted: it lists each file with the plain SHA-256 of its
//! bytes, which is exactly a seal's digest. Other serializations (`shards`, digests of hashes
//! of pieces) would need another way of hashing the shard, and are refused by name.

use std::collections::HashSet;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::SignedResource;
use crate::error::VramError;

/// `_type` of an in-toto statement v1.
pub const IN_TOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// Predicate type of a model-signing v1.0 manifest.
pub const MODEL_SIGNING_PREDICATE_V1: &str = "https://model_signing/signature/v1.0";
/// Most resources a manifest may list.
pub const MAX_RESOURCES: usize = 100_000;
/// Longest resource name accepted, in bytes.
pub const MAX_RESOURCE_NAME_BYTES: usize = 4096;

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    statement_type: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    name: String,
    digest: SubjectDigest,
}

#[derive(Deserialize)]
struct SubjectDigest {
    sha256: Option<String>,
}

#[derive(Deserialize)]
struct Predicate {
    serialization: Serialization,
    resources: Vec<Resource>,
}

#[derive(Deserialize)]
struct Serialization {
    method: String,
    hash_type: Option<String>,
}

#[derive(Deserialize)]
struct Resource {
    name: String,
    digest: String,
    algorithm: String,
}

/// What a verified manifest says.
pub struct Manifest {
    /// The subject's name (model-signing: the model directory's name).
    pub subject_name: String,
    /// The subject's SHA-256, lowercase hex.
    pub subject_sha256: String,
    /// The files, in manifest order.
    pub resources: Vec<SignedResource>,
}

fn lower_hex_64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn shown(s: &str) -> String {
    crate::text::sanitize(&s.chars().take(80).collect::<String>())
}

/// Parses and checks the statement of a bundle whose signature has already been verified.
pub fn parse_manifest(
    payload: &[u8],
    refuse: impl Fn(String) -> VramError,
) -> Result<Manifest, VramError> {
    let statement: Statement = serde_json::from_slice(payload).map_err(|e| {
        refuse(format!(
            "the signed statement is malformed: {}",
            super::bundle::describe_json_error(&e)
        ))
    })?;
    if statement.statement_type != IN_TOTO_STATEMENT_V1 {
        return Err(refuse(format!(
            "the statement type is {:?}, not {IN_TOTO_STATEMENT_V1}",
            shown(&statement.statement_type)
        )));
    }
    if statement.predicate_type != MODEL_SIGNING_PREDICATE_V1 {
        return Err(refuse(format!(
            "the predicate type is {:?}, not model-signing's {MODEL_SIGNING_PREDICATE_V1}",
            shown(&statement.predicate_type)
        )));
    }
    let [subject] = statement.subject.as_slice() else {
        return Err(refuse(format!(
            "the statement has {} subjects; a model-signing manifest has exactly one",
            statement.subject.len()
        )));
    };
    let subject_sha256 = match &subject.digest.sha256 {
        Some(d) if lower_hex_64(d) => d.clone(),
        _ => {
            return Err(refuse(
                "the subject has no SHA-256 digest of 64 lowercase hex characters".into(),
            ));
        }
    };
    let predicate: Predicate = serde_json::from_value(statement.predicate).map_err(|e| {
        refuse(format!(
            "the model-signing predicate is malformed: {}",
            crate::text::sanitize(&e.to_string().chars().take(120).collect::<String>())
        ))
    })?;
    if predicate.serialization.method != "files" {
        return Err(refuse(format!(
            "the manifest's serialization is {:?}; only \"files\" (one plain SHA-256 per file) \
             is supported",
            shown(&predicate.serialization.method)
        )));
    }
    if let Some(hash) = &predicate.serialization.hash_type
        && hash != "sha256"
    {
        return Err(refuse(format!(
            "the manifest hashes with {:?}; only sha256 is supported",
            shown(hash)
        )));
    }
    if predicate.resources.len() > MAX_RESOURCES {
        return Err(refuse(format!(
            "the manifest lists {} resources, more than the limit of {MAX_RESOURCES}",
            predicate.resources.len()
        )));
    }
    let mut names = HashSet::with_capacity(predicate.resources.len());
    let mut over_digests = Sha256::new();
    let mut resources = Vec::with_capacity(predicate.resources.len());
    for (i, r) in predicate.resources.into_iter().enumerate() {
        if r.algorithm != "sha256" {
            return Err(refuse(format!(
                "resource {i} is hashed with {:?}; only sha256 is supported",
                shown(&r.algorithm)
            )));
        }
        if r.name.is_empty()
            || r.name.len() > MAX_RESOURCE_NAME_BYTES
            || r.name.chars().any(char::is_control)
        {
            return Err(refuse(format!(
                "resource {i} has an empty, overlong (over {MAX_RESOURCE_NAME_BYTES} bytes) or \
                 control-character name"
            )));
        }
        let mut raw = [0u8; 32];
        if !lower_hex_64(&r.digest) || hex::decode_to_slice(&r.digest, &mut raw).is_err() {
            return Err(refuse(format!(
                "resource {:?} has no SHA-256 digest of 64 lowercase hex characters",
                shown(&r.name)
            )));
        }
        if !names.insert(r.name.clone()) {
            return Err(refuse(format!(
                "resource {:?} is listed twice",
                shown(&r.name)
            )));
        }
        over_digests.update(raw);
        resources.push(SignedResource {
            name: r.name,
            sha256: r.digest,
        });
    }
    let computed = hex::encode(over_digests.finalize());
    if computed != subject_sha256 {
        return Err(refuse(format!(
            "the subject digest {subject_sha256} is not SHA-256 over the resources' digests \
             ({computed})"
        )));
    }
    Ok(Manifest {
        subject_name: subject.name.clone(),
        subject_sha256,
        resources,
    })
}
