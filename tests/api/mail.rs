//! Sending through a real SMTP server process (aiosmtpd, `tests/mail/smtp_server.py`) on
//! loopback: what arrives is parsed by Python's MIME parser and its DKIM signature verified
//! by dkimpy (`tests/mail/check_mail.py`). Needs `python3 -m pip install aiosmtpd dkimpy`
//! (`.ci/run` installs them and sets `PEGABRIDGE_REQUIRE_SMTP=1`, so there a missing server
//! fails instead of skipping).

use crate::helpers::{pegabridge, root, stderr, stdout};
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Whether the Python side is there; says so when it is not.
fn smtp_tools() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd, dkim"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("PEGABRIDGE_REQUIRE_SMTP").is_none(),
            "the SMTP test server is missing: python3 -m pip install aiosmtpd dkimpy"
        );
        eprintln!("smtp: skipped (python3 -m pip install aiosmtpd dkimpy)");
    }
    ok
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
        let dir = tempfile::tempdir().unwrap();
        let port = crate::processes::free_port();
        let mut child = Command::new("python3")
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

/// The message parsed and checked.
pub fn check(message: &Path) -> Value {
    let out = Command::new("python3")
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
    format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"Offers <offers@mail.example>\"\nreply_to = \"help@mail.example\"\nmessage_id_domain = \"mail.example\"\n[mail.dkim]\ndomain = \"mail.example\"\nselector = \"s1\"\nkey_file = \"{}\"\n",
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

#[test]
fn send_test_delivers_a_signed_message_with_both_parts_to_a_real_smtp_server() {
    if !smtp_tools() {
        return;
    }
    let smtp = Smtp::start(&[]);
    let dir = project(&mail_section(smtp.port));
    let out = pegabridge(
        dir.path(),
        &[
            "send-test",
            "--mapping",
            "mail",
            "--trigger",
            "trigger.json",
            "--to",
            "check@example.net",
        ],
    );
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
    let out = pegabridge(
        dir.path(),
        &[
            "send-test",
            "--mapping",
            "mail",
            "--trigger",
            "trigger.json",
            "--to",
            "nobody@example.net",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("550"), "{}", stderr(&out));
    assert!(smtp.messages().is_empty());
    // Without [mail]: a clear error, exit 2.
    std::fs::write(dir.path().join("pegabridge.toml"), "").unwrap();
    let out = pegabridge(
        dir.path(),
        &[
            "send-test",
            "--mapping",
            "mail",
            "--trigger",
            "trigger.json",
            "--to",
            "x@example.net",
        ],
    );
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
