//! The benchmark suite behind `vram-residency bench` (and the figures in the README).
//!
//! Every figure is reported next to a baseline measured in the same run on the same bytes, so
//! the ratios mean something on any machine:
//!
//! * **baseline** — one single-threaded SHA-256 over the shard's bytes in host memory;
//! * **reference verify** — what the reference design did: copy the whole shard back from
//!   device memory, then one sequential SHA-256;
//! * **seal** — `VramResidency::seal` of the bytes (allocate, upload, digest + Merkle leaves, sign);
//! * **full verify** — `verify(Full)`: every Merkle leaf re-hashed from device memory in parallel;
//! * **sampled verify** — `verify(Sampled { chunks })` latency, and its cost as a fraction of a
//!   full verify;
//! * **signature-only verify** — round trip through the actors (p50/p99).
//!
//! Throughputs take the best of `repeats` runs (the least-disturbed one); latencies report
//! percentiles over `latency_iterations` calls.

use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::VramError;
use crate::shard::{SealRequest, VerifyMode};
use crate::system::VramResidency;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Shard size in bytes (default 1 GiB).
    pub size_bytes: u64,
    /// Merkle leaf size (default 1 MiB).
    pub chunk_size: u64,
    /// Runs per throughput figure; the best is kept (default 3).
    pub repeats: u32,
    /// Chunks per sampled verify (default 16).
    pub sampled_chunks: u32,
    /// Calls per latency figure (default 2000).
    pub latency_iterations: u32,
    /// Run on the CUDA devices (`Config::cuda()`) instead of one simulated device.
    pub cuda: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            size_bytes: 1 << 30,
            chunk_size: 1 << 20,
            repeats: 3,
            sampled_chunks: 16,
            latency_iterations: 2000,
            cuda: false,
        }
    }
}

/// A throughput measurement.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    /// Best wall time, seconds.
    pub seconds: f64,
    /// Bytes per second at that time, in GiB/s.
    pub gib_per_s: f64,
    /// The same in decimal gigabytes per second (10^9 bytes), the unit GPU bandwidths use.
    pub gb_per_s: f64,
}

impl Throughput {
    fn new(bytes: u64, d: Duration) -> Self {
        let s = d.as_secs_f64().max(1e-9);
        Self {
            seconds: s,
            gib_per_s: bytes as f64 / s / f64::from(1u32 << 30),
            gb_per_s: bytes as f64 / s / 1e9,
        }
    }
}

/// A latency distribution, microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Calls measured.
    pub samples: u32,
}

impl Latency {
    fn from(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let pick = |q: f64| {
            let last = samples.len().saturating_sub(1);
            let i = ((last as f64) * q).round() as usize;
            samples
                .get(i.min(last))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        Self {
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            samples: u32::try_from(samples.len()).unwrap_or(u32::MAX),
        }
    }
}

/// The results, with the ratios the targets are stated in.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Shard size.
    pub size_bytes: u64,
    /// Merkle leaf size.
    pub chunk_size: u64,
    /// Hashing threads (rayon pool size).
    pub threads: usize,
    /// Backend used.
    pub backend: String,
    /// Name of the device the shard lived on (the GPU's name on CUDA).
    pub device: String,
    /// Single-threaded SHA-256 of the bytes in host memory.
    pub baseline_sha256: Throughput,
    /// Copy the whole shard back, then one sequential SHA-256.
    pub reference_verify: Throughput,
    /// Copy the whole shard back, then hash its leaves on the host over every core (the
    /// fallback when leaves cannot be hashed where the shard lives).
    pub copy_back_verify: Throughput,
    /// Whether the leaves hashed where the shard lives (the leaf kernel on CUDA) agree with
    /// the leaves hashed on the host from a copy of the same bytes; checked on every run.
    pub leaf_agreement: bool,
    /// `seal` of the bytes.
    pub seal: Throughput,
    /// `seal` ÷ baseline (target ≥ 0.8).
    pub seal_vs_baseline: f64,
    /// `verify(Full)`.
    pub full_verify: Throughput,
    /// full verify ÷ baseline (target ≥ 1.8 on 2 cores).
    pub full_verify_vs_baseline: f64,
    /// full verify ÷ reference verify.
    pub full_verify_vs_reference: f64,
    /// `verify(Sampled { chunks })`.
    pub sampled_verify: Latency,
    /// Chunks per sampled verify.
    pub sampled_chunks: u32,
    /// sampled p50 ÷ full verify time (target < 0.02 at 16 chunks of a 1 GiB shard).
    pub sampled_fraction_of_full: f64,
    /// `verify(SignatureOnly)` round trip (target p50 < 50 µs).
    pub signature_only: Latency,
}

fn pattern(len: usize) -> Vec<u8> {
    // Cheap, non-constant bytes (constant pages could be deduplicated or compressed by a VM).
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let room = len.saturating_sub(out.len()).min(8);
        out.extend_from_slice(state.to_le_bytes().get(..room).unwrap_or_default());
    }
    out
}

/// Runs the suite on a fresh simulated system. `say` receives one line per phase.
pub async fn run(opts: BenchOptions, say: impl Fn(&str)) -> Result<BenchReport, VramError> {
    let size = usize::try_from(opts.size_bytes)
        .map_err(|_| VramError::invalid("bench size does not fit in memory"))?;
    if size == 0 {
        return Err(VramError::invalid("bench size must be at least 1 byte"));
    }
    let repeats = opts.repeats.max(1);
    let token: [u8; 32] = rand::random();
    let config = if opts.cuda {
        crate::config::Config::cuda()
    } else {
        crate::config::Config::simulated(1, opts.size_bytes.saturating_mul(2))
    };
    let system = VramResidency::start(
        config
            .worker_id("bench")
            .worker_token(hex::encode(token))
            .chunk_size(opts.chunk_size)
            .execute_verify(VerifyMode::SignatureOnly),
    )
    .await?;
    say(&format!("generating {} bytes", opts.size_bytes));
    let data = std::sync::Arc::new(pattern(size));

    say("baseline: single-threaded SHA-256");
    let mut best = Duration::MAX;
    for _ in 0..repeats {
        let d = std::sync::Arc::clone(&data);
        let t = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let h = Sha256::digest(&d[..]);
            std::hint::black_box(h);
            t.elapsed()
        })
        .await
        .map_err(|_| VramError::Internal("benchmark thread failed".into()))?;
        best = best.min(t);
    }
    let baseline = Throughput::new(opts.size_bytes, best);

    say("seal");
    let mut best = Duration::MAX;
    for i in 0..repeats {
        let bytes = data.to_vec();
        let t = Instant::now();
        let shard = system
            .seal(SealRequest::new(
                format!("bench-seal-{i}"),
                "bench",
                0,
                bytes,
            ))
            .await?;
        best = best.min(t.elapsed());
        system.release(shard).await?;
    }
    let seal = Throughput::new(opts.size_bytes, best);

    let shard = system
        .seal(SealRequest::new("bench", "bench", 0, data.to_vec()))
        .await?;
    drop(data);

    say("reference verify: copy back + sequential SHA-256");
    let mut best = Duration::MAX;
    for _ in 0..repeats {
        let t = system
            .execute(&shard, move |view| {
                let t = Instant::now();
                let mut host = vec![0u8; size];
                let ok = view.read(0, &mut host).is_ok();
                std::hint::black_box(Sha256::digest(&host));
                (ok, t.elapsed())
            })
            .await?;
        if !t.0 {
            return Err(VramError::Internal("reference read-back failed".into()));
        }
        best = best.min(t.1);
    }
    let reference = Throughput::new(opts.size_bytes, best);

    say("copy-back verify: copy back + leaf hashes on the host (all cores)");
    let chunk = usize::try_from(opts.chunk_size)
        .map_err(|_| VramError::invalid("chunk size does not fit in memory"))?;
    let mut best = Duration::MAX;
    let mut host_root = None;
    for _ in 0..repeats {
        let (ok, elapsed, root) = system
            .execute(&shard, move |view| {
                let t = Instant::now();
                let mut host = vec![0u8; size];
                let ok = view.read(0, &mut host).is_ok();
                let leaves = crate::seal::merkle::leaf_hashes_parallel(&host, chunk);
                let elapsed = t.elapsed();
                let root = crate::seal::merkle::root_from_leaves(&leaves);
                (ok, elapsed, root)
            })
            .await?;
        if !ok {
            return Err(VramError::Internal("copy-back read failed".into()));
        }
        best = best.min(elapsed);
        host_root = Some(root);
    }
    let copy_back = Throughput::new(opts.size_bytes, best);

    say("full verify");
    let mut best = Duration::MAX;
    for _ in 0..repeats {
        let t = Instant::now();
        system.verify(&shard, VerifyMode::Full).await?;
        best = best.min(t.elapsed());
    }
    let full = Throughput::new(opts.size_bytes, best);
    // The full verify just compared every leaf hashed where the shard lives with the sealed
    // tree; the host's leaves of a copy of the same bytes must give the same root.
    let leaf_agreement =
        host_root.map(hex::encode).as_deref() == Some(shard.info().merkle_root.as_str());

    say("sampled verify");
    let sampled_iterations = (opts.latency_iterations / 10).max(10);
    let mut samples = Vec::new();
    for _ in 0..sampled_iterations {
        let t = Instant::now();
        system
            .verify(
                &shard,
                VerifyMode::Sampled {
                    chunks: opts.sampled_chunks,
                },
            )
            .await?;
        samples.push(t.elapsed());
    }
    let sampled = Latency::from(samples);

    say("signature-only verify");
    // Measured from a spawned task, as a request handler in a tokio service would call it (the
    // thread that drives `block_on` wakes up more slowly than a runtime worker).
    let iterations = opts.latency_iterations.max(1);
    let (sys2, shard2) = (system.clone(), shard.clone());
    let samples = tokio::spawn(async move {
        let mut samples = Vec::new();
        for _ in 0..iterations {
            let t = Instant::now();
            sys2.verify(&shard2, VerifyMode::SignatureOnly).await?;
            samples.push(t.elapsed());
        }
        Ok::<_, VramError>(samples)
    })
    .await
    .map_err(|_| VramError::Internal("benchmark task failed".into()))??;
    let sig = Latency::from(samples);

    let backend = system.backend_description().to_string();
    let device = system
        .devices()
        .await?
        .first()
        .map(|d| d.identity.name.clone())
        .unwrap_or_default();
    system.release(shard).await?;
    system.shutdown().await?;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(BenchReport {
        size_bytes: opts.size_bytes,
        chunk_size: opts.chunk_size,
        threads: rayon::current_num_threads(),
        backend,
        device,
        baseline_sha256: baseline,
        reference_verify: reference,
        copy_back_verify: copy_back,
        leaf_agreement,
        seal,
        seal_vs_baseline: ratio(seal.gib_per_s, baseline.gib_per_s),
        full_verify: full,
        full_verify_vs_baseline: ratio(full.gib_per_s, baseline.gib_per_s),
        full_verify_vs_reference: ratio(full.gib_per_s, reference.gib_per_s),
        sampled_verify: sampled,
        sampled_chunks: opts.sampled_chunks,
        sampled_fraction_of_full: ratio(sampled.p50_us / 1e6, full.seconds),
        signature_only: sig,
    })
}

impl BenchReport {
    /// The header of [`BenchReport::markdown_row`]'s table (two lines).
    pub const MARKDOWN_HEADER: &'static str = "| device | size | chunk | seal GB/s | seal ÷ 1-thread SHA-256 | full verify GB/s | full ÷ SHA-256 | copy-back verify GB/s | reference (copy back + SHA-256) GB/s | sampled p50 (chunks) | signature-only p50 | leaves agree |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

    /// One Markdown table row of the figures a GPU check reports.
    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {:.1} GiB | {} KiB | {:.2} | {:.2}x | {:.1} | {:.1}x | {:.2} | {:.2} | {:.1} µs ({}) | {:.1} µs | {} |",
            self.device,
            self.size_bytes as f64 / f64::from(1u32 << 30),
            self.chunk_size / 1024,
            self.seal.gb_per_s,
            self.seal_vs_baseline,
            self.full_verify.gb_per_s,
            self.full_verify_vs_baseline,
            self.copy_back_verify.gb_per_s,
            self.reference_verify.gb_per_s,
            self.sampled_verify.p50_us,
            self.sampled_chunks,
            self.signature_only.p50_us,
            if self.leaf_agreement { "yes" } else { "NO" },
        )
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mib = self.size_bytes as f64 / f64::from(1u32 << 20);
        let mut s = format!(
            "vram-residency bench: {mib:.0} MiB shard, {} KiB chunks, {} hashing threads, {}\n",
            self.chunk_size / 1024,
            self.threads,
            self.backend
        );
        s.push_str("measurement                         result              vs baseline\n");
        let row = |name: &str, t: &Throughput, r: Option<f64>| {
            format!(
                "{name:<35} {:>7.2} GiB/s {:>8.1} ms{}\n",
                t.gib_per_s,
                t.seconds * 1e3,
                r.map_or(String::new(), |r| format!("   {r:>5.2}x"))
            )
        };
        s.push_str(&row(
            "baseline: 1-thread SHA-256",
            &self.baseline_sha256,
            Some(1.0),
        ));
        s.push_str(&row(
            "reference: copy back + SHA-256",
            &self.reference_verify,
            Some(self.reference_verify.gib_per_s / self.baseline_sha256.gib_per_s.max(1e-12)),
        ));
        s.push_str(&row(
            "copy back + host leaf hashes",
            &self.copy_back_verify,
            Some(self.copy_back_verify.gib_per_s / self.baseline_sha256.gib_per_s.max(1e-12)),
        ));
        s.push_str(&row("seal", &self.seal, Some(self.seal_vs_baseline)));
        s.push_str(&row(
            "verify full",
            &self.full_verify,
            Some(self.full_verify_vs_baseline),
        ));
        s.push_str(&format!(
            "verify sampled ({} chunks)           p50 {:>8.1} µs  p99 {:>8.1} µs  ({:.3}% of a full verify)\n",
            self.sampled_chunks,
            self.sampled_verify.p50_us,
            self.sampled_verify.p99_us,
            self.sampled_fraction_of_full * 100.0
        ));
        s.push_str(&format!(
            "verify signature-only               p50 {:>8.1} µs  p99 {:>8.1} µs  ({} calls)\n",
            self.signature_only.p50_us, self.signature_only.p99_us, self.signature_only.samples
        ));
        s.push_str(&format!(
            "full verify vs reference design: {:.2}x; full verify {:.1} GB/s; device/host leaves agree: {}\n",
            self.full_verify_vs_reference,
            self.full_verify.gb_per_s,
            if self.leaf_agreement { "yes" } else { "NO" }
        ));
        s
    }
}
