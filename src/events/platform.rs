//! The seam for mail platforms: each is a [`Platform`] that checks a request as the platform
//! specifies ([`Platform::verify`]), answers a subscription handshake where it has one
//! ([`Platform::confirm`], SNS), and translates the events ([`Platform::translate`]). The
//! [`Platforms`] registry is built once from `[events.*]`; `POST /events/{platform}` looks the
//! platform up by name. A new platform is a new file and one line in [`Platforms::new`].

use super::{
    mailgun, mandrill, postmark, sendgrid, ses, sparkpost, Malformed, Refused, Translated,
};
use crate::config::events::{BasicSettings, EventsSettings};
use crate::config::secret::basic_matches;
use axum::http::HeaderMap;
use serde_json::Value;
use std::collections::BTreeMap;

/// A request's content once verified: what [`Platform::translate`] reads.
#[derive(Debug)]
pub enum Payload {
    /// A JSON body (whatever its `Content-Type`: SNS says `text/plain`).
    Json(Value),
    /// A form's fields (Mandrill).
    Form(Vec<(String, String)>),
}

/// Why a request is not taken: every case records nothing.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// No or wrong Basic credentials: 401 with a challenge.
    #[error("missing or wrong credentials")]
    Unauthorized,
    /// A signature, a topic or a timestamp that does not check out: 401.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Not JSON (or not the form) the platform sends: 400.
    #[error("not JSON: {0}")]
    NotJson(String),
}

/// One mail platform's webhook.
#[async_trait::async_trait]
pub trait Platform: Send + Sync {
    /// Its name in the route (`/events/{name}`) and in `[events.{name}]`.
    fn name(&self) -> &'static str;

    /// Whether the request's headers alone already fail the check (credentials that travel
    /// in headers are checked before the body is read).
    fn check_headers(&self, _headers: &HeaderMap) -> Result<(), Rejected> {
        Ok(())
    }

    /// Whether [`Platform::check_headers`] alone proves the sender (Basic auth); otherwise the
    /// sender is known only once the body is read and verified, and reading it is bounded
    /// more tightly.
    fn sender_in_headers(&self) -> bool {
        false
    }

    /// Checks the request as the platform specifies; `now` is Unix seconds.
    async fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64)
        -> Result<Payload, Rejected>;

    /// The answer to a handshake the platform sends instead of events (SNS's
    /// `SubscriptionConfirmation`), once verified; `None` for events.
    async fn confirm(&self, _payload: &Payload) -> Result<Option<Value>, Rejected> {
        Ok(None)
    }

    /// The request's events.
    fn translate(&self, payload: &Payload) -> Result<Vec<Translated>, Malformed>;

    /// Whether an unsigned `HEAD` of the URL is answered 200 (Mandrill checks the URL so).
    fn answers_head(&self) -> bool {
        false
    }
}

/// The configured platforms, by name.
#[derive(Default)]
pub struct Platforms(BTreeMap<&'static str, Box<dyn Platform>>);

impl Platforms {
    /// A platform for each `[events.*]` table; keys and pinned certificates are parsed here.
    pub fn new(settings: &EventsSettings) -> Result<Self, String> {
        let mut all: Vec<Box<dyn Platform>> = Vec::new();
        if let Some(s) = &settings.sendgrid {
            all.push(Box::new(Sendgrid {
                key: s.key()?,
                max_age_secs: s.max_age_secs,
            }));
        }
        if let Some(s) = &settings.mailgun {
            all.push(Box::new(Mailgun {
                settings: s.clone(),
                tokens: mailgun::Tokens::default(),
            }));
        }
        if let Some(s) = &settings.postmark {
            all.push(Box::new(Basic::new("postmark", s, postmark::translate)));
        }
        if let Some(s) = &settings.sparkpost {
            all.push(Box::new(Basic::new("sparkpost", s, sparkpost::translate)));
        }
        if let Some(s) = &settings.ses {
            all.push(Box::new(Ses {
                settings: s.clone(),
                certificates: ses::Certificates::new(Some(s))?,
            }));
        }
        if let Some(s) = &settings.mandrill {
            all.push(Box::new(Mandrill(s.clone())));
        }
        Ok(Self(all.into_iter().map(|p| (p.name(), p)).collect()))
    }

    /// The platform called `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&dyn Platform> {
        self.0.get(name).map(|p| &**p)
    }
}

/// The names of every platform pegabridge knows (configured or not).
pub const KNOWN: [&str; 6] = [
    "mailgun",
    "mandrill",
    "postmark",
    "sendgrid",
    "ses",
    "sparkpost",
];

fn json(body: &[u8]) -> Result<Value, Rejected> {
    serde_json::from_slice(body).map_err(|e| Rejected::NotJson(e.to_string()))
}

fn json_of(payload: &Payload) -> &Value {
    match payload {
        Payload::Json(v) => v,
        Payload::Form(_) => &Value::Null,
    }
}

struct Sendgrid {
    key: p256::ecdsa::VerifyingKey,
    max_age_secs: i64,
}

#[async_trait::async_trait]
impl Platform for Sendgrid {
    fn name(&self) -> &'static str {
        "sendgrid"
    }

    async fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Payload, Rejected> {
        sendgrid::fresh(headers, now, self.max_age_secs)?;
        sendgrid::verify(&self.key, headers, body)?;
        Ok(Payload::Json(json(body)?))
    }

    fn translate(&self, payload: &Payload) -> Result<Vec<Translated>, Malformed> {
        sendgrid::translate(json_of(payload))
    }
}

struct Mailgun {
    settings: crate::config::events::MailgunSettings,
    /// Tokens seen recently (a replayed request is refused).
    tokens: mailgun::Tokens,
}

#[async_trait::async_trait]
impl Platform for Mailgun {
    fn name(&self) -> &'static str {
        "mailgun"
    }

    async fn verify(&self, _: &HeaderMap, body: &[u8], now: i64) -> Result<Payload, Rejected> {
        let v = json(body)?;
        mailgun::verify(&self.settings, &self.tokens, &v, now)?;
        Ok(Payload::Json(v))
    }

    fn translate(&self, payload: &Payload) -> Result<Vec<Translated>, Malformed> {
        mailgun::translate(json_of(payload))
    }
}

/// A platform that does not sign: Basic auth in the webhook URL (Postmark, SparkPost).
struct Basic {
    name: &'static str,
    settings: BasicSettings,
    translate: fn(&Value) -> Result<Vec<Translated>, Malformed>,
}

impl Basic {
    fn new(
        name: &'static str,
        settings: &BasicSettings,
        translate: fn(&Value) -> Result<Vec<Translated>, Malformed>,
    ) -> Self {
        Self {
            name,
            settings: settings.clone(),
            translate,
        }
    }
}

#[async_trait::async_trait]
impl Platform for Basic {
    fn name(&self) -> &'static str {
        self.name
    }

    fn sender_in_headers(&self) -> bool {
        true
    }

    fn check_headers(&self, headers: &HeaderMap) -> Result<(), Rejected> {
        let s = &self.settings;
        basic_matches(headers, &s.username, &s.password)
            .then_some(())
            .ok_or(Rejected::Unauthorized)
    }

    async fn verify(&self, headers: &HeaderMap, body: &[u8], _: i64) -> Result<Payload, Rejected> {
        self.check_headers(headers)?;
        Ok(Payload::Json(json(body)?))
    }

    fn translate(&self, payload: &Payload) -> Result<Vec<Translated>, Malformed> {
        (self.translate)(json_of(payload))
    }
}

struct Ses {
    settings: crate::config::events::SesSettings,
    /// Signing certificates, pinned or fetched.
    certificates: ses::Certificates,
}

#[async_trait::async_trait]
impl Platform for Ses {
    fn name(&self) -> &'static str {
        "ses"
    }

    async fn verify(&self, _: &HeaderMap, body: &[u8], _: i64) -> Result<Payload, Rejected> {
        let m = json(body)?;
        ses::topic_allowed(&self.settings, &m)?;
        let key = self.certificates.key(&m).await?;
        ses::verify_signature(&m, &key)?;
        Ok(Payload::Json(m))
    }

    async fn confirm(&self, payload: &Payload) -> Result<Option<Value>, Rejected> {
        let m = json_of(payload);
        if m["Type"].as_str() != Some("SubscriptionConfirmation") {
            return Ok(None);
        }
        ses::confirm(m).await?;
        tracing::info!(
            topic = m["TopicArn"].as_str().unwrap_or(""),
            "SNS subscription confirmed"
        );
        Ok(Some(serde_json::json!({"confirmed": true})))
    }

    fn translate(&self, payload: &Payload) -> Result<Vec<Translated>, Malformed> {
        let m = json_of(payload);
        match m["Type"].as_str() {
            Some("Notification") => ses::translate(m),
            _ => Ok(Vec::new()),
        }
    }
}

struct Mandrill(crate::config::events::MandrillSettings);

#[async_trait::async_trait]
impl Platform for Mandrill {
    fn name(&self) -> &'static str {
        "mandrill"
    }

    async fn verify(&self, headers: &HeaderMap, body: &[u8], _: i64) -> Result<Payload, Rejected> {
        Ok(Payload::Form(mandrill::verify(&self.0, headers, body)?))
    }

    fn translate(&self, payload: &Payload) -> Result<Vec<Translated>, Malformed> {
        match payload {
            Payload::Form(fields) => mandrill::translate(fields),
            Payload::Json(_) => Ok(Vec::new()),
        }
    }

    fn answers_head(&self) -> bool {
        true
    }
}
