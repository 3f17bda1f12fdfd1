//! Faults on the way to Pega: outages, refusals, timeouts, OAuth2 tokens, operators.

use crate::helpers::pegabridge;
use crate::pega::{
    by_uuid, pega_section, send_single, spawn_delivering, start_pega, start_pega_with,
    wait_for_events,
};
use crate::server::{each_backend, spawn_app_with, trigger, ADMIN_TOKEN};
use pegabridge::config::secret::Secret;
use pegabridge::mock::MockAuth;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn after_an_outage_every_event_arrives_and_duplicates_are_counted_by_uuid() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("concurrency = 2").await;
        pega.mock.control(|b| {
            b.fail_next = 12;
            b.fail_status = Some(503);
        });
        let mut sent = Vec::new();
        for i in 0..5 {
            let mut t = trigger();
            t["Customers"][0]["InteractionID"] = json!(format!("{}", 100 + i));
            t["Customers"][1]["InteractionID"] = json!(format!("{}", 200 + i));
            let answer: Value = app.post("/webhooks/offer", &t).await.json().await.unwrap();
            for r in answer["recipients"].as_array().unwrap() {
                sent.push(r["uuid"].clone());
            }
        }
        let events = wait_for_events(&pega, sent.len()).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for e in &events {
            *seen
                .entry(e["uuid"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        for uuid in &sent {
            assert!(
                seen.contains_key(uuid.as_str().unwrap()),
                "{uuid} never arrived"
            );
        }
        let duplicates: usize = seen.values().map(|n| n - 1).sum();
        assert_eq!(
            duplicates, 0,
            "a 503 means not received: nothing is sent twice"
        );
        assert!(pega.mock.requests() >= 12 + sent.len() as u64);
    })
    .await;
}

#[tokio::test]
async fn a_refused_event_becomes_a_visible_dead_letter_that_can_be_replayed() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("").await;
        pega.mock.control(|b| {
            b.fail_next = 1;
            b.fail_status = Some(400);
        });
        let uuid = send_single(&app, 9).await;
        let dead = app
            .admin_until("/admin/deliveries?status=dead", |v| {
                !v["deliveries"].as_array().unwrap().is_empty()
            })
            .await;
        assert_eq!(dead["deliveries"][0]["uuid"], uuid.as_str());
        let shown = app.admin_get(&format!("/admin/deliveries/{uuid}")).await;
        assert_eq!(shown["attempts"][0]["http_status"], 400);
        assert_eq!(shown["attempts"][0]["outcome"], "dead");
        assert!(shown["attempts"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("told to fail"));
        assert!(
            !shown.to_string().contains("pega-secret"),
            "no secret in attempts"
        );
        assert!(pega.mock.events().is_empty());

        let res = app
            .admin_post("/admin/deliveries/replay", &json!({"status": "dead"}))
            .await;
        assert_eq!(res.json::<Value>().await.unwrap()["replayed"], 1);
        let events = wait_for_events(&pega, 1).await;
        assert_eq!(events[0]["uuid"], uuid.as_str());
    })
    .await;
}

#[tokio::test]
async fn a_timeout_is_retried_until_the_endpoint_answers() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("").await;
        pega.mock.control(|b| b.delay = Duration::from_millis(1500));
        let uuid = send_single(&app, 3).await;
        let shown = app
            .admin_until(&format!("/admin/deliveries/{uuid}"), |v| {
                v["attempts"].as_array().is_some_and(|a| !a.is_empty())
            })
            .await;
        assert_eq!(shown["attempts"][0]["outcome"], "retry");
        assert!(
            shown["attempts"][0]["http_status"].is_null(),
            "no answer within the timeout"
        );
        pega.mock.control(|b| b.delay = Duration::ZERO);
        let events = wait_for_events(&pega, 1).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["uuid"], uuid.as_str());
    })
    .await;
}

#[tokio::test]
async fn the_schedule_running_out_makes_a_dead_letter() {
    each_backend(|| async {
        let pega = start_pega().await;
        pega.mock.control(|b| b.fail_rate = 1.0);
        let section = pega_section(&pega, "").replace("max_attempts = 400", "max_attempts = 3");
        let (app, _) = spawn_app_with("", &section).await;
        send_single(&app, 4).await;
        let dead = app
            .admin_until("/admin/deliveries?status=dead", |v| {
                !v["deliveries"].as_array().unwrap().is_empty()
            })
            .await;
        assert_eq!(dead["deliveries"][0]["attempts"], 3);
    })
    .await;
}

#[tokio::test]
async fn oauth2_tokens_are_cached_renewed_before_expiry_and_fetched_again_on_a_401() {
    each_backend(|| async {
    let pega = start_pega_with(MockAuth::Oauth2 {
        client_id: "bridge".into(),
        client_secret: Secret::new("client-secret"),
        lifetime: Duration::from_secs(31),
    })
    .await;
    let section = pega_section(&pega, "concurrency = 1").replace(
        "[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"",
        &format!(
            "[pega.auth]\ntype = \"oauth2\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"bridge\"\nclient_secret = \"client-secret\"",
            pega.url
        ),
    );
    let (app, _) = spawn_app_with("", &section).await;
    send_single(&app, 1).await;
    send_single(&app, 2).await;
    wait_for_events(&pega, 2).await;
    assert_eq!(pega.mock.tokens_issued(), 1, "one token for both events");

    // 31 s lifetime, renewed 30 s before expiry: after a second it is renewed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send_single(&app, 3).await;
    wait_for_events(&pega, 3).await;
    assert_eq!(pega.mock.tokens_issued(), 2, "renewed before it expired");

    pega.mock.revoke_tokens();
    send_single(&app, 4).await;
    let events = wait_for_events(&pega, 4).await;
    assert_eq!(
        events.len(),
        4,
        "delivered after fetching a new token on the 401"
    );
    assert_eq!(pega.mock.tokens_issued(), 3);
    })
    .await;
}

#[tokio::test]
async fn pausing_holds_events_and_resuming_delivers_them() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("").await;
        let res = app.admin_post("/admin/delivery/pause", &json!({})).await;
        assert_eq!(res.status(), 200);
        let answer: Value = app.trigger_offer().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pega.mock.events().is_empty());
        app.admin_post("/admin/delivery/resume", &json!({})).await;
        let events = wait_for_events(&pega, 2).await;
        by_uuid(&events, &answer["recipients"][0]["uuid"]);
    })
    .await;
}

#[tokio::test]
async fn pausing_from_another_process_holds_the_running_servers_events() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("").await;
        // The server has read the flag (not paused) before the other process changes it.
        send_single(&app, 1).await;
        wait_for_events(&pega, 1).await;
        let deliveries = |action: &'static str| {
            let dir = app.dir.path().to_owned();
            tokio::task::spawn_blocking(move || {
                let config = dir.join("pegabridge.toml");
                let out = pegabridge(
                    &dir,
                    &["--config", config.to_str().unwrap(), "deliveries", action],
                );
                assert!(out.status.success(), "{out:?}");
            })
        };
        deliveries("pause").await.unwrap();
        let answer: Value = app.trigger_offer().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pega.mock.events().len(), 1, "held while paused");
        deliveries("resume").await.unwrap();
        let events = wait_for_events(&pega, 3).await;
        by_uuid(&events, &answer["recipients"][0]["uuid"]);
    })
    .await;
}

#[tokio::test]
async fn the_admin_api_needs_its_own_token() {
    each_backend(|| async {
        let (app, _pega) = spawn_delivering("").await;
        let get = |token| {
            app.with_token(reqwest::Method::GET, "/admin/deliveries", token)
                .send()
        };
        assert_eq!(get("test-token-123").await.unwrap().status(), 401);
        let ok = get(ADMIN_TOKEN).await.unwrap();
        assert_eq!(ok.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn metrics_count_deliveries_retries_and_the_backlog() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("").await;
        pega.mock.control(|b| b.fail_next = 2);
        app.post("/webhooks/offer", &trigger()).await;
        wait_for_events(&pega, 2).await;
        let mut text = String::new();
        for _ in 0..500 {
            text = app.metrics().await;
            if text.contains("pegabridge_delivered_total 2") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(text.contains("pegabridge_delivered_total 2"), "{text}");
        assert!(text.contains("pegabridge_retried_total 2"), "{text}");
        assert!(text.contains("pegabridge_outbox_pending 0"), "{text}");
        assert!(
            text.contains("pegabridge_outbox_oldest_pending_age_seconds"),
            "{text}"
        );
        assert!(
            text.contains("pegabridge_delivery_latency_seconds_count 2"),
            "{text}"
        );
    })
    .await;
}
