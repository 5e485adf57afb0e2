//! `VramResidency`: the public, cheaply cloneable handle to a running system.
//!
//! Every method validates its input here, before any message is sent (so a rejected request
//! changes nothing), then talks to the right actor. The handle holds no lock and no state that
//! an actor also holds: device actors are found through the [`DeviceDirectory`], which the
//! supervisor updates when it restarts one. Tensor-parallel groups (`seal_group` and friends)
//! are in [`group`].

mod admission;
mod checks;
mod release;
mod sealing;
mod signed;
mod startup;
mod status;

pub use lease::{ShardLease, TensorView};
pub(crate) mod lease;
mod tensor_parallel;

use admission::Admission;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ractor::ActorRef;

use crate::actors::ask;
use crate::error::VramError;
use crate::messages::audit::AuditMsg;
use crate::messages::directory::DeviceDirectory;
use crate::messages::gpu::GpuMsg;
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::messages::supervisor::SupervisorMsg;
use crate::shard::VerifyMode;
use crate::validation;

/// A running vram-residency system. Clone it freely; all clones talk to the same actors.
#[derive(Clone)]
pub struct VramResidency {
    inner: Arc<Inner>,
}

struct Inner {
    supervisor: ActorRef<SupervisorMsg>,
    seal_keeper: ActorRef<SealKeeperMsg>,
    audit: ActorRef<AuditMsg>,
    directory: DeviceDirectory,
    device_count: u32,
    worker_id: String,
    max_model_size: u64,
    execute_verify: VerifyMode,
    call_timeout: Duration,
    fail_closed_audit: bool,
    next_handle: AtomicU64,
    /// Per device: admission to its mailbox (see [`Admission`]).
    admission: Vec<Admission>,
    shut_down: AtomicBool,
    backend_description: String,
    backend_kind: crate::gpu::BackendKind,
    /// The identity key's public half (the private key lives in the seal keeper).
    identity_public: crate::seal::identity::IdentityPublicKey,
}

impl Drop for Inner {
    /// The last handle (clones and leases included) is gone. After `shutdown` nothing is left
    /// to do; without it, say what was lost: nothing stops the actors now, so the audit log is
    /// never closed and whatever is resident stays allocated until the process ends.
    fn drop(&mut self) {
        if *self.shut_down.get_mut() {
            return;
        }
        tracing::warn!(
            worker_id = %self.worker_id,
            devices = self.device_count,
            "the last VramResidency handle was dropped without shutdown(): the audit log was \
             not closed (no AuditLogClosed record; records still buffered are lost if the \
             process ends now) and every shard not released stays resident in device memory \
             until the process exits; call shutdown().await before dropping the last handle"
        );
    }
}

impl std::fmt::Debug for VramResidency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VramResidency")
            .field("worker_id", &self.inner.worker_id)
            .field("devices", &self.inner.device_count)
            .field("backend", &self.inner.backend_description)
            .finish_non_exhaustive()
    }
}

impl VramResidency {
    /// Which backend is running, and why it was chosen.
    pub fn backend_description(&self) -> &str {
        &self.inner.backend_description
    }

    /// Whether the devices are simulated or real.
    pub fn backend_kind(&self) -> crate::gpu::BackendKind {
        self.inner.backend_kind
    }

    /// Number of devices.
    pub fn device_count(&self) -> u32 {
        self.inner.device_count
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    fn live(&self) -> Result<(), VramError> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            Err(VramError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    fn gpu(&self, device: u32) -> Result<ActorRef<GpuMsg>, VramError> {
        self.live()?;
        validation::validate_device(device, self.inner.device_count)?;
        self.inner
            .directory
            .gpu(device)
            .map_err(|cause| VramError::DeviceStopped { device, cause })
    }

    /// Calls one of the long-lived service actors (seal keeper, audit, supervisor); if it is not
    /// there to answer, the system is shutting down.
    async fn ask_service<M: ractor::Message, T: Send + 'static>(
        &self,
        actor: &ActorRef<M>,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
        what: &str,
    ) -> Result<T, VramError> {
        ask(actor, build, self.inner.call_timeout, what, || {
            VramError::ShuttingDown
        })
        .await
    }
}
