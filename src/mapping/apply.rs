//! Applying a mapping to a trigger: one personal broadcast per recipient, or every failing
//! field at once.

use super::Mapping;
pub use crate::config::TriggerLimits;
use crate::event::ManualOptions;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The mapping key (`variables.InteractionId`, `recipient.email`).
    pub field: String,
    /// Where in the trigger it was looked for.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Why a trigger cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// Fields break the mapping's rules (every one of them).
    Invalid(Vec<FieldError>),
    /// The trigger expands beyond a limit: the key of the limit and what happened.
    TooLarge(FieldError),
}

/// Whether [`apply`] tells people what it filled in (a preview does; accepting a trigger
/// does not, as nobody reads them there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warnings {
    Collect,
    Skip,
}

/// Applies `mapping` to `trigger`, within `mapping.limits`.
pub fn apply(
    mapping: &Mapping,
    configured: &[Variable],
    trigger: &Value,
    warnings: Warnings,
) -> Result<Vec<PersonalBroadcast>, ApplyError> {
    apply_to(mapping, configured, trigger, None, warnings)
}

/// Like [`apply`]; with `split`, the array the mapping sends to was read apart from the
/// trigger ([`super::bulk::split`]: in `trigger` it is empty) and each element is parsed
/// from its text only at its turn, so a bulk trigger's elements are never all parsed at once.
pub fn apply_to(
    mapping: &Mapping,
    configured: &[Variable],
    trigger: &Value,
    split: Option<&[&serde_json::value::RawValue]>,
    warnings: Warnings,
) -> Result<Vec<PersonalBroadcast>, ApplyError> {
    apply_each(mapping, configured, trigger, split, warnings, |p, _| p)
}

/// Like [`apply_to`], keeping of each recipient what `keep` makes of it and of its manual
/// options' text (measured against the limits), as it comes: a bulk trigger's recipients are
/// never all held in their mapped form.
pub fn apply_each<T>(
    mapping: &Mapping,
    configured: &[Variable],
    trigger: &Value,
    split: Option<&[&serde_json::value::RawValue]>,
    warnings: Warnings,
    mut keep: impl FnMut(PersonalBroadcast, ManualOptions) -> T,
) -> Result<Vec<T>, ApplyError> {
    let limits = mapping.limits;
    let mut errors = Vec::new();
    let each = mapping.file.recipient.each.as_ref();
    let elements = Elements::of(each, trigger, split)?;
    if elements.len() > limits.max_recipients {
        return Err(ApplyError::TooLarge(FieldError {
            field: "server.max_recipients".into(),
            path: each.map(ToString::to_string).unwrap_or_default(),
            message: format!(
                "{} recipients, more than server.max_recipients ({})",
                elements.len(),
                limits.max_recipients
            ),
        }));
    }
    let mut recipients = Vec::with_capacity(elements.len());
    let mut total_bytes = 0usize;
    // The expansion bound: the trigger's size times the allowed factor, 1 MiB at least.
    let size =
        json_len(trigger) + split.map_or(0, |raw| raw.iter().map(|e| e.get().len() + 1).sum());
    let expansion_budget = size
        .saturating_mul(limits.max_trigger_expansion)
        .max(MIN_EXPANSION_BUDGET);
    for i in 0..elements.len() {
        let prefix = each.map(|each| format!("{each}.{i}")).unwrap_or_default();
        let item = match elements.get(i) {
            Ok(item) => item,
            Err(e) => {
                errors.push(FieldError {
                    field: "recipient.each".into(),
                    path: prefix,
                    message: format!("not readable: {e}"),
                });
                continue;
            }
        };
        let element = item.as_deref().map(|v| (v, prefix.as_str()));
        match recipient(mapping, configured, trigger, element, warnings) {
            Ok(r) => {
                let options = ManualOptions::new(&r.manual_options);
                let bytes = options.len();
                if bytes > limits.max_options_bytes {
                    return Err(ApplyError::TooLarge(FieldError {
                        field: "server.max_options_bytes".into(),
                        path: prefix,
                        message: format!(
                            "a recipient's manual options are {bytes} bytes, more than server.max_options_bytes ({})",
                            limits.max_options_bytes
                        ),
                    }));
                }
                total_bytes += bytes;
                if total_bytes > limits.max_trigger_options_bytes {
                    return Err(ApplyError::TooLarge(FieldError {
                        field: "server.max_trigger_options_bytes".into(),
                        path: prefix,
                        message: format!(
                            "the recipients' manual options exceed server.max_trigger_options_bytes ({})",
                            limits.max_trigger_options_bytes
                        ),
                    }));
                }
                if total_bytes > expansion_budget {
                    return Err(ApplyError::TooLarge(FieldError {
                        field: "server.max_trigger_expansion".into(),
                        path: prefix,
                        message: format!(
                            "the recipients' manual options exceed {} times the trigger's size (server.max_trigger_expansion): a value copied into every recipient counts once per copy",
                            limits.max_trigger_expansion
                        ),
                    }));
                }
                if errors.is_empty() {
                    recipients.push(keep(r, options));
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(recipients)
    } else {
        Err(ApplyError::Invalid(errors))
    }
}

/// The elements a trigger's recipients come from.
#[derive(Clone, Copy)]
enum Elements<'a> {
    /// No `[recipient] each`: the trigger is the one recipient.
    One,
    Parsed(&'a [Value]),
    /// Each element's JSON text, parsed at its turn.
    Raw(&'a [&'a serde_json::value::RawValue]),
}

impl<'a> Elements<'a> {
    /// The elements `each` names (the trigger itself without one), or why there are none.
    fn of(
        each: Option<&super::path::FieldPath>,
        trigger: &'a Value,
        split: Option<&'a [&'a serde_json::value::RawValue]>,
    ) -> Result<Self, ApplyError> {
        let not_an_array = || {
            ApplyError::Invalid(vec![FieldError {
                field: "recipient.each".into(),
                path: each.map(ToString::to_string).unwrap_or_default(),
                message: "must be a non-empty array of recipients".into(),
            }])
        };
        match (each, split) {
            (None, _) => Ok(Elements::One),
            (Some(_), Some(raw)) if !raw.is_empty() => Ok(Elements::Raw(raw)),
            (Some(each), None) => match each.get(trigger) {
                Some(Value::Array(items)) if !items.is_empty() => Ok(Elements::Parsed(items)),
                _ => Err(not_an_array()),
            },
            (Some(_), Some(_)) => Err(not_an_array()),
        }
    }

    /// The `i`th element (parsed now when read apart), `None` for the trigger itself.
    fn get(&self, i: usize) -> Result<Option<std::borrow::Cow<'a, Value>>, serde_json::Error> {
        use std::borrow::Cow;
        Ok(match self {
            Elements::One => None,
            Elements::Parsed(items) => Some(Cow::Borrowed(&items[i])),
            Elements::Raw(raw) => Some(Cow::Owned(serde_json::from_str(raw[i].get())?)),
        })
    }

    fn len(&self) -> usize {
        match self {
            Elements::One => 1,
            Elements::Parsed(items) => items.len(),
            Elements::Raw(raw) => raw.len(),
        }
    }
}

/// The expansion budget of a small trigger (see `server.max_trigger_expansion`).
const MIN_EXPANSION_BUDGET: usize = 1024 * 1024;

/// The length of a value's JSON text, without writing it.
fn json_len(v: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

fn recipient(
    mapping: &Mapping,
    configured: &[Variable],
    trigger: &Value,
    element: Option<(&Value, &str)>,
    warn: Warnings,
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
                    Some(v) => format!("must be an email address, got {}", quoted(v)),
                },
            });
            String::new()
        }
    };
    let external_id = match &spec.external_id {
        None => String::new(),
        Some(p) => match p.resolve(trigger, element) {
            (None | Some(Value::Null), _) => String::new(),
            (Some(v), path) => match identifier(v) {
                Some(id) => id,
                None => {
                    errors.push(FieldError {
                        field: "recipient.external_id".into(),
                        path,
                        message: format!("must be a string or a whole number, got {}", quoted(v)),
                    });
                    String::new()
                }
            },
        },
    };

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
                            message: format!(
                                "{} does not match pattern {}",
                                quoted(v),
                                re.as_str()
                            ),
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
    let (manual_options, warnings) = manual_options(mapping, configured, mapped, warn);
    let idempotency_key = mapping
        .file
        .idempotency_key
        .as_ref()
        .and_then(|p| p.resolve(trigger, element).0)
        .and_then(identifier);
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
    warn: Warnings,
) -> (Map<String, Value>, Vec<String>) {
    let mut options = Map::new();
    let mut warnings = Vec::new();
    let mut warning = |text: String| {
        if warn == Warnings::Collect {
            warnings.push(text);
        }
    };
    for field in &mapping.template_fields {
        let value = if let Some(v) = mapped.remove(&field.name) {
            v
        } else if let Some(d) = &field.default {
            warning(format!("{}: not mapped, template default used", field.name));
            Value::String(d.clone())
        } else if let Some(v) = configured.iter().find(|v| v.name.as_ref() == field.name) {
            warning(format!(
                "{}: not mapped, configured default used",
                field.name
            ));
            Value::String(v.default.clone())
        } else {
            warning(format!("{}: not mapped and no default: null", field.name));
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

/// An identifier as the exact text it was sent as: a string, or a whole number digit for digit
/// (beyond 64 bits too: numbers are kept as their text). A boolean, a fraction or a structure
/// is no identifier (`true` and `"true"` must not name the same customer).
pub fn identifier(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => {
            let text = n.to_string();
            let digits = text.strip_prefix('-').unwrap_or(&text);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(text)
        }
        _ => None,
    }
}

/// The most of a value quoted in an error message.
pub const QUOTED_CHARS: usize = 64;

/// A value for an error message, cut to [`QUOTED_CHARS`] characters: an answer never repeats
/// a large input.
pub fn quoted(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= QUOTED_CHARS {
        return text;
    }
    let cut: String = text.chars().take(QUOTED_CHARS).collect();
    format!("{cut}... ({} bytes)", text.len())
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}
