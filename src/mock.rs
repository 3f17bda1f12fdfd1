//! `pegabridge mock-pega`: a local stand-in for the Pega endpoint, for users testing their
//! setup and for this project's tests. It checks Basic auth (or OAuth2 client-credentials
//! tokens it issued at `POST /oauth/token`) and every event against the contract, and can be
//! told to fail: a status code for the next N requests or at a rate, and a delay.

use crate::config::secret::{constant_time_eq, Secret};
use crate::event::Event;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the stand-in authenticates callers.
#[derive(Debug, Clone)]
pub enum MockAuth {
    Basic {
        username: String,
        password: Secret,
    },
    /// Tokens from `POST /oauth/token` for this client, valid for `lifetime`.
    Oauth2 {
        client_id: String,
        client_secret: Secret,
        lifetime: Duration,
    },
}

/// What the stand-in does; change it at any time through [`MockPega::control`].
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer this status to the next `fail_next` requests...
    pub fail_next: u32,
    /// ...and to this fraction of the others (0 to 1).
    pub fail_rate: f64,
    /// The failure status (503 by default).
    pub fail_status: Option<u16>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Send `Retry-After: N` with the failures.
    pub retry_after: Option<u64>,
    /// Expect Pega CDH CaptureResponse bodies (`--format capture-response`) instead of the
    /// seed's arrays of events.
    pub capture_response: bool,
    /// Allow this many requests per second (a fixed one-second window); answer the others
    /// 429 with `Retry-After: 1`.
    pub rate_limit: Option<u32>,
    /// Print one line per accepted event.
    pub print: bool,
}

#[derive(Debug, Default)]
struct Inner {
    behaviour: Behaviour,
    events: Vec<Value>,
    arrivals: Vec<Instant>,
    requests: u64,
    tokens: HashMap<String, Instant>,
    tokens_issued: u64,
    last_headers: HeaderMap,
    last_version: Option<axum::http::Version>,
    in_flight: usize,
    max_in_flight: usize,
    /// When each request refused for the rate limit came.
    limited: Vec<Instant>,
    /// When each request came.
    request_times: Vec<Instant>,
    window: Option<(Instant, u32)>,
}

/// A running stand-in's shared state.
#[derive(Debug, Clone)]
pub struct MockPega {
    auth: Arc<MockAuth>,
    inner: Arc<Mutex<Inner>>,
}

impl MockPega {
    /// A stand-in with this authentication and behaviour.
    pub fn new(auth: MockAuth, behaviour: Behaviour) -> Self {
        Self {
            auth: Arc::new(auth),
            inner: Arc::new(Mutex::new(Inner {
                behaviour,
                ..Inner::default()
            })),
        }
    }

    /// The routes: `POST /oauth/token`, and events at any other path.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/oauth/token", post(token))
            .fallback(post(receive))
            .with_state(self.clone())
    }

    /// Changes the behaviour.
    pub fn control(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.inner.lock().expect("not poisoned").behaviour);
    }

    /// Every event accepted so far (duplicates included).
    pub fn events(&self) -> Vec<Value> {
        self.inner.lock().expect("not poisoned").events.clone()
    }

    /// How many events were accepted so far (without copying them).
    pub fn event_count(&self) -> usize {
        self.inner.lock().expect("not poisoned").events.len()
    }

    /// When each accepted event arrived (same order as [`MockPega::events`]).
    pub fn arrivals(&self) -> Vec<Instant> {
        self.inner.lock().expect("not poisoned").arrivals.clone()
    }

    /// Requests received, accepted or not.
    /// The most requests it was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().expect("not poisoned").max_in_flight
    }

    /// When each request refused for the rate limit came.
    pub fn limited(&self) -> Vec<Instant> {
        self.inner.lock().expect("not poisoned").limited.clone()
    }

    /// When each request came.
    pub fn request_times(&self) -> Vec<Instant> {
        self.inner
            .lock()
            .expect("not poisoned")
            .request_times
            .clone()
    }

    pub fn requests(&self) -> u64 {
        self.inner.lock().expect("not poisoned").requests
    }

    /// A header of the last request received (custom headers reach Pega).
    pub fn last_header(&self, name: &str) -> Option<String> {
        let inner = self.inner.lock().expect("not poisoned");
        inner
            .last_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The HTTP version of the last request received.
    pub fn last_version(&self) -> Option<axum::http::Version> {
        self.inner.lock().expect("not poisoned").last_version
    }

    /// OAuth2 tokens issued.
    pub fn tokens_issued(&self) -> u64 {
        self.inner.lock().expect("not poisoned").tokens_issued
    }

    /// Makes every issued token invalid (as a token server that rotated its keys would).
    pub fn revoke_tokens(&self) {
        self.inner.lock().expect("not poisoned").tokens.clear();
    }
}

async fn token(
    State(mock): State<MockPega>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let MockAuth::Oauth2 {
        client_id,
        client_secret,
        lifetime,
    } = mock.auth.as_ref()
    else {
        return (StatusCode::NOT_FOUND, "no OAuth2 here").into_response();
    };
    let given = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let ok = given("grant_type") == "client_credentials"
        && constant_time_eq(client_id.as_bytes(), given("client_id").as_bytes())
        && client_secret.matches(given("client_secret").as_bytes());
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let value = uuid::Uuid::new_v4().simple().to_string();
    let mut inner = mock.inner.lock().expect("not poisoned");
    inner
        .tokens
        .insert(value.clone(), Instant::now() + *lifetime);
    inner.tokens_issued += 1;
    Json(json!({"access_token": value, "token_type": "Bearer", "expires_in": lifetime.as_secs()}))
        .into_response()
}

async fn receive(
    State(mock): State<MockPega>,
    version: axum::http::Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let (delay, fail, retry_after, limited) = arrive(&mock, now, version, &headers);
    struct Leaving(MockPega);
    impl Drop for Leaving {
        fn drop(&mut self) {
            let mut inner = self.0.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.in_flight -= 1;
        }
    }
    let _leaving = Leaving(mock.clone());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if limited {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"error": "rate limited"})),
        )
            .into_response();
    }
    if !authorized(&mock, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized"})),
        )
            .into_response();
    }
    if let Some(status) = fail {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut answer = (status, Json(json!({"error": "told to fail"}))).into_response();
        if let Some(secs) = retry_after {
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        return answer;
    }
    let checked = if mock
        .inner
        .lock()
        .expect("not poisoned")
        .behaviour
        .capture_response
    {
        check_capture_response(&headers, &body).map(|b| vec![b])
    } else {
        check(&headers, &body)
    };
    let events = match checked {
        Ok(events) => events,
        Err(message) => {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
        }
    };
    keep(&mock, events);
    StatusCode::OK.into_response()
}

/// Counts a request as it arrives and decides what to do with it: (delay, failure status,
/// Retry-After, rate-limited).
fn arrive(
    mock: &MockPega,
    now: Instant,
    version: axum::http::Version,
    headers: &HeaderMap,
) -> (Duration, Option<u16>, Option<u64>, bool) {
    let mut inner = mock.inner.lock().expect("not poisoned");
    inner.requests += 1;
    inner.request_times.push(now);
    inner.in_flight += 1;
    inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
    inner.last_headers = headers.clone();
    inner.last_version = Some(version);
    let limited = match inner.behaviour.rate_limit {
        None => false,
        Some(rate) => {
            let (start, count) = match inner.window {
                Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => {
                    (start, count)
                }
                _ => (now, 0),
            };
            inner.window = Some((start, count + 1));
            count >= rate
        }
    };
    if limited {
        inner.limited.push(now);
    }
    let b = &mut inner.behaviour;
    let fail = if b.fail_next > 0 {
        b.fail_next -= 1;
        true
    } else {
        b.fail_rate > 0.0 && fastrand::f64() < b.fail_rate
    };
    (
        b.delay,
        fail.then(|| b.fail_status.unwrap_or(503)),
        b.retry_after,
        limited,
    )
}

/// Keeps (and prints, when asked) the events of an accepted request.
fn keep(mock: &MockPega, events: Vec<Value>) {
    let mut inner = mock.inner.lock().expect("not poisoned");
    for e in events {
        if inner.behaviour.print && inner.behaviour.capture_response {
            let r = &e["RankedResults"][0];
            println!(
                "{} {:<10} subject {} {}/{}/{}",
                r["InteractionID"].as_str().unwrap_or(""),
                r["Outcome"].as_str().unwrap_or(""),
                r["SubjectID"].as_str().unwrap_or(""),
                r["Issue"].as_str().unwrap_or(""),
                r["Group"].as_str().unwrap_or(""),
                r["Name"].as_str().unwrap_or("")
            );
        } else if inner.behaviour.print {
            println!(
                "{} {:<12} broadcast {} customer {} metric_id {}",
                e["uuid"].as_str().unwrap_or(""),
                e["metric"].as_str().unwrap_or(""),
                e["broadcast_id"],
                e["customer_id"],
                e["metric_id"]
            );
        }
        inner.events.push(e);
        inner.arrivals.push(Instant::now());
    }
}

fn authorized(mock: &MockPega, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match mock.auth.as_ref() {
        MockAuth::Basic { username, password } => {
            crate::config::secret::basic_matches(headers, username, password)
        }
        MockAuth::Oauth2 { .. } => presented.strip_prefix("Bearer ").is_some_and(|t| {
            let inner = mock.inner.lock().expect("not poisoned");
            inner.tokens.get(t).is_some_and(|exp| *exp > Instant::now())
        }),
    }
}

/// What CDH's CaptureResponse service would refuse: not a JSON object, no `ContainerName`,
/// no `RankedResults`, or a result without its required fields (`SubjectID`, `ContextName`,
/// `Name`, `Issue`, `Group`, `InteractionID` as the string of a signed 64-bit number), with
/// a numeric `Rank`, an `Outcome`, `Channel` `Email` and `Direction` `Outbound`. Returns the
/// body.
pub fn check_capture_response(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err("Content-Type must be application/json".into());
    }
    let body: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let text = |v: &Value, key: &str| -> Result<(), String> {
        match v.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(()),
            _ => Err(format!("{key}: a non-empty string is required")),
        }
    };
    text(&body, "ContainerName")?;
    let results = match body.get("RankedResults") {
        Some(Value::Array(r)) if !r.is_empty() => r,
        _ => return Err("RankedResults: a non-empty array is required".into()),
    };
    for (i, r) in results.iter().enumerate() {
        let at = |e: String| format!("RankedResults[{i}].{e}");
        for key in [
            "SubjectID",
            "ContextName",
            "Name",
            "Issue",
            "Group",
            "Outcome",
            "Treatment",
        ] {
            text(r, key).map_err(at)?;
        }
        match r.get("InteractionID") {
            Some(Value::String(s)) if s.parse::<i64>().is_ok() => {}
            _ => {
                return Err(at(
                    "InteractionID: the string of a signed 64-bit number".into()
                ))
            }
        }
        if !r.get("Rank").is_some_and(Value::is_number) {
            return Err(at("Rank: a number is required".into()));
        }
        if r.get("Channel") != Some(&Value::from("Email")) {
            return Err(at("Channel: Email expected".into()));
        }
        if r.get("Direction") != Some(&Value::from("Outbound")) {
            return Err(at("Direction: Outbound expected".into()));
        }
    }
    Ok(body)
}

/// What a real receiver would refuse: not JSON, not an array, an event that breaks the
/// contract (missing or mistyped fields for its metric, a bad uuid, a broadcast with a
/// metric_id other than 0).
pub fn check(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Value>, String> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err("Content-Type must be application/json".into());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("the body must be a JSON array of events".into());
    };
    for (i, item) in items.iter().enumerate() {
        let event = Event::from_value(item.clone()).map_err(|e| format!("event {i}: {e}"))?;
        let common = event.common();
        uuid::Uuid::parse_str(&common.uuid).map_err(|_| format!("event {i}: bad uuid"))?;
        if (common.metric == "broadcasts") != (common.metric_id == 0) {
            return Err(format!(
                "event {i}: metric_id must be 0 exactly for broadcasts"
            ));
        }
        if common.metric_timestamp <= 0 || common.broadcast_timestamp <= 0 {
            return Err(format!("event {i}: timestamps must be Unix seconds"));
        }
    }
    Ok(items)
}

/// A TLS listener for [`axum::serve`], so the stand-in can be an `https://` endpoint (with a
/// client certificate required, for mutual TLS). Handshakes run in their own tasks; a failed
/// one is dropped (and logged) without holding up the others. ALPN offers HTTP/2 and 1.1.
pub struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// Serves TLS on `listener` with `config` (see [`tls_config`]).
    pub fn new(
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if tx.is_closed() {
                    break;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A server TLS configuration from PEM (see [`crate::config::tls::server_config`]), offering
/// HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = crate::config::tls::server_config(cert_pem, key_pem, client_ca)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
