//! The Pega client: one POST per batch over HTTP or TLS (rustls; HTTP/2 when the endpoint
//! offers it), with Basic auth or an OAuth2 client-credentials token (cached, renewed before
//! it expires, fetched again once on a 401), and the custom headers.
//!
//! It never follows a redirect (a 3xx is an answer, recorded with its `Location`), reads at
//! most [`DETAIL_BYTES`] of an answer (plus a bounded drain), bounds every attempt, token
//! fetch included, by `timeout_secs`, and explains every failure by its whole cause chain.

use super::schedule::Response;
use crate::config::pega::{PegaAuth, PegaSettings};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER,
};
use std::time::{Duration, Instant};

/// Renew a token this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// How much of an answer is kept with an attempt.
pub const DETAIL_BYTES: usize = 1024;
/// How much more of an answer is read (and dropped) so the connection can be reused; beyond
/// it the connection is closed instead.
const DRAIN_BYTES: usize = 64 * 1024;
/// The largest token answer read.
const TOKEN_BYTES: usize = 64 * 1024;

/// Why a request got no answer, typed by what failed (the text names the cause chain, never
/// a credential).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The attempt (a token fetch included) ran past `timeout_secs`.
    #[error("{0}")]
    Timeout(String),
    /// The TLS handshake or session failed.
    #[error("{0}")]
    Tls(String),
    /// The endpoint's name did not resolve.
    #[error("{0}")]
    Dns(String),
    /// The connection was refused or could not be made.
    #[error("{0}")]
    Connect(String),
    /// The OAuth2 token could not be had.
    #[error("OAuth2 token endpoint: {0}")]
    Token(String),
    /// Anything else on the way (a reset connection, an unreadable answer).
    #[error("{0}")]
    Other(String),
}

/// The outcome of one POST.
#[derive(Debug, Clone)]
pub struct Sent {
    pub response: Response,
    pub duration: Duration,
    /// The first KB of the answer, or why there was none (never a credential).
    pub detail: String,
    /// Why there was no answer, when there was none.
    pub failure: Option<ClientError>,
}

#[derive(Debug)]
struct Token {
    value: String,
    expires: Instant,
}

/// A Basic `Authorization` value (RFC 7617), marked sensitive (never shown in `Debug`).
fn basic_auth(username: &str, password: &str) -> anyhow::Result<HeaderValue> {
    use base64::Engine;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
        .map_err(|_| anyhow::anyhow!("pega.auth: the credentials make no valid header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Posts events to the configured endpoint.
pub struct PegaClient {
    http: reqwest::Client,
    /// Parsed once, at start-up (not on every POST).
    endpoint: reqwest::Url,
    timeout: Duration,
    auth: Option<PegaAuth>,
    /// With Basic auth, its `Authorization` value (made once, marked sensitive).
    basic: Option<HeaderValue>,
    headers: HeaderMap,
    /// The cached token; held only to read or replace it.
    token: std::sync::Mutex<Option<Token>>,
    /// Held while a token is fetched: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PegaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PegaClient")
            .field(
                "endpoint",
                &crate::config::without_credentials(self.endpoint.as_str()),
            )
            .finish_non_exhaustive()
    }
}

impl PegaClient {
    /// Builds the client; `None` without an endpoint. The settings were validated when they
    /// were loaded (`PegaSettings::problems`); what is still wrong is an error here.
    pub fn new(settings: &PegaSettings) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = settings.endpoint.as_deref() else {
            return Ok(None);
        };
        let endpoint = reqwest::Url::parse(endpoint).map_err(|e| {
            anyhow::anyhow!(
                "pega.endpoint: `{}` is not a URL ({e})",
                crate::config::without_credentials(endpoint)
            )
        })?;
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = HeaderName::try_from(name.as_str())?;
            let mut value = HeaderValue::try_from(value.expose())
                .map_err(|_| anyhow::anyhow!("pega.headers.{name}: not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let timeout = Duration::from_secs(settings.timeout_secs);
        let tls = settings
            .tls
            .load()
            .map_err(|p| anyhow::anyhow!("{}", p.join("\n")))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .pool_max_idle_per_host(settings.max_in_flight())
            .user_agent(crate::USER_AGENT)
            .https_only(false);
        for root in tls.roots {
            builder = builder.add_root_certificate(root);
        }
        if let Some(identity) = tls.identity {
            builder = builder.identity(identity);
        }
        let http = builder.build()?;
        let basic = match &settings.auth {
            Some(PegaAuth::Basic { username, password }) => {
                Some(basic_auth(username, password.expose())?)
            }
            _ => None,
        };
        Ok(Some(Self {
            http,
            endpoint,
            basic,
            timeout,
            auth: settings.auth.clone(),
            headers,
            token: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }))
    }

    /// Posts `body` (a JSON array of events); the whole attempt, a token fetch included,
    /// takes at most `timeout_secs`.
    pub async fn send(&self, body: &[u8]) -> Sent {
        let started = Instant::now();
        let result = self.within_timeout(self.attempt(body)).await;
        let duration = started.elapsed();
        match result {
            Ok(answer) => Sent {
                response: Response::Status {
                    code: answer.code,
                    retry_after: answer.retry_after,
                },
                duration,
                detail: answer.detail,
                failure: None,
            },
            Err(cause) => Sent {
                response: Response::Failed,
                duration,
                detail: cause.to_string(),
                failure: Some(cause),
            },
        }
    }

    /// Reaches the endpoint without sending an event (`config check --connect`): an OAuth2
    /// token when configured, then a `HEAD` request; any HTTP answer proves the connection
    /// and the TLS handshake. Returns the answer's status.
    pub async fn probe(&self) -> Result<u16, ClientError> {
        self.within_timeout(async {
            let req = self
                .http
                .head(self.endpoint.clone())
                .headers(self.headers.clone());
            let (req, _) = self.authorized(req).await?;
            let res = req.send().await.map_err(|e| explain(&e))?;
            Ok(res.status().as_u16())
        })
        .await
    }

    /// `attempt`, or why it did not finish within `timeout_secs`.
    async fn within_timeout<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout(format!(
                    "timed out after {}",
                    seconds(self.timeout)
                )))
            })
    }

    /// `req` with the configured credentials; with OAuth2 also the token it carries.
    async fn authorized(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::RequestBuilder, Option<String>), ClientError> {
        if let Some(basic) = &self.basic {
            return Ok((req.header(AUTHORIZATION, basic.clone()), None));
        }
        match &self.auth {
            Some(PegaAuth::Oauth2 { .. }) => {
                let token = self.token().await?;
                let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    ClientError::Token("its token is not usable in a header".into())
                })?;
                value.set_sensitive(true);
                Ok((req.header(AUTHORIZATION, value), Some(token)))
            }
            // Basic auth's value is `basic`, made once.
            Some(PegaAuth::Basic { .. }) | None => Ok((req, None)),
        }
    }

    async fn attempt(&self, body: &[u8]) -> Result<Answer, ClientError> {
        let answer = self.post(body).await?;
        if answer.code == 401 && matches!(self.auth, Some(PegaAuth::Oauth2 { .. })) {
            // The token may have been revoked or expired early: fetch a new one, once.
            self.forget_token(answer.token.as_deref());
            return self.post(body).await;
        }
        Ok(answer)
    }

    async fn post(&self, body: &[u8]) -> Result<Answer, ClientError> {
        let req = self
            .http
            .post(self.endpoint.clone())
            .headers(self.headers.clone())
            .body(body.to_vec());
        let (req, used_token) = self.authorized(req).await?;
        let res = req.send().await.map_err(|e| explain(&e))?;
        let code = res.status().as_u16();
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let redirect = res.status().is_redirection().then(|| {
            let location = res
                .headers()
                .get(LOCATION)
                .map(|v| crate::config::without_secrets(&String::from_utf8_lossy(v.as_bytes())))
                .unwrap_or_else(|| "(no Location)".into());
            format!(
                "redirect not followed: {} to {location}; fix [pega] endpoint, then replay",
                res.status()
            )
        });
        let text = read_bounded(res, DETAIL_BYTES, DRAIN_BYTES).await;
        let detail = match redirect {
            Some(r) if text.is_empty() => r,
            Some(r) => truncate(&format!("{r}: {text}")),
            None => text,
        };
        Ok(Answer {
            code,
            retry_after,
            detail,
            token: used_token,
        })
    }

    /// A valid token: the cached one, or one fetched now (one fetch at a time; callers that
    /// waited for another's fetch use its token).
    async fn token(&self) -> Result<String, ClientError> {
        if let Some(t) = self.cached_token() {
            return Ok(t);
        }
        let _fetching = self.fetching.lock().await;
        if let Some(t) = self.cached_token() {
            return Ok(t);
        }
        let token = self
            .fetch_token()
            .await
            .map_err(|e| ClientError::Token(e.to_string()))?;
        let value = token.value.clone();
        *self.token.lock().expect("not poisoned") = Some(token);
        Ok(value)
    }

    fn cached_token(&self) -> Option<String> {
        let cached = self.token.lock().expect("not poisoned");
        cached
            .as_ref()
            .filter(|t| t.expires > Instant::now() + RENEW_BEFORE)
            .map(|t| t.value.clone())
    }

    /// Drops the cached token if it is still the one that was refused.
    fn forget_token(&self, refused: Option<&str>) {
        let mut cached = self.token.lock().expect("not poisoned");
        if cached.as_ref().map(|t| t.value.as_str()) == refused {
            *cached = None;
        }
    }

    async fn fetch_token(&self) -> Result<Token, ClientError> {
        let Some(PegaAuth::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        }) = &self.auth
        else {
            return Err(ClientError::Other("not configured for OAuth2".into()));
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
            .map_err(|e| explain(&e))?;
        let status = res.status();
        if !status.is_success() {
            let text = read_bounded(res, DETAIL_BYTES, DRAIN_BYTES).await;
            return Err(ClientError::Other(format!("answered {status}: {text}")));
        }
        let body = read_raw(res, TOKEN_BYTES).await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Other(format!("answered {status} without a token ({e})")))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600).min(u32::MAX.into()));
        Ok(Token {
            value: answer.access_token,
            expires: Instant::now() + lifetime,
        })
    }
}

/// An HTTP answer.
struct Answer {
    code: u16,
    retry_after: Option<u64>,
    detail: String,
    /// The OAuth2 token the request carried.
    token: Option<String>,
}

/// Up to `keep` bytes of the answer as safe text; up to `drain` more are read and dropped
/// (so the connection can be reused), and beyond that the connection is dropped.
async fn read_bounded(mut res: reqwest::Response, keep: usize, drain: usize) -> String {
    let mut kept = Vec::with_capacity(keep.min(4096));
    let mut read = 0usize;
    while let Ok(Some(chunk)) = res.chunk().await {
        let room = keep.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
        read += chunk.len();
        if read > keep + drain {
            break;
        }
    }
    safe_text(&kept)
}

/// The whole answer, refused beyond `limit` bytes.
async fn read_raw(mut res: reqwest::Response, limit: usize) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > limit => {
                return Err(ClientError::Other(format!(
                    "answer longer than {limit} bytes"
                )));
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(body),
            Err(e) => return Err(explain(&e)),
        }
    }
}

/// Bytes as text every backend can store: invalid UTF-8 and NUL become U+FFFD, at most
/// [`DETAIL_BYTES`].
pub fn safe_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    };
    truncate(&text)
}

/// Why a request got no answer: the whole cause chain, in words an operator can act on, e.g.
/// `connect 10.0.0.5:443: connection refused`, `TLS: invalid peer certificate: UnknownIssuer`,
/// `DNS: pega.example: failed to lookup address information: Name or service not known`. The
/// URL is left out (it may carry credentials).
pub fn explain(error: &reqwest::Error) -> ClientError {
    let mut causes: Vec<String> = Vec::new();
    let mut tls: Option<String> = None;
    let mut io_kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            tls.get_or_insert_with(|| t.to_string());
        }
        let text = e.to_string();
        // Wrappers repeat their source's text ("client error (Connect)"): keep what is new.
        if !text.is_empty() && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = match e.downcast_ref::<std::io::Error>() {
            // An io::Error's `source` skips the error it wraps (often another io::Error,
            // then rustls's): descend into it instead.
            Some(io) => {
                if io.kind() != std::io::ErrorKind::Other {
                    io_kind.get_or_insert(io.kind());
                }
                match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                    None => e.source(),
                }
            }
            None => e.source(),
        };
    }
    let host = error.url().and_then(|u| u.host_str()).unwrap_or("?");
    let port = error
        .url()
        .and_then(url::Url::port_or_known_default)
        .unwrap_or(0);
    let innermost = causes.last().cloned().unwrap_or_else(|| error.to_string());
    // After the handshake, tokio-rustls passes rustls's errors on as text (an alert such as
    // CertificateRequired arrives with the first read).
    if tls.is_none() && innermost.starts_with("received fatal alert") {
        tls = Some(innermost.clone());
    }
    let safe = |text: String| safe_text(text.as_bytes());
    if let Some(tls) = tls {
        ClientError::Tls(safe(format!("TLS: {tls}")))
    } else if error.is_timeout() {
        ClientError::Timeout(safe(format!("timed out ({innermost})")))
    } else if causes.iter().any(|c| c.starts_with("dns error")) {
        ClientError::Dns(safe(format!("DNS: {host}: {innermost}")))
    } else if error.is_connect() {
        let reason = match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
            Some(std::io::ErrorKind::TimedOut) => "timed out".to_owned(),
            _ => innermost,
        };
        ClientError::Connect(safe(format!("connect {host}:{port}: {reason}")))
    } else {
        let mut chain = vec![message_without_url(error)];
        chain.extend(causes);
        ClientError::Other(safe(chain.join(": ")))
    }
}

/// reqwest's own message without the URL (it may carry credentials).
fn message_without_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match error.url() {
        Some(url) => text.replace(&format!(" for url ({url})"), ""),
        None => text,
    }
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_stored_as_safe_text() {
        assert_eq!(safe_text(b"ok\0\xffend"), "ok\u{FFFD}\u{FFFD}end");
        assert_eq!(safe_text(&[b'a'; 5000]).len(), DETAIL_BYTES);
    }

    #[test]
    fn locations_lose_their_credentials_and_query() {
        use crate::config::{without_credentials, without_secrets};
        assert_eq!(
            without_credentials("https://u:p@other.example/x"),
            "https://other.example/x"
        );
        assert_eq!(without_credentials("/relative"), "/relative");
        assert_eq!(
            without_secrets("https://u:p@sso.example/login?token=s3cret#frag"),
            "https://sso.example/login?…"
        );
        assert_eq!(without_secrets("/login?token=s3cret"), "/login?…");
        assert_eq!(without_secrets("/plain"), "/plain");
    }
}
