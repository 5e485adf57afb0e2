//! Spans that follow the request (SPEC §9.2): every public operation opens `vram.<operation>`
//! with its fields, and what the actors log while serving it is inside that span.
//!
//! Each test installs its own recording subscriber for its thread (`set_default`) and runs on
//! a current-thread runtime (`#[tokio::test]`'s default), so every actor task of its system runs
//! on that thread and reports to that subscriber, and tests running in parallel on other
//! threads neither see nor disturb it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Instrument, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

use crate::common::{self, pattern};
use vram_residency::{Fault, GroupRequest, SealRequest, VerifyMode, VramError};

/// A span as it was created: its name, level, the fields recorded at creation, and its
/// ancestors, innermost first (`actor` spans as `actor:<name>`).
#[derive(Debug, Clone)]
struct SpanSeen {
    name: String,
    level: Level,
    fields: BTreeMap<String, String>,
    parents: Vec<String>,
}

impl SpanSeen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    fn label(&self) -> String {
        match self.field("name") {
            Some(actor) if self.name == "actor" => format!("actor:{actor}"),
            _ => self.name.clone(),
        }
    }
}

/// An event: its level, message and fields, and its span ancestry, innermost first.
#[derive(Debug, Clone)]
struct EventSeen {
    level: Level,
    message: String,
    scope: Vec<SpanSeen>,
}

impl EventSeen {
    /// The innermost enclosing span named `name`.
    fn within(&self, name: &str) -> Option<&SpanSeen> {
        self.scope.iter().find(|s| s.name == name)
    }
}

#[derive(Default)]
struct Seen {
    spans: Vec<SpanSeen>,
    events: Vec<EventSeen>,
}

/// Records every span created and every event with its ancestry.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Seen>>);

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let parents = ctx
            .span(id)
            .map(|span| {
                span.scope()
                    .skip(1)
                    .filter_map(|s| s.extensions().get::<SpanSeen>().map(SpanSeen::label))
                    .collect()
            })
            .unwrap_or_default();
        let seen = SpanSeen {
            name: attrs.metadata().name().to_string(),
            level: *attrs.metadata().level(),
            fields: fields.0,
            parents,
        };
        self.0.lock().unwrap().spans.push(seen.clone());
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(seen);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .filter_map(|span| span.extensions().get::<SpanSeen>().cloned())
                    .collect()
            })
            .unwrap_or_default();
        self.0.lock().unwrap().events.push(EventSeen {
            level: *event.metadata().level(),
            message: fields.0.remove("message").unwrap_or_default(),
            scope,
        });
    }
}

impl Recorder {
    /// Installs a fresh recorder for this thread until the guard drops.
    fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        common::scoped_tracing_works();
        let recorder = Self::default();
        let subscriber = Registry::default().with(recorder.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        (recorder, guard)
    }

    fn spans(&self, name: &str) -> Vec<SpanSeen> {
        let seen = self.0.lock().unwrap();
        seen.spans
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    /// The one span named `name` with `shard_id` (or `group_id`) `id`.
    fn span(&self, name: &str, id: &str) -> SpanSeen {
        let found: Vec<_> = self
            .spans(name)
            .into_iter()
            .filter(|s| s.field("shard_id") == Some(id) || s.field("group_id") == Some(id))
            .collect();
        assert_eq!(found.len(), 1, "{name} for {id}: {found:?}");
        found[0].clone()
    }

    fn events(&self, message: &str) -> Vec<EventSeen> {
        let seen = self.0.lock().unwrap();
        seen.events
            .iter()
            .filter(|e| e.message == message)
            .cloned()
            .collect()
    }

    /// The one event with this message.
    fn event(&self, message: &str) -> EventSeen {
        let found = self.events(message);
        assert_eq!(found.len(), 1, "event {message:?}: {found:?}");
        found[0].clone()
    }
}

const MIB: usize = 1 << 20;

fn assert_span(span: &SpanSeen, fields: &[(&str, &str)]) {
    assert!(span.level <= Level::DEBUG, "{span:?} is below DEBUG");
    for (name, value) in fields {
        assert_eq!(span.field(name), Some(*value), "{name} of {span:?}");
    }
}

/// The success event of an operation: at debug, directly inside the operation's span.
fn assert_done(recorder: &Recorder, message: &str, span: &str, id: &str) {
    let done = recorder.event(message);
    assert_eq!(done.level, Level::DEBUG, "{done:?}");
    let inner = &done.scope[0];
    assert_eq!(inner.name, span, "{done:?}");
    assert!(
        inner.field("shard_id") == Some(id) || inner.field("group_id") == Some(id),
        "{done:?}"
    );
}

#[tokio::test]
async fn every_operation_opens_its_span_with_its_fields() {
    let (recorder, _guard) = Recorder::install();
    let system = common::start(2, 64 << 20).await;
    let data = pattern(MIB + 5);
    let shard = system
        .seal(SealRequest::new("spanned", "hf:org/m@r", 1, data.clone()))
        .await
        .unwrap();
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    let lease = system
        .lease(&shard, VerifyMode::Sampled { chunks: 4 })
        .await
        .unwrap();
    drop(lease);
    let n = system.execute(&shard, |view| view.len()).await.unwrap();
    assert_eq!(n, data.len() as u64);
    system.attest(&shard, &[7u8; 32]).await.unwrap();
    system.attest_signed(&shard, &[8u8; 32]).await.unwrap();
    system.capacity(1).await.unwrap();
    system.release(shard).await.unwrap();

    let shard = [("shard_id", "spanned"), ("device", "1")];
    assert_span(&recorder.span("vram.seal", "spanned"), &shard);
    // `verify` runs on its own and inside lease, execute and both attestations.
    let verifies = recorder.spans("vram.verify");
    assert_eq!(verifies.len(), 5, "{verifies:?}");
    for v in &verifies {
        assert_span(v, &shard);
    }
    let modes: Vec<_> = verifies.iter().map(|v| v.field("mode").unwrap()).collect();
    assert_eq!(modes, ["full", "sampled(4)", "full", "full", "full"]);
    // `lease` runs on its own and inside `execute`.
    let leases = recorder.spans("vram.lease");
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert_span(&leases[0], &[shard[0], shard[1], ("mode", "sampled(4)")]);
    assert_span(&leases[1], &[shard[0], shard[1], ("mode", "full")]);
    // `execute` and `attest` verify in `Config::execute_verify` (full by default).
    for name in ["vram.execute", "vram.attest", "vram.attest_signed"] {
        let span = recorder.spans(name);
        assert_eq!(span.len(), if name == "vram.attest" { 2 } else { 1 });
        assert_span(&span[0], &[shard[0], shard[1], ("mode", "full")]);
    }
    assert_span(&recorder.span("vram.release", "spanned"), &shard);
    assert_span(&recorder.spans("vram.capacity")[0], &[("device", "1")]);

    // One debug event for each success, inside its operation's span.
    assert_done(&recorder, "sealed", "vram.seal", "spanned");
    assert_done(&recorder, "executed", "vram.execute", "spanned");
    assert_done(&recorder, "released", "vram.release", "spanned");
    assert_eq!(recorder.events("verified").len(), 5);
    let leased = recorder.events("leased");
    assert_eq!(leased.len(), 2);
    assert!(leased.iter().all(|e| e.scope[0].name == "vram.lease"));
    assert!(leased[1].within("vram.execute").is_some());
    assert_eq!(recorder.events("attested").len(), 2);
    // The actors that served the seal did so inside its span: the device actor, the seal
    // keeper it asked for the signature, the audit actor it told.
    let actors = recorder.spans("actor");
    let served_seal = |actor: &str, via: &[&str]| {
        actors.iter().any(|a| {
            a.label() == actor
                && a.parents
                    .iter()
                    .map(String::as_str)
                    .take(via.len())
                    .eq(via.iter().copied())
        })
    };
    assert!(served_seal("actor:gpu-1", &["vram.seal"]), "{actors:?}");
    assert!(
        served_seal("actor:seal-keeper", &["actor:gpu-1", "vram.seal"]),
        "{actors:?}"
    );
    assert!(
        served_seal("actor:audit", &["actor:gpu-1", "vram.seal"]),
        "{actors:?}"
    );
    // The nesting: attest → verify.
    let verified_in_attest = recorder
        .events("verified")
        .into_iter()
        .filter(|e| e.within("vram.attest").is_some())
        .count();
    assert_eq!(verified_in_attest, 2);
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_actor_error_is_inside_the_callers_span() {
    let (recorder, _guard) = Recorder::install();
    // The system starts outside the request: its actors are not the request's children,
    // only the work they do for it is.
    let system = common::start(1, 16 << 20).await;
    let shard = system
        .seal(SealRequest::new("flipped", "m", 0, pattern(64 * 1024)))
        .await
        .unwrap();
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "flipped".into(),
                offset: 5000,
                mask: 0x10,
            },
        )
        .await
        .unwrap();
    let request = tracing::info_span!("request", id = 42);
    let err = system
        .verify(&shard, VerifyMode::Full)
        .instrument(request)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VramError::SealVerificationFailed { .. }),
        "{err:?}"
    );

    // The device actor's error event (logged on the actor, after the hashing thread came back)
    // is inside the device actor's named span, inside the caller's `vram.verify`, inside the
    // caller's own `request{id=42}`.
    let failed = recorder.event("seal verification failed; shard quarantined, device stopped");
    assert_eq!(failed.level, Level::ERROR);
    let names: Vec<&str> = failed.scope.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names.get(..3),
        Some(&["actor", "vram.verify", "request"][..]),
        "{:?}",
        failed.scope
    );
    assert_eq!(failed.scope[0].field("name"), Some("gpu-0"));
    assert_span(
        &failed.scope[1],
        &[("shard_id", "flipped"), ("device", "0"), ("mode", "full")],
    );
    assert_eq!(failed.scope[2].field("id"), Some("42"));
    // Nothing of a failure is logged as a success.
    assert!(recorder.events("verified").is_empty());
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn group_operations_open_group_spans_and_their_members_nest_inside() {
    let (recorder, _guard) = Recorder::install();
    let system = common::start(2, 64 << 20).await;
    let request = GroupRequest::new("tp2", "hf:org/m@r")
        .part(SealRequest::new(
            "tp2-0",
            "hf:org/m@r",
            0,
            pattern(64 * 1024),
        ))
        .part(SealRequest::new(
            "tp2-1",
            "hf:org/m@r",
            1,
            pattern(48 * 1024),
        ));
    let group = system.seal_group(request).await.unwrap();
    system
        .verify_group(&group, VerifyMode::Sampled { chunks: 2 })
        .await
        .unwrap();
    system.attest_group(&group, &[9u8; 32]).await.unwrap();
    system.release_group(group).await.unwrap();

    let group = [("group_id", "tp2"), ("device", "0,1")];
    assert_span(&recorder.span("vram.seal_group", "tp2"), &group);
    let verifies = recorder.spans("vram.verify_group");
    assert_eq!(verifies.len(), 2, "its own, and attest_group's");
    assert_span(&verifies[0], &[group[0], group[1], ("mode", "sampled(2)")]);
    assert_span(
        &recorder.span("vram.attest_group", "tp2"),
        &[group[0], group[1], ("mode", "full")],
    );
    assert_span(&recorder.span("vram.release_group", "tp2"), &group);
    for message in ["group sealed", "group attested", "group released"] {
        let done = recorder.event(message);
        assert_eq!(done.level, Level::DEBUG);
        assert_eq!(done.scope[0].field("group_id"), Some("tp2"), "{done:?}");
    }

    // Each member's own operation runs in a task of its own, inside the group's span.
    let sealed = recorder.events("sealed");
    assert_eq!(sealed.len(), 2);
    for member in &sealed {
        assert_eq!(member.scope[0].name, "vram.seal");
        let outer = member.within("vram.seal_group").expect("inside the group");
        assert_eq!(outer.field("group_id"), Some("tp2"));
    }
    let released = recorder.events("released");
    assert_eq!(released.len(), 2);
    assert!(
        released
            .iter()
            .all(|e| e.within("vram.release_group").is_some())
    );
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn caller_input_in_a_span_field_is_sanitised() {
    let (recorder, _guard) = Recorder::install();
    let system = common::start(1, 16 << 20).await;
    let hostile = "evil\u{1b}[2J\nINFO forged line";
    let err = system
        .seal(SealRequest::new(hostile, "m", 0, pattern(4096)))
        .await
        .unwrap_err();
    assert!(matches!(err, VramError::InvalidInput(_)), "{err:?}");
    let seal = &recorder.spans("vram.seal")[0];
    let shown = seal.field("shard_id").unwrap();
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\n'),
        "{shown:?}"
    );
    assert!(shown.starts_with("evil"), "{shown:?}");
    system.shutdown().await.unwrap();
}
