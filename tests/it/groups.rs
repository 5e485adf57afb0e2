//! Tensor-parallel groups through the public API: a 4-device group seals, verifies, fails as a
//! whole when one member is corrupted (fail-all), and releases to the starting accounting; a
//! failure part-way through sealing rolls every part back; bad requests allocate nothing; a
//! peer checks a `GroupInfo` with the token alone; one challenge attests every member.
#![allow(clippy::unwrap_used)] // test code fails loudly

use crate::common;

use std::time::Duration;

use vram_residency::{
    AttestationPolicy, Fault, GroupInfo, GroupRequest, SealRequest, SealedGroup, VerifyMode,
    VramCapacity, VramError, VramResidency, WorkerToken, verify_group_attestation,
    verify_group_attestation_with,
};

const MODEL: &str = "hf:org/llama-70b@rev";
const SIZES: [usize; 4] = [10_000, 1, 3 * 4096, 9_000];

fn token() -> WorkerToken {
    WorkerToken::new(common::TOKEN.as_bytes().to_vec()).unwrap()
}

async fn capacities(system: &VramResidency) -> Vec<VramCapacity> {
    let mut out = Vec::new();
    for d in 0..system.device_count() {
        out.push(system.capacity(d).await.unwrap());
    }
    out
}

/// Part `i` of group `id`: shard `{id}-{i}` of `SIZES[i]` bytes on device `i`.
fn part(id: &str, i: u32) -> SealRequest {
    let len = SIZES.get(i as usize).copied().unwrap();
    let mut bytes = common::pattern(len);
    bytes.iter_mut().for_each(|b| *b ^= i as u8);
    SealRequest::new(format!("{id}-{i}"), MODEL, i, bytes)
}

fn tp4(id: &str) -> GroupRequest {
    (0..4).fold(GroupRequest::new(id, MODEL), |g, i| g.part(part(id, i)))
}

async fn seal_tp4(system: &VramResidency, id: &str) -> SealedGroup {
    system.seal_group(tp4(id)).await.unwrap()
}

fn count(types: &[String], name: &str) -> usize {
    types.iter().filter(|t| *t == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_device_group_seals_verifies_fails_as_a_whole_and_releases_to_the_start() {
    let system = common::start(4, 1 << 20).await;
    let start = capacities(&system).await;
    let group = seal_tp4(&system, "llama-tp4").await;

    // The record: members in order, tagged with their position, bound under the seal key.
    let info = group.info();
    assert_eq!(info.group_id, "llama-tp4");
    assert_eq!(info.worker_id, "worker-test");
    assert_eq!(info.members.len(), 4);
    for (i, m) in info.members.iter().enumerate() {
        assert_eq!(m.shard_id, format!("llama-tp4-{i}"));
        assert_eq!((m.shard_index, m.total_shards), (Some(i as u32), Some(4)));
        assert_eq!(m.gpu_device, i as u32);
        assert_eq!(m.vram_bytes, SIZES[i] as u64);
        assert_eq!(&m, &group.shards()[i].info());
    }
    info.verify(&token()).unwrap();
    for (d, cap) in capacities(&system).await.iter().enumerate() {
        assert_eq!(cap.used_bytes, start[d].used_bytes + SIZES[d] as u64);
    }

    let reports = system.verify_group(&group, VerifyMode::Full).await.unwrap();
    assert_eq!(reports.len(), 4);
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.shard_id, format!("llama-tp4-{i}"));
        assert_eq!(r.chunks_checked, r.total_chunks);
        assert_eq!(r.bytes_checked, SIZES[i] as u64);
    }
    let len = system
        .execute(&group.shards()[0], |view| view.len())
        .await
        .unwrap();
    assert_eq!(len, SIZES[0] as u64);

    // One member corrupted: the whole group fails, naming that member and its bad chunk.
    system
        .inject_fault(
            2,
            Fault::FlipBits {
                shard_id: "llama-tp4-2".into(),
                offset: 5_000,
                mask: 0x20,
            },
        )
        .await
        .unwrap();
    let err = system
        .verify_group(&group, VerifyMode::Full)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("llama-tp4-2") && text.contains("first bad chunk 1"),
        "{text}"
    );
    assert!(err.is_integrity_failure());
    match &err {
        VramError::GroupMember {
            group_id,
            shard_index: 2,
            shard_id,
            cause,
        } => {
            assert_eq!(
                (group_id.as_str(), shard_id.as_str()),
                ("llama-tp4", "llama-tp4-2")
            );
            assert!(matches!(
                **cause,
                VramError::SealVerificationFailed {
                    first_bad_chunk: Some(1),
                    bad_chunk_count: 1,
                    ..
                }
            ));
        }
        other => panic!("{other:?}"),
    }

    // Fail-all: no member executes or attests any more; each says which member failed.
    for i in [0usize, 1, 3] {
        let refused = system
            .execute(&group.shards()[i], |view| view.len())
            .await
            .unwrap_err();
        match refused {
            VramError::GroupQuarantined {
                shard_id,
                group_id,
                failed_shard_id,
            } => {
                assert_eq!(shard_id, format!("llama-tp4-{i}"));
                assert_eq!(group_id, "llama-tp4");
                assert_eq!(failed_shard_id, "llama-tp4-2");
            }
            other => panic!("member {i}: {other:?}"),
        }
    }
    assert!(
        system
            .execute(&group.shards()[2], |view| view.len())
            .await
            .unwrap_err()
            .is_integrity_failure()
    );
    let nonce = [7u8; 32];
    assert!(system.attest_group(&group, &nonce).await.is_err());
    // A second check still names the member that is actually bad.
    let again = system
        .verify_group(&group, VerifyMode::SignatureOnly)
        .await
        .unwrap_err();
    assert!(
        matches!(&again, VramError::GroupMember { shard_id, .. } if shard_id == "llama-tp4-2"),
        "{again:?}"
    );

    // Only the failing member's device stopped; the others keep serving other shards.
    let other = system
        .seal(SealRequest::new(
            "unrelated",
            MODEL,
            0,
            common::pattern(4096),
        ))
        .await
        .unwrap();
    system.execute(&other, |view| view.len()).await.unwrap();
    assert!(matches!(
        system
            .seal(SealRequest::new(
                "unrelated-2",
                MODEL,
                2,
                common::pattern(4096)
            ))
            .await,
        Err(VramError::DeviceStopped { device: 2, .. })
    ));
    system.release(other).await.unwrap();

    // The audit log has the member's failure, the group's, and each member quarantined.
    let types = common::audit_types(&system).await;
    assert!(count(&types, "SealVerificationFailed") >= 1, "{types:?}");
    assert_eq!(count(&types, "GroupSealed"), 1, "{types:?}");
    assert!(count(&types, "GroupVerificationFailed") >= 1, "{types:?}");
    assert_eq!(count(&types, "GroupMemberQuarantined"), 3, "{types:?}");
    let first_member_failure = types
        .iter()
        .position(|t| t == "SealVerificationFailed")
        .unwrap();
    let first_group_failure = types
        .iter()
        .position(|t| t == "GroupVerificationFailed")
        .unwrap();
    assert!(first_member_failure < first_group_failure, "{types:?}");

    let twice = group.clone();
    let freed = system.release_group(group).await.unwrap();
    assert_eq!(freed, SIZES.iter().sum::<usize>() as u64);
    assert!(matches!(
        system.release_group(twice).await,
        Err(VramError::UnknownShard(id)) if id == "llama-tp4"
    ));
    assert_eq!(capacities(&system).await, start);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_failure_part_way_through_rolls_every_part_back() {
    let system = common::start(4, 1 << 20).await;
    let start = capacities(&system).await;
    system.inject_fault(2, Fault::FailNextAlloc).await.unwrap();
    let err = system.seal_group(tp4("tp4-roll")).await.unwrap_err();
    assert!(err.to_string().contains("tp4-roll-2"), "{err}");
    assert!(err.is_retriable(), "{err:?}");
    match &err {
        VramError::GroupMember {
            shard_index: 2,
            shard_id,
            cause,
            ..
        } => {
            assert_eq!(shard_id, "tp4-roll-2");
            assert!(
                matches!(**cause, VramError::AllocationFailed { device: 2, .. }),
                "{cause:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Every device is where it started when the call returns, with nothing resident.
    assert_eq!(capacities(&system).await, start);
    for d in system.devices().await.unwrap() {
        assert_eq!(d.shards, 0);
    }
    let types = common::audit_types(&system).await;
    assert_eq!(count(&types, "GroupSealAborted"), 1, "{types:?}");
    assert_eq!(
        count(&types, "VramSealed"),
        count(&types, "VramDeallocated")
    );

    // The ids are free again: the same group seals now.
    let group = seal_tp4(&system, "tp4-roll").await;
    system.verify_group(&group, VerifyMode::Full).await.unwrap();
    system.release_group(group).await.unwrap();
    assert_eq!(capacities(&system).await, start);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_without_room_rolls_the_group_back_and_names_the_part() {
    let system = common::start(4, 64 << 10).await;
    let start = capacities(&system).await;
    let request = GroupRequest::new("too-big", MODEL)
        .part(SealRequest::new(
            "too-big-0",
            MODEL,
            0,
            common::pattern(8192),
        ))
        .part(SealRequest::new(
            "too-big-1",
            MODEL,
            1,
            common::pattern(128 << 10),
        ))
        .part(SealRequest::new(
            "too-big-2",
            MODEL,
            2,
            common::pattern(8192),
        ));
    let err = system.seal_group(request).await.unwrap_err();
    assert!(err.to_string().contains("too-big-1"), "{err}");
    assert!(
        matches!(err.innermost(), VramError::InsufficientVram { .. }),
        "{err:?}"
    );
    assert_eq!(capacities(&system).await, start);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_are_invalid_input_and_allocate_nothing() {
    let system = common::start(4, 1 << 20).await;
    let start = capacities(&system).await;
    let p = |id: &str, device: u32| SealRequest::new(id, MODEL, device, common::pattern(4096));
    let cases: Vec<(&str, GroupRequest, &str)> = vec![
        (
            "bad group id",
            GroupRequest::new("bad id", MODEL).part(p("a", 0)),
            "group_id",
        ),
        (
            "bad group model ref",
            GroupRequest::new("g", "hf:\u{7}bell").part(p("a", 0)),
            "model_ref",
        ),
        ("no parts", GroupRequest::new("g", MODEL), "no parts"),
        (
            "two parts with one id",
            GroupRequest::new("g", MODEL)
                .part(p("same", 0))
                .part(p("same", 1)),
            "same shard id",
        ),
        (
            "bad member id",
            GroupRequest::new("g", MODEL)
                .part(p("ok", 0))
                .part(p("a/b", 1)),
            "part 1",
        ),
        (
            "bad member model ref",
            GroupRequest::new("g", MODEL)
                .part(p("ok", 0))
                .part(SealRequest::new("m1", "a\0b", 1, common::pattern(10))),
            "m1",
        ),
        (
            "device out of range",
            GroupRequest::new("g", MODEL)
                .part(p("ok", 0))
                .part(p("far", 9)),
            "far",
        ),
        (
            "position disagrees",
            GroupRequest::new("g", MODEL)
                .part(p("g-0", 0))
                .part(p("g-1", 1).tensor_parallel(0, 2)),
            "tensor_parallel(0, 2)",
        ),
        (
            "total disagrees",
            GroupRequest::new("g", MODEL)
                .part(p("g-0", 0).tensor_parallel(0, 3))
                .part(p("g-1", 1)),
            "part 0 of 2",
        ),
        (
            "empty part",
            GroupRequest::new("g", MODEL)
                .part(p("ok", 0))
                .part(SealRequest::new("empty", MODEL, 1, Vec::new())),
            "empty",
        ),
        (
            "bad expected digest",
            GroupRequest::new("g", MODEL).part(p("ok", 0).expected_sha256("zz")),
            "expected_sha256",
        ),
    ];
    for (what, request, needle) in cases {
        match system.seal_group(request).await {
            Err(VramError::InvalidInput(m)) => assert!(m.contains(needle), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // A missing part file is that member's I/O error (NotFound), found before anything is
    // allocated.
    let missing =
        system
            .seal_group(GroupRequest::new("g", MODEL).part(p("ok", 0)).part(
                SealRequest::from_file(
                    "file-part",
                    MODEL,
                    1,
                    "/nonexistent/vram-residency/part.bin",
                ),
            ))
            .await;
    match &missing {
        Err(VramError::GroupMember {
            shard_index: 1,
            shard_id,
            cause,
            ..
        }) if shard_id == "file-part"
            && matches!(
                **cause,
                VramError::Io {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                }
            ) => {}
        other => panic!("missing file: {other:?}"),
    }
    assert_eq!(capacities(&system).await, start);
    let types = common::audit_types(&system).await;
    assert_eq!(count(&types, "VramAllocated"), 0, "{types:?}");

    // Positions that agree are accepted.
    let group = system
        .seal_group(
            GroupRequest::new("g", MODEL)
                .part(p("g-0", 0).tensor_parallel(0, 2))
                .part(p("g-1", 1)),
        )
        .await
        .unwrap();
    assert_eq!(group.info().members[1].shard_index, Some(1));
    system.release_group(group).await.unwrap();

    // An id already resident is found by the device: rolled back, still InvalidInput.
    let held = system.seal(p("taken", 1)).await.unwrap();
    let err = system
        .seal_group(
            GroupRequest::new("g2", MODEL)
                .part(p("free", 0))
                .part(p("taken", 1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VramError::InvalidInput(m) if m.contains("part 1 (taken)")),
        "{err:?}"
    );
    system.release(held).await.unwrap();
    assert_eq!(capacities(&system).await, start);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_checks_a_group_info_with_the_token_alone() {
    let system = common::start(4, 1 << 20).await;
    let group = seal_tp4(&system, "peer-tp4").await;
    // What travels is JSON; the peer holds only the token.
    let json = serde_json::to_string(group.info()).unwrap();
    assert!(json.starts_with(
        r#"{"format":"vram-group-v1","worker_id":"worker-test","group_id":"peer-tp4","model_ref":"#
    ));
    let received: GroupInfo = serde_json::from_str(&json).unwrap();
    received.verify(&token()).unwrap();
    system.verify_group_info(&received).await.unwrap();

    let mut tampered = received.clone();
    tampered.members[1].digest = "00".repeat(32);
    assert!(matches!(
        tampered.verify(&token()),
        Err(VramError::SealVerificationFailed { shard_id, .. }) if shard_id == "peer-tp4-1"
    ));
    assert!(system.verify_group_info(&tampered).await.is_err());

    let mut swapped = received.clone();
    swapped.members.swap(1, 2);
    assert!(matches!(
        swapped.verify(&token()),
        Err(VramError::InvalidInput(m)) if m.contains("shard_index")
    ));
    // Even re-tagged to match their new places, swapped members break their own seals.
    for (i, m) in swapped.members.iter_mut().enumerate() {
        m.shard_index = Some(i as u32);
    }
    assert!(swapped.verify(&token()).is_err());

    let mut wrong_total = received.clone();
    wrong_total.members.truncate(3);
    assert!(matches!(
        wrong_total.verify(&token()),
        Err(VramError::InvalidInput(m)) if m.contains("total_shards 4")
    ));

    let mut wrong_signature = received.clone();
    let mut sig = wrong_signature.signature.into_bytes();
    sig[0] = if sig[0] == b'0' { b'1' } else { b'0' };
    wrong_signature.signature = String::from_utf8(sig).unwrap();
    assert!(matches!(
        wrong_signature.verify(&token()),
        Err(VramError::SealVerificationFailed { shard_id, .. }) if shard_id == "peer-tp4"
    ));
    assert!(system.verify_group_info(&wrong_signature).await.is_err());

    let other = WorkerToken::new(b"some-other-worker-token".to_vec()).unwrap();
    assert!(received.verify(&other).is_err());
    system.release_group(group).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_challenge_attests_every_member() {
    let system = common::start(4, 1 << 20).await;
    let group = seal_tp4(&system, "att-tp4").await;
    let nonce = *b"control-plane-nonce-0001";
    let att = system.attest_group(&group, &nonce).await.unwrap();
    assert_eq!(&att.group, group.info());
    assert_eq!(att.members.len(), 4);
    for (i, a) in att.members.iter().enumerate() {
        assert_eq!(&a.shard, &group.info().members[i]);
        assert_eq!(a.nonce, hex::encode(nonce));
        assert_eq!(a.audit_head, att.members[0].audit_head);
    }
    // It travels as JSON and checks with the token and the nonce alone.
    let back: vram_residency::GroupAttestation =
        serde_json::from_str(&serde_json::to_string(&att).unwrap()).unwrap();
    verify_group_attestation(&back, &token(), &nonce).unwrap();
    let policy = AttestationPolicy::default()
        .max_age(Duration::from_secs(300))
        .require_mode(VerifyMode::Full);
    verify_group_attestation_with(&back, &token(), &nonce, &policy).unwrap();
    assert!(
        verify_group_attestation_with(
            &back,
            &token(),
            &nonce,
            &policy.clone().require_device_memory(true)
        )
        .is_err()
    );
    assert!(verify_group_attestation(&back, &token(), b"another-nonce-of-some-length").is_err());
    let mut reordered = back.clone();
    reordered.members.swap(0, 1);
    assert!(verify_group_attestation(&reordered, &token(), &nonce).is_err());
    let mut short = back.clone();
    short.members.pop();
    assert!(verify_group_attestation(&short, &token(), &nonce).is_err());
    assert!(matches!(
        system.attest_group(&group, b"short").await,
        Err(VramError::InvalidInput(_))
    ));
    system.release_group(group).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_group_releases_each_member_once_its_last_handle_is_gone() {
    let system = common::start(4, 1 << 20).await;
    let start = capacities(&system).await;
    let group = seal_tp4(&system, "drop-tp4").await;
    let kept = group.shards()[1].clone();
    drop(group);
    let s = system.clone();
    assert!(
        common::eventually(|| {
            let s = s.clone();
            let start = start.clone();
            async move {
                let caps = capacities(&s).await;
                caps[0] == start[0] && caps[2] == start[2] && caps[3] == start[3]
            }
        })
        .await
    );
    assert_eq!(
        system.capacity(1).await.unwrap().used_bytes,
        start[1].used_bytes + SIZES[1] as u64
    );
    system.verify(&kept, VerifyMode::Full).await.unwrap();
    drop(kept);
    let s = system.clone();
    assert!(
        common::eventually(|| {
            let s = s.clone();
            let start = start.clone();
            async move { capacities(&s).await == start }
        })
        .await
    );
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_released_on_its_own_fails_the_check_without_quarantining_the_rest() {
    let system = common::start(4, 1 << 20).await;
    let start = capacities(&system).await;
    let group = seal_tp4(&system, "part-tp4").await;
    system.release(group.shards()[0].clone()).await.unwrap();
    let err = system
        .verify_group(&group, VerifyMode::Full)
        .await
        .unwrap_err();
    assert!(
        matches!(err.innermost(), VramError::UnknownShard(id) if id == "part-tp4-0"),
        "{err:?}"
    );
    assert!(!err.is_integrity_failure());
    system
        .execute(&group.shards()[1], |view| view.len())
        .await
        .unwrap();
    let freed = system.release_group(group).await.unwrap();
    assert_eq!(freed, SIZES[1..].iter().sum::<usize>() as u64);
    assert_eq!(capacities(&system).await, start);
    let types = common::audit_types(&system).await;
    assert_eq!(count(&types, "GroupMemberQuarantined"), 0, "{types:?}");
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_group_verification_still_fails_the_whole_group() {
    let system = common::start(4, 1 << 20).await;
    let group = seal_tp4(&system, "tp4-dropped").await;
    // Member 2 is corrupt, and its device slow enough that the caller gives up first.
    system
        .inject_fault(
            2,
            Fault::FlipBits {
                shard_id: "tp4-dropped-2".into(),
                offset: 7,
                mask: 1,
            },
        )
        .await
        .unwrap();
    system
        .inject_fault(
            2,
            Fault::SlowDevice {
                millis_per_read: 300,
            },
        )
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        system.verify_group(&group, VerifyMode::Full),
    )
    .await;
    assert!(abandoned.is_err(), "the verification finished within 50 ms");
    // The group's verdict still runs: fail-all quarantines the intact members too.
    let member0 = group.shards()[0].clone();
    let quarantined = common::eventually(|| async {
        matches!(
            system.verify(&member0, VerifyMode::SignatureOnly).await,
            Err(VramError::GroupQuarantined { .. })
        )
    })
    .await;
    assert!(
        quarantined,
        "{:?}",
        system.verify(&member0, VerifyMode::SignatureOnly).await
    );
    system.shutdown().await.unwrap();
}
