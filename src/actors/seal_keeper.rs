//! `SealKeeper`: the only place the seal key lives.
//!
//! It derives the seal key (and the attestation key) from the worker token at start, then signs
//! and checks claims on request: shard seals (`vram-seal-v1`), group records (`vram-group-v1`)
//! and attestation statements. It also holds the worker's identity key (ECDSA P-256), which
//! signs DSSE envelopes (`vram-attest-v3`, signed audit heads). Callers get signatures and
//! yes/no answers; the keys never leave this actor's state, and are zeroized when it stops.

use hmac::Mac;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::actors::spans::{ActorName, actor_span, in_span};
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::seal::identity::IdentityKey;
use crate::seal::keys::{AttestKey, SealKey, WorkerToken};
use crate::seal::{claims, group_record};

/// The actor.
pub struct SealKeeper;

/// Its state: the keys.
pub struct SealKeeperState {
    seal_key: SealKey,
    attest_key: AttestKey,
    identity: IdentityKey,
}

/// What the keeper starts from: the worker token (its HMAC keys are derived from it) and the
/// identity key (loaded or derived by the configuration).
pub struct SealKeeperArgs {
    /// The worker token.
    pub token: WorkerToken,
    /// The identity key.
    pub identity: IdentityKey,
}

#[cfg(test)]
impl SealKeeperArgs {
    /// Every key from the token (the identity key derived, not loaded).
    pub fn derived(token: WorkerToken) -> Result<Self, crate::error::VramError> {
        let identity = IdentityKey::derive(&token)?;
        Ok(Self { token, identity })
    }
}

impl Actor for SealKeeper {
    type Msg = SealKeeperMsg;
    type State = SealKeeperState;
    type Arguments = SealKeeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SealKeeperMsg>,
        args: SealKeeperArgs,
    ) -> Result<SealKeeperState, ActorProcessingErr> {
        let span = actor_span(ActorName::SealKeeper);
        in_span(span, self.on_start(myself, args)).await
    }

    async fn handle(
        &self,
        myself: ActorRef<SealKeeperMsg>,
        message: SealKeeperMsg,
        state: &mut SealKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        let span = actor_span(ActorName::SealKeeper);
        in_span(span, self.on_message(myself, message, state)).await
    }
}

/// The handlers, each run inside the actor's span (see the `Actor` impl above).
impl SealKeeper {
    async fn on_start(
        &self,
        _myself: ActorRef<SealKeeperMsg>,
        args: SealKeeperArgs,
    ) -> Result<SealKeeperState, ActorProcessingErr> {
        Ok(SealKeeperState {
            seal_key: SealKey::derive(&args.token),
            attest_key: AttestKey::derive(&args.token),
            identity: args.identity,
        })
    }

    async fn on_message(
        &self,
        _myself: ActorRef<SealKeeperMsg>,
        message: SealKeeperMsg,
        state: &mut SealKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SealKeeperMsg::Sign { info, reply } => {
                let _ = reply.send(claims::sign(&state.seal_key, &info));
            }
            SealKeeperMsg::Verify { info, reply } => {
                let _ = reply.send(claims::verify(&state.seal_key, &info));
            }
            SealKeeperMsg::SignGroup { info, reply } => {
                let _ = reply.send(group_record::sign(&state.seal_key, &info));
            }
            SealKeeperMsg::VerifyGroup { info, reply } => {
                let _ = reply.send(group_record::verify(&state.seal_key, &info));
            }
            SealKeeperMsg::Attest { statement, reply } => {
                let mut mac = state.attest_key.mac();
                mac.update(&statement);
                let _ = reply.send(hex::encode(mac.finalize().into_bytes()));
            }
            SealKeeperMsg::SignDsse {
                payload_type,
                payload,
                reply,
            } => {
                let _ = reply.send(state.identity.sign_dsse(payload_type, &payload));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::claims::ShardInfo;

    fn info() -> ShardInfo {
        ShardInfo::unsigned_for_tests(3)
    }

    #[test]
    fn signs_and_verifies_through_the_mailbox() {
        tokio_test::block_on(async {
            let token = WorkerToken::new(b"0123456789abcdef".to_vec()).unwrap();
            let args = SealKeeperArgs::derived(token).unwrap();
            let (keeper, handle) = Actor::spawn(None, SealKeeper, args).await.unwrap();
            let mut i = info();
            i.signature = ractor::call!(keeper, |r| SealKeeperMsg::Sign {
                info: Box::new(i.clone()),
                reply: r
            })
            .unwrap()
            .unwrap();
            assert_eq!(i.signature.len(), 64);
            let ok = ractor::call!(keeper, |r| SealKeeperMsg::Verify {
                info: Box::new(i.clone()),
                reply: r
            })
            .unwrap();
            assert!(ok);
            i.vram_bytes = 4;
            let ok = ractor::call!(keeper, |r| SealKeeperMsg::Verify {
                info: Box::new(i.clone()),
                reply: r
            })
            .unwrap();
            assert!(!ok);
            let mut bad = info();
            bad.digest = "zz".into();
            let res = ractor::call!(keeper, |r| SealKeeperMsg::Sign {
                info: Box::new(bad),
                reply: r
            })
            .unwrap();
            assert!(res.is_err());
            keeper.stop(None);
            handle.await.unwrap();
        });
    }
}
