//! `devices`: starts the system on the chosen backend (`--backend auto|cuda|simulated`, or
//! `--devices N` simulated ones) and prints, per device and as the driver reports it, its
//! backend, name, UUID, total and free memory, resident shards and policy status, and on CUDA
//! the driver's version and whether the leaf kernel is in use.

use clap::Args;
use vram_residency::VramResidency;

use super::error::CliError;
use super::token::TokenSource;
use super::{BackendOpt, Global, base_config, human_bytes};

/// Arguments of `devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(flatten)]
    pub backend: BackendOpt,

    /// Use N simulated devices (1 GiB each) instead of the default backend.
    #[arg(long, value_name = "N")]
    pub devices: Option<u32>,

    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `devices`.
pub async fn run(global: &Global, args: DevicesArgs) -> Result<(), CliError> {
    if args.devices == Some(0) {
        return Err(CliError::usage("--devices must be at least 1"));
    }
    // Listing devices needs no secret; a throwaway token is fine when none is configured.
    let token = TokenSource::find_or_generate(global.token_file.as_deref());
    token.load()?;
    let config = token.apply(base_config(
        global,
        args.backend.backend,
        args.devices,
        None,
    )?);
    let system = VramResidency::start(config).await?;
    let result = report(&system, args.json).await;
    let shut = system.shutdown().await;
    result?;
    shut?;
    Ok(())
}

async fn report(system: &VramResidency, json: bool) -> Result<(), CliError> {
    let statuses = system.devices().await?;
    let mut rows = Vec::new();
    for s in &statuses {
        let capacity = system.capacity(s.identity.index).await.ok();
        rows.push((s, capacity));
    }
    if json {
        let devices: Vec<_> = rows
            .iter()
            .map(|(s, c)| serde_json::json!({ "status": s, "capacity": c }))
            .collect();
        let value = serde_json::json!({
            "backend": system.backend_description(),
            "worker_id": system.worker_id(),
            "devices": devices,
        });
        println!("{value}");
        return Ok(());
    }
    println!("backend: {}", system.backend_description());
    println!(
        "{:<4} {:<10} {:<24} {:<40} {:>10} {:>10} {:>7}  {:<8} policy",
        "dev", "backend", "name", "uuid", "total", "free", "shards", "state"
    );
    for (s, c) in rows {
        let state = if s.lost {
            "lost".to_string()
        } else if s.stopped.is_some() {
            "stopped".to_string()
        } else {
            "ok".to_string()
        };
        let free = c
            .map(|c| human_bytes(c.available_bytes))
            .unwrap_or_else(|| "?".into());
        println!(
            "{:<4} {:<10} {:<24} {:<40} {:>10} {:>10} {:>7}  {:<8} {}{}",
            s.identity.index,
            s.identity.backend.to_string(),
            s.identity.name,
            s.identity.uuid.as_deref().unwrap_or("-"),
            human_bytes(s.identity.total_bytes),
            free,
            s.shards,
            state,
            s.policy,
            if s.identity.integrated {
                " (integrated: shares host memory)"
            } else {
                ""
            }
        );
        if let Some(version) = &s.driver_version {
            println!("     driver: CUDA {version}");
        }
        if let Some(kernel) = &s.leaf_kernel {
            println!("     leaf kernel: {kernel}");
        }
        if let Some(why) = &s.stopped {
            println!("     stopped: {why}");
        }
    }
    Ok(())
}
