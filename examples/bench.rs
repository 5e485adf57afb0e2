//! Runs the benchmark suite without the CLI: `cargo run --release --example bench -- [SIZE_MIB]`.
#[tokio::main]
async fn main() -> Result<(), vram_residency::VramError> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let opts = vram_residency::bench::BenchOptions {
        size_bytes: mib << 20,
        ..Default::default()
    };
    let report = vram_residency::bench::run(opts, |s| eprintln!("… {s}")).await?;
    print!("{}", report.table());
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    Ok(())
}
