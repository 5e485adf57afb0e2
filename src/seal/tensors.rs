//! Which tensors a byte range belongs to, for shards that are safetensors files.
//!
//! When a bad chunk is found, "chunk 812 (bytes 851443712..852492288)" is precise but not what
//! an operator acts on; "layers.17.mlp.down_proj.weight" is. If the sealed bytes are a
//! safetensors file (an 8-byte little-endian header length, a JSON header, then the tensor
//! data), the header is parsed at seal time and kept as a sorted list of absolute byte ranges;
//! a failed verification then names every tensor that overlaps a bad chunk. Anything that does
//! not parse as safetensors simply has no tensor map.
//!
//! The header comes from the file, so both steps are built to stay cheap whatever it holds:
//!
//! - Parsing streams the JSON through the `safetensors` crate's own [`TensorInfo`] type and
//!   checks what the crate's loader checks (offsets contiguous from 0 once sorted, each
//!   tensor's length matching its dtype and shape, the data ending exactly at the end of the
//!   file), plus one thing it lets through: a tensor name given twice. Zero-size tensors hold
//!   no bytes and are not kept, beyond the 16 bytes per entry the checks need. O(n log n) in
//!   the number of tensors; memory is the header (at most [`MAX_HEADER`] bytes) plus the
//!   tensors that hold bytes. (The crate's `Metadata` deserialiser buffers the whole header as
//!   a tree of owned values first: about 15 times the header's size in memory.)
//! - A lookup is a binary search plus one step per tensor it names: O(log n + matches). A
//!   header of a million zero-size tensors can neither crowd the real tensors out of a capped
//!   list of names nor slow the lookup down.
//!
//! A seal also keeps the header's full tensor list ([`TensorList`], what
//! `SealedShard::tensors` and `ShardLease::tensor` answer from): every tensor, zero-size ones
//! included, in file order, each name exactly as the header spells it (no cut, no
//! replacement: it is the key a caller looks tensors up by; these names never reach an error
//! message or the audit log, which see only the map's sanitised ones). Its memory is bounded
//! by the header cap: an entry takes at least about 50 bytes of header JSON and about 200
//! bytes of memory (88 inline, name, dtype and shape on the heap, four bytes of name index),
//! so at most about four times the header — some 400 MB for a 100 MB header of nothing but
//! empty tensors, which the caller chose to seal, held while its handle lives. The map, which
//! the device actor keeps, stays as small as above.
//!
//! The header is parsed before the seal reads the source again to hash it, so a layout keeps
//! the digest of the header bytes it came from ([`HeaderDigest`]), and the device refuses to
//! sign a shard whose first bytes are not those: the list and the map always describe the
//! bytes sealed.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io::Read;
use std::path::Path;

use safetensors::tensor::TensorInfo as RawInfo;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// Name given to the file's own header bytes.
pub const HEADER_NAME: &str = "(safetensors header)";
/// Largest header we are willing to parse, in bytes (the safetensors crate's own limit, 100 MB).
/// A longer header gives no tensor map.
pub const MAX_HEADER: u64 = 100_000_000;
/// Longest tensor name kept, in characters (longer ones are cut and marked with `…`).
const MAX_NAME_CHARS: usize = 256;

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

/// The spans of a safetensors shard that hold bytes: nonempty, disjoint, sorted by offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TensorMap {
    spans: Vec<TensorSpan>,
}

/// One tensor of a shard sealed from a safetensors file, as its header describes it.
///
/// `start..end` is the tensor's byte range within the shard, counted from the file's first
/// byte (the 8-byte length and the JSON header included), so it can be passed straight to a
/// lease's `read` or a fault's offset. A zero-size tensor has `start == end`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorInfo {
    /// The tensor's name, exactly as in the header.
    pub name: String,
    /// Its element type as the header spells it (`"F32"`, `"BF16"`, `"I64"`, …).
    pub dtype: String,
    /// Its shape (empty for a scalar).
    pub shape: Vec<u64>,
    /// Its first byte, within the shard.
    pub start: u64,
    /// One past its last byte, within the shard.
    pub end: u64,
}

impl TensorInfo {
    /// Its length in bytes (`end - start`).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Every tensor of a safetensors header, zero-size ones included, in file order (by data
/// offset; zero-size tensors at the same offset by name), with an index by name. See the
/// module documentation for the memory it takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TensorList {
    infos: Vec<TensorInfo>,
    /// Positions in `infos`, sorted by name: a lookup is a binary search.
    by_name: Vec<u32>,
}

impl TensorList {
    /// Builds the list from tensors with absolute offsets, in any order; names must be unique
    /// (`None` otherwise, or past `u32::MAX` tensors).
    fn new(mut infos: Vec<TensorInfo>) -> Option<Self> {
        infos.sort_unstable_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
        infos.shrink_to_fit();
        let n = u32::try_from(infos.len()).ok()?;
        let name_at = |i: u32| {
            usize::try_from(i)
                .ok()
                .and_then(|i| infos.get(i))
                .map(|t| t.name.as_str())
        };
        let mut by_name: Vec<u32> = (0..n).collect();
        by_name.sort_unstable_by(|&a, &b| name_at(a).cmp(&name_at(b)));
        let unique = by_name
            .windows(2)
            .all(|w| matches!(w, [a, b] if name_at(*a) != name_at(*b)));
        unique.then_some(Self { infos, by_name })
    }

    /// The tensors in file order.
    pub fn as_slice(&self) -> &[TensorInfo] {
        &self.infos
    }

    /// The tensor called `name` (exactly as in the header). O(log n).
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        let at = |i: u32| usize::try_from(i).ok().and_then(|i| self.infos.get(i));
        let pos = self
            .by_name
            .binary_search_by(|&i| at(i).map(|t| t.name.as_str()).cmp(&Some(name)))
            .ok()?;
        self.by_name.get(pos).and_then(|&i| at(i))
    }
}

/// Everything a seal keeps of a safetensors header: the [`TensorMap`] that names the tensors
/// behind bad chunks (kept by the device actor), the full [`TensorList`] (kept in the
/// caller's handle), where the data section starts, and the digest of the header bytes it was
/// all parsed from (which the device checks against the bytes it sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    /// The spans that hold bytes, for naming bad chunks.
    pub map: TensorMap,
    /// Every tensor, in file order.
    pub tensors: TensorList,
    /// The data section's first byte within the shard: 8 + the header's length.
    pub data_start: u64,
    /// The bytes `0..data_start` the map and the list were parsed from.
    pub header: HeaderDigest,
}

/// The length and SHA-256 of the bytes a safetensors header was parsed from (the 8-byte
/// length and the JSON: `0..data_start`).
///
/// A file's header is read and parsed before the seal, the file itself is read again when it
/// is hashed: a file replaced in between (same length, another header) would otherwise be
/// sealed with a tensor list that does not describe it. The device actor checks, before it
/// signs, that the first `len` bytes it sealed hash to `sha256`; a seal whose bytes do not
/// fails ([`HeaderDigest::changed`]) and nothing is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderDigest {
    /// How many bytes: the layout's `data_start`.
    pub len: u64,
    /// Their SHA-256.
    pub sha256: [u8; 32],
}

impl HeaderDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            len: bytes.len() as u64,
            sha256: sha2::Sha256::digest(bytes).into(),
        }
    }

    /// Whether `bytes` are the bytes this digest was taken of.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        *self == Self::of(bytes)
    }

    /// The error of a seal whose bytes do not start with the header that was inspected.
    pub fn changed() -> crate::error::VramError {
        crate::error::VramError::io(
            std::io::ErrorKind::InvalidData,
            "the model file changed while it was being sealed: its safetensors header differs \
             from the one inspected; nothing was sealed",
        )
    }
}

/// Device addresses of a safetensors shard's data section are multiples of this.
pub const DATA_ALIGN: u64 = 256;

impl TensorLayout {
    /// Parses a safetensors header as [`TensorMap::parse`] does (same checks, same refusals),
    /// keeping the full tensor list too.
    pub fn parse(head: &[u8], total_len: u64) -> Option<Self> {
        let (map, tensors, data_start) = parse_header(head, total_len, true)?;
        let header = HeaderDigest::of(head.get(..usize::try_from(data_start).ok()?)?);
        Some(Self {
            map,
            tensors: tensors?,
            data_start,
            header,
        })
    }

    /// Reads and parses the header of a safetensors file (only the header is read).
    pub fn from_file(path: &Path) -> Option<Self> {
        let (head, total) = read_head(path)?;
        Self::parse(&head, total)
    }

    /// Bytes of padding in front of the shard in device memory so that the data section
    /// starts on a [`DATA_ALIGN`]-byte boundary of an allocation that does:
    /// `(256 - data_start % 256) % 256`.
    pub fn lead_padding(&self) -> u64 {
        DATA_ALIGN
            .saturating_sub(self.data_start.checked_rem(DATA_ALIGN).unwrap_or(0))
            .checked_rem(DATA_ALIGN)
            .unwrap_or(0)
    }
}

impl TensorMap {
    /// Parses a safetensors header. `head` must start at byte 0 and hold at least the header;
    /// `total_len` is the shard's full length (the tensors must fit in it exactly).
    ///
    /// Zero-size tensors hold no bytes and are left out of the map. O(n log n) in the number
    /// of tensors; see the module documentation for what is checked and what memory it takes.
    pub fn parse(head: &[u8], total_len: u64) -> Option<Self> {
        parse_header(head, total_len, false).map(|(map, _, _)| map)
    }

    /// Normalises spans into a map: empty spans dropped, the rest sorted by offset. Spans that
    /// end before they start, or that overlap one another, are not a valid layout: no map at
    /// all rather than a wrong one (`parse` already refuses both; this does not rely on it).
    /// O(n log n), and O(n) for spans already sorted.
    fn from_spans(mut spans: Vec<TensorSpan>) -> Option<Self> {
        if spans.iter().any(|s| s.end < s.start) {
            return None;
        }
        spans.retain(|s| s.end > s.start);
        spans.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
        // Sorted by start and disjoint, so the ends are sorted too: `overlapping` relies on it.
        let disjoint = spans
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.end <= b.start));
        disjoint.then_some(Self { spans })
    }

    /// Reads and parses the header of a safetensors file (only the header is read).
    pub fn from_file(path: &Path) -> Option<Self> {
        let (head, total) = read_head(path)?;
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

/// [`TensorMap::parse`], and with `keep_list` the full tensor list too; also answers where
/// the data section starts.
fn parse_header(
    head: &[u8],
    total_len: u64,
    keep_list: bool,
) -> Option<(TensorMap, Option<TensorList>, u64)> {
    let n = u64::from_le_bytes(head.get(..8)?.try_into().ok()?);
    if n == 0 || n > MAX_HEADER {
        return None;
    }
    let data_start = n.checked_add(8)?;
    let header = head.get(8..usize::try_from(data_start).ok()?)?;
    let mut json = serde_json::Deserializer::from_slice(header);
    let Header {
        mut tensors,
        mut empty_at,
        mut name_hashes,
        list,
    } = json.deserialize_map(HeaderVisitor { keep_list }).ok()?;
    json.end().ok()?;

    // Each name once (the crate would keep the last of a repeated name silently).
    name_hashes.sort_unstable();
    if name_hashes
        .windows(2)
        .any(|w| matches!(w, [a, b] if a == b))
    {
        return None;
    }
    // The tensors that hold bytes tile the data from 0, in offset order ...
    tensors.sort_unstable_by_key(|t| (t.start, t.end));
    let mut data_end = 0u64;
    for t in &tensors {
        if t.start != data_end {
            return None; // a gap or an overlap
        }
        data_end = t.end;
    }
    // ... the zero-size ones sit on their borders (as the crate's sorted, contiguous
    // offsets require) ...
    empty_at.sort_unstable();
    empty_at.dedup();
    if !empty_at
        .iter()
        .all(|&at| at == 0 || tensors.binary_search_by_key(&at, |t| t.end).is_ok())
    {
        return None;
    }
    // ... and the data ends where the file does.
    if data_start.checked_add(data_end)? != total_len {
        return None;
    }
    for t in &mut tensors {
        t.start = data_start.checked_add(t.start)?;
        t.end = data_start.checked_add(t.end)?;
    }
    tensors.insert(
        0,
        TensorSpan {
            name: HEADER_NAME.to_string(),
            start: 0,
            end: data_start,
        },
    );
    let list = match list {
        Some(mut list) => {
            for t in &mut list {
                t.start = data_start.checked_add(t.start)?;
                t.end = data_start.checked_add(t.end)?;
            }
            Some(TensorList::new(list)?)
        }
        None => None,
    };
    Some((TensorMap::from_spans(tensors)?, list, data_start))
}

/// The 8-byte length and the header of a safetensors file, and the file's length (only the
/// header is read; `None` past [`MAX_HEADER`] or past the end of the file).
fn read_head(path: &Path) -> Option<(Vec<u8>, u64)> {
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
    Some((head, total))
}

/// What a header holds, as far as naming tensors goes: built entry by entry as the JSON
/// streams past, keeping nothing of a zero-size tensor but its offset and its name's hash.
struct Header {
    /// The tensors that hold bytes, offsets relative to the start of the data, unsorted.
    tensors: Vec<TensorSpan>,
    /// Data offsets of the zero-size tensors.
    empty_at: Vec<u64>,
    /// A keyed hash of every tensor name, to refuse a name given twice.
    name_hashes: Vec<u64>,
    /// Every tensor, offsets relative to the start of the data, unsorted (only when asked).
    list: Option<Vec<TensorInfo>>,
}

struct HeaderVisitor {
    /// Keep every tensor's full description (for [`TensorLayout`]).
    keep_list: bool,
}

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a safetensors header")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let hasher = RandomState::new();
        let mut header = Header {
            tensors: Vec::new(),
            empty_at: Vec::new(),
            name_hashes: Vec::new(),
            list: self.keep_list.then(Vec::new),
        };
        let mut seen_metadata = false;
        while let Some(Key(key)) = map.next_key()? {
            if key == "__metadata__" {
                if seen_metadata {
                    return Err(de::Error::duplicate_field("__metadata__"));
                }
                seen_metadata = true;
                // Free-form strings (or null): checked for shape, not kept.
                map.next_value::<StringMap>()?;
                continue;
            }
            let info: RawInfo = map.next_value()?;
            let (start, end) = info.data_offsets;
            if byte_len(&info) != end.checked_sub(start) {
                return Err(de::Error::custom(
                    "tensor offsets do not match its dtype and shape",
                ));
            }
            let start = u64::try_from(start).map_err(de::Error::custom)?;
            let end = u64::try_from(end).map_err(de::Error::custom)?;
            header.name_hashes.push(hasher.hash_one(key.as_ref()));
            if let Some(list) = &mut header.list {
                list.push(TensorInfo {
                    name: key.to_string(),
                    dtype: info.dtype.to_string(),
                    shape: info
                        .shape
                        .iter()
                        .map(|&d| u64::try_from(d).map_err(de::Error::custom))
                        .collect::<Result<_, _>>()?,
                    start,
                    end,
                });
            }
            if start == end {
                // Holds no bytes, so no bad chunk can be in it: never named.
                header.empty_at.push(start);
                continue;
            }
            // Names come from the file: keep them printable and bounded before they can reach
            // an error message or the audit log.
            let mut name = crate::text::sanitize(&key);
            if name.chars().count() > MAX_NAME_CHARS {
                name = name
                    .chars()
                    .take(MAX_NAME_CHARS)
                    .chain(std::iter::once('…'))
                    .collect();
            }
            header.tensors.push(TensorSpan { name, start, end });
        }
        Ok(header)
    }
}

/// A tensor's length in bytes from its dtype and shape, as the safetensors crate computes it
/// (`None` on overflow or a length that is not a whole number of bytes).
fn byte_len(info: &RawInfo) -> Option<usize> {
    let elements = info
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    let bits = elements.checked_mul(info.dtype.bitsize())?;
    if bits.checked_rem(8)? != 0 {
        return None;
    }
    bits.checked_div(8)
}

/// A map key, borrowed from the header where it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `null` or a map of strings to strings (the header's `__metadata__`), read and dropped.
struct StringMap;

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null or a map of strings")
            }
            fn visit_none<E: de::Error>(self) -> Result<StringMap, E> {
                Ok(StringMap)
            }
            fn visit_unit<E: de::Error>(self) -> Result<StringMap, E> {
                Ok(StringMap)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<StringMap, D::Error> {
                d.deserialize_map(V)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                while map.next_entry::<Key<'de>, Key<'de>>()?.is_some() {}
                Ok(StringMap)
            }
        }
        d.deserialize_option(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::VramError;
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

    /// A safetensors file from a hand-written JSON header and `data_len` data bytes.
    fn raw(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(7u8, data_len));
        bytes
    }

    fn entry(name: &str, len: usize, at: usize) -> String {
        format!(
            r#""{name}":{{"dtype":"U8","shape":[{len}],"data_offsets":[{at},{}]}}"#,
            at + len
        )
    }

    /// A header of 100 000 zero-size tensors, then one 64 KiB tensor "big".
    fn many_empty_then_big() -> String {
        let mut header = String::from("{");
        for i in 0..100_000 {
            header.push_str(&format!(
                r#""z{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}},"#
            ));
        }
        header.push_str(&entry("big", 1 << 16, 0));
        header.push('}');
        header
    }

    fn parse_raw(header: &str, data_len: usize) -> Option<TensorMap> {
        let bytes = raw(header, data_len);
        TensorMap::parse(&bytes, bytes.len() as u64)
    }

    fn names(map: &TensorMap, offset: u64, len: u64) -> Vec<String> {
        map.overlapping(offset, len)
    }

    /// The same answer by brute force, from the spans.
    fn brute(map: &TensorMap, offset: u64, len: u64) -> Vec<String> {
        let end = offset.saturating_add(len);
        map.spans()
            .iter()
            .filter(|s| len > 0 && s.start < end && s.end > offset)
            .map(|s| s.name.clone())
            .collect()
    }

    #[test]
    fn zero_size_tensors_are_never_named() {
        // empties at 0, on the border between a and b, and at the very end; shape [0] and
        // [3, 0] both hold no bytes
        let header = format!(
            "{{{},{},{},{},{},{},{}}}",
            r#""z.start":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}"#,
            entry("a", 10, 0),
            r#""z.mid":{"dtype":"BF16","shape":[3,0],"data_offsets":[10,10]}"#,
            r#""z.mid2":{"dtype":"U8","shape":[0],"data_offsets":[10,10]}"#,
            entry("b", 20, 10),
            r#""z.end":{"dtype":"U8","shape":[0],"data_offsets":[30,30]}"#,
            r#""__metadata__":{"format":"pt"}"#,
        );
        let map = parse_raw(&header, 30).unwrap();
        let d = map.spans()[0].end;
        let all: Vec<&str> = map.spans().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(all, [HEADER_NAME, "a", "b"]);
        for offset in 0..d + 31 {
            for len in [0, 1, 2, 10, 4096] {
                let got = names(&map, offset, len);
                assert!(
                    !got.iter().any(|n| n.starts_with('z')),
                    "{offset} {len}: {got:?}"
                );
                assert_eq!(got, brute(&map, offset, len), "{offset} {len}");
            }
        }
        assert_eq!(names(&map, d - 1, 2), [HEADER_NAME, "a"]);
        assert_eq!(names(&map, d + 9, 2), ["a", "b"]);
        assert_eq!(names(&map, d + 29, 100), ["b"]);

        // Only zero-size tensors: the header is all there is.
        let map = parse_raw(
            r#"{"z":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#,
            0,
        )
        .unwrap();
        assert_eq!(map.spans().len(), 1);
        assert_eq!(names(&map, 0, u64::MAX), [HEADER_NAME]);
    }

    #[test]
    fn many_zero_size_tensors_leave_only_what_holds_bytes() {
        let header = many_empty_then_big();
        let map = parse_raw(&header, 1 << 16).unwrap();
        assert_eq!(map.spans().len(), 2);
        let d = map.spans()[0].end;
        assert_eq!(names(&map, d - 1, 4096), [HEADER_NAME, "big"]);
        assert_eq!(names(&map, d + 100, 4096), ["big"]);
    }

    #[test]
    fn lookups_are_in_offset_order_with_exact_boundaries() {
        // 50 tensors of varied sizes, listed in reverse order in the header
        let mut at = 0;
        let mut entries = Vec::new();
        for i in 0..50usize {
            let len = 1 + (i * 37) % 200;
            entries.push(entry(&format!("t{i:02}"), len, at));
            at += len;
        }
        entries.reverse();
        let header = format!("{{{}}}", entries.join(","));
        let map = parse_raw(&header, at).unwrap();
        let spans = map.spans();
        assert_eq!(spans.len(), 51);
        assert!(spans.windows(2).all(|w| w[0].end == w[1].start));
        let expected: Vec<String> = (0..50).map(|i| format!("t{i:02}")).collect();
        assert_eq!(
            &map.overlapping(spans[1].start, at as u64)[..],
            &expected[..]
        );
        assert_eq!(map.overlapping(0, u64::MAX).len(), 51); // end saturates
        for s in &spans[1..] {
            // a span's first and last byte name it alone; its end is the next one's start
            assert_eq!(names(&map, s.start, 1), std::slice::from_ref(&s.name));
            assert_eq!(names(&map, s.end - 1, 1), std::slice::from_ref(&s.name));
            assert_ne!(names(&map, s.end, 1), std::slice::from_ref(&s.name));
        }
        let total = spans.last().unwrap().end;
        assert!(names(&map, total, 1).is_empty());
        assert!(names(&map, u64::MAX, u64::MAX).is_empty());
        assert!(names(&map, spans[5].start, 0).is_empty());
        // and everything agrees with a brute-force scan
        let mut x = 12345u64;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let offset = (x >> 33) % (total + 10);
            let len = (x >> 13) % 600;
            assert_eq!(names(&map, offset, len), brute(&map, offset, len));
        }
    }

    fn span(name: &str, start: u64, end: u64) -> TensorSpan {
        TensorSpan {
            name: name.into(),
            start,
            end,
        }
    }

    #[test]
    fn crafted_spans_are_normalised_or_refused_never_trusted() {
        // out of order but disjoint: sorted, empties dropped
        let map = TensorMap::from_spans(vec![
            span("c", 20, 30),
            span("e", 25, 25),
            span("a", 0, 10),
            span("b", 10, 20),
            span("e2", 99, 99),
        ])
        .unwrap();
        let all: Vec<&str> = map.spans().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(all, ["a", "b", "c"]);
        assert_eq!(map.overlapping(5, 20), ["a", "b", "c"]);
        // overlapping, nested, repeated, or backwards: no map (and no panic)
        for bad in [
            vec![span("a", 0, 10), span("b", 5, 15)],
            vec![span("a", 0, 100), span("b", 10, 20)],
            vec![span("b", 10, 20), span("a", 0, 100)],
            vec![span("a", 0, 10), span("a", 0, 10)],
            vec![span("a", 10, 0)],
            vec![span("a", 0, u64::MAX), span("b", u64::MAX - 1, u64::MAX)],
        ] {
            assert!(TensorMap::from_spans(bad.clone()).is_none(), "{bad:?}");
        }
        assert_eq!(
            TensorMap::from_spans(Vec::new()),
            Some(TensorMap::default())
        );
        assert!(TensorMap::default().overlapping(0, u64::MAX).is_empty());
    }

    /// Headers an attacker might write: each one is refused (no map, no panic), exactly where
    /// the safetensors crate's own loader refuses it.
    #[test]
    fn crafted_headers_are_refused_as_the_safetensors_crate_refuses_them() {
        let z = |name: &str, at: usize| {
            format!(r#""{name}":{{"dtype":"U8","shape":[0],"data_offsets":[{at},{at}]}}"#)
        };
        let cases: Vec<(String, usize, bool)> = vec![
            // (header, data bytes, valid)
            (
                format!("{{{},{}}}", entry("b", 5, 10), entry("a", 10, 0)),
                15,
                true,
            ),
            (
                format!("{{{},{}}}", entry("a", 10, 0), entry("b", 10, 5)),
                15,
                false,
            ), // overlap
            (
                format!("{{{},{}}}", entry("a", 10, 0), entry("b", 10, 0)),
                10,
                false,
            ), // same range
            (
                format!("{{{},{}}}", entry("a", 10, 0), entry("b", 5, 11)),
                16,
                false,
            ), // gap
            (format!("{{{}}}", entry("a", 10, 3)), 13, false), // not from 0
            (format!("{{{}}}", entry("a", 10, 0)), 11, false), // data too long
            (
                format!("{{{},{}}}", entry("a", 10, 0), z("z", 10)),
                10,
                true,
            ),
            (
                format!("{{{},{}}}", entry("a", 10, 0), z("z", 5)),
                10,
                false,
            ), // inside a
            (
                format!("{{{},{}}}", entry("a", 10, 0), z("z", 11)),
                10,
                false,
            ), // past the end
            (format!("{{{}}}", z("z", 3)), 0, false), // no tensor ends at 3
            (
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}}"#.into(),
                4,
                false,
            ), // backwards
            (
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,4]}}"#.into(),
                4,
                false,
            ), // 4 f32 are 16 bytes
            (
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#.into(),
                1,
                false,
            ), // 12 bits
            (
                r#"{"a":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}"#.into(),
                2,
                true,
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}"#.into(),
                1,
                true,
            ), // a scalar
            (
                r#"{"a":{"dtype":"U64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#
                    .into(),
                0,
                false,
            ), // element count overflows
            (
                format!(
                    r#"{{"a":{{"dtype":"U8","shape":[1],"data_offsets":[{},{}]}}}}"#,
                    u64::MAX - 1,
                    u64::MAX
                ),
                0,
                false,
            ),
            (
                r#"{"a":{"dtype":"U9","shape":[1],"data_offsets":[0,1]}}"#.into(),
                1,
                false,
            ),
            (r#"{"a":{"dtype":"U8","shape":[1]}}"#.into(), 1, false),
            (r#"{"a":null}"#.into(), 0, false),
            (r#"["a"]"#.into(), 0, false),
            (r#"{}"#.into(), 0, true),
            (r#"{"__metadata__":null}"#.into(), 0, true),
            (r#"{"__metadata__":{"a":"b","c":"d"}}"#.into(), 0, true),
            (r#"{"__metadata__":{"a":1}}"#.into(), 0, false),
            (r#"{"__metadata__":"x"}"#.into(), 0, false),
            (
                format!(
                    r#"{{"__metadata__":{{}},"__metadata__":{{}},{}}}"#,
                    entry("a", 1, 0)
                ),
                1,
                false,
            ),
            (format!("{{{}}} trailing", entry("a", 1, 0)), 1, false),
            (format!("{{{}}}    ", entry("a", 1, 0)), 1, true), // space padding is allowed
            (
                format!(r#"{{{},"extra":{{"dtype":"U8"}}}}"#, entry("a", 1, 0)),
                1,
                false,
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":[[[]]]}}"#.into(),
                1,
                true,
            ), // unknown fields are ignored, as the crate ignores them
            ("[".repeat(10_000), 0, false), // too deep: refused, no stack overflow
        ];
        for (header, data_len, valid) in cases {
            let bytes = raw(&header, data_len);
            let ours = TensorMap::parse(&bytes, bytes.len() as u64).is_some();
            let crate_ok = safetensors::SafeTensors::read_metadata(&bytes).is_ok();
            assert_eq!(ours, valid, "{header}");
            assert_eq!(ours, crate_ok, "differs from the crate on {header}");
        }
    }

    #[test]
    fn a_name_given_twice_is_refused() {
        // The crate keeps the last of a repeated name silently; a map built from such a header
        // could name the wrong tensor, so there is none.
        let header = format!("{{{},{}}}", entry("a", 10, 0), entry("a", 10, 0));
        assert!(parse_raw(&header, 10).is_none());
        let header = format!(
            r#"{{{},"z":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}},"\u007a":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}}}"#,
            entry("a", 10, 0)
        );
        assert!(parse_raw(&header, 10).is_none());
    }

    #[test]
    fn the_layout_lists_every_tensor_in_file_order_with_exact_names() {
        let long = "x".repeat(300);
        let long_entry =
            format!(r#""{long}":{{"dtype":"I64","shape":[0,2],"data_offsets":[30,30]}}"#);
        // empties at 0, on a border (two, to order by name) and at the end; names with
        // escapes and past the map's cut are kept exactly in the list
        let header = format!(
            "{{{},{},{},{},{},{},{},{}}}",
            r#""z.end":{"dtype":"U8","shape":[0],"data_offsets":[30,30]}"#,
            entry("b", 20, 10),
            r#""z.mid2":{"dtype":"U8","shape":[0],"data_offsets":[10,10]}"#,
            r#""z.mid":{"dtype":"BF16","shape":[3,0],"data_offsets":[10,10]}"#,
            entry(r"a\nb", 8, 0),
            r#""s":{"dtype":"F16","shape":[],"data_offsets":[8,10]}"#,
            r#""z.start":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}"#,
            long_entry,
        );
        let bytes = raw(&header, 30);
        let layout = TensorLayout::parse(&bytes, bytes.len() as u64).unwrap();
        let d = layout.data_start;
        assert_eq!(d, 8 + header.len() as u64);
        assert_eq!(
            layout.map,
            TensorMap::parse(&bytes, bytes.len() as u64).unwrap()
        );
        let list = layout.tensors.as_slice();
        let order: Vec<(&str, u64, u64)> = list
            .iter()
            .map(|t| (t.name.as_str(), t.start - d, t.end - d))
            .collect();
        assert_eq!(
            order,
            [
                ("z.start", 0, 0),
                ("a\nb", 0, 8),
                ("s", 8, 10),
                ("z.mid", 10, 10),
                ("z.mid2", 10, 10),
                ("b", 10, 30),
                (long.as_str(), 30, 30),
                ("z.end", 30, 30),
            ]
        );
        let s = layout.tensors.get("s").unwrap();
        assert_eq!((s.dtype.as_str(), s.shape.as_slice()), ("F16", &[][..]));
        let z = layout.tensors.get("z.mid").unwrap();
        assert_eq!(
            (z.dtype.as_str(), z.shape.as_slice(), z.len()),
            ("BF16", &[3, 0][..], 0)
        );
        assert!(z.is_empty());
        assert_eq!(layout.tensors.get(&long).unwrap().shape, [0, 2]);
        assert_eq!(layout.tensors.get("a\nb").unwrap().len(), 8);
        for t in list {
            assert_eq!(layout.tensors.get(&t.name), Some(t));
        }
        for missing in ["", "a", "zz", "__metadata__", "a\u{FFFD}b"] {
            assert!(layout.tensors.get(missing).is_none(), "{missing}");
        }
        // Whatever the map refuses, the layout refuses too.
        let twice = format!("{{{},{}}}", entry("a", 10, 0), entry("a", 10, 0));
        let bytes = raw(&twice, 10);
        assert!(TensorLayout::parse(&bytes, bytes.len() as u64).is_none());
        let gap = format!("{{{},{}}}", entry("a", 10, 0), entry("b", 5, 11));
        let bytes = raw(&gap, 16);
        assert!(TensorLayout::parse(&bytes, bytes.len() as u64).is_none());
    }

    #[test]
    fn the_header_digest_covers_exactly_the_bytes_parsed() {
        let header = format!("{{{},{}}}", entry("a", 10, 0), entry("b", 6, 10));
        let bytes = raw(&header, 16);
        let layout = TensorLayout::parse(&bytes, bytes.len() as u64).unwrap();
        let d = usize::try_from(layout.data_start).unwrap();
        assert_eq!(layout.header.len, layout.data_start);
        assert_eq!(layout.header, HeaderDigest::of(&bytes[..d]));
        assert!(layout.header.matches(&bytes[..d]));
        // the data is not the header's: other tensor bytes match
        let mut data_changed = bytes.clone();
        data_changed[d + 3] ^= 0xff;
        assert!(layout.header.matches(&data_changed[..d]));
        // a header of the same length that names other tensors does not, nor a cut or a
        // longer prefix
        let renamed = raw(&header.replace("\"a\"", "\"x\""), 16);
        assert_eq!(renamed.len(), bytes.len());
        assert!(TensorLayout::parse(&renamed, renamed.len() as u64).is_some());
        assert!(!layout.header.matches(&renamed[..d]));
        assert!(!layout.header.matches(&bytes[..d - 1]));
        assert!(!layout.header.matches(&bytes[..d + 1]));
        // and the error says what happened
        let e = HeaderDigest::changed();
        assert!(
            matches!(&e, VramError::Io { kind, .. } if *kind == std::io::ErrorKind::InvalidData),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("changed while it was being sealed"),
            "{e}"
        );
    }

    #[test]
    fn the_lead_padding_aligns_the_data_section() {
        for (data_start, lead) in [
            (8, 248),
            (255, 1),
            (256, 0),
            (672, 96),
            (1024, 0),
            (1025, 255),
        ] {
            let layout = TensorLayout {
                map: TensorMap::default(),
                tensors: TensorList::default(),
                data_start,
                header: HeaderDigest::of(&[]),
            };
            assert_eq!(layout.lead_padding(), lead, "{data_start}");
            assert_eq!((data_start + lead) % DATA_ALIGN, 0);
        }
    }

    #[test]
    fn many_zero_size_tensors_are_all_listed() {
        let header = many_empty_then_big();
        let bytes = raw(&header, 1 << 16);
        let layout = TensorLayout::parse(&bytes, bytes.len() as u64).unwrap();
        assert_eq!(layout.map.spans().len(), 2);
        let list = layout.tensors.as_slice();
        assert_eq!(list.len(), 100_001);
        assert_eq!(list.last().unwrap().name, "big");
        assert!(list.iter().take(100_000).all(|t| t.is_empty()));
        assert_eq!(
            layout.tensors.get("z99999").unwrap().start,
            layout.data_start
        );
    }

    #[test]
    fn names_are_made_printable_and_bounded() {
        let long = "x".repeat(300);
        let header = format!(
            r#"{{{},{},{}}}"#,
            entry(r"a\nb", 1, 0),
            entry(r"\u00e9t\u00e9", 1, 1),
            entry(&long, 1, 2)
        );
        let map = parse_raw(&header, 3).unwrap();
        let all: Vec<&str> = map.spans().iter().map(|s| s.name.as_str()).collect();
        let cut = format!("{}…", "x".repeat(256));
        assert_eq!(all, [HEADER_NAME, "a\u{FFFD}b", "été", cut.as_str()]);
    }
}
