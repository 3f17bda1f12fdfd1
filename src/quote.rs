//! Values a caller controls, as they are quoted back in answers and log lines: cut to
//! [`QUOTED_CHARS`] characters, so a request cannot make an answer or a log line as large as
//! itself.

/// Most characters of a caller's value quoted back.
pub const QUOTED_CHARS: usize = 64;

/// A caller's value as quoted back: at most [`QUOTED_CHARS`] characters, `…` after a cut.
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_values_are_cut_short_ones_kept() {
        assert_eq!(super::cut("short"), "short");
        let long = "é".repeat(1000);
        let quoted = super::cut(&long);
        assert_eq!(quoted.chars().count(), super::QUOTED_CHARS + 1);
        assert!(quoted.ends_with('…'));
    }
}
