//! # vram-residency
//!
//! Keeps model weights *sealed* in GPU memory. A shard is copied into device memory, hashed
//! (SHA-256 plus a chunked RFC 6962 Merkle tree) and sealed with an HMAC over its claims; from
//! then on the crate can prove — fully, by sampling, or by signature — that what sits in device
//! memory is still exactly what was loaded, refuses to execute from weights that changed,
//! attests residency to a challenger, and records every step in an HMAC-chained audit log.
//!
//! ```no_run
//! use vram_residency::{Config, SealRequest, VerifyMode, VramResidency};
//! # async fn demo() -> Result<(), vram_residency::VramError> {
//! let system = VramResidency::start(
//!     Config::simulated(2, 512 << 20)
//!         .worker_id("worker-1")
//!         .worker_token("at-least-16-bytes-of-token"),
//! )
//! .await?;
//! let shard = system
//!     .seal(SealRequest::new("llama-7b-q4", "hf:org/model@rev", 0, vec![7u8; 4 << 20]))
//!     .await?;
//! system.verify(&shard, VerifyMode::Full).await?;
//! let len = system.execute(&shard, |view| view.len()).await?;
//! system.release(shard).await?;
//! system.shutdown().await?;
//! # let _ = len; Ok(()) }
//! ```
//!
//! Architecture: one `GpuActor` per device owns the backend and the shard table; the
//! `SealKeeper` holds the seal key; the `AuditActor` batches the chained log; a supervisor starts
//! them linked and stops them in order. See `.specs/design.md` and the other pages in `.specs/`.

// Lints live in Cargo.toml's `[lints]`; unit tests may do arithmetic freely.
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

mod actors;
pub mod attestation;
pub mod audit;
#[cfg(feature = "bench")]
pub mod bench;
pub mod config;
pub mod error;
pub mod gpu;
mod messages;
pub mod provenance;
pub mod seal;
pub mod shard;
mod system;
pub mod telemetry;
pub mod tensor_parallel;
pub mod text;
mod types;
pub mod validation;

pub use attestation::signed::{
    SignedAttestation, SignedAuditHead, verify_signed_attestation, verify_signed_audit_head,
    verify_signed_group_attestation,
};
pub use attestation::{
    Attestation, AttestationPolicy, GroupAttestation, ResidencyClaims, verify_attestation,
    verify_attestation_with, verify_group_attestation, verify_group_attestation_with,
};
pub use audit::events::AuditEvent;
pub use config::Config;
pub use error::{IoSource, VramError};
pub use gpu::{BackendKind, DeviceIdentity, DevicePtr};
pub use messages::audit::AuditStats;
pub use provenance::{ModelSignature, Provenance, SignedResource};
pub use seal::claims::ShardInfo;
pub use seal::group_record::GroupInfo;
pub use seal::keys::WorkerToken;
pub use seal::tensors::TensorInfo;
pub use shard::{
    ChunkSpan, DeviceView, Fault, SealRequest, SealedShard, VerifyMode, VerifyReport, VramCapacity,
    detection_probability,
};
pub use system::{ShardLease, TensorView, VramResidency};
pub use tensor_parallel::{GroupRequest, SealedGroup};
pub use types::{AuditHead, DeviceLoad, DeviceStatus, StopCause};
