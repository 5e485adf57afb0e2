//! Property tests over every parser that reads bytes someone else wrote, through the public
//! API: `ShardInfo` JSON and its signature, attestation JSON (`vram-attest-v2`) and
//! `verify_attestation`, audit log lines (`parse_record`, `split_record`, `verify_lines`),
//! safetensors headers (`TensorMap::parse`), model-signing bundles
//! (`ModelSignature::from_bundle`), signed attestations (`verify_signed_attestation`,
//! `vram-attest-v3`), the attest server's bearer credential (`examples/support/bearer.rs`) and
//! the counts of coalesced refusals (`audit::refusals`). For each: arbitrary input never panics;
//! a valid value round-trips; any single change to a signed value is caught; text from the input
//! comes back sanitised. (The command line's own parsers — sizes, hex — are tested in
//! `cli/src/cli/`.)
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hmac::Mac;
use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use vram_residency::attestation::{ATTEST_FORMAT, MIN_NONCE_BYTES, StatementFields, statement};
use vram_residency::audit::events::AuditEvent;
use vram_residency::audit::format::{
    ChainState, MAC_TAIL_LEN, encode_record, parse_record, parse_record_bytes, split_record,
};
use vram_residency::audit::refusals::{Decision, RefusalCoalescer, RefusalReason};
use vram_residency::audit::verify_lines;
use vram_residency::seal::claims::{self, SEAL_FORMAT};
use vram_residency::seal::keys::{AttestKey, AuditKey, SealKey};
use vram_residency::seal::tensors::{HEADER_NAME, TensorMap};
use vram_residency::text::sanitize;
use vram_residency::{Attestation, AuditHead, ShardInfo, WorkerToken, verify_attestation};

const TOKEN: &[u8] = b"parsers-prop-test-token-0123456789";

fn token() -> WorkerToken {
    WorkerToken::new(TOKEN.to_vec()).unwrap()
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// True when `s` holds nothing `sanitize` would replace.
fn is_clean(s: &str) -> bool {
    sanitize(s) == s
}

/// One byte of `bytes` replaced by `with` (a different byte), decoded lossily: the kind of edit
/// a bit of corruption or a careless hand makes. Returns `None` when nothing changed.
fn one_byte_changed(bytes: &[u8], at: prop::sample::Index, with: u8) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let i = at.index(bytes.len());
    if bytes[i] == with {
        return None;
    }
    let mut changed = bytes.to_vec();
    changed[i] = with;
    let text = String::from_utf8_lossy(&changed).into_owned();
    (text.as_bytes() != bytes).then_some(text)
}

// ---------------------------------------------------------------------------------------------
// ShardInfo (vram-seal-v1)
// ---------------------------------------------------------------------------------------------

/// A well-formed, unsigned record: ids as the library issues them, anything in `model_ref`
/// (the claims encoding length-prefixes it), canonical hex, a valid tensor-parallel pair.
fn unsigned_info() -> impl Strategy<Value = ShardInfo> {
    let pair = prop_oneof![
        Just((None, None)),
        (1u32..u32::MAX).prop_flat_map(|t| (0..t, Just(t)).prop_map(|(i, t)| (Some(i), Some(t)))),
    ];
    (
        (
            "[A-Za-z0-9_-]{1,32}",
            "[A-Za-z0-9_-]{1,32}",
            any::<String>(),
        ),
        (any::<u32>(), 1..u64::MAX, "[0-9a-f]{64}", "[0-9a-f]{64}"),
        (12u32..=26, any::<u64>(), pair),
    )
        .prop_map(
            |((worker, shard, model), (device, bytes, digest, root), (chunk_pow, at, (i, t)))| {
                ShardInfo {
                    format: SEAL_FORMAT.to_string(),
                    worker_id: worker,
                    shard_id: shard,
                    model_ref: model,
                    gpu_device: device,
                    vram_bytes: bytes,
                    digest,
                    merkle_root: root,
                    chunk_size: 1u64 << chunk_pow,
                    sealed_at_unix_nanos: at,
                    shard_index: i,
                    total_shards: t,
                    signature: String::new(),
                }
            },
        )
}

fn signed_info() -> impl Strategy<Value = ShardInfo> {
    unsigned_info().prop_map(|mut info| {
        info.signature = claims::sign(&SealKey::derive(&token()), &info).unwrap();
        info
    })
}

/// A replacement value for one field of a record.
#[derive(Debug, Clone)]
enum FieldEdit {
    Text(usize, String),
    Number(usize, u64),
    Index(bool, Option<u32>),
}

const TEXT_FIELDS: usize = 7;
const NUMBER_FIELDS: usize = 4;

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    let text = prop_oneof![
        any::<String>(),
        "[0-9a-f]{64}",
        "[0-9a-fA-F]{64}",
        "[A-Za-z0-9_-]{1,32}",
    ];
    prop_oneof![
        (0..TEXT_FIELDS, text).prop_map(|(f, s)| FieldEdit::Text(f, s)),
        (0..NUMBER_FIELDS, any::<u64>()).prop_map(|(f, v)| FieldEdit::Number(f, v)),
        (any::<bool>(), any::<Option<u32>>()).prop_map(|(b, v)| FieldEdit::Index(b, v)),
    ]
}

/// `info` with one field replaced; `None` when the replacement equals what was there.
fn edited(info: &ShardInfo, edit: &FieldEdit) -> Option<ShardInfo> {
    let mut out = info.clone();
    match edit {
        FieldEdit::Text(f, s) => {
            let slot = match f {
                0 => &mut out.format,
                1 => &mut out.worker_id,
                2 => &mut out.shard_id,
                3 => &mut out.model_ref,
                4 => &mut out.digest,
                5 => &mut out.merkle_root,
                _ => &mut out.signature,
            };
            slot.clone_from(s);
        }
        FieldEdit::Number(f, v) => match f {
            0 => out.gpu_device = *v as u32,
            1 => out.vram_bytes = *v,
            2 => out.chunk_size = *v,
            _ => out.sealed_at_unix_nanos = *v,
        },
        FieldEdit::Index(first, v) => {
            if *first {
                out.shard_index = *v;
            } else {
                out.total_shards = *v;
            }
        }
    }
    (out != *info).then_some(out)
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: parsing never panics, and whatever parses can be encoded and checked
    /// without panicking (and, unsigned by us, does not verify).
    #[test]
    fn shard_info_from_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(info) = serde_json::from_slice::<ShardInfo>(&bytes) {
            let _ = info.claims();
            prop_assert!(!claims::verify(&SealKey::derive(&token()), &info));
        }
    }

    /// Any string, and strings shaped like a record with arbitrary member names and values.
    #[test]
    fn shard_info_from_any_text_never_panics(
        text in any::<String>(),
        members in prop::collection::btree_map(any::<String>(), any::<String>(), 0..16),
    ) {
        let _ = serde_json::from_str::<ShardInfo>(&text);
        let json = serde_json::to_string(&members).unwrap();
        if let Ok(info) = serde_json::from_str::<ShardInfo>(&json) {
            prop_assert!(!claims::verify(&SealKey::derive(&token()), &info));
        }
    }

    /// Fields of the right types but any values: checking never panics, never passes.
    #[test]
    fn shard_info_with_any_values_never_verifies(
        strings in prop::array::uniform7(any::<String>()),
        numbers in prop::array::uniform4(any::<u64>()),
        pair in (any::<Option<u32>>(), any::<Option<u32>>()),
    ) {
        let value = serde_json::json!({
            "format": strings[0], "worker_id": strings[1], "shard_id": strings[2],
            "model_ref": strings[3], "gpu_device": numbers[0] as u32, "vram_bytes": numbers[1],
            "digest": strings[4], "merkle_root": strings[5], "chunk_size": numbers[2],
            "sealed_at_unix_nanos": numbers[3], "shard_index": pair.0, "total_shards": pair.1,
            "signature": strings[6],
        });
        let info: ShardInfo = serde_json::from_value(value).unwrap();
        prop_assert!(!claims::verify(&SealKey::derive(&token()), &info));
    }

    /// A signed record verifies, and still does after a trip through compact or pretty JSON.
    #[test]
    fn signed_shard_info_round_trips(info in signed_info()) {
        let key = SealKey::derive(&token());
        prop_assert!(claims::verify(&key, &info));
        for text in [serde_json::to_string(&info).unwrap(), serde_json::to_string_pretty(&info).unwrap()] {
            let back: ShardInfo = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &info);
            prop_assert!(claims::verify(&key, &back));
        }
        // Another token's key never accepts it.
        let other = WorkerToken::new(b"another-worker-token-xyz".to_vec()).unwrap();
        prop_assert!(!claims::verify(&SealKey::derive(&other), &info));
    }

    /// Any one field changed (to any other value) and the signature no longer verifies —
    /// directly, and after the edited record went through JSON.
    #[test]
    fn any_field_edit_of_a_signed_shard_info_fails(info in signed_info(), edit in field_edit()) {
        let Some(changed) = edited(&info, &edit) else {
            return Ok(());
        };
        let key = SealKey::derive(&token());
        prop_assert!(!claims::verify(&key, &changed), "{edit:?}");
        let back: ShardInfo = serde_json::from_str(&serde_json::to_string(&changed).unwrap()).unwrap();
        prop_assert!(!claims::verify(&key, &back), "{edit:?}");
    }

    /// Any one byte of the signed JSON changed: it no longer parses, parses to the same
    /// record, or does not verify.
    #[test]
    fn any_byte_edit_of_signed_shard_info_json_fails(
        info in signed_info(),
        at in any::<prop::sample::Index>(),
        with in any::<u8>(),
    ) {
        let json = serde_json::to_string(&info).unwrap();
        let Some(text) = one_byte_changed(json.as_bytes(), at, with) else {
            return Ok(());
        };
        if let Ok(back) = serde_json::from_str::<ShardInfo>(&text)
            && back != info {
                prop_assert!(!claims::verify(&SealKey::derive(&token()), &back), "{text}");
            }
    }
}

// ---------------------------------------------------------------------------------------------
// Attestation (vram-attest-v2)
// ---------------------------------------------------------------------------------------------

/// The parts of an attestation other than the shard and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    nonce: Vec<u8>,
    mode: String,
    at: u64,
    backend: String,
    device_id: String,
    head: AuditHead,
}

/// An attestation of `shard`, signed as the library signs one.
fn attest(shard: ShardInfo, p: &Parts) -> Attestation {
    let stmt = statement(&StatementFields {
        nonce: &p.nonce,
        shard: &shard,
        verified_mode: &p.mode,
        verified_at_unix_nanos: p.at,
        backend: &p.backend,
        device_id: &p.device_id,
        audit_head: &p.head,
    })
    .unwrap();
    let mut mac = AttestKey::derive(&token()).mac();
    mac.update(&stmt);
    Attestation {
        format: ATTEST_FORMAT.to_string(),
        nonce: hex::encode(&p.nonce),
        shard,
        verified_mode: p.mode.clone(),
        verified_at_unix_nanos: p.at,
        backend: p.backend.clone(),
        device_id: p.device_id.clone(),
        audit_head: p.head.clone(),
        signature: hex::encode(mac.finalize().into_bytes()),
    }
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        prop::collection::vec(any::<u8>(), MIN_NONCE_BYTES..=64),
        prop_oneof![
            Just("full".to_string()),
            Just("signature-only".to_string()),
            (1u32..1000).prop_map(|k| format!("sampled({k})")),
            any::<String>()
        ],
        any::<u64>(),
        prop_oneof![
            Just("simulated".to_string()),
            Just("cuda".to_string()),
            any::<String>()
        ],
        prop_oneof![
            "simulated device [0-9]",
            "GPU-[0-9a-f-]{36}",
            any::<String>()
        ],
        (any::<u64>(), "[0-9a-f]{64}").prop_map(|(seq, mac)| AuditHead { seq, mac }),
    )
        .prop_map(|(nonce, mode, at, backend, device_id, head)| Parts {
            nonce,
            mode,
            at,
            backend,
            device_id,
            head,
        })
}

fn attestation() -> impl Strategy<Value = (Attestation, Vec<u8>)> {
    (signed_info(), parts()).prop_map(|(shard, p)| (attest(shard, &p), p.nonce))
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes, checked against any nonce: never a panic, never a pass.
    #[test]
    fn attestation_from_any_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        nonce in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        if let Ok(att) = serde_json::from_slice::<Attestation>(&bytes) {
            prop_assert!(verify_attestation(&att, &token(), &nonce).is_err());
        }
    }

    /// Right shape, any values (the shard a valid signed record or not): never a pass unless
    /// it was signed.
    #[test]
    fn attestation_with_any_values_never_verifies(
        shard in prop_oneof![signed_info(), unsigned_info()],
        format in prop_oneof![Just(ATTEST_FORMAT.to_string()), Just("vram-attest-v1".to_string()), any::<String>()],
        nonce in prop_oneof!["[0-9a-f]{0,64}", "[0-9a-fA-F]{0,65}", any::<String>()],
        p in parts(),
        head_mac in prop_oneof!["[0-9a-f]{64}", any::<String>()],
        signature in prop_oneof!["[0-9a-f]{64}", any::<String>()],
        expected in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let att = Attestation {
            format,
            nonce,
            shard,
            verified_mode: p.mode,
            verified_at_unix_nanos: p.at,
            backend: p.backend,
            device_id: p.device_id,
            audit_head: AuditHead { seq: p.head.seq, mac: head_mac },
            signature,
        };
        prop_assert!(verify_attestation(&att, &token(), &expected).is_err());
        prop_assert!(verify_attestation(&att, &token(), &p.nonce).is_err());
    }

    /// A signed attestation verifies for its nonce, also after JSON; never for another nonce
    /// or under another token.
    #[test]
    fn signed_attestation_round_trips((att, nonce) in attestation(), other in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assert!(verify_attestation(&att, &token(), &nonce).is_ok());
        let back: Attestation = serde_json::from_str(&serde_json::to_string(&att).unwrap()).unwrap();
        prop_assert_eq!(&back, &att);
        prop_assert!(verify_attestation(&back, &token(), &nonce).is_ok());
        if other != nonce {
            prop_assert!(verify_attestation(&att, &token(), &other).is_err());
        }
        let stranger = WorkerToken::new(b"another-worker-token-xyz".to_vec()).unwrap();
        prop_assert!(verify_attestation(&att, &stranger, &nonce).is_err());
    }

    /// Any one field changed — of the attestation or of the shard record inside it — and it
    /// no longer verifies.
    #[test]
    fn any_field_edit_of_an_attestation_fails(
        (att, nonce) in attestation(),
        which in 0usize..10,
        text in any::<String>(),
        number in any::<u64>(),
        edit in field_edit(),
    ) {
        let mut changed = att.clone();
        let even = number % 2 == 0;
        match which {
            0 => changed.format = if even { "vram-attest-v1".to_string() } else { text },
            1 => changed.nonce = if even { hex::encode(text.as_bytes()) } else { text },
            2 => changed.verified_mode = text,
            3 => changed.verified_at_unix_nanos = number,
            4 => changed.backend = text,
            5 => changed.device_id = text,
            6 => changed.audit_head.seq = number,
            7 => changed.audit_head.mac = if even { format!("{number:064x}") } else { text },
            8 => changed.signature = if even { hex::encode(&text.as_bytes()[..text.len().min(32)]) } else { text },
            _ => match edited(&att.shard, &edit) {
                Some(shard) => changed.shard = shard,
                None => return Ok(()),
            },
        }
        if changed == att {
            return Ok(());
        }
        prop_assert!(verify_attestation(&changed, &token(), &nonce).is_err(), "{which}: {changed:?}");
    }

    /// Any one byte of the signed JSON changed: no parse, the same attestation, or a refusal.
    #[test]
    fn any_byte_edit_of_attestation_json_fails(
        (att, nonce) in attestation(),
        at in any::<prop::sample::Index>(),
        with in any::<u8>(),
    ) {
        let json = serde_json::to_string(&att).unwrap();
        let Some(text) = one_byte_changed(json.as_bytes(), at, with) else {
            return Ok(());
        };
        if let Ok(back) = serde_json::from_str::<Attestation>(&text)
            && back != att {
                prop_assert!(verify_attestation(&back, &token(), &nonce).is_err(), "{text}");
            }
    }
}

// ---------------------------------------------------------------------------------------------
// Audit lines (vram-audit-v1)
// ---------------------------------------------------------------------------------------------

fn audit_key() -> AuditKey {
    AuditKey::derive(&token())
}

/// `(worker_id, type, free text)` for one record; the text may hold anything (it is
/// JSON-escaped inside the event).
fn record_parts() -> impl Strategy<Value = (String, String, String)> {
    (
        prop_oneof!["[A-Za-z0-9_-]{1,16}", any::<String>()],
        "[A-Za-z][A-Za-z0-9_]{0,20}",
        any::<String>(),
    )
}

/// A chain of records as the writer encodes them, one line each (without `\n`).
fn chain(records: &[(String, String, String)], nanos: u32) -> Vec<String> {
    let key = audit_key();
    let mut state = ChainState::genesis();
    records
        .iter()
        .enumerate()
        .map(|(i, (worker, kind, detail))| {
            let ts = format!("2026-11-29T09:{:02}:00.{nanos:09}Z", i % 60);
            let event = format!(
                "{{\"type\":\"{kind}\",\"detail\":{}}}",
                serde_json::to_string(detail).unwrap()
            );
            encode_record(&key, &mut state, &ts, worker, &event)
        })
        .collect()
}

/// Verifies a whole log text the way a file is read: lines split at `\n`, the last one
/// complete only when the text ends in `\n`.
fn verify_text(text: &str) -> vram_residency::audit::AuditReport {
    let (body, complete) = match text.strip_suffix('\n') {
        Some(b) => (b, true),
        None => (text, false),
    };
    verify_lines(body.split('\n'), &audit_key(), complete)
}

proptest! {
    #![proptest_config(config())]

    /// Any string: the line parsers never panic, and what they say about it is clean.
    #[test]
    fn audit_line_parsers_never_panic(line in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for r in [parse_record(&line).map(|_| ()), split_record(&line).map(|_| ()), parse_record_bytes(&bytes).map(|_| ())] {
            if let Err(e) = r {
                prop_assert!(is_clean(&e.0), "{e:?}");
            }
        }
        let key = audit_key();
        for complete in [false, true] {
            let report = verify_lines(line.split('\n'), &key, complete);
            if let Some(p) = &report.first_problem {
                prop_assert!(is_clean(&p.to_string()), "{p}");
            }
        }
    }

    /// Strings close to a record: a real line cut anywhere, with anything appended, or with
    /// its members' names and values replaced by arbitrary text.
    #[test]
    fn near_records_never_panic(
        parts in record_parts(),
        cut in any::<prop::sample::Index>(),
        junk in any::<String>(),
        name in any::<String>(),
        value in any::<String>(),
    ) {
        let line = chain(std::slice::from_ref(&parts), 0).pop().unwrap();
        let cut_at = cut.index(line.len() + 1);
        let head = String::from_utf8_lossy(&line.as_bytes()[..cut_at]);
        let mut candidates = vec![format!("{head}{junk}"), format!("{line}{junk}")];
        let mac_tail = &line[line.len() - MAC_TAIL_LEN..];
        let name_json = serde_json::to_string(&name).unwrap();
        let value_json = serde_json::to_string(&value).unwrap();
        candidates.push(format!(
            "{{\"seq\":1,\"ts\":{value_json},\"worker_id\":\"w\",\"event\":{{\"type\":\"T\"}},{name_json}:1{mac_tail}"
        ));
        candidates.push(format!(
            "{{\"seq\":1,\"ts\":\"2026-11-29T09:00:00.000000000Z\",\"worker_id\":{value_json},\"event\":{{\"type\":{name_json}}}{mac_tail}"
        ));
        candidates.push(format!("{{{name_json}:1{mac_tail}"));
        for candidate in &candidates {
            if let Err(e) = parse_record(candidate) {
                prop_assert!(is_clean(&e.0), "{e:?}");
            }
            let report = verify_lines([line.as_str(), candidate.as_str()], &audit_key(), true);
            if let Some(p) = &report.first_problem {
                prop_assert!(is_clean(&p.to_string()), "{p}");
            }
        }
    }

    /// A chain the writer encoded parses line by line and verifies intact, whatever the
    /// records carry; every record's parts come back as written.
    #[test]
    fn encoded_chains_verify(records in prop::collection::vec(record_parts(), 1..6), nanos in 0u32..1_000_000_000) {
        let lines = chain(&records, nanos);
        for (line, (worker, kind, _)) in lines.iter().zip(&records) {
            let parsed = parse_record(line).unwrap();
            prop_assert_eq!(&parsed.worker_id, worker);
            prop_assert_eq!(&parsed.event_type, kind);
            let (body, mac) = split_record(line).unwrap();
            prop_assert_eq!(body, parsed.body);
            prop_assert_eq!(mac, parsed.mac);
        }
        let text = lines.join("\n") + "\n";
        let report = verify_text(&text);
        prop_assert!(report.is_intact(), "{:?}", report.first_problem);
        prop_assert_eq!(report.records, records.len() as u64);
        prop_assert_eq!(report.last_seq, records.len() as u64);
        // Without the final `\n`, a complete last record is still accepted.
        prop_assert!(verify_text(text.trim_end_matches('\n')).is_intact());
    }

    /// Any one byte of a valid log changed (the `\n`s included): the log is not intact.
    #[test]
    fn any_byte_edit_of_a_chain_breaks_it(
        records in prop::collection::vec(record_parts(), 1..5),
        at in any::<prop::sample::Index>(),
        with in any::<u8>(),
    ) {
        let text = chain(&records, 7).join("\n") + "\n";
        let Some(changed) = one_byte_changed(text.as_bytes(), at, with) else {
            return Ok(());
        };
        let report = verify_text(&changed);
        prop_assert!(!report.is_intact(), "{changed:?}");
        if let Some(p) = &report.first_problem {
            prop_assert!(is_clean(&p.to_string()), "{p}");
        }
    }

    /// Lines of a valid log deleted, duplicated or swapped: not intact.
    #[test]
    fn reordered_or_missing_records_break_the_chain(
        records in prop::collection::vec(record_parts(), 2..6),
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
        op in 0u8..3,
    ) {
        let mut lines = chain(&records, 0);
        let (i, j) = (a.index(lines.len()), b.index(lines.len()));
        match op {
            0 => { lines.remove(i.min(lines.len() - 2)); }
            1 => { let l = lines[i].clone(); lines.insert(j, l); }
            _ => { if i == j { return Ok(()); } lines.swap(i, j); }
        }
        let text = lines.join("\n") + "\n";
        prop_assert!(!verify_text(&text).is_intact());
    }
}

// ---------------------------------------------------------------------------------------------
// Safetensors headers
// ---------------------------------------------------------------------------------------------

/// Checks what any map `parse` returns must satisfy: the spans tile the shard from 0 to
/// `total_len` in offset order (header first), none empty, every name sanitised and bounded.
fn check_map(map: &TensorMap, total_len: u64) -> Result<(), TestCaseError> {
    let spans = map.spans();
    prop_assert!(!spans.is_empty());
    prop_assert_eq!(&spans[0].name, HEADER_NAME);
    prop_assert_eq!(spans[0].start, 0);
    let mut at = 0;
    for s in spans {
        prop_assert_eq!(s.start, at, "{:?}", spans);
        prop_assert!(s.end > s.start, "{:?}", spans);
        at = s.end;
        prop_assert!(is_clean(&s.name), "{:?}", s.name);
        prop_assert!(s.name.chars().count() <= 257, "{}", s.name.chars().count());
    }
    prop_assert_eq!(at, total_len);
    // A lookup anywhere names only what is there.
    for offset in [0, total_len / 2, total_len.saturating_sub(1), total_len] {
        for name in map.overlapping(offset, 1) {
            prop_assert!(spans.iter().any(|s| s.name == name));
        }
    }
    Ok(())
}

/// A safetensors file of U8 tensors with these names and sizes.
fn safetensors_file(tensors: &BTreeMap<String, usize>) -> Vec<u8> {
    let data: Vec<(String, Vec<u8>)> = tensors
        .iter()
        .map(|(name, len)| (name.clone(), vec![0xA5; *len]))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::U8, vec![bytes.len()], bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn tensor_names() -> impl Strategy<Value = BTreeMap<String, usize>> {
    let name = prop_oneof![
        "[a-z][a-z0-9_.]{0,24}",
        any::<String>(),
        "[\\x00-\\x1f\\x7f-\\x9f\\u{202a}-\\u{202e}\\u{200b}a-z\\[\\];]{1,12}",
        ".{257,300}",
    ]
    .prop_filter("the metadata key", |n| n != "__metadata__");
    prop::collection::btree_map(name, 0usize..48, 0..8)
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes, any claimed length: never a panic; a map, when there is one, is sound.
    #[test]
    fn safetensors_from_any_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        total in any::<u64>(),
    ) {
        if let Some(map) = TensorMap::parse(&bytes, total) {
            check_map(&map, total)?;
        }
        if let Some(map) = TensorMap::parse(&bytes, bytes.len() as u64) {
            check_map(&map, bytes.len() as u64)?;
        }
    }

    /// A length prefix followed by arbitrary text as the header.
    #[test]
    fn safetensors_with_any_header_text_never_panics(header in any::<String>(), extra in 0u64..64) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let total = bytes.len() as u64 + extra;
        if let Some(map) = TensorMap::parse(&bytes, total) {
            check_map(&map, total)?;
        }
    }

    /// A real file with hostile tensor names: parsed, every tensor that holds bytes named,
    /// each name sanitised (and cut when long).
    #[test]
    fn safetensors_names_come_back_sanitised(tensors in tensor_names()) {
        let bytes = safetensors_file(&tensors);
        let total = bytes.len() as u64;
        let map = TensorMap::parse(&bytes, total).unwrap();
        check_map(&map, total)?;
        let nonempty = tensors.values().filter(|&&len| len > 0).count();
        prop_assert_eq!(map.spans().len(), nonempty + 1);
        for (raw, len) in &tensors {
            let clean = sanitize(raw);
            if *len > 0 && clean.chars().count() <= 256 {
                prop_assert!(map.spans().iter().any(|s| s.name == clean), "{raw:?} -> {clean:?}");
            }
        }
        // Claimed one byte too long or too short: no map.
        prop_assert!(TensorMap::parse(&bytes, total + 1).is_none());
        prop_assert!(TensorMap::parse(&bytes, total - 1).is_none());
    }

    /// A real file with one byte changed (header or data), and cut anywhere: never a panic;
    /// any map is sound.
    #[test]
    fn safetensors_edits_never_panic(
        tensors in tensor_names(),
        at in any::<prop::sample::Index>(),
        with in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = safetensors_file(&tensors);
        let total = bytes.len() as u64;
        let i = at.index(bytes.len());
        bytes[i] = with;
        if let Some(map) = TensorMap::parse(&bytes, total) {
            check_map(&map, total)?;
        }
        let short = &bytes[..cut.index(bytes.len() + 1)];
        if let Some(map) = TensorMap::parse(short, total) {
            check_map(&map, total)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Model-signing bundles and vram-attest-v3 (issue 20).

const MODEL_BUNDLE: &[u8] = include_bytes!("../fixtures/model-signing/model-p256.sig");
const PUBLISHER_KEY: &[u8] =
    include_bytes!("../fixtures/model-signing/keys/publisher-p256.pub.pem");

fn v3_vector() -> (String, String, Vec<u8>) {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("../vectors/attest-v3.json")).unwrap();
    let case = &v["attestations"][0];
    (
        case["bundle_json"].as_str().unwrap().to_owned(),
        v["identity"]["public_key_pem"].as_str().unwrap().to_owned(),
        hex::decode(case["nonce"].as_str().unwrap()).unwrap(),
    )
}

/// An accepted model signature is internally consistent: its subject is SHA-256 over its
/// resources' digests, each a 64-hex SHA-256 under a clean, unique name.
fn consistent(sig: &vram_residency::ModelSignature) -> Result<(), TestCaseError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut names = std::collections::HashSet::new();
    for r in sig.resources() {
        prop_assert_eq!(r.sha256.len(), 64);
        prop_assert!(is_clean(&r.name) && names.insert(r.name.clone()));
        h.update(hex::decode(&r.sha256).unwrap());
    }
    prop_assert_eq!(sig.subject_sha256(), hex::encode(h.finalize()));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_bundles_from_any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(sig) = vram_residency::ModelSignature::from_bundle(&bytes, PUBLISHER_KEY) {
            consistent(&sig)?;
        }
    }

    /// One byte of the real bundle changed: refused with `ModelSignatureInvalid` (never a
    /// panic, never another error), unless the change leaves the signed content as it was
    /// (a byte of the untrusted hint or key id, or JSON whitespace).
    #[test]
    fn any_byte_edit_of_a_model_bundle_is_refused_or_harmless(at in any::<prop::sample::Index>(), with in any::<u8>()) {
        let Some(text) = one_byte_changed(MODEL_BUNDLE, at, with) else { return Ok(()); };
        match vram_residency::ModelSignature::from_bundle(text.as_bytes(), PUBLISHER_KEY) {
            Ok(sig) => {
                consistent(&sig)?;
                let original = vram_residency::ModelSignature::from_bundle(MODEL_BUNDLE, PUBLISHER_KEY).unwrap();
                prop_assert_eq!(sig, original);
            }
            Err(vram_residency::VramError::ModelSignatureInvalid(reason)) => prop_assert!(is_clean(&reason)),
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn truncated_model_bundles_are_refused(cut in 0usize..1807) {
        let cut = cut.min(MODEL_BUNDLE.len() - 1);
        prop_assert!(matches!(
            vram_residency::ModelSignature::from_bundle(&MODEL_BUNDLE[..cut], PUBLISHER_KEY),
            Err(vram_residency::VramError::ModelSignatureInvalid(_))
        ));
    }

    /// One byte of a v3 attestation's JSON changed: `AttestationInvalid` (or a JSON error
    /// before that), never a pass with other content, never a panic.
    #[test]
    fn any_byte_edit_of_a_v3_attestation_is_refused_or_harmless(at in any::<prop::sample::Index>(), with in any::<u8>()) {
        let (bundle, pem, nonce) = v3_vector();
        let Some(text) = one_byte_changed(bundle.as_bytes(), at, with) else { return Ok(()); };
        let Ok(att) = serde_json::from_str::<vram_residency::SignedAttestation>(&text) else { return Ok(()); };
        let original: vram_residency::SignedAttestation = serde_json::from_str(&bundle).unwrap();
        let policy = vram_residency::AttestationPolicy::default();
        match vram_residency::verify_signed_attestation(&att, &pem, &nonce, &policy) {
            Ok(_) => prop_assert_eq!(
                att.bundle.dsse_envelope.as_ref().map(|e| (&e.payload, &e.signatures[0].sig)),
                original.bundle.dsse_envelope.as_ref().map(|e| (&e.payload, &e.signatures[0].sig))
            ),
            Err(vram_residency::VramError::AttestationInvalid(reason)) => prop_assert!(is_clean(&reason)),
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn v3_attestations_from_any_json_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let (_, pem, nonce) = v3_vector();
        if let Ok(att) = serde_json::from_slice::<vram_residency::SignedAttestation>(&bytes) {
            let r = vram_residency::verify_signed_attestation(&att, &pem, &nonce, &Default::default());
            prop_assert!(r.is_err());
        }
    }
}

/// A JSON value with one random edit somewhere inside: a member removed, a value replaced by
/// another type, a string or number changed, an array entry duplicated or dropped.
fn edit_json(value: &mut serde_json::Value, path: &[prop::sample::Index], kind: u8, seed: u64) {
    use serde_json::Value;
    // Walk down read-only to name the spot (a JSON pointer), then edit it.
    let mut pointer = String::new();
    let mut here = &*value;
    for i in path {
        match here {
            Value::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(i.index(map.len())).unwrap();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                here = &map[key];
            }
            Value::Array(items) if !items.is_empty() => {
                let n = i.index(items.len());
                pointer.push_str(&format!("/{n}"));
                here = &items[n];
            }
            _ => break,
        }
    }
    let at = value.pointer_mut(&pointer).unwrap();
    *at = match (kind % 6, &*at) {
        (0, _) => Value::Null,
        (1, Value::String(s)) => Value::String(format!("{s}{}", seed % 10)),
        (1, Value::Number(n)) => Value::from(n.as_u64().unwrap_or(0).wrapping_add(seed % 3 + 1)),
        (2, _) => Value::from(seed),
        (3, _) => Value::String("x".repeat((seed % 70) as usize)),
        (4, Value::Array(items)) => {
            let mut items = items.clone();
            if let Some(first) = items.first().cloned() {
                items.push(first);
            }
            Value::Array(items)
        }
        (5, Value::Object(map)) => {
            let mut map = map.clone();
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
            Value::Object(map)
        }
        _ => serde_json::json!({"unexpected": true}),
    };
}

proptest! {
    #![proptest_config(config())]

    /// A v3 statement edited anywhere and re-signed with the right key (so the signature
    /// passes and the statement checks are what decide): never a panic, and every refusal is
    /// `AttestationInvalid`.
    #[test]
    fn resigned_edits_of_a_v3_statement_never_panic(
        path in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        kind in any::<u8>(),
        seed in any::<u64>(),
    ) {
        use vram_residency::attestation::signed::assemble;
        use vram_residency::seal::identity::IdentityKey;
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../vectors/attest-v3.json")).unwrap();
        let case = &v["attestations"][0];
        let mut statement: serde_json::Value =
            serde_json::from_str(case["payload"].as_str().unwrap()).unwrap();
        edit_json(&mut statement, &path, kind, seed);
        let payload = serde_json::to_vec(&statement).unwrap();
        let token = WorkerToken::new(v["token"].as_str().unwrap().as_bytes().to_vec()).unwrap();
        let key = IdentityKey::derive(&token).unwrap();
        let public = key.public().unwrap();
        let att = assemble(&payload, &key.sign_dsse("application/vnd.in-toto+json", &payload), &public.key_id);
        let nonce = hex::decode(case["nonce"].as_str().unwrap()).unwrap();
        match vram_residency::verify_signed_attestation(&att, &public.pem, &nonce, &Default::default()) {
            Ok(claims) => {
                prop_assert_eq!(claims.shard.shard_id.as_str(), statement["subject"][0]["name"].as_str().unwrap());
                prop_assert_eq!(claims.nonce.as_str(), case["nonce"].as_str().unwrap());
            }
            Err(vram_residency::VramError::AttestationInvalid(reason)) => prop_assert!(is_clean(&reason), "{reason}"),
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }

    /// A model-signing statement edited anywhere and re-signed with the publisher's key: never
    /// a panic; accepted only when still consistent, else `ModelSignatureInvalid`.
    #[test]
    fn resigned_edits_of_a_model_statement_never_panic(
        path in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        kind in any::<u8>(),
        seed in any::<u64>(),
    ) {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::DecodePrivateKey;
        let mut bundle: serde_json::Value = serde_json::from_slice(MODEL_BUNDLE).unwrap();
        let payload = STANDARD.decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap();
        let mut statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        edit_json(&mut statement, &path, kind, seed);
        let payload = serde_json::to_vec(&statement).unwrap();
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(include_str!(
            "../fixtures/model-signing/keys/publisher-p256.key.pem"
        ))
        .unwrap();
        let pae = [
            format!("DSSEv1 28 application/vnd.in-toto+json {} ", payload.len()).into_bytes(),
            payload.clone(),
        ]
        .concat();
        let sig: p256::ecdsa::DerSignature = key.sign(&pae);
        bundle["dsseEnvelope"]["payload"] = STANDARD.encode(&payload).into();
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = STANDARD.encode(sig.as_bytes()).into();
        match vram_residency::ModelSignature::from_bundle(&serde_json::to_vec(&bundle).unwrap(), PUBLISHER_KEY) {
            Ok(sig) => consistent(&sig)?,
            Err(vram_residency::VramError::ModelSignatureInvalid(reason)) => prop_assert!(is_clean(&reason), "{reason}"),
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }
}

// The attest server's challenger credential (`examples/support/bearer.rs`), and repeated
// refusals counted into `RefusalsSuppressed` summaries (`audit::refusals`).

#[path = "../../examples/support/bearer.rs"]
mod bearer;

const REASONS: [RefusalReason; 6] = RefusalReason::ALL;

proptest! {
    #![proptest_config(config())]

    /// `Bearer <b64token>` parses to exactly that token, in any case of the scheme and after any
    /// number of spaces; a token with anything after it, or glued to the scheme, does not; any
    /// bytes never panic, and a token found is the header's tail.
    #[test]
    fn bearer_headers_parse_exactly(
        token in "[A-Za-z0-9._~+/-]{1,64}={0,3}",
        scheme in "[Bb][Ee][Aa][Rr][Ee][Rr]",
        spaces in 1usize..4,
        junk in any::<Vec<u8>>(),
    ) {
        let header = format!("{scheme}{}{token}", " ".repeat(spaces));
        prop_assert_eq!(bearer::bearer_token(header.as_bytes()), Some(token.as_bytes()));
        prop_assert!(bearer::authorized(Some(header.as_bytes()), token.as_bytes()));
        let longer = format!("{token}x");
        prop_assert!(!bearer::authorized(Some(header.as_bytes()), longer.as_bytes()));
        prop_assert!(!bearer::authorized(Some(header.as_bytes()), &token.as_bytes()[1..]));
        for refused in [
            format!("{header} x"),
            format!("{header}\n"),
            format!("{scheme}{token}"),
            format!("Basic {token}"),
        ] {
            prop_assert_eq!(bearer::bearer_token(refused.as_bytes()), None);
        }
        if let Some(found) = bearer::bearer_token(&junk) {
            prop_assert!(!found.is_empty() && junk.ends_with(found));
        }
    }

    /// Whatever the sequence of refusals: each is either written in full (only when it has a
    /// record) or counted; every counted one is in exactly one summary; and per reason, full
    /// records and summaries are at most one per window (plus the final drain). The summaries
    /// survive the audit log format with their counts.
    #[test]
    fn refusals_are_counted_once_and_bounded(
        steps in prop::collection::vec((0usize..REASONS.len(), any::<bool>(), 0u64..40_000), 1..300),
    ) {
        let window = Duration::from_secs(60);
        let mut coalescer = RefusalCoalescer::new(window);
        let started = Instant::now();
        let mut now = started;
        let (mut recorded, mut counted) = ([0u64; REASONS.len()], [0u64; REASONS.len()]);
        let mut summaries = Vec::new();
        for (reason, has_record, millis) in steps {
            now += Duration::from_millis(millis);
            summaries.extend(coalescer.due(now));
            match coalescer.refuse(REASONS[reason], has_record, chrono::Utc::now(), now) {
                Decision::Record => {
                    prop_assert!(has_record);
                    recorded[reason] += 1;
                }
                Decision::Count => counted[reason] += 1,
            }
        }
        summaries.extend(coalescer.drain(now));
        prop_assert_eq!(coalescer.total_counted(), counted.iter().sum::<u64>());
        let windows = now.duration_since(started).as_secs() / window.as_secs();
        let key = AuditKey::derive(&token());
        let mut chain = ChainState::genesis();
        let mut summed = [0u64; REASONS.len()];
        let mut per_reason = [0u64; REASONS.len()];
        for summary in &summaries {
            let AuditEvent::RefusalsSuppressed { reason, count, .. } = summary else {
                panic!("not a summary: {summary:?}");
            };
            let r = REASONS.iter().position(|x| x.as_str() == reason).unwrap();
            prop_assert!(*count > 0);
            summed[r] += count;
            per_reason[r] += 1;
            let line = encode_record(&key, &mut chain, "2026-12-03T10:00:00.000000000Z", "w", &summary.to_json());
            let parsed = parse_record(&line).unwrap();
            prop_assert_eq!(parsed.event_type.as_str(), "RefusalsSuppressed");
            let event: serde_json::Value = serde_json::from_str(parsed.event_json).unwrap();
            prop_assert_eq!(event["count"].as_u64(), Some(*count));
            prop_assert_eq!(RefusalReason::parse(event["reason"].as_str().unwrap()), Some(REASONS[r]));
        }
        prop_assert_eq!(summed, counted);
        for r in 0..REASONS.len() {
            prop_assert!(recorded[r] <= 1 + windows, "{} records in {} windows", recorded[r], windows);
            prop_assert!(per_reason[r] <= 2 + windows, "{} summaries in {} windows", per_reason[r], windows);
        }
    }
}
