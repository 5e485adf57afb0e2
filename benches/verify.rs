//! Verification-engine benchmarks on a 64 MiB shard, each next to the single-threaded SHA-256
//! baseline over the same bytes (issue: "Verification engine").
//!
//! * group `hash_64MiB` — the hashing kernels on host memory: `sha256_single_thread` (the
//!   baseline), `merkle_leaves_sequential` and `merkle_leaves_parallel` (1 MiB leaves, rayon);
//! * group `actors_64MiB` — the same work through the actor system on a simulated device:
//!   `verify_full`, `verify_sampled_16`, `verify_signature_only`, `seal` (only the seal is
//!   timed; each shard is released outside the timing), and `reference_copy_back_then_sha256`
//!   (the reference design: copy the whole shard back with `view.read`, one sequential SHA-256).
//!
//! Criterion does not hand its estimates back to the program, so after the groups a short
//! manual best-of-3 measurement in the same process prints the ratios the targets are stated
//! in (throughput ÷ baseline throughput). Run: `cargo bench --bench verify` (about a minute).
#![allow(clippy::expect_used, clippy::arithmetic_side_effects)] // test code fails loudly

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, black_box};
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;
use vram_residency::seal::merkle::{leaf_hashes_parallel, leaf_hashes_sequential};
use vram_residency::{Config, SealRequest, SealedShard, VerifyMode, VramResidency};

const SIZE: usize = 64 << 20;
const CHUNK: usize = 1 << 20;
const SAMPLED_CHUNKS: u32 = 16;
const TOKEN: &str = "bench-token-0123456789abcdef";

/// Cheap, non-constant bytes (xorshift), so nothing can deduplicate or compress them.
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One simulated device with room for the resident shard plus one being sealed.
fn start(rt: &Runtime) -> VramResidency {
    rt.block_on(VramResidency::start(
        Config::simulated(1, 3 * SIZE as u64)
            .worker_id("bench")
            .worker_token(TOKEN)
            .chunk_size(CHUNK as u64)
            .execute_verify(VerifyMode::SignatureOnly),
    ))
    .expect("start the system")
}

static SEAL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Seals a copy of `data` and returns the shard and the time the seal alone took.
fn timed_seal(rt: &Runtime, system: &VramResidency, data: &[u8]) -> (SealedShard, Duration) {
    let bytes = data.to_vec();
    let n = SEAL_COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = Instant::now();
    let shard = rt
        .block_on(system.seal(SealRequest::new(
            format!("bench-seal-{n}"),
            "bench",
            0,
            bytes,
        )))
        .expect("seal");
    (shard, t.elapsed())
}

/// The reference design: copy the whole shard back to the host, then one sequential SHA-256.
fn reference_verify(rt: &Runtime, system: &VramResidency, shard: &SealedShard) -> [u8; 32] {
    rt.block_on(system.execute(shard, |view| {
        let len = usize::try_from(view.len()).expect("shard fits in memory");
        let mut host = vec![0u8; len];
        view.read(0, &mut host).expect("copy back");
        <[u8; 32]>::from(Sha256::digest(&host))
    }))
    .expect("execute")
}

fn hashing(c: &mut Criterion, data: &[u8]) {
    let mut g = c.benchmark_group("hash_64MiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("sha256_single_thread", |b| {
        b.iter(|| Sha256::digest(black_box(data)))
    });
    g.bench_function("merkle_leaves_sequential", |b| {
        b.iter(|| leaf_hashes_sequential(black_box(data), CHUNK))
    });
    g.bench_function("merkle_leaves_parallel", |b| {
        b.iter(|| leaf_hashes_parallel(black_box(data), CHUNK))
    });
    g.finish();
}

fn actors(c: &mut Criterion, rt: &Runtime, system: &VramResidency, data: &[u8]) {
    let shard = rt
        .block_on(system.seal(SealRequest::new("bench", "bench", 0, data.to_vec())))
        .expect("seal the resident shard");

    let mut g = c.benchmark_group("actors_64MiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("verify_full", |b| {
        b.iter(|| {
            rt.block_on(system.verify(&shard, VerifyMode::Full))
                .expect("verify")
        })
    });
    g.bench_function("reference_copy_back_then_sha256", |b| {
        b.iter(|| reference_verify(rt, system, &shard))
    });
    g.bench_function("seal", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (sealed, d) = timed_seal(rt, system, data);
                total += d;
                rt.block_on(system.release(sealed)).expect("release");
            }
            total
        })
    });
    // Latencies: one call per element (calls/s); bytes/s would mislead here.
    g.throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Auto);
    g.bench_function(format!("verify_sampled_{SAMPLED_CHUNKS}"), |b| {
        b.iter(|| {
            rt.block_on(system.verify(
                &shard,
                VerifyMode::Sampled {
                    chunks: SAMPLED_CHUNKS,
                },
            ))
            .expect("verify sampled")
        })
    });
    g.bench_function("verify_signature_only", |b| {
        b.iter(|| {
            rt.block_on(system.verify(&shard, VerifyMode::SignatureOnly))
                .expect("verify signature")
        })
    });
    g.finish();
    rt.block_on(system.release(shard)).expect("release");
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// The target ratios from a manual best-of-3 measurement in this process.
fn ratios(rt: &Runtime, system: &VramResidency, data: &[u8]) {
    let (shard, _) = timed_seal(rt, system, data);
    // Three rounds with every case once per round, so a disturbance (the machine is shared)
    // hits baseline and candidates alike; the best time of each case is kept.
    let mut best = [Duration::MAX; 7];
    for _ in 0..3 {
        let (sealed, seal) = timed_seal(rt, system, data);
        rt.block_on(system.release(sealed)).expect("release");
        let times = [
            timed(|| {
                black_box(Sha256::digest(black_box(data)));
            }),
            timed(|| {
                black_box(leaf_hashes_sequential(black_box(data), CHUNK));
            }),
            timed(|| {
                black_box(leaf_hashes_parallel(black_box(data), CHUNK));
            }),
            seal,
            timed(|| {
                rt.block_on(system.verify(&shard, VerifyMode::Full))
                    .expect("verify");
            }),
            timed(|| {
                black_box(reference_verify(rt, system, &shard));
            }),
            timed(|| {
                rt.block_on(system.verify(
                    &shard,
                    VerifyMode::Sampled {
                        chunks: SAMPLED_CHUNKS,
                    },
                ))
                .expect("verify sampled");
            }),
        ];
        for (b, t) in best.iter_mut().zip(times) {
            *b = (*b).min(t);
        }
    }
    rt.block_on(system.release(shard)).expect("release");
    let [
        baseline,
        sequential,
        parallel,
        seal,
        full,
        reference,
        sampled,
    ] = best;

    let gib_s = |d: Duration| SIZE as f64 / d.as_secs_f64() / f64::from(1u32 << 30);
    let vs = |d: Duration| baseline.as_secs_f64() / d.as_secs_f64();
    println!();
    println!(
        "ratios: 64 MiB, 1 MiB leaves, {} rayon threads, best of 3 in this run (throughput / baseline)",
        rayon::current_num_threads()
    );
    let row = |name: &str, d: Duration| {
        println!(
            "  {name:<34} {:>7.2} GiB/s {:>8.2} ms   {:>5.2}x",
            gib_s(d),
            d.as_secs_f64() * 1e3,
            vs(d)
        );
    };
    row("sha256_single_thread (baseline)", baseline);
    row("merkle_leaves_sequential", sequential);
    row("merkle_leaves_parallel", parallel);
    row("seal", seal);
    row("verify_full", full);
    row("reference_copy_back_then_sha256", reference);
    println!(
        "  parallel leaves / baseline = {:.2}x; full verify / baseline = {:.2}x (target >= 1.8 on 2 cores); \
         seal / baseline = {:.2}x (target >= 0.8); full verify / reference = {:.2}x",
        vs(parallel),
        vs(full),
        vs(seal),
        reference.as_secs_f64() / full.as_secs_f64()
    );
    println!(
        "  verify_sampled_{SAMPLED_CHUNKS} best {:.3} ms = {:.1}% of a full verify of 64 MiB \
         (cost is independent of size: ~{:.2}% of a full verify of 1 GiB)",
        sampled.as_secs_f64() * 1e3,
        100.0 * sampled.as_secs_f64() / full.as_secs_f64(),
        100.0 * sampled.as_secs_f64() / (full.as_secs_f64() * 16.0)
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let data = pattern(SIZE);
    let rt = runtime();
    let system = start(&rt);

    hashing(&mut c, &data);
    actors(&mut c, &rt, &system, &data);
    c.final_summary();

    // `cargo bench` passes `--bench`; `cargo test --benches` does not (criterion's test mode,
    // one run per benchmark) and skips the manual measurement.
    let args: Vec<String> = std::env::args().collect();
    let bench_mode =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if bench_mode {
        ratios(&rt, &system, &data);
    }
    rt.block_on(system.shutdown()).expect("shutdown");
}
