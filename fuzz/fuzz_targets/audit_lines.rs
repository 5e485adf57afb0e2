//! Audit log text (`vram-audit-v1`) from any bytes: each line through `split_record` and
//! `parse_record`, the whole text through `verify_lines` the way a file is read (the last line
//! complete only when the text ends in `\n`). Never a panic; every reason given is clean text
//! (nothing `text::sanitize` would replace); an intact report counts exactly the lines given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_residency::audit::format::{parse_record, parse_record_bytes, split_record};
use vram_residency::audit::verify_lines;
use vram_residency::seal::keys::AuditKey;
use vram_residency::text::sanitize;
use vram_residency::WorkerToken;

/// The worker token of the published test vectors (`tests/vectors/vectors-v1.json`), which the
/// seeds in `fuzz/seeds/` are signed with.
const TOKEN: &[u8] = b"vectors-worker-token-0123456789abcdef";

fn assert_clean(s: &str) {
    assert_eq!(sanitize(s), s, "raw control or escape in a reason: {s:?}");
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if let Err(e) = parse_record_bytes(line) {
            assert_clean(&e.0);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.split('\n') {
        match parse_record(line) {
            Ok(r) => {
                let (body, mac) = split_record(line).expect("a parsed record splits");
                assert_eq!((body, mac), (r.body, r.mac));
            }
            Err(e) => assert_clean(&e.0),
        }
    }
    let token = WorkerToken::new(TOKEN.to_vec()).expect("a valid token");
    let key = AuditKey::derive(&token);
    let (body, complete) = match text.strip_suffix('\n') {
        Some(b) => (b, true),
        None => (text, false),
    };
    let report = verify_lines(body.split('\n'), &key, complete);
    match &report.first_problem {
        Some(p) => assert_clean(&p.to_string()),
        None => {
            let lines = body
                .split('\n')
                .filter(|l| complete || !l.is_empty())
                .count();
            assert_eq!(
                report.records, lines as u64,
                "an intact report covers every line"
            );
        }
    }
});
