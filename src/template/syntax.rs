//! Template-language constructs that render to nothing: comments (Handlebars `{{!-- --}}` and
//! `{{! }}`, Liquid `{% comment %}...{% endcomment %}`, Smarty `{{* *}}` and `{* *}`,
//! Jinja/Twig `{# #}`) and statements (`{% if %}`, `{{#each}}`, `{{/each}}`, `{{^x}}`,
//! `{{else}}`, `{{> partial}}`).
//!
//! The HTML a mail client parses is the *rendered* template: what is inside a comment is gone
//! (a `<head>` in it is no head), and a statement leaves no text behind (so `{% if %}` in a
//! head does not end it, as text would). [`Invisible`] finds these ranges lazily, as far as the
//! head scan asks.

use memchr::memchr;
use std::ops::Range;

/// How far a construct's end is looked for; beyond it the opener is taken as plain text.
const MAX_CONSTRUCT: usize = 64 * 1024;

/// The invisible ranges of one template, found as the scan advances.
pub struct Invisible<'a> {
    input: &'a [u8],
    ranges: Vec<Range<usize>>,
    /// Openers before this offset have been looked at.
    scanned: usize,
}

impl<'a> Invisible<'a> {
    /// A finder over `input`; nothing is scanned yet.
    pub fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            ranges: Vec::new(),
            scanned: 0,
        }
    }

    /// Whether byte `pos` is inside a construct that renders to nothing.
    pub fn covers(&mut self, pos: usize) -> bool {
        self.scan_to(pos);
        self.range_at(pos).is_some()
    }

    /// The first byte of `range` that a parser of the rendered template would see as
    /// something other than whitespace (a leading UTF-8 byte order mark is not content).
    pub fn first_visible(&mut self, range: Range<usize>) -> Option<usize> {
        self.scan_to(range.end);
        let mut pos = range.start;
        while pos < range.end {
            if let Some(r) = self.range_at(pos) {
                pos = r.end;
                continue;
            }
            if pos == 0 && self.input.starts_with(b"\xEF\xBB\xBF") {
                pos = 3;
                continue;
            }
            if !matches!(self.input[pos], b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') {
                return Some(pos);
            }
            pos += 1;
        }
        None
    }

    fn range_at(&self, pos: usize) -> Option<Range<usize>> {
        // Ranges are sorted and disjoint: the last one starting at or before `pos`.
        let i = self.ranges.partition_point(|r| r.start <= pos);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (pos < r.end).then(|| r.clone())
    }

    /// Finds every construct whose opener starts at or before `pos`.
    fn scan_to(&mut self, pos: usize) {
        let limit = (pos + 1).min(self.input.len());
        while self.scanned < limit {
            let Some(found) = memchr(b'{', &self.input[self.scanned..limit]) else {
                self.scanned = limit;
                return;
            };
            let start = self.scanned + found;
            match construct_end(self.input, start) {
                Some(end) => {
                    self.ranges.push(start..end);
                    self.scanned = end;
                }
                None => self.scanned = start + 1,
            }
        }
    }
}

/// The end of the construct that starts at `start` (a `{`), if one does.
fn construct_end(input: &[u8], start: usize) -> Option<usize> {
    let rest = &input[start..];
    let closer: &[u8] = if rest.starts_with(b"{{!--") {
        b"--}}"
    } else if rest.starts_with(b"{{*") {
        b"*}}"
    } else if rest.starts_with(b"{{!")
        || rest.starts_with(b"{{#")
        || rest.starts_with(b"{{/")
        || rest.starts_with(b"{{^")
        || rest.starts_with(b"{{>")
        || rest.starts_with(b"{{~#")
        || rest.starts_with(b"{{~/")
        || rest.starts_with(b"{{else")
        || rest.starts_with(b"{{~else")
    {
        b"}}"
    } else if rest.starts_with(b"{%") {
        return liquid_end(input, start);
    } else if rest.starts_with(b"{#") {
        b"#}"
    } else if rest.starts_with(b"{*") {
        b"*}"
    } else {
        return None;
    };
    find(input, start + 2, closer).map(|at| at + closer.len())
}

/// `{% ... %}`; a `{% comment %}` runs to the end of its `{% endcomment %}`.
fn liquid_end(input: &[u8], start: usize) -> Option<usize> {
    let tag_end = find(input, start + 2, b"%}")? + 2;
    let inner = &input[start + 2..tag_end - 2];
    let word = |w: &[u8]| {
        let trimmed = inner
            .iter()
            .position(|b| !matches!(b, b'-' | b' ' | b'\t' | b'\n' | b'\r'))
            .map_or(&inner[..0], |i| &inner[i..]);
        trimmed.len() >= w.len()
            && trimmed[..w.len()].eq_ignore_ascii_case(w)
            && trimmed
                .get(w.len())
                .is_none_or(|b| !b.is_ascii_alphanumeric())
    };
    if !word(b"comment") {
        return Some(tag_end);
    }
    let mut from = tag_end;
    loop {
        let open = find(input, from, b"{%")?;
        let close = find(input, open + 2, b"%}")? + 2;
        let inner = &input[open + 2..close - 2];
        let text = String::from_utf8_lossy(inner);
        if text.trim_matches(|c: char| c == '-' || c.is_whitespace()) == "endcomment" {
            return Some(close);
        }
        from = close;
    }
}

/// The offset of `needle` in `input` at or after `from`, within [`MAX_CONSTRUCT`] bytes.
fn find(input: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let end = input.len().min(from.saturating_add(MAX_CONSTRUCT));
    let hay = input.get(from..end)?;
    memchr::memmem::find(hay, needle).map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::Invisible;

    fn ranges(text: &str) -> Vec<(usize, usize)> {
        let mut inv = Invisible::new(text.as_bytes());
        inv.scan_to(text.len());
        inv.ranges.iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn comments_and_statements_are_found_and_expressions_are_not() {
        assert_eq!(ranges("a{{!-- <head> --}}b"), vec![(1, 18)]);
        assert_eq!(
            ranges("{{* x *}}{* y *}{# z #}"),
            vec![(0, 9), (9, 16), (16, 23)]
        );
        assert_eq!(
            ranges("{% if x %}{{ name }}{% endif %}"),
            vec![(0, 10), (20, 31)]
        );
        assert_eq!(
            ranges("{%- comment -%}<head>{% if %}{% endcomment %}!"),
            vec![(0, 45)]
        );
        assert_eq!(
            ranges("{{#each xs}}{{this}}{{/each}}"),
            vec![(0, 12), (20, 29)]
        );
        assert!(ranges("{{$UniqueOfferId|default:'NONE'}} {{ name }} { x }").is_empty());
        assert!(ranges("{% unclosed").is_empty());
    }

    #[test]
    fn the_first_visible_byte_skips_whitespace_constructs_and_a_bom() {
        let text = "\u{FEFF} \n{{! note }}\t{% if a %}x";
        let mut inv = Invisible::new(text.as_bytes());
        assert_eq!(inv.first_visible(0..text.len()), Some(text.len() - 1));
        let mut inv = Invisible::new(b"  {{!-- only --}}  ");
        assert_eq!(inv.first_visible(0..19), None);
        assert!(inv.covers(5));
        assert!(!inv.covers(18));
    }
}
