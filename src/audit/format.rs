//! The `vram-audit-v1` line format: how one audit record is encoded, parsed and chained.
//!
//! A log is JSON Lines, one compact object per line, members in this fixed order:
//!
//! ```text
//! {"seq":N,"ts":"YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ","worker_id":"…","event":{"type":"…",…},"mac":"<64 lowercase hex>"}
//! ```
//!
//! The *body* of a line is its bytes before `,"mac":"`. Record `i` carries
//! `mac_i = HMAC-SHA256(audit_key, mac_{i-1} ‖ body_i)`, where `mac_{i-1}` is the previous
//! record's raw 32-byte MAC and `mac_0` is 32 zero bytes. `seq` starts at 1 and grows by one per
//! record. Editing, inserting, deleting or reordering a record therefore breaks the chain at that
//! line. (Cutting records off the *end* of a log cannot be detected by the chain alone; the
//! verifier reports the last sequence number so it can be compared with an external record.)
//!
//! This module is shared by the file writer ([`super::writer`]), the in-memory chain and the
//! offline verifier ([`super::verify`]); it does no I/O.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use hmac::Mac;
use serde::Deserializer;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::seal::keys::AuditKey;
use crate::text::sanitize;

/// The separator between a line's body and its MAC.
pub const MAC_SEPARATOR: &str = ",\"mac\":\"";
/// Length in bytes of a line's fixed tail: `,"mac":"` + 64 hex digits + `"}`.
pub const MAC_TAIL_LEN: usize = MAC_SEPARATOR.len() + 64 + 2;
/// Longest line (without its `\n`) that is written or accepted. Records are small; this bound
/// keeps a corrupt or hostile file from making a reader buffer gigabytes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest accepted event `type` name.
pub const MAX_TYPE_NAME_LEN: usize = 64;
/// Length of a `ts` value: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub const TS_LEN: usize = 30;

/// Formats a timestamp the way records carry it: RFC 3339, UTC, nine fractional digits, `Z`
/// (for example `2026-11-29T09:00:00.500000000Z`).
pub fn format_ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Checks that `ts` has exactly the record timestamp shape (see [`format_ts`]) and names a real
/// instant, and returns it.
pub fn parse_ts(ts: &str) -> Result<DateTime<Utc>, MalformedRecord> {
    let bad = || {
        MalformedRecord::new(format!(
            "\"ts\" is not YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ: {}",
            snippet(ts)
        ))
    };
    let bytes = ts.as_bytes();
    if bytes.len() != TS_LEN {
        return Err(bad());
    }
    let shape_ok = bytes.iter().enumerate().all(|(i, b)| match i {
        4 | 7 => *b == b'-',
        10 => *b == b'T',
        13 | 16 => *b == b':',
        19 => *b == b'.',
        29 => *b == b'Z',
        _ => b.is_ascii_digit(),
    });
    if !shape_ok {
        return Err(bad());
    }
    let naive = ts
        .strip_suffix('Z')
        .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok())
        .ok_or_else(bad)?;
    Ok(naive.and_utc())
}

/// Where a chain stands: the sequence number the next record gets and the MAC it chains from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainState {
    /// Sequence number of the next record (1 for an empty log).
    pub next_seq: u64,
    /// MAC of the last record (32 zero bytes for an empty log).
    pub prev_mac: [u8; 32],
}

impl ChainState {
    /// The state of an empty log: next seq 1, previous MAC all zeros.
    pub fn genesis() -> Self {
        Self {
            next_seq: 1,
            prev_mac: [0u8; 32],
        }
    }

    /// Sequence number of the last record in the chain (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Checks that `record` is the next link of this chain and, if so, advances past it.
    ///
    /// The sequence number is checked first (a deleted, inserted or reordered record shows up as
    /// a gap), then the MAC, in constant time. On error the state is unchanged.
    pub fn accept(&mut self, key: &AuditKey, record: &ParsedRecord<'_>) -> Result<(), ChainBreak> {
        if record.seq != self.next_seq {
            return Err(ChainBreak::SeqGap {
                expected: self.next_seq,
                found: record.seq,
            });
        }
        let expected = compute_mac(key, &self.prev_mac, record.body);
        if !bool::from(expected.ct_eq(&record.mac)) {
            return Err(ChainBreak::MacMismatch);
        }
        self.prev_mac = record.mac;
        self.advance();
        Ok(())
    }

    fn advance(&mut self) {
        // A log cannot realistically hold 2^64 records; saturating keeps this total.
        self.next_seq = self.next_seq.saturating_add(1);
    }
}

impl Default for ChainState {
    fn default() -> Self {
        Self::genesis()
    }
}

/// Why a well-formed record is not the next link of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainBreak {
    /// The record's `seq` is not the one expected next.
    SeqGap {
        /// The sequence number the chain expected.
        expected: u64,
        /// The sequence number the record carries.
        found: u64,
    },
    /// The record's MAC does not match its body and the previous MAC under this key.
    MacMismatch,
}

/// `HMAC-SHA256(key, prev_mac ‖ body)`.
pub fn compute_mac(key: &AuditKey, prev_mac: &[u8; 32], body: &str) -> [u8; 32] {
    let mut mac = key.mac();
    mac.update(prev_mac);
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Encodes one record as a line (without the trailing `\n`) and advances `chain` past it.
///
/// `ts` should come from [`format_ts`]; `worker_id` and `ts` are JSON-escaped here;
/// `event_json` is inserted verbatim and must be one compact JSON object whose first member is
/// `"type"` (what `AuditEvent::to_json` produces). This function does not validate its inputs;
/// the writer checks every line it encodes with [`parse_record`] before writing it.
pub fn encode_record(
    key: &AuditKey,
    chain: &mut ChainState,
    ts: &str,
    worker_id: &str,
    event_json: &str,
) -> String {
    let seq = chain.next_seq;
    let ts_json = json_string(ts);
    let worker_json = json_string(worker_id);
    let mut line = String::with_capacity(
        48_usize
            .saturating_add(ts_json.len())
            .saturating_add(worker_json.len())
            .saturating_add(event_json.len())
            .saturating_add(MAC_TAIL_LEN),
    );
    line.push_str("{\"seq\":");
    line.push_str(&seq.to_string());
    line.push_str(",\"ts\":");
    line.push_str(&ts_json);
    line.push_str(",\"worker_id\":");
    line.push_str(&worker_json);
    line.push_str(",\"event\":");
    line.push_str(event_json);
    let mac = compute_mac(key, &chain.prev_mac, &line);
    line.push_str(MAC_SEPARATOR);
    line.push_str(&hex::encode(mac));
    line.push_str("\"}");
    chain.prev_mac = mac;
    chain.advance();
    line
}

/// A string as a JSON string literal, quotes included.
fn json_string(s: &str) -> String {
    // Serializing a `str` cannot fail in serde_json (it only fails for non-string map keys and
    // failing writers); the fallback keeps library code free of panics.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// One line taken apart. Borrowed parts point into the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRecord<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's timestamp, exactly as written.
    pub ts: String,
    /// The worker id, unescaped.
    pub worker_id: String,
    /// The event's `type` name.
    pub event_type: String,
    /// The event object's JSON text, exactly as written.
    pub event_json: &'a str,
    /// The bytes the MAC covers: everything before `,"mac":"`.
    pub body: &'a str,
    /// The record's MAC.
    pub mac: [u8; 32],
}

/// Why a line is not a well-formed `vram-audit-v1` record. The reason never contains raw
/// control characters from the line (they are escaped or replaced).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedRecord(pub String);

impl MalformedRecord {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    fn from_json(what: &str, err: &serde_json::Error) -> Self {
        // serde_json messages quote input with `{:?}`; sanitize anyway so nothing from a hostile
        // line can reach a terminal unescaped, and keep the message short.
        let msg: String = sanitize(&err.to_string()).chars().take(200).collect();
        Self(format!("{what}: {msg}"))
    }
}

/// Splits a line into its body (the bytes the MAC covers) and its MAC, checking the fixed tail
/// `,"mac":"<64 lowercase hex>"}`.
pub fn split_record(line: &str) -> Result<(&str, [u8; 32]), MalformedRecord> {
    let body_len = line
        .len()
        .checked_sub(MAC_TAIL_LEN)
        .ok_or_else(|| MalformedRecord::new("line too short to end in a \"mac\" member"))?;
    let (body, tail) = line
        .split_at_checked(body_len)
        .ok_or_else(|| MalformedRecord::new("line does not end in ,\"mac\":\"<64 hex>\"}"))?;
    let hex_part = tail
        .strip_prefix(MAC_SEPARATOR)
        .and_then(|t| t.strip_suffix("\"}"))
        .ok_or_else(|| MalformedRecord::new("line does not end in ,\"mac\":\"<64 hex>\"}"))?;
    if !hex_part
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(MalformedRecord::new(
            "\"mac\" is not 64 lowercase hex digits",
        ));
    }
    let mut mac = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut mac)
        .map_err(|_| MalformedRecord::new("\"mac\" is not 64 lowercase hex digits"))?;
    Ok((body, mac))
}

/// Parses one line (without its `\n`) into a [`ParsedRecord`].
///
/// Checks: at most [`MAX_LINE_BYTES`] bytes, no line break inside; the fixed MAC tail; valid
/// JSON with exactly the members `seq`, `ts`, `worker_id`, `event`, `mac` in that order; `seq` an
/// unsigned integer; `ts` in the [`format_ts`] shape; `event` an object whose first member is
/// `"type"` with a name of ASCII letters, digits and `_`. It does not check the MAC (that needs
/// the chain, see [`ChainState::accept`]).
pub fn parse_record(line: &str) -> Result<ParsedRecord<'_>, MalformedRecord> {
    check_line_len(line.len())?;
    if line.is_empty() {
        return Err(MalformedRecord::new("empty line"));
    }
    if line.contains(['\n', '\r']) {
        return Err(MalformedRecord::new("line break inside a record"));
    }
    let (body, mac) = split_record(line)?;
    let fields: RecordFields<'_> = {
        let mut de = serde_json::Deserializer::from_str(line);
        let fields = de
            .deserialize_map(RecordVisitor)
            .map_err(|e| MalformedRecord::from_json("not a vram-audit-v1 record", &e))?;
        de.end()
            .map_err(|e| MalformedRecord::from_json("trailing bytes after the record", &e))?;
        fields
    };
    parse_ts(&fields.ts)?;
    let event_json = fields.event.get();
    let event_type = event_type_of(event_json)?;
    Ok(ParsedRecord {
        seq: fields.seq,
        ts: fields.ts,
        worker_id: fields.worker_id,
        event_type,
        event_json,
        body,
        mac,
    })
}

/// [`parse_record`] for a line as read from a file (without its `\n`): the length is checked
/// before anything else, then the bytes must be UTF-8.
pub fn parse_record_bytes(line: &[u8]) -> Result<ParsedRecord<'_>, MalformedRecord> {
    check_line_len(line.len())?;
    let text =
        std::str::from_utf8(line).map_err(|_| MalformedRecord::new("line is not valid UTF-8"))?;
    parse_record(text)
}

/// Refuses a line longer than [`MAX_LINE_BYTES`].
fn check_line_len(len: usize) -> Result<(), MalformedRecord> {
    if len > MAX_LINE_BYTES {
        return Err(MalformedRecord::new(format!(
            "line is longer than {MAX_LINE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks that `event_json` is a JSON object whose first member is `"type"` with a valid type
/// name, and returns that name.
pub fn event_type_of(event_json: &str) -> Result<String, MalformedRecord> {
    let type_name = serde_json::from_str::<EventHead>(event_json)
        .map_err(|e| MalformedRecord::from_json("bad \"event\"", &e))?
        .0;
    let name_ok = !type_name.is_empty()
        && type_name.len() <= MAX_TYPE_NAME_LEN
        && type_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !name_ok {
        return Err(MalformedRecord::new(format!(
            "event \"type\" must be 1 to {MAX_TYPE_NAME_LEN} ASCII letters, digits or '_', got {}",
            snippet(&type_name)
        )));
    }
    Ok(type_name)
}

/// A short, escaped rendering of untrusted text for error messages.
/// Quoted as `{:?}` would, except that every character that does not show (controls, format
/// characters, default-ignorable fillers such as U+3164, which `{:?}` prints raw) is written as
/// its `\u{…}` escape: an error never carries an invisible character to a terminal or a log.
fn snippet(s: &str) -> String {
    let mut out = String::from("\"");
    let mut shown = 0usize;
    for c in s.chars().take(40) {
        if crate::text::is_invisible(c) {
            out.extend(c.escape_unicode());
        } else {
            out.extend(c.escape_debug());
        }
        shown = shown.saturating_add(c.len_utf8());
    }
    out.push('"');
    if shown < s.len() {
        out.push('…');
    }
    out
}

struct RecordFields<'a> {
    seq: u64,
    ts: String,
    worker_id: String,
    event: &'a RawValue,
}

/// Reads the record object member by member, so that order and the exact member set are
/// enforced (a derived `Deserialize` would accept any order).
struct RecordVisitor;

fn expect_key<'de, A: MapAccess<'de>>(map: &mut A, want: &str) -> Result<(), A::Error> {
    match map.next_key::<String>()? {
        Some(k) if k == want => Ok(()),
        Some(k) => Err(de::Error::custom(format!(
            "expected member \"{want}\", found {}",
            snippet(&k)
        ))),
        None => Err(de::Error::custom(format!("missing member \"{want}\""))),
    }
}

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = RecordFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with members seq, ts, worker_id, event, mac in that order")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        expect_key(&mut map, "seq")?;
        let seq: u64 = map.next_value()?;
        expect_key(&mut map, "ts")?;
        let ts: String = map.next_value()?;
        expect_key(&mut map, "worker_id")?;
        let worker_id: String = map.next_value()?;
        expect_key(&mut map, "event")?;
        let event: &'de RawValue = map.next_value()?;
        expect_key(&mut map, "mac")?;
        // The MAC's value was already checked by `split_record`; here only its type matters.
        let _mac: &'de str = map.next_value()?;
        if let Some(k) = map.next_key::<String>()? {
            return Err(de::Error::custom(format!(
                "unexpected member {} after \"mac\"",
                snippet(&k)
            )));
        }
        Ok(RecordFields {
            seq,
            ts,
            worker_id,
            event,
        })
    }
}

/// The `type` of an event object, which must be its first member.
struct EventHead(String);

impl<'de> serde::Deserialize<'de> for EventHead {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventHeadVisitor)
    }
}

struct EventHeadVisitor;

impl<'de> Visitor<'de> for EventHeadVisitor {
    type Value = EventHead;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object whose first member is \"type\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        expect_key(&mut map, "type")?;
        let type_name: String = map.next_value()?;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(EventHead(type_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::test_support::{vector_key, vector_lines, vectors};
    use chrono::TimeZone;

    #[derive(serde::Deserialize)]
    struct RawLine<'a> {
        seq: u64,
        ts: String,
        worker_id: String,
        #[serde(borrow)]
        event: &'a RawValue,
    }

    /// One `DeviceReset` record by `worker_id`, the first of a chain under the vectors' key.
    fn first_line(worker_id: &str) -> String {
        encode_record(
            &vector_key(),
            &mut ChainState::genesis(),
            "2026-11-29T09:00:00.000000000Z",
            worker_id,
            r#"{"type":"DeviceReset","gpu_device":0}"#,
        )
    }

    fn good_line() -> String {
        first_line("w")
    }

    #[test]
    fn vector_audit_key() {
        let v = vectors();
        let key = vector_key();
        assert_eq!(
            hex::encode(key.bytes_for_tests()),
            v["derived_keys"]["audit_key_hex"].as_str().unwrap()
        );
    }

    #[test]
    fn vector_lines_reproduced_byte_for_byte() {
        let key = vector_key();
        let lines = vector_lines();
        assert_eq!(lines.len(), 3);
        let mut chain = ChainState::genesis();
        for line in &lines {
            let raw: RawLine<'_> = serde_json::from_str(line).unwrap();
            assert_eq!(raw.seq, chain.next_seq);
            let encoded = encode_record(&key, &mut chain, &raw.ts, &raw.worker_id, raw.event.get());
            assert_eq!(&encoded, line);
        }
        assert_eq!(chain.next_seq, 4);
    }

    #[test]
    fn vector_lines_parse_and_chain() {
        let key = vector_key();
        let mut chain = ChainState::genesis();
        let mut types = Vec::new();
        for line in &vector_lines() {
            let rec = parse_record(line).unwrap();
            chain.accept(&key, &rec).unwrap();
            assert_eq!(rec.worker_id, "worker-vec-1");
            types.push(rec.event_type);
        }
        assert_eq!(
            types,
            ["AuditLogOpened", "VramSealed", "SealVerificationFailed"]
        );
        assert_eq!(chain.last_seq(), 3);
    }

    #[test]
    fn ts_has_nine_digits_and_z() {
        let t = Utc.with_ymd_and_hms(2026, 11, 29, 9, 0, 0).unwrap()
            + chrono::Duration::milliseconds(500);
        assert_eq!(format_ts(t), "2026-11-29T09:00:00.500000000Z");
        let t0 = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(format_ts(t0), "2026-01-02T03:04:05.000000000Z");
        assert_eq!(parse_ts(&format_ts(t)).unwrap(), t);
        let now = Utc::now();
        assert_eq!(parse_ts(&format_ts(now)).unwrap(), now);
        for bad in [
            "2026-11-29T09:00:00.5Z",
            "2026-11-29T09:00:00.500000000+00:00",
            "2026-11-29 09:00:00.500000000Z",
            "2026-13-29T09:00:00.500000000Z",
            "2026-11-29T09:00:00.50000000xZ",
        ] {
            assert!(parse_ts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn worker_id_is_escaped() {
        let line = first_line("w\"1\n\u{1b}");
        assert!(!line.contains('\n'));
        let rec = parse_record(&line).unwrap();
        assert_eq!(rec.worker_id, "w\"1\n\u{1b}");
        assert_eq!(rec.event_type, "DeviceReset");
        ChainState::genesis().accept(&vector_key(), &rec).unwrap();
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        let good = good_line();
        assert!(parse_record(&good).is_ok());
        let mac_hex = &good[good.len() - 66..good.len() - 2];
        let cases: Vec<String> = vec![
            String::new(),
            "{}".into(),
            good[..good.len() - 1].to_string(),
            good.replace(mac_hex, &mac_hex.to_uppercase()),
            good.replace("{\"seq\":1,\"ts\"", "{\"ts\""),
            good.replace("\"seq\":1", "\"seq\":-1"),
            good.replace("\"seq\":1", "\"seq\":\"1\""),
            good.replace(
                "\"seq\":1,\"ts\":\"2026-11-29T09:00:00.000000000Z\"",
                "\"ts\":\"2026-11-29T09:00:00.000000000Z\",\"seq\":1",
            ),
            good.replace(",\"worker_id\":\"w\"", ",\"worker_id\":\"w\",\"x\":1"),
            good.replace(
                "{\"type\":\"DeviceReset\",\"gpu_device\":0}",
                "{\"gpu_device\":0,\"type\":\"DeviceReset\"}",
            ),
            good.replace("{\"type\":\"DeviceReset\",\"gpu_device\":0}", "[1]"),
            good.replace("\"DeviceReset\"", "\"Device Reset\""),
            good.replace("\"DeviceReset\"", "\"\""),
            good.replace(",\"mac\":", ",\"mac\":\"x\",\"mac\":"),
            good.replace("{\"seq\"", "{\"seq\":0,\"seq\""),
            good.replace(",\"ts\"", ",\n\"ts\""),
            format!("{good} "),
            good.replace("09:00:00.000000000Z", "09:00:00Z"),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(parse_record(c).is_err(), "case {i} accepted: {c}");
        }
    }

    #[test]
    fn malformed_reason_escapes_controls() {
        let good = good_line();
        let bad = good.replace("\"worker_id\"", "\"\\u001b[31mX\"");
        let err = parse_record(&bad).unwrap_err();
        assert!(!err.0.contains('\u{1b}'), "{err}");
    }

    #[test]
    fn tampered_body_fails_mac() {
        let key = vector_key();
        let good = good_line();
        let bad = good.replace("\"gpu_device\":0", "\"gpu_device\":1");
        let rec = parse_record(&bad).unwrap();
        let mut chain = ChainState::genesis();
        assert_eq!(chain.accept(&key, &rec), Err(ChainBreak::MacMismatch));
        assert_eq!(chain, ChainState::genesis());
    }
}
