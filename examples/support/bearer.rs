//! The challenger credential of `examples/attest_server.rs`: `Authorization: Bearer <token>`
//! parsed strictly, and compared with the expected token in constant time.
//!
//! Its own file, free of the HTTP stack, so the fuzz target (`fuzz/fuzz_targets/bearer.rs`) and
//! the property tests (`tests/parsers_prop.rs`) check the very code the server runs.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The token of an `Authorization` header value `Bearer <token>` (RFC 6750 §2.1): the scheme
/// in any case, one or more spaces, then a `b64token` (letters, digits, `-._~+/`, then any
/// `=` padding) and nothing else. `None` for any other value: another scheme, an empty or
/// malformed token, trailing bytes.
pub fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"Bearer";
    let scheme = header.get(..SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = header.get(SCHEME.len()..)?;
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    if spaces == 0 {
        return None;
    }
    let token = rest.get(spaces..)?;
    let body = token.iter().take_while(|&&b| is_b64token_char(b)).count();
    let padding = token
        .get(body..)?
        .iter()
        .take_while(|&&b| b == b'=')
        .count();
    (body > 0 && body.checked_add(padding)? == token.len()).then_some(token)
}

fn is_b64token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// Whether `presented` is the `expected` token. Both are hashed first and the digests compared
/// in constant time, so neither the bytes nor the length of the expected token shows in the
/// time a refusal takes.
pub fn credential_matches(presented: &[u8], expected: &[u8]) -> bool {
    let presented = Sha256::digest(presented);
    let expected = Sha256::digest(expected);
    bool::from(presented.as_slice().ct_eq(expected.as_slice()))
}

/// Whether an `Authorization` header value carries the `expected` bearer token.
pub fn authorized(header: Option<&[u8]>, expected: &[u8]) -> bool {
    header
        .and_then(bearer_token)
        .is_some_and(|token| credential_matches(token, expected))
}
