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
    /// Declared a charset this tool cannot rewrite byte for byte.
    #[error(
        "declares charset `{0}`, which is unknown or not ASCII-compatible; convert it to UTF-8"
    )]
    Unsupported(String),
}

/// The encoding to read `input` in: UTF-8 when it is valid UTF-8, otherwise the declared
/// charset if it is ASCII-compatible, otherwise an error.
pub fn detect(input: &[u8]) -> Result<&'static Encoding, CharsetError> {
    let offset = match std::str::from_utf8(input) {
        Ok(_) => return Ok(UTF_8),
        Err(e) => e.valid_up_to(),
    };
    let head = &input[..input.len().min(PRESCAN_BYTES)];
    let Some(label) = DECLARED.captures(head).map(|c| c[1].to_vec()) else {
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
    fn utf16_cannot_be_rewritten_byte_for_byte() {
        let doc = b"<meta charset=utf-16><p>\xff\xfe</p>";
        assert_eq!(detect(doc), Err(CharsetError::Unsupported("utf-16".into())));
    }
}
