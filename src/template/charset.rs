//! Which encoding a template is read in: UTF-8, or the charset it declares, never a guess.

use encoding_rs::{Encoding, UTF_8};
use regex::bytes::Regex;
use std::sync::LazyLock;

/// Where a declared charset may appear: the HTML spec's pre-scan looks at the first 1024 bytes;
/// email templates often put long comments first, so look a little further.
const PRESCAN_BYTES: usize = 4096;

static DECLARED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i-u)<meta\s[^>]*charset\s*=\s*["']?\s*([a-z0-9_:.\-]+)"#).expect("valid regex")
});

/// Why a template cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CharsetError {
    /// Not UTF-8 and nothing declared.
    #[error("not valid UTF-8 (first invalid byte at offset {offset}) and no other charset is declared; convert it to UTF-8 or declare its charset in a <meta> tag")]
    InvalidUtf8 { offset: usize },
    /// Declared UTF-8 but is not.
    #[error("declares charset {declared} but is not valid UTF-8 (first invalid byte at offset {offset})")]
    Mismatch { declared: String, offset: usize },
    /// Declared too late to count.
    #[error("not valid UTF-8 (first invalid byte at offset {offset}); it declares charset `{declared}` at byte {at}, but a declaration counts only within the first {PRESCAN_BYTES} bytes: move the <meta charset> to the top of the head")]
    DeclaredTooLate {
        offset: usize,
        declared: String,
        at: usize,
    },
    /// UTF-16 or UTF-32 (a byte order mark says so).
    #[error("is {0} (it starts with a byte order mark): convert it to UTF-8")]
    Wide(&'static str),
    /// Declared a charset this tool cannot rewrite byte for byte.
    #[error(
        "declares charset `{0}`, which is unknown or not ASCII-compatible; convert it to UTF-8"
    )]
    Unsupported(String),
}

/// The encoding to read `input` in: UTF-8 when it is valid UTF-8, otherwise the declared
/// charset if it is ASCII-compatible, otherwise an error.
pub fn detect(input: &[u8]) -> Result<&'static Encoding, CharsetError> {
    for (bom, name) in [
        (&b"\x00\x00\xFE\xFF"[..], "UTF-32 (big-endian)"),
        (&b"\xFF\xFE\x00\x00"[..], "UTF-32 (little-endian)"),
        (&b"\xFE\xFF"[..], "UTF-16 (big-endian)"),
        (&b"\xFF\xFE"[..], "UTF-16 (little-endian)"),
    ] {
        if input.starts_with(bom) {
            return Err(CharsetError::Wide(name));
        }
    }
    let offset = match std::str::from_utf8(input) {
        Ok(_) => return Ok(UTF_8),
        Err(e) => e.valid_up_to(),
    };
    let head = &input[..input.len().min(PRESCAN_BYTES)];
    let Some(label) = DECLARED.captures(head).map(|c| c[1].to_vec()) else {
        if let Some(late) = DECLARED.captures(input) {
            return Err(CharsetError::DeclaredTooLate {
                offset,
                declared: String::from_utf8_lossy(&late[1]).into_owned(),
                at: late.get(0).map_or(0, |m| m.start()),
            });
        }
        return Err(CharsetError::InvalidUtf8 { offset });
    };
    let label_text = String::from_utf8_lossy(&label).into_owned();
    match Encoding::for_label(&label) {
        Some(enc) if enc == UTF_8 => Err(CharsetError::Mismatch {
            declared: label_text,
            offset,
        }),
        Some(enc) if enc.is_ascii_compatible() => Ok(enc),
        _ => Err(CharsetError::Unsupported(label_text)),
    }
}

/// Decodes `input` for scanning (not for rewriting, which keeps the original bytes).
pub fn decode<'a>(input: &'a [u8], encoding: &'static Encoding) -> std::borrow::Cow<'a, str> {
    encoding.decode_without_bom_handling(input).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_read_as_utf8() {
        assert_eq!(detect("<p>café</p>".as_bytes()), Ok(UTF_8));
    }

    #[test]
    fn a_declared_latin1_template_is_read_in_its_charset() {
        let doc = b"<html><head><meta charset=\"iso-8859-1\"></head><body>caf\xe9</body></html>";
        assert_eq!(detect(doc).unwrap().name(), "windows-1252");
        let http_equiv =
            b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=windows-1252\">\xe9";
        assert_eq!(detect(http_equiv).unwrap().name(), "windows-1252");
    }

    #[test]
    fn undeclared_non_utf8_is_refused_with_the_offset() {
        assert_eq!(
            detect(b"<p>caf\xe9</p>"),
            Err(CharsetError::InvalidUtf8 { offset: 6 })
        );
    }

    #[test]
    fn a_false_utf8_declaration_is_refused() {
        let doc = b"<meta charset=utf-8><p>caf\xe9</p>";
        assert!(matches!(detect(doc), Err(CharsetError::Mismatch { .. })));
    }

    #[test]
    fn a_late_declaration_and_a_utf16_bom_are_named() {
        let mut late = b"<html><head>".to_vec();
        late.extend(std::iter::repeat_n(b' ', PRESCAN_BYTES));
        late.extend_from_slice(b"<meta charset=\"windows-1252\"></head><p>caf\xe9</p>");
        let err = detect(&late).unwrap_err();
        assert!(matches!(err, CharsetError::DeclaredTooLate { .. }), "{err}");
        assert!(
            err.to_string().contains("`windows-1252` at byte 4108"),
            "{err}"
        );
        let utf16 = b"\xFF\xFE<\0h\0t\0m\0l\0";
        assert_eq!(
            detect(utf16),
            Err(CharsetError::Wide("UTF-16 (little-endian)"))
        );
    }

    #[test]
    fn utf16_cannot_be_rewritten_byte_for_byte() {
        let doc = b"<meta charset=utf-16><p>\xff\xfe</p>";
        assert_eq!(detect(doc), Err(CharsetError::Unsupported("utf-16".into())));
    }
}
