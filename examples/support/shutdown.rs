//! The examples' stop request: Ctrl-C (SIGINT) or, on Unix, SIGTERM — what a service manager
//! (systemd, Kubernetes, `docker stop`) sends — so that both end in the same clean shutdown
//! (`VramResidency::shutdown`: memory freed, the audit log closed with `AuditLogClosed`).
//!
//! The library installs no signal handler; a service decides what stops it.

/// Resolves when the process is told to stop; returns which request it was ("Ctrl-C",
/// "SIGTERM").
pub async fn stop_requested() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => "Ctrl-C",
                    _ = term.recv() => "SIGTERM",
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
