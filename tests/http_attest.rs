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
    AttestationPolicy, BackendKind, Fault, GroupRequest, SealRequest, SignedAttestation,
    VerifyMode, VramError, VramResidency, WorkerToken, verify_signed_group_attestation,
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

/// The challenger token the in-process worker expects.
const CHALLENGER: &str = "challenger-token-2b7e151628aed2a6abf7158809cf4f3c";

struct ControlPlane {
    http: reqwest::Client,
    base: String,
}

impl ControlPlane {
    async fn challenge(&self, nonce: &[u8]) -> reqwest::Response {
        self.http
            .post(format!("{}/attest", self.base))
            .bearer_auth(CHALLENGER)
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
    let worker = Arc::new(
        Worker::new(
            system.clone(),
            group.clone(),
            metrics,
            zeroize::Zeroizing::new(CHALLENGER.as_bytes().to_vec()),
            attest_server::DEFAULT_MAX_CONCURRENT,
        )
        .await,
    );
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

    // The control plane: the worker's identity public key, taken at provisioning (never the
    // worker token), an HTTP client, and a policy.
    let public_key = system.identity_public_key_pem();
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

    // A challenge: the group answers under the fresh nonce with a signed (`vram-attest-v3`)
    // bundle — the deployed group record and one statement per member — and everything checks
    // out with the public key alone.
    let nonce = fresh_nonce();
    let answer = plane.challenge(&nonce).await;
    assert_eq!(answer.status(), 200);
    let answer: SignedAttestation = answer.json().await.unwrap();
    let claims = verify_signed_group_attestation(&answer, &public_key, &nonce, &policy).unwrap();
    assert_eq!(claims.group.group_id, deployed.group_id);
    assert_eq!(claims.group.worker_id, "worker-test");
    assert_eq!(claims.group.group_id, GROUP);
    assert_eq!(claims.group.model_ref, MODEL);
    assert_eq!(claims.group.members, deployed.members);
    assert_eq!(claims.members.len(), DEVICES as usize);
    for (i, member) in claims.members.iter().enumerate() {
        assert_eq!(
            member.shard, deployed.members[i],
            "statement {i} is member {i}'s"
        );
        assert_eq!(member.shard.shard_index, Some(i as u32));
        assert_eq!(member.shard.total_shards, Some(DEVICES));
        assert_eq!(member.shard.gpu_device, i as u32);
        assert_eq!(member.backend, BackendKind::Simulated);
    }
    // A policy that wants device memory refuses a simulated worker.
    let strict = policy.clone().require_device_memory(true);
    let refused = verify_signed_group_attestation(&answer, &public_key, &nonce, &strict);
    assert!(
        matches!(refused, Err(VramError::AttestationInvalid(_))),
        "{refused:?}"
    );
    // A key that is not the worker's checks nothing.
    let stranger = WorkerToken::new(b"a-stranger-token-0123456789abcdef".to_vec()).unwrap();
    let wrong_key = vram_residency::seal::identity::IdentityKey::derive(&stranger)
        .unwrap()
        .public()
        .unwrap()
        .pem;
    let refused = verify_signed_group_attestation(&answer, &wrong_key, &nonce, &policy);
    assert!(
        matches!(refused, Err(VramError::AttestationInvalid(_))),
        "{refused:?}"
    );
    // Nor does the bundle answer another challenge, or survive one changed byte.
    let refused = verify_signed_group_attestation(&answer, &public_key, &fresh_nonce(), &policy);
    assert!(
        matches!(refused, Err(VramError::AttestationInvalid(_))),
        "{refused:?}"
    );
    let mut tampered = serde_json::to_value(&answer).unwrap();
    let payload = tampered["dsseEnvelope"]["payload"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = if payload.starts_with('e') { "f" } else { "e" };
    tampered["dsseEnvelope"]["payload"] =
        serde_json::Value::String(format!("{flipped}{}", &payload[1..]));
    let tampered: SignedAttestation = serde_json::from_value(tampered).unwrap();
    let refused = verify_signed_group_attestation(&tampered, &public_key, &nonce, &policy);
    assert!(
        matches!(refused, Err(VramError::AttestationInvalid(_))),
        "{refused:?}"
    );

    // A malformed challenge is the caller's fault and attests nothing.
    let short = plane.challenge(&[1u8; 8]).await;
    assert_eq!(short.status(), 400);
    let not_hex = plane
        .http
        .post(format!("{}/attest", plane.base))
        .bearer_auth(CHALLENGER)
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

    // Without the challenger's credential a challenge is refused before anything is verified.
    let attest_url = format!("{}/attest", plane.base);
    let body = serde_json::json!({ "nonce": hex::encode(fresh_nonce()) });
    let wrong = format!("{CHALLENGER}x");
    for auth in [
        None,
        Some(format!("Bearer {wrong}")),
        Some(format!("Basic {CHALLENGER}")),
        Some(format!("Bearer {CHALLENGER} extra")),
        Some("Bearer ".to_string()),
    ] {
        let mut request = plane.http.post(&attest_url).json(&body);
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 401, "{auth:?}");
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        let text = refused.text().await.unwrap();
        assert!(!text.contains(CHALLENGER), "{text}");
    }
    // The scheme is case-insensitive.
    let lower = plane
        .http
        .post(&attest_url)
        .header("authorization", format!("bearer {CHALLENGER}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    // A body over the cap is refused as too large.
    let huge = serde_json::json!({ "nonce": "ab".repeat(4096) });
    let too_large = plane
        .http
        .post(&attest_url)
        .bearer_auth(CHALLENGER)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);

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

    // The worker reports itself degraded (its health is refreshed in the background, every
    // 250 ms), and the failure is in its metrics.
    let mut health = plane.get("/healthz").await;
    for _ in 0..100 {
        if health.status() == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        health = plane.get("/healthz").await;
    }
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

/// Turns this test binary, run again as a child process, into the attest server (its arguments,
/// one per line) or into the `/healthz` probe (`URL COUNT INTERVAL_MS`).
const SERVER_CHILD: &str = "VR_ATTEST_SERVER_ARGS";
const PROBE_CHILD: &str = "VR_HEALTHZ_PROBE";

/// `examples/attest_server.rs`'s own `run`, in a process of its own (the storm test starts it).
#[test]
#[ignore = "a child process of the storm test, which runs it"]
fn attest_server_process() {
    let args =
        std::env::var(SERVER_CHILD).expect("run by the storm test, with VR_ATTEST_SERVER_ARGS set");
    let opts = attest_server::parse_opts(args.lines().map(str::to_string)).unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(attest_server::run(opts))
        .unwrap();
}

/// A control plane's health check, in a process of its own: `COUNT` requests to `URL`, one every
/// `INTERVAL_MS`, each timed; prints `HEALTHZ_MS` and the times.
#[test]
#[ignore = "a child process of the storm test, which runs it"]
fn healthz_probe_process() {
    let spec =
        std::env::var(PROBE_CHILD).expect("run by the storm test, with VR_HEALTHZ_PROBE set");
    let parts: Vec<&str> = spec.split(' ').collect();
    let (url, count, interval): (&str, usize, u64) = (
        parts[0],
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let times = rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let started = std::time::Instant::now();
            let answer = http.get(url).send().await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.bytes().await.unwrap();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(interval)).await;
        }
        times
    });
    let shown: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    println!("HEALTHZ_MS {}", shown.join(" "));
}

/// Starts this test binary again as a child running the ignored test `name`.
fn child(name: &str, var: &str, value: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(var, value)
        .env_remove("VRAM_WORKER_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn owner_only_file(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The review's storm, on loopback: the real `attest_server` (2 parts of 64 MiB,
/// `--max-concurrent 1`) under 300 concurrent challengers, each a bounded loop that honours
/// `Retry-After`, while a separate process times `/healthz`: its p95 stays under 100 ms (it was
/// 12.4 s). Then SIGTERM stops the server cleanly, like Ctrl-C: exit 0, and the audit log
/// verifies and ends with `AuditLogClosed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_challenges_leaves_healthz_fast_and_sigterm_closes_the_log() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let worker_token = dir.path().join("worker.token");
    let challenger_token = dir.path().join("challenger.token");
    let log = dir.path().join("audit.jsonl");
    owner_only_file(&worker_token, TOKEN);
    owner_only_file(&challenger_token, CHALLENGER);
    let size = (64usize << 20).to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--devices",
        "2",
        "--size",
        &size,
        "--token-file",
        worker_token.to_str().unwrap(),
        "--challenger-token-file",
        challenger_token.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
        "--max-concurrent",
        "1",
    ]
    .join("\n");
    let mut server = child("attest_server_process", SERVER_CHILD, &args);
    let stdout = server.stdout.take().unwrap();
    let (found, listening) = std::sync::mpsc::channel::<String>();
    let server_output = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some((_, addr)) = line.split_once("listening on http://") {
                let _ = found.send(addr.trim().to_string());
            }
            lines.push(line);
        }
        lines
    });
    let addr = tokio::task::spawn_blocking(move || {
        listening.recv_timeout(Duration::from_secs(600)).unwrap()
    })
    .await
    .unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let base = format!("http://{addr}");

    // The probe first, then the storm, overlapping it.
    let probe = child(
        "healthz_probe_process",
        PROBE_CHILD,
        &format!("{base}/healthz 150 20"),
    );
    let probe_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let challengers: Vec<_> = (0..300)
        .map(|_| {
            let (http, url, done) = (
                http.clone(),
                format!("{base}/attest"),
                Arc::clone(&probe_done),
            );
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                // Bounded: at most 8 challenges each, and none once the probe has finished.
                for _ in 0..8 {
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let answer = http
                        .post(&url)
                        .bearer_auth(CHALLENGER)
                        .json(&serde_json::json!({ "nonce": hex::encode(fresh_nonce()) }))
                        .send()
                        .await
                        .unwrap();
                    let status = answer.status().as_u16();
                    let retry_after = answer
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                    answer.bytes().await.unwrap();
                    statuses.push(status);
                    if status == 429 {
                        let wait = retry_after.expect("429 carries Retry-After");
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                }
                statuses
            })
        })
        .collect();
    let probe_output = tokio::task::spawn_blocking(move || probe.wait_with_output().unwrap())
        .await
        .unwrap();
    probe_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for c in challengers {
        statuses.extend(c.await.unwrap());
    }
    assert!(probe_output.status.success(), "the probe failed");
    let probe_text = String::from_utf8(probe_output.stdout).unwrap();
    let mut times: Vec<f64> = probe_text
        .lines()
        // libtest may print `test … ` ahead of the line on the same line.
        .find_map(|l| l.split_once("HEALTHZ_MS ").map(|(_, times)| times))
        .unwrap()
        .split(' ')
        .map(|t| t.parse().unwrap())
        .collect();
    times.sort_by(f64::total_cmp);
    let p95 = times[(times.len() * 95).div_ceil(100) - 1];
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let shed = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!(
        "storm: {} challenges ({ok} answered 200, {shed} shed with 429); /healthz from another \
         process: p50 {:.1} ms, p95 {p95:.1} ms, max {:.1} ms over {} requests",
        statuses.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
    assert!(ok >= 1 && shed >= 300, "{ok} answered, {shed} shed");
    assert_eq!(ok + shed, statuses.len(), "only 200 and 429: {statuses:?}");
    assert!(p95 < 100.0, "/healthz p95 {p95:.1} ms during the storm");

    // SIGTERM: a clean stop, like Ctrl-C.
    let pid = server.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || server.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let lines = server_output.join().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("released the model and shut down")),
        "{lines:?}"
    );
    let token = WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap();
    let report = vram_residency::audit::verify_log(&log, &token).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.status(), vram_residency::audit::LogStatus::Closed);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains(r#""type":"AuditLogClosed""#)
    );
}
