//! Events from mail platforms (`POST /events/{platform}`): each platform's request verified as
//! it specifies, its events translated to the seed's metrics, joined to their personal
//! broadcast through the `pegabridge` metadata key (`"{broadcast_id}-{customer_id}"`), and
//! recorded as activities, all or nothing per request. A resent event (the platform's retry)
//! is a no-op: its activity id is the platform's event id (or a digest of the event).
//!
//! Platforms: SendGrid, Mailgun, Postmark, Amazon SES (through SNS), SparkPost, Mandrill.

pub mod mailgun;
pub mod mandrill;
pub mod platform;
pub mod postmark;
pub mod sendgrid;
pub mod ses;
pub mod sparkpost;

/// Unix seconds of an RFC 3339 time (`2019-11-05T16:33:54.907Z`, or with an offset).
pub fn unix_time(text: &str) -> Option<i64> {
    postmark::time_of(text)
}

use serde_json::Value;

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
    /// The activity, without its personal broadcast and id (set when joined); `None` for an
    /// event the seed has no metric for (processed, delivered, deferred).
    pub activity: Option<crate::activity::Raw>,
}

/// A digest of an event without an id of its own.
pub fn digest(event: &Value) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(event.to_string().as_bytes());
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The activities the platforms' events become (`timestamp` Unix seconds, or null for the
/// time of receipt; null fields are left out): typed values, joined to their personal
/// broadcast by the route ([`Translated::key`]).
pub mod to {
    use crate::activity::Raw;
    use crate::event::Metric;
    use serde_json::Value;

    /// A JSON value as text: a string as it is, null as nothing, anything else as JSON.
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    fn raw(metric: Metric, timestamp: &Value) -> Raw {
        Raw {
            timestamp: timestamp.as_i64(),
            ..Raw::new(metric, 0, 0)
        }
    }

    pub fn open(timestamp: Value, user_agent: Value, machine_generated: Value) -> Raw {
        Raw {
            user_agent: text(&user_agent),
            machine_generated: machine_generated.as_bool(),
            ..raw(Metric::Opens, &timestamp)
        }
    }

    pub fn click(timestamp: Value, url: &str, user_agent: Value) -> Raw {
        Raw {
            url: Some(url.to_owned()),
            user_agent: text(&user_agent),
            ..raw(Metric::Clicks, &timestamp)
        }
    }

    pub fn bounce(timestamp: Value, hard: bool, code: Value, reason: Value) -> Raw {
        Raw {
            bounce_type: Some(if hard { "hard" } else { "soft" }.to_owned()),
            bounce_code: text(&code),
            bounce_reason: text(&reason),
            ..raw(Metric::Bounces, &timestamp)
        }
    }

    /// A metric with no fields of its own (`complaints`, `unsubscribes`).
    pub fn plain(metric: &str, timestamp: Value) -> Raw {
        let metric = Metric::parse(metric).expect("a metric of the seed");
        raw(metric, &timestamp)
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

#[cfg(test)]
mod tests {
    use crate::event::JoinKey;

    #[test]
    fn the_join_key_names_a_broadcast_and_a_customer() {
        let key = JoinKey::parse("12-345").unwrap();
        assert_eq!((key.broadcast_id, key.customer_id), (12, 345));
        assert_eq!(key.to_string(), "12-345");
        assert_eq!(JoinKey::parse("12"), None);
        assert_eq!(JoinKey::parse("a-b"), None);
    }
}
