//! The compiled form of `[[variables]]` + expression format: the exact tags a template must carry.

use super::expr::{escape_attribute, ExpressionFormat};
use super::variable::Variable;
use std::sync::Arc;

/// One field's tag, precomputed once per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaField {
    /// The field's name (`<meta name>`).
    pub name: String,
    /// The personalization expression, before HTML escaping.
    pub expression: String,
    /// The expression as written in the `content` attribute (HTML-escaped).
    pub attribute: String,
}

impl MetaField {
    /// The whole tag; XHTML documents get the self-closing form.
    pub fn tag(&self, xhtml: bool) -> String {
        let close = if xhtml { " />" } else { ">" };
        format!(
            r#"<meta name="{}" content="{}"{close}"#,
            self.name, self.attribute
        )
    }
}

/// The fields every template must carry, cheap to clone across threads.
#[derive(Debug, Clone)]
pub struct Plan {
    fields: Arc<[MetaField]>,
}

impl Plan {
    /// Compiles the configured variables with the expression format.
    pub fn new(variables: &[Variable], format: &ExpressionFormat) -> Self {
        let fields = variables
            .iter()
            .map(|v| {
                let expression = format.render(v);
                MetaField {
                    name: v.name.to_string(),
                    attribute: escape_attribute(&expression),
                    expression,
                }
            })
            .collect();
        Self { fields }
    }

    /// The fields, in configuration order.
    pub fn fields(&self) -> &[MetaField] {
        &self.fields
    }
}
