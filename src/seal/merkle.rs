//! The RFC 6962 Merkle tree over fixed-size chunks of a shard.
//!
//! A shard of `len` bytes is cut into `ceil(len / chunk_size)` leaves (the last one may be
//! short). Leaf hash = SHA-256(0x00 ‖ chunk), node hash = SHA-256(0x01 ‖ left ‖ right), and a
//! list of `n > 1` leaves splits at the largest power of two smaller than `n`. Because leaves are
//! independent they hash in parallel ([`leaf_hashes_parallel`]); the root is then a few
//! microseconds of work over 32-byte values. The tree keeps its leaf list so a verification can
//! name the first bad chunk and a sampled verification can check a few leaves on their own.

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// Hash of one leaf: SHA-256(0x00 ‖ chunk).
pub fn leaf_hash(chunk: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(chunk);
    h.finalize().into()
}

/// Hash of an inner node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// RFC 6962 Merkle Tree Hash of a leaf-hash list. The empty list hashes to SHA-256("").
pub fn root_from_leaves(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => Sha256::digest([]).into(),
        [one] => *one,
        _ => {
            let k = split_point(leaves.len());
            match leaves.split_at_checked(k) {
                Some((l, r)) => node_hash(&root_from_leaves(l), &root_from_leaves(r)),
                None => Sha256::digest([]).into(), // unreachable: 0 < k < len
            }
        }
    }
}

/// Largest power of two strictly smaller than `n` (for `n >= 2`).
fn split_point(n: usize) -> usize {
    // For n in (2^j, 2^(j+1)] the next power of two is 2^(j+1) and the split is 2^j.
    n.next_power_of_two() / 2
}

/// Number of leaves for `len` bytes at `chunk_size` (at least 1 for a non-empty shard).
pub fn leaf_count(len: u64, chunk_size: u64) -> u64 {
    if chunk_size == 0 {
        return 0;
    }
    len.div_ceil(chunk_size)
}

/// Byte range `(offset, length)` of leaf `index`, or `None` if the index is past the end.
pub fn chunk_range(index: u64, chunk_size: u64, len: u64) -> Option<(u64, u64)> {
    let start = index.checked_mul(chunk_size)?;
    if start >= len {
        return None;
    }
    let end = start.saturating_add(chunk_size).min(len);
    Some((start, end.saturating_sub(start)))
}

/// Leaf hashes of `data`, one thread.
pub fn leaf_hashes_sequential(data: &[u8], chunk_size: usize) -> Vec<Hash> {
    if chunk_size == 0 {
        return Vec::new();
    }
    data.chunks(chunk_size).map(leaf_hash).collect()
}

/// Leaf hashes of `data`, spread over the rayon pool.
pub fn leaf_hashes_parallel(data: &[u8], chunk_size: usize) -> Vec<Hash> {
    if chunk_size == 0 {
        return Vec::new();
    }
    data.par_chunks(chunk_size).map(leaf_hash).collect()
}

/// A Merkle tree kept as its leaf list plus root.
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleTree {
    leaves: Vec<Hash>,
    root: Hash,
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("leaves", &self.leaves.len())
            .field("root", &hex::encode(self.root))
            .finish()
    }
}

impl MerkleTree {
    /// Builds the tree from leaf hashes.
    pub fn from_leaves(leaves: Vec<Hash>) -> Self {
        let root = root_from_leaves(&leaves);
        Self { leaves, root }
    }

    /// Builds the tree over `data`, hashing leaves in parallel.
    pub fn build(data: &[u8], chunk_size: usize) -> Self {
        Self::from_leaves(leaf_hashes_parallel(data, chunk_size))
    }

    /// The root.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// Whether the leaf list still hashes to `root` (constant-time compare of the root).
    pub fn leaves_match_root(&self, root: &Hash) -> bool {
        root_from_leaves(&self.leaves).ct_eq(root).into()
    }

    /// Indices at which `observed` differs from this tree's leaves (a length difference counts
    /// every missing or extra index as bad).
    pub fn mismatched_leaves(&self, observed: &[Hash]) -> Vec<u64> {
        let n = self.leaves.len().max(observed.len());
        (0..n)
            .filter(|&i| match (self.leaves.get(i), observed.get(i)) {
                (Some(a), Some(b)) => !bool::from(a.ct_eq(b)),
                _ => true,
            })
            .map(|i| i as u64)
            .collect()
    }

    /// Whether leaf `index` equals `observed`.
    pub fn leaf_matches(&self, index: u64, observed: &Hash) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.leaves.get(i))
            .is_some_and(|l| bool::from(l.ct_eq(observed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight transcription of RFC 6962 §2.1, recursing on the bytes.
    fn mth(chunks: &[&[u8]]) -> Hash {
        match chunks.len() {
            0 => Sha256::digest([]).into(),
            1 => leaf_hash(chunks[0]),
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&mth(&chunks[..k]), &mth(&chunks[k..]))
            }
        }
    }

    #[test]
    fn matches_rfc_definition_for_many_leaf_counts() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in [1usize, 100, 4096, 4097, 8192, 12_288, 20_000, 40_000] {
            let d = &data[..len];
            let chunks: Vec<&[u8]> = d.chunks(4096).collect();
            assert_eq!(
                MerkleTree::build(d, 4096).root(),
                &mth(&chunks),
                "len {len}"
            );
        }
    }

    #[test]
    fn split_points() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
    }

    #[test]
    fn ranges_and_counts() {
        assert_eq!(leaf_count(5197, 1024), 6);
        assert_eq!(chunk_range(5, 1024, 5197), Some((5120, 77)));
        assert_eq!(chunk_range(6, 1024, 5197), None);
        assert_eq!(leaf_count(4096, 4096), 1);
    }

    #[test]
    fn mismatch_localisation() {
        let data = vec![7u8; 10 * 4096];
        let t = MerkleTree::build(&data, 4096);
        let mut bad = data.clone();
        bad[3 * 4096 + 17] ^= 1;
        bad[7 * 4096] ^= 0x80;
        let obs = leaf_hashes_sequential(&bad, 4096);
        assert_eq!(t.mismatched_leaves(&obs), vec![3, 7]);
        assert!(t.leaves_match_root(t.root()));
        assert!(!t.leaf_matches(3, &obs[3]));
        assert!(t.leaf_matches(2, &obs[2]));
    }
}
