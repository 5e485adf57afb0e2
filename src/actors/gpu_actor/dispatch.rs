//! The device actor's mailbox: which handler each [`GpuMsg`] goes to, and its start and stop.
//!
//! Handlers live beside the concern they serve (`seal`, `verify`, `access`, `scrub`, `faults`);
//! this file only routes, answers the small messages (capacity, reset, status) and owns the
//! shutdown path: when the actor stops, every shard it holds is freed and audited, after any
//! verification still reading it has been let go (the reader holds its own reference).

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{GpuActor, GpuArgs, GpuState, gauges};
use crate::actors::gpu_actor::shard_table::ShardTable;
use crate::actors::spans::{ActorName, actor_span, in_span};
use crate::audit::events::AuditEvent;
use crate::error::VramError;
use crate::messages::gpu::{GpuMsg, ShardRef};
use crate::telemetry::{self, Outcome, Trigger};

impl Actor for GpuActor {
    type Msg = GpuMsg;
    type State = GpuState;
    type Arguments = GpuArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GpuMsg>,
        args: GpuArgs,
    ) -> Result<GpuState, ActorProcessingErr> {
        let span = actor_span(ActorName::Gpu(args.device));
        in_span(span, self.on_start(myself, args)).await
    }

    async fn handle(
        &self,
        myself: ActorRef<GpuMsg>,
        message: GpuMsg,
        state: &mut GpuState,
    ) -> Result<(), ActorProcessingErr> {
        let span = actor_span(ActorName::Gpu(state.device()));
        in_span(span, self.on_message(myself, message, state)).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<GpuMsg>,
        state: &mut GpuState,
    ) -> Result<(), ActorProcessingErr> {
        let span = actor_span(ActorName::Gpu(state.device()));
        in_span(span, self.on_stop(myself, state)).await
    }
}

/// The handlers, each run inside the actor's span (see the `Actor` impl above).
impl GpuActor {
    async fn on_start(
        &self,
        myself: ActorRef<GpuMsg>,
        mut args: GpuArgs,
    ) -> Result<GpuState, ActorProcessingErr> {
        // The actor creates its device's backend (on CUDA: the context, streams, kernels).
        let backend = args.backend.open(args.device).await?;
        let identity = backend.identity();
        if let Some(interval) = args.settings.scrub_interval {
            myself.send_interval(interval, || GpuMsg::ScrubTick);
        }
        let stopped = args.stop.get();
        let state = GpuState {
            args,
            backend,
            identity,
            table: ShardTable::default(),
            sealing: std::collections::BTreeMap::new(),
            seal_queue: std::collections::VecDeque::new(),
            next_seal: 0,
            stopped,
            lost: false,
            scrub_cursor: 0,
            scrub_not_before: Instant::now(),
        };
        state.publish_capacity();
        Ok(state)
    }

    async fn on_message(
        &self,
        myself: ActorRef<GpuMsg>,
        message: GpuMsg,
        state: &mut GpuState,
    ) -> Result<(), ActorProcessingErr> {
        let publish = gauges::may_change_capacity(&message);
        match message {
            GpuMsg::Seal { job, reply } => state.start_seal(&myself, *job, reply),
            GpuMsg::SealPiece { seal, piece, done } => state.seal_piece(seal, piece, done).await,
            GpuMsg::SealEnded { seal, hashed } => state.seal_ended(seal, hashed).await,
            GpuMsg::Verify {
                shard,
                info,
                mode,
                cancel,
                reply,
            } => state.verify_request(&myself, shard, &info, mode, cancel, reply),
            GpuMsg::VerifyFinished {
                shard,
                mode,
                started,
                outcome,
                reply,
            } => {
                let outcome = outcome.map_err(|e| state.map(e));
                let scrub = reply.is_none();
                let r = state.finish_verify(shard, mode, started, outcome, scrub);
                match reply {
                    Some(reply) => {
                        let _ = reply.send(r);
                    }
                    // A caller's verification is counted by the facade, which sees its whole
                    // path; a scrub has no caller, so it is counted here.
                    None => telemetry::record_verification(
                        mode,
                        Trigger::Scrub,
                        Outcome::of(&r),
                        started.elapsed(),
                    ),
                }
            }
            GpuMsg::Residency { query, reply } => {
                let _ = reply.send(state.residency(query));
            }
            GpuMsg::Attest {
                shard,
                info,
                draft,
                reply,
            } => {
                let r = state.attest(shard, info, *draft).await;
                let _ = reply.send(r);
            }
            GpuMsg::Lease { shard, reply } => {
                let _ = reply.send(state.lease(&shard));
            }
            GpuMsg::Release { shard, reply } => state.release_request(shard, reply),
            GpuMsg::Capacity { reply } => {
                let r = state.live().map(|()| state.capacity());
                let _ = reply.send(r);
            }
            GpuMsg::InjectFault { fault, reply } => {
                let r = state.inject(fault);
                let _ = reply.send(r);
            }
            GpuMsg::Reset { reply } => {
                let r = state.live().map(|()| state.reset());
                let _ = reply.send(r);
            }
            GpuMsg::Status { reply } => {
                let _ = reply.send(state.status());
            }
            GpuMsg::ScrubTick => state.scrub_next(&myself),
            GpuMsg::WorkerPanicked { job, payload } => {
                super::worker_panicked(state.device(), job, payload)
            }
            GpuMsg::QuarantineForGroup {
                shard,
                group_id,
                failed_shard_id,
                reply,
            } => {
                let _ = reply.send(state.quarantine_for_group(&shard, group_id, failed_shard_id));
            }
        }
        // A seal that ended lets the next queued one start; a queued seal whose caller left
        // is answered at this message (its slot frees) rather than when its turn comes. A
        // seal in progress sends a message per piece, so that is soon (at most
        // `seal_stall_timeout` when its source stalls).
        state.start_queued_seals(&myself);
        if publish {
            state.publish_capacity();
        }
        Ok(())
    }

    async fn on_stop(
        &self,
        _myself: ActorRef<GpuMsg>,
        state: &mut GpuState,
    ) -> Result<(), ActorProcessingErr> {
        // Shutdown frees everything the device holds, and says so in the audit log: the
        // allocations of seals still uploading, then the shards.
        for seal in state.sealing.keys().copied().collect::<Vec<_>>() {
            state.end_seal(seal, VramError::ShuttingDown);
        }
        for (_, reply) in state.seal_queue.drain(..) {
            let _ = reply.send(Err(VramError::ShuttingDown));
        }
        for id in state.table.ids() {
            let _ = state.release_now(&id);
        }
        state.publish_capacity();
        Ok(())
    }
}

impl GpuState {
    /// `Err(DeviceLost)` once the device is gone.
    pub(super) fn live(&self) -> Result<(), VramError> {
        if self.lost {
            Err(VramError::DeviceLost {
                device: self.device(),
            })
        } else {
            Ok(())
        }
    }

    /// Accept seals and executions again after a fail-closed stop.
    fn reset(&mut self) {
        if self.stopped.is_some() {
            self.set_stopped(None);
            self.audit(AuditEvent::DeviceReset {
                gpu_device: self.device(),
            });
        }
    }

    /// A release from a caller (`reply`) or from the last dropped handle (`None`): now, or once
    /// the verifications reading the shard have finished.
    fn release_request(
        &mut self,
        shard: ShardRef,
        reply: Option<ractor::RpcReplyPort<Result<u64, VramError>>>,
    ) {
        match self.table.get_mut(&shard) {
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
            }
            Ok(entry) if entry.in_flight > 0 => entry.pending_release.push(reply),
            Ok(_) => {
                let r = self.release_now(&shard.shard_id);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
        }
    }
}
