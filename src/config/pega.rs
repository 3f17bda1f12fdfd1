//! `[pega]`, `[activities]` and `[admin]`: delivery to Pega (install steps 1-3) and the
//! tokens of the activity and operator endpoints.

use super::secret::Secret;
use super::tls::TlsSettings;
use crate::event::Metric;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[pega]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PegaSettings {
    /// The REST endpoint events are posted to; without one, events wait in the outbox.
    pub endpoint: Option<String>,
    /// The metrics sent (install step 2); others are marked `filtered`, not sent.
    pub activities: Vec<Metric>,
    /// Per request.
    pub timeout_secs: u64,
    /// Events per POST (each POST is a JSON array).
    pub batch_size: usize,
    /// POSTs in flight at once, fixed; without it the limit adapts between
    /// `min_concurrency` and `max_concurrency` (see `delivery::concurrency`).
    pub concurrency: Option<usize>,
    pub min_concurrency: usize,
    pub max_concurrency: usize,
    /// When the endpoint counts as down, and how it is probed then (`[pega.breaker]`).
    pub breaker: BreakerSettings,
    /// What is posted: the seed's events (`seed`), or one Pega CDH CaptureResponse body per
    /// event (`capture-response`, shaped by `[pega.capture_response]`).
    pub format: Format,
    pub capture_response: CaptureSettings,
    /// How long a claimed event is reserved for the claiming instance.
    pub lease_secs: u64,
    /// How often the worker looks for due retries when nothing new arrives.
    pub poll_ms: u64,
    /// The retry schedule.
    pub retry: RetrySettings,
    /// Authentication (install step 1).
    pub auth: Option<PegaAuth>,
    /// Custom headers on every request (values are treated as secrets).
    pub headers: BTreeMap<String, Secret>,
    /// Extra trusted roots and a client certificate (`[pega.tls]`).
    pub tls: TlsSettings,
    /// An event older than this (seconds since it was queued, or replayed) when it comes due
    /// is not sent: it becomes a dead letter saying so (Pega's models stop listening after
    /// the prediction's response timeout). None: events are sent however late.
    pub max_event_age_secs: Option<u64>,
}

impl Default for PegaSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            activities: Metric::ALL.to_vec(),
            timeout_secs: 10,
            batch_size: 1,
            concurrency: None,
            min_concurrency: 1,
            max_concurrency: 256,
            breaker: BreakerSettings::default(),
            format: Format::Seed,
            capture_response: CaptureSettings::default(),
            lease_secs: 60,
            poll_ms: 1000,
            retry: RetrySettings::default(),
            auth: None,
            headers: BTreeMap::new(),
            tls: TlsSettings::default(),
            max_event_age_secs: None,
        }
    }
}

/// `[pega.retry]`: exponential backoff with jitter; the default reaches past a day.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// The first delay.
    pub base_ms: u64,
    /// The longest delay.
    pub max_delay_secs: u64,
    /// Attempts before an event becomes a dead letter.
    pub max_attempts: u32,
    /// Each delay varies by up to this fraction either way.
    pub jitter: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        // 1 s doubling to 1 h, 48 attempts: 29 to 43 hours of outage (with the jitter)
        // before a dead letter.
        Self {
            base_ms: 1000,
            max_delay_secs: 3600,
            max_attempts: 48,
            jitter: 0.2,
        }
    }
}

/// `[pega.auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum PegaAuth {
    /// Basic authentication, as the seed describes.
    Basic { username: String, password: Secret },
    /// OAuth2 client credentials.
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        scope: Option<String>,
    },
}

/// `[pega] format`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The seed's contract: a JSON array of events.
    #[default]
    Seed,
    /// One CDH CaptureResponse body per event.
    CaptureResponse,
}

/// Where a CaptureResponse value comes from: exactly one of a manual option of the send
/// (`option`; every mapped trigger variable is one), a field of the event (`field`), or a
/// fixed `value`; then, with `split` and `part` (from 1), that part of it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub option: Option<String>,
    pub field: Option<String>,
    pub value: Option<String>,
    pub split: Option<String>,
    pub part: Option<usize>,
}

impl Source {
    fn option(name: &str) -> Self {
        Self {
            option: Some(name.into()),
            ..Self::default()
        }
    }

    fn part(name: &str, part: usize) -> Self {
        Self {
            option: Some(name.into()),
            split: Some("/".into()),
            part: Some(part),
            ..Self::default()
        }
    }

    /// What it names, for errors.
    pub fn describe(&self) -> String {
        let base = match (&self.option, &self.field, &self.value) {
            (Some(o), _, _) => format!("manual option `{o}`"),
            (None, Some(f), _) => format!("event field `{f}`"),
            (None, None, Some(v)) => format!("value `{v}`"),
            _ => "nothing".into(),
        };
        match (&self.split, self.part) {
            (Some(sep), Some(part)) => {
                format!("part {part} of {base} split on `{sep}` is missing or empty")
            }
            _ => format!("{base} is missing or empty"),
        }
    }

    fn problems(&self, key: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let set = [&self.option, &self.field, &self.value]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if set != 1 {
            problems.push(format!(
                "pega.capture_response.{key}: give exactly one of option, field, value"
            ));
        }
        if self.split.is_some() != self.part.is_some() || self.part == Some(0) {
            problems.push(format!(
                "pega.capture_response.{key}: split and part (from 1) go together"
            ));
        }
        problems
    }
}

/// `[pega.capture_response]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSettings {
    /// The CDH container the responses are for (required with this format).
    pub container_name: String,
    pub context_name: String,
    pub subject_id: Source,
    pub interaction_id: Source,
    pub issue: Source,
    pub group: Source,
    pub name: Source,
    pub treatment: Source,
    pub rank: Source,
    /// The outcome sent for each metric; a metric without one is not sent.
    pub outcomes: BTreeMap<String, String>,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        let outcomes = [
            ("broadcasts", "Pending"),
            ("opens", "Impression"),
            ("clicks", "Clicked"),
            ("short_links", "Clicked"),
        ]
        .into_iter()
        .map(|(m, o)| (m.to_owned(), o.to_owned()))
        .collect();
        Self {
            container_name: String::new(),
            context_name: "Customer".into(),
            subject_id: Source {
                field: Some("external_id".into()),
                ..Source::default()
            },
            interaction_id: Source::option("InteractionId"),
            issue: Source::part("UniqueOfferId", 1),
            group: Source::part("UniqueOfferId", 2),
            name: Source::part("UniqueOfferId", 3),
            treatment: Source::part("UniqueOfferId", 4),
            rank: Source {
                value: Some("1".into()),
                ..Source::default()
            },
            outcomes,
        }
    }
}

impl CaptureSettings {
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.container_name.trim().is_empty() {
            problems.push(
                "pega.capture_response.container_name: required with format = \"capture-response\""
                    .into(),
            );
        }
        for (key, source) in [
            ("subject_id", &self.subject_id),
            ("interaction_id", &self.interaction_id),
            ("issue", &self.issue),
            ("group", &self.group),
            ("name", &self.name),
            ("treatment", &self.treatment),
            ("rank", &self.rank),
        ] {
            problems.extend(source.problems(key));
        }
        for metric in self.outcomes.keys() {
            let plain = metric.strip_prefix("machine_").unwrap_or(metric);
            let machine_ok = !metric.starts_with("machine_")
                || matches!(plain, "opens" | "clicks" | "short_links");
            if Metric::parse(plain).is_none() || !machine_ok {
                problems.push(format!(
                    "pega.capture_response.outcomes.{metric}: not a metric (or machine_opens, machine_clicks, machine_short_links)"
                ));
            }
        }
        problems
    }
}

/// `[pega.breaker]`: the circuit breaker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// The span of recent requests looked at.
    pub window_secs: u64,
    /// Fewer requests than this in the window never open it.
    pub min_requests: usize,
    /// It opens when more than this share of them failed.
    pub failure_ratio: f64,
    /// While open: one probe at a time, this often.
    pub probe_interval_secs: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window_secs: 30,
            min_requests: 20,
            failure_ratio: 0.5,
            probe_interval_secs: 5,
        }
    }
}

/// `[activities]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivitySettings {
    /// Bearer token for `POST /activities`; without one the endpoint refuses every request.
    pub token: Option<Secret>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Bearer token for `/admin/...`; without one the admin API refuses every request.
    pub token: Option<Secret>,
}

/// Header names pegabridge (or HTTP itself) sets: framing, routing and hop-by-hop headers. A
/// custom value for one of them would corrupt or misroute every POST.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-type",
    "content-encoding",
];

impl PegaSettings {
    /// The most POSTs ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.concurrency.unwrap_or(self.max_concurrency).max(1)
    }

    /// Every problem of `[pega]`, each naming its key (empty when it can be used).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_event_age_secs == Some(0) {
            problems.push(
                "pega.max_event_age_secs: at least 1 (leave it out to send events however late)"
                    .into(),
            );
        }
        if let Some(endpoint) = &self.endpoint {
            if let Err(e) = http_url(endpoint) {
                let shown = crate::config::without_credentials(endpoint);
                problems.push(format!("pega.endpoint: `{shown}` {e}"));
            }
        }
        if let Some(PegaAuth::Oauth2 { token_url, .. }) = &self.auth {
            if let Err(e) = http_url(token_url) {
                let shown = crate::config::without_credentials(token_url);
                problems.push(format!("pega.auth.token_url: `{shown}` {e}"));
            }
        }
        if self.batch_size == 0 {
            problems.push("pega.batch_size: must be at least 1".into());
        }
        if self.concurrency == Some(0) {
            problems.push("pega.concurrency: must be at least 1".into());
        }
        if self.min_concurrency == 0 {
            problems.push("pega.min_concurrency: must be at least 1".into());
        }
        if self.max_concurrency < self.min_concurrency {
            problems.push(format!(
                "pega.max_concurrency ({}) must be at least pega.min_concurrency ({})",
                self.max_concurrency, self.min_concurrency
            ));
        }
        if !(0.0..1.0).contains(&self.breaker.failure_ratio) {
            problems.push("pega.breaker.failure_ratio: must be at least 0 and below 1".into());
        }
        if self.format == Format::CaptureResponse {
            problems.extend(self.capture_response.problems());
            if self.batch_size != 1 {
                problems.push(
                    "pega.batch_size: must be 1 with format = \"capture-response\" (one body per event)"
                        .into(),
                );
            }
        }
        if self.breaker.window_secs == 0 || self.breaker.probe_interval_secs == 0 {
            problems.push(
                "pega.breaker.window_secs and probe_interval_secs: must be at least 1".into(),
            );
        }
        if self.timeout_secs == 0 {
            problems.push("pega.timeout_secs: must be at least 1".into());
        }
        if self.lease_secs <= self.timeout_secs {
            // A POST must fit in its event's lease, or another worker may claim and send the
            // event again while it is still being posted.
            problems.push(format!(
                "pega.lease_secs ({}) must be longer than pega.timeout_secs ({})",
                self.lease_secs, self.timeout_secs
            ));
        }
        problems.extend(self.retry.problems());
        for (name, value) in &self.headers {
            match reqwest::header::HeaderName::try_from(name.as_str()) {
                Err(_) => problems.push(format!("pega.headers.{name}: not a header name")),
                Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => problems.push(format!(
                    "pega.headers.{name}: set by pegabridge or HTTP itself; it cannot be configured"
                )),
                Ok(h) if h == reqwest::header::AUTHORIZATION && self.auth.is_some() => problems
                    .push(format!(
                        "pega.headers.{name}: conflicts with [pega.auth]; configure one of them"
                    )),
                Ok(_) => {}
            }
            let visible = value
                .expose()
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b));
            if !visible {
                // The value is a secret: say what is wrong with it, not what it is.
                problems.push(format!(
                    "pega.headers.{name}: the value must be visible ASCII (no control characters or line breaks)"
                ));
            }
        }
        if let Err(tls) = self.tls.load() {
            problems.extend(tls);
        }
        problems
    }
}

impl RetrySettings {
    /// Settings the schedule cannot work with.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_attempts == 0 {
            problems.push("pega.retry.max_attempts: must be at least 1".into());
        }
        if self.base_ms == 0 {
            problems.push("pega.retry.base_ms: must be at least 1".into());
        }
        if self.max_delay_secs == 0 {
            problems.push("pega.retry.max_delay_secs: must be at least 1".into());
        }
        if self.base_ms > self.max_delay_secs.saturating_mul(1000) {
            problems.push(format!(
                "pega.retry.base_ms ({} ms) is longer than pega.retry.max_delay_secs ({} s)",
                self.base_ms, self.max_delay_secs
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            problems.push(format!(
                "pega.retry.jitter ({}) must be between 0 and 1",
                self.jitter
            ));
        }
        problems
    }
}

/// `Ok` for an absolute http(s) URL with a host; the reason otherwise.
fn http_url(text: &str) -> Result<url::Url, &'static str> {
    match url::Url::parse(text) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => Ok(u),
        Ok(_) => Err("is not an http(s) URL with a host"),
        Err(_) => Err("is not a URL"),
    }
}
