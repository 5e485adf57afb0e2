//! Safetensors headers through `TensorMap::parse`, with the input's own length as the shard
//! length and with a length taken from the input's last 8 bytes. Never a panic; a map, when
//! there is one, tiles the shard from 0 in offset order (header first, no empty span), and
//! every name in it is clean text of at most 257 characters; lookups stay within the map.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_residency::seal::tensors::{TensorMap, HEADER_NAME};
use vram_residency::text::sanitize;

fn check(map: &TensorMap, total_len: u64) {
    let spans = map.spans();
    assert_eq!(spans.first().map(|s| s.name.as_str()), Some(HEADER_NAME));
    let mut at = 0u64;
    for s in spans {
        assert_eq!(s.start, at, "spans must tile the shard: {spans:?}");
        assert!(s.end > s.start, "empty span: {spans:?}");
        at = s.end;
        assert_eq!(sanitize(&s.name), s.name, "unsanitised tensor name");
        assert!(s.name.chars().count() <= 257, "unbounded tensor name");
    }
    assert_eq!(at, total_len);
    for offset in [0, total_len / 3, total_len.saturating_sub(1)] {
        for name in map.overlapping(offset, 4096) {
            assert!(spans.iter().any(|s| s.name == name));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Some(map) = TensorMap::parse(data, len) {
        check(&map, len);
    }
    if let Some(tail) = data.len().checked_sub(8).and_then(|at| data.get(at..)) {
        let claimed = u64::from_le_bytes(tail.try_into().expect("8 bytes"));
        if let Some(map) = TensorMap::parse(data, claimed) {
            check(&map, claimed);
        }
    }
});
