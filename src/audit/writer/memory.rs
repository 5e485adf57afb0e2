//! [`MemoryChain`]: the file writer's encoding and HMAC chain, into lines kept in memory. It
//! backs the audit actor's in-memory sink and the benchmarks; for the same input it produces,
//! byte for byte, the lines the file writer ([`super::AuditLogWriter`]) appends, because both
//! go through the same batch encoder (`super::batch`).

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
    lines: Vec<String>,
}

impl fmt::Debug for MemoryChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryChain")
            .field("worker_id", &self.worker_id)
            .field("next_seq", &self.chain.next_seq)
            .field("lines", &self.lines.len())
            .finish_non_exhaustive()
    }
}

impl MemoryChain {
    /// An empty chain for `worker_id`.
    pub fn new(key: AuditKey, worker_id: &str) -> Result<Self, AuditLogError> {
        check_worker_id(worker_id)?;
        Ok(Self {
            key,
            worker_id: worker_id.to_owned(),
            chain: ChainState::genesis(),
            lines: Vec::new(),
        })
    }

    /// Encodes and keeps `records` (`(ts, event_json)` pairs); all or nothing. Returns the last
    /// sequence number.
    pub fn append_batch(&mut self, records: &[(String, String)]) -> Result<u64, AuditLogError> {
        let (buf, chain, last_seq) =
            encode_batch(&self.key, &self.chain, &self.worker_id, records)?;
        self.lines.extend(buf.lines().map(str::to_owned));
        self.chain = chain;
        Ok(last_seq)
    }

    /// The lines so far, oldest first.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.chain.next_seq
    }

    /// Records kept so far.
    pub fn records_written(&self) -> u64 {
        self.chain.last_seq()
    }
}
