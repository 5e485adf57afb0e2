//! [`MemoryChain`]: the file writer's encoding and HMAC chain, into lines kept in memory. It
//! backs the audit actor's in-memory sink and the benchmarks; for the same input it produces,
//! byte for byte, the lines the file writer ([`super::AuditLogWriter`]) appends, because both
//! go through the same batch encoder (`super::batch`). It is bounded: it keeps the newest
//! `limit` lines and counts the ones it let go, so a long-running worker on the in-memory sink
//! cannot grow without bound (a file sink is what keeps everything). Critical records (an
//! integrity or policy failure: the evidence) are kept in a ring of their own, so no amount of
//! ordinary records can evict them; only `limit` newer critical records could.

use std::collections::VecDeque;
use std::fmt;

use crate::audit::format::ChainState;
use crate::seal::keys::AuditKey;

use super::AuditLogError;
use super::batch::{check_worker_id, encode_batch};

/// The same encoding and chain as [`AuditLogWriter`](super::AuditLogWriter), into lines kept in
/// memory (for an in-memory audit sink and tests). Lines have no trailing `\n`; check them with
/// [`verify_lines`](crate::audit::verify::verify_lines).
pub struct MemoryChain {
    key: AuditKey,
    worker_id: String,
    chain: ChainState,
    /// Ordinary records: `(seq, line)`, oldest first.
    lines: VecDeque<(u64, String)>,
    /// Critical records, apart from the ordinary ones: `(seq, line)`, oldest first.
    critical: VecDeque<(u64, String)>,
    limit: usize,
    evicted: u64,
}

/// Lines an in-memory chain keeps by default: the newest 100 000.
pub const DEFAULT_MEMORY_LINES: usize = 100_000;

impl fmt::Debug for MemoryChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryChain")
            .field("worker_id", &self.worker_id)
            .field("next_seq", &self.chain.next_seq)
            .field("lines", &self.lines.len())
            .field("critical", &self.critical.len())
            .field("evicted", &self.evicted)
            .finish_non_exhaustive()
    }
}

impl MemoryChain {
    /// An empty chain for `worker_id` that keeps the newest [`DEFAULT_MEMORY_LINES`] lines.
    pub fn new(key: AuditKey, worker_id: &str) -> Result<Self, AuditLogError> {
        Self::with_limit(key, worker_id, DEFAULT_MEMORY_LINES)
    }

    /// An empty chain for `worker_id` that keeps the newest `limit` lines (at least one).
    pub fn with_limit(key: AuditKey, worker_id: &str, limit: usize) -> Result<Self, AuditLogError> {
        check_worker_id(worker_id)?;
        Ok(Self {
            key,
            worker_id: worker_id.to_owned(),
            chain: ChainState::genesis(),
            lines: VecDeque::new(),
            critical: VecDeque::new(),
            limit: limit.max(1),
            evicted: 0,
        })
    }

    /// Encodes and keeps `records` (`(ts, event_json)` pairs) as ordinary records; all or
    /// nothing. Returns the last sequence number.
    pub fn append_batch(&mut self, records: &[(String, String)]) -> Result<u64, AuditLogError> {
        self.append_batch_marked(records, &[])
    }

    /// Like [`MemoryChain::append_batch`]; `critical[i]` says whether record `i` is critical
    /// (kept apart from the ordinary ring; missing entries count as ordinary).
    pub fn append_batch_marked(
        &mut self,
        records: &[(String, String)],
        critical: &[bool],
    ) -> Result<u64, AuditLogError> {
        let first_seq = self.chain.next_seq;
        let (buf, chain, last_seq) =
            encode_batch(&self.key, &self.chain, &self.worker_id, records)?;
        for ((i, line), seq) in buf.lines().enumerate().zip(first_seq..) {
            let ring = if critical.get(i).copied().unwrap_or(false) {
                &mut self.critical
            } else {
                &mut self.lines
            };
            ring.push_back((seq, line.to_owned()));
            if ring.len() > self.limit {
                ring.pop_front();
                self.evicted = self.evicted.saturating_add(1);
            }
        }
        self.chain = chain;
        Ok(last_seq)
    }

    /// The lines kept, oldest first (critical and ordinary ones merged in sequence order). Once
    /// lines were let go, the first one kept does not start the chain, and the kept lines may
    /// have gaps: verify them with a file sink for a log that verifies from its first line.
    pub fn lines(&self) -> Vec<String> {
        let mut ordinary = self.lines.iter().peekable();
        let mut critical = self.critical.iter().peekable();
        let mut out = Vec::with_capacity(self.lines.len().saturating_add(self.critical.len()));
        loop {
            let next = match (ordinary.peek(), critical.peek()) {
                (Some(o), Some(c)) if c.0 < o.0 => critical.next(),
                (Some(_), _) => ordinary.next(),
                (None, Some(_)) => critical.next(),
                (None, None) => break,
            };
            if let Some((_, line)) = next {
                out.push(line.clone());
            }
        }
        out
    }

    /// Lines let go to stay within the limit.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.chain.next_seq
    }

    /// The last record appended: its seq and MAC.
    pub fn head(&self) -> crate::types::AuditHead {
        crate::types::AuditHead::new(self.chain.last_seq(), &self.chain.prev_mac)
    }

    /// Records kept so far.
    pub fn records_written(&self) -> u64 {
        self.chain.last_seq()
    }
}
