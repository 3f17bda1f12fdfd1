//! POST /webhooks/{mapping}: answers, storage, idempotency, identifiers.

use crate::server::{each_backend, spawn_app, spawn_app_with, trigger, TOKEN};
use proptest::prelude::*;
use serde_json::{json, Value};

#[tokio::test]
async fn a_bulk_trigger_becomes_one_personal_broadcast_per_recipient() {
    each_backend(|| async {
        let app = spawn_app().await;
        let res = app.post("/webhooks/offer", &trigger()).await;
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        let recipients = body["recipients"].as_array().unwrap();
        assert_eq!(recipients.len(), 2);
        assert_eq!(recipients[0]["email_address"], "ann@example.com");
        assert_eq!(recipients[0]["status"], "queued");
        assert_ne!(recipients[0]["customer_id"], recipients[1]["customer_id"]);

        let events = app.outbox().await;
        assert_eq!(events.len(), 2);
        let ann = &events[0];
        assert_eq!(ann["metric"], "broadcasts");
        assert_eq!(ann["metric_id"], 0);
        assert_eq!(ann["uuid"], recipients[0]["uuid"]);
        assert_eq!(ann["broadcast_id"], body["broadcast_id"]);
        assert_eq!(ann["customer_id"], recipients[0]["customer_id"]);
        assert_eq!(ann["portal_name"], "mokup");
        assert_eq!(ann["external_id"], "c1");
        assert_eq!(ann["email_domain"], "example.com");
        assert_eq!(ann["broadcast_event_type"], "CAMPAIGNMAIL");
        assert_eq!(
            ann["broadcast_manual_options"],
            json!({"FirstName": "Ann", "InteractionId": "-563481321460449721",
               "OfferText": "We picked something for you.", "UniqueOfferId": "OFFER-1"})
        );
        assert_eq!(
            events[1]["broadcast_manual_options"]["InteractionId"],
            json!(18446744073709551615u64)
        );
        assert_eq!(events[1]["broadcast_manual_options"]["FirstName"], "there");
    })
    .await;
}

#[tokio::test]
async fn every_event_carries_the_seeds_common_fields() {
    each_backend(|| async {
        let app = spawn_app().await;
        app.post("/webhooks/offer", &trigger()).await;
        let event = &app.outbox().await[0];
        for key in [
            "uuid",
            "metric",
            "metric_timestamp",
            "metric_id",
            "portal_id",
            "portal_name",
            "brand_id",
            "brand_name",
            "customer_id",
            "external_id",
            "customer_email_address",
            "email_address",
            "email_domain",
            "campaign_id",
            "campaign_name",
            "campaign_object_id",
            "broadcast_id",
            "broadcast_timestamp",
            "broadcast_type",
            "broadcast_event_type",
            "sub_type",
            "content_id",
            "content_name",
            "subject",
            "mailing_type",
            "test_mailing",
            "email_address_override",
            "broadcast_manual_options",
        ] {
            assert!(event.get(key).is_some(), "missing {key}");
        }
        assert_eq!(event.as_object().unwrap().len(), 28);
    })
    .await;
}

#[tokio::test]
async fn an_unknown_mapping_is_404() {
    each_backend(|| async {
        let app = spawn_app().await;
        let res = app.post("/webhooks/nope", &trigger()).await;
        assert_eq!(res.status(), 404);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    })
    .await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_with_a_challenge_and_stores_nothing() {
    each_backend(|| async {
        let app = spawn_app().await;
        for auth in [None, Some("Bearer wrong"), Some("Basic dGVzdA==")] {
            let mut req = app.client.post(app.url("/webhooks/offer")).json(&trigger());
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401);
            assert_eq!(
                res.headers()["www-authenticate"],
                "Bearer realm=\"pegabridge\""
            );
            let body: Value = res.json().await.unwrap();
            assert!(!body.to_string().contains(TOKEN));
        }
        assert!(app.outbox().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn basic_auth_mappings_check_username_and_password() {
    each_backend(|| async {
        let app = spawn_app().await;
        let body = json!({"customer": {"email": "c@x.nl"}, "interaction": -1, "offer": "O"});
        let bad = app.post_basic("nope", &body).await;
        assert_eq!(bad.status(), 401);
        assert_eq!(
            bad.headers()["www-authenticate"],
            "Basic realm=\"pegabridge\""
        );
        let ok = app.post_basic("s3cret", &body).await;
        assert_eq!(ok.status(), 202);
        assert_eq!(
            app.outbox().await[0]["broadcast_manual_options"]["InteractionId"],
            -1
        );
    })
    .await;
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_415_or_400() {
    each_backend(|| async {
        let app = spawn_app().await;
        let text = app.post_raw("/webhooks/offer", "text/plain", "{}").await;
        assert_eq!(text.status(), 415);
        let body: Value = text.json().await.unwrap();
        assert_eq!(body["error"]["field"], "Content-Type");
        let broken = app
            .post_raw("/webhooks/offer", "application/json", "{\"a\":")
            .await;
        assert_eq!(broken.status(), 400);
        let body: Value = broken.json().await.unwrap();
        assert_eq!(body["error"]["code"], "malformed_json");
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    each_backend(|| async {
        let app = spawn_app().await;
        let big = json!({"pad": "x".repeat(10_000)});
        let res = app.post("/webhooks/offer", &big).await;
        assert_eq!(res.status(), 413);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large");
    })
    .await;
}

#[tokio::test]
async fn failing_rules_give_422_listing_every_failing_field_with_its_path() {
    each_backend(|| async {
        let app = spawn_app().await;
        let bad = json!({"Customers": [
            {"Email": "not-an-address", "InteractionID": "12"},
            {"Email": "ok@example.com", "InteractionID": "12abc"}
        ]});
        let res = app.post("/webhooks/offer", &bad).await;
        assert_eq!(res.status(), 422);
        let body: Value = res.json().await.unwrap();
        let fields: Vec<(String, String)> = body["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["field"].as_str().unwrap().to_owned(),
                    f["path"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            fields.contains(&("recipient.email".into(), "Customers.0.Email".into())),
            "{fields:?}"
        );
        assert!(
            fields.contains(&(
                "variables.UniqueOfferId".into(),
                "Offer.UniqueOfferId".into()
            )),
            "{fields:?}"
        );
        assert!(
            fields.contains(&(
                "variables.InteractionId".into(),
                "Customers.1.InteractionID".into()
            )),
            "{fields:?}"
        );
        assert_eq!(fields.len(), 4, "{fields:?}");
        assert!(app.outbox().await.is_empty(), "nothing half-written");
    })
    .await;
}

#[tokio::test]
async fn the_same_idempotency_key_gives_the_same_answer_and_no_second_broadcast() {
    each_backend(|| async {
        let app = spawn_app().await;
        let send = || {
            app.client
                .post(app.url("/webhooks/single"))
                .basic_auth("pega", Some("s3cret"))
                .header("Idempotency-Key", "abc-1")
                .json(&json!({"customer": {"email": "c@x.nl"}, "interaction": 5}))
                .send()
        };
        let first: Value = send().await.unwrap().json().await.unwrap();
        let second = send().await.unwrap();
        assert_eq!(second.status(), 202);
        assert_eq!(second.json::<Value>().await.unwrap(), first);
        let events = app.outbox().await;
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0]["broadcast_manual_options"]["UniqueOfferId"], "NO-OFFER",
            "the mapping's default"
        );
    })
    .await;
}

#[tokio::test]
async fn a_repeated_interaction_id_is_not_sent_twice() {
    each_backend(|| async {
        let app = spawn_app().await;
        let first: Value = app.trigger_offer().await;
        let second: Value = app.trigger_offer().await;
        assert_eq!(first, second);
        assert_eq!(app.outbox().await.len(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_customer_keeps_its_id_across_triggers() {
    each_backend(|| async {
        let app = spawn_app().await;
        let mut t = trigger();
        let first: Value = app.post("/webhooks/offer", &t).await.json().await.unwrap();
        t["Customers"][0]["InteractionID"] = json!("77");
        t["Customers"][1]["InteractionID"] = json!("78");
        let second: Value = app.post("/webhooks/offer", &t).await.json().await.unwrap();
        assert_ne!(first["broadcast_id"], second["broadcast_id"]);
        assert_eq!(
            first["recipients"][0]["customer_id"],
            second["recipients"][0]["customer_id"]
        );
        assert_ne!(
            first["recipients"][0]["uuid"],
            second["recipients"][0]["uuid"]
        );
    })
    .await;
}

#[tokio::test]
async fn health_answers_ok() {
    each_backend(|| async {
        let app = spawn_app().await;
        let res = app.get("/health").await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<Value>().await.unwrap()["status"], "ok");
    })
    .await;
}

#[tokio::test]
async fn the_server_stops_on_its_shutdown_signal() {
    each_backend(|| async {
        let mut app = spawn_app().await;
        app.shutdown.take().unwrap().send(()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let res = app.get("/health").await;
        assert!(res.is_err(), "still answering after shutdown");
    })
    .await;
}

#[tokio::test]
async fn a_request_still_in_flight_after_the_grace_period_does_not_hold_up_shutdown() {
    each_backend(|| async {
    use tokio::io::AsyncWriteExt;
    let (mut app, server) = spawn_app_with("shutdown_grace_secs = 1", "").await;
    // A request whose body never completes stays in flight.
    let mut slow = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    // Authorized, so its body is read (an unauthorized one is answered 401 at once).
    let head = format!("POST /webhooks/offer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{");
    slow.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    app.shutdown.take().unwrap().send(()).unwrap();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(20), server).await;
    assert!(stopped.is_ok(), "shutdown waited past the grace period");
    assert!(
        app.outbox().await.is_empty(),
        "the unfinished trigger was not recorded"
    );
    })
    .await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn interaction_ids_round_trip_digit_for_digit(
        id in prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n.to_string())),
            any::<u64>().prop_map(|n| json!(n.to_string())),
        ]
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let app = spawn_app().await;
            let t = json!({"Offer": {"UniqueOfferId": "O"},
                           "Customers": [{"Email": "a@b.nl", "InteractionID": id.clone()}]});
            let res = app.post("/webhooks/offer", &t).await;
            assert_eq!(res.status(), 202);
            let raw = app.outbox().await[0]["broadcast_manual_options"]["InteractionId"].clone();
            assert_eq!(raw, id);
        });
    }
}
