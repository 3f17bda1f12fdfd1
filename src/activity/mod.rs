//! Activities from the mail platform (`POST /activities`): parsed and checked at the edge,
//! enriched where the caller left fields out, and turned into the seed's events once joined
//! with their personal broadcast.

pub mod enrich;

use crate::event::{Bounce, Click, Common, Complaint, Conversion, Event, Metric, Open};
use crate::mapping::apply::FieldError;
use serde::Deserialize;
use serde_json::{Number, Value};

/// An activity as a source hands it in, before it is checked and enriched: the body of
/// `POST /activities` (deserialized), or built directly by the other sources (tracked links,
/// platform events), with no JSON in between. [`Raw::check`] makes it an [`Activity`].
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    pub id: Option<String>,
    pub metric: String,
    pub broadcast_id: i64,
    pub customer_id: i64,
    pub timestamp: Option<i64>,
    pub user_agent: Option<String>,
    pub os: Option<String>,
    pub browser: Option<String>,
    pub machine_generated: Option<bool>,
    pub link_id: Option<i64>,
    pub url: Option<String>,
    pub alt: Option<String>,
    pub tags: Option<Vec<Value>>,
    pub google_source: Option<String>,
    pub google_medium: Option<String>,
    pub google_term: Option<String>,
    pub google_content: Option<String>,
    pub google_campaign: Option<String>,
    pub bounce_type: Option<String>,
    pub bounce_code: Option<String>,
    pub bounce_reason: Option<String>,
    pub conversion_name: Option<String>,
    pub value: Option<Number>,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    /// Why a source judged it a machine's (tracked requests); never from a caller's JSON.
    #[serde(skip)]
    pub machine_reason: Option<crate::engagement::Reason>,
}

impl Raw {
    /// A raw activity of `metric` for a personal broadcast (the other fields empty).
    pub fn new(metric: Metric, broadcast_id: i64, customer_id: i64) -> Self {
        Self {
            metric: metric.as_str().to_owned(),
            broadcast_id,
            customer_id,
            ..Self::default()
        }
    }

    /// Checks and enriches it; a problem names its field.
    pub fn check(self) -> Result<Activity, (&'static str, String)> {
        check(self)
    }
}

/// What an activity adds to the common part.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    Open {
        user_agent: String,
        os: String,
        browser: String,
        machine_generated: bool,
        /// Why it is a machine's, when known.
        machine_reason: Option<crate::engagement::Reason>,
    },
    Click(Box<ClickDetail>),
    Bounce {
        hard: bool,
        code: String,
        reason: String,
    },
    Complaint,
    Unsubscribe,
    Conversion {
        name: String,
        value: Option<Number>,
        currency: Option<String>,
        order_id: Option<String>,
    },
}

/// A click's own fields (clicks and short_links).
#[derive(Debug, Clone, PartialEq)]
pub struct ClickDetail {
    pub user_agent: String,
    pub os: String,
    pub browser: String,
    pub link_id: i64,
    pub url: String,
    pub alt: String,
    pub utm: enrich::Utm,
    pub tags: Vec<Value>,
    pub machine_generated: bool,
    pub machine_reason: Option<crate::engagement::Reason>,
}

/// A checked, enriched activity.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    /// The caller's id: a resend with the same id is a no-op.
    pub external_id: Option<String>,
    pub metric: Metric,
    pub broadcast_id: i64,
    pub customer_id: i64,
    /// Unix seconds; now when not given.
    pub timestamp: Option<i64>,
    pub detail: Detail,
    /// Recorded but not sent to Pega (a machine's open or click under
    /// `[engagement] machine = "drop"`): its event is stored `filtered`.
    pub withheld: bool,
    /// A person's open is sent only if it is the personal broadcast's first
    /// (`[engagement] opens = "first"`); later ones are stored `filtered`.
    pub first_open_only: bool,
}

/// The customer's counts after an activity (the seed's mailability fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub bounce_count_hard: i64,
    pub bounce_count_soft: i64,
    pub complaints: i64,
}

impl Activity {
    /// Whether it is an open or a click judged a machine's.
    pub fn is_machine(&self) -> bool {
        match &self.detail {
            Detail::Open {
                machine_generated, ..
            } => *machine_generated,
            Detail::Click(c) => c.machine_generated,
            _ => false,
        }
    }

    /// Why it was judged a machine's, when it was.
    pub fn machine_reason(&self) -> Option<crate::engagement::Reason> {
        match &self.detail {
            Detail::Open { machine_reason, .. } => *machine_reason,
            Detail::Click(c) => c.machine_reason,
            _ => None,
        }
    }

    /// The user agent the activity came with, if any.
    pub fn user_agent(&self) -> Option<&str> {
        match &self.detail {
            Detail::Open { user_agent, .. } => Some(user_agent),
            Detail::Click(c) => Some(&c.user_agent),
            _ => None,
        }
    }

    /// Whether this activity's event carries the customer's counts (bounces and complaints
    /// do; the other events have no such fields).
    pub fn reports_counts(&self) -> bool {
        matches!(self.detail, Detail::Bounce { .. } | Detail::Complaint)
    }
}

/// Parses a body of one activity or an array of them; every problem is reported, with the
/// element's index in `path`.
pub fn parse(body: Value) -> Result<Vec<Activity>, Vec<FieldError>> {
    let items = match body {
        Value::Array(items) => items,
        one => vec![one],
    };
    let mut activities = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if !item.is_object() {
            errors.push(error(i, "", "an activity must be a JSON object".into()));
            continue;
        }
        match serde_path_to_error::deserialize::<_, Raw>(item) {
            Ok(raw) => match check(raw) {
                Ok(a) => activities.push(a),
                Err((field, message)) => errors.push(error(i, field, message)),
            },
            Err(e) => {
                // The path names the field; an unknown or missing one is named in the message.
                let path = e.path().to_string();
                let message = e.inner().to_string();
                let field = if path.is_empty() || path == "." {
                    message.split('`').nth(1).unwrap_or("").to_owned()
                } else {
                    path
                };
                errors.push(error(i, &field, message));
            }
        }
    }
    if errors.is_empty() {
        Ok(activities)
    } else {
        Err(errors)
    }
}

/// The body of `POST /activities` read from its text straight into activities, without a
/// [`serde_json::Value`] in between: `Some` only when every activity in it is a well-formed,
/// storable object that [`Raw::check`] accepts, and then the same activities as [`parse`] over
/// the parsed body. `None` leaves it to [`parse`], which names every problem (the same body
/// always gets the same answer, whichever way it went).
pub fn parse_text(body: &[u8]) -> Option<Vec<Activity>> {
    use serde_json::value::RawValue;
    let text = std::str::from_utf8(body).ok()?;
    // A NUL can only be written escaped; `parse`'s way names where it is.
    if text.contains("\\u0000") {
        return None;
    }
    let object = |raw: &str| -> Option<Activity> {
        // serde also reads a struct from an array of its fields; an activity is an object.
        if !raw.trim_start().starts_with('{') {
            return None;
        }
        check(serde_json::from_str::<Raw>(raw).ok()?).ok()
    };
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
        items.into_iter().map(|item| object(item.get())).collect()
    } else {
        Some(vec![object(text)?])
    }
}

/// A problem of the activity at `index`, for the caller.
pub fn error(index: usize, field: &str, message: String) -> FieldError {
    FieldError {
        field: field.to_owned(),
        path: if field.is_empty() {
            index.to_string()
        } else {
            format!("{index}.{field}")
        },
        message,
    }
}

/// The longest `id` an activity may have (mail platforms' event ids are tens of bytes). An
/// id is looked up through an index, and PostgreSQL's B-tree takes a key of at most 2,704
/// bytes: a longer one failed the request (and its group) at the store instead of naming the
/// field.
pub const MAX_ID_BYTES: usize = 256;

/// The longest user agent kept (real ones are a few hundred bytes): a longer one is cut, so
/// an activity cannot make every copy of its event (in the outbox, in memory on its way to
/// Pega) as large as the request.
pub const MAX_USER_AGENT_BYTES: usize = 1024;

fn bounded_agent(mut ua: String) -> String {
    if ua.len() > MAX_USER_AGENT_BYTES {
        let mut end = MAX_USER_AGENT_BYTES;
        while !ua.is_char_boundary(end) {
            end -= 1;
        }
        ua.truncate(end);
    }
    ua
}

/// The earliest plausible timestamp: 2000-01-01 (an earlier one is a mistake, such as
/// seconds since some other epoch).
pub const EARLIEST_TIMESTAMP: i64 = 946_684_800;

/// How far in the future a timestamp may be (clocks differ): one day.
const FUTURE_SLACK_SECS: i64 = 86_400;

/// A timestamp from 2000 to a day from now, in seconds.
fn plausible(ts: i64) -> Result<(), (&'static str, String)> {
    let latest = crate::event::now() + FUTURE_SLACK_SECS;
    if (EARLIEST_TIMESTAMP..=latest).contains(&ts) {
        return Ok(());
    }
    let hint = if ts > 1_000_000_000_000 {
        " (milliseconds? send Unix seconds)"
    } else {
        ""
    };
    Err((
        "timestamp",
        format!(
            "{ts} is not a plausible Unix time in seconds (from {EARLIEST_TIMESTAMP} to a day from now){hint}"
        ),
    ))
}

fn check(a: Raw) -> Result<Activity, (&'static str, String)> {
    let metric = match Metric::parse(&a.metric) {
        Some(Metric::Broadcasts) => {
            return Err((
                "metric",
                "broadcasts come from triggers, not activities".into(),
            ))
        }
        Some(m) => m,
        None => {
            return Err((
                "metric",
                format!("unknown metric `{}`", crate::quote::cut(&a.metric)),
            ))
        }
    };
    if let Some(ts) = a.timestamp {
        plausible(ts)?;
    }
    if a.id.as_ref().is_some_and(|id| id.len() > MAX_ID_BYTES) {
        return Err(("id", format!("at most {MAX_ID_BYTES} bytes")));
    }
    let user_agent = bounded_agent(a.user_agent.clone().unwrap_or_default());
    let agent = enrich::agent(&user_agent);
    let os = a.os.clone().unwrap_or(agent.os);
    let browser = a.browser.clone().unwrap_or(agent.browser);
    // A source's verdict, else the caller's flag, else what the user agent says.
    let (machine_generated, machine_reason) = match (a.machine_reason, a.machine_generated) {
        (Some(r), _) => (r.is_machine(), r.is_machine().then_some(r)),
        (None, Some(flag)) => (flag, None),
        (None, None) => (agent.reason.is_some(), agent.reason),
    };
    let detail = match metric {
        Metric::Opens => Detail::Open {
            machine_generated,
            machine_reason,
            user_agent,
            os,
            browser,
        },
        Metric::Clicks | Metric::ShortLinks => {
            let url = a
                .url
                .clone()
                .ok_or(("url", "is required for clicks".to_owned()))?;
            let from_url = enrich::utm(&url);
            let utm = enrich::Utm {
                source: a.google_source.clone().unwrap_or(from_url.source),
                medium: a.google_medium.clone().unwrap_or(from_url.medium),
                term: a.google_term.clone().unwrap_or(from_url.term),
                content: a.google_content.clone().unwrap_or(from_url.content),
                campaign: a.google_campaign.clone().unwrap_or(from_url.campaign),
            };
            Detail::Click(Box::new(ClickDetail {
                user_agent,
                os,
                browser,
                link_id: a.link_id.unwrap_or(0),
                url,
                alt: a.alt.clone().unwrap_or_default(),
                utm,
                tags: a.tags.clone().unwrap_or_default(),
                machine_generated,
                machine_reason,
            }))
        }
        Metric::Bounces => {
            let kind = a.bounce_type.as_deref().map(str::to_ascii_lowercase);
            let hard = match kind.as_deref() {
                Some("hard") => true,
                Some("soft") => false,
                _ => return Err(("bounce_type", "must be `hard` or `soft`".into())),
            };
            Detail::Bounce {
                hard,
                code: a.bounce_code.clone().unwrap_or_default(),
                reason: a.bounce_reason.clone().unwrap_or_default(),
            }
        }
        Metric::Complaints => Detail::Complaint,
        Metric::Unsubscribes => Detail::Unsubscribe,
        Metric::Conversions => Detail::Conversion {
            name: a
                .conversion_name
                .clone()
                .ok_or(("conversion_name", "is required for conversions".to_owned()))?,
            value: a.value.clone(),
            currency: a.currency.clone(),
            order_id: a.order_id.clone(),
        },
        Metric::Broadcasts => unreachable!("refused above"),
    };
    Ok(Activity {
        external_id: a.id,
        metric,
        broadcast_id: a.broadcast_id,
        customer_id: a.customer_id,
        timestamp: a.timestamp,
        detail,
        withheld: false,
        first_open_only: false,
    })
}

/// The event of an activity: the personal broadcast's common part with this activity's
/// metric, id, time and uuid, plus its own fields and the customer's current counts.
pub fn event(
    mut common: Common,
    a: &Activity,
    metric_id: i64,
    ts: i64,
    uuid: &str,
    counts: Counts,
) -> Event {
    common.metric = a.metric.as_str().to_owned();
    common.metric_id = metric_id;
    common.metric_timestamp = ts;
    common.uuid = uuid.to_owned();
    match &a.detail {
        Detail::Open {
            user_agent,
            os,
            browser,
            machine_generated,
            machine_reason,
        } => Event::Open(Open {
            common,
            user_agent: user_agent.clone(),
            os: os.clone(),
            browser: browser.clone(),
            machine_generated: *machine_generated,
            machine_reason: machine_reason.map(|r| r.as_str().to_owned()),
        }),
        Detail::Click(c) => Event::Click(Click {
            common,
            user_agent: c.user_agent.clone(),
            link_id: c.link_id,
            url: c.url.clone(),
            alt: c.alt.clone(),
            google_source: c.utm.source.clone(),
            google_medium: c.utm.medium.clone(),
            google_term: c.utm.term.clone(),
            google_content: c.utm.content.clone(),
            google_campaign: c.utm.campaign.clone(),
            tags: c.tags.clone(),
            os: c.os.clone(),
            browser: c.browser.clone(),
            machine_generated: c.machine_generated,
            machine_reason: c.machine_reason.map(|r| r.as_str().to_owned()),
        }),
        Detail::Bounce { hard, code, reason } => Event::Bounce(Bounce {
            common,
            bounce_type: if *hard { "hard" } else { "soft" }.to_owned(),
            bounce_code: code.clone(),
            bounce_reason: reason.clone(),
            bounce_count_hard: counts.bounce_count_hard,
            bounce_count_soft: counts.bounce_count_soft,
        }),
        Detail::Complaint => Event::Complaint(Complaint {
            common,
            complaints: counts.complaints,
        }),
        Detail::Unsubscribe => Event::Plain(common),
        Detail::Conversion {
            name,
            value,
            currency,
            order_id,
        } => Event::Conversion(Conversion {
            common,
            conversion_name: name.clone(),
            value: value.clone(),
            currency: currency.clone(),
            order_id: order_id.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `parse_text` answers only for bodies `parse` accepts, with the same activities, and
    /// leaves the rest to it: an array of a struct's fields (which serde would read as the
    /// struct), a NUL (which the edge refuses), a repeated key, an unknown field, malformed
    /// JSON, a refused metric.
    #[test]
    fn the_text_read_directly_gives_what_the_parsed_body_gives_or_leaves_it_to_parse() {
        let fields = format!(r#"[["e-1", "opens", 1, 1{}]]"#, ", null".repeat(21));
        let bodies: Vec<(bool, String)> = vec![
            (true, r#"{"metric": "opens", "broadcast_id": 1, "customer_id": 2}"#.into()),
            (true, r#"  [{"metric": "clicks", "broadcast_id": 7, "customer_id": 3, "url": "https://shop.example/?utm_source=pega&utm_medium=email", "link_id": 5, "tags": ["a", {"b": [1, 2.5]}], "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"},
                {"metric": "conversions", "broadcast_id": 1, "customer_id": 1, "conversion_name": "order", "value": 12.50, "currency": "EUR", "order_id": "A1"},
                {"metric": "opens", "broadcast_id": 1, "customer_id": 1, "timestamp": 1700000000, "id": "evt-\u00e9", "user_agent": "Mozilla/5.0", "machine_generated": true, "os": null}]"#.into()),
            (true, "[]".into()),
            (false, r#"{"metric": "unsubscribes", "broadcast_id": 1, "customer_id": 1, "id": "a \\u0000 literally"}"#.into()),
            (false, r#"{"metric": "opens", "broadcast_id": 1, "customer_id": 1, "os": "a\u0000b"}"#.into()),
            (false, r#"{"metric": "opens", "broadcast_id": 1, "customer_id": 1, "broadcast_id": 2}"#.into()),
            (false, fields),
            (false, r#"{"metric": "opens", "broadcast_id": 1, "customer_id": 1, "extra": 1}"#.into()),
            (false, r#"{"metric": "opens", "broadcast_id": 1, "customer_id": 1} and more"#.into()),
            (false, r#"{"metric": "broadcasts", "broadcast_id": 1, "customer_id": 1}"#.into()),
            (false, r#"[{"metric": "opens", "broadcast_id": 1, "customer_id": 1}, 5]"#.into()),
            (false, "null".into()),
        ];
        for (direct, body) in &bodies {
            let read = parse_text(body.as_bytes());
            let whole = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| parse(v).ok());
            assert_eq!(read.is_some(), *direct, "{body}");
            if read.is_some() {
                assert_eq!(read, whole, "{body}");
            }
        }
    }

    #[test]
    fn one_activity_or_an_array_is_accepted_and_enriched() {
        let one = parse(json!({"metric": "clicks", "broadcast_id": 7, "customer_id": 3,
            "url": "https://shop.example/?utm_source=pega&utm_medium=email", "alt": "Your account",
            "link_id": 17786, "tags": ["account"],
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/81.0.4044.138 Safari/537.36"}))
        .unwrap();
        let Detail::Click(c) = &one[0].detail else {
            panic!("a click")
        };
        assert_eq!((c.os.as_str(), c.browser.as_str()), ("Windows", "Chrome"));
        assert_eq!(c.utm.source, "pega");
        assert_eq!(c.utm.medium, "email");
        let many = parse(
            json!([{"metric": "opens", "broadcast_id": 1, "customer_id": 1},
                                {"metric": "unsubscribes", "broadcast_id": 1, "customer_id": 1}]),
        )
        .unwrap();
        assert_eq!(many.len(), 2);
    }

    #[test]
    fn given_fields_win_over_derived_ones() {
        let a = parse(
            json!({"metric": "opens", "broadcast_id": 1, "customer_id": 1,
            "user_agent": "GoogleImageProxy", "os": "Plan 9", "machine_generated": false}),
        )
        .unwrap();
        assert_eq!(
            a[0].detail,
            Detail::Open {
                user_agent: "GoogleImageProxy".into(),
                os: "Plan 9".into(),
                browser: String::new(),
                machine_generated: false,
                machine_reason: None,
            }
        );
    }

    #[test]
    fn a_huge_user_agent_is_cut_to_a_bound() {
        let ua = "Mozilla/5.0 ".repeat(80_000);
        let a = parse(
            json!({"metric": "opens", "broadcast_id": 1, "customer_id": 1, "user_agent": ua}),
        )
        .unwrap();
        let kept = a[0].user_agent().unwrap();
        assert_eq!(kept.len(), MAX_USER_AGENT_BYTES);
        assert!(ua.starts_with(kept));
    }

    #[test]
    fn an_id_beyond_the_bound_is_refused_naming_it() {
        let open =
            |id: String| json!({"metric": "opens", "broadcast_id": 1, "customer_id": 1, "id": id});
        assert!(parse(open("a".repeat(MAX_ID_BYTES))).is_ok());
        let errors = parse(json!([
            open("a".into()),
            open("a".repeat(MAX_ID_BYTES + 1))
        ]))
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "1.id");
        assert!(
            errors[0].message.contains("256 bytes"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn every_bad_element_is_reported_with_its_index() {
        let errors = parse(json!([
            {"metric": "bounces", "broadcast_id": 1, "customer_id": 1, "bounce_type": "medium"},
            {"metric": "clicks", "broadcast_id": 1, "customer_id": 1},
            {"metric": "opens", "customer_id": 1},
            {"metric": "broadcasts", "broadcast_id": 1, "customer_id": 1},
            {"metric": "opens", "broadcast_id": 1, "customer_id": 1, "colour": "red"}
        ]))
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "0.bounce_type",
                "1.url",
                "2.broadcast_id",
                "3.metric",
                "4.colour"
            ]
        );
    }
}
