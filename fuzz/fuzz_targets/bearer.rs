//! The attest server's challenger credential (`examples/support/bearer.rs`): an
//! `Authorization` header value from any bytes, and a comparison with an expected token. Never
//! a panic; a token that parses is a non-empty `b64token` at the end of the header and parses
//! back from `Bearer <token>`; a header is authorised exactly when its token is the expected one.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../examples/support/bearer.rs"]
mod bearer;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the rest into the header value and the expected token.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let (header, expected) = rest.split_at(at);
    let parsed = bearer::bearer_token(header);
    if let Some(token) = parsed {
        assert!(!token.is_empty());
        assert!(header.ends_with(token));
        assert!(token.iter().all(|&b| b.is_ascii_graphic()));
        let mut rebuilt = b"Bearer ".to_vec();
        rebuilt.extend_from_slice(token);
        assert_eq!(bearer::bearer_token(&rebuilt), Some(token));
        assert!(bearer::credential_matches(token, token));
    }
    assert_eq!(
        bearer::authorized(Some(header), expected),
        parsed == Some(expected)
    );
    assert!(!bearer::authorized(None, expected));
});
