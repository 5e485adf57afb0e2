//! `seal FILE...`: copies real model files into device memory, seals them, and prints each
//! `ShardInfo` as one JSON line on stdout (progress bars go to stderr, and only to a terminal).
//! The shard id is the file name reduced to `[A-Za-z0-9_-]`; the model ref is `file:<path>`.
//! With `--group ID --group-devices 0,1,…` the files are the parts of one tensor-parallel group
//! instead (part *i* on the *i*-th listed device, shard id `ID-i`), sealed all or nothing, and
//! the group's `GroupInfo` is printed as one JSON line. With `--hold`, the shards (or the group)
//! stay resident and are verified in full every few seconds until the time is up, Ctrl-C or SIGTERM,
//! then released cleanly before the system shuts down.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use vram_residency::{
    GroupRequest, SealRequest, SealedGroup, SealedShard, VerifyMode, VramError, VramResidency,
    validation,
};

use super::error::CliError;
use super::progress;
use super::token::TokenSource;
use super::{BackendOpt, Global, base_config, human_bytes, millis, shard_id_from_name};

/// Arguments of `seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// Model files to seal, in order.
    #[arg(value_name = "FILE", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,

    /// Device to seal onto.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "group")]
    pub device: u32,

    /// Seal the files as the parts of one tensor-parallel group with this id (part i gets
    /// shard id ID-i); prints the group's GroupInfo. Needs --group-devices.
    #[arg(long, value_name = "ID", requires = "group_devices")]
    pub group: Option<String>,

    /// With --group: the device of each part, in order (part i on the i-th listed device),
    /// e.g. 0,1,2,3; one per FILE.
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        requires = "group"
    )]
    pub group_devices: Vec<u32>,

    /// With --group: the model reference of the group and its parts (default: `file:` and the
    /// directory that holds the parts; each part keeps `file:<its path>`).
    #[arg(long, value_name = "REF", requires = "group")]
    pub model_ref: Option<String>,

    /// Refuse the seal unless the file's SHA-256 is this (64 hex characters; one FILE only).
    #[arg(long, value_name = "HEX")]
    pub expected_sha256: Option<String>,

    /// A model-signing bundle (`model_signing sign key` output) for the model these files
    /// belong to: each file must be the resource of that name in the signed manifest, or the
    /// seal fails (exit 3). Needs --publisher-key.
    #[arg(long, value_name = "BUNDLE", requires = "publisher_key")]
    pub model_signature: Option<PathBuf>,

    /// The publisher's public key (PEM, ECDSA P-256 or P-384) that must have signed
    /// --model-signature.
    #[arg(long, value_name = "PEM", requires = "model_signature")]
    pub publisher_key: Option<PathBuf>,

    /// With --model-signature: the file's name in the signed manifest (default: the file's
    /// name; one FILE only).
    #[arg(long, value_name = "NAME", requires = "model_signature")]
    pub resource: Option<String>,

    /// Merkle leaf size in bytes: a power of two from 4096 to 67108864 (default 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u64>,

    /// Keep the shards resident for SECONDS (0: until Ctrl-C or SIGTERM), verifying them in
    /// full periodically; Ctrl-C or SIGTERM releases them cleanly (the audit log is closed).
    #[arg(long, value_name = "SECONDS")]
    pub hold: Option<u64>,

    /// While holding, verify every SECONDS.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub verify_every: u64,

    #[command(flatten)]
    pub backend: BackendOpt,

    /// Use N simulated devices instead of the default backend.
    #[arg(long, value_name = "N")]
    pub devices: Option<u32>,

    /// Capacity of each simulated device in bytes (default 1 GiB).
    #[arg(long, value_name = "BYTES")]
    pub device_capacity: Option<u64>,

    /// Append audit records to this vram-audit-v1 log (created 0600; an existing log is
    /// verified and continued). Without it, audit records stay in memory.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
}

/// Runs `seal`.
pub async fn run(global: &Global, args: SealArgs) -> Result<(), CliError> {
    let expected = match &args.expected_sha256 {
        None => None,
        Some(_) if args.files.len() > 1 => {
            return Err(CliError::usage(
                "--expected-sha256 applies to a single FILE; seal the files one by one",
            ));
        }
        Some(h) => Some(
            validation::validate_hex_digest("--expected-sha256", h)
                .map_err(CliError::from)
                .map_err(|e| e.hint("give the 64 hex characters that sha256sum prints"))?,
        ),
    };
    if args.resource.is_some() && args.files.len() > 1 {
        return Err(CliError::usage(
            "--resource applies to a single FILE; each of several files is its own file name in the manifest",
        ));
    }
    // Checked before anything starts: a refused signature allocates nothing.
    let signature = match (&args.model_signature, &args.publisher_key) {
        (Some(bundle), Some(key)) => {
            let resources: Vec<String> = args
                .files
                .iter()
                .map(|f| super::provenance::resource_name(args.resource.as_deref(), f))
                .collect();
            Some(super::provenance::load(bundle, key, &resources)?)
        }
        _ => None,
    };
    if let Some(c) = args.chunk_size {
        validation::validate_chunk_size(c)?;
    }
    if args.devices == Some(0) {
        return Err(CliError::usage("--devices must be at least 1"));
    }
    if args.device_capacity == Some(0) {
        return Err(CliError::usage("--device-capacity must be at least 1 byte"));
    }
    for f in &args.files {
        check_file(f)?;
    }
    if args.group.is_some() && args.group_devices.len() != args.files.len() {
        return Err(CliError::usage(format!(
            "--group-devices lists {} device(s) for {} file(s); give one device per part, in order",
            args.group_devices.len(),
            args.files.len()
        ))
        .hint("e.g. --group-devices 0,1,2,3 for four parts"));
    }
    let token = TokenSource::require(global.token_file.as_deref())?;
    token.load()?;

    let mut config = token.apply(base_config(
        global,
        args.backend.backend,
        args.devices,
        args.device_capacity,
    )?);
    if let Some(c) = args.chunk_size {
        config = config.chunk_size(c);
    }
    if let Some(p) = &args.audit_log {
        config = config.audit_log(p.clone());
    }
    let system = VramResidency::start(config).await?;
    let signed = signature.map(|s| super::provenance::Signed {
        signature: s,
        resource: args.resource.clone(),
    });
    let result = match &args.group {
        Some(group_id) => seal_group(&system, &args, group_id, expected, signed.as_ref()).await,
        None => seal_all(&system, &args, expected, signed.as_ref()).await,
    };
    let shut = system.shutdown().await;
    result?;
    shut?;
    Ok(())
}

fn check_file(path: &Path) -> Result<(), CliError> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| CliError::io(format!("cannot read {shown}"), &e))?;
    if !meta.is_file() {
        return Err(CliError::usage(format!("{shown} is not a regular file")));
    }
    // Opening it now turns a permission problem into a clear error before anything starts.
    std::fs::File::open(path).map_err(|e| CliError::io(format!("cannot open {shown}"), &e))?;
    Ok(())
}

async fn seal_all(
    system: &VramResidency,
    args: &SealArgs,
    expected: Option<String>,
    signed: Option<&super::provenance::Signed>,
) -> Result<(), CliError> {
    validation::validate_device(args.device, system.device_count()).map_err(|e| {
        CliError::from(e).hint(format!(
            "pick --device 0..={}, or simulate more devices with --devices N",
            system.device_count().saturating_sub(1)
        ))
    })?;
    let mut used_ids = HashSet::new();
    let mut shards = Vec::new();
    for path in &args.files {
        let shown = path.display().to_string();
        let shard_id = unique_id(&mut used_ids, path);
        let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let model_ref = format!("file:{}", full.display());
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let bar = progress::bytes_bar(size, &shard_id);
        let mut request = SealRequest::from_file(shard_id, model_ref, args.device, path.clone())
            .on_progress(progress::seal_callback(&bar));
        if let Some(h) = &expected {
            request = request.expected_sha256(h.clone());
        }
        if let Some(s) = signed {
            request = s.apply(request, path);
        }
        let sealed = system.seal(request).await;
        bar.finish_and_clear();
        let shard = sealed.map_err(|e| {
            let digest = matches!(e, VramError::DigestMismatch { .. });
            let err = CliError::from(e).context(format!("sealing {shown}"));
            if digest {
                err.hint("the file is not the one you expected; it was not sealed")
            } else {
                err
            }
        })?;
        let line = serde_json::to_string(shard.info())
            .map_err(|e| CliError::env(format!("cannot encode the seal record: {e}")))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| CliError::env(format!("cannot write to stdout: {e}")))?;
        drop(out);
        tracing::info!(shard_id = %shard.shard_id(), bytes = shard.info().vram_bytes, "sealed");
        shards.push(shard);
    }

    if let Some(secs) = args.hold {
        hold(
            system,
            Held::Shards(&shards),
            secs,
            Duration::from_secs(args.verify_every),
        )
        .await?;
    }
    let mut freed = 0u64;
    for shard in shards {
        freed = freed.saturating_add(system.release(shard).await?);
    }
    if args.hold.is_some() {
        eprintln!("released {} ({freed} bytes)", human_bytes(freed));
    }
    Ok(())
}

/// `--group`: seals the files as one tensor-parallel group (all or nothing) and prints its
/// `GroupInfo` as one JSON line.
async fn seal_group(
    system: &VramResidency,
    args: &SealArgs,
    group_id: &str,
    expected: Option<String>,
    signed: Option<&super::provenance::Signed>,
) -> Result<(), CliError> {
    for &device in &args.group_devices {
        validation::validate_device(device, system.device_count()).map_err(|e| {
            CliError::from(e).hint(format!(
                "list devices 0..={} in --group-devices, or simulate more devices with --devices N",
                system.device_count().saturating_sub(1)
            ))
        })?;
    }
    let full: Vec<PathBuf> = args
        .files
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let model_ref = match &args.model_ref {
        Some(r) => r.clone(),
        None => format!("file:{}", common_dir(&full).display()),
    };
    let mut request = GroupRequest::new(group_id, model_ref.clone());
    let mut bars = Vec::new();
    for (i, ((path, device), full)) in args
        .files
        .iter()
        .zip(&args.group_devices)
        .zip(&full)
        .enumerate()
    {
        let shard_id = format!("{group_id}-{i}");
        let part_ref = match &args.model_ref {
            Some(r) => r.clone(),
            None => format!("file:{}", full.display()),
        };
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let bar = progress::bytes_bar(size, &shard_id);
        let mut part = SealRequest::from_file(shard_id, part_ref, *device, path.clone())
            .on_progress(progress::seal_callback(&bar));
        if let Some(h) = &expected {
            part = part.expected_sha256(h.clone());
        }
        if let Some(s) = signed {
            part = s.apply(part, path);
        }
        bars.push(bar);
        request = request.part(part);
    }
    let sealed = system.seal_group(request).await;
    for bar in bars {
        bar.finish_and_clear();
    }
    let group = sealed.map_err(|e| {
        let digest = matches!(e.innermost(), VramError::DigestMismatch { .. });
        let err = CliError::from(e).context(format!("sealing group {group_id:?}"));
        if digest {
            err.hint("a part is not the file you expected; nothing was sealed")
        } else {
            err
        }
    })?;
    let line = serde_json::to_string(group.info())
        .map_err(|e| CliError::env(format!("cannot encode the group record: {e}")))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::env(format!("cannot write to stdout: {e}")))?;
    drop(out);
    tracing::info!(group_id = %group.group_id(), members = group.len(), "group sealed");

    if let Some(secs) = args.hold {
        hold(
            system,
            Held::Group(&group),
            secs,
            Duration::from_secs(args.verify_every),
        )
        .await?;
    }
    let freed = system.release_group(group).await?;
    if args.hold.is_some() {
        eprintln!("released {} ({freed} bytes)", human_bytes(freed));
    }
    Ok(())
}

/// The deepest directory holding every one of `paths` (canonical paths share at least `/`).
fn common_dir(paths: &[PathBuf]) -> PathBuf {
    let mut common: Option<PathBuf> = None;
    for path in paths {
        let dir = path.parent().unwrap_or(path);
        common = Some(match common {
            None => dir.to_path_buf(),
            Some(c) => c
                .components()
                .zip(dir.components())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    common.unwrap_or_default()
}

fn unique_id(used: &mut HashSet<String>, path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = shard_id_from_name(&name);
    let mut id = base.clone();
    let mut n = 1u32;
    while used.contains(&id) {
        n = n.saturating_add(1);
        let suffix = format!("-{n}");
        let keep = validation::MAX_ID_LEN.saturating_sub(suffix.len());
        id = format!("{}{suffix}", base.chars().take(keep).collect::<String>());
    }
    used.insert(id.clone());
    id
}

/// What `--hold` keeps resident: loose shards, or one group (verified as a group: one bad
/// member quarantines them all).
#[derive(Clone, Copy)]
enum Held<'a> {
    Shards(&'a [SealedShard]),
    Group(&'a SealedGroup),
}

async fn hold(
    system: &VramResidency,
    held: Held<'_>,
    secs: u64,
    every: Duration,
) -> Result<(), CliError> {
    let shards = match held {
        Held::Shards(shards) => shards,
        Held::Group(group) => group.shards(),
    };
    let deadline = if secs == 0 {
        None
    } else {
        Instant::now().checked_add(Duration::from_secs(secs))
    };
    let until = match deadline {
        Some(_) => format!("for {secs} s"),
        None => "until Ctrl-C or SIGTERM".to_string(),
    };
    // Installed before the "holding" line, so a stop request sent once it is printed is
    // always a clean stop.
    let mut stop = super::shutdown::StopSignals::install()
        .map_err(|e| CliError::env(format!("cannot listen for Ctrl-C or SIGTERM: {e}")))?;
    eprintln!(
        "holding {} shard(s) resident {until}, verifying in full every {} s (Ctrl-C or SIGTERM releases them)",
        shards.len(),
        every.as_secs()
    );
    let interactive = std::io::stderr().is_terminal();
    loop {
        let now = Instant::now();
        let mut wait = every;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(now);
            if left.is_zero() {
                return Ok(());
            }
            wait = wait.min(left);
        }
        tokio::select! {
            r = stop.recv() => {
                let what = r.map_err(|e| {
                    CliError::env(format!("cannot listen for Ctrl-C or SIGTERM: {e}"))
                })?;
                eprintln!("{what}: releasing");
                return Ok(());
            }
            () = tokio::time::sleep(wait) => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        let started = Instant::now();
        match held {
            Held::Group(group) => {
                system
                    .verify_group(group, VerifyMode::Full)
                    .await
                    .map_err(|e| CliError::from(e).context("periodic verification"))?;
            }
            Held::Shards(shards) => {
                for shard in shards {
                    system
                        .verify(shard, VerifyMode::Full)
                        .await
                        .map_err(|e| CliError::from(e).context("periodic verification"))?;
                }
            }
        }
        tracing::info!(shards = shards.len(), "periodic full verification passed");
        if interactive {
            eprintln!(
                "verified {} shard(s) in full ({})",
                shards.len(),
                millis(started.elapsed())
            );
        }
    }
}
