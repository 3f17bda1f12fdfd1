//! Mailgun's webhooks: one event per request, `{"signature": {"timestamp", "token",
//! "signature"}, "event-data": {...}}`, signed with HMAC-SHA256 (hex) of timestamp + token
//! under the webhook signing key. Mailgun does not sign the body: a timestamp older than
//! `max_age_secs` and a token seen before are refused. Sender metadata (`v:` variables) is in
//! `event-data.user-variables`.

use super::{digest, to, Malformed, Refused, Translated};
use crate::config::events::MailgunSettings as Settings;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;

/// Tokens seen within the age window (a replayed request is refused).
#[derive(Debug, Default)]
pub struct Tokens(Mutex<HashMap<String, i64>>);

/// Most tokens remembered (the oldest go first when full).
const MAX_TOKENS: usize = 100_000;

impl Tokens {
    /// Remembers `token` (seen at `timestamp`); false if it was seen before.
    fn first_use(&self, token: &str, timestamp: i64, now: i64, max_age: i64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_TOKENS {
            seen.retain(|_, t| now - *t <= max_age);
        }
        if seen.len() >= MAX_TOKENS {
            return false;
        }
        seen.insert(token.to_owned(), timestamp).is_none()
    }
}

/// The signature of `timestamp` + `token` under `key`, in hex.
pub fn sign(key: &str, timestamp: &str, token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the signature is right (constant time), without the age and reuse checks.
pub fn signature_matches(key: &str, timestamp: &str, token: &str, signature: &str) -> bool {
    let Some(given) = hex(signature) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    mac.verify_slice(&given).is_ok()
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Verifies a request's signature block at `now` (Unix seconds).
pub fn verify(settings: &Settings, tokens: &Tokens, body: &Value, now: i64) -> Result<(), Refused> {
    let sig = &body["signature"];
    let field = |k: &str| {
        sig[k]
            .as_str()
            .map(str::to_owned)
            .or_else(|| sig[k].as_i64().map(|n| n.to_string()))
            .ok_or_else(|| Refused(format!("signature.{k} is missing")))
    };
    let (timestamp, token, signature) = (field("timestamp")?, field("token")?, field("signature")?);
    if !signature_matches(
        settings.signing_key.expose(),
        &timestamp,
        &token,
        &signature,
    ) {
        return Err(Refused("the signature does not match".into()));
    }
    let at: i64 = timestamp
        .parse()
        .map_err(|_| Refused("signature.timestamp is not Unix seconds".into()))?;
    if (now - at).abs() > settings.max_age_secs {
        return Err(Refused(format!(
            "the signature's timestamp is {}s away from now (more than events.mailgun.max_age_secs)",
            now - at
        )));
    }
    if !tokens.first_use(&token, at, now, settings.max_age_secs) {
        return Err(Refused("the signature's token was used before".into()));
    }
    Ok(())
}

/// The event of a request body.
pub fn translate(body: &Value) -> Result<Vec<Translated>, Malformed> {
    let bad = |message: &str| Malformed {
        index: 0,
        message: message.to_owned(),
    };
    let e = body
        .get("event-data")
        .ok_or_else(|| bad("`event-data` is missing"))?;
    let kind = e["event"]
        .as_str()
        .ok_or_else(|| bad("`event` is missing"))?;
    // Unix seconds (a float); an event without one is stamped when it is received.
    let timestamp = match &e["timestamp"] {
        Value::Null => Value::Null,
        t => json!(t
            .as_f64()
            .ok_or_else(|| bad("`timestamp` must be Unix seconds"))? as i64),
    };
    let id = e["id"].as_str().map_or_else(|| digest(e), str::to_owned);
    let key = e["user-variables"]["pegabridge"]
        .as_str()
        .map(str::to_owned);
    let ua = e["client-info"]["user-agent"].clone();
    let status = &e["delivery-status"];
    let t = timestamp;
    let activity = match kind {
        "opened" => Some(to::open(t, ua, Value::Null)),
        "clicked" => {
            let url = e["url"]
                .as_str()
                .ok_or_else(|| bad("a click needs `url`"))?;
            Some(to::click(t, url, ua))
        }
        "failed" => {
            let message = status["message"]
                .as_str()
                .filter(|m| !m.is_empty())
                .or_else(|| status["description"].as_str())
                .unwrap_or("");
            let code = super::enhanced_status(message).unwrap_or_else(|| {
                status["code"]
                    .as_i64()
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            });
            Some(to::bounce(
                t,
                e["severity"].as_str() == Some("permanent"),
                json!(code),
                json!(message.lines().next().unwrap_or("")),
            ))
        }
        "complained" => Some(to::plain("complaints", t)),
        "unsubscribed" => Some(to::plain("unsubscribes", t)),
        _ => None,
    };
    Ok(vec![Translated { id, key, activity }])
}
