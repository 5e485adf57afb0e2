//! Records the opt-level cargo compiles this crate at (`OPT_LEVEL`, which follows the
//! dependent's profile and its `[profile.*.package.vram-residency]` override), so that
//! `VramResidency::start` can warn once when it runs unoptimised (README: "Building a
//! dependent: profile overrides").

fn main() {
    let level = std::env::var("OPT_LEVEL").unwrap_or_default();
    println!("cargo:rustc-env=VRAM_RESIDENCY_OPT_LEVEL={level}");
    println!("cargo:rerun-if-changed=build.rs");
}
