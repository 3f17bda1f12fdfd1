//! One type per metric over the shared [`Common`] part. `clicks` and `short_links` share
//! [`Click`]; `broadcasts` and `unsubscribes` add nothing.
//!
//! `conversions` are not specified by the seed. Ours carry `conversion_name` (what was
//! converted, e.g. `purchase`), `value` (a JSON number, as sent), `currency` (ISO 4217) and
//! `order_id`, each optional but the name.

use super::Common;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The seed's activities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Broadcasts,
    Opens,
    Clicks,
    ShortLinks,
    Bounces,
    Complaints,
    Unsubscribes,
    Conversions,
}

impl Metric {
    /// Every metric, in the seed's order.
    pub const ALL: [Metric; 8] = [
        Metric::Broadcasts,
        Metric::Opens,
        Metric::Clicks,
        Metric::ShortLinks,
        Metric::Bounces,
        Metric::Complaints,
        Metric::Unsubscribes,
        Metric::Conversions,
    ];

    /// The name Pega sees in `metric`.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Broadcasts => "broadcasts",
            Metric::Opens => "opens",
            Metric::Clicks => "clicks",
            Metric::ShortLinks => "short_links",
            Metric::Bounces => "bounces",
            Metric::Complaints => "complaints",
            Metric::Unsubscribes => "unsubscribes",
            Metric::Conversions => "conversions",
        }
    }

    /// Parses a metric name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// An `opens` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    #[serde(flatten)]
    pub common: Common,
    pub user_agent: String,
    pub os: String,
    pub browser: String,
    pub machine_generated: bool,
    /// Why it was judged a machine's (pegabridge's addition, only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_reason: Option<String>,
}

/// A `clicks` or `short_links` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Click {
    #[serde(flatten)]
    pub common: Common,
    pub user_agent: String,
    pub link_id: i64,
    pub url: String,
    pub alt: String,
    pub google_source: String,
    pub google_medium: String,
    pub google_term: String,
    pub google_content: String,
    pub google_campaign: String,
    pub tags: Vec<Value>,
    pub os: String,
    pub browser: String,
    /// Whether a machine (a link scanner, a prefetch) made it: pegabridge's addition beside
    /// the seed's fields, always present.
    #[serde(default)]
    pub machine_generated: bool,
    /// Why it was judged a machine's (only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_reason: Option<String>,
}

/// A `bounces` event, with the customer's counts after this bounce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounce {
    #[serde(flatten)]
    pub common: Common,
    /// `hard` or `soft` (the seed's JSON example; its table says `HARD`).
    pub bounce_type: String,
    pub bounce_code: String,
    pub bounce_reason: String,
    pub bounce_count_hard: i64,
    pub bounce_count_soft: i64,
}

/// A `complaints` event, with the customer's complaint count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Complaint {
    #[serde(flatten)]
    pub common: Common,
    pub complaints: i64,
}

/// A `conversions` event (our definition, see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    #[serde(flatten)]
    pub common: Common,
    pub conversion_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

/// Any event, told apart by its `metric`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `broadcasts` and `unsubscribes`: the common part only.
    Plain(Common),
    Open(Open),
    Click(Click),
    Bounce(Bounce),
    Complaint(Complaint),
    Conversion(Conversion),
}

impl Event {
    /// The shared part.
    pub fn common(&self) -> &Common {
        match self {
            Event::Plain(c) => c,
            Event::Open(e) => &e.common,
            Event::Click(e) => &e.common,
            Event::Bounce(e) => &e.common,
            Event::Complaint(e) => &e.common,
            Event::Conversion(e) => &e.common,
        }
    }

    /// Reads an event, choosing its type by `metric`.
    pub fn from_value(value: Value) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        let metric = value.get("metric").and_then(Value::as_str).unwrap_or("");
        Ok(match Metric::parse(metric) {
            Some(Metric::Broadcasts | Metric::Unsubscribes) => {
                Event::Plain(serde_json::from_value(value)?)
            }
            Some(Metric::Opens) => Event::Open(serde_json::from_value(value)?),
            Some(Metric::Clicks | Metric::ShortLinks) => {
                Event::Click(serde_json::from_value(value)?)
            }
            Some(Metric::Bounces) => Event::Bounce(serde_json::from_value(value)?),
            Some(Metric::Complaints) => Event::Complaint(serde_json::from_value(value)?),
            Some(Metric::Conversions) => Event::Conversion(serde_json::from_value(value)?),
            None => {
                return Err(serde_json::Error::custom(format!(
                    "unknown metric `{metric}`"
                )))
            }
        })
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::Plain(e) => e.serialize(s),
            Event::Open(e) => e.serialize(s),
            Event::Click(e) => e.serialize(s),
            Event::Bounce(e) => e.serialize(s),
            Event::Complaint(e) => e.serialize(s),
            Event::Conversion(e) => e.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Event::from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every JSON example of the seed (tests/seed) reads into its type and serializes back to
    /// the same keys and values, plus pegabridge's one addition: a click's `machine_generated`
    /// (false when the seed's example, which predates it, leaves it out).
    #[test]
    fn the_seeds_json_examples_round_trip_through_the_event_types() {
        for name in ["broadcasts", "opens", "clicks", "bounces", "unsubscribes"] {
            let path = format!("{}/tests/seed/{name}.json", env!("CARGO_MANIFEST_DIR"));
            let examples: Vec<Value> =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for example in examples {
                let event = Event::from_value(example.clone()).unwrap();
                assert_eq!(event.common().metric, name);
                let mut expected = example.clone();
                if name == "clicks" {
                    let fields = expected.as_object_mut().unwrap();
                    assert!(
                        !fields.contains_key("machine_generated"),
                        "the seed's click"
                    );
                    fields.insert("machine_generated".into(), Value::Bool(false));
                }
                assert_eq!(serde_json::to_value(&event).unwrap(), expected, "{name}");
            }
        }
    }

    #[test]
    fn a_missing_field_of_a_metric_is_an_error() {
        let mut open: Value = serde_json::from_str::<Vec<Value>>(
            &std::fs::read_to_string(format!(
                "{}/tests/seed/opens.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap()
        .remove(0);
        open.as_object_mut().unwrap().remove("machine_generated");
        assert!(Event::from_value(open).is_err());
    }
}
