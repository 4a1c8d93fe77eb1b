//! Quoting a peer's bytes into an error text, bounded.

use std::fmt::Write as _;

/// The most bytes of a peer-chosen name (an RPC path) quoted in an error
/// text: enough for any real name, and a 4 MiB name gives a short error.
pub(crate) const MAX_QUOTED_NAME: usize = 1024;

/// `bytes` quoted as Go's `%q` (`strconv.Quote`) quotes a string, at most
/// its first `limit` bytes of it.
///
/// In double quotes; `"` and `\` are escaped with a backslash; `\a`, `\b`,
/// `\f`, `\n`, `\r`, `\t` and `\v` stand for themselves; other ASCII
/// control bytes and DEL are `\xNN`, as is every byte that is not part of
/// valid UTF-8; characters that are not printable (Unicode's control,
/// format, unassigned, private-use and separator characters but the ASCII
/// space) are `\uNNNN` or `\UNNNNNNNN`; the rest is copied as is.
///
/// A longer input is cut at a character boundary at or before `limit`
/// bytes (never inside a UTF-8 sequence), and the quoted prefix is
/// followed, outside the quotes, by `... (N bytes)` giving the whole
/// length.
pub(crate) fn quote_bounded(bytes: &[u8], limit: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(limit) + 2);
    out.push('"');
    let mut taken = 0;
    'chunks: for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if taken + c.len_utf8() > limit {
                break 'chunks;
            }
            taken += c.len_utf8();
            push_char(&mut out, c);
        }
        for &b in chunk.invalid() {
            if taken + 1 > limit {
                break 'chunks;
            }
            taken += 1;
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    if taken < bytes.len() {
        let _ = write!(out, "... ({} bytes)", bytes.len());
    }
    out
}

/// Appends `c` as `strconv.Quote` writes it.
fn push_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        ' '..='~' => out.push(c),
        '\0'..='\u{1f}' | '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        _ if is_printable(c) => out.push(c),
        _ if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        _ => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// Whether a non-ASCII `c` is printable as Go's `unicode.IsPrint` has it:
/// a letter, mark, number, punctuation or symbol.
///
/// Rust's `Debug` escapes exactly the other categories (control, format,
/// surrogate, private use, unassigned, separators), and extending marks
/// too, but only at the start of a string: so `c` is printable when
/// `"x{c}"` comes out of `escape_debug` unchanged. (The two languages may
/// follow different Unicode versions for characters assigned lately.)
fn is_printable(c: char) -> bool {
    let mut buf = [0u8; 5];
    buf[0] = b'x';
    let len = 1 + c.encode_utf8(&mut buf[1..]).len();
    match std::str::from_utf8(&buf[..len]) {
        Ok(s) => s.escape_debug().skip(1).eq(std::iter::once(c)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &[u8]) -> String {
        quote_bounded(s, MAX_QUOTED_NAME)
    }

    #[test]
    fn ascii_is_quoted_as_is() {
        assert_eq!(q(b""), r#""""#);
        assert_eq!(q(b"/service.Service/Nope"), r#""/service.Service/Nope""#);
        assert_eq!(q(b"a b~"), r#""a b~""#);
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(q(br#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(q(b"'"), r#""'""#, "a single quote is left alone");
    }

    #[test]
    fn control_characters() {
        assert_eq!(q(b"\x07\x08\x0c\n\r\t\x0b"), r#""\a\b\f\n\r\t\v""#);
        assert_eq!(q(b"\x00\x01\x1f\x7f"), r#""\x00\x01\x1f\x7f""#);
        // C1 controls, a format character, separators.
        assert_eq!(q("\u{85}".as_bytes()), r#""\u0085""#);
        assert_eq!(q("\u{200b}\u{feff}".as_bytes()), r#""\u200b\ufeff""#);
        assert_eq!(q("\u{a0}\u{2028}".as_bytes()), r#""\u00a0\u2028""#);
        // Private use, beyond the basic plane.
        assert_eq!(q("\u{f0000}".as_bytes()), r#""\U000f0000""#);
    }

    #[test]
    fn printable_unicode_is_kept() {
        assert_eq!(q("é€😀".as_bytes()), "\"é€😀\"");
        // A combining mark, even first (Rust's Debug escapes it there).
        assert_eq!(q("\u{301}e\u{301}".as_bytes()), "\"\u{301}e\u{301}\"");
        assert_eq!(q("\u{fffd}".as_bytes()), "\"\u{fffd}\"");
    }

    #[test]
    fn invalid_utf8_bytes_are_hex_escaped_one_by_one() {
        assert_eq!(q(b"a\xffb"), r#""a\xffb""#);
        // A truncated sequence, a lone continuation byte, an overlong
        // encoding and an encoded surrogate, as Go's DecodeRune sees them.
        assert_eq!(q(b"\xe2\x82"), r#""\xe2\x82""#);
        assert_eq!(q(b"\x80"), r#""\x80""#);
        assert_eq!(q(b"\xc0\xaf"), r#""\xc0\xaf""#);
        assert_eq!(q(b"\xed\xa0\x80z"), r#""\xed\xa0\x80z""#);
    }

    #[test]
    fn exactly_the_limit_is_not_truncated() {
        let name = vec![b'a'; MAX_QUOTED_NAME];
        let quoted = q(&name);
        assert_eq!(quoted.len(), MAX_QUOTED_NAME + 2);
        assert!(quoted.ends_with("a\""), "{quoted}");
    }

    #[test]
    fn one_byte_over_the_limit_is_truncated() {
        let name = vec![b'a'; MAX_QUOTED_NAME + 1];
        let expected = format!("\"{}\"... (1025 bytes)", "a".repeat(MAX_QUOTED_NAME));
        assert_eq!(q(&name), expected);
    }

    #[test]
    fn a_huge_name_gives_a_short_text() {
        let name = vec![b'\n'; 4 << 20];
        let quoted = q(&name);
        assert!(quoted.len() <= 2 * MAX_QUOTED_NAME + 40, "{}", quoted.len());
        assert!(quoted.ends_with("\"... (4194304 bytes)"), "{quoted}");
    }

    #[test]
    fn multibyte_characters_are_not_cut() {
        // 1023 ASCII bytes, then a 3-byte character across the limit.
        let mut name = vec![b'a'; MAX_QUOTED_NAME - 1];
        name.extend_from_slice("€".as_bytes());
        let expected = format!("\"{}\"... (1026 bytes)", "a".repeat(MAX_QUOTED_NAME - 1));
        assert_eq!(q(&name), expected);
        // Ending exactly at the limit, it is kept whole.
        let mut name = vec![b'a'; MAX_QUOTED_NAME - 3];
        name.extend_from_slice("€".as_bytes());
        assert_eq!(
            q(&name),
            format!("\"{}€\"", "a".repeat(MAX_QUOTED_NAME - 3))
        );
        // An invalid byte right at the limit counts one byte.
        let mut name = vec![b'a'; MAX_QUOTED_NAME - 1];
        name.extend_from_slice(b"\xff\xff");
        let expected = format!(
            "\"{}\\xff\"... (1025 bytes)",
            "a".repeat(MAX_QUOTED_NAME - 1)
        );
        assert_eq!(q(&name), expected);
    }
}
