//! Tracing context that follows a request from the public call, through the actors, to the
//! worker threads that do its hashing and copying.
//!
//! Every public async operation of `VramResidency` runs inside a span `vram.<operation>`
//! (`vram.seal`, `vram.verify`, …) with the fields `shard_id` or `group_id`, `device` and, where
//! the operation has one, `mode`. Three mechanisms carry that span onwards:
//!
//! * messages: ractor's `message_span_propogation` feature captures the sender's current span
//!   in every message (calls and casts alike) and runs the receiving actor's handler inside it,
//!   so nothing here or in the message enums carries a span by hand;
//! * actors: each handler then opens [`actor_span`], a span `actor` with the field `name`
//!   (`gpu-0`, `gpu-1`, …, `seal-keeper`, `audit`, `supervisor`), as a child of the caller's span.
//!   The actors are not registered in ractor's process-wide registry under these names: names
//!   there must be unique in the process, and several systems (every test starts its own), or a
//!   restarted device actor racing its predecessor's unregistration, would collide; the
//!   registry would also hand any code in the process a reference to a device actor;
//! * worker pools: [`spawn`], [`spawn_blocking`] and [`rayon_spawn`] run their job inside the
//!   span current where the job was handed over.
//!
//! Caller input recorded in a span before it is validated goes through [`Shown`]: sanitised
//! ([`crate::text::sanitize`]) and capped in length. Nothing secret is ever a field: no device
//! pointer, key, token or signature.

use std::fmt;
use std::future::Future;

use tracing::{Instrument, Span};

/// Which actor a handler belongs to (the `name` field of its [`actor_span`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActorName {
    /// The device actor of this device index.
    Gpu(u32),
    /// The seal keeper.
    SealKeeper,
    /// The audit actor.
    Audit,
    /// The root supervisor.
    Supervisor,
}

impl fmt::Display for ActorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gpu(device) => write!(f, "gpu-{device}"),
            Self::SealKeeper => f.write_str("seal-keeper"),
            Self::Audit => f.write_str("audit"),
            Self::Supervisor => f.write_str("supervisor"),
        }
    }
}

/// The span an actor's handler runs in: `actor{name}`, a child of the span the message was sent
/// from (the caller's `vram.*` span, or another actor's span). A message an actor sends itself
/// (a verification's result, coming back from its hashing thread) arrives in that actor's own
/// span already, and stays in it rather than opening a second one inside it.
pub(crate) fn actor_span(name: ActorName) -> Span {
    // One call site per kind of actor, so that a span's metadata says which kind it names.
    let span = match name {
        ActorName::Gpu(_) => tracing::info_span!("actor", name = %name),
        ActorName::SealKeeper => tracing::info_span!("actor", name = %name),
        ActorName::Audit => tracing::info_span!("actor", name = %name),
        ActorName::Supervisor => tracing::info_span!("actor", name = %name),
    };
    let current = Span::current();
    // Device actors never message each other, so a device actor's span around a device
    // actor's message is that actor's own.
    let same_kind = match (current.metadata(), span.metadata()) {
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        _ => false,
    };
    if same_kind && !current.is_disabled() {
        current
    } else {
        span
    }
}

/// Runs `future` inside `span` (an actor handler inside its [`actor_span`]).
pub(crate) async fn in_span<F: Future>(span: Span, future: F) -> F::Output {
    future.instrument(span).await
}

/// `tokio::spawn`, the task running inside the span current now.
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_span())
}

/// `tokio::task::spawn_blocking`, the job running inside the span current now.
pub(crate) fn spawn_blocking<F, R>(job: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(job))
}

/// `rayon::spawn`, the job running inside the span current now.
pub(crate) fn rayon_spawn<F>(job: F)
where
    F: FnOnce() + Send + 'static,
{
    let span = Span::current();
    rayon::spawn(move || span.in_scope(job));
}

/// Caller input shown in a span field or log line before (or without) validation: sanitised
/// ([`crate::text::sanitize`]: no control characters, escapes or invisible characters) and cut
/// to [`Shown::MAX_CHARS`] characters. Formatted only if a subscriber records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl Shown<'_> {
    /// Longest text shown (a valid id is at most 256 characters).
    pub(crate) const MAX_CHARS: usize = 256;
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .0
            .char_indices()
            .nth(Self::MAX_CHARS)
            .map_or(self.0.len(), |(i, _)| i);
        let head = self.0.get(..end).unwrap_or_default();
        f.write_str(&crate::text::sanitize(head))?;
        if end < self.0.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// The devices of a group, as one field value: `0,1,3`.
pub(crate) struct Devices(pub(crate) Vec<u32>);

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, device) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{device}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_sanitises_and_caps_caller_input() {
        assert_eq!(Shown("m-1").to_string(), "m-1");
        assert_eq!(Shown("a\u{1b}[31mb\nc").to_string(), "a\u{FFFD}b\u{FFFD}c");
        let long = "x".repeat(1000);
        let shown = Shown(&long).to_string();
        assert_eq!(shown.chars().count(), Shown::MAX_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn a_message_an_actor_sends_itself_stays_in_its_span_and_others_nest() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let gpu = actor_span(ActorName::Gpu(0));
            let keeper = gpu.in_scope(|| actor_span(ActorName::SealKeeper));
            assert_ne!(keeper.id(), gpu.id(), "the seal keeper opens its own span");
            let again = gpu.in_scope(|| actor_span(ActorName::Gpu(0)));
            assert_eq!(
                again.id(),
                gpu.id(),
                "a device actor's own message reuses its span"
            );
            let inside = keeper.in_scope(|| actor_span(ActorName::Audit));
            assert_ne!(inside.id(), keeper.id());
        });
    }

    #[test]
    fn actor_and_device_names() {
        assert_eq!(ActorName::Gpu(3).to_string(), "gpu-3");
        assert_eq!(ActorName::SealKeeper.to_string(), "seal-keeper");
        assert_eq!(Devices(vec![0, 1, 3]).to_string(), "0,1,3");
        assert_eq!(Devices(Vec::new()).to_string(), "");
    }
}
