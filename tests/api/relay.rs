//! A misbehaving SMTP relay written here (raw SMTP over TCP), failing at one stage of the
//! session, against `serve`: only a recipient's own refusal at `RCPT` makes a bounce; the
//! relay's and the sender's problems (AUTH, `MAIL FROM`, the content after `DATA`, silence)
//! are retried, then dead, and nobody is bounced or suppressed. The relay speaks implicit TLS
//! with a certificate of the test's CA (`[mail.tls] ca_file`), as a relay taking a password
//! must.

use crate::pega::{pega_section, settled, start_pega, wait_for_events};
use crate::reach::Pki;
use crate::server::{spawn_app_with, TestApp};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How the relay misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// It does not: every message is taken.
    Nothing,
    /// `535 5.7.8` to AUTH (a rotated password).
    Auth,
    /// `550 5.7.1` to `MAIL FROM` (the sender is not allowed).
    MailFrom,
    /// `554 5.6.0` after the data (the content is refused).
    Content,
    /// No answer after the data.
    Silent,
    /// `550 5.1.1` for recipients whose address starts with `nobody` (the only bounce).
    NoSuchUser,
    /// Every answer after the greeting comes 1.5 s late (beyond `timeout_secs = 1`).
    Slow,
    /// The connection is dropped in the middle of the data.
    Dropped,
    /// No answer after the data of a message to an address starting with `stuck`; the
    /// others are taken.
    Stuck,
}

/// A running relay: its port, its fault (which the test may change), the AUTH commands it saw.
struct TestRelay {
    port: u16,
    fault: Arc<Mutex<Fault>>,
    auths: Arc<AtomicUsize>,
}

/// Starts the relay (implicit TLS with `pki`'s server certificate); returns its port.
async fn relay(fault: Fault, pki: &Pki) -> u16 {
    start_relay(fault, pki).await.port
}

async fn start_relay(fault: Fault, pki: &Pki) -> TestRelay {
    let shared = Arc::new(Mutex::new(fault));
    let auths = Arc::new(AtomicUsize::new(0));
    let (fault, counted) = (shared.clone(), auths.clone());
    let config =
        pegabridge::mock::tls_config(pki.server_cert.as_bytes(), pki.server_key.as_bytes(), None)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let (fault, counted) = (fault.clone(), counted.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    session(tls, fault, counted).await;
                }
            });
        }
    });
    TestRelay {
        port,
        fault: shared,
        auths,
    }
}

async fn session<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    shared: Arc<Mutex<Fault>>,
    auths: Arc<AtomicUsize>,
) {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 relay.test ESMTP\r\n").await;
    let mut in_data = false;
    let mut stuck = false;
    while let Ok(Some(line)) = lines.next_line().await {
        let fault = *shared.lock().unwrap();
        if fault == Fault::Slow {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        }
        if in_data {
            if fault == Fault::Dropped {
                return;
            }
            if line != "." {
                continue;
            }
            in_data = false;
            let answer: &[u8] = match fault {
                Fault::Content => b"554 5.6.0 Message content refused\r\n",
                Fault::Silent => continue,
                Fault::Stuck if stuck => continue,
                _ => b"250 2.0.0 queued\r\n",
            };
            let _ = write.write_all(answer).await;
            continue;
        }
        let upper = line.to_ascii_uppercase();
        let answer: &[u8] = if upper.starts_with("EHLO") {
            b"250-relay.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("AUTH") {
            auths.fetch_add(1, Ordering::SeqCst);
            if fault == Fault::Auth {
                b"535 5.7.8 Authentication credentials invalid\r\n"
            } else {
                b"235 2.7.0 Authentication successful\r\n"
            }
        } else if upper.starts_with("MAIL FROM") {
            if fault == Fault::MailFrom {
                b"550 5.7.1 Sender address rejected: not owned by user\r\n"
            } else {
                b"250 2.1.0 Ok\r\n"
            }
        } else if upper.starts_with("RCPT TO") {
            stuck = upper.contains("<STUCK");
            if fault == Fault::NoSuchUser && upper.contains("<NOBODY") {
                b"550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown\r\n"
            } else {
                b"250 2.1.5 Ok\r\n"
            }
        } else if upper.starts_with("DATA") {
            in_data = true;
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            b"250 2.0.0 Ok\r\n"
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// A server sending through the relay on `port` (quick retries, two attempts), trusting
/// `pki`'s CA.
async fn app(port: u16, pki: &Pki, pega: &crate::pega::Pega) -> TestApp {
    app_with(port, pki, pega, "max_attempts = 2", "").await
}

/// [`app`] with these `[mail.retry]` keys and `[mail.breaker]` keys.
async fn app_with(
    port: u16,
    pki: &Pki,
    pega: &crate::pega::Pega,
    retry: &str,
    breaker: &str,
) -> TestApp {
    let extra = format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"pegabridge\"\npassword = \"relay-password\"\ntimeout_secs = 1\nmax_sessions = 2\nfrom = \"Offers <offers@mail.example>\"\nreply_to = \"help@mail.example\"\n[mail.tls]\nmode = \"tls\"\nca_file = {:?}\n[mail.retry]\nbase_ms = 20\nmax_delay_secs = 1\njitter = 0.0\n{retry}\n[mail.breaker]\n{breaker}\n\n{}",
        pki.path("ca.pem"),
        pega_section(pega, "")
    );
    spawn_app_with("", &extra).await.0
}

/// The sends' statuses, until none is pending or in flight.
pub async fn sends_settled(app: &TestApp) -> Vec<String> {
    let store = app.store().await;
    let url = app.store_url.clone();
    for _ in 0..400 {
        let statuses = statuses(&url).await;
        if !statuses.is_empty() && statuses.iter().all(|s| s != "pending" && s != "inflight") {
            return statuses;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    drop(store);
    statuses(&url).await
}

async fn statuses(url: &str) -> Vec<String> {
    use sqlx::Connection;
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar("SELECT status FROM sends ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap()
    } else {
        let path = url.trim_start_matches("sqlite://").to_owned();
        tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(path).unwrap();
            let mut stmt = c.prepare("SELECT status FROM sends ORDER BY id").unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.map(Result::unwrap).collect()
        })
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn the_relays_and_the_senders_problems_bounce_nobody_and_suppress_nobody() {
    for fault in [
        Fault::Auth,
        Fault::MailFrom,
        Fault::Content,
        Fault::Silent,
        Fault::Slow,
        Fault::Dropped,
    ] {
        let pki = Pki::new();
        let port = relay(fault, &pki).await;
        let pega = start_pega().await;
        let app = app(port, &pki, &pega).await;
        let first: Value = app.trigger_offer().await;
        let statuses = sends_settled(&app).await;
        assert!(
            statuses.iter().all(|s| s == "dead"),
            "{fault:?}: retried, then dead: {statuses:?}"
        );
        settled(&app).await;
        let events = pega.mock.events();
        assert!(
            events.iter().all(|e| e["metric"] != "bounces"),
            "{fault:?}: no bounce reaches Pega: {events:?}"
        );
        // Nobody was suppressed: the same customers are mailable for the next trigger.
        let again: Value = app.trigger_offer().await;
        let status: HashSet<&str> = again["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert!(
            !status.contains("suppressed"),
            "{fault:?}: {again} after {first}"
        );
    }
}

#[tokio::test]
async fn only_the_recipient_the_relay_refuses_at_rcpt_bounces() {
    let pki = Pki::new();
    let port = relay(Fault::NoSuchUser, &pki).await;
    let pega = start_pega().await;
    let app = app(port, &pki, &pega).await;
    let trigger = serde_json::json!({"Offer": {"UniqueOfferId": "OFFER-1"}, "Customers": [
        {"Email": "ann@example.com", "CustomerID": "A-1", "InteractionID": "1"},
        {"Email": "nobody@example.net", "CustomerID": "N-1", "InteractionID": "2"}]});
    let answer: Value = app
        .post("/webhooks/offer", &trigger)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["recipients"].as_array().unwrap().len(),
        2,
        "{answer}"
    );
    let statuses = sends_settled(&app).await;
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, ["bounced", "sent"], "{statuses:?}");
    // Ann's broadcasts event, and nobody's hard bounce with the relay's status.
    let events = wait_for_events(&pega, 2).await;
    settled(&app).await;
    let bounce = events
        .iter()
        .find(|e| e["metric"] == "bounces")
        .expect("a bounce");
    assert_eq!(bounce["bounce_type"], "hard");
    assert_eq!(bounce["bounce_code"], "5.1.1");
    assert_eq!(bounce["customer_email_address"], "nobody@example.net");
}

/// A trigger for `n` customers.
fn many(n: usize) -> Value {
    let customers: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"Email": format!("c{i}@example.com"), "CustomerID": format!("C-{i}"), "InteractionID": format!("{}", 1000 + i)}))
        .collect();
    serde_json::json!({"Offer": {"UniqueOfferId": "OFFER-1"}, "Customers": customers})
}

/// `GET path` with the admin token, as JSON.
async fn admin_get(app: &TestApp, path: &str) -> Value {
    app.client
        .get(app.url(path))
        .bearer_auth(crate::server::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `/health` says the mail path is in `state`; returns its `mail` object.
async fn mail_health(app: &TestApp, state: &str) -> Value {
    for _ in 0..800 {
        let health: Value = app.get("/health").await.unwrap().json().await.unwrap();
        if health["mail"]["state"] == state {
            return health["mail"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the mail path never became {state}");
}

#[tokio::test]
async fn a_rotated_password_pauses_the_mail_with_one_probe_and_it_resumes_once_fixed() {
    let pki = Pki::new();
    let relay = start_relay(Fault::Auth, &pki).await;
    let pega = start_pega().await;
    // Many attempts each (without the breaker all would be retried through quickly), a
    // breaker that opens after 4 sends, probing every second.
    let app = app_with(
        relay.port,
        &pki,
        &pega,
        "max_attempts = 50",
        "min_requests = 4\nprobe_interval_secs = 1",
    )
    .await;
    let answer = app.post("/webhooks/offer", &many(30)).await;
    assert!(
        answer.status().is_success(),
        "{}",
        answer.text().await.unwrap()
    );
    let mail = mail_health(&app, "paused").await;
    assert!(
        mail["reason"].as_str().unwrap().contains("535"),
        "the relay's answer says why: {mail}"
    );
    let metrics = app.get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("pegabridge_mail_breaker_state 1")
            || metrics.contains("pegabridge_mail_breaker_state 2"),
        "{metrics}"
    );
    // Paused after the sends that opened it (and the one other session's): the rest of the
    // customers were never tried.
    let tried = relay.auths.load(Ordering::SeqCst);
    let sends = admin_get(&app, "/admin/sends?status=pending&limit=100").await;
    let untried = sends["sends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["attempts"] == 0)
        .count();
    assert!(
        untried >= 30 - tried - 2,
        "{tried} AUTHs, {untried} sends never tried"
    );
    // The password is fixed on the relay's side: a probe gets through and every send goes.
    *relay.fault.lock().unwrap() = Fault::Nothing;
    let statuses = sends_settled(&app).await;
    assert!(statuses.iter().all(|s| s == "sent"), "{statuses:?}");
    mail_health(&app, "sending").await;
    let events = wait_for_events(&pega, 30).await;
    assert!(events.iter().all(|e| e["metric"] == "broadcasts"));
    let metrics = app.get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("pegabridge_mail_sends_total{outcome=\"sent\"} 30"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pegabridge_mail_breaker_state 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn dead_sends_are_listed_with_the_relays_answer_and_replayed_once_fixed() {
    let pki = Pki::new();
    let relay = start_relay(Fault::MailFrom, &pki).await;
    let pega = start_pega().await;
    let app = app(relay.port, &pki, &pega).await;
    let answer = app.trigger_offer().await;
    assert_eq!(sends_settled(&app).await, ["dead", "dead"]);
    let dead = admin_get(&app, "/admin/sends?status=dead").await;
    let dead = dead["sends"].as_array().unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for s in dead {
        let error = s["last_error"].as_str().unwrap();
        assert!(
            error.contains("550") && error.contains("mail_from"),
            "the stage and the relay's answer: {error}"
        );
    }
    let uuid = answer["recipients"][0]["uuid"].as_str().unwrap();
    let one = admin_get(&app, &format!("/admin/sends/{uuid}")).await;
    assert_eq!(one["send"]["status"], "dead");
    assert_eq!(one["send"]["email"], "ann@example.com");
    // The CLI shows the same, from the same store.
    let out = crate::helpers::pegabridge(app.dir.path(), &["sends", "list", "--status", "dead"]);
    assert!(out.status.success(), "{}", crate::helpers::stderr(&out));
    let listed = crate::helpers::stdout(&out);
    assert!(listed.contains(uuid) && listed.contains("550"), "{listed}");
    // Only dead sends are replayed.
    let refused = app
        .client
        .post(app.url("/admin/sends/replay"))
        .bearer_auth(crate::server::ADMIN_TOKEN)
        .json(&serde_json::json!({"status": "bounced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    *relay.fault.lock().unwrap() = Fault::Nothing;
    let out = crate::helpers::pegabridge(app.dir.path(), &["sends", "replay", uuid]);
    assert!(out.status.success(), "{}", crate::helpers::stderr(&out));
    assert!(crate::helpers::stdout(&out).contains("1 sends"));
    let replayed: Value = app
        .client
        .post(app.url("/admin/sends/replay"))
        .bearer_auth(crate::server::ADMIN_TOKEN)
        .json(&serde_json::json!({"status": "dead"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 1, "the other one");
    let statuses = sends_settled(&app).await;
    assert_eq!(statuses, ["sent", "sent"]);
    let events = wait_for_events(&pega, 2).await;
    assert!(
        events.iter().all(|e| e["metric"] == "broadcasts"),
        "{events:?}"
    );
}

#[tokio::test]
async fn one_stuck_session_holds_no_other_send() {
    let pki = Pki::new();
    let relay = start_relay(Fault::Stuck, &pki).await;
    let pega = start_pega().await;
    // A long timeout: the stuck send stays with the relay for the whole test.
    let extra = format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"pegabridge\"\npassword = \"relay-password\"\ntimeout_secs = 600\nlease_secs = 1200\nmax_sessions = 2\nfrom = \"Offers <offers@mail.example>\"\n[mail.tls]\nmode = \"tls\"\nca_file = {:?}\n\n{}",
        relay.port,
        pki.path("ca.pem"),
        pega_section(&pega, "")
    );
    let app = spawn_app_with("", &extra).await.0;
    let mut trigger = many(20);
    trigger["Customers"][0]["Email"] = serde_json::json!("stuck@example.com");
    assert!(app
        .post("/webhooks/offer", &trigger)
        .await
        .status()
        .is_success());
    // Every other customer's mail goes through the one session left, while the first waits.
    let events = wait_for_events(&pega, 19).await;
    assert_eq!(events.len(), 19, "{events:?}");
    let sends = admin_get(&app, "/admin/sends?status=inflight").await;
    let inflight = sends["sends"].as_array().unwrap();
    assert_eq!(inflight.len(), 1, "{inflight:?}");
    assert_eq!(inflight[0]["email"], "stuck@example.com");
    let health = admin_get(&app, "/health").await;
    assert_eq!(health["mail"]["state"], "sending", "{health}");
}
