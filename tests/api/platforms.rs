//! Mail platforms' event webhooks (`POST /events/{platform}`): the platforms' own signature
//! vectors, their real payloads (copied into `tests/esp/` with their licenses), translated and
//! joined to a stored personal broadcast, arriving at the Pega receiver with its manual
//! options; tampered, replayed and unauthenticated requests refused with nothing stored;
//! resent batches recorded once.

use crate::backend::each_backend;
use crate::helpers::root;
use crate::pega::{pega_section, settled, start_pega, wait_for_events, Pega};
use crate::server::{spawn_app_with, TestApp};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use pegabridge::events::{mailgun, sendgrid};
use serde_json::{json, Value};

fn fixture(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join("tests/esp").join(path)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn sendgrids_official_vectors_verify_and_altered_ones_do_not() {
    let v = fixture("sendgrid/derived/vectors.json");
    let key = |b64: &str| {
        pegabridge::config::events::SendgridSettings {
            public_key: b64.to_owned(),
            max_age_secs: 300,
        }
        .key()
        .unwrap()
    };
    for name in ["single", "multi"] {
        let case = &v[name];
        let body = std::fs::read(
            root()
                .join("tests/esp/sendgrid/derived")
                .join(case["body_file"].as_str().unwrap()),
        )
        .unwrap();
        let k = key(case["public_key_b64_spki_der"].as_str().unwrap());
        let sig = case["header_X-Twilio-Email-Event-Webhook-Signature"]
            .as_str()
            .unwrap();
        let ts = case["header_X-Twilio-Email-Event-Webhook-Timestamp"]
            .as_str()
            .unwrap();
        assert!(sendgrid::verify_parts(&k, sig, ts, &body).is_ok(), "{name}");
        assert!(
            sendgrid::verify_parts(&k, sig, ts, &body[..body.len() - 2]).is_err(),
            "{name}: without the trailing CRLF"
        );
        assert!(sendgrid::verify_parts(&k, sig, "timestamp", &body).is_err());
        let other = key(v["negative"]["wrong_public_key_b64"].as_str().unwrap());
        assert!(sendgrid::verify_parts(&other, sig, ts, &body).is_err());
        let wrong = v["negative"]["wrong_signature_b64"].as_str().unwrap();
        assert!(sendgrid::verify_parts(&k, wrong, ts, &body).is_err());
    }
}

#[test]
fn mailguns_signature_vectors_verify_and_the_bad_one_does_not() {
    let v = fixture("mailgun/derived/signature_vectors.json");
    for (name, case) in v.as_object().unwrap() {
        let Some(expect) = case["expect"]
            .as_str()
            .filter(|e| *e == "valid" || *e == "invalid")
        else {
            continue;
        };
        let s = |k: &str| case[k].as_str().unwrap();
        let ok = mailgun::signature_matches(
            s("signing_key"),
            s("timestamp"),
            s("token"),
            s("signature"),
        );
        assert_eq!(ok, expect == "valid", "{name}");
    }
}

/// This test's SendGrid key (SendGrid keeps its private keys; these sign what the tests send).
fn sendgrid_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
}

fn sendgrid_public() -> String {
    let der = sendgrid_key().verifying_key().to_public_key_der().unwrap();
    STANDARD.encode(der.as_bytes())
}

const MAILGUN_KEY: &str = "key-test-0p6mqbf74lb20gzq9f4dhpn9rg3zyk26";

/// A server delivering to a stand-in, taking events from the three platforms.
async fn app() -> (TestApp, Pega) {
    let pega = start_pega().await;
    let extra = format!(
        "[events.sendgrid]\npublic_key = \"{}\"\n[events.mailgun]\nsigning_key = \"{MAILGUN_KEY}\"\n[events.postmark]\nusername = \"postmark\"\npassword = \"a-long-hook-password\"\n\n{}",
        sendgrid_public(),
        pega_section(&pega, "")
    );
    let (app, _) = spawn_app_with("", &extra).await;
    (app, pega)
}

/// Ann's personal broadcast: its `pegabridge` key and the broadcast's uuid.
async fn ann(app: &TestApp) -> (String, Value) {
    let answer: Value = app.trigger_offer().await;
    let r = &answer["recipients"][0];
    (
        format!("{}-{}", answer["broadcast_id"], r["customer_id"]),
        answer,
    )
}

async fn post_sendgrid(app: &TestApp, body: &[u8], tamper: bool) -> reqwest::Response {
    let ts = pegabridge::event::now().to_string();
    let mut signed = ts.clone().into_bytes();
    signed.extend_from_slice(body);
    let sig: Signature = sendgrid_key().sign(&signed);
    let mut body = body.to_vec();
    if tamper {
        body[10] ^= 1;
    }
    reqwest::Client::new()
        .post(format!("{}/events/sendgrid", app.address))
        .header("content-type", "application/json")
        .header(sendgrid::TIMESTAMP, ts)
        .header(
            sendgrid::SIGNATURE,
            STANDARD.encode(sig.to_der().as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

fn sendgrid_event(name: &str, key: &str) -> Value {
    let mut e = fixture(&format!(
        "sendgrid/anymail/extracted/SendGridDeliveryTestCase.test_{name}.raw_events.json"
    ))["payload"][0]
        .clone();
    e["pegabridge"] = json!(key);
    e
}

#[tokio::test]
async fn sendgrid_events_are_verified_translated_joined_and_recorded_once() {
    each_backend(|| async {
        let (app, pega) = app().await;
        let (key, answer) = ann(&app).await;
        let mut unsubscribe = sendgrid_event("open_event", &key);
        unsubscribe["event"] = json!("group_unsubscribe");
        unsubscribe["sg_event_id"] = json!("unsub-1");
        let mut unmatched = sendgrid_event("open_event", "999999-1");
        unmatched["sg_event_id"] = json!("nobody-1");
        let batch = json!([
            sendgrid_event("open_event", &key),
            sendgrid_event("click_event", &key),
            sendgrid_event("bounce_event", &key),
            sendgrid_event("delivered_event", &key),
            sendgrid_event("dropped_bounced", &key),
            unsubscribe,
            unmatched,
        ]);
        let body = serde_json::to_vec(&batch).unwrap();
        // Tampered: refused, nothing recorded.
        let res = post_sendgrid(&app, &body, true).await;
        assert_eq!(res.status(), 401);
        let res = post_sendgrid(&app, &body, false).await;
        assert_eq!(res.status(), 200);
        let counts: Value = res.json().await.unwrap();
        assert_eq!(
            counts,
            json!({"recorded": 4, "duplicates": 0, "ignored": 2, "unmatched": 1})
        );
        // Resent by SendGrid: no duplicate at Pega.
        let again: Value = post_sendgrid(&app, &body, false)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["duplicates"], 4);
        // 2 broadcasts + open, click, bounce, unsubscribe.
        let events = wait_for_events(&pega, 6).await;
        settled(&app).await;
        assert_eq!(pega.mock.events().len(), 6);
        let ann_id = &answer["recipients"][0]["customer_id"];
        let of = |m: &str| {
            events
                .iter()
                .find(|e| e["metric"] == m)
                .unwrap_or_else(|| panic!("{m}"))
        };
        for m in ["opens", "clicks", "bounces", "unsubscribes"] {
            assert_eq!(of(m)["customer_id"], *ann_id);
            assert_eq!(
                of(m)["broadcast_manual_options"]["UniqueOfferId"],
                "OFFER-1"
            );
        }
        assert_eq!(of("opens")["metric_timestamp"], 1461095250);
        assert!(of("opens")["user_agent"]
            .as_str()
            .unwrap()
            .contains("Firefox"));
        assert_eq!(
            of("clicks")["url"],
            sendgrid_event("click_event", "")["url"]
        );
        assert_eq!(of("bounces")["bounce_type"], "hard");
        assert_eq!(of("bounces")["bounce_code"], "5.1.1");
        // The unmatched event came twice (the batch was resent).
        let metrics = app.metrics().await;
        assert!(
            metrics.contains("pegabridge_events_unmatched_total{platform=\"sendgrid\"} 2"),
            "{metrics}"
        );
    })
    .await;
}

/// The official signed body with its own (years old) headers.
async fn post_official(app: &TestApp, v: &Value) -> reqwest::Response {
    let body = std::fs::read(root().join("tests/esp/sendgrid/derived/single_body.bin")).unwrap();
    let header = |name: &str| {
        v["single"][format!("header_{name}")]
            .as_str()
            .unwrap()
            .to_owned()
    };
    reqwest::Client::new()
        .post(format!("{}/events/sendgrid", app.address))
        .header(sendgrid::SIGNATURE, header(sendgrid::SIGNATURE))
        .header(sendgrid::TIMESTAMP, header(sendgrid::TIMESTAMP))
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sendgrids_official_signed_body_is_accepted_and_its_dropped_event_ignored() {
    let v = fixture("sendgrid/derived/vectors.json");
    let pega = start_pega().await;
    let key = v["single"]["public_key_b64_spki_der"].as_str().unwrap();
    // By default a signature years old is a replay: refused before anything is recorded.
    let extra = format!(
        "[events.sendgrid]\npublic_key = \"{key}\"\n\n{}",
        pega_section(&pega, "")
    );
    let (app, _) = spawn_app_with("", &extra).await;
    let res = post_official(&app, &v).await;
    assert_eq!(res.status(), 401);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "bad_signature");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_age_secs"),
        "{answer}"
    );
    // With the age check off, the official signature verifies.
    let extra = format!(
        "[events.sendgrid]\npublic_key = \"{key}\"\nmax_age_secs = 0\n\n{}",
        pega_section(&pega, "")
    );
    let (app, _) = spawn_app_with("", &extra).await;
    let res = post_official(&app, &v).await;
    assert_eq!(res.status(), 200);
    // A `dropped` event: acknowledged, nothing forwarded.
    let counts: Value = res.json().await.unwrap();
    assert_eq!(counts["ignored"], 1);
}

fn mailgun_request(event: &str, key: &str, timestamp: i64, token: &str) -> Value {
    let mut body = fixture(&format!(
        "mailgun/anymail/extracted/MailgunTestCase.test_{event}.raw_event.json"
    ))["payload"]
        .clone();
    body["event-data"]["user-variables"] = json!({"pegabridge": key});
    let ts = timestamp.to_string();
    body["signature"] = json!({"timestamp": ts, "token": token,
        "signature": mailgun::sign(MAILGUN_KEY, &ts, token)});
    body
}

#[tokio::test]
async fn mailgun_events_are_verified_by_signature_age_and_token_and_translated() {
    each_backend(|| async {
        let (app, pega) = app().await;
        let (key, _) = ann(&app).await;
        let post = |body: Value| {
            let url = format!("{}/events/mailgun", app.address);
            async move {
                reqwest::Client::new()
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
            }
        };
        let now = pegabridge::event::now();
        let bounce = mailgun_request("failed_permanent_event", &key, now, "token-1");
        assert_eq!(post(bounce.clone()).await.status(), 200);
        // The same token again (a replayed request): refused.
        assert_eq!(post(bounce).await.status(), 401);
        let old = mailgun_request("opened_event", &key, now - 3600, "token-2");
        assert_eq!(post(old).await.status(), 401);
        let mut wrong = mailgun_request("opened_event", &key, now, "token-3");
        wrong["signature"]["signature"] =
            json!(mailgun::sign("another-key", &now.to_string(), "token-3"));
        assert_eq!(post(wrong).await.status(), 401);
        let open = mailgun_request("opened_event", &key, now, "token-4");
        assert_eq!(post(open).await.status(), 200);
        let events = wait_for_events(&pega, 4).await;
        settled(&app).await;
        assert_eq!(
            pega.mock.events().len(),
            4,
            "2 broadcasts, a bounce, an open"
        );
        let bounce = events.iter().find(|e| e["metric"] == "bounces").unwrap();
        assert_eq!(bounce["bounce_type"], "hard");
        assert_eq!(bounce["bounce_code"], "5.1.1");
        assert_eq!(bounce["metric_timestamp"], 1534110422);
        assert!(events.iter().any(|e| e["metric"] == "opens"));
    })
    .await;
}

#[tokio::test]
async fn postmark_events_need_the_hooks_basic_auth() {
    each_backend(|| async {
        let (app, pega) = app().await;
        let (key, _) = ann(&app).await;
        let mut open = fixture(
            "postmark/anymail/extracted/PostmarkDeliveryTestCase.test_open_event.raw_event.json",
        )["payload"]
            .clone();
        open["Metadata"] = json!({"pegabridge": key});
        let url = format!("{}/events/postmark", app.address);
        let client = reqwest::Client::new();
        let res = client
            .post(&url)
            .basic_auth("postmark", Some("wrong"))
            .json(&open)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let res = client
            .post(&url)
            .basic_auth("postmark", Some("a-long-hook-password"))
            .json(&open)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let events = wait_for_events(&pega, 3).await;
        assert!(events.iter().any(|e| e["metric"] == "opens"), "{events:?}");
    })
    .await;
}

#[test]
fn mandrills_signature_vectors_reproduce() {
    use pegabridge::events::mandrill;
    let v = fixture("mandrill/derived/signature_vectors.json");
    let click_body =
        std::fs::read(root().join("tests/esp/mandrill/derived/click_body.form")).unwrap();
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&click_body).unwrap();
    let c = &v["click"];
    assert_eq!(
        mandrill::sign(
            c["key"].as_str().unwrap(),
            c["url"].as_str().unwrap(),
            &fields
        ),
        c["X-Mandrill-Signature"]
    );
    for name in ["url_check_empty_batch", "query_string_url"] {
        let case = &v[name];
        let fields: Vec<(String, String)> = case["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let sig = mandrill::sign(
            case["key"].as_str().unwrap(),
            case["url"].as_str().unwrap(),
            &fields,
        );
        assert_eq!(sig, case["X-Mandrill-Signature"], "{name}");
        let slash = format!("{}/", case["url"].as_str().unwrap());
        assert_ne!(
            mandrill::sign(case["key"].as_str().unwrap(), &slash, &fields),
            sig
        );
    }
}

#[tokio::test]
async fn mandrill_and_sparkpost_events_are_verified_and_translated() {
    use pegabridge::events::mandrill;
    each_backend(|| async {
        let pega = start_pega().await;
        let extra = format!(
            "[events.mandrill]\nkey = \"mandrill-key\"\nurl = \"https://hooks.example/events/mandrill\"\n[events.sparkpost]\nusername = \"sparkpost\"\npassword = \"another-long-password\"\n\n{}",
            pega_section(&pega, "")
        );
        let (app, _) = spawn_app_with("", &extra).await;
        let (key, _) = ann(&app).await;
        let client = reqwest::Client::new();
        let url = format!("{}/events/mandrill", app.address);
        assert_eq!(client.head(&url).send().await.unwrap().status(), 200);
        let post = |fields: Vec<(String, String)>, sign_with: &'static str| {
            let sig = mandrill::sign(sign_with, "https://hooks.example/events/mandrill", &fields);
            let body = serde_urlencoded::to_string(&fields).unwrap();
            let req = client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header(mandrill::SIGNATURE, sig)
                .body(body);
            async move { req.send().await.unwrap() }
        };
        // Mandrill's test POST.
        let test = vec![("mandrill_events".to_owned(), "[]".to_owned())];
        assert_eq!(post(test, "test-webhook").await.status(), 200);
        let mut bounce = fixture("mandrill/anymail/extracted/MandrillTrackingTestCase.test_hard_bounce_event.raw_events.json")["payload"].clone();
        bounce[0]["msg"]["metadata"] = json!({"pegabridge": key});
        let fields = vec![("mandrill_events".to_owned(), bounce.to_string())];
        assert_eq!(post(fields.clone(), "test-webhook").await.status(), 401, "events need the real key");
        assert_eq!(post(fields.clone(), "wrong-key").await.status(), 401);
        assert_eq!(post(fields, "mandrill-key").await.status(), 200);

        let mut sp = fixture("sparkpost/anymail/extracted/SparkPostDeliveryTestCase.test_open_event.raw_events.json")["payload"].clone();
        for batch in sp.as_array_mut().unwrap() {
            if let Some(e) = batch["msys"].as_object_mut().and_then(|m| m.values_mut().next()) {
                e["rcpt_meta"] = json!({"pegabridge": key});
            }
        }
        let sp_url = format!("{}/events/sparkpost", app.address);
        let res = client.post(&sp_url).json(&sp).send().await.unwrap();
        assert_eq!(res.status(), 401);
        let res = client
            .post(&sp_url)
            .basic_auth("sparkpost", Some("another-long-password"))
            .json(&sp)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let events = wait_for_events(&pega, 4).await;
        let bounce = events.iter().find(|e| e["metric"] == "bounces").unwrap_or_else(|| panic!("{events:?}"));
        assert_eq!(bounce["bounce_type"], "hard");
        assert_eq!(bounce["bounce_code"], "5.1.1");
        assert!(events.iter().any(|e| e["metric"] == "opens"), "{events:?}");
    })
    .await;
}

#[test]
fn the_official_sns_messages_verify_with_their_pinned_certificate_and_altered_ones_do_not() {
    use pegabridge::events::ses;
    let pem = std::fs::read_to_string(
        root().join("tests/esp/amazon_ses/derived/sns_cert_7ff5318490ec183fbaddaa2a969abfda.pem"),
    )
    .unwrap();
    let key = pegabridge::config::events::certificate_key(&pem).unwrap();
    let messages = fixture("amazon_ses/derived/sns_signed_notifications.json");
    let mut versions = std::collections::HashSet::new();
    for m in messages.as_array().unwrap() {
        assert!(ses::verify_signature(m, &key).is_ok(), "{}", m["MessageId"]);
        versions.insert(m["SignatureVersion"].as_str().unwrap().to_owned());
        let mut altered = m.clone();
        altered["Message"] = json!("Hello world!");
        assert!(ses::verify_signature(&altered, &key).is_err());
    }
    assert_eq!(versions.len(), 2, "versions 1 and 2");
}

/// An SNS notification carrying `event`, signed with this test's key (the certificate
/// `tests/esp/amazon_ses/test-signing-cert.pem` holds its public half).
fn sns_notification(event: &Value, topic: &str, cert_url: &str) -> Value {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let mut m = json!({
        "Type": "Notification",
        "MessageId": uuid::Uuid::new_v4().to_string(),
        "TopicArn": topic,
        "Message": event.to_string(),
        "Timestamp": "2026-12-02T10:00:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": cert_url,
    });
    let text = pegabridge::events::ses::canonical(&m).unwrap();
    let pem = std::fs::read_to_string(root().join("tests/mail/dkim-test.key")).unwrap();
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(&pem).unwrap();
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    m["Signature"] = json!(STANDARD.encode(signer.sign(text.as_bytes()).to_bytes()));
    m
}

#[tokio::test]
async fn ses_events_arrive_through_sns_from_allowed_topics_only() {
    each_backend(|| async {
        let pega = start_pega().await;
        let topic = "arn:aws:sns:eu-west-1:123456789012:ses-events";
        let extra = format!(
            "[events.ses]\ntopics = [\"{topic}\"]\ncertificate_file = \"{}\"\n\n{}",
            root()
                .join("tests/esp/amazon_ses/test-signing-cert.pem")
                .display(),
            pega_section(&pega, "")
        );
        let (app, _) = spawn_app_with("", &extra).await;
        let (key, _) = ann(&app).await;
        let cert_url = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem";
        let mut bounce = fixture("amazon_ses/derived/ses_event_Bounce.json");
        bounce["mail"]["tags"] = json!({"pegabridge": [key]});
        let url = format!("{}/events/ses", app.address);
        let post = |m: Value| {
            let req = reqwest::Client::new()
                .post(&url)
                .header("content-type", "text/plain; charset=UTF-8")
                .body(m.to_string());
            async move { req.send().await.unwrap() }
        };
        let other_topic = sns_notification(
            &bounce,
            "arn:aws:sns:eu-west-1:123456789012:other",
            cert_url,
        );
        assert_eq!(post(other_topic).await.status(), 401);
        let elsewhere = sns_notification(&bounce, topic, "https://evil.example/cert.pem");
        assert_eq!(post(elsewhere).await.status(), 401);
        let mut altered = sns_notification(&bounce, topic, cert_url);
        altered["Message"] = json!(altered["Message"]
            .as_str()
            .unwrap()
            .replace("5.1.1", "5.1.2"));
        assert_eq!(post(altered).await.status(), 401);
        let good = sns_notification(&bounce, topic, cert_url);
        assert_eq!(post(good.clone()).await.status(), 200);
        // Resent by SNS: once at Pega.
        let again: Value = post(good).await.json().await.unwrap();
        assert_eq!(again["duplicates"], 1);
        let events = wait_for_events(&pega, 3).await;
        settled(&app).await;
        assert_eq!(pega.mock.events().len(), 3);
        let b = events.iter().find(|e| e["metric"] == "bounces").unwrap();
        assert_eq!(b["bounce_type"], "hard");
        assert_eq!(b["bounce_code"], "5.1.1");
        assert_eq!(b["metric_timestamp"], 1501893662);
    })
    .await;
}

/// Every event of the shared fixtures, translated: the metric each becomes (`None`: not
/// forwarded), and the fields that must come through.
#[test]
fn every_fixture_event_translates_to_its_metric() {
    use pegabridge::events::{mailgun, mandrill, postmark, sendgrid, ses, sparkpost, Translated};
    let dir = root().join("tests/esp");
    let read = |p: &str| -> Value { fixture(p)["payload"].clone() };
    let metric = |t: &Translated| t.activity.as_ref().map(|a| a.metric.clone());
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("sendgrid", "bounce_event", Some("bounces")),
        ("sendgrid", "click_event", Some("clicks")),
        ("sendgrid", "compatibility_message_id_from_smtp_id", None),
        ("sendgrid", "deferred_event", None),
        ("sendgrid", "delivered_event", None),
        ("sendgrid", "dropped_bounced", None),
        ("sendgrid", "dropped_invalid_event", None),
        ("sendgrid", "dropped_unsubscribed_event", None),
        ("sendgrid", "open_event", Some("opens")),
        ("sendgrid", "processed_event", None),
        ("mailgun", "clicked_event", Some("clicks")),
        ("mailgun", "complained_event", Some("complaints")),
        ("mailgun", "delivered_event", None),
        ("mailgun", "delivery_status_is_none_event", None),
        ("mailgun", "failed_greylisted_event", Some("bounces")),
        ("mailgun", "failed_permanent_event", Some("bounces")),
        ("mailgun", "failed_temporary_event", Some("bounces")),
        ("mailgun", "opened_event", Some("opens")),
        ("mailgun", "rejected_event", None),
        ("mailgun", "unsubscribed_event", Some("unsubscribes")),
        ("postmark", "bounce_event", Some("bounces")),
        (
            "postmark",
            "bounce_unsubscribe_variant",
            Some("unsubscribes"),
        ),
        ("postmark", "click_event", Some("clicks")),
        ("postmark", "delivered_event", None),
        ("postmark", "open_event", Some("opens")),
        ("postmark", "resubscribe", None),
        ("postmark", "spam_event", Some("complaints")),
        ("postmark", "subscription_change_bounce", None),
        ("postmark", "unsubscribe", Some("unsubscribes")),
        ("sparkpost", "bounce_event", Some("bounces")),
        ("sparkpost", "click_event", Some("clicks")),
        ("sparkpost", "delay_event", None),
        ("sparkpost", "delivery_event", None),
        ("sparkpost", "injection_event", None),
        ("sparkpost", "open_event", Some("opens")),
        ("sparkpost", "initial_open_event_as_opened", Some("opens")),
        ("sparkpost", "unsubscribe_event", Some("unsubscribes")),
        ("mandrill", "click_event", Some("clicks")),
        ("mandrill", "hard_bounce_event", Some("bounces")),
        ("mandrill", "send_event", None),
        ("ses", "bounce_event", Some("bounces")),
        ("ses", "click_event", Some("clicks")),
        ("ses", "complaint_event", Some("complaints")),
        ("ses", "delivery_event", None),
        ("ses", "open_event", Some("opens")),
        ("ses", "reject_event", None),
        ("ses", "rendering_failure_event", None),
        ("ses", "send_event", None),
    ];
    let file = |platform: &str, name: &str| -> String {
        let folder = if platform == "ses" {
            "amazon_ses"
        } else {
            platform
        };
        let entries = std::fs::read_dir(dir.join(folder).join("anymail/extracted")).unwrap();
        let found = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|f| {
                !f.contains("Legacy")
                    && f.split('.').nth(1) == Some(&format!("test_{name}"))
                    && !f.ends_with(".metadata.json")
            })
            .unwrap_or_else(|| panic!("{platform} {name}"));
        format!("{folder}/anymail/extracted/{found}")
    };
    for (platform, name, expect) in cases {
        let payload = read(&file(platform, name));
        let translated = match platform {
            "sendgrid" => sendgrid::translate(&payload),
            "mailgun" => mailgun::translate(&payload),
            "postmark" => postmark::translate(&payload),
            "sparkpost" => sparkpost::translate(&payload),
            "mandrill" => mandrill::translate(&[("mandrill_events".into(), payload.to_string())]),
            "ses" => ses::translate(&json!({"MessageId": "m-1", "Message": payload.to_string()})),
            _ => unreachable!(),
        }
        .unwrap_or_else(|e| panic!("{platform} {name}: {e}"));
        let first = &translated[0];
        assert_eq!(metric(first).as_deref(), expect, "{platform} {name}");
        assert!(!first.id.is_empty(), "{platform} {name}: an id");
        let Some(a) = &first.activity else { continue };
        match expect.unwrap() {
            "clicks" => assert!(
                a.url.as_deref().is_some_and(|u| u.starts_with("http")),
                "{platform} {name}: {a:?}"
            ),
            "bounces" => {
                assert!(
                    matches!(a.bounce_type.as_deref(), Some("hard" | "soft")),
                    "{platform} {name}"
                );
                assert!(a.bounce_reason.is_some(), "{platform} {name}: {a:?}");
            }
            _ => {}
        }
        // The hard bounces of the fixtures carry the enhanced status 5.1.1.
        if name.contains("permanent")
            || name == "hard_bounce_event"
            || (name == "bounce_event" && platform != "postmark")
        {
            assert_eq!(a.bounce_type.as_deref(), Some("hard"), "{platform} {name}");
            assert_eq!(a.bounce_code.as_deref(), Some("5.1.1"), "{platform} {name}");
        }
    }
}

#[tokio::test]
async fn an_sns_certificate_that_cannot_be_fetched_is_not_fetched_again_for_each_request() {
    // No pinned certificate: the URL is fetched. This machine reaches no AWS host, so the
    // fetch fails; the failure is remembered and the next requests are refused without one.
    let certificates = pegabridge::events::ses::Certificates::new(None).unwrap();
    let long_path = "a".repeat(100_000);
    let m =
        json!({"SigningCertURL": format!("https://sns.us-east-1.amazonaws.com/{long_path}.pem")});
    for _ in 0..5 {
        let refused = certificates.key(&m).await.unwrap_err().to_string();
        assert!(refused.contains("signing certificate"), "{refused}");
        assert!(
            refused.len() < 1024,
            "the caller's URL is not quoted whole: {} bytes",
            refused.len()
        );
    }
    assert_eq!(
        certificates.attempts(),
        1,
        "fetched once, not once per request"
    );
    // A URL outside AWS's SNS hosts is never fetched, and is quoted cut short.
    let elsewhere = json!({"SigningCertURL": format!("https://sns.example.com/{long_path}.pem")});
    let refused = certificates.key(&elsewhere).await.unwrap_err().to_string();
    assert!(refused.len() < 200, "{} bytes", refused.len());
    assert_eq!(certificates.attempts(), 1);
}

#[tokio::test]
async fn a_refused_platform_request_quotes_the_callers_values_cut_short() {
    let extra = "[events.ses]\ntopics = [\"arn:aws:sns:us-east-1:123456789012:pegabridge\"]\n";
    let (app, _) = spawn_app_with("body_limit = 4194304", extra).await;
    let huge = "x".repeat(900_000);
    for m in [
        json!({"Type": "Notification", "TopicArn": huge}),
        json!({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:123456789012:pegabridge",
               "SigningCertURL": format!("https://evil.example/{huge}")}),
    ] {
        let res = reqwest::Client::new()
            .post(format!("{}/events/ses", app.address))
            .body(m.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let text = res.text().await.unwrap();
        assert!(text.len() < 1024, "a bounded answer: {} bytes", text.len());
    }
}
