//! Personal broadcasts: a trigger, through its mapping, becomes recipients, their `broadcasts`
//! events, and (in the preview) their rendered metadata and HTML.

use crate::event::{now, Account, Common};
use crate::mapping::apply::{apply_each, ApplyError, FieldError, Warnings};
use crate::mapping::Mapping;
use crate::recording::{NewRecipient, TriggerAnswer};
use crate::store::Storage;
use crate::template::render::{render, RenderError};
use crate::template::{Plan, Variable};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The `broadcasts` event every recipient of a trigger of `mapping` shares: all but the
/// recipient's own fields (address, domain, external id, manual options) and what the store
/// assigns when it records the send: `broadcast_id`, `customer_id`, `uuid` and the
/// timestamps (until then 0, now and the nil uuid, which is what the preview shows).
fn shared_event(account: &Account, mapping: &Mapping) -> Common {
    let f = &mapping.file;
    let ts = now();
    Common {
        portal_id: account.portal_id,
        portal_name: account.portal_name.clone(),
        brand_id: account.brand_id,
        brand_name: account.brand_name.clone(),
        metric: "broadcasts".into(),
        metric_id: 0,
        metric_timestamp: ts,
        customer_id: 0,
        external_id: String::new(),
        campaign_id: f.campaign_id,
        campaign_name: Some(f.campaign_name.clone()),
        campaign_object_id: f.campaign_object_id,
        broadcast_id: 0,
        broadcast_timestamp: ts,
        broadcast_type: "MAIL".into(),
        broadcast_event_type: f.broadcast_event_type.clone(),
        broadcast_manual_options: Map::new(),
        sub_type: f.sub_type.clone(),
        content_id: f.content_id,
        content_name: Some(f.content_name.clone()),
        subject: Some(f.subject.clone()),
        email_domain: String::new(),
        mailing_type: f.mailing_type.clone(),
        test_mailing: f.test_mailing,
        email_address_override: false,
        customer_email_address: None,
        email_address: None,
        uuid: uuid::Uuid::nil().to_string(),
    }
}

/// Why a trigger was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// Fields break the mapping's rules (every one of them).
    #[error("{} field(s) break the mapping's rules", .0.len())]
    Invalid(Vec<FieldError>),
    /// The trigger expands beyond a configured limit.
    #[error("{}", .0.message)]
    TooLarge(FieldError),
    /// Rendering failed (preview).
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A trigger as received: parsed whole, or with its recipients' array read apart
/// ([`crate::mapping::bulk`]).
#[derive(Debug)]
pub enum Trigger<'a> {
    Whole(Value),
    Split(crate::mapping::bulk::Split<'a>),
}

/// The trigger's recipients, each made into what `keep` makes of it and its warnings for
/// people as it is mapped (its manual options made compact: [`NewRecipient`]).
fn recipients<T>(
    account: &Account,
    mapping: &Mapping,
    configured: &[Variable],
    (trigger, split): (&Value, Option<&[&RawValue]>),
    warnings: Warnings,
    mut keep: impl FnMut(NewRecipient, Vec<String>) -> T,
) -> Result<Vec<T>, TriggerError> {
    let shared = Arc::new(shared_event(account, mapping));
    let each = |p: crate::mapping::apply::PersonalBroadcast, manual_options| {
        let recipient = NewRecipient {
            idempotency_key: p.idempotency_key.map(|k| format!("{}:{k}", mapping.name)),
            email: p.email,
            external_id: p.external_id,
            manual_options,
            shared: shared.clone(),
        };
        keep(recipient, p.warnings)
    };
    apply_each(mapping, configured, trigger, split, warnings, each).map_err(|e| match e {
        ApplyError::Invalid(fields) => TriggerError::Invalid(fields),
        ApplyError::TooLarge(limit) => TriggerError::TooLarge(limit),
    })
}

/// Accepts a trigger: maps it and records every personal broadcast durably. The trigger is
/// dropped once mapped, and each recipient once recorded, so a bulk trigger's parse, its
/// recipients and its answer are not all held at once.
pub async fn accept(
    store: &Storage,
    account: &Account,
    configured: &[Variable],
    mapping: &Mapping,
    trigger: Trigger<'_>,
    idempotency_key: Option<&str>,
) -> Result<TriggerAnswer, TriggerError> {
    let parts = match &trigger {
        Trigger::Whole(trigger) => (trigger, None),
        Trigger::Split(split) => (&split.trigger, Some(split.elements.as_slice())),
    };
    let keep = |r, _| r;
    let new = recipients(account, mapping, configured, parts, Warnings::Skip, keep)?;
    drop(trigger);
    let key = idempotency_key.map(|k| format!("{}:{k}", mapping.name));
    Ok(store.record_trigger(mapping.name.clone(), key, new).await?)
}

/// One recipient in a preview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PreviewRecipient {
    /// The resolved manual options.
    #[schema(value_type = Object)]
    pub manual_options: Map<String, Value>,
    /// Each configured field's `<meta>` content, rendered.
    #[schema(value_type = Object)]
    pub meta: Map<String, Value>,
    /// The exact event Pega would receive (ids are 0: nothing is stored).
    #[schema(value_type = Object)]
    pub event: Common,
    /// For people: defaults used, unmapped fields, unsupported constructs.
    pub warnings: Vec<String>,
    /// The whole personalized HTML, on request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// A preview of a trigger.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub recipients: Vec<PreviewRecipient>,
}

/// The links of a tracked mapping's personalized HTML that will not be tracked although a
/// reader would expect it, each named with why.
fn untracked(html: &str) -> Vec<String> {
    use crate::mail::tracking::{untracked_links, Untracked};
    untracked_links(html)
        .into_iter()
        .map(|(href, why)| {
            let why = match why {
                Untracked::Relative => {
                    "a relative link and no <base>: its target depends on the mail client"
                }
                Untracked::ProtocolRelative => {
                    "`//host` and no <base>: its scheme depends on the mail client"
                }
                Untracked::ControlCharacters => "control characters (a line break?) in the URL",
                _ => "not an http(s) link",
            };
            let shown: String = href.chars().take(120).collect();
            format!("the link `{shown}` is not tracked: {why}")
        })
        .collect()
}

/// Previews a trigger: nothing is stored or sent.
pub fn preview(
    account: &Account,
    plan: &Plan,
    configured: &[Variable],
    mapping: &Mapping,
    trigger: &Value,
    with_html: bool,
) -> Result<Preview, TriggerError> {
    let mut out = Vec::new();
    for (r, mut warnings) in recipients(
        account,
        mapping,
        configured,
        (trigger, None),
        Warnings::Collect,
        |r, warnings| (r, warnings),
    )? {
        let options = r.manual_options.to_map();
        let mut meta = Map::new();
        for field in plan.fields() {
            let rendered = render(&field.expression, &options)?;
            meta.insert(field.name.clone(), Value::String(rendered.html));
        }
        let html = if with_html || mapping.file.tracking {
            let rendered = render(&mapping.template_html, &options)?;
            warnings.extend(rendered.warnings);
            if mapping.file.tracking {
                warnings.extend(untracked(&rendered.html));
            }
            with_html.then_some(rendered.html)
        } else {
            warnings.extend(crate::template::render::translate(&mapping.template_html).1);
            None
        };
        out.push(PreviewRecipient {
            event: r.event(),
            manual_options: options,
            meta,
            warnings,
            html,
        });
    }
    Ok(Preview { recipients: out })
}
