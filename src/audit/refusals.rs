//! Refusals that repeat are counted, not written one record each.
//!
//! Once a shard or group is quarantined, or a forger keeps sending records that do not verify,
//! every further call is refused the same way (and a client that keeps dropping its `verify`
//! calls has each one cancelled the same way). Writing a full record for each let any caller
//! grow the log (and, on the in-memory sink, push the original finding out of it) as fast as it
//! could send. [`RefusalCoalescer`] decides per [`RefusalReason`], a small fixed set, so that
//! what a caller chooses cannot multiply the records:
//!
//! * the first refusal of a reason is written in full (when the caller has a record for it);
//! * later ones within the same window (a minute by default) are only counted (the
//!   `vram_refusals_total{reason}` counter goes up for every one);
//! * when the window has passed, one [`AuditEvent::RefusalsSuppressed`] record says how many
//!   were counted and since when, and a new window starts; a reason quiet for a whole window
//!   starts over with a full record.
//!
//! So each reason adds at most one full record and one summary per window, whatever callers do.
//! The transition itself (a shard or group found bad and quarantined) is not a refusal: it is
//! recorded once, critically, by whoever quarantines.
//!
//! The coalescer is plain state driven by the audit actor, which owns it and gives it the time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::audit::events::AuditEvent;
use crate::audit::format::format_ts;

pub use crate::telemetry::REFUSALS_TOTAL;

/// How long refusals of one reason are counted before a summary record is written.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Why a call was refused, as far as coalescing goes. A fixed set: ids, nonces and the records'
/// contents never make a new reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// A peer's `ShardInfo` whose seal signature does not verify (forged or altered).
    ForgedShardRecord,
    /// A peer's `ShardInfo` that verifies but that no resident shard carries.
    ResidencyMismatch,
    /// A peer's `GroupInfo` whose group signature does not verify.
    ForgedGroupRecord,
    /// A call on a shard already quarantined (its failure is on record).
    QuarantinedShard,
    /// A verification or challenge of a group already failed (its failure is on record).
    QuarantinedGroup,
    /// A verification whose caller gave up (dropped its future) before it ended, and whose
    /// leaves read until then all matched (one that already showed a bad leaf fails closed and
    /// is recorded critically instead). Not a refusal strictly, but just as repeatable: a
    /// client can drop as many requests as it sends.
    CancelledVerification,
}

impl RefusalReason {
    /// The reason as written in records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ForgedShardRecord => "forged_shard_record",
            Self::ResidencyMismatch => "residency_mismatch",
            Self::ForgedGroupRecord => "forged_group_record",
            Self::QuarantinedShard => "quarantined_shard",
            Self::QuarantinedGroup => "quarantined_group",
            Self::CancelledVerification => "cancelled_verification",
        }
    }

    /// Every reason.
    pub const ALL: [Self; 6] = [
        Self::ForgedShardRecord,
        Self::ResidencyMismatch,
        Self::ForgedGroupRecord,
        Self::QuarantinedShard,
        Self::QuarantinedGroup,
        Self::CancelledVerification,
    ];

    /// Parses [`RefusalReason::as_str`]'s spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write the caller's record in full (the first of its reason in this window).
    Record,
    /// Only count it; a summary follows when the window ends.
    Count,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    counted: u64,
    since: Option<DateTime<Utc>>,
    /// A full record of this reason was written in this run of windows.
    recorded: bool,
}

/// Per-reason windows of counted refusals (see the module docs).
#[derive(Debug)]
pub struct RefusalCoalescer {
    interval: Duration,
    windows: BTreeMap<RefusalReason, Window>,
    total_counted: u64,
}

impl RefusalCoalescer {
    /// A coalescer whose windows last `interval` (at least 1 ms).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval: interval.max(Duration::from_millis(1)),
            windows: BTreeMap::new(),
            total_counted: 0,
        }
    }

    /// Decides about one refusal of `reason` at `ts` (wall clock, for the summary's `since`)
    /// and `now` (monotonic, for the window). `has_record` says whether the caller has a full
    /// record for it; without one the refusal is always only counted.
    pub fn refuse(
        &mut self,
        reason: RefusalReason,
        has_record: bool,
        ts: DateTime<Utc>,
        now: Instant,
    ) -> Decision {
        let interval = self.interval;
        let w = self.windows.entry(reason).or_insert(Window {
            started: now,
            counted: 0,
            since: None,
            recorded: false,
        });
        // A window that ended with nothing counted is over: this refusal starts afresh.
        if w.counted == 0 && now.saturating_duration_since(w.started) >= interval {
            w.started = now;
            w.recorded = false;
        }
        if has_record && !w.recorded && w.counted == 0 {
            w.recorded = true;
            return Decision::Record;
        }
        w.counted = w.counted.saturating_add(1);
        w.since.get_or_insert(ts);
        self.total_counted = self.total_counted.saturating_add(1);
        Decision::Count
    }

    /// The summaries of every window that has ended with refusals counted, each starting a new
    /// window at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<AuditEvent> {
        let interval = self.interval;
        self.summaries(
            |w| now.saturating_duration_since(w.started) >= interval,
            now,
        )
    }

    /// The summaries of every window with refusals counted, ended or not (at shutdown).
    pub fn drain(&mut self, now: Instant) -> Vec<AuditEvent> {
        self.summaries(|_| true, now)
    }

    fn summaries(&mut self, ended: impl Fn(&Window) -> bool, now: Instant) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        for (reason, w) in &mut self.windows {
            if w.counted == 0 || !ended(w) {
                continue;
            }
            out.push(AuditEvent::RefusalsSuppressed {
                reason: reason.as_str().to_string(),
                count: w.counted,
                since: w.since.map(format_ts).unwrap_or_default(),
            });
            w.started = now;
            w.counted = 0;
            w.since = None;
        }
        out
    }

    /// When the next window with refusals counted ends, if one has any.
    pub fn next_due(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|w| w.counted > 0)
            .map(|w| w.started.checked_add(self.interval).unwrap_or(w.started))
            .min()
    }

    /// Refusals counted (not written) since start.
    pub fn total_counted(&self) -> u64 {
        self.total_counted
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // test code
mod tests {
    use super::*;

    fn summary(e: &AuditEvent) -> (&str, u64) {
        match e {
            AuditEvent::RefusalsSuppressed { reason, count, .. } => (reason.as_str(), *count),
            other => panic!("not a summary: {other:?}"),
        }
    }

    #[test]
    fn first_in_full_then_counted_then_one_summary_per_window() {
        let t0 = Instant::now();
        let ts = Utc::now();
        let mut c = RefusalCoalescer::new(Duration::from_secs(60));
        let forged = RefusalReason::ForgedShardRecord;
        assert_eq!(c.refuse(forged, true, ts, t0), Decision::Record);
        for i in 1..10_000u64 {
            let now = t0 + Duration::from_millis(i);
            assert_eq!(c.refuse(forged, true, ts, now), Decision::Count);
        }
        assert_eq!(c.total_counted(), 9_999);
        assert!(c.due(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(c.next_due(), Some(t0 + Duration::from_secs(60)));
        let due = c.due(t0 + Duration::from_secs(60));
        assert_eq!(due.len(), 1);
        assert_eq!(summary(&due[0]), ("forged_shard_record", 9_999));
        // A new window: still counted, not written in full.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(c.refuse(forged, true, ts, t1), Decision::Count);
        assert!(c.due(t1).is_empty());
        assert_eq!(summary(&c.due(t0 + Duration::from_secs(120))[0]).1, 1);
        // Quiet for a whole window: the next one is written in full again.
        assert_eq!(
            c.refuse(forged, true, ts, t0 + Duration::from_secs(181)),
            Decision::Record
        );
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn reasons_are_apart_and_record_less_refusals_only_count() {
        let t0 = Instant::now();
        let ts = Utc::now();
        let mut c = RefusalCoalescer::new(Duration::from_secs(60));
        let q = RefusalReason::QuarantinedGroup;
        assert_eq!(c.refuse(q, false, ts, t0), Decision::Count);
        assert_eq!(
            c.refuse(RefusalReason::ResidencyMismatch, true, ts, t0),
            Decision::Record
        );
        assert_eq!(c.refuse(q, false, ts, t0), Decision::Count);
        let drained = c.drain(t0);
        assert_eq!(drained.len(), 1);
        assert_eq!(summary(&drained[0]), ("quarantined_group", 2));
        assert!(c.drain(t0).is_empty());
    }

    #[test]
    fn reasons_round_trip() {
        for r in RefusalReason::ALL {
            assert_eq!(RefusalReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(RefusalReason::parse("Forged_Shard_Record"), None);
    }
}
