//! The cross-machine flow, on one machine: the attest server example runs on a local port with
//! a tensor-parallel group sealed across four devices, and this test plays the control plane
//! with a real HTTP client. A fresh random nonce per challenge; the answer's group record must
//! be the one deployed, and every member's attestation checks out with the worker token and a
//! policy (signature, nonce, freshness, full verification); the crate's metrics are scraped in
//! Prometheus text; then a member is corrupted through the worker, and the next challenge fails
//! as a whole, naming it, without a single attestation.
#![allow(clippy::unwrap_used)] // test code fails loudly

#[path = "../examples/attest_server.rs"]
mod attest_server;
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use attest_server::Worker;
use common::{TOKEN, config, pattern};
use rand::RngCore;
use vram_residency::{
    AttestationPolicy, Fault, GroupAttestation, GroupRequest, SealRequest, VerifyMode,
    VramResidency, WorkerToken, verify_attestation_with, verify_group_attestation_with,
};

const DEVICES: u32 = 4;
const PART_BYTES: usize = (512 << 10) + 100;
const GROUP: &str = "http-model-tp4";
const MODEL: &str = "test:http-model@v1";

/// One value from a Prometheus text exposition: the sample `name{labels}` whose labels are
/// exactly `labels` (in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let got: BTreeMap<String, String> = rest
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (got == want).then(|| value.parse().unwrap())
        })
}

fn fresh_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

struct ControlPlane {
    http: reqwest::Client,
    base: String,
}

impl ControlPlane {
    async fn challenge(&self, nonce: &[u8]) -> reqwest::Response {
        self.http
            .post(format!("{}/attest", self.base))
            .json(&serde_json::json!({ "nonce": hex::encode(nonce) }))
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_challenges_a_worker_over_http_and_sees_a_corrupted_member_fail() {
    let metrics = attest_server::install_metrics().unwrap();

    // The worker: a model in four tensor-parallel parts, one per device, sealed as a group.
    let system = VramResidency::start(config(DEVICES, 8 << 20))
        .await
        .unwrap();
    let mut request = GroupRequest::new(GROUP, MODEL);
    for device in 0..DEVICES {
        let mut bytes = pattern(PART_BYTES);
        bytes[0] = device as u8; // parts differ
        request = request.part(SealRequest::new(
            format!("{GROUP}-{device}"),
            MODEL,
            device,
            bytes,
        ));
    }
    let group = system.seal_group(request).await.unwrap();
    // What the control plane recorded when it deployed the model.
    let deployed = group.info().clone();
    let worker = Arc::new(Worker::new(system.clone(), group.clone(), metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, attest_server::app(worker))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });

    // The control plane: its own copy of the token, an HTTP client, and a policy.
    let token = WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap();
    let plane = ControlPlane {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        base: format!("http://{addr}"),
    };
    let policy = AttestationPolicy::default()
        .max_age(Duration::from_secs(300))
        .require_mode(VerifyMode::Full);

    let health = plane.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");

    // A challenge: the group answers under the fresh nonce — the deployed group record and one
    // attestation per member — and everything checks out with the token alone.
    let nonce = fresh_nonce();
    let answer = plane.challenge(&nonce).await;
    assert_eq!(answer.status(), 200);
    let answer: GroupAttestation = answer.json().await.unwrap();
    assert_eq!(answer.group, deployed);
    assert_eq!(answer.group.worker_id, "worker-test");
    assert_eq!(answer.group.group_id, GROUP);
    assert_eq!(answer.group.model_ref, MODEL);
    verify_group_attestation_with(&answer, &token, &nonce, &policy).unwrap();
    assert_eq!(answer.members.len(), DEVICES as usize);
    for (i, att) in answer.members.iter().enumerate() {
        verify_attestation_with(att, &token, &nonce, &policy).unwrap();
        assert_eq!(
            att.shard, deployed.members[i],
            "attestation {i} is member {i}'s"
        );
        assert_eq!(att.shard.shard_index, Some(i as u32));
        assert_eq!(att.shard.total_shards, Some(DEVICES));
        assert_eq!(att.shard.gpu_device, i as u32);
        assert_eq!(att.backend, "simulated");
        // Replaying it against another challenge fails; so does a policy that wants device
        // memory from a simulated worker.
        assert!(verify_attestation_with(att, &token, &fresh_nonce(), &policy).is_err());
        let strict = policy.clone().require_device_memory(true);
        assert!(verify_attestation_with(att, &token, &nonce, &strict).is_err());
    }
    // A token that is not the worker's checks nothing.
    let other = WorkerToken::new(b"some-other-token-0123456789".to_vec()).unwrap();
    assert!(verify_group_attestation_with(&answer, &other, &nonce, &policy).is_err());
    assert!(verify_attestation_with(&answer.members[0], &other, &nonce, &policy).is_err());
    // Nor does the bundle answer another challenge.
    assert!(verify_group_attestation_with(&answer, &token, &fresh_nonce(), &policy).is_err());

    // A malformed challenge is the caller's fault and attests nothing.
    let short = plane.challenge(&[1u8; 8]).await;
    assert_eq!(short.status(), 400);
    let not_hex = plane
        .http
        .post(format!("{}/attest", plane.base))
        .json(&serde_json::json!({ "nonce": "zz" }))
        .send()
        .await
        .unwrap();
    assert_eq!(not_hex.status(), 400);

    // The metrics an operator graphs, in Prometheus text.
    let scrape = plane.get("/metrics").await;
    assert_eq!(scrape.status(), 200);
    assert!(
        scrape.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = scrape.text().await.unwrap();
    for device in 0..DEVICES {
        let d = device.to_string();
        let used = sample(&text, "vram_device_used_bytes", &[("gpu_device", &d)]);
        assert_eq!(used, Some(PART_BYTES as f64), "used bytes of device {d}");
        let total = sample(&text, "vram_device_total_bytes", &[("gpu_device", &d)]);
        assert_eq!(total, Some((8 << 20) as f64));
        let available = sample(&text, "vram_device_available_bytes", &[("gpu_device", &d)]);
        assert_eq!(available, Some(((8 << 20) - PART_BYTES) as f64));
    }
    assert_eq!(
        sample(&text, "vram_seals_total", &[("result", "ok")]),
        Some(f64::from(DEVICES))
    );
    let full_pass = [("mode", "full"), ("result", "pass"), ("trigger", "request")];
    assert_eq!(
        sample(&text, "vram_verifications_total", &full_pass),
        Some(f64::from(DEVICES))
    );
    assert_eq!(
        sample(
            &text,
            "vram_verification_duration_seconds_count",
            &[("mode", "full")]
        ),
        Some(f64::from(DEVICES))
    );
    assert_eq!(
        sample(
            &text,
            "vram_verification_duration_seconds_bucket",
            &[("mode", "full"), ("le", "+Inf")]
        ),
        Some(f64::from(DEVICES))
    );
    assert!(text.contains("# HELP vram_device_used_bytes"));

    // Corrupt one member through the worker: the next challenge fails as a whole and names it.
    let corrupt = &deployed.members[2];
    system
        .inject_fault(
            corrupt.gpu_device,
            Fault::FlipBits {
                shard_id: corrupt.shard_id.clone(),
                offset: 4096 + 17,
                mask: 0x04,
            },
        )
        .await
        .unwrap();
    let refused = plane.challenge(&fresh_nonce()).await;
    assert_eq!(refused.status(), 409);
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert!(refused.get("members").is_none());
    let message = refused["error"].as_str().unwrap();
    assert!(message.contains(&corrupt.shard_id), "{message}");
    // It stays refused: every member is quarantined with the group (fail-all), and the next
    // answer still names the member that failed.
    let again = plane.challenge(&fresh_nonce()).await;
    assert_eq!(again.status(), 409);
    let again: serde_json::Value = again.json().await.unwrap();
    let message = again["error"].as_str().unwrap();
    assert!(message.contains(&corrupt.shard_id), "{message}");

    // The worker reports itself degraded, and the failure is in its metrics.
    let health = plane.get("/healthz").await;
    assert_eq!(health.status(), 503);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["devices"][0]["gpu_device"], corrupt.gpu_device);
    let text = plane.get("/metrics").await.text().await.unwrap();
    let full_fail = [("mode", "full"), ("result", "fail"), ("trigger", "request")];
    assert!(sample(&text, "vram_verifications_total", &full_fail).unwrap() >= 1.0);

    stop.send(()).unwrap();
    server.await.unwrap();
    system.release_group(group).await.unwrap();
    for device in 0..DEVICES {
        assert_eq!(system.capacity(device).await.unwrap().used_bytes, 0);
    }
    system.shutdown().await.unwrap();
}
