//! SparkPost's webhooks: a JSON array of `{"msys": {"<kind>_event": {...}}}` batches;
//! SparkPost does not sign, so the webhook URL carries Basic auth (`[events.sparkpost]`).
//! Sender metadata is `rcpt_meta`. An empty `{"msys": {}}` is SparkPost's test ping.

use super::{digest, to, Malformed, Translated};
use serde_json::{json, Value};

/// The events of a request body.
pub fn translate(body: &Value) -> Result<Vec<Translated>, Malformed> {
    let batches = body.as_array().ok_or(Malformed {
        index: 0,
        message: "the body must be a JSON array".into(),
    })?;
    batches.iter().enumerate().map(|(i, b)| one(i, b)).collect()
}

fn one(index: usize, batch: &Value) -> Result<Translated, Malformed> {
    let bad = |message: &str| Malformed {
        index,
        message: message.to_owned(),
    };
    let msys = batch["msys"]
        .as_object()
        .ok_or_else(|| bad("`msys` is missing"))?;
    let Some(e) = msys.values().next() else {
        // The test ping.
        return Ok(Translated {
            id: digest(batch),
            key: None,
            activity: None,
        });
    };
    let kind = e["type"].as_str().ok_or_else(|| bad("`type` is missing"))?;
    // Unix seconds as a string; an event without one is stamped when it is received.
    let timestamp = match &e["timestamp"] {
        Value::Null => Value::Null,
        t => json!(t
            .as_str()
            .and_then(|t| t.parse::<f64>().ok())
            .or_else(|| t.as_f64())
            .ok_or_else(|| bad("`timestamp` must be Unix seconds"))? as i64),
    };
    let id = e["event_id"]
        .as_str()
        .map_or_else(|| digest(e), str::to_owned);
    let key = e["rcpt_meta"]["pegabridge"].as_str().map(str::to_owned);
    let ua = e["user_agent"].clone();
    let t = timestamp;
    let activity = match kind {
        "open" | "initial_open" | "amp_open" | "amp_initial_open" => {
            Some(to::open(t, ua, Value::Null))
        }
        "click" | "amp_click" => {
            let url = e["target_link_url"]
                .as_str()
                .ok_or_else(|| bad("a click needs `target_link_url`"))?;
            Some(to::click(t, url, ua))
        }
        "bounce" | "out_of_band" => {
            // SparkPost's bounce classes: 10 (invalid recipient), 30 (no RCPT) and 90
            // (unsubscribe) are hard; the others are soft or blocks.
            let class = e["bounce_class"].as_str().unwrap_or("");
            let reason = e["raw_reason"]
                .as_str()
                .or(e["reason"].as_str())
                .unwrap_or("");
            let code = super::enhanced_status(reason)
                .or_else(|| e["error_code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Some(to::bounce(
                t,
                matches!(class, "10" | "30" | "90"),
                json!(code),
                json!(reason),
            ))
        }
        "spam_complaint" => Some(to::plain("complaints", t)),
        "list_unsubscribe" | "link_unsubscribe" => Some(to::plain("unsubscribes", t)),
        _ => None,
    };
    Ok(Translated { id, key, activity })
}
