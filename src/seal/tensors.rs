//! Which tensors a byte range belongs to, for shards that are safetensors files.
//!
//! When a bad chunk is found, "chunk 812 (bytes 851443712..852492288)" is precise but not what
//! an operator acts on; "layers.17.mlp.down_proj.weight" is. If the sealed bytes are a
//! safetensors file (an 8-byte little-endian header length, a JSON header, then the tensor
//! data), the header is parsed with the `safetensors` crate at seal time and kept as a sorted
//! list of absolute byte ranges; a failed verification then names every tensor that overlaps a
//! bad chunk. Anything that does not parse as safetensors simply has no tensor map.
//!
//! The header comes from the file, so the lookup is built to stay cheap whatever it holds:
//! zero-size tensors hold no bytes and are dropped at parse time (a header of a million of
//! them can neither crowd the real tensors out of a capped list of names nor slow the lookup
//! down), the remaining ranges must be disjoint (else there is no map), and a lookup is a
//! binary search plus one step per tensor it names: O(log n + matches).

use std::io::Read;
use std::path::Path;

use safetensors::tensor::Metadata;

/// Name given to the file's own header bytes.
pub const HEADER_NAME: &str = "(safetensors header)";
/// Largest header we are willing to parse, in bytes (the safetensors crate's own limit, 100 MB).
/// A longer header gives no tensor map.
pub const MAX_HEADER: u64 = 100_000_000;

/// One tensor's bytes within the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpan {
    /// Tensor name (or [`HEADER_NAME`]).
    pub name: String,
    /// First byte, absolute within the shard.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// The tensors of a safetensors shard, sorted by offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TensorMap {
    spans: Vec<TensorSpan>,
}

impl TensorMap {
    /// Parses a safetensors header. `head` must start at byte 0 and hold at least the header;
    /// `total_len` is the shard's full length (the tensors must fit in it exactly).
    ///
    /// Zero-size tensors hold no bytes and are left out of the map. O(n log n) in the number
    /// of tensors; memory is linear in the header, which is at most [`MAX_HEADER`] bytes.
    pub fn parse(head: &[u8], total_len: u64) -> Option<Self> {
        let n = u64::from_le_bytes(head.get(..8)?.try_into().ok()?);
        if n == 0 || n > MAX_HEADER {
            return None;
        }
        let data_start = n.checked_add(8)?;
        let header = head.get(8..usize::try_from(data_start).ok()?)?;
        // The safetensors crate validates the header as it deserialises it: offsets sorted,
        // contiguous from 0, each tensor's length matching its dtype and shape.
        let meta: Metadata = serde_json::from_slice(header).ok()?;
        let mut spans = vec![TensorSpan {
            name: HEADER_NAME.to_string(),
            start: 0,
            end: data_start,
        }];
        let mut data_end = 0u64;
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            let (s, e) = (u64::try_from(s).ok()?, u64::try_from(e).ok()?);
            data_end = data_end.max(e);
            if e == s {
                // Holds no bytes, so no bad chunk can be in it: never named.
                continue;
            }
            // Names come from the file: keep them printable and bounded before they can reach
            // an error message or the audit log.
            let mut name = crate::text::sanitize(&name);
            if name.chars().count() > 256 {
                name = name.chars().take(256).chain(std::iter::once('…')).collect();
            }
            spans.push(TensorSpan {
                name,
                start: data_start.checked_add(s)?,
                end: data_start.checked_add(e)?,
            });
        }
        if data_start.checked_add(data_end)? != total_len {
            return None;
        }
        Self::from_spans(spans)
    }

    /// Normalises spans into a map: empty spans dropped, the rest sorted by offset. Spans that
    /// end before they start, or that overlap one another, are not a valid layout (the
    /// safetensors crate refuses them; this does not rely on it): no map at all rather than a
    /// wrong one. O(n log n).
    fn from_spans(mut spans: Vec<TensorSpan>) -> Option<Self> {
        if spans.iter().any(|s| s.end < s.start) {
            return None;
        }
        spans.retain(|s| s.end > s.start);
        spans.sort_unstable_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
        // Sorted by start and disjoint, so the ends are sorted too: `overlapping` relies on it.
        let disjoint = spans.windows(2).all(|w| match w {
            [a, b] => a.end <= b.start,
            _ => true,
        });
        disjoint.then_some(Self { spans })
    }

    /// Reads and parses the header of a safetensors file (only the header is read).
    pub fn from_file(path: &Path) -> Option<Self> {
        let mut f = std::fs::File::open(path).ok()?;
        let total = f.metadata().ok()?.len();
        let mut len = [0u8; 8];
        f.read_exact(&mut len).ok()?;
        let n = u64::from_le_bytes(len);
        if n == 0 || n > MAX_HEADER || n.checked_add(8)? > total {
            return None;
        }
        let mut head = len.to_vec();
        head.resize(usize::try_from(n.checked_add(8)?).ok()?, 0);
        f.read_exact(head.get_mut(8..)?).ok()?;
        Self::parse(&head, total)
    }

    /// The spans that hold bytes — the header, then every tensor of nonzero size — sorted by
    /// offset and disjoint.
    pub fn spans(&self) -> &[TensorSpan] {
        &self.spans
    }

    /// The spans overlapping `[offset, offset + len)`, in offset order. O(log n) to find the
    /// first, then O(1) per span yielded, so a caller that stops early pays only for what it
    /// takes.
    pub fn overlapping_spans(&self, offset: u64, len: u64) -> impl Iterator<Item = &TensorSpan> {
        let end = offset.saturating_add(len);
        // The spans are disjoint and sorted, so their ends are sorted too: the first span
        // ending after `offset` is the first candidate, and the run stops at the first span
        // starting at or after `end`.
        let first = if len == 0 {
            self.spans.len() // an empty range overlaps nothing
        } else {
            self.spans.partition_point(|s| s.end <= offset)
        };
        self.spans
            .get(first..)
            .unwrap_or_default()
            .iter()
            .take_while(move |s| s.start < end)
    }

    /// Names of the tensors overlapping `[offset, offset + len)`, in offset order (the header
    /// as [`HEADER_NAME`]; zero-size tensors never). O(log n + matches).
    pub fn overlapping(&self, offset: u64, len: u64) -> Vec<String> {
        self.overlapping_spans(offset, len)
            .map(|s| s.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    fn file() -> Vec<u8> {
        let a = vec![1u8; 4096];
        let b = vec![2u8; 8192];
        let c = vec![3u8; 100];
        safetensors::serialize(
            [
                (
                    "a.weight",
                    TensorView::new(Dtype::U8, vec![4096], &a).unwrap(),
                ),
                (
                    "b.weight",
                    TensorView::new(Dtype::U8, vec![8192], &b).unwrap(),
                ),
                ("c.bias", TensorView::new(Dtype::U8, vec![100], &c).unwrap()),
            ],
            None,
        )
        .unwrap()
    }

    #[test]
    fn maps_ranges_to_tensors() {
        let bytes = file();
        let map = TensorMap::parse(&bytes, bytes.len() as u64).unwrap();
        let header_end = map.spans()[0].end;
        assert_eq!(map.spans().len(), 4);
        assert_eq!(map.overlapping(0, 1), vec![HEADER_NAME]);
        assert_eq!(map.overlapping(header_end, 1), vec!["a.weight"]);
        assert_eq!(
            map.overlapping(header_end + 4095, 2),
            vec!["a.weight", "b.weight"]
        );
        assert_eq!(
            map.overlapping(header_end + 4096 + 8192, 100),
            vec!["c.bias"]
        );
        assert!(map.overlapping(bytes.len() as u64, 10).is_empty());
    }

    #[test]
    fn non_safetensors_bytes_have_no_map() {
        assert!(TensorMap::parse(&[0u8; 100], 100).is_none());
        assert!(TensorMap::parse(b"GGUF\x03\0\0\0 rest", 14).is_none());
        let bytes = file();
        assert!(TensorMap::parse(&bytes, bytes.len() as u64 + 1).is_none());
        let mut truncated_len = bytes.clone();
        truncated_len[0] = 0xff;
        assert!(TensorMap::parse(&truncated_len, bytes.len() as u64).is_none());
    }

    #[test]
    fn reads_only_the_header_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        std::fs::write(&p, file()).unwrap();
        let map = TensorMap::from_file(&p).unwrap();
        assert_eq!(map.spans().len(), 4);
        std::fs::write(&p, b"not a model").unwrap();
        assert!(TensorMap::from_file(&p).is_none());
    }
}

#[cfg(test)]
mod profile_tmp {
    use super::*;
    fn hwm() -> String {
        let st = std::fs::read_to_string("/proc/self/status").unwrap();
        st.lines().filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS")).collect::<Vec<_>>().join(" ")
    }
    #[test]
    fn profile_parse_mem() {
        let n: usize = std::env::var("NZ").unwrap().parse().unwrap();
        let mut bytes = vec![0u8; 8];
        bytes.push(b'{');
        for i in 0..n {
            bytes.extend_from_slice(format!(r#""z{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}},"#).as_bytes());
        }
        bytes.extend_from_slice(br#""big":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}"#);
        let hl = (bytes.len() - 8) as u64;
        bytes[..8].copy_from_slice(&hl.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        eprintln!("header {} MB; before: {}", hl / 1_000_000, hwm());
        let t = std::time::Instant::now();
        let map = TensorMap::parse(&bytes, bytes.len() as u64).unwrap();
        eprintln!("parse {:?} {}; after: {}", t.elapsed(), map.spans().len(), hwm());
    }
}
