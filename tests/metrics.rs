//! The metrics the crate records (see `vram_residency::telemetry`), read back through a
//! recorder installed for this test binary alone: the device memory gauges follow seals and
//! releases, every `seal` outcome is counted by result, and verifications are counted by mode,
//! result and trigger (request or background scrub) with a duration for each verdict, and the
//! group calls count each member.
//!
//! The recorder is global and the actors record from their own threads, so the tests here run
//! one at a time (a lock) and each reads only what happened since its own first snapshot. The
//! debugging recorder hands counters out as deltas (a snapshot resets them) and gauges as set
//! since the last snapshot, so a test reads gauges right after something published them.
#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::panic,
    clippy::indexing_slicing
)] // test code fails loudly

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use common::{config, pattern};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use vram_residency::telemetry::{
    DEVICE_AVAILABLE_BYTES, DEVICE_TOTAL_BYTES, DEVICE_USED_BYTES, REFUSALS_TOTAL, SEALS_TOTAL,
    VERIFICATION_DURATION_SECONDS, VERIFICATIONS_TOTAL,
};
use vram_residency::{Fault, GroupRequest, SealRequest, VerifyMode, VramError, VramResidency};

const CAPACITY: u64 = 16 << 20;

/// Tests that record metrics run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

/// A metric's name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    (name.to_string(), labels)
}

/// What the crate recorded since this reader was made: counters and histogram samples add up
/// over snapshots; gauges hold what the latest snapshot saw.
struct Recorded {
    counters: HashMap<Series, u64>,
    histograms: HashMap<Series, Vec<f64>>,
    gauges: HashMap<Series, f64>,
}

impl Recorded {
    /// Starts from now: whatever was recorded before is read and discarded.
    fn from_now() -> Self {
        let _ = snapshotter().snapshot();
        Self {
            counters: HashMap::new(),
            histograms: HashMap::new(),
            gauges: HashMap::new(),
        }
    }

    fn read(&mut self) {
        self.gauges.clear();
        for (key, _, _, value) in snapshotter().snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            let id = (key.name().to_string(), labels);
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *self.counters.entry(id).or_default() += n;
                }
                (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                    self.gauges.insert(id, v.into_inner());
                }
                (MetricKind::Histogram, DebugValue::Histogram(vs)) => self
                    .histograms
                    .entry(id)
                    .or_default()
                    .extend(vs.into_iter().map(|v| v.into_inner())),
                other => panic!("unexpected metric value {other:?}"),
            }
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .get(&series(name, labels))
            .copied()
            .unwrap_or(0)
    }

    /// Every counter of that name, whatever its labels.
    fn counter_sum(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    fn gauge(&self, name: &str, device: u32) -> f64 {
        let device = device.to_string();
        *self
            .gauges
            .get(&series(name, &[("gpu_device", &device)]))
            .unwrap_or_else(|| panic!("no gauge {name} for device {device}"))
    }

    fn durations(&self, mode: &str) -> Vec<f64> {
        self.histograms
            .get(&series(VERIFICATION_DURATION_SECONDS, &[("mode", mode)]))
            .cloned()
            .unwrap_or_default()
    }

    fn verifications(&self, mode: &str, result: &str, trigger: &str) -> u64 {
        self.counter(
            VERIFICATIONS_TOTAL,
            &[("mode", mode), ("result", result), ("trigger", trigger)],
        )
    }
}

/// Waits until every device actor has handled everything sent to it before (a status query is
/// answered in mailbox order), so the gauges they publish after a message are in place.
async fn settle(system: &VramResidency) {
    system.devices().await.unwrap();
}

fn memory(recorded: &Recorded, device: u32) -> (f64, f64, f64) {
    (
        recorded.gauge(DEVICE_TOTAL_BYTES, device),
        recorded.gauge(DEVICE_USED_BYTES, device),
        recorded.gauge(DEVICE_AVAILABLE_BYTES, device),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_gauges_follow_seals_and_releases_and_seals_are_counted_by_result() {
    let _serial = SERIAL.lock().await;
    let mut recorded = Recorded::from_now();
    let headroom = 1 << 20;
    let system = VramResidency::start(config(2, CAPACITY).headroom_bytes(headroom))
        .await
        .unwrap();
    settle(&system).await;
    recorded.read();
    let cap = CAPACITY as f64;
    let free = (CAPACITY - headroom) as f64;
    // Each device publishes its figures as it starts.
    assert_eq!(memory(&recorded, 0), (cap, 0.0, free));
    assert_eq!(memory(&recorded, 1), (cap, 0.0, free));

    // A seal on device 1 shows in its gauges (and only in its).
    let len = (1 << 20) + 5;
    let bytes = pattern(len);
    let shard = system
        .seal(SealRequest::new("gauged", "test:gauges", 1, bytes.clone()))
        .await
        .unwrap();
    system.capacity(0).await.unwrap(); // device 0 republishes: nothing changed there
    settle(&system).await;
    recorded.read();
    assert_eq!(memory(&recorded, 1), (cap, len as f64, free - len as f64));
    assert_eq!(memory(&recorded, 0), (cap, 0.0, free));
    let cap1 = system.capacity(1).await.unwrap();
    assert_eq!(recorded.gauge(DEVICE_USED_BYTES, 1), cap1.used_bytes as f64);
    assert_eq!(
        recorded.gauge(DEVICE_AVAILABLE_BYTES, 1),
        cap1.available_bytes as f64
    );
    assert_eq!(recorded.counter(SEALS_TOTAL, &[("result", "ok")]), 1);

    // The release brings them back to where they started.
    system.release(shard).await.unwrap();
    settle(&system).await;
    recorded.read();
    assert_eq!(memory(&recorded, 1), (cap, 0.0, free));

    // Every failing seal is counted, by what went wrong; none leaves anything used.
    let bad_id = system
        .seal(SealRequest::new(
            "no spaces",
            "test:gauges",
            0,
            bytes.clone(),
        ))
        .await;
    assert!(matches!(bad_id, Err(VramError::InvalidInput(_))));
    let too_big = system
        .seal(SealRequest::new(
            "too-big",
            "test:gauges",
            0,
            vec![1u8; (CAPACITY - headroom + 1) as usize],
        ))
        .await;
    assert!(matches!(too_big, Err(VramError::InsufficientVram { .. })));
    let wrong_digest = system
        .seal(
            SealRequest::new("wrong-digest", "test:gauges", 1, bytes.clone())
                .expected_sha256("00".repeat(32)),
        )
        .await;
    assert!(matches!(
        wrong_digest,
        Err(VramError::DigestMismatch { .. })
    ));
    system.inject_fault(1, Fault::FailNextAlloc).await.unwrap();
    let no_alloc = system
        .seal(SealRequest::new("no-alloc", "test:gauges", 1, bytes))
        .await;
    assert!(matches!(no_alloc, Err(VramError::AllocationFailed { .. })));
    settle(&system).await;
    recorded.read();
    for result in [
        "invalid_input",
        "insufficient_vram",
        "digest_mismatch",
        "allocation_failed",
    ] {
        assert_eq!(
            recorded.counter(SEALS_TOTAL, &[("result", result)]),
            1,
            "{result}"
        );
    }
    assert_eq!(recorded.counter_sum(SEALS_TOTAL), 5);
    assert_eq!(memory(&recorded, 1), (cap, 0.0, free));
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifications_are_counted_by_mode_and_result_with_their_durations() {
    let _serial = SERIAL.lock().await;
    let mut recorded = Recorded::from_now();
    let system = VramResidency::start(config(1, CAPACITY)).await.unwrap();
    let shard = system
        .seal(SealRequest::new(
            "checked",
            "test:verify",
            0,
            pattern(256 << 10),
        ))
        .await
        .unwrap();
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    system
        .verify(&shard, VerifyMode::Sampled { chunks: 4 })
        .await
        .unwrap();
    system
        .verify(&shard, VerifyMode::SignatureOnly)
        .await
        .unwrap();
    system.verify_info(shard.info()).await.unwrap();
    // `execute` and `attest` verify first (Config::execute_verify, Full by default): counted.
    system.execute(&shard, |view| view.len()).await.unwrap();
    system.attest(&shard, &[7u8; 32]).await.unwrap();
    recorded.read();
    assert_eq!(recorded.verifications("full", "pass", "request"), 3);
    assert_eq!(recorded.verifications("sampled", "pass", "request"), 1);
    assert_eq!(
        recorded.verifications("signature_only", "pass", "request"),
        2
    );
    assert_eq!(recorded.counter_sum(VERIFICATIONS_TOTAL), 6);
    assert_eq!(recorded.durations("full").len(), 3);
    assert_eq!(recorded.durations("sampled").len(), 1);
    assert_eq!(recorded.durations("signature_only").len(), 2);
    for d in ["full", "sampled", "signature_only"]
        .iter()
        .flat_map(|m| recorded.durations(m))
    {
        assert!(d.is_finite() && d >= 0.0, "duration {d}");
    }

    // A request that checks nothing is not a verification.
    let zero = system
        .verify(&shard, VerifyMode::Sampled { chunks: 0 })
        .await;
    assert!(matches!(zero, Err(VramError::InvalidInput(_))));
    // A forged record fails its check.
    let mut forged = shard.info().clone();
    forged.vram_bytes += 1;
    assert!(system.verify_info(&forged).await.is_err());
    recorded.read();
    assert_eq!(
        recorded.verifications("signature_only", "fail", "request"),
        1
    );
    assert_eq!(recorded.counter_sum(VERIFICATIONS_TOTAL), 7);
    // … and is counted as a refusal (only the first per reason and minute is audited in full).
    assert_eq!(recorded.counter_sum(REFUSALS_TOTAL), 1);

    // Corruption: the verification that finds it fails, and so does every later one (the shard
    // is quarantined); each has a duration.
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "checked".into(),
                offset: 5000,
                mask: 0x10,
            },
        )
        .await
        .unwrap();
    let caught = system.verify(&shard, VerifyMode::Full).await;
    assert!(matches!(
        caught,
        Err(VramError::SealVerificationFailed { .. })
    ));
    let refused = system
        .verify(&shard, VerifyMode::Sampled { chunks: 2 })
        .await;
    assert!(matches!(
        refused,
        Err(VramError::SealVerificationFailed { .. })
    ));
    recorded.read();
    assert_eq!(recorded.verifications("full", "fail", "request"), 1);
    assert_eq!(recorded.verifications("sampled", "fail", "request"), 1);
    assert_eq!(recorded.durations("full").len(), 4);
    assert_eq!(recorded.durations("sampled").len(), 2);

    // A handle already released has nothing to check: an error, with no duration.
    let stale = shard.clone();
    system.release(shard).await.unwrap();
    let gone = system.verify(&stale, VerifyMode::Full).await;
    assert!(matches!(gone, Err(VramError::UnknownShard(_))));
    recorded.read();
    assert_eq!(recorded.verifications("full", "error", "request"), 1);
    assert_eq!(recorded.durations("full").len(), 4);
    assert_eq!(recorded.counter_sum(VERIFICATIONS_TOTAL), 10);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_scrubs_are_counted_as_scrubs() {
    let _serial = SERIAL.lock().await;
    let mut recorded = Recorded::from_now();
    let system =
        VramResidency::start(config(1, CAPACITY).scrub_interval(Duration::from_millis(10)))
            .await
            .unwrap();
    let shard = system
        .seal(SealRequest::new(
            "scrubbed",
            "test:scrub",
            0,
            pattern(64 << 10),
        ))
        .await
        .unwrap();

    async fn until(recorded: &mut Recorded, mut done: impl FnMut(&Recorded) -> bool) -> bool {
        for _ in 0..500 {
            recorded.read();
            if done(recorded) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
    assert!(
        until(&mut recorded, |r| r.verifications("full", "pass", "scrub")
            >= 1)
        .await
    );
    assert!(!recorded.durations("full").is_empty());

    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "scrubbed".into(),
                offset: 100,
                mask: 0x01,
            },
        )
        .await
        .unwrap();
    assert!(
        until(&mut recorded, |r| r.verifications("full", "fail", "scrub")
            == 1)
        .await
    );
    // Nobody asked: no request was counted.
    for mode in ["full", "sampled", "signature_only"] {
        for result in ["pass", "fail", "error"] {
            assert_eq!(recorded.verifications(mode, result, "request"), 0);
        }
    }
    drop(shard);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_calls_count_each_member() {
    let _serial = SERIAL.lock().await;
    let mut recorded = Recorded::from_now();
    let system = VramResidency::start(config(2, CAPACITY)).await.unwrap();
    let group = system
        .seal_group(
            GroupRequest::new("counted-tp2", "test:group")
                .part(SealRequest::new(
                    "counted-0",
                    "test:group",
                    0,
                    pattern(64 << 10),
                ))
                .part(SealRequest::new(
                    "counted-1",
                    "test:group",
                    1,
                    pattern(96 << 10),
                )),
        )
        .await
        .unwrap();
    system.verify_group(&group, VerifyMode::Full).await.unwrap();
    settle(&system).await;
    recorded.read();
    assert_eq!(recorded.counter(SEALS_TOTAL, &[("result", "ok")]), 2);
    assert_eq!(recorded.verifications("full", "pass", "request"), 2);
    assert_eq!(recorded.gauge(DEVICE_USED_BYTES, 0), (64 << 10) as f64);
    assert_eq!(recorded.gauge(DEVICE_USED_BYTES, 1), (96 << 10) as f64);

    // One corrupt member fails the group; afterwards both members are refused as failures
    // (one quarantined by its own verification, the other with its group).
    system
        .inject_fault(
            1,
            Fault::FlipBits {
                shard_id: "counted-1".into(),
                offset: 0,
                mask: 0x80,
            },
        )
        .await
        .unwrap();
    assert!(system.verify_group(&group, VerifyMode::Full).await.is_err());
    recorded.read();
    assert_eq!(recorded.verifications("full", "fail", "request"), 1);
    assert_eq!(recorded.verifications("full", "pass", "request"), 3);
    assert!(system.verify_group(&group, VerifyMode::Full).await.is_err());
    recorded.read();
    assert_eq!(recorded.verifications("full", "fail", "request"), 3);
    assert_eq!(recorded.verifications("full", "error", "request"), 0);

    system.release_group(group).await.unwrap();
    settle(&system).await;
    recorded.read();
    assert_eq!(recorded.gauge(DEVICE_USED_BYTES, 0), 0.0);
    assert_eq!(recorded.gauge(DEVICE_USED_BYTES, 1), 0.0);
    system.shutdown().await.unwrap();
}

/// 1 GiB of a cheap generated stream (a `SealRequest::from_reader` source).
struct Zeros(u64);

impl std::io::Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1 << 20).min(self.0 as usize);
        buf[..n].fill(0);
        self.0 -= n as u64;
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_dropped_by_its_caller_is_counted_once_as_cancelled() {
    let _serial = SERIAL.lock().await;
    let mut recorded = Recorded::from_now();
    let system = VramResidency::start(config(1, 2 << 30)).await.unwrap();
    let len = 1u64 << 30;
    let abandoned = tokio::time::timeout(
        Duration::from_millis(20),
        system.seal(SealRequest::from_reader(
            "big",
            "test:cancel",
            0,
            Zeros(len),
            len,
        )),
    )
    .await;
    assert!(abandoned.is_err(), "a 1 GiB seal finished within 20 ms");
    // Counted when the seal has stopped (the device is idle again), exactly once, and as what
    // the audit log says happened: never as `ok`.
    let mut counted = false;
    for _ in 0..300 {
        recorded.read();
        if recorded.counter(SEALS_TOTAL, &[("result", "cancelled")]) == 1
            && system.device_load(0).unwrap().in_flight == 0
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(counted, "the cancelled seal was not counted within 3 s");
    tokio::time::sleep(Duration::from_millis(100)).await;
    recorded.read();
    assert_eq!(
        recorded.counter_sum(SEALS_TOTAL),
        1,
        "{:?}",
        recorded.counters
    );
    let sealed = system
        .audit_lines()
        .await
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"VramSealed\""))
        .count() as u64;
    assert_eq!(recorded.counter(SEALS_TOTAL, &[("result", "ok")]), sealed);
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    system.shutdown().await.unwrap();
}
