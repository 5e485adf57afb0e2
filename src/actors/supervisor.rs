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
//!   be resident. The supervisor audits `DeviceStopped`, marks the device's directory slot
//!   `Restarting` (so calls fail fast, and retriably), and starts a fresh actor on a fresh
//!   backend context. The budget is a sliding window ([`RestartBudget`], default 8 restarts per
//!   device per minute): it recovers as old restarts age out. A device over budget, or whose
//!   restart fails (audited), is left `Crashed`. Old handles get `UnknownShard`.
//! * a fail-closed stop outlives the actor: each device's stop lives in a [`StopSlot`] shared
//!   with its actor, written before the actor answers the request that stopped or reset it, and
//!   a replacement starts with it (stopped until `reset_device`).
//! * a `SealKeeper` or `AuditActor` failure stops the whole system (fail-closed): without the
//!   key nothing can be sealed or verified, and without the audit actor nothing could be
//!   proven afterwards.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::actors::audit_actor::{AuditActor, AuditArgs};
pub use crate::actors::gpu_actor::DeviceSettings;
use crate::actors::gpu_actor::{BackendSource, GpuActor, GpuArgs, StopSlot};
use crate::actors::seal_keeper::SealKeeper;
use crate::actors::spans::{ActorName, actor_span, in_span};
use crate::audit::events::AuditEvent;
use crate::config::AuditSinkConfig;
use crate::error::VramError;
use crate::gpu::DeviceBackend;
use crate::messages::audit::AuditMsg;
use crate::messages::directory::DirectoryWriter;
use crate::messages::gpu::GpuMsg;
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::messages::supervisor::SupervisorMsg;
use crate::seal::keys::WorkerToken;
use crate::types::StopCause;

/// How often one device's actor may be restarted: at most `max` restarts within any `window`.
/// Past that the device is left stopped (`StopCause::Crashed`); as restarts age out of the
/// window, the budget recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBudget {
    /// Restarts allowed within one window.
    pub max: usize,
    /// The window.
    pub window: Duration,
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self {
            max: 8,
            window: Duration::from_secs(60),
        }
    }
}

/// Opens a device's backend (its context, streams and kernels on CUDA). Each `GpuActor` calls it
/// when it starts — at start-up and when it replaces a crashed one — so the actor creates, and
/// owns, its device's context.
pub type BackendFactory =
    std::sync::Arc<dyn Fn(u32) -> Result<Box<dyn DeviceBackend>, String> + Send + Sync>;

/// The actor.
pub struct Supervisor;

/// What the supervisor needs to start the system.
pub struct SupervisorArgs {
    pub device_count: u32,
    pub factory: BackendFactory,
    pub settings: DeviceSettings,
    pub token: WorkerToken,
    pub identity: crate::seal::identity::IdentityKey,
    pub audit_sink: AuditSinkConfig,
    pub audit_batch_size: usize,
    pub audit_flush_interval: Duration,
    pub audit_buffer_limit: usize,
    pub audit_memory_lines: usize,
    pub directory: DirectoryWriter,
    pub restart_budget: RestartBudget,
}

/// The supervisor's state.
pub struct SupervisorState {
    audit: ActorRef<AuditMsg>,
    seal_keeper: ActorRef<SealKeeperMsg>,
    gpus: Vec<Option<ActorRef<GpuMsg>>>,
    /// Per device: when its actor was restarted, within the budget's window.
    restarts: Vec<VecDeque<Instant>>,
    /// Per device: its fail-closed stop, shared with its actor and handed to a replacement.
    stopped: Vec<StopSlot>,
    restart_budget: RestartBudget,
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
        let (gpu, _) = Actor::spawn_linked(
            None,
            GpuActor,
            GpuArgs {
                device,
                backend: BackendSource::Open(std::sync::Arc::clone(&self.factory)),
                settings: self.settings.clone(),
                seal_keeper: self.seal_keeper.clone(),
                audit: self.audit.clone(),
                stop: usize::try_from(device)
                    .ok()
                    .and_then(|i| self.stopped.get(i))
                    .cloned()
                    .unwrap_or_default(),
            },
            myself.get_cell(),
        )
        .await?;
        self.directory.set(device, Ok(gpu.clone()));
        Ok(gpu)
    }

    /// Whether device `idx` may be restarted now, within its budget; if so, counts it.
    fn take_restart(&mut self, idx: usize) -> bool {
        let budget = self.restart_budget;
        let Some(times) = self.restarts.get_mut(idx) else {
            return false;
        };
        let now = Instant::now();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= budget.window)
        {
            times.pop_front();
        }
        if times.len() >= budget.max {
            return false;
        }
        times.push_back(now);
        true
    }

    fn device_of(&self, cell: &ractor::ActorCell) -> Option<u32> {
        let id = cell.get_id();
        self.gpus
            .iter()
            .position(|g| g.as_ref().is_some_and(|g| g.get_id() == id))
            .and_then(|i| u32::try_from(i).ok())
    }

    fn audit(&self, event: AuditEvent) {
        crate::actors::emit_audit(&self.audit, event);
    }

    async fn stop_all(&mut self) {
        self.shutting_down = true;
        let timeout = Some(self.settings.call_timeout);
        for (i, gpu) in self.gpus.iter_mut().enumerate() {
            self.directory.set(
                u32::try_from(i).unwrap_or(u32::MAX),
                Err(StopCause::ShuttingDown),
            );
            if let Some(g) = gpu.take()
                && g.drain_and_wait(timeout).await.is_err()
            {
                // A device that cannot finish its queue in time is killed, so that nothing it
                // emits can arrive after the audit log is closed. Its memory goes with its
                // context; the missing per-shard records are explained by this one.
                crate::actors::emit_audit(
                    &self.audit,
                    AuditEvent::DeviceStopped {
                        gpu_device: u32::try_from(i).unwrap_or(u32::MAX),
                        reason: "did not drain within the call timeout at shutdown; killed".into(),
                    },
                );
                let _ = g.kill_and_wait(timeout).await;
            }
        }
        let _ = self.seal_keeper.drain_and_wait(timeout).await;
        let _ = self.audit.drain_and_wait(timeout).await;
    }
}

/// The text of what actually failed in a start-up error: `e` without the "Actor panicked
/// during startup" wrappers (`SpawnErr`) of each actor it went through.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while cause.downcast_ref::<ractor::SpawnErr>().is_some()
        && let Some(next) = cause.source()
    {
        cause = next;
    }
    cause.to_string()
}

/// A start-up failure `VramResidency::start` returns as it is (it downcasts it).
fn start_error(e: VramError) -> ActorProcessingErr {
    Box::new(e)
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let span = actor_span(ActorName::Supervisor);
        in_span(span, self.on_start(myself, args)).await
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let span = actor_span(ActorName::Supervisor);
        in_span(span, self.on_message(myself, message, state)).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let span = actor_span(ActorName::Supervisor);
        in_span(span, self.on_supervision(myself, event, state)).await
    }
}

/// The handlers, each run inside the actor's span (see the `Actor` impl above).
impl Supervisor {
    async fn on_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
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
                memory_lines: args.audit_memory_lines,
            },
            myself.get_cell(),
        )
        .await
        .map_err(|e| start_error(VramError::AuditUnavailable(innermost(&e))))?;
        let keeper_args = crate::actors::seal_keeper::SealKeeperArgs {
            token: args.token,
            identity: args.identity,
        };
        let (seal_keeper, _) =
            Actor::spawn_linked(None, SealKeeper, keeper_args, myself.get_cell()).await?;
        let n = usize::try_from(args.device_count).unwrap_or(0);
        let mut state = SupervisorState {
            audit,
            seal_keeper,
            gpus: vec![None; n],
            restarts: vec![VecDeque::new(); n],
            // One slot per device (not `vec![slot; n]`, which would share one).
            stopped: (0..n).map(|_| StopSlot::default()).collect(),
            restart_budget: args.restart_budget,
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
                    return Err(start_error(VramError::BackendUnavailable {
                        device: Some(device),
                        reason: innermost(e.as_ref()),
                    }));
                }
            }
        }
        Ok(state)
    }

    async fn on_message(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
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

    async fn on_supervision(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
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
            let restart = state.take_restart(idx);
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
    use crate::gpu::sim::SimDevice;
    use crate::messages::audit::AuditMsg;
    use crate::messages::directory;

    fn args(writer: DirectoryWriter, devices: u32) -> SupervisorArgs {
        SupervisorArgs {
            device_count: devices,
            factory: std::sync::Arc::new(|i| {
                Ok(Box::new(SimDevice::new(i, 1 << 20)) as Box<dyn DeviceBackend>)
            }),
            settings: DeviceSettings::for_tests(),
            restart_budget: RestartBudget::default(),
            token: WorkerToken::new(b"supervisor-test-token".to_vec()).unwrap(),
            identity: crate::seal::identity::IdentityKey::derive(
                &WorkerToken::new(b"supervisor-test-token".to_vec()).unwrap(),
            )
            .unwrap(),
            audit_sink: AuditSinkConfig::Memory,
            audit_batch_size: 1,
            audit_flush_interval: Duration::from_millis(5),
            audit_buffer_limit: 100,
            audit_memory_lines: 1000,
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
                if let Ok(g) = dir.gpu(0)
                    && g.get_id() != gpu0.get_id()
                {
                    replaced = Some(g);
                    break;
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

    /// Crashes device 0's current actor and returns what the directory says afterwards (the
    /// replacement, or why there is none).
    async fn crash(dir: &crate::messages::directory::DeviceDirectory) -> directory::Slot {
        let before = dir.gpu(0).unwrap();
        let fault = crate::types::Fault::CrashActor;
        let _ = before
            .call(|reply| GpuMsg::InjectFault { fault, reply }, None)
            .await;
        for _ in 0..400 {
            match dir.gpu(0) {
                Ok(g) if g.get_id() != before.get_id() => return Ok(g),
                Err(StopCause::Crashed) => return Err(StopCause::Crashed),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        panic!("the supervisor never settled device 0");
    }

    #[tokio::test]
    async fn the_restart_budget_recovers_as_restarts_age_out() {
        let (writer, dir) = directory::directory(1);
        let mut a = args(writer, 1);
        let window = Duration::from_millis(1_500);
        a.restart_budget = RestartBudget { max: 2, window };
        let (sup, handle) = Actor::spawn(None, Supervisor, a).await.unwrap();
        assert!(crash(&dir).await.is_ok());
        assert!(crash(&dir).await.is_ok());
        // Both restarts of this window are spent; once they age out, the budget is back.
        tokio::time::sleep(window + Duration::from_millis(50)).await;
        assert!(crash(&dir).await.is_ok());
        assert!(crash(&dir).await.is_ok());
        // A third crash within one window is over budget: the device is left crashed.
        assert_eq!(crash(&dir).await.err(), Some(StopCause::Crashed));
        sup.call(SupervisorMsg::Shutdown, None)
            .await
            .unwrap()
            .unwrap();
        handle.await.unwrap();
    }
}
