//! The personalization expression written into `<meta content="...">`, and its escaping.
//!
//! The default format is Smarty with double braces, `{{$NAME|default:'DEFAULT'}}`; users may
//! configure another with the placeholders `%name%` and `%default%`.

use super::variable::Variable;
use serde::Deserialize;

/// The built-in expression format.
pub const DEFAULT_FORMAT: &str = "{{$%name%|default:'%default%'}}";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Name,
    /// The default, with the quote character that surrounds it in the format (escaped inside).
    Default(Option<char>),
}

/// A parsed expression format: literal text with `%name%` and `%default%` slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionFormat {
    segments: Vec<Segment>,
}

/// Why an expression format was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expression format `{0}` must contain `%name%`")]
pub struct InvalidFormat(pub String);

impl ExpressionFormat {
    /// Parses a format; it must name the field with `%name%`.
    pub fn parse(format: &str) -> Result<Self, InvalidFormat> {
        let mut segments = Vec::new();
        let mut rest = format;
        let mut literal = String::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("%name%") {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
                segments.push(Segment::Name);
                rest = after;
            } else if let Some(after) = rest.strip_prefix("%default%") {
                let quote = literal.chars().last().filter(|c| *c == '\'' || *c == '"');
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
                segments.push(Segment::Default(quote));
                rest = after;
            } else {
                let c = rest.chars().next().expect("rest is not empty");
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        segments.push(Segment::Literal(literal));
        segments.retain(|s| !matches!(s, Segment::Literal(l) if l.is_empty()));
        if !segments.contains(&Segment::Name) {
            return Err(InvalidFormat(format.to_owned()));
        }
        Ok(Self { segments })
    }

    /// The expression for one variable, before HTML escaping.
    pub fn render(&self, var: &Variable) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Name => out.push_str(var.name.as_ref()),
                Segment::Default(quote) => out.push_str(&escape_smarty(&var.default, *quote)),
            }
        }
        out
    }
}

impl Default for ExpressionFormat {
    fn default() -> Self {
        Self::parse(DEFAULT_FORMAT).expect("the built-in format is valid")
    }
}

impl<'de> Deserialize<'de> for ExpressionFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Escapes a default for a Smarty string literal: backslashes, and the quote that encloses it
/// (both quotes when the format does not say which).
pub fn escape_smarty(value: &str, quote: Option<char>) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let is_quote = match quote {
            Some(q) => c == q,
            None => c == '\'' || c == '"',
        };
        if c == '\\' || is_quote {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes text for a double-quoted HTML attribute value (`&`, `"`, `<`).
pub fn escape_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::variable::VariableName;

    fn var(name: &str, default: &str) -> Variable {
        Variable {
            name: VariableName::parse(name).unwrap(),
            default: default.into(),
        }
    }

    #[test]
    fn the_default_format_is_smarty_with_double_braces() {
        let f = ExpressionFormat::default();
        assert_eq!(
            f.render(&var("UniqueOfferId", "NONE")),
            "{{$UniqueOfferId|default:'NONE'}}"
        );
    }

    #[test]
    fn quotes_and_backslashes_in_a_default_are_escaped_for_smarty() {
        let f = ExpressionFormat::default();
        assert_eq!(
            f.render(&var("X", r#"it's "a" \ b"#)),
            r#"{{$X|default:'it\'s "a" \\ b'}}"#
        );
        let dq = ExpressionFormat::parse(r#"{$%name%|default:"%default%"}"#).unwrap();
        assert_eq!(
            dq.render(&var("X", r#"it's "a""#)),
            r#"{$X|default:"it's \"a\""}"#
        );
    }

    #[test]
    fn attribute_values_escape_ampersand_quote_and_less_than() {
        assert_eq!(escape_attribute(r#"a&b"c<d>'"#), "a&amp;b&quot;c&lt;d>'");
    }

    #[test]
    fn a_format_without_the_name_is_refused() {
        assert!(ExpressionFormat::parse("%default%").is_err());
        assert!(ExpressionFormat::parse("[%%name%%]").is_ok());
    }

    #[test]
    fn a_default_containing_a_placeholder_is_not_expanded_again() {
        let f = ExpressionFormat::default();
        assert_eq!(f.render(&var("X", "%name%")), "{{$X|default:'%name%'}}");
    }
}
