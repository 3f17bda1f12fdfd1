//! Sending through a real SMTP server process (aiosmtpd, `tests/mail/smtp_server.py`) on
//! loopback: what arrives is parsed by Python's MIME parser and its DKIM signature verified
//! by dkimpy (`tests/mail/check_mail.py`). Their Python is the machine's `python3` when it has
//! aiosmtpd and dkimpy, else a virtual environment the tests make once under `target/` and
//! install them into (pip). When neither works the tests fail naming what is missing; only
//! `PEGABRIDGE_SKIP_SMTP=1` skips them (and says so).

use crate::helpers::{pegabridge, root, stderr, stdout};
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The packages the SMTP tests need, pinned.
const PACKAGES: [&str; 2] = ["aiosmtpd==1.4.6", "dkimpy==1.1.8"];

/// Whether `python` imports aiosmtpd and dkim.
fn has_tools(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import aiosmtpd, dkim"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Python that runs the SMTP server and the checks: `python3` if it has the packages,
/// else a virtual environment under `target/` made once (per machine) with them.
fn python() -> Result<PathBuf, String> {
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let system = PathBuf::from("python3");
            if has_tools(&system) {
                return Ok(system);
            }
            crate::helpers::venv("smtp-test-venv", "aiosmtpd, dkim", &PACKAGES)
        })
        .clone()
}

/// Whether the SMTP tests run: they fail when their tools cannot be had, unless
/// `PEGABRIDGE_SKIP_SMTP=1` says to skip them.
pub fn smtp_tools() -> bool {
    if std::env::var("PEGABRIDGE_SKIP_SMTP").is_ok_and(|v| v == "1") {
        eprintln!("smtp: skipped (PEGABRIDGE_SKIP_SMTP=1)");
        return false;
    }
    if let Err(why) = python() {
        panic!(
            "the SMTP tests need python3 with aiosmtpd and dkimpy ({}), which could not be had: {why} (or set PEGABRIDGE_SKIP_SMTP=1 to skip them)",
            PACKAGES.join(", ")
        );
    }
    true
}

/// A running SMTP server, killed when dropped.
pub struct Smtp {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    pub fn start(extra: &[&str]) -> Smtp {
        Smtp::start_on(crate::processes::free_port(), extra)
    }

    /// A server on `port`.
    pub fn start_on(port: u16, extra: &[&str]) -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(python().expect("checked by smtp_tools"))
            .arg(root().join("tests/mail/smtp_server.py"))
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "the SMTP server said {line:?}");
        Smtp { child, port, dir }
    }

    /// The messages received, oldest first.
    pub fn messages(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
    }
}

/// The message to `to` among `mail`, parsed and checked.
fn mail_to(mail: &[PathBuf], to: &str) -> Value {
    mail.iter()
        .map(|m| check(m))
        .find(|m| m["headers"]["To"] == to)
        .unwrap_or_else(|| panic!("no mail to {to}"))
}

/// The message parsed and checked.
pub fn check(message: &Path) -> Value {
    let out = Command::new(python().expect("checked by smtp_tools"))
        .arg(root().join("tests/mail/check_mail.py"))
        .arg(message)
        .arg(root().join("tests/mail/dkim-test.pub"))
        .args(["s1", "mail.example"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `[mail]` section for the server on `port`, signing with the test key.
pub fn mail_section(port: u16) -> String {
    mail_section_with(port, "")
}

/// [`mail_section`] with more `[mail]` keys.
pub fn mail_section_with(port: u16, keys: &str) -> String {
    format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n{keys}\nfrom = \"Offers <offers@mail.example>\"\nreply_to = \"help@mail.example\"\nmessage_id_domain = \"mail.example\"\n[mail.dkim]\ndomain = \"mail.example\"\nselector = \"s1\"\nkey_file = \"{}\"\n",
        root().join("tests/mail/dkim-test.key").display()
    )
}

const MAPPING: &str = r#"
template = "offer.html"
subject = "An offer for {{$FirstName|default:'you'}}"
from_name = "Offers of {{$Brand|default:'us'}}"
campaign_id = 1
campaign_name = "Mail"
campaign_object_id = 1
content_id = 1
content_name = "Mail"
broadcast_event_type = "SINGLEMAIL"
sub_type = "SINGLEMAIL"
[auth]
type = "bearer"
token = "t"
[recipient]
email = "email"
[variables.FirstName]
path = "first"
[variables.UniqueOfferId]
path = "offer"
[variables.InteractionId]
path = "interaction"
"#;

/// A project with the example template and the `mail` mapping, configured with `config`.
fn project(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::copy(
        root().join("templates/offer.html"),
        dir.path().join("templates/offer.html"),
    )
    .unwrap();
    std::fs::write(dir.path().join("mappings/mail.toml"), MAPPING).unwrap();
    std::fs::write(dir.path().join("pegabridge.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("trigger.json"),
        r#"{"email": "ann@example.org", "first": "Ann <b>&", "offer": "Sales/Cards/Platinum/EmailT1", "interaction": "-563481321460449721"}"#,
    )
    .unwrap();
    dir
}

/// `pegabridge send-test` of the project's trigger with the `mail` mapping, to `to`.
fn send_test(dir: &Path, to: &str) -> std::process::Output {
    pegabridge(
        dir,
        &[
            "send-test",
            "--mapping",
            "mail",
            "--trigger",
            "trigger.json",
            "--to",
            to,
        ],
    )
}

#[test]
fn send_test_delivers_a_signed_message_with_both_parts_to_a_real_smtp_server() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&[]);
    let dir = project(&mail_section(smtp.port));
    let out = send_test(dir.path(), "check@example.net");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("sent to check@example.net"),
        "{}",
        stdout(&out)
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    let m = check(&messages[0]);
    let h = &m["headers"];
    assert_eq!(h["To"], "check@example.net");
    assert_eq!(h["From"], "Offers of us <offers@mail.example>");
    assert_eq!(h["Reply-To"], "help@mail.example");
    assert_eq!(
        h["Subject"], "An offer for Ann <b>&",
        "a subject is text: not escaped"
    );
    let id = h["Message-ID"].as_str().unwrap();
    assert!(
        id.starts_with('<') && id.ends_with("@mail.example>"),
        "{id}"
    );
    assert!(h["Date"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(m["content_type"], "multipart/alternative");
    let parts = m["parts"].as_array().unwrap();
    assert_eq!(parts[0]["type"], "text/plain");
    assert_eq!(parts[1]["type"], "text/html");
    let html = parts[1]["content"].as_str().unwrap();
    assert!(
        html.contains("Hello Ann &lt;b&gt;&amp;,"),
        "values escaped: {html}"
    );
    // As the preview renders it (tera escapes `/` too; a browser or Pega reads it back).
    assert!(
        html.contains(
            r#"<meta name="UniqueOfferId" content="Sales&#x2F;Cards&#x2F;Platinum&#x2F;EmailT1">"#
        ),
        "{html}"
    );
    let text = parts[0]["content"].as_str().unwrap();
    assert!(text.contains("Hello Ann <b>&,"), "{text}");
    assert!(
        text.contains("https://shop.example/offer?o=Sales/Cards/Platinum/EmailT1"),
        "{text}"
    );
    assert!(!text.contains("<p>"), "{text}");
    assert_eq!(
        m["dkim"], true,
        "the DKIM signature verifies: {}",
        m["dkim_signature"]
    );
    let signed = m["dkim_signature"].as_str().unwrap().to_ascii_lowercase();
    for header in ["from", "subject", "to", "date"] {
        assert!(signed.contains(header), "{header} signed: {signed}");
    }
}

#[test]
fn send_test_says_why_the_relay_refused_and_exits_non_zero() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&["--reject", "nobody@example.net"]);
    let dir = project(&mail_section(smtp.port));
    let out = send_test(dir.path(), "nobody@example.net");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("550"), "{}", stderr(&out));
    assert!(smtp.messages().is_empty());
    // Without [mail]: a clear error, exit 2.
    std::fs::write(dir.path().join("pegabridge.toml"), "").unwrap();
    let out = send_test(dir.path(), "x@example.net");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no [mail] section"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_mail_section_that_cannot_work_is_refused_naming_its_keys() {
    let dir = project(
        "[mail]\nhost = \"\"\nfrom = \"not an address\"\nmessage_id_domain = \"\"\nusername = \"u\"\n[mail.dkim]\ndomain = \"d\"\nselector = \"s\"\nkey_file = \"missing.pem\"\n",
    );
    let out = pegabridge(dir.path(), &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    for key in [
        "mail.host",
        "mail.from",
        "mail.message_id_domain",
        "mail.username and mail.password",
        "mail.dkim.key_file",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// Waits (at most 20 s) until the SMTP server holds `n` messages.
pub async fn wait_for_mail(smtp: &Smtp, n: usize) -> Vec<PathBuf> {
    let start = std::time::Instant::now();
    loop {
        let m = smtp.messages();
        if m.len() >= n || start.elapsed() > std::time::Duration::from_secs(20) {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A server that sends through `smtp` (retrying after 100 ms, 3 attempts) and delivers to a
/// fresh stand-in Pega.
async fn sending_app(smtp: &Smtp) -> (crate::server::TestApp, crate::pega::Pega) {
    let pega = crate::pega::start_pega().await;
    let extra = format!(
        "{}\n[mail.retry]\nbase_ms = 100\nmax_delay_secs = 1\nmax_attempts = 3\njitter = 0.0\n\n{}",
        mail_section(smtp.port),
        crate::pega::pega_section(&pega, "")
    );
    let (app, _) = crate::server::spawn_app_with("", &extra).await;
    (app, pega)
}

#[tokio::test]
async fn a_trigger_is_mailed_and_its_broadcasts_event_follows_the_relays_acceptance() {
    if !smtp_tools() {
        return;
    }
    crate::backend::each_backend(|| async {
        let smtp = Smtp::start(&["--fail-first", "1"]);
        let (app, pega) = sending_app(&smtp).await;
        let before = pegabridge::event::now();
        let answer: Value = app.trigger_offer().await;
        let ann = &answer["recipients"][0];
        // 451 for the first message, then 250: both mailed, the first one retried.
        let mail = wait_for_mail(&smtp, 2).await;
        assert_eq!(mail.len(), 2);
        let events = crate::pega::wait_for_events(&pega, 2).await;
        assert_eq!(events.len(), 2, "{events:?}");
        let to_ann = mail_to(&mail, "ann@example.com");
        assert_eq!(to_ann["dkim"], true);
        let id = format!("<{}@mail.example>", ann["uuid"].as_str().unwrap());
        assert_eq!(
            to_ann["headers"]["Message-ID"],
            id.as_str(),
            "the personal broadcast's uuid"
        );
        let html = to_ann["parts"][1]["content"].as_str().unwrap();
        assert!(html.contains("Hello Ann"), "{html}");
        let event = crate::pega::by_uuid(&events, &ann["uuid"]);
        assert_eq!(event["metric"], "broadcasts");
        assert_eq!(
            event["broadcast_manual_options"]["UniqueOfferId"],
            "OFFER-1"
        );
        let at = event["broadcast_timestamp"].as_i64().unwrap();
        assert!(
            at >= before,
            "stamped at the relay's acceptance: {at} < {before}"
        );
        assert_eq!(event["metric_timestamp"], event["broadcast_timestamp"]);
    })
    .await;
}

#[tokio::test]
async fn a_recipient_the_relay_refuses_becomes_a_hard_bounce_and_is_suppressed_next_time() {
    if !smtp_tools() {
        return;
    }
    crate::backend::each_backend(|| async {
        let smtp = Smtp::start(&["--reject", "bob@example.org"]);
        let (app, pega) = sending_app(&smtp).await;
        let answer: Value = app.trigger_offer().await;
        let bob = &answer["recipients"][1];
        // Ann's broadcast, and Bob's bounce (no broadcasts event: nothing was sent to him).
        let events = crate::pega::wait_for_events(&pega, 2).await;
        assert_eq!(wait_for_mail(&smtp, 1).await.len(), 1);
        let bounce = hard_bounce_of(&events, bob);
        assert!(
            bounce["bounce_reason"]
                .as_str()
                .unwrap()
                .contains("no such user"),
            "{bounce}"
        );
        assert!(
            events.iter().all(|e| e["uuid"] != bob["uuid"]),
            "{events:?}"
        );
        // Bob is not mailable any more.
        let second = app.trigger_offer_again().await;
        assert_eq!(second["recipients"][1]["status"], "suppressed");
    })
    .await;
}

/// The bounce among `events`, checked to be `recipient`'s hard bounce for an unknown user.
fn hard_bounce_of<'e>(events: &'e [Value], recipient: &Value) -> &'e Value {
    let bounce = events
        .iter()
        .find(|e| e["metric"] == "bounces")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(bounce["customer_id"], recipient["customer_id"]);
    assert_eq!(bounce["bounce_type"], "hard");
    assert_eq!(bounce["bounce_code"], "5.1.1");
    bounce
}

/// A relay that offers PIPELINING (RFC 2920) gets `MAIL FROM`, `RCPT TO` and `DATA` in one
/// write (the server sees the RCPT and DATA waiting when it answers MAIL), and every answer is
/// still known by its stage: a refused recipient is that recipient's hard bounce, and the
/// session goes on (the next trigger's mail is sent, pipelined too).
#[tokio::test]
async fn with_pipelining_the_commands_go_at_once_and_a_refused_recipient_is_still_its_bounce() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&["--pipelining", "--reject", "bob@example.org"]);
    let (app, pega) = sending_app(&smtp).await;
    let answer: Value = app.trigger_offer().await;
    let bob = &answer["recipients"][1];
    let events = crate::pega::wait_for_events(&pega, 2).await;
    hard_bounce_of(&events, bob);
    let second = app.trigger_offer_again().await;
    assert_eq!(second["recipients"][1]["status"], "suppressed");
    let mail = wait_for_mail(&smtp, 2).await;
    assert_eq!(mail.len(), 2, "Ann's two mails");
    for m in &mail {
        let envelope: Value =
            serde_json::from_str(&std::fs::read_to_string(m.with_extension("json")).unwrap())
                .unwrap();
        assert_eq!(envelope["to"], serde_json::json!(["ann@example.com"]));
        assert_eq!(envelope["pipelined"], true, "{envelope}");
        assert_eq!(check(m)["dkim"], true);
    }
}

#[tokio::test]
async fn opens_clicks_and_a_one_click_unsubscribe_come_back_through_signed_links() {
    if !smtp_tools() {
        return;
    }
    crate::backend::each_backend(|| async {
        let smtp = Smtp::start(&[]);
        let pega = crate::pega::start_pega().await;
        let extra = format!(
            "{}\n[tracking]\nbase_url = \"https://mail.example\"\nsecret = \"a tracking secret of more than 32 chars\"\n\n{}",
            mail_section(smtp.port),
            crate::pega::pega_section(&pega, "")
        );
        let (app, _) = crate::server::spawn_app_with("", &extra).await;
        let answer: Value = app.trigger_offer().await;
        let ann = &answer["recipients"][0];
        let mail = wait_for_mail(&smtp, 2).await;
        let m = mail_to(&mail, "ann@example.com");
        assert_eq!(m["dkim"], true);
        let signed = m["dkim_signature"].as_str().unwrap().to_ascii_lowercase();
        assert!(signed.contains("list-unsubscribe:list-unsubscribe-post"), "{signed}");
        let list = m["headers"]["List-Unsubscribe"].as_str().unwrap();
        assert_eq!(m["headers"]["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
        assert!(list.contains("<mailto:help@mail.example?subject=unsubscribe>"), "{list}");
        let html = m["parts"][1]["content"].as_str().unwrap();
        // Served by this app: the routes are the same under the configured base URL.
        let local = |url: &str| url.replace("https://mail.example", &app.address);
        let urls: Vec<&str> = html
            .split('"')
            .filter(|s| s.starts_with("https://mail.example/t/"))
            .collect();
        let link = urls.iter().find(|u| u.contains("/t/c/")).expect("a tracked link");
        let pixel = urls.iter().find(|u| u.contains("/t/o/")).expect("the pixel");
        assert!(!html.contains("href=\"https://shop.example"), "{html}");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let res = client
            .get(local(pixel))
            .header("user-agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "image/gif");
        let res = client.get(local(link)).send().await.unwrap();
        assert_eq!(res.status(), 302);
        assert_eq!(
            res.headers()["location"],
            "https://shop.example/offer?o=OFFER-1"
        );
        let one_click = list
            .split(['<', '>'])
            .find(|s| s.starts_with("https://"))
            .unwrap();
        let page = client.get(local(one_click)).send().await.unwrap();
        assert!(page.text().await.unwrap().contains("<button"));
        let res = client
            .post(local(one_click))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // Twice: recorded once.
        client.post(local(one_click)).send().await.unwrap();
        // Forged: 404, nothing recorded.
        let forged = local(link).replace("/t/c/", "/t/c/x");
        assert_eq!(client.get(&forged).send().await.unwrap().status(), 404);
        let as_open = local(link).replace("/t/c/", "/t/o/");
        assert_eq!(client.get(&as_open).send().await.unwrap().status(), 404);

        // 2 broadcasts, an open, a click, an unsubscribe.
        let events = crate::pega::wait_for_events(&pega, 5).await;
        crate::pega::settled(&app).await;
        let events_now = pega.mock.events();
        assert_eq!(events_now.len(), 5, "{events_now:?}");
        let of = |metric: &str| {
            events
                .iter()
                .find(|e| e["metric"] == metric)
                .unwrap_or_else(|| panic!("no {metric}: {events:?}"))
        };
        for metric in ["opens", "clicks", "unsubscribes"] {
            let e = of(metric);
            assert_eq!(e["customer_id"], ann["customer_id"]);
            assert_eq!(e["broadcast_manual_options"]["UniqueOfferId"], "OFFER-1");
        }
        assert_eq!(of("clicks")["url"], "https://shop.example/offer?o=OFFER-1");
        assert_eq!(of("clicks")["alt"], "See your offer");
        // Unsubscribed: not mailed again.
        let mut again = crate::server::trigger();
        again["Customers"][0]["InteractionID"] = serde_json::json!("11");
        again["Customers"][1]["InteractionID"] = serde_json::json!("12");
        let second: Value = app.post("/webhooks/offer", &again).await.json().await.unwrap();
        assert_eq!(second["recipients"][0]["status"], "suppressed");
    })
    .await;
}

/// The attempts of every send in the app's store.
async fn send_attempts(app: &crate::server::TestApp) -> Vec<i64> {
    let url = &app.store_url;
    if let Some(path) = url.strip_prefix("sqlite://") {
        let c = rusqlite::Connection::open(path).unwrap();
        let mut stmt = c.prepare("SELECT attempts FROM sends ORDER BY id").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM sends ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.into_iter().map(i64::from).collect()
    }
}

#[tokio::test]
async fn mail_queued_while_the_relay_is_down_is_sent_once_it_is_back() {
    if !smtp_tools() {
        return;
    }
    crate::backend::each_backend(|| async {
        // Nothing listens on the relay's port yet.
        let port = crate::processes::free_port();
        let pega = crate::pega::start_pega().await;
        let extra = format!(
            "{}\n[mail.retry]\nbase_ms = 50\nmax_delay_secs = 1\nmax_attempts = 1000\njitter = 0.0\n\n{}",
            mail_section(port),
            crate::pega::pega_section(&pega, "")
        );
        let (app, _) = crate::server::spawn_app_with("", &extra).await;
        let answer: Value = app.trigger_offer().await;
        assert_eq!(answer["recipients"][0]["status"], "queued");
        // Wait until both sends were tried and refused at least twice.
        let start = std::time::Instant::now();
        while send_attempts(&app).await.iter().any(|a| *a < 2) {
            assert!(start.elapsed() < std::time::Duration::from_secs(20), "no retries");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(pega.mock.event_count(), 0, "no broadcasts event before acceptance");
        // The relay comes up on that port: both are sent, and reported.
        let smtp = Smtp::start_on(port, &[]);
        assert_eq!(wait_for_mail(&smtp, 2).await.len(), 2);
        let events = crate::pega::wait_for_events(&pega, 2).await;
        assert!(events.iter().all(|e| e["metric"] == "broadcasts"), "{events:?}");
        assert_eq!(events.len(), 2);
    })
    .await;
}

const BULK_MAPPING: &str = r#"
template = "offer.html"
subject = "An offer"
campaign_id = 1
campaign_name = "Bulk"
campaign_object_id = 1
content_id = 1
content_name = "Bulk"
broadcast_event_type = "CAMPAIGNMAIL"
sub_type = "CAMPAIGNMAIL"
[auth]
type = "bearer"
token = "t"
[recipient]
each = "Customers"
email = "Email"
"#;

/// `serve` killed with SIGKILL in the middle of a bulk send, then started again on the same
/// database: every recipient acknowledged by the trigger's 202 is mailed at least once.
#[tokio::test]
async fn a_server_killed_during_a_bulk_send_mails_every_acknowledged_recipient_after_restart() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&[]);
    let dir = project("");
    std::fs::write(dir.path().join("mappings/bulk.toml"), BULK_MAPPING).unwrap();
    let port = crate::processes::free_port();
    // A lease a little longer than the SMTP timeout: after the kill, the sends it left in
    // flight are taken up again that much later.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://bulk.db\"\n{}",
        mail_section_with(
            smtp.port,
            "timeout_secs = 2\nlease_secs = 3\nmax_sessions = 2"
        )
    );
    let path = dir.path().join("pegabridge.toml");
    std::fs::write(&path, &config).unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut serve = crate::processes::start(&path);
    crate::processes::wait_healthy(&client, &base).await;
    let n = 300;
    let customers: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"Email": format!("r{i}@example.org")}))
        .collect();
    let answer: Value = client
        .post(format!("{base}/webhooks/bulk"))
        .bearer_auth("t")
        .json(&serde_json::json!({"Customers": customers}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acknowledged: std::collections::HashSet<String> = answer["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "queued")
        .map(|r| r["email_address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(acknowledged.len(), n);
    // Killed once some mail went out.
    wait_for_mail(&smtp, 10).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    let before = smtp.messages().len();
    assert!(
        before < n,
        "the kill came too late to test anything: {before}"
    );
    // Started again: what was in flight is taken up when its lease runs out.
    let mut serve = crate::processes::start(&path);
    crate::processes::wait_healthy(&client, &base).await;
    let start = std::time::Instant::now();
    let mailed = loop {
        let to: std::collections::HashSet<String> = smtp
            .messages()
            .iter()
            .filter_map(|m| {
                let envelope = std::fs::read_to_string(m.with_extension("json")).ok()?;
                let v: Value = serde_json::from_str(&envelope).ok()?;
                v["to"][0].as_str().map(str::to_owned)
            })
            .collect();
        if acknowledged.is_subset(&to) || start.elapsed() > std::time::Duration::from_secs(90) {
            break to;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    serve.kill().unwrap();
    let _ = serve.wait();
    let missing: Vec<&String> = acknowledged.difference(&mailed).collect();
    assert!(missing.is_empty(), "never mailed: {missing:?}");
}

#[tokio::test]
async fn through_a_platforms_relay_the_metadata_header_carries_the_pegabridge_key() {
    if !smtp_tools() {
        return;
    }
    for (platform, header, expect) in [
        ("mailgun", "X-Mailgun-Variables", "{\"pegabridge\":\"KEY\"}"),
        (
            "sendgrid",
            "X-SMTPAPI",
            "{\"unique_args\":{\"pegabridge\":\"KEY\"}}",
        ),
        ("postmark", "X-PM-Metadata-pegabridge", "KEY"),
        ("ses", "X-SES-MESSAGE-TAGS", "pegabridge=KEY"),
    ] {
        let smtp = Smtp::start(&[]);
        let pega = crate::pega::start_pega().await;
        let extra = format!(
            "{}\n{}",
            mail_section_with(smtp.port, &format!("platform = \"{platform}\"")),
            crate::pega::pega_section(&pega, "")
        );
        let (app, _) = crate::server::spawn_app_with("", &extra).await;
        let answer: Value = app.trigger_offer().await;
        let key = format!(
            "{}-{}",
            answer["broadcast_id"], answer["recipients"][0]["customer_id"]
        );
        let mail = wait_for_mail(&smtp, 2).await;
        let m = mail_to(&mail, "ann@example.com");
        assert_eq!(
            m["headers"][header],
            expect.replace("KEY", &key),
            "{platform}"
        );
        assert_eq!(m["dkim"], true, "{platform}");
    }
}

/// Truthful engagement through a real SMTP server: the links of the message as it arrived,
/// fetched by a link checker, Apple's privacy proxy (through a trusted proxy) and the person.
#[tokio::test]
async fn a_sent_messages_links_reach_pega_judged_by_who_fetched_them() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&[]);
    let pega = crate::pega::start_pega().await;
    let dir = tempfile::tempdir().unwrap();
    let ranges = dir.path().join("egress-ip-ranges.csv");
    std::fs::write(&ranges, "172.224.226.0/27,GB,GB-EN,London,\n").unwrap();
    let extra = format!(
        "{}\n[tracking]\nbase_url = \"https://mail.example\"\nsecret = \"a tracking secret of more than 32 chars\"\n[engagement]\napple_relay_ranges = \"{}\"\nhold_secs = 1\ntoo_soon_secs = 0\n\n{}",
        mail_section(smtp.port),
        ranges.display(),
        crate::pega::pega_section(&pega, "")
    );
    let (app, _) = crate::server::spawn_app_with("trusted_proxies = [\"127.0.0.1\"]", &extra).await;
    app.trigger_offer().await;
    let mail = wait_for_mail(&smtp, 2).await;
    let m = mail_to(&mail, "ann@example.com");
    let html = m["parts"][1]["content"].as_str().unwrap().to_owned();
    let local = |url: &str| url.replace("https://mail.example", &app.address);
    let urls: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("https://mail.example/t/"))
        .collect();
    let link = local(
        urls.iter()
            .find(|u| u.contains("/t/c/"))
            .expect("a tracked link"),
    );
    let pixel = local(
        urls.iter()
            .find(|u| u.contains("/t/o/"))
            .expect("the pixel"),
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let fetch = |method: reqwest::Method, url: String, ua: &'static str, from: &'static str| {
        let client = client.clone();
        async move {
            let res = client
                .request(method, url)
                .header("user-agent", ua)
                .header("x-forwarded-for", from)
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }
    };
    let person =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)";
    use reqwest::Method;
    assert_eq!(
        fetch(
            Method::HEAD,
            link.clone(),
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            "198.51.100.9"
        )
        .await,
        302
    );
    assert_eq!(
        fetch(Method::GET, pixel.clone(), "Mozilla/5.0", "172.224.226.3").await,
        200
    );
    assert_eq!(
        fetch(Method::GET, pixel.clone(), person, "203.0.113.44").await,
        200
    );
    assert_eq!(
        fetch(Method::GET, link.clone(), person, "203.0.113.44").await,
        302
    );
    // Two broadcasts events, then the four fetches, judged after the hold.
    let events = crate::pega::wait_for_events(&pega, 6).await;
    crate::pega::settled(&app).await;
    let mut seen: Vec<(String, bool, Option<String>)> = events
        .iter()
        .filter(|e| e["metric"] == "opens" || e["metric"] == "clicks")
        .map(|e| {
            (
                e["metric"].as_str().unwrap().to_owned(),
                e["machine_generated"].as_bool().unwrap(),
                e["machine_reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("clicks".into(), false, None),
            ("clicks".into(), true, Some("head".into())),
            ("opens".into(), false, None),
            ("opens".into(), true, Some("apple_mail_privacy".into())),
        ]
    );
}

/// `[mail]` for an aiosmtpd relay on `port` with a password and TLS (`mode`), trusting the
/// test CA when `trust`, presenting the client certificate when `client`.
fn tls_section(
    port: u16,
    pki: &crate::reach::Pki,
    mode: &str,
    trust: bool,
    client: bool,
) -> String {
    let mut s = format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"relay-user\"\npassword = \"relay-secret-9\"\ntimeout_secs = 5\nfrom = \"Offers <offers@mail.example>\"\nreply_to = \"help@mail.example\"\n[mail.tls]\nmode = \"{mode}\"\n"
    );
    if trust {
        s.push_str(&format!("ca_file = {:?}\n", pki.path("ca.pem")));
    }
    if client {
        s.push_str(&format!(
            "client_cert = {:?}\nclient_key = {:?}\n",
            pki.path("client.pem"),
            pki.path("client.key")
        ));
    }
    s.push_str("[mail.retry]\nbase_ms = 20\nmax_delay_secs = 1\nmax_attempts = 2\njitter = 0.0\n");
    s
}

#[tokio::test]
async fn a_relay_with_a_private_ca_takes_mail_over_starttls_and_implicit_tls_and_an_untrusted_one_bounces_nobody(
) {
    if !smtp_tools() {
        return;
    }
    let pki = crate::reach::Pki::new();
    let cert = pki.path("server.pem");
    let key = pki.path("server.key");
    let ca = pki.path("ca.pem");
    let files = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--auth".into(),
            "relay-user:relay-secret-9".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let ca_arg = ca.display().to_string();
    // STARTTLS (required by the relay) with a client certificate the relay requires; implicit
    // TLS; each with the password, trusting the private CA.
    for (args, mode, client) in [
        (files(&["--client-ca", &ca_arg]), "starttls", true),
        (files(&["--implicit-tls"]), "tls", false),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let smtp = Smtp::start(&args);
        let pega = crate::pega::start_pega().await;
        let extra = format!(
            "{}\n{}",
            tls_section(smtp.port, &pki, mode, true, client),
            crate::pega::pega_section(&pega, "")
        );
        let (app, _) = crate::server::spawn_app_with("", &extra).await;
        app.trigger_offer().await;
        let mail = wait_for_mail(&smtp, 2).await;
        assert_eq!(mail.len(), 2, "{mode}: both mailed");
        let statuses = crate::relay::sends_settled(&app).await;
        assert_eq!(statuses, ["sent", "sent"], "{mode}");
    }
    // The relay's certificate is not trusted (no ca_file): the sends end dead, nobody bounced.
    let args = files(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let smtp = Smtp::start(&args);
    let pega = crate::pega::start_pega().await;
    let extra = format!(
        "{}\n{}",
        tls_section(smtp.port, &pki, "starttls", false, false),
        crate::pega::pega_section(&pega, "")
    );
    let (app, _) = crate::server::spawn_app_with("", &extra).await;
    app.trigger_offer().await;
    let statuses = crate::relay::sends_settled(&app).await;
    assert_eq!(statuses, ["dead", "dead"], "an untrusted relay");
    assert!(smtp.messages().is_empty());
    crate::pega::settled(&app).await;
    assert!(pega.mock.events().iter().all(|e| e["metric"] != "bounces"));
}

#[test]
fn plaintext_with_a_password_is_refused_at_load_naming_the_key() {
    let dir = project(&mail_section_with(
        2525,
        "username = \"u\"\npassword = \"p\"",
    ));
    let out = pegabridge(dir.path(), &["config", "check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("mail.tls"), "{err}");
    assert!(!err.contains("\"p\""), "{err}");
}

#[test]
fn send_test_sends_what_serve_sends_tracked_links_the_pixel_and_one_click_unsubscribe() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&[]);
    let config = format!(
        "{}\n[tracking]\nbase_url = \"https://mail.example\"\nsecret = \"a tracking secret of more than 32 chars\"\n",
        mail_section(smtp.port)
    );
    let dir = project(&config);
    let out = send_test(dir.path(), "check@example.net");
    assert!(out.status.success(), "{}", stderr(&out));
    let m = check(&smtp.messages()[0]);
    let unsubscribe = m["headers"]["List-Unsubscribe"].as_str().unwrap();
    assert!(
        unsubscribe.contains("<https://mail.example/t/u/") && unsubscribe.contains("mailto:"),
        "{unsubscribe}"
    );
    assert_eq!(
        m["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
    let html = m["parts"][1]["content"].as_str().unwrap();
    assert!(html.contains("https://mail.example/t/c/"), "{html}");
    assert_eq!(
        html.matches("https://mail.example/t/o/").count(),
        1,
        "{html}"
    );
    assert_eq!(m["dkim"], true);
}

#[test]
fn config_check_connect_opens_a_relay_session_and_no_log_shows_the_password() {
    if !smtp_tools() {
        return;
    }
    let pki = crate::reach::Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let smtp = Smtp::start(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--auth",
        "relay-user:relay-secret-9",
    ]);
    let run = |password: &str| {
        let section = tls_section(smtp.port, &pki, "starttls", true, false)
            .replace("relay-secret-9", password);
        let dir = project(&section);
        let out = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
            .args(["config", "check", "--connect"])
            .current_dir(dir.path())
            .env_remove("PEGABRIDGE_CONFIG")
            .env("RUST_LOG", "trace")
            .env("PEGABRIDGE_LOG_WIRE", "1")
            .output()
            .unwrap();
        (out.status.code(), stdout(&out), stderr(&out))
    };
    let (code, out, err) = run("relay-secret-9");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("mail relay ok") && out.contains("STARTTLS, authenticated"),
        "{out}"
    );
    let (code, out, err) = run("a-rotated-password");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("mail relay") && err.contains("535"), "{err}");
    assert!(smtp.messages().is_empty(), "nothing is sent");
    // Neither the password nor AUTH PLAIN's base64 of it appears at any level.
    use base64::Engine;
    for (password, all) in [
        ("relay-secret-9", run("relay-secret-9")),
        ("a-rotated-password", run("a-rotated-password")),
    ] {
        let plain =
            base64::engine::general_purpose::STANDARD.encode(format!("\0relay-user\0{password}"));
        let all = format!("{}{}", all.1, all.2);
        assert!(!all.contains(password) && !all.contains(&plain), "{all}");
    }
}

/// The http(s) targets a browser (html5ever) finds in `html`: `<a href>` and `<area href>`
/// resolved under the first `<base href>`, and the `href`s of Outlook conditional comments;
/// only absolute http(s) URLs without control characters. Sorted.
fn browser_targets(html: &str) -> Vec<String> {
    use scraper::{Html, Node, Selector};
    let doc = Html::parse_document(html);
    let base = doc
        .select(&Selector::parse("base[href]").unwrap())
        .next()
        .and_then(|b| url::Url::parse(b.value().attr("href").unwrap().trim()).ok());
    let resolve = |href: &str| -> Option<String> {
        let href = href.trim_matches(|c: char| c <= ' ');
        if href.chars().any(char::is_control) || href.contains("{{") || href.contains("}}") {
            return None;
        }
        let url = match url::Url::parse(href) {
            Ok(u) => u,
            Err(url::ParseError::RelativeUrlWithoutBase) => base.as_ref()?.join(href).ok()?,
            Err(_) => return None,
        };
        (matches!(url.scheme(), "http" | "https") && url.host().is_some()).then(|| url.into())
    };
    let href_re = regex::Regex::new(r#"(?i)\bhref\s*=\s*(?:"([^"]*)"|'([^']*)')"#).unwrap();
    let mut found = Vec::new();
    for node in doc.tree.root().descendants() {
        match node.value() {
            Node::Element(e) if matches!(e.name(), "a" | "area") => {
                if let Some(url) = e.attr("href").and_then(resolve) {
                    found.push(url);
                }
            }
            Node::Comment(c) if c.trim_start().to_ascii_lowercase().starts_with("[if") => {
                for m in href_re.captures_iter(c) {
                    let raw = m.get(1).or_else(|| m.get(2)).unwrap().as_str();
                    if let Some(url) = resolve(&html_escape::decode_html_entities(raw)) {
                        found.push(url);
                    }
                }
            }
            _ => {}
        }
    }
    found.sort();
    found
}

/// The text a browser shows of `html`'s body (script and style left out), words only.
fn visible_words(html: &str) -> Vec<String> {
    use scraper::{Html, Node};
    let doc = Html::parse_document(html);
    let mut words = Vec::new();
    for node in doc.tree.root().descendants() {
        if let Node::Text(t) = node.value() {
            let hidden = node.ancestors().any(|a| {
                a.value()
                    .as_element()
                    .is_some_and(|e| matches!(e.name(), "script" | "style" | "title" | "head"))
            });
            if !hidden {
                words.extend(t.split_whitespace().map(str::to_owned));
            }
        }
    }
    words
}

#[test]
fn every_corpus_template_is_sent_with_exact_links_one_pixel_and_the_same_text() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (templates, mappings) = (dir.path().join("templates"), dir.path().join("mappings"));
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::create_dir_all(&mappings).unwrap();
    let corpus = crate::helpers::templates_under(&root().join("tests/corpus"));
    assert!(corpus.len() >= 80, "{}", corpus.len());
    for (i, path) in corpus.iter().enumerate() {
        std::fs::copy(path, templates.join(format!("t{i:03}.html"))).unwrap();
        let mapping = MAPPING.replace("offer.html", &format!("t{i:03}.html"));
        std::fs::write(mappings.join(format!("t{i:03}.toml")), mapping).unwrap();
    }
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        format!(
            "{}\n[tracking]\nbase_url = \"https://mail.example\"\nsecret = \"a tracking secret of more than 32 chars\"\n",
            mail_section(smtp.port)
        ),
    )
    .unwrap();
    let settings =
        pegabridge::config::Settings::load(Some(&dir.path().join("pegabridge.toml"))).unwrap();
    let loaded = pegabridge::mapping::Mappings::load_configured(&settings).unwrap();
    assert_eq!(loaded.mappings.len(), corpus.len());
    let mail = settings.mail.as_ref().unwrap();
    let composer = pegabridge::mail::Composer::new(mail, settings.tracking.as_ref()).unwrap();
    let tokens = pegabridge::mail::tracking::Tokens::new(settings.tracking.as_ref().unwrap());
    let mut options = serde_json::Map::new();
    options.insert("InteractionId".into(), "-563481321460449721".into());
    options.insert("UniqueOfferId".into(), "OFFER-1".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let relay = runtime
        .block_on(async { pegabridge::mail::Relay::new(mail) })
        .unwrap();
    let mut expected = Vec::new();
    for (i, path) in corpus.iter().enumerate() {
        let mapping = loaded.mappings.get(&format!("t{i:03}")).unwrap();
        let message = composer
            .personal(
                &mapping,
                &format!("c{i:03}@example.com"),
                &format!("u{i:03}"),
                &options,
                (7, i as i64),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        runtime.block_on(relay.send(&message)).unwrap();
        let rendered = pegabridge::template::render::render(&mapping.template_html, &options)
            .unwrap()
            .html;
        expected.push(rendered);
    }
    let mail_files = smtp.messages();
    assert_eq!(mail_files.len(), corpus.len());
    let mut tracked_links = 0;
    for file in &mail_files {
        let m = check(file);
        let to = m["headers"]["To"].as_str().unwrap();
        let i: usize = to[1..4].parse().unwrap();
        let name = corpus[i].display();
        assert_eq!(m["dkim"], true, "{name}");
        let html = m["parts"][1]["content"].as_str().unwrap();
        let original = &expected[i];
        assert_eq!(
            html.matches("https://mail.example/t/o/").count(),
            1,
            "{name}: one pixel"
        );
        // Every link a browser would open goes through a token carrying exactly its target.
        let mut sent: Vec<String> = Vec::new();
        let mut ids: Vec<i64> = Vec::new();
        for token in html
            .split(['"', '\''])
            .filter_map(|s| s.strip_prefix("https://mail.example/t/c/"))
        {
            match tokens.check(pegabridge::mail::tracking::Kind::Click, token) {
                Some(pegabridge::mail::tracking::Target::Click { url, link_id, .. }) => {
                    sent.push(url);
                    ids.push(link_id);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        sent.sort();
        ids.sort();
        assert_eq!(sent, browser_targets(original), "{name}");
        assert_eq!(ids, (1..=sent.len() as i64).collect::<Vec<_>>(), "{name}");
        tracked_links += sent.len();
        // What a person reads is unchanged.
        assert_eq!(
            visible_words(html),
            visible_words(original),
            "{name}: the text a browser shows"
        );
        // The text part: no trailing space, every footnote's URL whole.
        let text = m["parts"][0]["content"].as_str().unwrap();
        for line in text.lines() {
            assert_eq!(line, line.trim_end(), "{name}: trailing space");
            if let Some((_, url)) = line.split_once("]: ") {
                if line.starts_with('[') && url.starts_with("http") {
                    assert!(url::Url::parse(url).is_ok(), "{name}: {line}");
                }
            }
        }
    }
    assert!(tracked_links >= 100, "{tracked_links} links tracked in all");
}
