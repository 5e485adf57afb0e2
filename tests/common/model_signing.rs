//! The model-signing fixture (`tests/fixtures/model-signing/`, made by `model_signing` 1.1.1),
//! shared by the library's tests and the command line's.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// A file of the fixture, found from whichever package's tests are running.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("tests/fixtures/model-signing"))
        .find(|dir| dir.is_dir())
        .expect("tests/fixtures/model-signing above this package")
        .join(rel)
}

/// A fixture file's bytes.
pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

/// The fixture's `SHA256SUMS`, as (file name, hex digest).
pub fn sha256sums() -> Vec<(String, String)> {
    String::from_utf8(read("SHA256SUMS"))
        .unwrap()
        .lines()
        .map(|l| {
            let (digest, name) = l.split_once("  ").unwrap();
            (name.to_string(), digest.to_string())
        })
        .collect()
}
