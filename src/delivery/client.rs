//! The Pega client: one POST per batch, with Basic auth or an OAuth2 client-credentials token
//! (cached, renewed before it expires, fetched again once on a 401), and the custom headers.

use super::schedule::Response;
use crate::config::pega::{PegaAuth, PegaSettings};
use anyhow::Context;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER,
};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Renew a token this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// How much of an answer is kept with an attempt.
const DETAIL_BYTES: usize = 1024;

/// The outcome of one POST.
#[derive(Debug, Clone)]
pub struct Sent {
    pub response: Response,
    pub duration: Duration,
    /// The first KB of the answer, or the error (never a credential).
    pub detail: String,
}

#[derive(Debug)]
struct Token {
    value: String,
    expires: Instant,
}

/// Posts events to the configured endpoint.
pub struct PegaClient {
    http: reqwest::Client,
    endpoint: String,
    auth: Option<PegaAuth>,
    headers: HeaderMap,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for PegaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PegaClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl PegaClient {
    /// Builds the client; `None` without an endpoint.
    pub fn new(settings: &PegaSettings) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = settings.endpoint.clone() else {
            return Ok(None);
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = HeaderName::try_from(name.as_str())
                .with_context(|| format!("pega.headers: `{name}` is not a header name"))?;
            let mut value = HeaderValue::try_from(value.expose())
                .with_context(|| format!("pega.headers.{name}: not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs))
            .pool_max_idle_per_host(settings.concurrency.max(1))
            .build()?;
        Ok(Some(Self {
            http,
            endpoint,
            auth: settings.auth.clone(),
            headers,
            token: Mutex::new(None),
        }))
    }

    /// Posts `body` (a JSON array of events).
    pub async fn send(&self, body: &[u8]) -> Sent {
        let started = Instant::now();
        let mut result = self.post(body).await;
        if matches!(&result, Ok((401, _, _))) && matches!(self.auth, Some(PegaAuth::Oauth2 { .. }))
        {
            // The token may have been revoked or expired early: fetch a new one, once.
            *self.token.lock().await = None;
            result = self.post(body).await;
        }
        let duration = started.elapsed();
        match result {
            Ok((code, retry_after, detail)) => Sent {
                response: Response::Status { code, retry_after },
                duration,
                detail,
            },
            Err(e) => Sent {
                response: Response::Failed,
                duration,
                detail: truncate(&format!("{e:#}")),
            },
        }
    }

    async fn post(&self, body: &[u8]) -> anyhow::Result<(u16, Option<u64>, String)> {
        let mut req = self
            .http
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .body(body.to_vec());
        match &self.auth {
            Some(PegaAuth::Basic { username, password }) => {
                req = req.basic_auth(username, Some(password.expose()));
            }
            Some(PegaAuth::Oauth2 { .. }) => {
                let token = self.token().await.context("fetching an OAuth2 token")?;
                let mut value = HeaderValue::try_from(format!("Bearer {token}"))?;
                value.set_sensitive(true);
                req = req.header(AUTHORIZATION, value);
            }
            None => {}
        }
        let res = req.send().await.map_err(without_url)?;
        let code = res.status().as_u16();
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = res.text().await.unwrap_or_default();
        Ok((code, retry_after, truncate(&text)))
    }

    /// A valid token, fetched when there is none or it expires soon.
    async fn token(&self) -> anyhow::Result<String> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if t.expires > Instant::now() + RENEW_BEFORE {
                return Ok(t.value.clone());
            }
        }
        let Some(PegaAuth::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        }) = &self.auth
        else {
            anyhow::bail!("not configured for OAuth2");
        };
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.expose()),
        ];
        if let Some(s) = scope {
            form.push(("scope", s.as_str()));
        }
        let res = self
            .http
            .post(token_url)
            .form(&form)
            .send()
            .await
            .map_err(without_url)?;
        if !res.status().is_success() {
            anyhow::bail!("token endpoint answered {}", res.status());
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = res.json().await.map_err(without_url)?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let value = answer.access_token;
        *cached = Some(Token {
            value: value.clone(),
            expires: Instant::now() + lifetime,
        });
        Ok(value)
    }
}

/// reqwest errors name the URL, which may carry credentials: drop it.
fn without_url(e: reqwest::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.without_url())
}

fn truncate(text: &str) -> String {
    if text.len() <= DETAIL_BYTES {
        return text.to_owned();
    }
    let mut end = DETAIL_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
