//! The hashing a `GpuActor` hands off so its mailbox keeps moving.
//!
//! * Seal: a blocking thread turns the source (in-memory bytes, a file, any `Read`) into
//!   staging pieces of whole chunks, hashes each piece — the plain SHA-256 stream and the piece's
//!   Merkle leaves side by side on the rayon pool — after passing it over a small channel to the
//!   actor, which uploads it. The upload of piece k overlaps its hashing, and at most a few
//!   staging buffers exist at once, so host memory stays O(staging) whatever the model size.
//! * Verify: [`hash_leaves`] re-hashes all leaves (`Full`) or a CSPRNG sample of them
//!   (`Sampled`) through a [`DeviceReader`] on the blocking pool, a staging piece of leaves at a
//!   time; the actor compares the result when it comes back as `GpuMsg::VerifyFinished`.
//!
//! Both look at the request's [`Cancel`] flag before every piece, so work whose caller gave up
//! stops at the next piece boundary. A verification cut short still hands back the leaves it
//! hashed, to be judged: what it already read is evidence, and a bad leaf among it fails the
//! shard closed.

use std::io::Read;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::VramError;
use crate::gpu::{BackendError, DeviceReader};
use crate::messages::gpu::{Cancel, LeafCheck, Staged, free_elsewhere};
use crate::seal::merkle::{Hash, MerkleTree, leaf_hashes_parallel};
use crate::types::ProgressFn;

/// `k` distinct chunk indices out of `n`, from the thread's CSPRNG (ChaCha, OS-seeded).
pub(crate) fn sample_indices(n: u64, k: u64) -> Vec<u64> {
    let (Ok(n), Ok(k)) = (usize::try_from(n), usize::try_from(k)) else {
        return Vec::new();
    };
    let mut rng = rand::thread_rng();
    rand::seq::index::sample(&mut rng, n, k.min(n))
        .into_iter()
        .map(|i| i as u64)
        .collect()
}

/// Hashes the chunks of one verification (runs on the blocking pool), `piece_leaves` leaves at a
/// time: between pieces it looks at `cancel`, so a verification whose caller gave up stops at
/// the next piece boundary. What it hashed until then is not thrown away: the check comes back
/// marked [`LeafCheck::cancelled`] with the leaves hashed so far, and [`verdict`] judges them
/// (a bad one fails the shard closed like a finished check would). A backend that hashes every
/// leaf on the device in one launch (CUDA with the leaf kernel) is asked for all of them at
/// once: a launch cannot be stopped half way.
///
/// [`verdict`]: super::verify::verdict
pub(crate) fn hash_leaves(
    reader: &dyn DeviceReader,
    chunk: u64,
    indices: Option<Vec<u64>>,
    tree: &MerkleTree,
    root: &Hash,
    piece_leaves: usize,
    cancel: &Cancel,
) -> Result<LeafCheck, BackendError> {
    // Rechecking the sealed leaf list against the signed root is O(leaves): a full verify does
    // it every time; a sampled verify, whose cost must not grow with the shard, relies on the
    // list held (immutably) in host memory since the seal, where the root was computed from it.
    let leaves_match_root = indices.is_some() || tree.leaves_match_root(root);
    match indices {
        None => {
            let (observed, asked, cancelled) = if reader.hashes_on_device(chunk) {
                let all = reader.all_leaf_hashes(chunk)?;
                let n = all.len();
                (all, n, false)
            } else {
                let n = crate::seal::merkle::leaf_count(reader.len(), chunk);
                let all: Vec<u64> = (0..n).collect();
                let h = leaf_hashes_in_pieces(reader, chunk, &all, piece_leaves, cancel)?;
                (h.observed, h.asked, h.cancelled)
            };
            // A check cut short has no root to recompute: only its leaves are judged.
            let observed_root =
                (!cancelled).then(|| crate::seal::merkle::root_from_leaves(&observed));
            let asked = if cancelled { asked } else { observed.len() };
            Ok(LeafCheck {
                indices: (0..asked as u64).collect(),
                observed,
                leaves_match_root,
                observed_root,
                cancelled,
            })
        }
        Some(mut indices) => {
            let h = leaf_hashes_in_pieces(reader, chunk, &indices, piece_leaves, cancel)?;
            indices.truncate(h.asked);
            Ok(LeafCheck {
                indices,
                observed: h.observed,
                leaves_match_root,
                observed_root: None,
                cancelled: h.cancelled,
            })
        }
    }
}

/// What [`leaf_hashes_in_pieces`] read.
struct Hashed {
    /// The hashes the backend returned, piece after piece.
    observed: Vec<Hash>,
    /// How many of the indices were asked for (the whole pieces read), from the first.
    asked: usize,
    /// It stopped before the last piece because `cancel` was set.
    cancelled: bool,
}

/// [`DeviceReader::leaf_hashes`] of `indices`, `piece_leaves` at a time, stopping between
/// pieces once `cancel` is set (and keeping what the pieces before returned).
fn leaf_hashes_in_pieces(
    reader: &dyn DeviceReader,
    chunk: u64,
    indices: &[u64],
    piece_leaves: usize,
    cancel: &Cancel,
) -> Result<Hashed, BackendError> {
    let mut observed = Vec::with_capacity(indices.len());
    let mut asked = 0usize;
    for piece in indices.chunks(piece_leaves.max(1)) {
        if cancel.is_cancelled() {
            return Ok(Hashed {
                observed,
                asked,
                cancelled: true,
            });
        }
        observed.extend(reader.leaf_hashes(chunk, piece)?);
        asked = asked.saturating_add(piece.len());
    }
    Ok(Hashed {
        observed,
        asked,
        cancelled: false,
    })
}

/// Hashes one staging piece: the plain SHA-256 stream on one worker while the piece's Merkle
/// leaves are spread over the other workers of the rayon pool.
fn hash_piece(sha: &mut Sha256, leaves: &mut Vec<Hash>, piece: &[u8], chunk: usize) {
    let (_, piece_leaves) =
        rayon::join(|| sha.update(piece), || leaf_hashes_parallel(piece, chunk));
    leaves.extend(piece_leaves);
}

/// In-memory bytes: hash piece by piece and hand each piece (no copy) to the uploader.
pub(crate) fn hash_in_memory(
    bytes: Vec<u8>,
    chunk: usize,
    staging: usize,
    tx: &mpsc::Sender<Staged>,
    progress: Option<&ProgressFn>,
    cancel: &Cancel,
) -> Result<(Hash, Vec<Hash>), VramError> {
    let total = bytes.len();
    let buf = Arc::new(bytes);
    let mut sha = Sha256::new();
    let mut leaves = Vec::new();
    let mut start = 0usize;
    while start < total {
        if cancel.is_cancelled() {
            return Err(VramError::Cancelled);
        }
        let end = start.saturating_add(staging).min(total);
        // Hand the piece to the uploader first, so its upload overlaps its hashing.
        tx.blocking_send(Staged {
            buf: Some(Arc::clone(&buf)),
            range: start..end,
            recycle: None,
        })
        .map_err(|_| VramError::ShuttingDown)?;
        hash_piece(
            &mut sha,
            &mut leaves,
            buf.get(start..end).unwrap_or_default(),
            chunk,
        );
        if let Some(p) = progress {
            p(end as u64, total as u64);
        }
        start = end;
    }
    // If the uploader already dropped its pieces, this is the last reference.
    if let Ok(bytes) = Arc::try_unwrap(buf) {
        free_elsewhere(bytes);
    }
    Ok((sha.finalize().into(), leaves))
}

/// A stream (file or any `Read`): read a staging buffer, hash it, hand it to the uploader. At
/// most four staging buffers exist at once (one filling, two queued, one uploading), so host
/// memory stays O(staging) whatever the model size.
pub(crate) fn hash_stream(
    mut stream: Box<dyn Read + Send>,
    expected_len: u64,
    chunk: usize,
    staging: usize,
    tx: &mpsc::Sender<Staged>,
    progress: Option<&ProgressFn>,
    cancel: &Cancel,
) -> Result<(Hash, Vec<Hash>), VramError> {
    let mut sha = Sha256::new();
    let mut leaves = Vec::new();
    let mut done = 0u64;
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    loop {
        if cancel.is_cancelled() {
            return Err(VramError::Cancelled);
        }
        // Reuse a buffer the uploader has finished with; allocate only while the pipeline fills.
        let mut buf = recycle_rx.try_recv().unwrap_or_default();
        buf.resize(staging, 0);
        let mut filled = 0usize;
        while filled < staging {
            let Some(rest) = buf.get_mut(filled..) else {
                break;
            };
            match stream.read(rest) {
                Ok(0) => break,
                Ok(n) => filled = filled.saturating_add(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        done = done.saturating_add(filled as u64);
        if done > expected_len {
            return Err(VramError::io(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the source is longer than the {expected_len} bytes it declared (did the file grow while sealing?)"
                ),
            ));
        }
        // Hand the piece to the uploader first, so its upload overlaps its hashing.
        let buf = Arc::new(buf);
        tx.blocking_send(Staged {
            buf: Some(Arc::clone(&buf)),
            range: 0..filled,
            recycle: Some(recycle_tx.clone()),
        })
        .map_err(|_| VramError::ShuttingDown)?;
        hash_piece(&mut sha, &mut leaves, &buf, chunk);
        // Give our reference up now, so the uploader's drop can recycle the buffer.
        drop(buf);
        if let Some(p) = progress {
            p(done, expected_len);
        }
        if filled < staging {
            break;
        }
    }
    Ok((sha.finalize().into(), leaves))
}
