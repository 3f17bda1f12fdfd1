//! Rendering a template for one recipient (the preview): the template's Smarty expressions
//! (`{{$x}}`, `{{$x|default:'y'}}`, `upper`, `lower`, `escape`) are translated to tera and
//! rendered with every value HTML-escaped; everything else is kept verbatim in `raw` blocks, so other
//! template languages' `{{ name }}` pass through untouched.

use regex::Regex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

static SMARTY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}\}").expect("valid"));

static MODIFIER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^\s*\|\s*([A-Za-z_]+)\s*(?::\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"))?\s*"#)
        .expect("valid")
});

/// A rendered template, and what could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The personalized HTML.
    pub html: String,
    /// Expressions left as they were, and why.
    pub warnings: Vec<String>,
}

/// Why rendering failed (a bug in translation, reported rather than hidden).
#[derive(Debug, thiserror::Error)]
#[error("rendering failed: {0}")]
pub struct RenderError(String);

/// Renders `template` with the manual options `values`.
pub fn render(template: &str, values: &Map<String, Value>) -> Result<Rendered, RenderError> {
    render_with(template, values, true)
}

/// Renders `template` as plain text, its values not HTML-escaped: a mail's subject or sender
/// name, which are header text, not HTML.
pub fn render_text(template: &str, values: &Map<String, Value>) -> Result<Rendered, RenderError> {
    render_with(template, values, false)
}

fn render_with(
    template: &str,
    values: &Map<String, Value>,
    escape: bool,
) -> Result<Rendered, RenderError> {
    let compiled = compiled(template, escape)?;
    let mut context = tera::Context::new();
    // Smarty's `default` applies to empty values too: leave them undefined.
    let present: Map<String, Value> = values
        .iter()
        .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    context.insert("m", &present);
    let html = (compiled.tera)
        .render(COMPILED_NAME, &context)
        .map_err(|e| RenderError(format!("{e:?}")))?;
    Ok(Rendered {
        html,
        warnings: compiled.warnings.clone(),
    })
}

/// A template translated and parsed once: a bulk send renders the same few templates (a
/// mapping's HTML, subject and sender name) for every message, and parsing was most of a
/// render.
struct Compiled {
    tera: tera::Tera,
    warnings: Vec<String>,
}

/// The name of the one template in a [`Compiled`].
const COMPILED_NAME: &str = "t";

/// At most this many compiled templates are kept (templates come from the mappings, a few
/// each); beyond it the cache starts again.
const COMPILED_MAX: usize = 256;

/// Compiled templates by their text.
type ByText = HashMap<String, Arc<Compiled>>;

/// Compiled templates, values HTML-escaped (`[1]`) or not (`[0]`).
static COMPILED_CACHE: LazyLock<std::sync::Mutex<[ByText; 2]>> = LazyLock::new(Default::default);

/// `template` translated and parsed, from the cache when it was before.
fn compiled(template: &str, escape: bool) -> Result<Arc<Compiled>, RenderError> {
    let lock = || COMPILED_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = lock()[usize::from(escape)].get(template) {
        return Ok(c.clone());
    }
    let (source, warnings) = translate_with(template, escape);
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::new());
    tera.add_raw_template(COMPILED_NAME, &source)
        .map_err(|e| RenderError(format!("{e:?}")))?;
    let c = Arc::new(Compiled { tera, warnings });
    let mut cache = lock();
    let map = &mut cache[usize::from(escape)];
    if map.len() >= COMPILED_MAX {
        map.clear();
    }
    map.insert(template.to_owned(), c.clone());
    Ok(c)
}

/// The tera source for a Smarty template, and the expressions it could not translate.
pub fn translate(template: &str) -> (String, Vec<String>) {
    translate_with(template, true)
}

/// [`translate`], with the values HTML-escaped or not.
fn translate_with(template: &str, escape: bool) -> (String, Vec<String>) {
    let mut out = String::with_capacity(template.len() + 64);
    let mut warnings = Vec::new();
    let mut last = 0;
    for cap in SMARTY.captures_iter(template) {
        let whole = cap.get(0).expect("match");
        match expression(&cap[1], &cap[2], escape) {
            Some(expr) => {
                push_raw(&mut out, &template[last..whole.start()]);
                out.push_str(&expr);
                last = whole.end();
            }
            None => warnings.push(format!(
                "unsupported construct left as is: {}",
                whole.as_str()
            )),
        }
    }
    push_raw(&mut out, &template[last..]);
    (out, warnings)
}

/// `{{ m["name"] | filters }}` for a supported modifier chain.
fn expression(name: &str, mut modifiers: &str, escape: bool) -> Option<String> {
    // tera fails on a filter applied to an undefined value: `default` goes first.
    let mut default = String::from(" | default(value=\"\")");
    let mut filters = String::new();
    while !modifiers.trim().is_empty() {
        let cap = MODIFIER.captures(modifiers)?;
        let arg = cap.get(2).or(cap.get(3)).map(|m| m.as_str());
        match (&cap[1], arg) {
            ("default", Some(a)) => {
                let value = crate::template::fields::unescape_smarty(a);
                default = format!(" | default(value={})", tera_string(&value));
            }
            ("upper", None) => filters.push_str(" | upper"),
            ("lower", None) => filters.push_str(" | lower"),
            // Auto-escaping already escapes; a second escape would double it.
            ("escape", None) => {}
            _ => return None,
        }
        modifiers = &modifiers[cap.get(0).expect("match").end()..];
    }
    // Escaped once, explicitly (auto-escaping also escapes literal defaults, twice).
    let escape = if escape { " | escape" } else { "" };
    Some(format!(
        "{{{{ m[{}]{default} | as_str{filters}{escape} }}}}",
        tera_string(name)
    ))
}

/// A tera string literal (JSON string syntax is accepted by tera for plain text).
fn tera_string(s: &str) -> String {
    // Tera has no escapes inside literals: pick a delimiter the text lacks.
    for q in ['"', '\'', '`'] {
        if !s.contains(q) {
            return format!("{q}{s}{q}");
        }
    }
    format!("\"{}\"", s.replace('"', "'"))
}

fn push_raw(out: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    // A literal `{% endraw %}` would end the block early: split around it.
    for (i, part) in text.split("{% endraw %}").enumerate() {
        if i > 0 {
            out.push_str("{{ \"{% endraw %}\" }}");
        }
        if !part.is_empty() {
            out.push_str("{% raw %}");
            out.push_str(part);
            out.push_str("{% endraw %}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_template_parsed_once_renders_each_recipients_own_values_escaped_or_not() {
        let t = "<p>{{$Name|default:'friend'}} & {{$Offer}}</p>";
        let ann = render(t, &values(json!({"Name": "Ann <3", "Offer": "A"}))).unwrap();
        let bob = render(t, &values(json!({"Offer": "B"}))).unwrap();
        assert_eq!(ann.html, "<p>Ann &lt;3 & A</p>");
        assert_eq!(bob.html, "<p>friend & B</p>");
        // The same text as a subject: the cache keeps the escaped and plain forms apart.
        let plain = render_text(t, &values(json!({"Name": "Ann <3", "Offer": "A"}))).unwrap();
        assert_eq!(plain.html, "<p>Ann <3 & A</p>");
        assert_eq!(
            render(t, &values(json!({"Name": "Ann <3", "Offer": "A"}))).unwrap(),
            ann
        );
    }

    #[test]
    fn smarty_expressions_become_tera_and_other_languages_stay() {
        let t = "Hi {{$Name|default:'you'}} {{ name }} {% if x %}{{#each}}";
        let r = render(t, &values(json!({"Name": "Ann"}))).unwrap();
        assert_eq!(r.html, "Hi Ann {{ name }} {% if x %}{{#each}}");
        let r = render(t, &values(json!({}))).unwrap();
        assert!(r.html.starts_with("Hi you "));
    }

    #[test]
    fn values_are_html_escaped() {
        let r = render(
            "<a title=\"{{$X}}\">",
            &values(json!({"X": "\"><script>alert(1)</script>"})),
        )
        .unwrap();
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(r.html.contains("&quot;&gt;&lt;script&gt;"), "{}", r.html);
    }

    #[test]
    fn numbers_render_digit_for_digit() {
        let r = render(
            "{{$I}} {{$U}}",
            &values(json!({"I": -563481321460449721i64, "U": 18446744073709551615u64})),
        )
        .unwrap();
        assert_eq!(r.html, "-563481321460449721 18446744073709551615");
    }

    #[test]
    fn modifiers_upper_lower_escape_and_either_quote_work() {
        let r = render(
            r#"{{$A|upper}} {{$B|lower|default:"X"}} {{$C|escape}} {{$D|default:'it\'s'}}"#,
            &values(json!({"A": "a", "C": "<"})),
        )
        .unwrap();
        assert_eq!(r.html, "A x &lt; it&#x27;s");
    }

    #[test]
    fn unsupported_constructs_are_left_and_named() {
        let r = render("{{$A|truncate:10}} {{$B}}", &values(json!({"B": "b"}))).unwrap();
        assert_eq!(r.html, "{{$A|truncate:10}} b");
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("truncate"));
    }
}
