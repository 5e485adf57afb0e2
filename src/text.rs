//! Text that came from outside (a caller, a model file, a peer) made safe to show.
//!
//! [`sanitize`] is the one filter every string passes before it reaches a log line, an audit
//! record, an error message or a terminal. It sits at the bottom of the crate's layers so that
//! validation, the seal format, the audit log and the command line all use the same rules.

/// Removes what must never reach a log line: control characters (C0, DEL, C1), and ANSI/VT
/// escape sequences (`ESC [ … final`, `ESC ] … BEL/ST`, and two-byte `ESC x`). Each removed
/// sequence is replaced by `\u{FFFD}` so the reader can see that something was there.
pub fn sanitize(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    // CSI: parameters and intermediates until a final byte in 0x40..=0x7E.
                    for n in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&n) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    // OSC: until BEL or ST (ESC \).
                    while let Some(n) = chars.next() {
                        if n == '\u{7}' {
                            break;
                        }
                        if n == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            }
            out.push('\u{FFFD}');
        } else if c.is_control() || is_invisible_format(c) {
            out.push('\u{FFFD}');
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that are not control characters but still change how a line reads: bidi
/// overrides and isolates, zero-width characters, and the Unicode line/paragraph separators.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_controls_and_ansi() {
        assert_eq!(sanitize("a\nb"), "a\u{FFFD}b");
        assert_eq!(sanitize("\u{1b}[31mred\u{1b}[0m"), "\u{FFFD}red\u{FFFD}");
        assert_eq!(sanitize("x\u{1b}]0;title\u{7}y"), "x\u{FFFD}y");
        assert_eq!(sanitize("q\"uote"), "q\"uote");
        assert_eq!(sanitize("modèle"), "modèle");
        assert_eq!(sanitize("\u{85}\u{7f}"), "\u{FFFD}\u{FFFD}");
        assert_eq!(
            sanitize("a\u{202E}b\u{2028}c\u{200B}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}"
        );
    }
}
