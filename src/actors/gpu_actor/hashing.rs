//! The hashing a `GpuActor` hands off so its mailbox keeps moving.
//!
//! * Seal: a blocking thread turns the source (in-memory bytes, a file, any `Read`) into
//!   staging pieces of whole chunks, hashes each piece — the plain SHA-256 stream and the piece's
//!   Merkle leaves side by side on the rayon pool — after passing it over a small channel to the
//!   actor, which uploads it. The upload of piece k overlaps its hashing, and at most a few
//!   staging buffers exist at once, so host memory stays O(staging) whatever the model size.
//! * Verify: [`hash_leaves`] re-hashes all leaves (`Full`) or a CSPRNG sample of them
//!   (`Sampled`) through a [`DeviceReader`] on the blocking pool; the actor compares the result
//!   when it comes back as `GpuMsg::VerifyFinished`.

use std::io::Read;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::VramError;
use crate::gpu::{BackendError, DeviceReader};
use crate::messages::gpu::LeafCheck;
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

/// Hashes the chunks of one verification (runs on the blocking pool).
pub(crate) fn hash_leaves(
    reader: &dyn DeviceReader,
    chunk: u64,
    indices: Option<Vec<u64>>,
    tree: &MerkleTree,
    root: &Hash,
) -> Result<LeafCheck, BackendError> {
    // Rechecking the sealed leaf list against the signed root is O(leaves): a full verify does
    // it every time; a sampled verify, whose cost must not grow with the shard, relies on the
    // list held (immutably) in host memory since the seal, where the root was computed from it.
    let leaves_match_root = indices.is_some() || tree.leaves_match_root(root);
    match indices {
        None => {
            let observed = reader.all_leaf_hashes(chunk)?;
            let observed_root = crate::seal::merkle::root_from_leaves(&observed);
            Ok(LeafCheck {
                indices: (0..observed.len() as u64).collect(),
                observed,
                leaves_match_root,
                observed_root: Some(observed_root),
            })
        }
        Some(indices) => {
            let observed = if indices.is_empty() {
                Vec::new()
            } else {
                reader.leaf_hashes(chunk, &indices)?
            };
            Ok(LeafCheck {
                indices,
                observed,
                leaves_match_root,
                observed_root: None,
            })
        }
    }
}

/// One staging piece on its way from the hasher to the uploader: a range of a shared buffer
/// (the caller's whole `Vec` for in-memory seals, one read buffer for streams).
///
/// Fresh host memory is expensive to touch (every page faults on first write) and to give back,
/// so buffers are not thrown away: when the uploader drops the last reference to a stream's
/// buffer it goes back to the reader for the next piece, and a large in-memory source is freed
/// on a background thread rather than on the seal's critical path.
pub(crate) struct Staged {
    buf: Option<Arc<Vec<u8>>>,
    range: std::ops::Range<usize>,
    recycle: Option<std::sync::mpsc::Sender<Vec<u8>>>,
}

impl Staged {
    pub(crate) fn bytes(&self) -> &[u8] {
        self.buf
            .as_ref()
            .and_then(|b| b.get(self.range.clone()))
            .unwrap_or_default()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        let Ok(bytes) = Arc::try_unwrap(buf) else {
            return; // someone else still holds it and will do this
        };
        match &self.recycle {
            // If the reader has finished, the buffer comes back to us and is freed here.
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(bytes)) = tx.send(bytes) {
                    free_elsewhere(bytes);
                }
            }
            None => free_elsewhere(bytes),
        }
    }
}

/// Frees a large buffer on a short-lived background thread: unmapping hundreds of MiB takes
/// tens of milliseconds that a seal should not wait for.
fn free_elsewhere(bytes: Vec<u8>) {
    if bytes.capacity() >= 1 << 20 {
        let _ = std::thread::Builder::new()
            .name("vram-free".into())
            .spawn(move || drop(bytes));
    }
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
) -> Result<(Hash, Vec<Hash>), VramError> {
    let total = bytes.len();
    let buf = Arc::new(bytes);
    let mut sha = Sha256::new();
    let mut leaves = Vec::new();
    let mut start = 0usize;
    while start < total {
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
) -> Result<(Hash, Vec<Hash>), VramError> {
    let mut sha = Sha256::new();
    let mut leaves = Vec::new();
    let mut done = 0u64;
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    loop {
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
