//! Text that came from outside (a caller, a model file, a peer) made safe to show.
//!
//! [`sanitize`] is the one filter every string passes before it reaches a log line, an audit
//! record, an error message or a terminal. It sits at the bottom of the crate's layers so that
//! validation, the seal format, the audit log and the command line all use the same rules.
//! [`is_invisible`] is the character test behind it, which validation uses to refuse such
//! characters in model refs and ids outright: two strings that differ only in them look the
//! same on screen.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Removes what must never reach a log line: control characters (C0, DEL, C1), ANSI/VT escape
/// sequences (`ESC [ … final`, `ESC ] … BEL/ST`, and two-byte `ESC x`) and every invisible
/// character [`is_invisible`] names (format characters, tag characters, fillers, variation
/// selectors, line and paragraph separators). Each removed sequence is replaced by `\u{FFFD}` so
/// the reader can see that something was there.
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
        } else if is_invisible(c) {
            out.push('\u{FFFD}');
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `c` is a character that does not show, or changes how the text around it shows:
///
/// * control characters (general category Cc: C0, DEL, C1);
/// * every format character (Cf): bidi marks, embeddings, overrides and isolates (U+061C,
///   U+200E, U+202A..U+202E, U+2066..U+2069), zero-width characters (U+200B..U+200D, U+2060,
///   U+FEFF), the soft hyphen U+00AD, interlinear annotation controls U+FFF9..U+FFFB, tag
///   characters U+E0001 and U+E0020..U+E007F, and the rest of the category;
/// * line and paragraph separators (Zl, Zp: U+2028, U+2029);
/// * the Unicode *default ignorable* code points that are not Cf: fillers (U+115F, U+1160,
///   U+3164, U+FFA0), the combining grapheme joiner U+034F, Khmer inherent vowels U+17B4 and
///   U+17B5, variation selectors (U+180B..U+180F, U+FE00..U+FE0F, U+E0100..U+E01EF), and the
///   reserved ranges U+2065, U+FFF0..U+FFF8 and U+E0000..U+E0FFF.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || is_default_ignorable(c)
}

/// The `Default_Ignorable_Code_Point` ranges of Unicode's `DerivedCoreProperties.txt`: code
/// points a renderer shows as nothing when it does not support them.
fn is_default_ignorable(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{034F}'
        | '\u{061C}'
        | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
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

    /// What the review got through: bidi marks, tag characters, fillers, interlinear
    /// annotations, variation selectors, and the rest of the format category.
    #[test]
    fn sanitize_strips_every_invisible_character() {
        let invisible = [
            '\u{00AD}',
            '\u{034F}',
            '\u{061C}',
            '\u{0600}',
            '\u{06DD}',
            '\u{070F}',
            '\u{115F}',
            '\u{1160}',
            '\u{17B4}',
            '\u{180B}',
            '\u{180E}',
            '\u{180F}',
            '\u{200D}',
            '\u{2029}',
            '\u{2064}',
            '\u{2065}',
            '\u{2066}',
            '\u{3164}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{FFA0}',
            '\u{FFF9}',
            '\u{FFFA}',
            '\u{FFFB}',
            '\u{110BD}',
            '\u{13430}',
            '\u{1BCA0}',
            '\u{1D173}',
            '\u{E0000}',
            '\u{E0001}',
            '\u{E0020}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{E0100}',
            '\u{E01EF}',
        ];
        for c in invisible {
            assert!(is_invisible(c), "U+{:04X}", u32::from(c));
            assert_eq!(
                sanitize(&format!("a{c}b")),
                "a\u{FFFD}b",
                "U+{:04X}",
                u32::from(c)
            );
        }
        for c in [
            'a', 'é', ' ', '\u{3000}', 'ß', '中', '😀', '\u{0301}', 'ا', '\u{FFFD}',
        ] {
            assert!(!is_invisible(c), "U+{:04X}", u32::from(c));
        }
        // Every format character, whichever the table above lists.
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            if c.general_category() == GeneralCategory::Format {
                assert!(
                    !sanitize(&c.to_string()).contains(c),
                    "U+{:04X}",
                    u32::from(c)
                );
            }
        }
    }
}
