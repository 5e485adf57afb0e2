//! Encoding a batch of records into chained lines, shared by the file writer ([`super`]) and
//! the in-memory chain ([`super::MemoryChain`]). A batch is all or nothing: every line is
//! encoded onto a copy of the chain and checked with the verifier's parser before the caller
//! writes anything, so an invalid record never reaches a log and a rejected batch leaves the
//! chain as it was.

use crate::audit::format::{
    ChainState, MAC_SEPARATOR, MAX_LINE_BYTES, encode_record, parse_record,
};
use crate::seal::keys::AuditKey;

use super::AuditLogError;

/// Encodes a batch onto a copy of `chain`, checking every line with the verifier's parser.
/// Returns the text to append (lines each ending in `\n`), the chain after it, and the last seq.
pub(super) fn encode_batch(
    key: &AuditKey,
    chain: &ChainState,
    worker_id: &str,
    records: &[(String, String)],
) -> Result<(String, ChainState, u64), AuditLogError> {
    let mut next = *chain;
    let mut buf = String::new();
    for (index, (ts, event_json)) in records.iter().enumerate() {
        let invalid = |reason: String| AuditLogError::InvalidRecord { index, reason };
        if event_json.contains(MAC_SEPARATOR) {
            // A nested `"mac"` member would make "the bytes before `,"mac":"`" ambiguous for a
            // verifier that searches from the start of the line; never write such a line.
            return Err(invalid(String::from(
                "event JSON must not contain a \"mac\" member",
            )));
        }
        let seq = next.next_seq;
        let line = encode_record(key, &mut next, ts, worker_id, event_json);
        if line.len() > MAX_LINE_BYTES {
            return Err(invalid(format!(
                "encoded line is longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        let parsed = parse_record(&line).map_err(|e| invalid(e.0))?;
        if parsed.seq != seq || parsed.ts != *ts || parsed.worker_id != worker_id {
            return Err(invalid(String::from(
                "event JSON is not a single object (it changes the record's members)",
            )));
        }
        buf.push_str(&line);
        buf.push('\n');
    }
    Ok((buf, next, next.last_seq()))
}

/// Checks that `worker_id` can be written into records: not empty, no control characters, at
/// most 256 bytes.
pub(super) fn check_worker_id(worker_id: &str) -> Result<(), AuditLogError> {
    if worker_id.is_empty() {
        return Err(AuditLogError::InvalidWorkerId(String::from(
            "must not be empty",
        )));
    }
    if let Some(c) = worker_id.chars().find(|c| crate::text::is_invisible(*c)) {
        return Err(AuditLogError::InvalidWorkerId(format!(
            "must not contain control or invisible characters (found U+{:04X})",
            u32::from(c)
        )));
    }
    if worker_id.len() > 256 {
        return Err(AuditLogError::InvalidWorkerId(String::from(
            "must be at most 256 bytes",
        )));
    }
    Ok(())
}
