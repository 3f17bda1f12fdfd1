//! The manual fields a template uses: every `{{$Name}}` or `{{$Name|default:'value'}}` in it.
//! These become the keys of `broadcast_manual_options` for sends of the template.

use regex::Regex;
use serde::Serialize;
use std::sync::LazyLock;

static USE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)((?:\s*\|\s*[A-Za-z_]+(?:\s*:\s*(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^|}'"\s]+))?)*)\s*\}\}"#,
    )
    .expect("valid regex")
});

static DEFAULT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\|\s*default\s*:\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([^|}'"\s]+))"#)
        .expect("valid regex")
});

/// A manual field used in a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManualField {
    /// The field's name.
    pub name: String,
    /// The template's default for it, from the first use that gives one.
    pub default: Option<String>,
}

/// Every manual field `text` uses, in order of first use, each once.
pub fn manual_fields(text: &str) -> Vec<ManualField> {
    let mut fields: Vec<ManualField> = Vec::new();
    for cap in USE.captures_iter(text) {
        let name = &cap[1];
        let default = DEFAULT.captures(&cap[2]).map(|d| {
            let raw = d
                .get(1)
                .or(d.get(2))
                .or(d.get(3))
                .map_or("", |m| m.as_str());
            unescape_smarty(raw)
        });
        match fields.iter_mut().find(|f| f.name == name) {
            Some(f) if f.default.is_none() => f.default = default,
            Some(_) => {}
            None => fields.push(ManualField {
                name: name.to_owned(),
                default,
            }),
        }
    }
    fields
}

/// Undoes the escaping of a Smarty string literal (`\'`, `\"`, `\\`).
pub fn unescape_smarty(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('\'' | '"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, default: Option<&str>) -> ManualField {
        ManualField {
            name: name.into(),
            default: default.map(Into::into),
        }
    }

    #[test]
    fn finds_plain_and_defaulted_uses_once_each() {
        let text = r#"Hi {{$FirstName}}, {{ $Offer | default:"10% off" }} {{$FirstName|default:'you'}}
            <a href="x?id={{$InteractionId|escape|default:'0'}}">"#;
        assert_eq!(
            manual_fields(text),
            vec![
                field("FirstName", Some("you")),
                field("Offer", Some("10% off")),
                field("InteractionId", Some("0")),
            ]
        );
    }

    #[test]
    fn escaped_quotes_in_defaults_are_read_back() {
        let text = r#"{{$X|default:'it\'s \\ ok'}}"#;
        assert_eq!(manual_fields(text), vec![field("X", Some(r"it's \ ok"))]);
    }

    #[test]
    fn other_template_languages_are_not_manual_fields() {
        let text = "{{ name }} {{#each items}}{{/each}} {% if x %} ${dollar} {{$}}";
        assert!(manual_fields(text).is_empty());
    }
}
