//! What callers may do with a resident shard besides verifying it: ask whether exactly that
//! record is resident (signature-only verification, a peer's `ShardInfo`), have an attestation
//! signed for it, and run a closure against its device memory (`execute`).
//!
//! An attestation is signed here, not by the handle: the residency check and the request to the
//! seal keeper happen in one handler, so no scrub result, fault or release on this device can
//! quarantine or free the shard between them.
//!
//! `execute` runs the closure on this actor, in mailbox order, so no release, fault or seal on
//! the device can interleave with it; a panic in the caller's closure is caught and reported
//! without taking the device down.

use std::sync::Arc;

use super::GpuState;
use super::verify::quarantined;
use crate::actors::ask;
use crate::attestation::{ATTEST_FORMAT, Attestation, StatementFields, device_id, statement};
use crate::audit::events::AuditEvent;
use crate::error::VramError;
use crate::gpu::DeviceView;
use crate::messages::gpu::{AttestDraft, LeaseGrant, ResidencyQuery, ShardRef};
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::seal::claims::ShardInfo;

impl GpuState {
    pub(super) fn residency(&self, query: ResidencyQuery) -> Result<(), VramError> {
        self.live()?;
        let (entry, info) = match &query {
            ResidencyQuery::Handle(r, info) => (self.table.get(r)?, info),
            ResidencyQuery::Info(info) => (
                self.table
                    .by_id(&info.shard_id)
                    .ok_or_else(|| VramError::UnknownShard(info.shard_id.clone()))?,
                info,
            ),
        };
        if entry.info != **info {
            return Err(VramError::UnknownShard(info.shard_id.clone()));
        }
        if let Some(bad) = &entry.quarantine {
            return Err(quarantined(&info.shard_id, bad));
        }
        Ok(())
    }

    /// Checks that the shard is still resident, exactly as sealed, not quarantined, on a device
    /// accepting work, then has the statement signed, all before this handler returns.
    pub(super) async fn attest(
        &mut self,
        shard: ShardRef,
        info: Box<ShardInfo>,
        draft: AttestDraft,
    ) -> Result<Attestation, VramError> {
        self.accepting_work()?;
        self.residency(ResidencyQuery::Handle(shard, info.clone()))?;
        let backend = self.identity.backend.to_string();
        let device = device_id(&self.identity);
        let verified_mode = draft.verified_mode.to_string();
        let stmt = statement(&StatementFields {
            nonce: &draft.nonce,
            shard: &info,
            verified_mode: &verified_mode,
            verified_at_unix_nanos: draft.verified_at_unix_nanos,
            backend: &backend,
            device_id: &device,
            audit_head: &draft.audit_head,
        })?;
        let signature = ask(
            &self.args.seal_keeper,
            |reply| SealKeeperMsg::Attest {
                statement: stmt,
                reply,
            },
            self.args.settings.call_timeout,
            "the seal keeper",
            || VramError::ShuttingDown,
        )
        .await?;
        self.audit(AuditEvent::AttestationIssued {
            shard_id: info.shard_id.clone(),
            gpu_device: self.device(),
            nonce_sha256: crate::seal::sha256_hex(&draft.nonce),
        });
        Ok(Attestation {
            format: ATTEST_FORMAT.to_string(),
            nonce: hex::encode(&draft.nonce),
            shard: *info,
            verified_mode,
            verified_at_unix_nanos: draft.verified_at_unix_nanos,
            backend,
            device_id: device,
            audit_head: draft.audit_head,
            signature,
        })
    }

    /// A view of the shard's memory for a lease, with the shard's lease marker. The view's
    /// reader keeps the memory alive, so a release while the lease lives frees nothing under
    /// it; the marker keeps the bytes counted as used until the last lease drops.
    pub(super) fn lease(&mut self, shard: &ShardRef) -> Result<LeaseGrant, VramError> {
        // The shard's own finding first: a quarantined shard is refused with what was found in
        // it (bad chunks, tensor names), not with the device stop that finding caused.
        if let Some(bad) = &self.table.get(shard)?.quarantine {
            return Err(quarantined(&shard.shard_id, bad));
        }
        self.accepting_work()?;
        let entry = self.table.get(shard)?;
        let (allocation, len) = (entry.allocation, entry.info.vram_bytes);
        let marker = Arc::clone(&entry.lease_marker);
        let address = self.backend.device_address(allocation);
        let reader = self.backend.reader(allocation);
        let (address, reader) = match (address, reader) {
            (Ok(p), Ok(r)) => (p, r),
            (Err(e), _) | (_, Err(e)) => return Err(self.map(e)),
        };
        let view = DeviceView {
            gpu_device: self.device(),
            shard_id: shard.shard_id.clone(),
            len,
            address,
            reader,
        };
        Ok(LeaseGrant { view, marker })
    }
}
