//! Input validation (IV-001..005): every value that crosses the public API is checked here
//! before anything is allocated.
//!
//! Each check returns [`VramError::InvalidInput`] with a message that names the field and the
//! rule it broke. Messages quote only short, sanitised prefixes of what the caller sent, so a
//! hostile value cannot smuggle control characters into logs through an error.

use crate::error::VramError;

pub mod owner_only;
use crate::text::{is_invisible, sanitize};

/// Longest shard or worker id.
pub const MAX_ID_LEN: usize = 256;
/// Longest model reference, in bytes.
pub const MAX_MODEL_REF_LEN: usize = 512;
/// Default largest model shard: 100 GiB.
pub const DEFAULT_MAX_MODEL_SIZE: u64 = 100 << 30;
/// Smallest Merkle chunk size.
pub const MIN_CHUNK_SIZE: u64 = 4 << 10;
/// Largest Merkle chunk size.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

fn preview(s: &str) -> String {
    let short: String = s.chars().take(32).collect();
    let more = if s.chars().count() > 32 { "…" } else { "" };
    format!("{:?}{more}", sanitize(&short))
}

/// A character named in an error: always by code point (`U+XXXX`), and shown as itself only
/// when it is visible, so an invisible or control character cannot hide in the message.
pub fn describe_char(c: char) -> String {
    let code = u32::from(c);
    if c.is_control() {
        format!("control character U+{code:04X}")
    } else if is_invisible(c) {
        format!("invisible character U+{code:04X}")
    } else {
        format!("character {c:?} (U+{code:04X})")
    }
}

/// A path as it may appear in an error message: control characters and escape sequences in a
/// file name must not reach a terminal or a log through our errors.
pub fn shown_path(path: &std::path::Path) -> String {
    sanitize(&path.display().to_string())
}

/// IV-003: ids are 1..=256 characters of `[A-Za-z0-9_-]`.
pub fn validate_identifier(field: &str, value: &str) -> Result<(), VramError> {
    if value.is_empty() {
        return Err(VramError::invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(VramError::invalid(format!(
            "{field} is {} bytes long; the limit is {MAX_ID_LEN}",
            value.len()
        )));
    }
    if let Some((pos, c)) = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(VramError::invalid(format!(
            "{field} {} contains {} at byte {pos}; only A-Z, a-z, 0-9, '-' and '_' are allowed",
            preview(value),
            describe_char(c)
        )));
    }
    Ok(())
}

/// IV-005: model refs are printable (no NUL or other control characters), 1..=512 bytes.
pub fn validate_model_ref(value: &str) -> Result<(), VramError> {
    if value.is_empty() {
        return Err(VramError::invalid("model_ref must not be empty"));
    }
    if value.len() > MAX_MODEL_REF_LEN {
        return Err(VramError::invalid(format!(
            "model_ref is {} bytes long; the limit is {MAX_MODEL_REF_LEN}",
            value.len()
        )));
    }
    if let Some((pos, c)) = value.char_indices().find(|(_, c)| is_invisible(*c)) {
        return Err(VramError::invalid(format!(
            "model_ref contains {} at byte {pos}; control, format and other invisible \
             characters are refused (two refs would look the same and differ)",
            describe_char(c)
        )));
    }
    Ok(())
}

/// IV-004: a SHA-256 digest is exactly 64 hex characters. Returns the lowercase form.
pub fn validate_hex_digest(field: &str, value: &str) -> Result<String, VramError> {
    if value.len() != 64 {
        return Err(VramError::invalid(format!(
            "{field} must be 64 hex characters (a SHA-256 digest); got {} characters",
            value.chars().count()
        )));
    }
    if let Some((pos, c)) = value.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(VramError::invalid(format!(
            "{field} has non-hex {} at position {pos}",
            describe_char(c)
        )));
    }
    Ok(value.to_ascii_lowercase())
}

/// IV-002: the device index must name an existing device.
pub fn validate_device(device: u32, device_count: u32) -> Result<(), VramError> {
    if device >= device_count {
        return Err(VramError::invalid(format!(
            "gpu_device {device} does not exist; this system has {device_count} device(s) (0..={})",
            device_count.saturating_sub(1)
        )));
    }
    Ok(())
}

/// IV-001: a shard is 1..=`max` bytes.
pub fn validate_model_size(len: u64, max: u64) -> Result<(), VramError> {
    if len == 0 {
        return Err(VramError::invalid("model shard is empty (0 bytes)"));
    }
    if len > max {
        return Err(VramError::invalid(format!(
            "model shard is {len} bytes; the configured max_model_size is {max} bytes"
        )));
    }
    Ok(())
}

/// Merkle leaf size: a power of two in 4 KiB ..= 64 MiB.
pub fn validate_chunk_size(chunk: u64) -> Result<(), VramError> {
    if !chunk.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk) {
        return Err(VramError::invalid(format!(
            "chunk_size {chunk} must be a power of two between {MIN_CHUNK_SIZE} (4 KiB) and {MAX_CHUNK_SIZE} (64 MiB)"
        )));
    }
    Ok(())
}

/// Tensor-parallel position: `index < total`, `total >= 1`.
pub fn validate_tensor_parallel(index: u32, total: u32) -> Result<(), VramError> {
    if total == 0 || index >= total || total == u32::MAX {
        return Err(VramError::invalid(format!(
            "tensor_parallel index {index} of {total} is out of range (need index < total, total >= 1)"
        )));
    }
    Ok(())
}

/// The metadata of `path`, which must be a regular file; `what` names it in the error
/// ("model file"). A path that cannot be read is [`VramError::Io`] with the operating system's
/// kind (`NotFound`, `PermissionDenied`, …); one that is not a regular file (a directory, a
/// FIFO, a device) is `InvalidInput`. Both name the (sanitised) path.
pub fn regular_file(path: &std::path::Path, what: &str) -> Result<std::fs::Metadata, VramError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| VramError::io_error(e, format!("cannot read {what} {}", shown_path(path))))?;
    if !meta.is_file() {
        return Err(VramError::invalid(format!(
            "{what} {} is not a regular file",
            shown_path(path)
        )));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(validate_identifier("shard_id", "llama-7b_q4").is_ok());
        assert!(validate_identifier("shard_id", &"a".repeat(256)).is_ok());
        assert!(validate_identifier("shard_id", &"a".repeat(257)).is_err());
        assert!(validate_identifier("shard_id", "").is_err());
        for bad in [
            "a b",
            "a/b",
            "../x",
            "a\0b",
            "a\nb",
            "é",
            "a.b",
            "\u{1b}[31m",
        ] {
            let e = validate_identifier("shard_id", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("shard_id"), "{e}");
            assert!(
                !e.contains('\u{1b}') && !e.contains('\0') && !e.contains('\n'),
                "{e:?}"
            );
        }
    }

    #[test]
    fn paths_are_sanitised_for_messages() {
        let p = std::path::Path::new("/tmp/evil\u{1b}[2J\nname");
        let shown = shown_path(p);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\n'),
            "{shown:?}"
        );
        assert!(shown.starts_with("/tmp/evil"));
    }

    #[test]
    fn model_refs() {
        assert!(validate_model_ref("hf:org/model@rev (part 2/4)").is_ok());
        assert!(validate_model_ref("modèle/ünïcode").is_ok());
        assert!(validate_model_ref("").is_err());
        assert!(validate_model_ref("a\0b").is_err());
        assert!(validate_model_ref("a\tb").is_err());
        assert!(validate_model_ref(&"m".repeat(512)).is_ok());
        assert!(validate_model_ref(&"m".repeat(513)).is_err());
        // Invisible characters are refused, the code point named in the error.
        for (c, code) in [
            ('\u{061C}', "U+061C"),
            ('\u{00AD}', "U+00AD"),
            ('\u{3164}', "U+3164"),
            ('\u{FFF9}', "U+FFF9"),
            ('\u{E0041}', "U+E0041"),
            ('\u{FE0F}', "U+FE0F"),
            ('\u{200D}', "U+200D"),
        ] {
            let e = validate_model_ref(&format!("hf:org/m{c}@rev"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(code), "{e}");
            assert!(!e.contains(c), "{e:?}");
        }
    }

    #[test]
    fn identifier_errors_name_the_code_point() {
        for (bad, code) in [
            ("a\u{200B}b", "U+200B"),
            ("a\u{E0020}", "U+E0020"),
            ("é", "U+00E9"),
            ("a.b", "U+002E"),
            ("a\0b", "U+0000"),
        ] {
            let e = validate_identifier("shard_id", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(code), "{e}");
        }
    }

    #[test]
    fn digests() {
        let d = "AB".repeat(32);
        assert_eq!(validate_hex_digest("d", &d).unwrap(), "ab".repeat(32));
        assert!(validate_hex_digest("d", &"a".repeat(63)).is_err());
        assert!(validate_hex_digest("d", &"g".repeat(64)).is_err());
        assert!(validate_hex_digest("d", &format!("{}\n", "a".repeat(63))).is_err());
    }

    #[test]
    fn sizes_devices_chunks() {
        assert!(validate_device(1, 2).is_ok());
        assert!(validate_device(2, 2).is_err());
        assert!(validate_device(0, 0).is_err());
        assert!(validate_model_size(0, 10).is_err());
        assert!(validate_model_size(11, 10).is_err());
        assert!(validate_model_size(10, 10).is_ok());
        assert!(validate_chunk_size(4096).is_ok());
        assert!(validate_chunk_size(64 << 20).is_ok());
        assert!(validate_chunk_size(2048).is_err());
        assert!(validate_chunk_size(5000).is_err());
        assert!(validate_chunk_size(128 << 20).is_err());
        assert!(validate_tensor_parallel(1, 4).is_ok());
        assert!(validate_tensor_parallel(4, 4).is_err());
        assert!(validate_tensor_parallel(0, 0).is_err());
    }
}
