//! Mandrill's webhooks: a form POST whose `mandrill_events` field is a JSON array, signed in
//! `X-Mandrill-Signature` with base64(HMAC-SHA1(key, URL + every POST field sorted by name,
//! name then value)) over the exact URL Mandrill was given. Mandrill first checks the URL
//! with an unsigned `HEAD` and a test POST of `mandrill_events=[]` signed with the key
//! `test-webhook`. Sender metadata is `msg.metadata`.

use super::{digest, to, Malformed, Refused, Translated};
use crate::config::events::MandrillSettings as Settings;
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;

pub const SIGNATURE: &str = "X-Mandrill-Signature";

/// The key of Mandrill's test POST.
const TEST_KEY: &str = "test-webhook";

/// The signature of `fields` posted to `url` under `key`.
pub fn sign(key: &str, url: &str, fields: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

fn matches(key: &str, url: &str, fields: &[(String, String)], given: &str) -> bool {
    let expected = sign(key, url, fields);
    subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), given.trim().as_bytes()).into()
}

/// The request's fields, if verified: signed with the configured key, or Mandrill's test
/// POST (no events, signed with `test-webhook`).
pub fn verify(
    settings: &Settings,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, Refused> {
    let given = headers
        .get(SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Refused(format!("{SIGNATURE} is missing")))?;
    let fields: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|_| Refused("the body is not a form".into()))?;
    if matches(settings.key.expose(), &settings.url, &fields, given) {
        return Ok(fields);
    }
    let empty = fields
        .iter()
        .all(|(k, v)| k != "mandrill_events" || v.trim() == "[]");
    if empty && matches(TEST_KEY, &settings.url, &fields, given) {
        return Ok(fields);
    }
    Err(Refused("the signature does not match".into()))
}

/// The events of the verified fields.
pub fn translate(fields: &[(String, String)]) -> Result<Vec<Translated>, Malformed> {
    let raw = fields
        .iter()
        .find(|(k, _)| k == "mandrill_events")
        .map(|(_, v)| v.as_str())
        .ok_or(Malformed {
            index: 0,
            message: "`mandrill_events` is missing".into(),
        })?;
    let events: Value = serde_json::from_str(raw).map_err(|e| Malformed {
        index: 0,
        message: format!("`mandrill_events` is not JSON: {e}"),
    })?;
    let events = events.as_array().ok_or(Malformed {
        index: 0,
        message: "`mandrill_events` must be an array".into(),
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
    let timestamp = e["ts"]
        .as_i64()
        .ok_or_else(|| bad("`ts` must be Unix seconds"))?;
    // `_id` is the message's: with the event and its time it names the event.
    let id = match e["_id"].as_str() {
        Some(msg) => format!("{msg}:{kind}:{timestamp}"),
        None => digest(e),
    };
    let msg = &e["msg"];
    let key = msg["metadata"]["pegabridge"].as_str().map(str::to_owned);
    let ua = e["user_agent"].clone();
    let t = json!(timestamp);
    let activity = match kind {
        "open" => Some(to::open(t, ua, Value::Null)),
        "click" => {
            let url = e["url"]
                .as_str()
                .ok_or_else(|| bad("a click needs `url`"))?;
            Some(to::click(t, url, ua))
        }
        "hard_bounce" | "soft_bounce" => {
            let text = msg["diag"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("smtp;");
            let code = super::enhanced_status(text).unwrap_or_default();
            Some(to::bounce(
                t,
                kind == "hard_bounce",
                json!(code),
                json!(text),
            ))
        }
        "spam" => Some(to::plain("complaints", t)),
        "unsub" => Some(to::plain("unsubscribes", t)),
        _ => None,
    };
    Ok(Translated { id, key, activity })
}
