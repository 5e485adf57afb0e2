//! Hostile load and the review's hygiene findings (issue 21): invisible characters in refs and
//! ids, an audit log path that is a symlink or adopts a world-writable file, audit floods from
//! refused challenges and forged peer records, admission that gives up with `Busy` instead of
//! waiting forever, the token file's cap, and the JSON spelling decision. (The seq-0 head that
//! vouched for any log is refused by `audit::verify_log_to_head`, tested in
//! `src/audit/verify.rs`, and by `audit verify --head`, tested in `cli/tests/cli/hostile.rs`.)
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use crate::common;

use vram_residency::SealRequest;

/// A model ref carrying bidi marks, tag characters or fillers was sealed, signed and logged:
/// two refs could look the same on screen and differ. Now refused, the code point named.
#[tokio::test]
async fn invisible_characters_are_refused_in_refs_and_ids() {
    let system = common::start(1, 16 << 20).await;
    for (c, code) in [
        ('\u{061C}', "U+061C"),
        ('\u{E0041}', "U+E0041"),
        ('\u{00AD}', "U+00AD"),
        ('\u{3164}', "U+3164"),
        ('\u{FFF9}', "U+FFF9"),
        ('\u{034F}', "U+034F"),
        ('\u{FE0F}', "U+FE0F"),
    ] {
        let err = system
            .seal(SealRequest::new(
                "s-1",
                format!("hf:org/model{c}@rev"),
                0,
                vec![1u8; 4096],
            ))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(code), "{text}");
        assert!(!text.contains(c), "{text:?}");
        let err = system
            .seal(SealRequest::new(format!("s{c}1"), "m", 0, vec![1u8; 4096]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(code), "{err}");
    }
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    // Nothing of them reached the log either.
    for line in system.audit_lines().await.unwrap() {
        assert!(
            line.chars().all(|c| !vram_residency::text::is_invisible(c)),
            "{line:?}"
        );
    }
    system.shutdown().await.unwrap();
}

#[cfg(unix)]
mod audit_log_file {
    use std::os::unix::fs::PermissionsExt;

    use super::common;
    use vram_residency::VramResidency;

    async fn start_with_log(log: &std::path::Path) -> Result<VramResidency, String> {
        VramResidency::start(common::config(1, 16 << 20).audit_log(log))
            .await
            .map_err(|e| e.to_string())
    }

    /// The audit log followed symlinks; now a link is refused, even to a good log.
    #[tokio::test]
    async fn a_symlinked_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.jsonl");
        let link = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // Dangling: not created through the link.
        let err = start_with_log(&link).await.unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!real.exists());
        // To an existing, private log: still refused.
        let system = start_with_log(&real).await.unwrap();
        system.shutdown().await.unwrap();
        let err = start_with_log(&link).await.unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }

    /// A new log is created 0600; an existing world- or group-writable one was adopted (and
    /// stayed 0666). Now refused, in the token file's words, and left as it was.
    #[tokio::test]
    async fn a_loose_log_is_refused_like_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let system = start_with_log(&log).await.unwrap();
        system.shutdown().await.unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&log), 0o600);
        let before = std::fs::read(&log).unwrap();
        for loose in [0o666, 0o620, 0o602] {
            std::fs::set_permissions(&log, std::fs::Permissions::from_mode(loose)).unwrap();
            let err = start_with_log(&log).await.unwrap_err();
            assert!(
                err.contains(&format!(
                    "is writable by group or others (mode {loose:04o}); run chmod 600 on it"
                )),
                "{err}"
            );
            assert_eq!(mode(&log), loose, "the refusal changes nothing");
            assert_eq!(std::fs::read(&log).unwrap(), before);
        }
        // Readable by others is not a reason to refuse a log (it holds no secret).
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        let system = start_with_log(&log).await.unwrap();
        system.shutdown().await.unwrap();
    }

    /// A log owned by another user is refused (run as root only: only root can give a file
    /// away).
    #[tokio::test]
    async fn a_log_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let system = start_with_log(&log).await.unwrap();
        system.shutdown().await.unwrap();
        if std::os::unix::fs::chown(&log, Some(4_242_421), None).is_err() {
            eprintln!("skipped: cannot give a file to another user here (not root)");
            return;
        }
        let err = start_with_log(&log).await.unwrap_err();
        assert!(
            err.contains("is owned by uid 4242421, not by this user"),
            "{err}"
        );
    }
}

mod floods {
    use super::common;
    use vram_residency::{
        Fault, GroupRequest, SealRequest, SealedGroup, VerifyMode, VramResidency,
    };

    const NONCE: &[u8] = b"hostile-challenger-nonce-0123";

    /// A two-part group on devices 0 and 1, part 0 corrupted and the group failed once.
    async fn failed_group(system: &VramResidency) -> SealedGroup {
        let mut request = GroupRequest::new("flood-tp2", "test:flood@v1");
        for device in 0..2u32 {
            let mut bytes = common::pattern(64 << 10);
            bytes[0] = device as u8;
            request = request.part(SealRequest::new(
                format!("flood-tp2-{device}"),
                "test:flood@v1",
                device,
                bytes,
            ));
        }
        let group = system.seal_group(request).await.unwrap();
        system
            .inject_fault(
                0,
                Fault::FlipBits {
                    shard_id: "flood-tp2-0".into(),
                    offset: 5_000,
                    mask: 0x20,
                },
            )
            .await
            .unwrap();
        let err = system.attest_group(&group, NONCE).await.unwrap_err();
        assert!(err.is_integrity_failure(), "{err}");
        group
    }

    fn event_type(line: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["event"]["type"].as_str().unwrap().to_string()
    }

    fn event(line: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["event"].clone()
    }

    /// Once a group has failed, every further `attest_group` wrote one more critical record
    /// (3,000 refused challenges: 3,000 records). Now its failure is on record once, and
    /// 10,000 refused challenges add no record until the window's summary: counted, in one
    /// `RefusalsSuppressed` per reason, written at the latest when the log closes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_refused_group_challenges_add_at_most_a_few_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let system = VramResidency::start(common::config(2, 4 << 20).audit_log(&log))
            .await
            .unwrap();
        let group = failed_group(&system).await;
        let before = system.audit_flush().await.unwrap().written;
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            let err = system.attest_group(&group, NONCE).await.unwrap_err();
            assert!(err.is_integrity_failure(), "{err}");
        }
        let took = started.elapsed();
        let stats = system.audit_flush().await.unwrap();
        let added = stats.written - before;
        eprintln!(
            "10,000 refused group challenges: {added} audit records added, {} refusals counted, {took:?}",
            stats.suppressed
        );
        assert!(
            added <= 3,
            "{added} records added by 10,000 refused challenges"
        );
        assert!(stats.suppressed >= 10_000, "{stats:?}");
        let verify = system.verify_group(&group, VerifyMode::Full).await;
        assert!(verify.is_err());
        system.shutdown().await.unwrap();

        // The log: the finding once, the summaries before the close.
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let types: Vec<String> = lines.iter().map(|l| event_type(l)).collect();
        let count = |t: &str| types.iter().filter(|x| x.as_str() == t).count();
        assert_eq!(count("GroupVerificationFailed"), 1, "{types:?}");
        assert_eq!(count("SealVerificationFailed"), 1, "{types:?}");
        assert_eq!(types.last().unwrap(), "AuditLogClosed");
        let summaries: Vec<serde_json::Value> = lines
            .iter()
            .filter(|l| event_type(l) == "RefusalsSuppressed")
            .map(|l| event(l))
            .collect();
        let group_refusals = summaries
            .iter()
            .find(|e| e["reason"] == "quarantined_group")
            .unwrap();
        assert_eq!(group_refusals["count"], 10_001, "{summaries:?}");
        assert!(group_refusals["since"].as_str().unwrap().ends_with('Z'));
        assert!(lines.len() < 40, "{types:?}");
    }

    /// Every forged `ShardInfo` handed to `verify_info` wrote one critical record. Now the first
    /// of each reason is written in full and the rest counted; the same for forged group records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_forged_peer_records_stays_bounded() {
        let system = common::start(2, 4 << 20).await;
        let shard = system
            .seal(SealRequest::new("peer-a", "m", 0, common::pattern(40_000)))
            .await
            .unwrap();
        let mut group_request = GroupRequest::new("peer-g", "m");
        for device in 0..2u32 {
            group_request = group_request.part(SealRequest::new(
                format!("peer-g-{device}"),
                "m",
                device,
                common::pattern(10_000),
            ));
        }
        let group = system.seal_group(group_request).await.unwrap();
        let released = system
            .seal(SealRequest::new("peer-b", "m", 1, common::pattern(8_000)))
            .await
            .unwrap();
        let stale = released.info().clone(); // genuine, but no longer resident
        system.release(released).await.unwrap();
        let before = system.audit_flush().await.unwrap().written;

        let mut forged = shard.info().clone();
        forged.vram_bytes += 1; // the signature no longer covers it
        let mut forged_group = group.info().clone();
        forged_group.model_ref = "other".into();

        for _ in 0..2_000 {
            assert!(
                system
                    .verify_info(&forged)
                    .await
                    .unwrap_err()
                    .is_integrity_failure()
            );
            assert!(system.verify_info(&stale).await.is_err());
            assert!(system.verify_group_info(&forged_group).await.is_err());
        }
        let stats = system.audit_flush().await.unwrap();
        let added = stats.written - before;
        eprintln!(
            "6,000 forged or stale peer records: {added} audit records added, {} counted",
            stats.suppressed
        );
        // One full record per reason (forged shard record, residency mismatch, forged group
        // record); every other refusal counted.
        assert_eq!(added, 3, "{:?}", common::audit_types(&system).await);
        assert!(stats.suppressed >= 5_997, "{stats:?}");
        let lines = system.audit_lines().await.unwrap();
        let reasons: Vec<String> = lines
            .iter()
            .filter(|l| {
                matches!(
                    event_type(l).as_str(),
                    "SealVerificationFailed" | "GroupVerificationFailed"
                )
            })
            .map(|l| event(l)["reason"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].contains("signature does not verify"),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("residency mismatch"), "{reasons:?}");
        assert!(reasons[2].contains("GroupInfo"), "{reasons:?}");
        // The genuine records still verify.
        system.verify_info(shard.info()).await.unwrap();
        system.verify_group_info(group.info()).await.unwrap();
        system.shutdown().await.unwrap();
    }

    /// With the in-memory sink, the newest lines were all copies of the refusal and the
    /// original finding (bad chunk, group) had been evicted. Critical records are now kept
    /// apart from the ring of ordinary ones: no amount of ordinary records evicts them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_original_evidence_stays_in_the_in_memory_sink() {
        let system = VramResidency::start(common::config(3, 4 << 20).audit_memory_lines(16))
            .await
            .unwrap();
        let group = failed_group(&system).await;
        let healthy = system
            .seal(SealRequest::new("healthy", "m", 2, common::pattern(20_000)))
            .await
            .unwrap();
        for _ in 0..200 {
            system.verify(&healthy, VerifyMode::Full).await.unwrap();
            assert!(system.attest_group(&group, NONCE).await.is_err());
        }
        let stats = system.audit_flush().await.unwrap();
        assert!(stats.evicted > 150, "{stats:?}");
        let lines = system.audit_lines().await.unwrap();
        let finding = lines
            .iter()
            .find(|l| event_type(l) == "SealVerificationFailed")
            .expect("the shard's failure is still there");
        let finding = event(finding);
        assert_eq!(finding["shard_id"], "flood-tp2-0");
        assert_eq!(finding["first_bad_chunk"], 1);
        assert!(
            lines
                .iter()
                .any(|l| event_type(l) == "GroupVerificationFailed")
        );
        // In sequence order, the newest ordinary records after them.
        let seqs: Vec<u64> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(event_type(lines.last().unwrap()), "SealVerified");
        system.shutdown().await.unwrap();
    }
}

mod admission {
    use std::time::Duration;

    use super::common;
    use vram_residency::{Fault, SealRequest, VerifyMode, VramError, VramResidency};

    /// A caller waiting for a device slot waited without end. Now it gets `Busy` after the
    /// admission timeout (retriable, not audited); a request keeps its slot until its off-actor
    /// hashing has finished, even when its caller gave up; status queries do not wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_past_the_admission_timeout_gets_busy_and_status_queries_never_wait() {
        let system = VramResidency::start(
            common::config(2, 4 << 20)
                .device_queue_limit(1)
                .admission_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        let shard = system
            .seal(SealRequest::new("held", "m", 0, common::pattern(64 << 10)))
            .await
            .unwrap();
        system
            .inject_fault(
                0,
                Fault::SlowDevice {
                    millis_per_read: 6_000,
                },
            )
            .await
            .unwrap();
        let written = system.audit_flush().await.unwrap().written;

        // One verification takes the only slot and hashes (slowly: 6 s, far longer than the
        // steps below take even on a loaded machine) off the actor.
        let holder = {
            let (system, shard) = (system.clone(), shard.clone());
            tokio::spawn(async move { system.verify(&shard, VerifyMode::Full).await })
        };
        assert!(
            common::eventually(|| async { system.device_load(0).unwrap().in_flight == 1 }).await
        );
        // Status queries answer while it hashes.
        let capacity = system.capacity(0).await.unwrap();
        assert_eq!(capacity.used_bytes, 64 << 10);
        assert_eq!(system.devices().await.unwrap().len(), 2);
        assert!(
            !holder.is_finished(),
            "the status queries did not wait for the hashing"
        );

        // The next caller gives up after the admission timeout: Busy, retriable.
        let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
        assert_eq!(err, VramError::Busy { device: 0 });
        assert!(err.is_retriable());
        assert!(err.to_string().contains("device 0 is busy"), "{err}");
        let load = system.device_load(0).unwrap();
        assert_eq!((load.in_flight, load.waiting), (1, 0));
        // Not audited.
        assert!(!holder.is_finished());
        assert_eq!(system.audit_flush().await.unwrap().written, written);

        // The holder's caller gives up: its slot stays taken until the hashing is over.
        holder.abort();
        assert!(holder.await.unwrap_err().is_cancelled());
        assert_eq!(system.device_load(0).unwrap().in_flight, 1);
        let mut waited = 0;
        while system.device_load(0).unwrap().in_flight != 0 {
            assert!(waited < 600, "the slot was never given back");
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        system
            .inject_fault(0, Fault::SlowDevice { millis_per_read: 0 })
            .await
            .unwrap();
        system.verify(&shard, VerifyMode::Full).await.unwrap();
        system.shutdown().await.unwrap();
    }
}

/// The decision (`.specs/00_decisions.md`, Formats): signatures cover decoded values, not JSON
/// text. Escapes, whitespace and member order may differ between two texts that carry the same
/// valid signature; they decode to the same record, which re-serialises to one canonical text.
/// What differs in value does not verify, and a value's second spelling (uppercase hex) is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_spellings_decode_to_the_signed_values() {
    use vram_residency::{GroupInfo, GroupRequest, ShardInfo};
    let system = common::start(2, 4 << 20).await;
    let mut request = GroupRequest::new("ga-0", "hf:org/m@r");
    for device in 0..2u32 {
        request = request.part(SealRequest::new(
            format!("ga-0-{device}"),
            "hf:org/m@r",
            device,
            common::pattern(9_000),
        ));
    }
    let group = system.seal_group(request).await.unwrap();
    let canonical = serde_json::to_string(group.info()).unwrap();

    // Another spelling: an escape, whitespace, and the members in reverse order.
    let value: serde_json::Value = serde_json::from_str(&canonical).unwrap();
    let mut respelled = String::from("{ ");
    let object = value.as_object().unwrap();
    let members: Vec<String> = object
        .iter()
        .rev()
        .map(|(k, v)| format!("\n  {:?} :  {}", k, v))
        .collect();
    respelled.push_str(&members.join(" ,"));
    respelled.push_str("\n}");
    let respelled = respelled.replacen("\"ga-0\"", "\"ga\\u002d0\"", 1);
    assert_ne!(respelled, canonical);
    assert!(respelled.contains("ga\\u002d0"));
    let decoded: GroupInfo = serde_json::from_str(&respelled).unwrap();
    assert_eq!(&decoded, group.info());
    assert_eq!(serde_json::to_string(&decoded).unwrap(), canonical);
    system.verify_group_info(&decoded).await.unwrap();
    let member_text = serde_json::to_string(&group.info().members[0])
        .unwrap()
        .replace(',', " ,\t");
    let member: ShardInfo = serde_json::from_str(&member_text).unwrap();
    system.verify_info(&member).await.unwrap();

    // A different value under the same signature does not verify …
    let altered = respelled.replacen("ga\\u002d0", "ga\\u002d1", 1);
    let altered: GroupInfo = serde_json::from_str(&altered).unwrap();
    assert!(system.verify_group_info(&altered).await.is_err());
    // … and a value's other spelling is refused.
    let upper = canonical.replace(
        &group.info().signature,
        &group.info().signature.to_uppercase(),
    );
    let upper: GroupInfo = serde_json::from_str(&upper).unwrap();
    assert!(system.verify_group_info(&upper).await.is_err());
    system.shutdown().await.unwrap();
}

/// The token file is read into one buffer sized from its length: a file beyond the cap is
/// refused before anything is read, and one trailing newline is still ignored.
#[cfg(unix)]
#[test]
fn the_token_file_is_capped() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, vec![b'a'; (64 << 10) + 1]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = vram_residency::config::read_token_file(&path)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("holds at most 65536 bytes"),
        "{err}"
    );
    std::fs::write(&path, format!("{}\r\n", common::TOKEN)).unwrap();
    let secret = vram_residency::config::read_secret_file(&path).unwrap();
    assert_eq!(secret.as_slice(), common::TOKEN.as_bytes());
}
