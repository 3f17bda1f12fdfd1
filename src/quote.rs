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

/// An error and its causes in one line, each new text once (wrappers that repeat their
/// source's text, `Connection error: Connection error: ...`, are said once).
pub fn cut_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
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
