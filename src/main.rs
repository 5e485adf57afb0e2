//! The `vram-residency` command.
fn main() {}
