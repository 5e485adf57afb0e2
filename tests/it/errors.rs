//! Errors a caller can branch on: a seal source's I/O failures are `Io` with the operating
//! system's kind (and the `io::Error` as their source), a group member's error is the group
//! error's source, a backend that cannot start is `BackendUnavailable` (not retriable), and the
//! README's error table names every variant.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use crate::common;

use std::error::Error as _;
use std::io::ErrorKind;

use common::{TOKEN, config, pattern, start};
use vram_residency::{Config, GroupRequest, IoSource, SealRequest, VramError, VramResidency};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_file_is_io_not_found_with_the_os_error_as_source() {
    let system = start(1, 1 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.bin");
    let err = system
        .seal(SealRequest::from_file("s", "m", 0, missing))
        .await
        .unwrap_err();
    let VramError::Io { kind, message, .. } = &err else {
        panic!("expected Io, got {err:?}");
    };
    assert_eq!(*kind, ErrorKind::NotFound);
    assert!(message.contains("cannot read model file"), "{message}");
    assert!(message.contains("nope.bin"), "{message}");
    assert!(!err.is_retriable() && !err.is_integrity_failure());
    // The chain: VramError -> IoSource (the io::Error, with its OS code).
    let source = err.source().expect("an Io error has a source");
    let io = source
        .downcast_ref::<IoSource>()
        .expect("the source is an IoSource");
    assert_eq!(io.kind(), ErrorKind::NotFound);
    assert_eq!(io.get_ref().kind(), ErrorKind::NotFound);
    assert!(io.raw_os_error().is_some(), "{io:?}");
    // Clone and equality still hold.
    assert_eq!(err.clone(), err);
    // Nothing was allocated.
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_is_still_invalid_input() {
    let system = start(1, 1 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let err = system
        .seal(SealRequest::from_file("s", "m", 0, dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VramError::InvalidInput(m) if m.contains("not a regular file")),
        "{err:?}"
    );
    assert!(err.source().is_none());
    system.shutdown().await.unwrap();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_model_file_is_io_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.bin");
    std::fs::write(&path, pattern(10_000)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&path).is_ok() {
        return; // running as root: permissions do not stop it
    }
    let system = start(1, 1 << 20).await;
    let err = system
        .seal(SealRequest::from_file("s", "m", 0, path))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            VramError::Io {
                kind: ErrorKind::PermissionDenied,
                ..
            }
        ),
        "{err:?}"
    );
    let io = err.source().unwrap().downcast_ref::<IoSource>().unwrap();
    assert_eq!(io.kind(), ErrorKind::PermissionDenied);
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_error_is_the_group_errors_source() {
    let system = start(2, 1 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let request = GroupRequest::new("g", "m")
        .part(SealRequest::new("g-0", "m", 0, pattern(5000)))
        .part(SealRequest::from_file(
            "g-1",
            "m",
            1,
            dir.path().join("gone.bin"),
        ));
    let err = system.seal_group(request).await.unwrap_err();
    let VramError::GroupMember { cause, .. } = &err else {
        panic!("expected GroupMember, got {err:?}");
    };
    assert!(
        matches!(
            **cause,
            VramError::Io {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{cause:?}"
    );
    // GroupMember -> the member's error (boxed, as the field holds it) -> IoSource.
    let member = err
        .source()
        .unwrap()
        .downcast_ref::<Box<VramError>>()
        .unwrap();
    assert_eq!(member, cause);
    let member: &VramError = member;
    assert_eq!(member, err.innermost());
    let io = member.source().unwrap().downcast_ref::<IoSource>().unwrap();
    assert_eq!(io.kind(), ErrorKind::NotFound);
    // rolled back: nothing resident
    for d in 0..2 {
        assert_eq!(system.capacity(d).await.unwrap().used_bytes, 0);
    }
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_without_a_driver_is_backend_unavailable_and_not_retriable() {
    if vram_residency::gpu::cuda::driver_library_present()
        && vram_residency::gpu::cuda::probe().is_ok()
    {
        return; // a CUDA device is here: nothing to refuse
    }
    let err = VramResidency::start(Config::cuda().worker_token(TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VramError::BackendUnavailable { device: None, .. }),
        "{err:?}"
    );
    assert!(!err.is_retriable(), "{err}");
    assert!(err.to_string().contains("cannot be used"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_log_that_cannot_be_opened_is_audit_unavailable_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // The log's directory does not exist.
    let log = dir.path().join("missing-dir").join("audit.jsonl");
    let err = VramResidency::start(config(1, 1 << 20).audit_log(&log))
        .await
        .unwrap_err();
    assert!(matches!(&err, VramError::AuditUnavailable(_)), "{err:?}");
    assert!(
        !err.to_string().contains("panicked"),
        "the actor wrappers are not in the message: {err}"
    );
}

/// The variant names of `VramError`, read from `src/error.rs`.
fn variants() -> Vec<String> {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/error.rs"),
    )
    .unwrap();
    let start = src.find("pub enum VramError {").unwrap();
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").unwrap()];
    body.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("    ")?;
            let first = l.chars().next()?;
            if !first.is_ascii_uppercase() {
                return None;
            }
            let name: String = l.chars().take_while(char::is_ascii_alphanumeric).collect();
            Some(name)
        })
        .collect()
}

#[test]
fn the_readme_error_table_names_every_variant_and_says_whether_it_is_retriable() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let start = readme
        .find("<!-- error table -->")
        .expect("README has the error table marker");
    let end = readme.find("<!-- end of error table -->").unwrap();
    let table = &readme[start..end];
    let variants = variants();
    assert!(variants.len() > 20, "{variants:?}");
    for v in &variants {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `{v}")))
            .unwrap_or_else(|| panic!("README's error table has no row for {v}"));
        let retriable = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        assert!(
            ["yes", "no", "as `cause`", "only for `Restarting`"].contains(&retriable),
            "{row}"
        );
    }
    let rows = table.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, variants.len(), "one row per variant: {variants:?}");
}
