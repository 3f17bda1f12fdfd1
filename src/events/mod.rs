//! Events from mail platforms (`POST /events/{platform}`): each platform's request verified as
//! it specifies, its events translated to the seed's metrics, joined to their personal
//! broadcast through the `pegabridge` metadata key (`"{broadcast_id}-{customer_id}"`), and
//! recorded as activities, all or nothing per request. A resent event (the platform's retry)
//! is a no-op: its activity id is the platform's event id (or a digest of the event).
//!
//! Platforms: SendGrid, Mailgun, Postmark, Amazon SES (through SNS), SparkPost, Mandrill.

pub mod mailgun;
pub mod mandrill;
pub mod postmark;
pub mod sendgrid;
pub mod ses;
pub mod sparkpost;

/// Unix seconds of an RFC 3339 time (`2019-11-05T16:33:54.907Z`, or with an offset).
pub fn unix_time(text: &str) -> Option<i64> {
    postmark::time_of(text)
}

use serde_json::{Map, Value};

/// A request that fails its platform's check: 401, nothing recorded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A malformed event: 400 naming it (`index` in the request), nothing recorded.
#[derive(Debug, thiserror::Error)]
#[error("event {index}: {message}")]
pub struct Malformed {
    pub index: usize,
    pub message: String,
}

/// One platform event, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The platform's id of the event (or a digest of it).
    pub id: String,
    /// The `pegabridge` metadata value, if the event carries one.
    pub key: Option<String>,
    /// The activity (`POST /activities` shape, without `broadcast_id`, `customer_id`, `id`);
    /// `None` for an event the seed has no metric for (processed, delivered, deferred).
    pub activity: Option<Map<String, Value>>,
}

/// `(broadcast_id, customer_id)` of a `pegabridge` key.
pub fn join(key: &str) -> Option<(i64, i64)> {
    let (b, c) = key.trim().split_once('-')?;
    Some((b.parse().ok()?, c.parse().ok()?))
}

/// A digest of an event without an id of its own.
pub fn digest(event: &Value) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(event.to_string().as_bytes());
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The activities the platforms' events become (`timestamp` Unix seconds, or null for the
/// time of receipt; null fields are left out).
pub mod to {
    use serde_json::{json, Map, Value};

    pub fn open(
        timestamp: Value,
        user_agent: Value,
        machine_generated: Value,
    ) -> Map<String, Value> {
        super::activity(&[
            ("metric", json!("opens")),
            ("timestamp", timestamp),
            ("user_agent", user_agent),
            ("machine_generated", machine_generated),
        ])
    }

    pub fn click(timestamp: Value, url: &str, user_agent: Value) -> Map<String, Value> {
        super::activity(&[
            ("metric", json!("clicks")),
            ("timestamp", timestamp),
            ("url", json!(url)),
            ("user_agent", user_agent),
        ])
    }

    pub fn bounce(timestamp: Value, hard: bool, code: Value, reason: Value) -> Map<String, Value> {
        super::activity(&[
            ("metric", json!("bounces")),
            ("timestamp", timestamp),
            ("bounce_type", json!(if hard { "hard" } else { "soft" })),
            ("bounce_code", code),
            ("bounce_reason", reason),
        ])
    }

    /// A metric with no fields of its own (`complaints`, `unsubscribes`).
    pub fn plain(metric: &str, timestamp: Value) -> Map<String, Value> {
        super::activity(&[("metric", json!(metric)), ("timestamp", timestamp)])
    }
}

/// The enhanced status code (RFC 3463, `5.1.1`) in an SMTP answer's text, if any.
pub fn enhanced_status(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == ':' || c == ',' || c == ';')
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_owned)
}

/// An activity object from `(key, value)` pairs, leaving out nulls.
pub fn activity(fields: &[(&str, Value)]) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_join_key_names_a_broadcast_and_a_customer() {
        assert_eq!(super::join("12-345"), Some((12, 345)));
        assert_eq!(super::join("12"), None);
        assert_eq!(super::join("a-b"), None);
    }
}
