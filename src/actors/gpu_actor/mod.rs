//! `GpuActor`: one per device; owns the backend, the [`ShardTable`] and the capacity books.
//!
//! Every mutation of the device's memory — allocate, upload, free, fault — happens in this
//! actor's handlers, in mailbox order. The actor is split by concern:
//!
//! * [`dispatch`](self::dispatch) — the mailbox: which handler each [`GpuMsg`] goes to, and the
//!   shutdown path (`post_stop` frees what the device holds);
//! * [`seal`](self::seal) — the seal pipeline: a blocking thread hashes the source piece by
//!   piece (see [`crate::actors::gpu_actor::hashing`]) and hands each piece to this actor, one
//!   message per piece, which lends the allocation's memory to an upload job on the rayon pool
//!   and takes it back, so the copy of piece k overlaps the hashing of piece k, host memory
//!   stays O(staging), the mailbox answers other requests between pieces, and a seal whose
//!   caller gave up stops at the next piece;
//! * [`verify`](self::verify) — verification: the actor takes a read-only
//!   [`DeviceReader`](crate::gpu::DeviceReader), counts the check as in flight and hashes off the
//!   actor; the verdict on the result is a pure function ([`verify::verdict`]); a release that
//!   arrives meanwhile waits until no verification is reading the shard;
//! * [`access`](self::access) — residency checks and `execute`;
//! * [`scrub`](self::scrub) — the background scrub, round robin between requests;
//! * [`faults`](self::faults) — fault injection;
//! * [`gauges`](self::gauges) — the device's memory gauges (see [`crate::telemetry`]);
//! * [`group`](self::group) — quarantining a member of a tensor-parallel group that failed;
//! * [`header`](self::header) — a seal's check that its tensor list describes its bytes.
//!
//! Fail-closed: a verification that finds a bad chunk quarantines the shard, stops the device for
//! new seals and executions until `reset_device`, and emits a critical audit event.

mod access;
mod dispatch;
mod faults;
mod gauges;
mod group_quarantine;
pub(crate) mod hashing;
mod header;
mod scrub;
mod seal;
pub(crate) mod shard_table;
#[cfg(test)]
mod tests;
pub(crate) mod verify;

use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::ActorRef;

use crate::actors::gpu_actor::shard_table::ShardTable;
use crate::audit::events::AuditEvent;
use crate::error::VramError;
use crate::gpu::{BackendError, BackendKind, DeviceBackend, DeviceIdentity};
use crate::messages::audit::AuditMsg;
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::types::{DeviceStatus, StopCause, VerifyReport, VramCapacity};

/// The actor.
pub struct GpuActor;

/// Where a verification's result goes (`None` for background scrubs).
type VerifyReply = ractor::RpcReplyPort<Result<VerifyReport, VramError>>;

/// What a `GpuActor` needs to start.
pub struct GpuArgs {
    /// The device index.
    pub device: u32,
    /// Where the device's backend comes from; the actor owns it (and with it the device's
    /// context and every allocation) from its start on.
    pub backend: BackendSource,
    /// Settings shared by every device.
    pub settings: DeviceSettings,
    /// Signs seals.
    pub seal_keeper: ActorRef<SealKeeperMsg>,
    /// Receives audit events.
    pub audit: ActorRef<AuditMsg>,
    /// The device's fail-closed stop, shared with the supervisor so that it outlives this
    /// actor: a replacement for a crashed actor starts with the stop of the one it replaces.
    pub stop: StopSlot,
}

/// A device's fail-closed stop (`Some(why)`), kept outside its actor. The actor writes it
/// synchronously, before it answers the request that stopped (or reset) the device, and the
/// supervisor hands the same slot to a replacement. A message to the supervisor would not do:
/// ractor delivers a crashed child's supervision event ahead of ordinary messages, so a
/// replacement could start before the stop was known and serve from a device that failed
/// closed. It is a `watch` slot, like the device directory (`.specs/design.md` §2: no lock is
/// shared between actors): the value is replaced whole, never held across anything.
#[derive(Debug, Clone)]
pub(crate) struct StopSlot(std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for StopSlot {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::Sender::new(None)))
    }
}

impl StopSlot {
    /// The stop now.
    pub(crate) fn get(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Stops (`Some`) or lifts the stop (`None`).
    pub(crate) fn set(&self, stopped: Option<String>) {
        self.0.send_replace(stopped);
    }
}

/// How a `GpuActor` gets its backend.
pub enum BackendSource {
    /// The actor opens it when it starts (on a blocking thread: creating a CUDA context and
    /// compiling kernels takes a while), so the context is created by the actor that owns it.
    Open(crate::actors::supervisor::BackendFactory),
    /// Already open (unit tests hand in a simulated device).
    #[cfg(test)]
    Ready(Box<dyn DeviceBackend>),
    /// Moved into the actor's state (what `GpuArgs` keeps after the start).
    Taken,
}

impl BackendSource {
    /// Opens (or hands over) the backend for `device`, leaving `Taken` behind.
    async fn open(&mut self, device: u32) -> Result<Box<dyn DeviceBackend>, String> {
        match std::mem::replace(self, Self::Taken) {
            #[cfg(test)]
            Self::Ready(backend) => Ok(backend),
            Self::Open(factory) => crate::actors::spans::spawn_blocking(move || factory(device))
                .await
                .map_err(|e| format!("opening device {device} failed: {e}"))?,
            Self::Taken => Err(format!("device {device}'s backend was already taken")),
        }
    }
}

/// Settings every device actor is started with (the same for all devices; the supervisor keeps
/// one copy to start replacements from).
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// This worker's id, written into every seal.
    pub worker_id: String,
    /// Merkle leaf size.
    pub chunk_size: u64,
    /// Bytes kept free on purpose.
    pub headroom_bytes: u64,
    /// Size of one staging piece of a seal.
    pub staging_bytes: usize,
    /// How long a call to another actor may take.
    pub call_timeout: Duration,
    /// How long a seal waits for the next piece of its source.
    pub seal_stall_timeout: Duration,
    /// How often the background scrub looks at the next shard.
    pub scrub_interval: Option<Duration>,
    /// The scrub's read budget.
    pub scrub_bytes_per_sec: Option<u64>,
}

#[cfg(test)]
impl DeviceSettings {
    /// Settings for the crate's unit tests: worker `w`, 4 KiB chunks, 8 KiB staging, no
    /// headroom, no scrub, 10 s timeouts.
    pub(crate) fn for_tests() -> Self {
        Self {
            worker_id: "w".into(),
            chunk_size: 4096,
            headroom_bytes: 0,
            staging_bytes: 8192,
            call_timeout: Duration::from_secs(10),
            seal_stall_timeout: Duration::from_secs(10),
            scrub_interval: None,
            scrub_bytes_per_sec: None,
        }
    }
}

/// The actor's state.
pub struct GpuState {
    args: GpuArgs,
    /// The device's memory: every allocation, upload and free goes through it, here only.
    backend: Box<dyn DeviceBackend>,
    identity: DeviceIdentity,
    table: ShardTable,
    /// Seals between their `Seal` message and their end, by the number the actor gave them.
    sealing: std::collections::BTreeMap<u64, seal::Sealing>,
    /// Seals waiting for the one in progress to end: a device uploads one seal at a time (one
    /// staging ring, one copy engine's worth of bandwidth), in arrival order.
    seal_queue: std::collections::VecDeque<(crate::messages::gpu::SealJob, seal::SealReply)>,
    next_seal: u64,
    stopped: Option<String>,
    lost: bool,
    scrub_cursor: usize,
    scrub_not_before: Instant,
}

impl GpuState {
    fn device(&self) -> u32 {
        self.args.device
    }

    fn audit(&self, event: AuditEvent) {
        crate::telemetry::record_device_event(event.type_name(), self.args.device);
        // Emission never waits: a cast only queues the event. A cast fails only when the audit
        // actor is gone (shutdown); the loss is counted, never ignored.
        if self
            .args
            .audit
            .cast(AuditMsg::Emit(Utc::now(), event))
            .is_err()
        {
            crate::telemetry::record_audit_dropped(Some("audit actor gone"));
        }
    }

    /// The public error for a backend failure; a lost device is also marked lost here.
    fn map(&mut self, e: BackendError) -> VramError {
        if e == BackendError::DeviceLost {
            self.mark_lost("the backend reported the device lost");
        }
        e.into_vram(self.device())
    }

    /// Stops the device fail-closed (`Some`) or lifts the stop (`None`), in the shared slot
    /// too, so the state survives a crash of this actor.
    fn set_stopped(&mut self, stopped: Option<String>) {
        self.stopped.clone_from(&stopped);
        self.args.stop.set(stopped);
    }

    fn mark_lost(&mut self, why: &str) {
        if !self.lost {
            self.lost = true;
            self.audit(AuditEvent::DeviceStopped {
                gpu_device: self.device(),
                reason: format!("device lost: {why}"),
            });
        }
    }

    /// Bytes held on the device: sealed shards plus the allocations of seals in progress.
    fn used_bytes(&self) -> u64 {
        self.sealing
            .values()
            .map(seal::Sealing::allocated_bytes)
            .fold(self.table.used_bytes(), u64::saturating_add)
    }

    fn available(&self) -> u64 {
        let total = self.identity.total_bytes;
        let books = total
            .saturating_sub(self.used_bytes())
            .saturating_sub(self.args.settings.headroom_bytes);
        // A real device may have less free than our books say (other processes); trust the
        // smaller figure.
        match self.backend.free_bytes() {
            Ok(free) => books.min(free.saturating_sub(self.args.settings.headroom_bytes)),
            Err(_) => books,
        }
    }

    fn capacity(&self) -> VramCapacity {
        VramCapacity {
            gpu_device: self.device(),
            total_bytes: self.identity.total_bytes,
            used_bytes: self.used_bytes(),
            available_bytes: self.available(),
            headroom_bytes: self.args.settings.headroom_bytes,
        }
    }

    fn accepting_work(&self) -> Result<(), VramError> {
        let device = self.device();
        if self.lost {
            return Err(VramError::DeviceLost { device });
        }
        if self.stopped.is_some() {
            return Err(VramError::DeviceStopped {
                device,
                cause: StopCause::IntegrityFailure,
            });
        }
        Ok(())
    }

    /// Frees a shard's memory, drops it from the table and audits it; answers waiting releases.
    fn release_now(&mut self, shard_id: &str) -> Result<u64, VramError> {
        let Some(entry) = self.table.remove(shard_id) else {
            return Err(VramError::UnknownShard(shard_id.to_string()));
        };
        // Free even when the device is lost: the memory is gone either way and the books must
        // come back to their starting value.
        let _ = self.backend.free(entry.allocation);
        let freed = entry.allocated_bytes;
        self.audit(AuditEvent::VramDeallocated {
            shard_id: shard_id.to_string(),
            freed_bytes: freed,
            remaining_used: self.used_bytes(),
            gpu_device: self.device(),
        });
        for reply in entry.pending_release.into_iter().flatten() {
            let _ = reply.send(Ok(freed));
        }
        Ok(freed)
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus {
            identity: self.identity.clone(),
            stopped: self.stopped.clone(),
            lost: self.lost,
            shards: self.table.len(),
            used_bytes: self.used_bytes(),
            policy: match self.identity.backend {
                BackendKind::Simulated => {
                    "simulated device memory (VRAM-only policy not applicable)".into()
                }
                BackendKind::Cuda if self.identity.integrated => "violation: integrated GPU".into(),
                BackendKind::Cuda => "ok: dedicated device memory".into(),
            },
            driver_version: self.backend.driver_version(),
            leaf_kernel: self.backend.leaf_kernel(),
        }
    }
}

/// A worker job of this device (an upload copy on the rayon pool, a hashing thread) panicked:
/// the panic is re-raised here, on the device actor, so the actor crashes and its supervisor
/// replaces it with a fresh one (the device's memory goes back with the dropped backend). A
/// panicking job never aborts the process, and never leaves a device whose state is unknown
/// serving with an `Internal` error.
fn worker_panicked(device: u32, job: &str, payload: Box<dyn std::any::Any + Send>) -> ! {
    tracing::error!(
        gpu_device = device,
        "{job} panicked; the device actor crashes and is replaced"
    );
    std::panic::resume_unwind(payload)
}

/// A blocking job's result, or the job's panic re-raised on the actor ([`worker_panicked`]);
/// a job cancelled at shutdown is `gone`.
fn joined<T>(
    device: u32,
    job: &str,
    result: Result<T, tokio::task::JoinError>,
    gone: impl FnOnce() -> VramError,
) -> Result<T, VramError> {
    match result {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => worker_panicked(device, job, e.into_panic()),
        Err(_) => Err(gone()),
    }
}

/// Nanoseconds since the Unix epoch, saturating.
pub(crate) fn now_unix_nanos() -> u64 {
    Utc::now()
        .timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}
