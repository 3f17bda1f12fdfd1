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
    #[derive(Debug)]
    struct Wrapper(String, Option<Box<Wrapper>>);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn an_error_chain_says_each_text_once() {
        // A wrapper that repeats its source's text, over another that adds nothing.
        let inner = Wrapper("connection refused (os error 111)".into(), None);
        let middle = Wrapper(
            "Connection error: connection refused (os error 111)".into(),
            Some(Box::new(inner)),
        );
        let outer = Wrapper("Connection error".into(), Some(Box::new(middle)));
        assert_eq!(
            super::cut_chain(&outer),
            "Connection error: connection refused (os error 111)"
        );
    }

    #[test]
    fn long_values_are_cut_short_ones_kept() {
        assert_eq!(super::cut("short"), "short");
        let long = "é".repeat(1000);
        let quoted = super::cut(&long);
        assert_eq!(quoted.chars().count(), super::QUOTED_CHARS + 1);
        assert!(quoted.ends_with('…'));
    }
}
