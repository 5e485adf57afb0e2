//! The library's integration tests, as one test binary: each module drives the public API the
//! way a user would (linking one binary instead of a dozen was most of a fresh `cargo test`).
//! The tests that need a process of their own stay apart: `tests/cuda.rs` (run again under the
//! fake CUDA driver), `tests/metrics.rs` (a global metrics recorder) and the command line's
//! `tests/cli/`.

#[path = "../common/mod.rs"]
mod common;

mod attestation_v2;
mod audit_trail;
mod cancellation;
mod core_api;
mod docs;
mod errors;
mod group_vectors;
mod groups;
mod header_swap;
mod hostile;
mod layering;
mod leaf_kernel_host;
mod lifecycle;
mod parsers_prop;
mod provenance;
mod seals_in_progress;
mod serving;
mod spans;
mod tensor_localisation;
mod tensors;
mod trust;
mod unsafe_scope;
mod vectors;
mod verification;
