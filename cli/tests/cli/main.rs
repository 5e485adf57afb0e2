//! The command line's tests, as one test binary: each module runs the built `vram-residency`
//! binary as an operator would and checks its output, exit codes and files.

#[path = "../../../tests/common/model_signing.rs"]
mod model_signing;
mod support;

mod basics;
mod bench;
mod groups;
mod hostile;
mod lifecycle;
mod provenance;
mod trust;
