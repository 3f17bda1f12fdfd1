//! `[pega]`, `[activities]` and `[admin]`: delivery to Pega (install steps 1-3) and the
//! tokens of the activity and operator endpoints.

use super::secret::Secret;
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
    /// POSTs in flight at once.
    pub concurrency: usize,
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
}

impl Default for PegaSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            activities: Metric::ALL.to_vec(),
            timeout_secs: 10,
            batch_size: 1,
            concurrency: 4,
            lease_secs: 60,
            poll_ms: 1000,
            retry: RetrySettings::default(),
            auth: None,
            headers: BTreeMap::new(),
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
