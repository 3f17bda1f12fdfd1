//! SendGrid's Event Webhook: a JSON array of events, signed (Signed Event Webhook) with ECDSA
//! P-256 / SHA-256 over the `X-Twilio-Email-Event-Webhook-Timestamp` header followed by the raw
//! body; the signature (base64 DER) in `X-Twilio-Email-Event-Webhook-Signature`, the key
//! configured as base64 DER SubjectPublicKeyInfo. Sender metadata (`custom_args`) comes back as
//! top-level keys of each event.

use super::{digest, to, Malformed, Refused, Translated};
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::{json, Value};

pub const SIGNATURE: &str = "X-Twilio-Email-Event-Webhook-Signature";
pub const TIMESTAMP: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// Whether `body` with these headers was signed by `key`.
pub fn verify(key: &VerifyingKey, headers: &HeaderMap, body: &[u8]) -> Result<(), Refused> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Refused(format!("{name} is missing")))
    };
    verify_parts(key, header(SIGNATURE)?, header(TIMESTAMP)?, body)
}

/// Whether the request's signature timestamp is within `max_age_secs` of `now` (either way;
/// 0 turns the check off): an old request replayed is refused before its signature is
/// checked.
pub fn fresh(headers: &HeaderMap, now: i64, max_age_secs: i64) -> Result<(), Refused> {
    if max_age_secs <= 0 {
        return Ok(());
    }
    let ts = headers
        .get(TIMESTAMP)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Refused(format!("{TIMESTAMP} is missing")))?;
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| Refused(format!("{TIMESTAMP} is not Unix seconds")))?;
    if (now - ts).abs() > max_age_secs {
        return Err(Refused(format!(
            "the signature's timestamp is {} s away from now, beyond events.sendgrid.max_age_secs ({max_age_secs})",
            (now - ts).abs()
        )));
    }
    Ok(())
}

/// The check itself, over the header values.
pub fn verify_parts(
    key: &VerifyingKey,
    signature: &str,
    timestamp: &str,
    body: &[u8],
) -> Result<(), Refused> {
    let der = STANDARD
        .decode(signature.trim())
        .map_err(|_| Refused("the signature is not base64".into()))?;
    let signature =
        Signature::from_der(&der).map_err(|_| Refused("the signature is not DER ECDSA".into()))?;
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.verify(&signed, &signature)
        .map_err(|_| Refused("the signature does not match".into()))
}

/// The events of a request body.
pub fn translate(body: &Value) -> Result<Vec<Translated>, Malformed> {
    let events = body.as_array().ok_or(Malformed {
        index: 0,
        message: "the body must be a JSON array of events".into(),
    })?;
    events.iter().enumerate().map(|(i, e)| one(i, e)).collect()
}

fn one(index: usize, e: &Value) -> Result<Translated, Malformed> {
    let bad = |message: &str| Malformed {
        index,
        message: message.to_owned(),
    };
    let kind = e["event"]
        .as_str()
        .ok_or_else(|| bad("`event` is missing"))?;
    let timestamp = e["timestamp"]
        .as_i64()
        .ok_or_else(|| bad("`timestamp` must be Unix seconds"))?;
    let id = e["sg_event_id"]
        .as_str()
        .map_or_else(|| digest(e), str::to_owned);
    let key = e["pegabridge"].as_str().map(str::to_owned);
    let ua = e["useragent"].clone();
    let t = json!(timestamp);
    let activity = match kind {
        // SendGrid's own flag (Apple Mail Privacy Protection and the like).
        "open" => Some(to::open(t, ua, e["sg_machine_open"].clone())),
        "click" => {
            let url = e["url"]
                .as_str()
                .ok_or_else(|| bad("a click needs `url`"))?;
            Some(to::click(t, url, ua))
        }
        // `type`: "bounce" (the address does not take mail) or "blocked" (refused for now).
        "bounce" => Some(to::bounce(
            t,
            e["type"].as_str() != Some("blocked"),
            e["status"].clone(),
            e["reason"].clone(),
        )),
        "spamreport" => Some(to::plain("complaints", t)),
        "unsubscribe" | "group_unsubscribe" => Some(to::plain("unsubscribes", t)),
        // processed, delivered, deferred, dropped (the suppression after a bounce or an
        // unsubscribe, which is already counted): acknowledged, not forwarded.
        _ => None,
    };
    Ok(Translated { id, key, activity })
}
