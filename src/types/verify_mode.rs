//! How thoroughly a verification checks a shard, and everything that follows from the choice:
//! whether it is valid, which chunks a run reads back, how it is spelled on the wire and in
//! metrics, and whether one mode is at least as strong as another.
//!
//! Every place that handles a mode asks it here, through exhaustive matches, so a new mode is
//! added in this file and the compiler then points at each place that must decide about it.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// How thoroughly to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
#[non_exhaustive]
pub enum VerifyMode {
    /// Re-read every byte from device memory and check every leaf against the signed root.
    Full,
    /// Check `chunks` leaves drawn at random (CSPRNG, fresh each call) against the signed root.
    Sampled {
        /// How many distinct chunks to check (at least 1; capped at the shard's chunk count).
        chunks: u32,
    },
    /// Check the seal's signature and that the shard is still resident, without reading VRAM.
    SignatureOnly,
}

/// Which chunks of a shard a verification reads back from device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadPlan {
    /// Every chunk, and the Merkle root is recomputed from them.
    EveryChunk,
    /// This many distinct chunks drawn at random (already capped at the chunk count).
    Sample(u64),
    /// None: the check is the signature and residency only.
    Nothing,
}

/// A mode that cannot run (a sample of no chunks), or text that names no mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidVerifyMode(&'static str);

impl VerifyMode {
    /// The mode itself if it can run; `Sampled { chunks: 0 }` cannot (it would check nothing
    /// and pass). Every entry point that takes a mode from a caller checks it through here.
    pub fn validate(self) -> Result<Self, InvalidVerifyMode> {
        match self {
            Self::Sampled { chunks: 0 } => Err(InvalidVerifyMode(
                "Sampled verification needs at least 1 chunk",
            )),
            Self::Full | Self::Sampled { .. } | Self::SignatureOnly => Ok(self),
        }
    }

    /// Which chunks a run over a shard of `total_chunks` chunks reads back.
    pub(crate) fn read_plan(self, total_chunks: u64) -> ReadPlan {
        match self {
            Self::Full => ReadPlan::EveryChunk,
            Self::Sampled { chunks } => ReadPlan::Sample(u64::from(chunks).min(total_chunks)),
            Self::SignatureOnly => ReadPlan::Nothing,
        }
    }

    /// Whether a run reads device memory at all (else it checks signature and residency).
    pub fn reads_device_memory(self) -> bool {
        self.read_plan(u64::MAX) != ReadPlan::Nothing
    }

    /// Whether a run reads every chunk, and so can recompute and compare the Merkle root.
    pub fn reads_every_chunk(self) -> bool {
        self.read_plan(u64::MAX) == ReadPlan::EveryChunk
    }

    /// The `mode` label of the verification metrics: the mode's kind only (a sample size would
    /// make one series per size).
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Sampled { .. } => "sampled",
            Self::SignatureOnly => "signature_only",
        }
    }

    /// Whether a verification in this mode is at least as strong as `required`: `Full` meets
    /// every requirement; `Sampled { k }` meets `Sampled { j }` when `k >= j`, and
    /// `SignatureOnly`; `SignatureOnly` meets only `SignatureOnly`.
    pub fn satisfies(self, required: VerifyMode) -> bool {
        match (self, required) {
            (Self::Full, Self::Full | Self::Sampled { .. } | Self::SignatureOnly) => true,
            (Self::Sampled { chunks: k }, Self::Sampled { chunks: j }) => k >= j,
            (Self::Sampled { .. }, Self::SignatureOnly) => true,
            (Self::Sampled { .. }, Self::Full) => false,
            (Self::SignatureOnly, Self::SignatureOnly) => true,
            (Self::SignatureOnly, Self::Full | Self::Sampled { .. }) => false,
        }
    }
}

/// The wire text of attestations, audit records and the command line: `full`, `sampled(k)`,
/// `signature-only`.
impl fmt::Display for VerifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("full"),
            Self::Sampled { chunks } => write!(f, "sampled({chunks})"),
            Self::SignatureOnly => f.write_str("signature-only"),
        }
    }
}

/// Parses the wire text exactly as [`fmt::Display`] writes it, and only valid modes: `full`,
/// `sampled(k)` with `k` ≥ 1 in plain decimal (no sign, no leading zero), `signature-only`.
impl FromStr for VerifyMode {
    type Err = InvalidVerifyMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const UNKNOWN: InvalidVerifyMode =
            InvalidVerifyMode("not a verification mode (full, sampled(k) or signature-only)");
        match text {
            "full" => Ok(Self::Full),
            "signature-only" => Ok(Self::SignatureOnly),
            _ => {
                let k = text
                    .strip_prefix("sampled(")
                    .and_then(|t| t.strip_suffix(')'))
                    .ok_or(UNKNOWN)?;
                if k.starts_with('+') || (k.len() > 1 && k.starts_with('0')) {
                    return Err(UNKNOWN);
                }
                let chunks: u32 = k.parse().map_err(|_| UNKNOWN)?;
                Self::Sampled { chunks }.validate()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(chunks: u32) -> VerifyMode {
        VerifyMode::Sampled { chunks }
    }

    #[test]
    fn wire_text_round_trips_and_refuses_other_spellings() {
        for m in [
            VerifyMode::Full,
            s(1),
            s(16),
            s(u32::MAX),
            VerifyMode::SignatureOnly,
        ] {
            assert_eq!(m.to_string().parse::<VerifyMode>(), Ok(m));
        }
        for bad in [
            "",
            "Full",
            "sampled",
            "sampled()",
            "sampled(0)",
            "sampled(01)",
            "sampled(+1)",
            "sampled(-1)",
            "sampled(4294967296)",
            "sampled(1) ",
            "signature_only",
        ] {
            assert!(bad.parse::<VerifyMode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn strength_order() {
        assert!(VerifyMode::Full.satisfies(VerifyMode::Full));
        assert!(VerifyMode::Full.satisfies(s(64)));
        assert!(s(16).satisfies(s(16)));
        assert!(s(17).satisfies(s(16)));
        assert!(!s(15).satisfies(s(16)));
        assert!(!s(1000).satisfies(VerifyMode::Full));
        assert!(s(1).satisfies(VerifyMode::SignatureOnly));
        assert!(!VerifyMode::SignatureOnly.satisfies(s(1)));
        assert!(!VerifyMode::SignatureOnly.satisfies(VerifyMode::Full));
    }

    #[test]
    fn plans_labels_and_validation() {
        assert_eq!(VerifyMode::Full.read_plan(9), ReadPlan::EveryChunk);
        assert_eq!(s(16).read_plan(9), ReadPlan::Sample(9));
        assert_eq!(s(4).read_plan(9), ReadPlan::Sample(4));
        assert_eq!(VerifyMode::SignatureOnly.read_plan(9), ReadPlan::Nothing);
        assert!(!VerifyMode::SignatureOnly.reads_device_memory());
        assert!(s(1).reads_device_memory() && !s(1).reads_every_chunk());
        assert_eq!(s(7).metric_label(), "sampled");
        assert!(s(0).validate().is_err());
        assert_eq!(s(3).validate(), Ok(s(3)));
    }
}
