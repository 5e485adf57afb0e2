//! The end of a system's life: dropping the last handle without `shutdown` says what was lost
//! (a warning), and after `shutdown` it says nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{pattern, start};
use vram_residency::SealRequest;

/// Log lines written by a subscriber, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Runs `f` (which drops a handle) on this thread with a subscriber that captures warnings.
fn warnings_while(f: impl FnOnce()) -> String {
    crate::common::scoped_tracing_works();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    captured.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_without_shutdown_warns_what_was_lost() {
    let system = start(1, 1 << 20).await;
    let shard = system
        .seal(SealRequest::new("kept", "m", 0, pattern(5000)))
        .await
        .unwrap();
    let clone = system.clone();
    // Not the last handle: nothing to say.
    assert_eq!(warnings_while(|| drop(clone)), "");
    let text = warnings_while(|| drop(system));
    assert!(text.contains("without shutdown()"), "{text}");
    assert!(text.contains("AuditLogClosed"), "{text}");
    assert!(text.contains("resident"), "{text}");
    drop(shard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_after_shutdown_is_silent() {
    let system = start(1, 1 << 20).await;
    system.shutdown().await.unwrap();
    assert_eq!(warnings_while(|| drop(system)), "");
}
