//! `Supervisor`: starts the actors linked, restarts a crashed device actor, and runs shutdown.
//!
//! Start order is audit → seal keeper → devices, so every device event has somewhere to go and
//! every seal can be signed. Shutdown runs the other way: devices drain their mailboxes and free
//! their memory (auditing each release), then the seal keeper stops (its key is zeroized), then
//! the audit actor writes `AuditLogClosed` and syncs.
//!
//! Crash policy:
//! * a `GpuActor` that panics or fails loses its state — its backend context and therefore all
//!   of its device memory are dropped with it, so no accounting leaks and no shard can claim to
//!   be resident. The supervisor audits `DeviceStopped`, clears the device's directory slot (so
//!   calls fail fast), and starts a fresh actor on a fresh backend context, up to
//!   [`MAX_DEVICE_RESTARTS`] times per device. Old handles get `UnknownShard`.
//! * a `SealKeeper` or `AuditActor` failure stops the whole system (fail-closed): without the
//!   key nothing can be sealed or verified, and without the audit actor nothing could be
//!   proven afterwards.

use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::actors::audit_actor::{AuditActor, AuditArgs};
use crate::actors::directory::DirectoryWriter;
pub use crate::actors::gpu_actor::DeviceSettings;
use crate::actors::gpu_actor::{GpuActor, GpuArgs};
use crate::actors::seal_keeper::SealKeeper;
use crate::audit::events::AuditEvent;
use crate::config::AuditSinkConfig;
use crate::gpu::DeviceBackend;
use crate::messages::audit::AuditMsg;
use crate::messages::gpu::GpuMsg;
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::messages::supervisor::SupervisorMsg;
use crate::seal::keys::WorkerToken;
use crate::types::StopCause;

/// How many times one device's actor is restarted before the device is left stopped.
pub const MAX_DEVICE_RESTARTS: u32 = 8;

/// Makes a fresh backend context for a device (at start and after a crash).
pub type BackendFactory = Box<dyn Fn(u32) -> Result<Box<dyn DeviceBackend>, String> + Send + Sync>;

/// The actor.
pub struct Supervisor;

/// What the supervisor needs to start the system.
pub struct SupervisorArgs {
    pub device_count: u32,
    pub factory: BackendFactory,
    pub settings: DeviceSettings,
    pub token: WorkerToken,
    pub audit_sink: AuditSinkConfig,
    pub audit_batch_size: usize,
    pub audit_flush_interval: Duration,
    pub audit_buffer_limit: usize,
    pub directory: DirectoryWriter,
}

/// The supervisor's state.
pub struct SupervisorState {
    audit: ActorRef<AuditMsg>,
    seal_keeper: ActorRef<SealKeeperMsg>,
    gpus: Vec<Option<ActorRef<GpuMsg>>>,
    restarts: Vec<u32>,
    factory: BackendFactory,
    settings: DeviceSettings,
    directory: DirectoryWriter,
    shutting_down: bool,
}

impl SupervisorState {
    async fn spawn_device(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        device: u32,
    ) -> Result<ActorRef<GpuMsg>, ActorProcessingErr> {
        let backend = (self.factory)(device)?;
        let (gpu, _) = Actor::spawn_linked(
            None,
            GpuActor,
            GpuArgs {
                device,
                backend,
                settings: self.settings.clone(),
                seal_keeper: self.seal_keeper.clone(),
                audit: self.audit.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.directory.set(device, Ok(gpu.clone()));
        Ok(gpu)
    }

    fn device_of(&self, cell: &ractor::ActorCell) -> Option<u32> {
        let id = cell.get_id();
        self.gpus
            .iter()
            .position(|g| g.as_ref().is_some_and(|g| g.get_id() == id))
            .and_then(|i| u32::try_from(i).ok())
    }

    fn audit(&self, event: AuditEvent) {
        let _ = self.audit.cast(AuditMsg::Emit(Utc::now(), event));
    }

    async fn stop_all(&mut self) {
        self.shutting_down = true;
        let timeout = Some(self.settings.call_timeout);
        for (i, gpu) in self.gpus.iter_mut().enumerate() {
            self.directory.set(
                u32::try_from(i).unwrap_or(u32::MAX),
                Err(StopCause::ShuttingDown),
            );
            if let Some(g) = gpu.take() {
                if g.drain_and_wait(timeout).await.is_err() {
                    // A device that cannot finish its queue in time is killed, so that nothing it
                    // emits can arrive after the audit log is closed. Its memory goes with its
                    // context; the missing per-shard records are explained by this one.
                    let _ = self.audit.cast(AuditMsg::Emit(
                        Utc::now(),
                        AuditEvent::DeviceStopped {
                            gpu_device: u32::try_from(i).unwrap_or(u32::MAX),
                            reason: "did not drain within the call timeout at shutdown; killed"
                                .into(),
                        },
                    ));
                    let _ = g.kill_and_wait(timeout).await;
                }
            }
        }
        let _ = self.seal_keeper.drain_and_wait(timeout).await;
        let _ = self.audit.drain_and_wait(timeout).await;
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (audit, _) = Actor::spawn_linked(
            None,
            AuditActor,
            AuditArgs {
                sink: args.audit_sink,
                token: args.token.duplicate(),
                worker_id: args.settings.worker_id.clone(),
                batch_size: args.audit_batch_size,
                flush_interval: args.audit_flush_interval,
                buffer_limit: args.audit_buffer_limit,
            },
            myself.get_cell(),
        )
        .await?;
        let (seal_keeper, _) =
            Actor::spawn_linked(None, SealKeeper, args.token, myself.get_cell()).await?;
        let n = usize::try_from(args.device_count).unwrap_or(0);
        let mut state = SupervisorState {
            audit,
            seal_keeper,
            gpus: vec![None; n],
            restarts: vec![0; n],
            factory: args.factory,
            settings: args.settings,
            directory: args.directory,
            shutting_down: false,
        };
        for device in 0..args.device_count {
            match state.spawn_device(&myself, device).await {
                Ok(gpu) => {
                    if let Some(slot) = usize::try_from(device)
                        .ok()
                        .and_then(|i| state.gpus.get_mut(i))
                    {
                        *slot = Some(gpu);
                    }
                }
                Err(e) => {
                    state.stop_all().await;
                    return Err(e);
                }
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Children(reply) => {
                let _ = reply.send((state.seal_keeper.clone(), state.audit.clone()));
            }
            SupervisorMsg::Shutdown(reply) => {
                state.stop_all().await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.shutting_down {
            return Ok(());
        }
        let (cell, why) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell.clone(), format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell.clone(),
                format!(
                    "stopped: {}",
                    reason.as_deref().unwrap_or("no reason given")
                ),
            ),
            _ => return Ok(()),
        };
        if let Some(device) = state.device_of(&cell) {
            let idx = usize::try_from(device).unwrap_or(usize::MAX);
            let count = state.restarts.get(idx).copied().unwrap_or(u32::MAX);
            let restart = count < MAX_DEVICE_RESTARTS;
            let cause = if restart {
                StopCause::Restarting
            } else {
                StopCause::Crashed
            };
            state.directory.set(device, Err(cause));
            if let Some(slot) = state.gpus.get_mut(idx) {
                *slot = None;
            }
            tracing::error!(gpu_device = device, reason = %why, restart, "device actor ended");
            state.audit(AuditEvent::DeviceStopped {
                gpu_device: device,
                reason: format!(
                    "device actor {why}; its shards were freed with its context{}",
                    if restart {
                        "; a fresh actor takes over"
                    } else {
                        "; restart limit reached"
                    }
                ),
            });
            if restart {
                if let Some(c) = state.restarts.get_mut(idx) {
                    *c = c.saturating_add(1);
                }
                match state.spawn_device(&myself, device).await {
                    Ok(gpu) => {
                        if let Some(slot) = state.gpus.get_mut(idx) {
                            *slot = Some(gpu);
                        }
                    }
                    Err(e) => {
                        tracing::error!(gpu_device = device, error = %e, "device actor restart failed");
                        state.directory.set(device, Err(StopCause::Crashed));
                        state.audit(AuditEvent::DeviceStopped {
                            gpu_device: device,
                            reason: format!("restarting the device actor failed: {e}"),
                        });
                    }
                }
            }
            return Ok(());
        }
        if cell.get_id() == state.seal_keeper.get_id() || cell.get_id() == state.audit.get_id() {
            tracing::error!(reason = %why, "seal keeper or audit actor ended; stopping the system (fail-closed)");
            state.stop_all().await;
            myself.stop(Some("a core actor failed".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::directory;
    use crate::gpu::sim::SimDevice;
    use crate::messages::audit::AuditMsg;

    fn args(writer: DirectoryWriter, devices: u32) -> SupervisorArgs {
        SupervisorArgs {
            device_count: devices,
            factory: Box::new(|i| {
                Ok(Box::new(SimDevice::new(i, 1 << 20)) as Box<dyn DeviceBackend>)
            }),
            settings: DeviceSettings::for_tests(),
            token: WorkerToken::new(b"supervisor-test-token".to_vec()).unwrap(),
            audit_sink: AuditSinkConfig::Memory,
            audit_batch_size: 1,
            audit_flush_interval: Duration::from_millis(5),
            audit_buffer_limit: 100,
            directory: writer,
        }
    }

    #[test]
    fn starts_children_publishes_devices_restarts_a_crash_and_shuts_down_in_order() {
        tokio_test::block_on(async {
            let (writer, dir) = directory::directory(2);
            let (sup, handle) = Actor::spawn(None, Supervisor, args(writer, 2))
                .await
                .unwrap();
            let (keeper, audit) = sup
                .call(SupervisorMsg::Children, None)
                .await
                .unwrap()
                .unwrap();
            let gpu0 = dir.gpu(0).unwrap();
            assert!(dir.gpu(1).is_ok());
            let status = gpu0
                .call(|reply| GpuMsg::Status { reply }, None)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(status.identity.index, 0);

            // a crashed device actor is replaced by a new one in the directory
            let fault = crate::types::Fault::CrashActor;
            let _ = gpu0
                .call(|reply| GpuMsg::InjectFault { fault, reply }, None)
                .await;
            let mut replaced = None;
            for _ in 0..200 {
                if let Ok(g) = dir.gpu(0) {
                    if g.get_id() != gpu0.get_id() {
                        replaced = Some(g);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let gpu0b = replaced.expect("device 0 was not restarted");
            let status = gpu0b
                .call(|reply| GpuMsg::Status { reply }, None)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(status.shards, 0);

            // shutdown: directory emptied, every child stopped, the log closed last
            sup.call(SupervisorMsg::Shutdown, None)
                .await
                .unwrap()
                .unwrap();
            handle.await.unwrap();
            assert_eq!(dir.gpu(0).err(), Some(StopCause::ShuttingDown));
            assert_eq!(dir.gpu(1).err(), Some(StopCause::ShuttingDown));
            assert!(
                keeper
                    .cast(SealKeeperMsg::Attest {
                        statement: vec![],
                        reply: ractor::concurrency::oneshot().0.into(),
                    })
                    .is_err()
            );
            assert!(audit.cast(AuditMsg::Tick).is_err());
        });
    }
}
