//! Applying a mapping to a trigger: one personal broadcast per recipient, or every failing
//! field at once.

use super::Mapping;
use crate::template::Variable;
use serde::Serialize;
use serde_json::{Map, Value};

/// One recipient of a trigger, with the manual options its send carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PersonalBroadcast {
    /// Where the mail goes.
    pub email: String,
    /// The customer's external id ("" when not mapped).
    pub external_id: String,
    /// Every manual field of the template plus the mapped variables, values in their JSON type.
    pub manual_options: Map<String, Value>,
    /// The mapping's per-recipient idempotency key, if configured.
    pub idempotency_key: Option<String>,
    /// For people: defaults used, fields not mapped.
    pub warnings: Vec<String>,
}

/// A field that breaks the mapping's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The mapping key (`variables.InteractionId`, `recipient.email`).
    pub field: String,
    /// Where in the trigger it was looked for.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Applies `mapping` to `trigger`.
pub fn apply(
    mapping: &Mapping,
    configured: &[Variable],
    trigger: &Value,
) -> Result<Vec<PersonalBroadcast>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let elements: Vec<(Option<&Value>, String)> = match &mapping.file.recipient.each {
        None => vec![(None, String::new())],
        Some(each) => match each.get(trigger) {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, item)| (Some(item), format!("{each}.{i}")))
                .collect(),
            _ => {
                return Err(vec![FieldError {
                    field: "recipient.each".into(),
                    path: each.to_string(),
                    message: "must be a non-empty array of recipients".into(),
                }])
            }
        },
    };
    let mut recipients = Vec::new();
    for (item, prefix) in elements {
        let element = item.map(|v| (v, prefix.as_str()));
        match recipient(mapping, configured, trigger, element) {
            Ok(r) => recipients.push(r),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(recipients)
    } else {
        Err(errors)
    }
}

fn recipient(
    mapping: &Mapping,
    configured: &[Variable],
    trigger: &Value,
    element: Option<(&Value, &str)>,
) -> Result<PersonalBroadcast, Vec<FieldError>> {
    let spec = &mapping.file.recipient;
    let mut errors = Vec::new();
    let (email, email_path) = spec.email.resolve(trigger, element);
    let email = match email {
        Some(Value::String(s)) if is_email(s) => s.clone(),
        found => {
            errors.push(FieldError {
                field: "recipient.email".into(),
                path: email_path,
                message: match found {
                    None | Some(Value::Null) => "is required".into(),
                    Some(v) => format!("must be an email address, got {v}"),
                },
            });
            String::new()
        }
    };
    let external_id = spec
        .external_id
        .as_ref()
        .and_then(|p| p.resolve(trigger, element).0)
        .and_then(text)
        .unwrap_or_default();

    let mut mapped = Map::new();
    for (name, var) in &mapping.file.variables {
        let (found, path) = var.path.resolve(trigger, element);
        let field = format!("variables.{name}");
        match found.filter(|v| !v.is_null()) {
            Some(v) => {
                if let Some(re) = mapping.patterns.get(name) {
                    if !text(v).is_some_and(|t| re.is_match(&t)) {
                        errors.push(FieldError {
                            field,
                            path,
                            message: format!("{v} does not match pattern {}", re.as_str()),
                        });
                        continue;
                    }
                }
                mapped.insert(name.clone(), v.clone());
            }
            None => match &var.default {
                Some(d) => {
                    mapped.insert(name.clone(), serde_json::to_value(d).unwrap_or(Value::Null));
                }
                None if var.required => errors.push(FieldError {
                    field,
                    path,
                    message: "is required".into(),
                }),
                None => {}
            },
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (manual_options, warnings) = manual_options(mapping, configured, mapped);
    let idempotency_key = mapping
        .file
        .idempotency_key
        .as_ref()
        .and_then(|p| p.resolve(trigger, element).0)
        .and_then(text);
    Ok(PersonalBroadcast {
        email,
        external_id,
        manual_options,
        idempotency_key,
        warnings,
    })
}

/// The template's manual fields valued from the mapping, else the template's default, else
/// the configured default, else null; then every other mapped variable.
fn manual_options(
    mapping: &Mapping,
    configured: &[Variable],
    mut mapped: Map<String, Value>,
) -> (Map<String, Value>, Vec<String>) {
    let mut options = Map::new();
    let mut warnings = Vec::new();
    for field in &mapping.template_fields {
        let value = if let Some(v) = mapped.remove(&field.name) {
            v
        } else if let Some(d) = &field.default {
            warnings.push(format!("{}: not mapped, template default used", field.name));
            Value::String(d.clone())
        } else if let Some(v) = configured.iter().find(|v| v.name.as_ref() == field.name) {
            warnings.push(format!(
                "{}: not mapped, configured default used",
                field.name
            ));
            Value::String(v.default.clone())
        } else {
            warnings.push(format!("{}: not mapped and no default: null", field.name));
            Value::Null
        };
        options.insert(field.name.clone(), value);
    }
    options.extend(mapped);
    (options, warnings)
}

/// A scalar as text (numbers digit for digit).
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}
