//! The README says what the code does: its metrics table is the one `telemetry::METRICS`
//! generates, and its layer list names the layers `layering.rs` enforces, in order.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

#[test]
fn the_readme_metrics_table_is_generated_from_the_constants() {
    let readme = readme();
    let start = readme
        .find("<!-- metrics table:")
        .expect("README has the metrics table marker");
    let body_start = start + readme[start..].find("-->\n").unwrap() + 4;
    let end = readme.find("<!-- end of metrics table -->").unwrap();
    let expected = vram_residency::telemetry::markdown_table();
    assert_eq!(
        &readme[body_start..end],
        expected,
        "README's metrics table is out of date; replace it with:\n{expected}"
    );
    for m in vram_residency::telemetry::METRICS {
        assert!(m.name.starts_with("vram_"), "{}", m.name);
    }
}

#[test]
fn the_readme_layer_list_matches_the_enforced_layers() {
    let readme = readme();
    let line_start = readme
        .find("The library's modules form layers")
        .expect("README lists the layers");
    let list = &readme[line_start..];
    let list = &list[..list.find("fails on an upward `use`").unwrap()];
    let mut named: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
    named.retain(|m| !m.contains('/') && !m.contains(' '));
    let enforced: Vec<&str> = crate::layering::LAYERS.iter().map(|(m, _)| *m).collect();
    let mut a = named.clone();
    let mut b = enforced.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(
        a, b,
        "README layer list {named:?} vs tests/it/layering.rs {enforced:?}"
    );
}
