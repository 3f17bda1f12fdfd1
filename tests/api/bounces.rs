//! Late bounces and complaints (`[bounces]`): mail goes out with a return path per message,
//! and real delivery status notifications and feedback reports (tests/bounces, sisimai's,
//! BSD 2-Clause) fed to `pegabridge bounces ingest` as a pipe transport would become bounces
//! and complaints in Pega, once each; forged return paths and auto-replies record nothing.

use crate::helpers::{stderr, stdout};
use crate::mail::{check, mail_section, smtp_tools, wait_for_mail, Smtp};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

const BOUNCES: &str = "[bounces]\ndomain = \"bounce.example.com\"\nsecret = \"a bounce secret of more than 32 characters\"\n";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(crate::helpers::root().join("tests/bounces").join(name)).unwrap()
}

/// `pegabridge bounces ingest --recipient RCPT` in the app's folder with `message` on stdin.
fn ingest(app: &crate::server::TestApp, recipient: &str, message: &[u8]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args(["bounces", "ingest", "--recipient", recipient])
        .current_dir(app.dir.path())
        .env_remove("PEGABRIDGE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// The envelope sender of the message to `to`.
fn return_path(smtp: &Smtp, to: &str) -> String {
    for eml in smtp.messages() {
        let envelope: Value =
            serde_json::from_str(&std::fs::read_to_string(eml.with_extension("json")).unwrap())
                .unwrap();
        if envelope["to"][0] == to {
            return envelope["from"].as_str().unwrap().to_owned();
        }
    }
    panic!("no mail to {to}");
}

#[tokio::test]
async fn late_bounces_and_complaints_reach_pega_once_through_each_messages_return_path() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&[]);
    let pega = crate::pega::start_pega().await;
    let extra = format!(
        "{}\n{BOUNCES}\n{}",
        mail_section(smtp.port),
        crate::pega::pega_section(&pega, "")
    );
    let (app, _) = crate::server::spawn_app_with("", &extra).await;
    let answer = app.trigger_offer().await;
    let mail = wait_for_mail(&smtp, 2).await;
    assert_eq!(mail.len(), 2);
    let (ann, bob) = ("ann@example.com", "bob@example.org");
    let ann_path = return_path(&smtp, ann);
    let bob_path = return_path(&smtp, bob);
    assert!(
        ann_path.ends_with("@bounce.example.com") && ann_path.starts_with("b-"),
        "{ann_path}"
    );
    assert_ne!(ann_path, bob_path, "one return path per message");
    for m in &mail {
        let m = check(m);
        assert_eq!(m["dkim"], true, "the signature is unchanged");
        assert_eq!(m["headers"]["From"], "Offers <offers@mail.example>");
    }
    crate::pega::wait_for_events(&pega, 2).await;

    // Postfix's DSN of a refused recipient, delivered to Ann's return path: a hard bounce.
    let postfix = fixture("postfix-outlook-541.eml");
    let (code, said) = ingest(&app, &ann_path, &postfix);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("recorded"), "{said}");
    let events = crate::pega::wait_for_events(&pega, 3).await;
    let bounce = events
        .iter()
        .find(|e| e["metric"] == "bounces")
        .expect("a bounce");
    assert_eq!(bounce["customer_email_address"], ann);
    assert_eq!(bounce["bounce_type"], "hard");
    assert_eq!(bounce["bounce_code"], "5.4.1");
    assert!(
        bounce["bounce_reason"]
            .as_str()
            .unwrap()
            .contains("Access denied"),
        "{bounce}"
    );
    // The same report again: recorded once.
    let (code, said) = ingest(&app, &ann_path, &postfix);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("duplicate"), "{said}");

    // Hotmail's mailbox full for Bob: soft, Bob stays mailable.
    let (code, said) = ingest(&app, &bob_path, &fixture("hotmail-mailbox-full.eml"));
    assert_eq!(code, 0, "{said}");
    // A forged return path and an out-of-office reply record nothing.
    let forged = bob_path.replacen("b-", "b-9", 1);
    let (code, said) = ingest(&app, &forged, &fixture("postfix-outlook-541.eml"));
    assert_eq!((code, said.contains("unmatched")), (0, true), "{said}");
    // Yahoo's policy refusal (DMARC, 5.7.9) is the sender's problem: nothing recorded.
    let (code, said) = ingest(&app, &bob_path, &fixture("yahoo-policy-579.eml"));
    assert_eq!((code, said.contains("ignored")), (0, true), "{said}");
    assert!(said.contains("policy"), "{said}");
    let ooo = format!("From: Bob <{bob}>\r\nTo: {bob_path}\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\nMessage-ID: <ooo-1@example.org>\r\n\r\nI am away until Monday.\r\n");
    let (code, said) = ingest(&app, &bob_path, ooo.as_bytes());
    assert_eq!((code, said.contains("ignored")), (0, true), "{said}");
    let events = crate::pega::wait_for_events(&pega, 4).await;
    crate::pega::settled(&app).await;
    let bounces: Vec<&Value> = events.iter().filter(|e| e["metric"] == "bounces").collect();
    assert_eq!(bounces.len(), 2, "{events:?}");
    let soft = bounces
        .iter()
        .find(|e| e["customer_email_address"] == bob)
        .unwrap();
    assert_eq!(soft["bounce_type"], "soft");
    assert_eq!(soft["bounce_code"], "5.2.2");

    // An abuse report from a feedback loop, at any address of the bounce domain, naming
    // Bob's return path as the original sender: a complaint, and Bob is suppressed.
    let arf = String::from_utf8(fixture("returnpath-fbl-abuse.eml"))
        .unwrap()
        .replace("fake.sender@example.net", &bob_path);
    let (code, said) = ingest(&app, "fbl@bounce.example.com", arf.as_bytes());
    assert_eq!(code, 0, "{said}");
    let events = crate::pega::wait_for_events(&pega, 5).await;
    let complaint = events
        .iter()
        .find(|e| e["metric"] == "complaints")
        .expect("a complaint");
    assert_eq!(complaint["customer_email_address"], bob);

    // Next time, neither is mailable.
    let second = app.trigger_offer_again().await;
    let statuses: Vec<&str> = second["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["suppressed", "suppressed"],
        "{second} after {answer}"
    );
}

/// A line-by-line SMTP client on `port`.
struct Client {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(port: u16) -> (Self, String) {
        use tokio::io::AsyncBufReadExt;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (read, write) = tcp.into_split();
        let mut c = Client {
            lines: tokio::io::BufReader::new(read).lines(),
            write,
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    /// The next reply (its lines joined), or "" when the server closed.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        while let Ok(Some(line)) = self.lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        all
    }

    async fn say(&mut self, line: &str) -> String {
        use tokio::io::AsyncWriteExt;
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// Sends `message` as data (CRLF line ends, dot-stuffed).
    async fn data(&mut self, message: &[u8]) -> String {
        use tokio::io::AsyncWriteExt;
        assert!(self.say("DATA").await.starts_with("354"));
        let text = String::from_utf8_lossy(message).replace("\r\n", "\n");
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with('.') {
                out.push('.');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(".\r\n");
        self.write.write_all(out.as_bytes()).await.unwrap();
        self.reply().await
    }
}

#[tokio::test]
async fn the_bounce_listener_takes_reports_for_its_domain_only_within_its_bounds() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&[]);
    let pega = crate::pega::start_pega().await;
    let port = crate::processes::free_port();
    let pki = crate::reach::Pki::new();
    let extra = format!(
        "{}\n{BOUNCES}listen = \"127.0.0.1:{port}\"\nmax_connections = 2\ntimeout_secs = 1\nmax_message_bytes = 8192\ntls_cert = {:?}\ntls_key = {:?}\n\n{}",
        mail_section(smtp.port),
        pki.path("server.pem"),
        pki.path("server.key"),
        crate::pega::pega_section(&pega, "")
    );
    let (app, _) = crate::server::spawn_app_with("", &extra).await;
    app.trigger_offer().await;
    wait_for_mail(&smtp, 2).await;
    let ann_path = return_path(&smtp, "ann@example.com");
    crate::pega::wait_for_events(&pega, 2).await;

    let (mut c, greeting) = Client::connect(port).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    let ehlo = c.say("EHLO mta.example.net").await;
    assert!(
        ehlo.contains("SIZE 8192") && ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(
        c.say("MAIL FROM:<> SIZE=999999").await.starts_with("552"),
        "announced too big"
    );
    assert!(c.say("MAIL FROM:<>").await.starts_with("250"));
    let relay = c.say("RCPT TO:<someone@example.org>").await;
    assert!(relay.starts_with("550 5.7.1"), "never a relay: {relay}");
    let forged = ann_path.replacen("b-", "b-7", 1);
    let refused = c.say(&format!("RCPT TO:<{forged}>")).await;
    assert!(
        refused.starts_with("550 5.1.1"),
        "a forged return path: {refused}"
    );
    assert!(c
        .say(&format!("RCPT TO:<{ann_path}>"))
        .await
        .starts_with("250"));
    let taken = c.data(&fixture("postfix-outlook-541.eml")).await;
    assert!(taken.starts_with("250"), "{taken}");
    let events = crate::pega::wait_for_events(&pega, 3).await;
    let bounce = events
        .iter()
        .find(|e| e["metric"] == "bounces")
        .expect("a bounce");
    assert_eq!(bounce["bounce_type"], "hard");
    // A message beyond max_message_bytes is read to its end and refused.
    assert!(c.say("MAIL FROM:<>").await.starts_with("250"));
    assert!(c
        .say(&format!("RCPT TO:<{ann_path}>"))
        .await
        .starts_with("250"));
    let lines: Vec<String> = (0..100).map(|_| "x".repeat(98)).collect();
    let big = format!("Subject: big\r\n\r\n{}\r\n", lines.join("\r\n"));
    let too_big = c.data(big.as_bytes()).await;
    assert!(too_big.starts_with("552"), "{too_big}");
    assert!(c.say("QUIT").await.starts_with("221"));

    // A client that says nothing is closed after timeout_secs; at most max_connections at
    // once: the third is told to come back later.
    let (mut slow, _) = Client::connect(port).await;
    let (_second, _) = Client::connect(port).await;
    let (mut third, busy) = Client::connect(port).await;
    assert!(busy.starts_with("421 4.7.0"), "{busy}");
    assert_eq!(third.reply().await, "", "then closed");
    let timed_out = slow.reply().await;
    assert!(timed_out.starts_with("421 4.4.2"), "{timed_out}");
    assert_eq!(slow.reply().await, "");

    // STARTTLS with the configured certificate, then a report over TLS (lettre as the MTA).
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::AsyncTransport;
    let tls = TlsParameters::builder("127.0.0.1".into())
        .add_root_certificate(Certificate::from_pem(pki.ca_cert.as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let mta = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .build();
    let envelope = lettre::address::Envelope::new(None, vec![ann_path.parse().unwrap()]).unwrap();
    let hotmail = fixture("hotmail-mailbox-full.eml");
    mta.send_raw(&envelope, &hotmail)
        .await
        .expect("taken over TLS");
    let events = crate::pega::wait_for_events(&pega, 4).await;
    assert_eq!(
        events.iter().filter(|e| e["metric"] == "bounces").count(),
        2
    );
    let metrics = app.get("/metrics").await.unwrap().text().await.unwrap();
    for (kind, outcome) in [("dsn", "recorded"), ("smtp", "refused")] {
        assert!(
            metrics.contains(&format!(
                "pegabridge_bounce_reports_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"
            )),
            "{metrics}"
        );
    }
}

/// A real Postfix (Debian's package) on loopback ports, configured here: it takes mail from
/// 127.0.0.1 on `port` and routes each listed domain to `[127.0.0.1]:port`. Stopped when
/// dropped. Needs root (Postfix drops to its `postfix` user) and `/usr/sbin/postfix`
/// (`.ci/run` installs it).
struct Postfix {
    conf: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Postfix {
    fn start(routes: &[(&str, u16)]) -> Postfix {
        assert!(
            std::path::Path::new("/usr/sbin/postfix").exists(),
            "this test needs Postfix: apt-get install postfix (.ci/run does)"
        );
        assert!(
            is_root(),
            "this test starts Postfix, which must run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let conf = base.join("conf");
        for d in ["conf", "queue", "data"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(base.join("data"))
            .status()
            .unwrap();
        assert!(chown.success());
        let port = crate::processes::free_port();
        let transport: Vec<String> = routes
            .iter()
            .map(|(domain, port)| format!("{domain}=smtp:[127.0.0.1]:{port}"))
            .collect();
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {q}\ndata_directory = {d}\nmail_owner = postfix\nsetgid_group = postdrop\nmyhostname = relay.test\nmydomain = relay.test\nmyorigin = relay.test\nmydestination =\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject\nsmtp_host_lookup = native\nsmtp_dns_support_level = disabled\ntransport_maps = inline:{{ {t} }}\ndefault_transport = error:no route in the test\nrelay_domains =\nalias_maps =\nalias_database =\nlocal_recipient_maps =\nsmtputf8_enable = no\nmaillog_file_prefixes = {b}\nmaillog_file = {b}/maillog\nbiff = no\nsmtp_tls_security_level = none\nsmtpd_tls_security_level = none\nqueue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n",
            q = base.join("queue").display(),
            d = base.join("data").display(),
            b = base.display(),
            t = transport.join(", "),
        );
        std::fs::write(conf.join("main.cf"), main).unwrap();
        let services = [
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ];
        let master = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n{}\n",
            services.join("\n")
        );
        std::fs::write(conf.join("master.cf"), master).unwrap();
        let started = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .output()
            .unwrap();
        let log = std::fs::read_to_string(base.join("maillog")).unwrap_or_default();
        assert!(started.status.success(), "postfix start: {log}");
        assert!(listening(port), "postfix does not listen: {log}");
        Postfix { conf, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
    }
}

/// Whether a process started by the test listens on `port` within 5 s (another program's
/// start cannot be driven, only awaited).
fn listening(port: u16) -> bool {
    (0..500).any(|_| {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if !up {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        up
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Postfix's `smtp-sink` on a free port: refusing every recipient with `refusal`, or
/// taking everything. Killed when dropped.
struct Sink(std::process::Child, u16);

impl Sink {
    fn start(refusal: Option<&str>) -> Sink {
        let port = crate::processes::free_port();
        let mut cmd = Command::new("/usr/sbin/smtp-sink");
        cmd.args(["-u", "nobody"]);
        if let Some(r) = refusal {
            cmd.args(["-f", "RCPT", "-B", r]);
        }
        let mut child = cmd
            .arg(format!("127.0.0.1:{port}"))
            .arg("10")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink (Debian's postfix package)");
        if listening(port) {
            return Sink(child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("smtp-sink does not listen");
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_postfix_relays_a_refused_message_and_its_own_dsn_suppresses_the_customer() {
    let refuser = Sink::start(Some(
        "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
    ));
    let taker = Sink::start(None);
    let listener = crate::processes::free_port();
    let postfix = Postfix::start(&[
        ("example.com", refuser.1),
        ("example.org", taker.1),
        ("bounce.example.com", listener),
    ]);
    let pega = crate::pega::start_pega().await;
    let extra = format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"Offers <offers@mail.example>\"\nreply_to = \"help@mail.example\"\n\n{BOUNCES}listen = \"127.0.0.1:{listener}\"\n\n{}",
        postfix.port,
        crate::pega::pega_section(&pega, "")
    );
    let (app, _) = crate::server::spawn_app_with("", &extra).await;
    let answer = app.trigger_offer().await;
    // Both taken by Postfix (their broadcasts events), then Ann's refused downstream: Postfix
    // mails its DSN to her return path, pegabridge's listener takes it, Pega gets the bounce.
    let events = crate::pega::wait_for_events(&pega, 3).await;
    let bounce = events
        .iter()
        .find(|e| e["metric"] == "bounces")
        .unwrap_or_else(|| panic!("no bounce: {events:?}\n{}", postfix.log()));
    assert_eq!(bounce["customer_email_address"], "ann@example.com");
    assert_eq!(bounce["bounce_type"], "hard");
    assert_eq!(bounce["bounce_code"], "5.1.1");
    assert!(
        bounce["bounce_reason"]
            .as_str()
            .unwrap()
            .contains("User unknown"),
        "{bounce}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["metric"] == "broadcasts")
            .count(),
        2,
        "{events:?}"
    );
    let second = app.trigger_offer_again().await;
    assert_eq!(
        second["recipients"][0]["status"], "suppressed",
        "{second} after {answer}"
    );
    assert_ne!(second["recipients"][1]["status"], "suppressed", "{second}");
}

#[test]
fn a_bounces_section_that_cannot_work_is_refused_naming_its_keys() {
    let out = crate::helpers::with_config(
        "[bounces]\ndomain = \"not a domain\"\nsecret = \"short\"\nlisten = \"port 25\"\ntls_cert = \"missing.pem\"\n",
        &["config", "check"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    for key in [
        "bounces.domain",
        "bounces.secret",
        "bounces.listen",
        "bounces.tls_cert and tls_key",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    assert!(!err.contains("\"short\""), "the secret is not shown: {err}");
    let out = crate::helpers::with_config("", &["bounces", "ingest"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "without [bounces]: {}",
        stderr(&out)
    );
}
