//! Stop requests for the long-running commands (`seal --hold`): Ctrl-C (SIGINT) and, on Unix,
//! SIGTERM — what a service manager (systemd, Kubernetes, `docker stop`) sends — both end in
//! the same clean stop: shards released, then `shutdown`, which closes the audit log
//! (`AuditLogClosed` as its last record).
//!
//! The handlers are installed when [`StopSignals::install`] returns, so a signal that arrives
//! after it (after the command said it is holding) is never the default "terminate at once".

/// Listens for Ctrl-C and (on Unix) SIGTERM from the moment it is installed.
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers now (inside the tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Resolves at the first stop request; returns its name ("Ctrl-C", "SIGTERM").
    pub async fn recv(&mut self) -> std::io::Result<&'static str> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Ok("Ctrl-C"),
                _ = self.terminate.recv() => Ok("SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
        }
    }
}
