//! `SealKeeper`: the only place the seal key lives.
//!
//! It derives the seal key (and the attestation key) from the worker token at start, then signs
//! and checks claims on request: shard seals (`vram-seal-v1`), group records (`vram-group-v1`)
//! and attestation statements. Callers get signatures and yes/no answers; the key itself never
//! leaves this actor's state, and is zeroized when the actor stops.

use hmac::Mac;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::messages::seal_keeper::SealKeeperMsg;
use crate::seal::keys::{AttestKey, SealKey, WorkerToken};
use crate::seal::{claims, group_record};

/// The actor.
pub struct SealKeeper;

/// Its state: the keys.
pub struct SealKeeperState {
    seal_key: SealKey,
    attest_key: AttestKey,
}

impl Actor for SealKeeper {
    type Msg = SealKeeperMsg;
    type State = SealKeeperState;
    type Arguments = WorkerToken;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        token: WorkerToken,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SealKeeperState {
            seal_key: SealKey::derive(&token),
            attest_key: AttestKey::derive(&token),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
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
            let (keeper, handle) = Actor::spawn(None, SealKeeper, token).await.unwrap();
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
