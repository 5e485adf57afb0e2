//! A seal's check that a safetensors shard's tensor list describes the bytes it sealed.
//!
//! The tensor list a seal hands back (and the map the device keeps to name bad chunks) is
//! parsed from the source's header before the seal starts; the hashing thread reads the source
//! again. A file replaced in between (same length, another header) would be sealed with a list
//! of other tensors — even with `expected_sha256` or provenance set, which check the bytes, not
//! the list — and `ShardLease::tensor` would serve the wrong bytes by name. So before a shard is
//! signed, its first `data_start` bytes are read back from the device and must hash to the
//! header that was parsed ([`HeaderDigest`]); a seal whose bytes do not fails
//! (`VramError::Io` with kind `InvalidData`), is freed and audited like any failed seal.
//!
//! Reading back from the device, not checking in the hashing thread, checks what is actually
//! served: on CUDA with the leaf kernel the device's copy has just been re-hashed against the
//! host's leaves; on the simulated device it is the bytes that were hashed. The header is small
//! next to the shard (at most 100 MB, usually kilobytes): one copy back and one SHA-256, off the
//! actor. A source with no header parsed (a `from_reader` stream, bytes that did not parse as
//! safetensors) has no tensor list to protect and nothing to check.

use super::GpuState;
use crate::error::VramError;
use crate::gpu::AllocationId;
use crate::messages::gpu::SealMeta;
use crate::seal::tensors::HeaderDigest;

impl GpuState {
    /// Checks that the sealed bytes in `allocation` start with the header `meta`'s tensor list
    /// was parsed from (nothing to check without one).
    pub(super) async fn check_header(
        &mut self,
        meta: &SealMeta,
        allocation: AllocationId,
    ) -> Result<(), VramError> {
        let Some(header) = meta.header else {
            return Ok(());
        };
        let reader = self.backend.reader(allocation).map_err(|e| self.map(e))?;
        let n = match usize::try_from(header.len) {
            Ok(n) if header.len <= reader.len() => n,
            _ => return Err(HeaderDigest::changed()),
        };
        let job = crate::actors::spans::spawn_blocking(move || {
            let mut head = vec![0u8; n];
            reader.read(0, &mut head).map(|()| header.matches(&head))
        })
        .await;
        let same = super::joined(self.device(), "the seal's header check", job, || {
            VramError::Internal("the seal's header check was cancelled".into())
        })?
        .map_err(|e| self.map(e))?;
        if same {
            Ok(())
        } else {
            Err(HeaderDigest::changed())
        }
    }
}
