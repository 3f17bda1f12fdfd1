//! A stand-in Pega for the delivery tests (the `mock-pega` command's receiver, in process),
//! and helpers to wait for what it receives.

use crate::server::{spawn_app_with, TestApp, ACTIVITY_TOKEN, ADMIN_TOKEN};
use pegabridge::config::secret::Secret;
use pegabridge::mock::{Behaviour, MockAuth, MockPega};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct Pega {
    pub mock: MockPega,
    pub url: String,
}

/// A stand-in on port 0 with Basic auth `pega` / `pega-secret`.
pub async fn start_pega() -> Pega {
    start_pega_with(MockAuth::Basic {
        username: "pega".into(),
        password: Secret::new("pega-secret"),
    })
    .await
}

pub async fn start_pega_with(auth: MockAuth) -> Pega {
    let mock = MockPega::new(auth, Behaviour::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = mock.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Pega { mock, url }
}

/// The `[pega]` section for a stand-in, with quick retries.
pub fn pega_section(pega: &Pega, more: &str) -> String {
    pega_section_for(&pega.url, more)
}

/// The `[pega]` section for an endpoint at `url` (its path is added), with quick retries.
pub fn pega_section_for(url: &str, more: &str) -> String {
    format!(
        "[pega]\nendpoint = \"{}/prweb/api/interactions\"\ntimeout_secs = 1\npoll_ms = 20\n{more}\n\n[pega.retry]\nbase_ms = 20\nmax_delay_secs = 1\nmax_attempts = 400\n\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n\n[pega.headers]\nX-Source = \"pegabridge\"\n",
        url
    )
}

/// A server delivering to a fresh stand-in.
pub async fn spawn_delivering(more: &str) -> (TestApp, Pega) {
    let pega = start_pega().await;
    let (app, _) = spawn_app_with("", &pega_section(&pega, more)).await;
    (app, pega)
}

/// A server posting one event at a time (`lease_secs` as given) to a fresh stand-in that
/// answers each POST after `delay_ms`: most events wait for the worker. Also returns the
/// server task.
pub async fn spawn_posting_one_at_a_time(
    delay_ms: u64,
    lease_secs: u64,
) -> (TestApp, tokio::task::JoinHandle<anyhow::Result<()>>, Pega) {
    let pega = start_pega().await;
    pega.mock
        .control(|b| b.delay = Duration::from_millis(delay_ms));
    let more = format!("concurrency = 1\nbatch_size = 1\nlease_secs = {lease_secs}");
    let (app, task) = spawn_app_with("", &pega_section(&pega, &more)).await;
    (app, task, pega)
}

/// Waits (at most 20 s) until the stand-in holds `n` events, and returns them.
pub async fn wait_for_events(pega: &Pega, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let events = pega.mock.events();
        if events.len() >= n || start.elapsed() > Duration::from_secs(20) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 20 s) until the app's outbox has nothing pending or in flight: every
/// event delivered, dead or filtered, so nothing more will reach the stand-in.
pub async fn settled(app: &TestApp) {
    let store = app.store().await;
    let start = Instant::now();
    loop {
        let stats = store.outbox().outbox_stats().await.unwrap();
        if stats.pending + stats.inflight == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never settled: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 60 s) until every uuid of `expected` has arrived; returns how many never
/// did and how many arrived more than once.
pub async fn await_all(
    pega: &Pega,
    expected: &std::collections::HashSet<String>,
) -> (usize, usize) {
    let start = Instant::now();
    let mut received: std::collections::HashMap<String, usize> = Default::default();
    while start.elapsed() < Duration::from_secs(60) {
        received.clear();
        for e in pega.mock.events() {
            *received
                .entry(e["uuid"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        if expected.iter().all(|u| received.contains_key(u)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = expected
        .iter()
        .filter(|u| !received.contains_key(*u))
        .count();
    let duplicates = received.values().map(|n| n - 1).sum();
    (missing, duplicates)
}

/// The event with this uuid among those received.
pub fn by_uuid<'e>(events: &'e [Value], uuid: &Value) -> &'e Value {
    events
        .iter()
        .find(|e| &e["uuid"] == uuid)
        .unwrap_or_else(|| panic!("no event {uuid} among {}", events.len()))
}

/// A trigger to the `single` mapping (Basic auth) for customer `n`; returns its uuid.
pub async fn send_single(app: &TestApp, n: i64) -> String {
    let body = json!({"customer": {"email": format!("c{n}@x.nl")}, "interaction": n});
    let res = app.post_basic("s3cret", &body).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    answer["recipients"][0]["uuid"].as_str().unwrap().to_owned()
}

impl TestApp {
    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let res = self.client.get(self.url("/metrics")).send().await.unwrap();
        res.text().await.unwrap()
    }

    /// GETs an admin path until `done` holds for the answer (at most 10 s); returns it.
    pub async fn admin_until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.admin_get(path).await;
            if done(&v) || start.elapsed() > Duration::from_secs(10) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A request with a bearer token of the caller's choice.
    pub fn with_token(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// POST /activities with the activity token.
    pub async fn activities(&self, body: &Value) -> reqwest::Response {
        let req = self
            .client
            .post(self.url("/activities"))
            .bearer_auth(ACTIVITY_TOKEN);
        req.json(body).send().await.unwrap()
    }

    /// GET an admin path with the admin token.
    pub async fn admin_get(&self, path: &str) -> Value {
        let req = self.client.get(self.url(path)).bearer_auth(ADMIN_TOKEN);
        req.send().await.unwrap().json().await.unwrap()
    }

    /// POST an admin path with the admin token.
    pub async fn admin_post(&self, path: &str, body: &Value) -> reqwest::Response {
        let req = self.client.post(self.url(path)).bearer_auth(ADMIN_TOKEN);
        req.json(body).send().await.unwrap()
    }
}
