//! DSSE (Dead Simple Signing Envelope) v1: the pre-authentication encoding a signature covers,
//! and the base64 the envelope carries.
//!
//! A DSSE signature never covers the JSON it travels in, only
//! `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, with `LEN` the byte
//! length in ASCII decimal and `SP` one space. Binding the payload type into the signed bytes is
//! what stops a signature over one kind of document from being replayed as another. Both
//! model-signing bundles and this crate's signed attestations and audit heads use it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Payload type of an in-toto statement (model-signing manifests, `vram-attest-v3`).
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// DSSE's pre-authentication encoding of `payload` under `payload_type`: the bytes a DSSE
/// signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let body_len = payload.len().to_string();
    let mut out = Vec::with_capacity(
        payload
            .len()
            .saturating_add(payload_type.len())
            .saturating_add(32),
    );
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Standard base64 with padding, as DSSE envelopes and sigstore bundles write bytes.
pub fn base64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64 with padding; `None` for anything else (URL-safe alphabet, missing
/// padding, stray characters).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE v1 protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn base64_is_standard_with_padding() {
        assert_eq!(base64_encode(b"\xfb\xff"), "+/8=");
        assert_eq!(base64_decode("+/8=").unwrap(), b"\xfb\xff");
        assert!(base64_decode("-_8=").is_none());
        assert!(base64_decode("+/8").is_none());
        assert!(base64_decode("+/8=\n").is_none());
    }
}
