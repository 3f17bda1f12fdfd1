//! `[pega] format = "capture-response"`: each event posted as one Pega Customer Decision Hub
//! CaptureResponse body, for a Pega team that points pegabridge straight at CDH
//! (`/prweb/PRRestService/PegaMKTContainer/V3/CaptureResponse`) instead of at a custom REST
//! service:
//!
//! ```json
//! {"SubjectID": "C-17", "ContextName": "Customer", "ContainerName": "EmailOffers",
//!  "RankedResults": [{"SubjectID": "C-17", "ContextName": "Customer", "Name": "Platinum",
//!    "Issue": "Sales", "Group": "Cards", "InteractionID": "-563481321460449721", "Rank": 1,
//!    "Outcome": "Impression", "Channel": "Email", "Direction": "Outbound",
//!    "Treatment": "EmailT1"}]}
//! ```
//!
//! Where each value comes from is configured (`[pega.capture_response]`): a manual option of
//! the send (every mapped trigger variable is one), a field of the event, or a fixed value,
//! optionally split (a `UniqueOfferId` of `Sales/Cards/Platinum/EmailT1` on `/`). So is the
//! outcome of each metric; metrics without one are not sent (marked `filtered`).

use crate::config::pega::{CaptureSettings, Source};
use crate::event::Metric;
use serde_json::{json, Map, Value};

/// Why an event cannot be turned into a CaptureResponse body (it becomes a dead letter,
/// replayable once the configuration is fixed).
#[derive(Debug, thiserror::Error)]
#[error("capture-response: {0}")]
pub struct Unmappable(String);

/// The outcome configured for a machine's open or click of `metric`
/// (`outcomes.machine_opens`, ...): none by default, so a machine's open is not an
/// Impression and its click not a Clicked.
pub fn machine_outcome(settings: &CaptureSettings, metric: Metric) -> Option<&str> {
    let key = format!("machine_{}", metric.as_str());
    settings.outcomes.get(&key).map(String::as_str)
}

/// The outcome configured for `metric`, if it is sent.
pub fn outcome(settings: &CaptureSettings, metric: Metric) -> Option<&str> {
    settings.outcomes.get(metric.as_str()).map(String::as_str)
}

/// The CaptureResponse body of one event (its JSON as stored).
pub fn body(settings: &CaptureSettings, payload: &str) -> Result<String, Unmappable> {
    let event: Map<String, Value> = serde_json::from_str(payload)
        .map_err(|e| Unmappable(format!("the event is not a JSON object: {e}")))?;
    let metric = event
        .get("metric")
        .and_then(Value::as_str)
        .and_then(Metric::parse)
        .ok_or_else(|| Unmappable("the event has no known metric".into()))?;
    let machine = event.get("machine_generated") == Some(&Value::Bool(true));
    let outcome = if machine {
        machine_outcome(settings, metric)
    } else {
        outcome(settings, metric)
    }
    .ok_or_else(|| Unmappable(format!("no outcome is configured for {}", metric.as_str())))?;
    let get = |key: &str, source: &Source| {
        resolve(source, &event).ok_or_else(|| Unmappable(format!("{key}: {}", source.describe())))
    };
    let subject = get("subject_id", &settings.subject_id)?;
    let interaction = get("interaction_id", &settings.interaction_id)?;
    // Pega's InteractionIDs are signed 64-bit numbers, sent as strings: kept digit for digit.
    if interaction.parse::<i64>().is_err() {
        return Err(Unmappable(format!(
            "interaction_id: `{interaction}` is not a signed 64-bit number"
        )));
    }
    let rank = get("rank", &settings.rank)?;
    let rank: Value = match rank.parse::<i64>() {
        Ok(n) => n.into(),
        Err(_) => return Err(Unmappable(format!("rank: `{rank}` is not a whole number"))),
    };
    let context = &settings.context_name;
    let result = json!({
        "SubjectID": subject,
        "ContextName": context,
        "Name": get("name", &settings.name)?,
        "Issue": get("issue", &settings.issue)?,
        "Group": get("group", &settings.group)?,
        "InteractionID": interaction,
        "Rank": rank,
        "Outcome": outcome,
        "Channel": "Email",
        "Direction": "Outbound",
        "Treatment": get("treatment", &settings.treatment)?,
    });
    let body = json!({
        "SubjectID": subject,
        "ContextName": context,
        "ContainerName": settings.container_name,
        "RankedResults": [result],
    });
    Ok(body.to_string())
}

/// A source's text in this event, if it has one.
fn resolve(source: &Source, event: &Map<String, Value>) -> Option<String> {
    let whole = if let Some(v) = &source.value {
        v.clone()
    } else {
        let found = match (&source.option, &source.field) {
            (Some(option), _) => event
                .get("broadcast_manual_options")
                .and_then(|o| o.get(option)),
            (None, Some(field)) => event.get(field),
            (None, None) => None,
        }?;
        match found {
            Value::String(s) => s.clone(),
            // Numbers digit for digit (serde_json keeps their text).
            Value::Number(n) => n.to_string(),
            _ => return None,
        }
    };
    let text = match (&source.split, source.part) {
        (Some(sep), Some(part)) => whole
            .split(sep.as_str())
            .nth(part.checked_sub(1)?)?
            .to_owned(),
        _ => whole,
    };
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(metric: &str, interaction: Value) -> String {
        json!({"metric": metric, "external_id": "C-17", "customer_id": 4,
               "broadcast_manual_options": {"UniqueOfferId": "Sales/Cards/Platinum/EmailT1",
                                            "InteractionId": interaction}})
        .to_string()
    }

    #[test]
    fn an_open_becomes_an_impression_with_the_offer_split_into_its_parts() {
        let settings = CaptureSettings {
            container_name: "EmailOffers".into(),
            ..CaptureSettings::default()
        };
        let raw: Value = serde_json::from_str("-563481321460449721").unwrap();
        let body: Value =
            serde_json::from_str(&body(&settings, &event("opens", raw)).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"SubjectID": "C-17", "ContextName": "Customer", "ContainerName": "EmailOffers",
                   "RankedResults": [{"SubjectID": "C-17", "ContextName": "Customer",
                     "Name": "Platinum", "Issue": "Sales", "Group": "Cards",
                     "InteractionID": "-563481321460449721", "Rank": 1, "Outcome": "Impression",
                     "Channel": "Email", "Direction": "Outbound", "Treatment": "EmailT1"}]})
        );
    }

    #[test]
    fn a_machines_open_is_no_impression_unless_an_outcome_is_configured_for_it() {
        let mut settings = CaptureSettings::default();
        let mut machine: Value = serde_json::from_str(&event("opens", json!("1"))).unwrap();
        machine["machine_generated"] = json!(true);
        let e = body(&settings, &machine.to_string()).unwrap_err();
        assert!(e.to_string().contains("no outcome"), "{e}");
        settings
            .outcomes
            .insert("machine_opens".into(), "MachineImpression".into());
        let sent: Value =
            serde_json::from_str(&body(&settings, &machine.to_string()).unwrap()).unwrap();
        assert_eq!(sent["RankedResults"][0]["Outcome"], "MachineImpression");
    }

    #[test]
    fn events_that_cannot_be_mapped_say_why() {
        let settings = CaptureSettings::default();
        let big: Value = serde_json::from_str("92233720368547758070").unwrap();
        let e = body(&settings, &event("opens", big)).unwrap_err();
        assert!(e.to_string().contains("signed 64-bit"), "{e}");
        let e = body(&settings, &event("bounces", json!("1"))).unwrap_err();
        assert!(e.to_string().contains("no outcome"), "{e}");
        assert_eq!(outcome(&settings, Metric::Clicks), Some("Clicked"));
        assert_eq!(outcome(&settings, Metric::Broadcasts), Some("Pending"));
        assert_eq!(outcome(&settings, Metric::Complaints), None);
    }
}
