//! The events Pega receives, with the seed's exact field names (its JSON examples are the
//! contract). Every event shares [`Common`]; each metric adds its own fields ([`Event`]).

mod metrics;

pub use metrics::{Bounce, Click, Complaint, Conversion, Event, Metric, Open};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The account an event comes from (`[account]`): the same on every event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Account {
    pub portal_id: i64,
    pub portal_name: String,
    pub brand_id: i64,
    pub brand_name: String,
}

/// The fields every event carries, in the order of the seed's examples. The seed's bounce and
/// unsubscribe examples lack the five optional ones; events pegabridge makes always have them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Common {
    pub portal_id: i64,
    pub portal_name: String,
    pub brand_id: i64,
    pub brand_name: String,
    pub metric: String,
    pub metric_id: i64,
    pub metric_timestamp: i64,
    pub customer_id: i64,
    pub external_id: String,
    pub campaign_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_name: Option<String>,
    pub campaign_object_id: i64,
    pub broadcast_id: i64,
    pub broadcast_timestamp: i64,
    pub broadcast_type: String,
    pub broadcast_event_type: String,
    pub broadcast_manual_options: Map<String, Value>,
    pub sub_type: String,
    pub content_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub email_domain: String,
    pub mailing_type: String,
    pub test_mailing: bool,
    pub email_address_override: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_email_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    pub uuid: String,
}

/// The domain part of an address (`email_domain`).
pub fn email_domain(email: &str) -> String {
    email
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// A new event `uuid`: a UUID version 7, which starts with the time, so each table's unique
/// index on it grows at one end instead of taking writes all over (a random version 4 made
/// every insert rewrite another index page).
pub fn new_uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now, in Unix seconds (the seed's timestamps).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The key that joins a mail platform's event to its personal broadcast: the `pegabridge`
/// metadata value `"{broadcast_id}-{customer_id}"` each message carries through its relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JoinKey {
    pub broadcast_id: i64,
    pub customer_id: i64,
}

impl JoinKey {
    /// The key of a metadata value, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        let (b, c) = text.trim().split_once('-')?;
        Some(Self {
            broadcast_id: b.parse().ok()?,
            customer_id: c.parse().ok()?,
        })
    }
}

impl std::fmt::Display for JoinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.broadcast_id, self.customer_id)
    }
}

/// A recipient's manual options (its event's `broadcast_manual_options`) while a trigger is
/// recorded, kept as their JSON object's text: one allocation, where a
/// map held a node, a key and a value of its own per option (about 1 KB a recipient, 86 MB of
/// a 100,000-recipient trigger's peak). Read back into a map at the recipient's turn.
#[derive(Clone)]
pub struct ManualOptions(Box<serde_json::value::RawValue>);

impl ManualOptions {
    /// The options' JSON text (a serialized map: its keys sorted, its numbers exact).
    pub fn new(options: &Map<String, Value>) -> Self {
        let text = serde_json::to_string(options).expect("a map of JSON values serializes");
        Self(serde_json::value::RawValue::from_string(text).expect("serialized JSON"))
    }

    /// The length of its JSON text.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether there is no option (`{}`).
    pub fn is_empty(&self) -> bool {
        self.len() <= 2
    }

    /// The options as a map.
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.0.get()).expect("written by ManualOptions::new")
    }
}

impl std::fmt::Debug for ManualOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_options_kept_as_text_read_back_as_they_were_given() {
        let options: Map<String, Value> = serde_json::from_str(
            r#"{"InteractionId": -563481321460449721123, "Amount": 12.50, "Name": "Zoë \"Z\"",
                "Nested": {"b": [1, null, true]}, "Empty": ""}"#,
        )
        .unwrap();
        let kept = ManualOptions::new(&options);
        assert_eq!(kept.to_map(), options);
        // Digit for digit (beyond 64 bits, the trailing zero kept), in one allocation of text.
        let text = format!("{kept:?}");
        assert!(text.contains("-563481321460449721123"), "{text}");
        assert!(text.contains("12.50"), "{text}");
        assert_eq!(kept.len(), text.len());
        assert!(ManualOptions::new(&Map::new()).is_empty());
    }
}
