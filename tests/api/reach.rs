//! Reaching a real Pega: TLS with a private CA, mutual TLS, OAuth2 over TLS, HTTP/2, redirects
//! never followed, every failure explained, answers read within bounds, a supervised worker.
//! Every endpoint is a real server on loopback (rustls), with certificates made by the test.

use crate::pega::{pega_section, pega_section_for, send_single, start_pega, Pega};
use crate::server::{each_backend, spawn_app_customized, spawn_app_with, TestApp};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use pegabridge::config::secret::Secret;
use pegabridge::mock::{tls_config, Behaviour, MockAuth, MockPega, TlsListener};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A test PKI: a CA, a server certificate for 127.0.0.1 and a client certificate, all issued
/// by the CA, written as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
    pub server_cert: String,
    pub server_key: String,
    pub ca_cert: String,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pegabridge test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issue = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = issue(
            vec!["pegabridge".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client_cert).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server_cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &server_key).unwrap();
        Self {
            dir,
            server_cert,
            server_key,
            ca_cert: ca.pem(),
        }
    }

    /// `ca.pem`, `client.pem`, `client.key`, `server.pem`, `server.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[pega.tls]` trusting the test CA, with the client certificate when `mutual`.
    fn section(&self, mutual: bool) -> String {
        let mut s = format!("[pega.tls]\nca_file = {:?}\n", self.path("ca.pem"));
        if mutual {
            s.push_str(&format!(
                "client_cert = {:?}\nclient_key = {:?}\n",
                self.path("client.pem"),
                self.path("client.key")
            ));
        }
        s
    }
}

/// The stand-in Pega behind TLS with the PKI's server certificate; client certificates
/// issued by the CA are required when `mutual`.
async fn start_tls_pega(pki: &Pki, auth: MockAuth, mutual: bool) -> Pega {
    let mock = MockPega::new(auth, Behaviour::default());
    let config = tls_config(
        pki.server_cert.as_bytes(),
        pki.server_key.as_bytes(),
        mutual.then_some(pki.ca_cert.as_bytes()),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let listener = TlsListener::new(listener, config).unwrap();
    let router = mock.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Pega { mock, url }
}

fn basic() -> MockAuth {
    MockAuth::Basic {
        username: "pega".into(),
        password: Secret::new("pega-secret"),
    }
}

/// Serves `router` on a loopback port; returns its `http://` URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// The first recorded attempt of `uuid` (waits until there is one).
async fn first_attempt(app: &TestApp, uuid: &str) -> Value {
    let shown = app
        .admin_until(&format!("/admin/deliveries/{uuid}"), |v| {
            v["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    shown["attempts"][0].clone()
}

fn detail(attempt: &Value) -> &str {
    attempt["detail"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_https_endpoint_signed_by_the_configured_ca_receives_events_over_http2() {
    let pki = Pki::new();
    let pega = start_tls_pega(&pki, basic(), false).await;
    let section = format!("{}{}", pega_section(&pega, ""), pki.section(false));
    let (app, _) = spawn_app_with("", &section).await;
    let uuid = send_single(&app, 1).await;
    let events = crate::pega::wait_for_events(&pega, 1).await;
    assert_eq!(events.len(), 1, "the event arrived over TLS");
    assert_eq!(events[0]["uuid"], uuid.as_str());
    assert_eq!(
        pega.mock.last_version(),
        Some(axum::http::Version::HTTP_2),
        "HTTP/2 is used when the endpoint offers it (ALPN)"
    );
    assert_eq!(
        pega.mock.last_header("x-source").as_deref(),
        Some("pegabridge")
    );
}

#[tokio::test]
async fn an_unknown_ca_is_not_trusted_and_the_attempt_names_the_certificate_problem() {
    let pki = Pki::new();
    let pega = start_tls_pega(&pki, basic(), false).await;
    // No [pega.tls]: only the built-in roots, which do not include the test CA.
    let (app, _) = spawn_app_with("", &pega_section(&pega, "")).await;
    let uuid = send_single(&app, 2).await;
    let attempt = first_attempt(&app, &uuid).await;
    assert_eq!(attempt["outcome"], "retry");
    assert!(attempt["http_status"].is_null());
    assert!(
        detail(&attempt).starts_with("TLS: invalid peer certificate: UnknownIssuer"),
        "{attempt}"
    );
    assert_eq!(pega.mock.requests(), 0, "nothing was sent without trust");
}

#[tokio::test]
async fn mutual_tls_sends_the_configured_client_certificate() {
    let pki = Pki::new();
    let pega = start_tls_pega(&pki, basic(), true).await;

    let without = format!("{}{}", pega_section(&pega, ""), pki.section(false));
    let (app, _) = spawn_app_with("", &without).await;
    let uuid = send_single(&app, 3).await;
    let attempt = first_attempt(&app, &uuid).await;
    assert_eq!(attempt["outcome"], "retry", "{attempt}");
    assert_eq!(
        detail(&attempt),
        "TLS: received fatal alert: CertificateRequired",
        "the cause says the endpoint wants a certificate"
    );
    assert_eq!(pega.mock.requests(), 0);

    let with = format!("{}{}", pega_section(&pega, ""), pki.section(true));
    let (app, _) = spawn_app_with("", &with).await;
    let uuid = send_single(&app, 4).await;
    let events = crate::pega::wait_for_events(&pega, 1).await;
    assert_eq!(
        events[0]["uuid"],
        uuid.as_str(),
        "delivered with the client certificate"
    );
}

#[tokio::test]
async fn oauth2_tokens_come_from_a_token_endpoint_over_tls() {
    let pki = Pki::new();
    let pega = start_tls_pega(
        &pki,
        MockAuth::Oauth2 {
            client_id: "bridge".into(),
            client_secret: Secret::new("bridge-secret"),
            lifetime: Duration::from_secs(3600),
        },
        false,
    )
    .await;
    let auth = format!(
        "[pega.auth]\ntype = \"oauth2\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"bridge\"\nclient_secret = \"bridge-secret\"\n",
        pega.url
    );
    let section = pega_section(&pega, "").replace(
        "[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n",
        &auth,
    ) + &pki.section(false);
    let (app, _) = spawn_app_with("", &section).await;
    let uuid = send_single(&app, 5).await;
    let events = crate::pega::wait_for_events(&pega, 1).await;
    assert_eq!(events[0]["uuid"], uuid.as_str());
    assert_eq!(pega.mock.tokens_issued(), 1);
}

#[tokio::test]
async fn redirects_are_dead_letters_and_nothing_reaches_the_other_host() {
    for status in [301u16, 302, 303, 307, 308] {
        let other = start_pega().await;
        let location = format!(
            "{}/elsewhere?token=s3cret-token",
            other.url.replace("http://", "http://u:p@")
        );
        let redirecting = serve(Router::new().fallback(move || {
            let location = location.clone();
            async move {
                (
                    StatusCode::from_u16(status).unwrap(),
                    [(header::LOCATION, location)],
                )
                    .into_response()
            }
        }))
        .await;
        let (app, _) = spawn_app_with("", &pega_section_for(&redirecting, "")).await;
        let uuid = send_single(&app, 6).await;
        let dead = app
            .admin_until("/admin/deliveries?status=dead", |v| {
                !v["deliveries"].as_array().unwrap().is_empty()
            })
            .await;
        assert_eq!(
            dead["deliveries"][0]["uuid"],
            uuid.as_str(),
            "{status}: a dead letter"
        );
        let attempt = first_attempt(&app, &uuid).await;
        assert_eq!(attempt["http_status"], status);
        assert_eq!(attempt["outcome"], "dead");
        let d = detail(&attempt);
        assert!(
            d.starts_with(&format!("redirect not followed: {status}")),
            "{d}"
        );
        assert!(
            d.contains(&format!("{}/elsewhere", other.url)),
            "names the Location: {d}"
        );
        assert!(!d.contains("u:p@"), "no credentials of the Location: {d}");
        assert!(!d.contains("s3cret-token"), "no query of the Location: {d}");
        assert_eq!(
            other.mock.requests(),
            0,
            "{status}: nothing reached the other host"
        );
        let delivered = app.admin_get("/admin/deliveries?status=delivered").await;
        assert!(delivered["deliveries"].as_array().unwrap().is_empty());
    }
}

#[tokio::test]
async fn every_failure_names_its_cause() {
    // Refused: a port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = format!("http://127.0.0.1:{port}");
    let (app, _) = spawn_app_with("", &pega_section_for(&refused, "")).await;
    let uuid = send_single(&app, 7).await;
    let attempt = first_attempt(&app, &uuid).await;
    assert_eq!(
        detail(&attempt),
        format!("connect 127.0.0.1:{port}: connection refused")
    );

    // DNS: `.invalid` never resolves (RFC 6761).
    let (app, _) = spawn_app_with("", &pega_section_for("http://no-such-host.invalid", "")).await;
    let uuid = send_single(&app, 8).await;
    let attempt = first_attempt(&app, &uuid).await;
    assert!(
        detail(&attempt).starts_with("DNS: no-such-host.invalid: "),
        "{attempt}"
    );

    // Timed out: the stand-in answers after the 1 s timeout.
    let pega = start_pega().await;
    pega.mock.control(|b| b.delay = Duration::from_secs(5));
    let (app, _) = spawn_app_with("", &pega_section(&pega, "")).await;
    let uuid = send_single(&app, 9).await;
    let attempt = first_attempt(&app, &uuid).await;
    assert_eq!(detail(&attempt), "timed out after 1 s");
}

#[tokio::test]
async fn token_endpoint_failures_are_attempt_failures_with_their_cause() {
    let pega = start_pega().await;
    let hanging = serve(Router::new().fallback(std::future::pending::<()>)).await;
    let failing = serve(
        Router::new()
            .fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "token service down") }),
    )
    .await;
    let garbage = serve(Router::new().fallback(|| async { "<html>login</html>" })).await;
    for (url, expected) in [
        (hanging, "timed out after 1 s".to_owned()),
        (
            failing,
            "OAuth2 token endpoint: answered 500 Internal Server Error: token service down".into(),
        ),
        (
            garbage,
            "OAuth2 token endpoint: answered 200 OK without a token".into(),
        ),
    ] {
        let auth = format!(
            "[pega.auth]\ntype = \"oauth2\"\ntoken_url = \"{url}/token\"\nclient_id = \"bridge\"\nclient_secret = \"bridge-secret\"\n"
        );
        let section = pega_section(&pega, "").replace(
            "[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n",
            &auth,
        );
        let (app, _) = spawn_app_with("", &section).await;
        let uuid = send_single(&app, 10).await;
        let attempt = first_attempt(&app, &uuid).await;
        assert_eq!(attempt["outcome"], "retry", "{attempt}");
        assert!(detail(&attempt).starts_with(&expected), "{attempt}");
        assert!(!attempt.to_string().contains("bridge-secret"));
    }
    assert_eq!(pega.mock.requests(), 0);
}

#[tokio::test]
async fn a_huge_answer_is_read_only_as_far_as_it_is_kept_and_stored_safely() {
    each_backend(|| async {
        const GIB: u64 = 1 << 30;
        let produced = Arc::new(AtomicU64::new(0));
        let counter = produced.clone();
        // 1 GiB of NUL bytes and invalid UTF-8, made as it is read.
        let endpoint = serve(Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                let chunk = axum::body::Bytes::from([b'\0', 0xff, b'x', b'\0'].repeat(16 * 1024));
                let stream = futures::stream::unfold(0u64, move |sent| {
                    let chunk = chunk.clone();
                    let counter = counter.clone();
                    async move {
                        (sent < GIB).then(|| {
                            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            (
                                Ok::<_, std::io::Error>(chunk.clone()),
                                sent + chunk.len() as u64,
                            )
                        })
                    }
                });
                (
                    StatusCode::BAD_REQUEST,
                    axum::body::Body::from_stream(stream),
                )
            }
        }))
        .await;
        let (app, _) = spawn_app_with("", &pega_section_for(&endpoint, "")).await;
        let uuid = send_single(&app, 11).await;
        let attempt = first_attempt(&app, &uuid).await;
        assert_eq!(attempt["http_status"], 400);
        let d = detail(&attempt);
        assert!(d.len() <= 1024, "{}", d.len());
        assert!(
            d.starts_with("\u{FFFD}\u{FFFD}x\u{FFFD}"),
            "NUL and bad bytes replaced: {d:?}"
        );
        let sent = produced.load(Ordering::Relaxed);
        assert!(
            sent < 32 << 20,
            "the answer was read within bounds, not to its end: {sent} bytes produced"
        );
    })
    .await;
}

#[tokio::test]
async fn a_panicking_worker_is_restarted_counted_and_health_says_so() {
    let pega = start_pega().await;
    let panicking = Arc::new(AtomicBool::new(true));
    let flag = panicking.clone();
    let (app, _) = spawn_app_customized("", &pega_section(&pega, ""), move |app| {
        app.set_delivery_fault_hook(Arc::new(move || {
            if flag.load(Ordering::Relaxed) {
                panic!("injected fault");
            }
        }))
    })
    .await;
    let uuid = send_single(&app, 12).await;
    // The worker panics at the start of each round, then waits a second before restarting:
    // /health must say so meanwhile.
    let mut health = None;
    for _ in 0..500 {
        let res = app.get("/health").await.unwrap();
        if res.status() == 503 {
            health = Some(res.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let health = health.expect("/health answered 503 while the worker was down");
    assert_eq!(health["error"]["code"], "delivery_not_running");
    assert!(
        health["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected fault"),
        "{health}"
    );
    assert!(pega.mock.events().is_empty());

    panicking.store(false, Ordering::Relaxed);
    let events = crate::pega::wait_for_events(&pega, 1).await;
    assert_eq!(events.len(), 1, "delivered once restarted");
    assert_eq!(events[0]["uuid"], uuid.as_str());
    let res = app.get("/health").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["delivery"], "running");
    let metrics = app.metrics().await;
    let restarts: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pegabridge_worker_restarts_total "))
        .expect("the restart counter is exported")
        .parse()
        .unwrap();
    assert!(restarts >= 1.0, "{metrics}");
}

#[tokio::test]
async fn health_says_whether_delivery_is_paused() {
    let pega = start_pega().await;
    let (app, _) = spawn_app_with("", &pega_section(&pega, "")).await;
    let health: Value = app.get("/health").await.unwrap().json().await.unwrap();
    assert_eq!(health["delivery"], "running");
    app.admin_post("/admin/delivery/pause", &serde_json::json!({}))
        .await;
    let health: Value = app.get("/health").await.unwrap().json().await.unwrap();
    assert_eq!(health["delivery"], "paused");
}

#[tokio::test]
async fn postgresql_is_reached_over_tls_when_the_url_asks_for_it() {
    use sqlx::Connection;
    let Some(server) = crate::backend::postgres_url() else {
        return;
    };
    let database = crate::backend::create_database(&server).await;
    let url = format!("{}?sslmode=require", database.url);
    // The store opens (and migrates) over TLS...
    let store = pegabridge::store::Storage::connect(&url, "normal", 2).await;
    let store = match store {
        Ok(s) => s,
        Err(e) if format!("{e:#}").contains("does not support SSL") => {
            eprintln!("postgres over TLS: skipped (this server has ssl = off)");
            return;
        }
        Err(e) => panic!("the store opens over TLS: {e:#}"),
    };
    assert!(store.backend().ping().await);
    // ...and a connection made the same way is encrypted.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(ssl, "the connection is TLS");
}
