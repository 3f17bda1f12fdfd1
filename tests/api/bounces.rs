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
    let mut again = crate::server::trigger();
    again["Customers"][0]["InteractionID"] = serde_json::json!("7");
    again["Customers"][1]["InteractionID"] = serde_json::json!("8");
    let second: Value = app
        .post("/webhooks/offer", &again)
        .await
        .json()
        .await
        .unwrap();
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
