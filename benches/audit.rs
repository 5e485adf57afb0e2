//! Audit-trail throughput: HMAC-chained `vram-audit-v1` records against writing the same JSON
//! lines without chaining, both in one run (issue: "Audit trail").
//!
//! Batches of 256 events, as the `AuditActor` writes them:
//!
//! * group `audit_file` — `chained_fsync`: `AuditLogWriter::append_batch` (encode, HMAC chain,
//!   check every line, one write) then `sync` (fdatasync) per batch; `plain_fsync`: the
//!   byte-identical lines, pre-built, written through a `BufWriter<File>` with one `sync_data`
//!   per batch. Files live under cargo's target tmp dir (a real disk, so fsync costs what it
//!   costs; `/tmp` may be a tmpfs).
//! * group `audit_memory` — `chained`: `MemoryChain::append_batch`; `plain`: pushing the same
//!   pre-built lines onto a `String`. No I/O: this isolates the cost of encoding and chaining.
//!
//! Throughput is in events (elements) per second. After the groups, a manual best-of-3
//! measurement prints events/s and the ratio chained / plain for both cases. Run:
//! `cargo bench --bench audit` (about a minute).
#![allow(clippy::expect_used, clippy::arithmetic_side_effects)] // test code fails loudly

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, black_box};
use vram_residency::audit::format::format_ts;
use vram_residency::audit::writer::{AuditLogWriter, MemoryChain};
use vram_residency::seal::keys::AuditKey;
use vram_residency::{AuditEvent, WorkerToken};

const BATCH: usize = 256;
const WORKER: &str = "bench-worker";
const TOKEN: &[u8] = b"bench-token-0123456789abcdef";
/// Batches per in-memory chain before it is replaced (untimed), so memory stays bounded.
const MEMORY_RESET: u64 = 64;

fn token() -> WorkerToken {
    WorkerToken::new(TOKEN).expect("token")
}

fn key() -> AuditKey {
    AuditKey::derive(&token())
}

/// 256 `(ts, event_json)` pairs: alternating `SealVerified` and `VramSealed`, the events a
/// busy worker writes most.
fn batch() -> Vec<(String, String)> {
    (0..BATCH)
        .map(|i| {
            let shard_id = format!("llama-7b-q4-shard-{:03}", i % 64);
            let event = if i % 2 == 0 {
                AuditEvent::SealVerified {
                    shard_id,
                    gpu_device: 0,
                    mode: "full".into(),
                    chunks_checked: 1024,
                    trigger: if i % 4 == 0 { "request" } else { "scrub" }.into(),
                }
            } else {
                AuditEvent::VramSealed {
                    shard_id,
                    gpu_device: 1,
                    vram_bytes: 1 << 30,
                    digest: format!("{:064x}", i.wrapping_mul(0x9E37_79B9)),
                    merkle_root: format!("{:064x}", i.wrapping_mul(0x85EB_CA6B)),
                    model_ref: "hf:meta-llama/Llama-2-7b@main".into(),
                    provenance: None,
                }
            };
            (format_ts(chrono::Utc::now()), event.to_json())
        })
        .collect()
}

/// The exact lines (each ending in `\n`) the chained writer produces for `records`, for the
/// plain writers to copy without computing anything.
fn plain_lines(records: &[(String, String)]) -> Vec<String> {
    let mut chain = MemoryChain::new(key(), WORKER).expect("memory chain");
    chain.append_batch(records).expect("encode");
    chain.lines().iter().map(|l| format!("{l}\n")).collect()
}

fn open_chained(path: &Path) -> AuditLogWriter {
    AuditLogWriter::open(path, key(), WORKER)
        .expect("open audit log")
        .0
}

fn open_plain(path: &Path) -> BufWriter<File> {
    BufWriter::with_capacity(1 << 20, File::create(path).expect("create plain log"))
}

fn chained_file_batch(w: &mut AuditLogWriter, records: &[(String, String)]) {
    w.append_batch(records).expect("append");
    w.sync().expect("sync");
}

fn plain_file_batch(w: &mut BufWriter<File>, lines: &[String]) {
    for l in lines {
        w.write_all(l.as_bytes()).expect("write");
    }
    w.flush().expect("flush");
    w.get_ref().sync_data().expect("sync_data");
}

fn plain_memory_batch(out: &mut String, lines: &[String]) {
    for l in lines {
        out.push_str(l);
    }
}

fn file_group(c: &mut Criterion, dir: &Path, records: &[(String, String)], lines: &[String]) {
    let mut g = c.benchmark_group("audit_file");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH as u64));
    let mut chained = open_chained(&dir.join("criterion-chained.jsonl"));
    g.bench_function("chained_fsync", |b| {
        b.iter(|| chained_file_batch(&mut chained, records))
    });
    let mut plain = open_plain(&dir.join("criterion-plain.jsonl"));
    g.bench_function("plain_fsync", |b| {
        b.iter(|| plain_file_batch(&mut plain, lines))
    });
    g.finish();
}

fn memory_group(c: &mut Criterion, records: &[(String, String)], lines: &[String]) {
    let mut g = c.benchmark_group("audit_memory");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("chained", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut chain = MemoryChain::new(key(), WORKER).expect("memory chain");
            for i in 0..iters {
                if i % MEMORY_RESET == 0 {
                    chain = MemoryChain::new(key(), WORKER).expect("memory chain");
                }
                let t = Instant::now();
                black_box(chain.append_batch(records).expect("append"));
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("plain", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut out = String::new();
            for i in 0..iters {
                if i % MEMORY_RESET == 0 {
                    out = String::new();
                }
                let t = Instant::now();
                plain_memory_batch(&mut out, lines);
                black_box(out.len());
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn ratios(dir: &Path, records: &[(String, String)], lines: &[String]) {
    const FILE_BATCHES: u64 = 40;
    const MEMORY_BATCHES: u64 = MEMORY_RESET;
    // Three rounds, the four cases interleaved within each round so that a disturbance (the
    // machine is shared) hits chained and plain alike; the best time of each case is kept.
    let mut best = [Duration::MAX; 4];
    for round in 0..3 {
        let mut chained = open_chained(&dir.join(format!("manual-chained-{round}.jsonl")));
        let mut plain = open_plain(&dir.join(format!("manual-plain-{round}.jsonl")));
        let mut chain = MemoryChain::new(key(), WORKER).expect("memory chain");
        let mut out = String::new();
        let times = [
            timed(|| {
                for _ in 0..FILE_BATCHES {
                    chained_file_batch(&mut chained, records);
                }
            }),
            timed(|| {
                for _ in 0..FILE_BATCHES {
                    plain_file_batch(&mut plain, lines);
                }
            }),
            timed(|| {
                for _ in 0..MEMORY_BATCHES {
                    black_box(chain.append_batch(records).expect("append"));
                }
            }),
            timed(|| {
                for _ in 0..MEMORY_BATCHES {
                    plain_memory_batch(&mut out, lines);
                }
                black_box(out.len());
            }),
        ];
        for (b, t) in best.iter_mut().zip(times) {
            *b = (*b).min(t);
        }
    }
    let rate = |batches: u64, d: Duration| (batches * BATCH as u64) as f64 / d.as_secs_f64();
    let [chained_file, plain_file, chained_memory, plain_memory] = best;
    let chained_file = rate(FILE_BATCHES, chained_file);
    let plain_file = rate(FILE_BATCHES, plain_file);
    let chained_memory = rate(MEMORY_BATCHES, chained_memory);
    let plain_memory = rate(MEMORY_BATCHES, plain_memory);
    let line_bytes: usize = lines.iter().map(String::len).sum::<usize>() / lines.len().max(1);
    println!();
    println!(
        "audit ratios: batches of {BATCH} events (~{line_bytes} bytes/line), best of 3 in this run"
    );
    println!(
        "  file, fsync per batch:  chained {chained_file:>12.0} events/s   plain {plain_file:>12.0} events/s   chained/plain = {:.3}",
        chained_file / plain_file
    );
    println!(
        "  memory, no I/O:         chained {chained_memory:>12.0} events/s   plain {plain_memory:>12.0} events/s   chained/plain = {:.3}",
        chained_memory / plain_memory
    );
    println!(
        "  chaining costs {:.2} µs per event (encode + HMAC + line check); an fsync'd batch of {BATCH} costs {:.2} ms chained, {:.2} ms plain",
        1e6 / chained_memory,
        1e3 * BATCH as f64 / chained_file,
        1e3 * BATCH as f64 / plain_file
    );
    println!("  (log files under {})", dir.display());
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let records = batch();
    let lines = plain_lines(&records);

    file_group(&mut c, dir.path(), &records, &lines);
    memory_group(&mut c, &records, &lines);
    c.final_summary();

    // `cargo bench` passes `--bench`; `cargo test --benches` does not (criterion's test mode)
    // and skips the manual measurement.
    let args: Vec<String> = std::env::args().collect();
    let bench_mode =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if bench_mode {
        ratios(dir.path(), &records, &lines);
    }
}
