//! `AuditActor`: turns events into the HMAC-chained `vram-audit-v1` log, in batches.
//!
//! Other actors `cast` events here and never wait. Events are buffered and written as one batch
//! when `batch_size` have accumulated or `flush_interval` has passed, whichever is first; a
//! `Flush` writes the buffer and fsyncs before it answers, and stopping the actor writes
//! `AuditLogClosed` and syncs.
//!
//! Nothing is lost silently. While the sink fails, events stay in a bounded buffer and are
//! retried on every tick; events beyond the bound are counted, and the first successful write
//! after that carries an `AuditEventsDropped { count, reason }` record. Whether the sink is up is
//! asked through the mailbox (`AuditMsg::Stats`), so `seal` can refuse work while it is down
//! (`fail_closed_audit`) without any state shared outside this actor.
//!
//! Refusals that repeat (`AuditMsg::Refusal`) go through a
//! [`RefusalCoalescer`](crate::audit::refusals::RefusalCoalescer): the first of a reason is
//! written in full, later ones are counted and summed up in one `RefusalsSuppressed` record per
//! reason and window (on a timer, and at shutdown before `AuditLogClosed`). An in-memory sink
//! keeps critical records apart from the ring of ordinary ones.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::actors::spans::{ActorName, actor_span, in_span};
use crate::audit::events::AuditEvent;
use crate::audit::format::format_ts;
use crate::audit::refusals::{DEFAULT_SUMMARY_INTERVAL, Decision, RefusalCoalescer};
use crate::audit::writer::{AuditLogError, AuditLogWriter, MemoryChain};
use crate::config::AuditSinkConfig;
use crate::error::VramError;
use crate::messages::audit::{AuditMsg, AuditStats};
use crate::seal::keys::{AuditKey, WorkerToken};

/// The actor.
pub struct AuditActor;

/// What the `AuditActor` needs to start.
pub struct AuditArgs {
    /// Where records go.
    pub sink: AuditSinkConfig,
    /// The worker token (the audit key is derived from it at start).
    pub token: WorkerToken,
    /// Written into every record.
    pub worker_id: String,
    /// Write a batch once this many events are buffered.
    pub batch_size: usize,
    /// … or once the oldest buffered event is this old.
    pub flush_interval: Duration,
    /// Most events kept while the sink fails; beyond it they are counted and dropped.
    pub buffer_limit: usize,
    /// Lines an in-memory sink keeps (the newest).
    pub memory_lines: usize,
}

enum Sink {
    Memory(MemoryChain),
    File(AuditLogWriter),
}

impl Sink {
    fn append(
        &mut self,
        records: &[(String, String)],
        critical: &[bool],
    ) -> Result<u64, AuditLogError> {
        match self {
            Self::Memory(m) => m.append_batch_marked(records, critical),
            Self::File(w) => w.append_batch(records),
        }
    }

    fn sync(&mut self) -> Result<(), AuditLogError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::File(w) => w.sync(),
        }
    }

    fn head(&self) -> crate::types::AuditHead {
        match self {
            Self::Memory(m) => m.head(),
            Self::File(w) => w.head(),
        }
    }
}

/// The actor's state.
pub struct AuditState {
    sink: Sink,
    buffer: VecDeque<(DateTime<Utc>, AuditEvent)>,
    pending_dropped: u64,
    drop_reason: String,
    stats: AuditStats,
    timer_armed: bool,
    batch_size: usize,
    flush_interval: Duration,
    buffer_limit: usize,
    injected_failure: bool,
    last_error: Option<String>,
    refusals: RefusalCoalescer,
    refusal_timer_armed: bool,
}

impl AuditState {
    fn emit(&mut self, ts: DateTime<Utc>, event: AuditEvent) {
        if self.buffer.len() >= self.buffer_limit {
            self.pending_dropped = self.pending_dropped.saturating_add(1);
            self.stats.dropped = self.stats.dropped.saturating_add(1);
            crate::telemetry::record_audit_dropped(None);
            if self.drop_reason.is_empty() {
                self.drop_reason = match &self.last_error {
                    Some(e) => format!("audit buffer full while the sink was failing: {e}"),
                    None => "audit buffer full".into(),
                };
            }
            tracing::warn!(
                dropped = self.stats.dropped,
                "audit event dropped: buffer full"
            );
            return;
        }
        self.buffer.push_back((ts, event));
    }

    /// Writes the buffer (and a drop report if one is owed) as one batch.
    fn write_batch(&mut self) -> Result<(), VramError> {
        if self.buffer.is_empty() && self.pending_dropped == 0 {
            return Ok(());
        }
        let mut records: Vec<(String, String)> = self
            .buffer
            .iter()
            .map(|(ts, e)| (format_ts(*ts), e.to_json()))
            .collect();
        let critical: Vec<bool> = self.buffer.iter().map(|(_, e)| e.is_critical()).collect();
        if self.pending_dropped > 0 {
            records.push((
                format_ts(Utc::now()),
                AuditEvent::AuditEventsDropped {
                    count: self.pending_dropped,
                    reason: self.drop_reason.clone(),
                }
                .to_json(),
            ));
        }
        let result = if self.injected_failure {
            Err("injected sink failure".to_string())
        } else {
            match self.sink.append(&records, &critical) {
                Ok(n) => Ok(n),
                Err(AuditLogError::InvalidRecord { index, reason }) => {
                    // Not a sink outage: one record can never be written. Retrying would wedge
                    // the log forever, so drop that record, count it, and write the rest.
                    return self.drop_invalid(index, &reason);
                }
                Err(e) => Err(e.to_string()),
            }
        };
        match result {
            Ok(_) => {
                self.stats.written = self.stats.written.saturating_add(records.len() as u64);
                crate::telemetry::record_audit_written(records.len() as u64);
                self.buffer.clear();
                self.pending_dropped = 0;
                self.drop_reason.clear();
                self.last_error = None;
                self.set_healthy(true);
                Ok(())
            }
            Err(e) => {
                if self.last_error.is_none() {
                    tracing::error!(error = %e, "audit sink write failed; buffering events");
                }
                self.last_error = Some(e.clone());
                self.set_healthy(false);
                Err(VramError::AuditUnavailable(e))
            }
        }
    }

    /// Removes the buffered event at `index` (it cannot be encoded), counts it as dropped, and
    /// writes the remaining buffer.
    fn drop_invalid(&mut self, index: usize, reason: &str) -> Result<(), VramError> {
        tracing::error!(%reason, "audit record cannot be encoded; dropping it");
        let dropped = if index < self.buffer.len() {
            self.buffer.remove(index).is_some()
        } else {
            // The drop report itself was rejected: forget it rather than loop.
            self.pending_dropped = 0;
            false
        };
        if dropped {
            self.pending_dropped = self.pending_dropped.saturating_add(1);
            self.stats.dropped = self.stats.dropped.saturating_add(1);
            crate::telemetry::record_audit_dropped(None);
            self.drop_reason = format!("an event could not be encoded: {reason}");
        }
        self.write_batch()
    }

    fn sync(&mut self) -> Result<(), VramError> {
        if self.injected_failure {
            return Err(VramError::AuditUnavailable("injected sink failure".into()));
        }
        self.sink.sync().map_err(|e| {
            self.set_healthy(false);
            VramError::AuditUnavailable(e.to_string())
        })
    }

    fn set_healthy(&mut self, ok: bool) {
        crate::telemetry::set_audit_sink_up(ok);
        self.stats.sink_down = !ok;
    }

    /// A refusal: its record written if it is the first of its reason in the window, else
    /// counted (and a timer armed for the window's summary).
    fn refusal(
        &mut self,
        myself: &ActorRef<AuditMsg>,
        ts: DateTime<Utc>,
        reason: crate::audit::refusals::RefusalReason,
        record: Option<Box<AuditEvent>>,
    ) -> bool {
        let now = tokio::time::Instant::now().into_std();
        match (
            self.refusals.refuse(reason, record.is_some(), ts, now),
            record,
        ) {
            (Decision::Record, Some(event)) => {
                self.emit(ts, *event);
                true
            }
            _ => {
                self.arm_refusal_timer(myself);
                false
            }
        }
    }

    /// Writes the summaries of the refusal windows that have ended.
    fn refusals_due(&mut self, myself: &ActorRef<AuditMsg>) {
        self.refusal_timer_armed = false;
        let now = tokio::time::Instant::now().into_std();
        for summary in self.refusals.due(now) {
            self.emit(Utc::now(), summary);
        }
        self.arm_refusal_timer(myself);
    }

    fn arm_refusal_timer(&mut self, myself: &ActorRef<AuditMsg>) {
        if self.refusal_timer_armed {
            return;
        }
        if let Some(due) = self.refusals.next_due() {
            self.refusal_timer_armed = true;
            let wait = due.saturating_duration_since(tokio::time::Instant::now().into_std());
            myself.send_after(wait, || AuditMsg::RefusalsDue);
        }
    }

    fn stats(&self) -> AuditStats {
        AuditStats {
            suppressed: self.refusals.total_counted(),
            buffered: self.buffer.len() as u64,
            evicted: match &self.sink {
                Sink::Memory(m) => m.evicted(),
                Sink::File(_) => 0,
            },
            ..self.stats
        }
    }

    fn arm_timer(&mut self, myself: &ActorRef<AuditMsg>) {
        if !self.timer_armed {
            self.timer_armed = true;
            myself.send_after(self.flush_interval, || AuditMsg::Tick);
        }
    }
}

fn open_sink(
    sink: &AuditSinkConfig,
    token: &WorkerToken,
    worker_id: &str,
    memory_lines: usize,
) -> Result<(Sink, AuditEvent), AuditLogError> {
    let key = AuditKey::derive(token);
    match sink {
        AuditSinkConfig::Memory => Ok((
            Sink::Memory(MemoryChain::with_limit(key, worker_id, memory_lines)?),
            AuditEvent::AuditLogOpened {
                resumed_from_seq: 0,
                torn_tail_bytes: None,
                torn_tail_sha256: None,
            },
        )),
        AuditSinkConfig::File(path) => {
            let path: PathBuf = path.clone();
            let (writer, report) = AuditLogWriter::open(&path, key, worker_id)?;
            Ok((Sink::File(writer), report.opened_event()))
        }
    }
}

impl Actor for AuditActor {
    type Msg = AuditMsg;
    type State = AuditState;
    type Arguments = AuditArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AuditMsg>,
        args: AuditArgs,
    ) -> Result<AuditState, ActorProcessingErr> {
        let span = actor_span(ActorName::Audit);
        in_span(span, self.on_start(myself, args)).await
    }

    async fn handle(
        &self,
        myself: ActorRef<AuditMsg>,
        message: AuditMsg,
        state: &mut AuditState,
    ) -> Result<(), ActorProcessingErr> {
        let span = actor_span(ActorName::Audit);
        in_span(span, self.on_message(myself, message, state)).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<AuditMsg>,
        state: &mut AuditState,
    ) -> Result<(), ActorProcessingErr> {
        let span = actor_span(ActorName::Audit);
        in_span(span, self.on_stop(myself, state)).await
    }
}

/// The handlers, each run inside the actor's span (see the `Actor` impl above).
impl AuditActor {
    async fn on_start(
        &self,
        _myself: ActorRef<AuditMsg>,
        args: AuditArgs,
    ) -> Result<AuditState, ActorProcessingErr> {
        // Reopening a log verifies it line by line (and may cut a torn tail): file I/O and CPU
        // work proportional to the log, so it runs off the runtime's worker threads.
        let (config, token, worker_id) = (
            args.sink.clone(),
            args.token.duplicate(),
            args.worker_id.clone(),
        );
        let (sink, opened) = crate::actors::spans::spawn_blocking(move || {
            open_sink(&config, &token, &worker_id, args.memory_lines)
        })
        .await
        .map_err(|e| format!("opening the audit log failed: {e}"))??;
        let mut state = AuditState {
            sink,
            buffer: VecDeque::new(),
            pending_dropped: 0,
            drop_reason: String::new(),
            stats: AuditStats::default(),
            timer_armed: false,
            batch_size: args.batch_size.max(1),
            flush_interval: args.flush_interval,
            buffer_limit: args.buffer_limit.max(1),
            injected_failure: false,
            last_error: None,
            refusals: RefusalCoalescer::new(DEFAULT_SUMMARY_INTERVAL),
            refusal_timer_armed: false,
        };
        state.emit(Utc::now(), opened);
        state.write_batch()?;
        state.sync()?;
        Ok(state)
    }

    async fn on_message(
        &self,
        myself: ActorRef<AuditMsg>,
        message: AuditMsg,
        state: &mut AuditState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AuditMsg::Emit(ts, event) => {
                state.emit(ts, event);
                // While the sink is failing, retries happen on the timer only (not on every
                // event, which would re-encode the whole buffer each time).
                if state.buffer.len() >= state.batch_size && !state.stats.sink_down {
                    if state.write_batch().is_err() {
                        state.arm_timer(&myself);
                    }
                } else {
                    state.arm_timer(&myself);
                }
            }
            AuditMsg::Refusal(ts, reason, record) => {
                if state.refusal(&myself, ts, reason, record) {
                    state.arm_timer(&myself);
                }
            }
            AuditMsg::RefusalsDue => {
                state.refusals_due(&myself);
                if !state.buffer.is_empty() {
                    state.arm_timer(&myself);
                }
            }
            AuditMsg::Tick => {
                state.timer_armed = false;
                if state.write_batch().is_err() || !state.buffer.is_empty() {
                    state.arm_timer(&myself);
                }
            }
            AuditMsg::Flush(reply) => {
                let r = state.write_batch().and_then(|()| state.sync());
                if r.is_err() {
                    state.arm_timer(&myself);
                }
                let _ = reply.send(r.map(|()| state.stats()));
            }
            AuditMsg::Head(reply) => {
                let r = state.write_batch().and_then(|()| state.sync());
                if r.is_err() {
                    state.arm_timer(&myself);
                }
                let _ = reply.send(r.map(|()| state.sink.head()));
            }
            AuditMsg::Lines(reply) => {
                let lines = match &state.sink {
                    Sink::Memory(m) => m.lines().to_vec(),
                    Sink::File(_) => Vec::new(),
                };
                let _ = reply.send(lines);
            }
            AuditMsg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
            AuditMsg::SinkFault(on) => {
                state.injected_failure = on;
                if !on {
                    let _ = state.write_batch();
                } else {
                    state.set_healthy(false);
                    state.last_error = Some("injected sink failure".into());
                }
            }
        }
        Ok(())
    }

    async fn on_stop(
        &self,
        _myself: ActorRef<AuditMsg>,
        state: &mut AuditState,
    ) -> Result<(), ActorProcessingErr> {
        // Refusals counted in windows that have not ended yet are summed up now, so the
        // counts are on record before the log closes.
        let now = tokio::time::Instant::now().into_std();
        for summary in state.refusals.drain(now) {
            state.emit(Utc::now(), summary);
        }
        let records = state
            .stats
            .written
            .saturating_add(state.buffer.len() as u64);
        state.emit(
            Utc::now(),
            AuditEvent::AuditLogClosed {
                records_written: records,
            },
        );
        if let Err(e) = state.write_batch().and_then(|()| state.sync()) {
            tracing::error!(error = %e, lost = state.buffer.len(), "audit log could not be closed cleanly");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify::verify_lines;

    fn args(buffer_limit: usize) -> AuditArgs {
        AuditArgs {
            sink: AuditSinkConfig::Memory,
            token: WorkerToken::new(b"audit-actor-test-token".to_vec()).unwrap(),
            worker_id: "w".into(),
            batch_size: 4,
            flush_interval: Duration::from_millis(5),
            buffer_limit,
            memory_lines: 1000,
        }
    }

    fn ev(i: u64) -> AuditEvent {
        AuditEvent::DeviceReset {
            gpu_device: i as u32,
        }
    }

    async fn lines(a: &ActorRef<AuditMsg>) -> Vec<String> {
        a.call(AuditMsg::Flush, None)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        a.call(AuditMsg::Lines, None).await.unwrap().unwrap()
    }

    #[test]
    fn events_are_batched_chained_and_flushed() {
        tokio_test::block_on(async {
            let (a, h) = Actor::spawn(None, AuditActor, args(100)).await.unwrap();
            for i in 0..10 {
                a.cast(AuditMsg::Emit(Utc::now(), ev(i))).unwrap();
            }
            let out = lines(&a).await;
            assert_eq!(out.len(), 11); // AuditLogOpened + 10
            let key =
                AuditKey::derive(&WorkerToken::new(b"audit-actor-test-token".to_vec()).unwrap());
            let report = verify_lines(out.iter().map(String::as_str), &key, true);
            assert!(report.is_intact(), "{report:?}");
            assert_eq!(report.counts_by_type.get("DeviceReset"), Some(&10));
            let stats = a.call(AuditMsg::Stats, None).await.unwrap().unwrap();
            assert_eq!((stats.written, stats.dropped, stats.buffered), (11, 0, 0));
            a.stop(None);
            h.await.unwrap();
        });
    }

    #[test]
    fn a_failing_sink_buffers_then_reports_exactly_what_it_dropped() {
        tokio_test::block_on(async {
            let (a, h) = Actor::spawn(None, AuditActor, args(5)).await.unwrap();
            a.cast(AuditMsg::SinkFault(true)).unwrap();
            for i in 0..12 {
                a.cast(AuditMsg::Emit(Utc::now(), ev(i))).unwrap();
            }
            let flushed = a.call(AuditMsg::Flush, None).await.unwrap().unwrap();
            assert!(matches!(flushed, Err(VramError::AuditUnavailable(_))));
            let stats = a.call(AuditMsg::Stats, None).await.unwrap().unwrap();
            assert_eq!(
                (stats.buffered, stats.dropped, stats.sink_down),
                (5, 7, true)
            );
            a.cast(AuditMsg::SinkFault(false)).unwrap();
            let out = lines(&a).await;
            let stats = a.call(AuditMsg::Stats, None).await.unwrap().unwrap();
            assert!(!stats.sink_down, "the sink is up again");
            // opened + the 5 kept + one drop report
            assert_eq!(out.len(), 7, "{out:#?}");
            let last = out.last().unwrap();
            assert!(
                last.contains(r#""type":"AuditEventsDropped","count":7"#),
                "{last}"
            );
            let kept: Vec<_> = out.iter().filter(|l| l.contains("DeviceReset")).collect();
            assert_eq!(kept.len(), 5);
            for (i, l) in kept.iter().enumerate() {
                assert!(l.contains(&format!(r#""gpu_device":{i}"#)), "{l}");
            }
            a.stop(None);
            h.await.unwrap();
        });
    }

    async fn stats(a: &ActorRef<AuditMsg>) -> AuditStats {
        a.call(AuditMsg::Stats, None).await.unwrap().unwrap()
    }

    /// Paused time: a batch goes out when `batch_size` events are buffered, or when
    /// `flush_interval` has passed since the first of them, whichever comes first — and not
    /// a moment before.
    #[tokio::test(start_paused = true)]
    async fn batches_are_written_at_the_count_or_the_interval() {
        let (a, h) = Actor::spawn(None, AuditActor, args(100)).await.unwrap();
        let base = stats(&a).await.written; // AuditLogOpened
        for i in 0..3 {
            a.cast(AuditMsg::Emit(Utc::now(), ev(i))).unwrap();
        }
        let s = stats(&a).await;
        assert_eq!((s.written, s.buffered), (base, 3), "below the count: held");
        a.cast(AuditMsg::Emit(Utc::now(), ev(3))).unwrap();
        let s = stats(&a).await;
        assert_eq!(
            (s.written, s.buffered),
            (base + 4, 0),
            "the 4th event sends the batch"
        );

        a.cast(AuditMsg::Emit(Utc::now(), ev(4))).unwrap();
        let mut tick = tokio_test::task::spawn(tokio::time::sleep(Duration::from_millis(4)));
        tokio_test::assert_pending!(tick.poll());
        tokio::time::advance(Duration::from_millis(4)).await;
        tokio_test::assert_ready!(tick.poll());
        let s = stats(&a).await;
        assert_eq!(
            (s.written, s.buffered),
            (base + 4, 1),
            "4 ms of 5: still held"
        );
        tokio::time::advance(Duration::from_millis(2)).await;
        // Let the timer task that fired queue its tick ahead of the next question.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let s = stats(&a).await;
        assert_eq!(
            (s.written, s.buffered),
            (base + 5, 0),
            "the interval sends it"
        );
        a.stop(None);
        h.await.unwrap();
    }

    /// Paused time: the first refusal of a reason with a record is written in full, the rest
    /// are only counted; a minute later one summary per reason goes out, and at shutdown the
    /// counts of windows still open are written before `AuditLogClosed`.
    #[tokio::test(start_paused = true)]
    async fn repeated_refusals_are_counted_and_summed_up_once_per_window() {
        use crate::audit::refusals::RefusalReason;
        let (a, h) = Actor::spawn(None, AuditActor, args(100)).await.unwrap();
        let refuse = |reason, record: Option<AuditEvent>| {
            a.cast(AuditMsg::Refusal(Utc::now(), reason, record.map(Box::new)))
                .unwrap();
        };
        for i in 0..500 {
            refuse(RefusalReason::ForgedShardRecord, Some(ev(i)));
            refuse(RefusalReason::QuarantinedGroup, None);
        }
        let out = lines(&a).await;
        let types = |out: &[String]| -> Vec<String> {
            out.iter()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["event"]["type"].as_str().unwrap().to_string()
                })
                .collect()
        };
        assert_eq!(types(&out), ["AuditLogOpened", "DeviceReset"]);
        assert_eq!(stats(&a).await.suppressed, 999);

        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(lines(&a).await.len(), 2, "not before the minute is over");
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let out = lines(&a).await;
        assert_eq!(out.len(), 4, "{out:#?}");
        assert!(
            out[2].contains(
                r#""type":"RefusalsSuppressed","reason":"forged_shard_record","count":499"#
            ),
            "{}",
            out[2]
        );
        assert!(
            out[3].contains(r#""reason":"quarantined_group","count":500"#),
            "{}",
            out[3]
        );

        // More of them in the next window: counted, no second full record (the file-sink
        // test in tests/hostile.rs sees them summed up at shutdown).
        refuse(RefusalReason::ForgedShardRecord, Some(ev(7)));
        assert_eq!(lines(&a).await.len(), 4);
        assert_eq!(stats(&a).await.suppressed, 1000);
        a.stop(None);
        h.await.unwrap();
    }
}
