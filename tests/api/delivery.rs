//! Every interaction reaches Pega: trigger -> broadcasts event, then each activity kind ->
//! its event at the stand-in receiver, checked field by field.

use crate::pega::{by_uuid, spawn_delivering, wait_for_events};
use crate::server::each_backend;
use crate::server::trigger;
use serde_json::{json, Value};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/81.0.4044.138 Safari/537.36";

/// Sends the standard trigger; returns (broadcast_id, ann's customer_id, ann's uuid).
async fn send_trigger(app: &crate::server::TestApp) -> (i64, i64, Value) {
    let answer: Value = app.trigger_offer().await;
    let ann = &answer["recipients"][0];
    (
        answer["broadcast_id"].as_i64().unwrap(),
        ann["customer_id"].as_i64().unwrap(),
        ann["uuid"].clone(),
    )
}

#[tokio::test]
async fn a_trigger_reaches_pega_as_a_broadcasts_event_with_its_manual_options() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("").await;
        let (broadcast_id, customer_id, uuid) = send_trigger(&app).await;
        let events = wait_for_events(&pega, 2).await;
        assert_eq!(events.len(), 2);
        let e = by_uuid(&events, &uuid);
        assert_eq!(e["metric"], "broadcasts");
        assert_eq!(e["metric_id"], 0);
        assert_eq!(e["broadcast_id"], broadcast_id);
        assert_eq!(e["customer_id"], customer_id);
        assert_eq!(e["portal_id"], 1746);
        assert_eq!(e["brand_name"], "Mok-Up");
        assert_eq!(e["broadcast_type"], "MAIL");
        assert_eq!(e["customer_email_address"], "ann@example.com");
        assert_eq!(
            e["broadcast_manual_options"]["InteractionId"],
            "-563481321460449721"
        );
        assert_eq!(e["broadcast_manual_options"]["UniqueOfferId"], "OFFER-1");
        assert_eq!(
            pega.mock.last_header("x-source").as_deref(),
            Some("pegabridge")
        );
        assert_eq!(
            pega.mock.last_header("user-agent").as_deref(),
            Some(pegabridge::USER_AGENT),
            "every POST says who sends it"
        );
        assert!(pegabridge::USER_AGENT.starts_with("pegabridge/0."));
    })
    .await;
}

#[tokio::test]
async fn each_activity_kind_reaches_pega_with_the_broadcasts_common_fields() {
    each_backend(|| async {
    let (app, pega) = spawn_delivering("").await;
    let (b, c, broadcast_uuid) = send_trigger(&app).await;
    let base = |metric: &str| json!({"metric": metric, "broadcast_id": b, "customer_id": c, "timestamp": 1589801661});
    let mut open = base("opens");
    open["user_agent"] = json!(CHROME);
    let mut click = base("clicks");
    click["url"] =
        json!("https://shop.example/?utm_source=pega&utm_medium=email&utm_campaign=spring");
    click["alt"] = json!("Your account");
    click["link_id"] = json!(17786);
    click["tags"] = json!(["account"]);
    click["user_agent"] = json!(CHROME);
    let mut short = base("short_links");
    short["url"] = json!("https://sho.rt/x");
    let mut bounce = base("bounces");
    bounce["bounce_type"] = json!("soft");
    bounce["bounce_code"] = json!("4.2.2");
    bounce["bounce_reason"] = json!("mailbox full");
    let complaint = base("complaints");
    let unsubscribe = base("unsubscribes");
    let mut conversion = base("conversions");
    conversion["conversion_name"] = json!("purchase");
    conversion["value"] = json!(49.95);
    conversion["currency"] = json!("EUR");
    conversion["order_id"] = json!("A-1");
    let body = json!([
        open,
        click,
        short,
        bounce,
        complaint,
        unsubscribe,
        conversion
    ]);
    let res = app.activities(&body).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let answers = answer["activities"].as_array().unwrap().clone();
    assert_eq!(answers.len(), 7);
    let metric_ids: std::collections::HashSet<_> = answers
        .iter()
        .map(|a| a["metric_id"].as_i64().unwrap())
        .collect();
    assert_eq!(metric_ids.len(), 7, "metric_id is unique per activity");
    assert!(!metric_ids.contains(&0));

    let events = wait_for_events(&pega, 9).await;
    assert_eq!(events.len(), 9);
    let broadcast = by_uuid(&events, &broadcast_uuid).clone();
    let get = |i: usize| by_uuid(&events, &answers[i]["uuid"]).clone();
    for (i, answer) in answers.iter().enumerate() {
        let e = get(i);
        assert_eq!(e["metric_id"], answer["metric_id"]);
        assert_eq!(e["metric_timestamp"], 1589801661);
        for common in [
            "broadcast_id",
            "customer_id",
            "campaign_id",
            "content_id",
            "subject",
            "broadcast_timestamp",
            "broadcast_manual_options",
            "email_address",
            "portal_id",
        ] {
            assert_eq!(e[common], broadcast[common], "{} {common}", e["metric"]);
        }
    }
    let (o, k, s, bo, co, un, cv) = (get(0), get(1), get(2), get(3), get(4), get(5), get(6));
    assert_eq!(
        (
            o["metric"].as_str(),
            o["os"].as_str(),
            o["browser"].as_str()
        ),
        (Some("opens"), Some("Windows"), Some("Chrome"))
    );
    assert_eq!(o["machine_generated"], false);
    assert_eq!(o["user_agent"], CHROME);
    assert_eq!(k["metric"], "clicks");
    assert_eq!(
        (
            k["google_source"].as_str(),
            k["google_medium"].as_str(),
            k["google_campaign"].as_str()
        ),
        (Some("pega"), Some("email"), Some("spring"))
    );
    assert_eq!(k["google_term"], "");
    assert_eq!(
        (k["link_id"].as_i64(), k["alt"].as_str()),
        (Some(17786), Some("Your account"))
    );
    assert_eq!(k["tags"], json!(["account"]));
    assert_eq!(s["metric"], "short_links");
    assert_eq!(s["url"], "https://sho.rt/x");
    assert_eq!(
        (bo["bounce_type"].as_str(), bo["bounce_code"].as_str()),
        (Some("soft"), Some("4.2.2"))
    );
    assert_eq!(
        (
            bo["bounce_count_hard"].as_i64(),
            bo["bounce_count_soft"].as_i64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(co["complaints"], 1);
    assert_eq!(un["metric"], "unsubscribes");
    assert_eq!(
        un.as_object().unwrap().len(),
        28,
        "unsubscribes add nothing"
    );
    assert_eq!(
        (cv["conversion_name"].as_str(), cv["currency"].as_str()),
        (Some("purchase"), Some("EUR"))
    );
    assert_eq!(cv["value"], json!(49.95));
    })
    .await;
}

#[tokio::test]
async fn an_activity_for_an_unknown_broadcast_is_refused_naming_it() {
    each_backend(|| async {
        let (app, _pega) = spawn_delivering("").await;
        let res = app
            .activities(&json!([{"metric": "opens", "broadcast_id": 999, "customer_id": 5}]))
            .await;
        assert_eq!(res.status(), 422);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["field"], "broadcast_id");
        assert!(body["error"]["message"].as_str().unwrap().contains("999"));
        assert!(app.outbox().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn activities_need_the_activity_token() {
    each_backend(|| async {
        let (app, _pega) = spawn_delivering("").await;
        let body = json!({"metric": "opens", "broadcast_id": 1, "customer_id": 1});
        let res = app
            .with_token(reqwest::Method::POST, "/activities", "nope")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn a_resent_activity_with_the_same_id_is_a_no_op() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("").await;
        let (b, c, _) = send_trigger(&app).await;
        let open = json!({"id": "open-1", "metric": "opens", "broadcast_id": b, "customer_id": c});
        let first: Value = app.activities(&open).await.json().await.unwrap();
        let second: Value = app.activities(&open).await.json().await.unwrap();
        assert_eq!(
            second["activities"][0]["uuid"],
            first["activities"][0]["uuid"]
        );
        assert_eq!(second["activities"][0]["status"], "duplicate");
        assert_eq!(
            second["activities"][0]["metric_id"],
            first["activities"][0]["metric_id"]
        );
        assert_ne!(first["activities"][0]["metric_id"], 0);
        assert_eq!(wait_for_events(&pega, 3).await.len(), 3);
        crate::pega::settled(&app).await;
        assert_eq!(pega.mock.events().len(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_customer_who_hard_bounced_is_suppressed_on_the_next_trigger() {
    each_backend(|| async {
    let (app, pega) = spawn_delivering("").await;
    let (b, c, _) = send_trigger(&app).await;
    app.activities(&json!({"metric": "bounces", "broadcast_id": b, "customer_id": c, "bounce_type": "hard", "bounce_code": "5.1.2"}))
        .await;
    let mut t = trigger();
    t["Customers"][0]["InteractionID"] = json!("1");
    t["Customers"][1]["InteractionID"] = json!("2");
    let answer: Value = app.post("/webhooks/offer", &t).await.json().await.unwrap();
    assert_eq!(answer["recipients"][0]["status"], "suppressed");
    assert_eq!(answer["recipients"][1]["status"], "queued");
    let events = wait_for_events(&pega, 4).await;
    crate::pega::settled(&app).await;
    assert_eq!(
        pega.mock.events().len(),
        4,
        "2 broadcasts + bounce + 1 broadcast"
    );
    assert!(events
        .iter()
        .all(|e| e["uuid"] != answer["recipients"][0]["uuid"]));
    let bounce = events.iter().find(|e| e["metric"] == "bounces").unwrap();
    assert_eq!(bounce["bounce_type"], "hard");
    assert_eq!(bounce["bounce_count_hard"], 1);
    })
    .await;
}

#[tokio::test]
async fn an_open_resets_the_soft_bounce_count() {
    each_backend(|| async {
    let (app, pega) = spawn_delivering("").await;
    let (b, c, _) = send_trigger(&app).await;
    let soft =
        json!({"metric": "bounces", "broadcast_id": b, "customer_id": c, "bounce_type": "SOFT"});
    let open = json!({"metric": "opens", "broadcast_id": b, "customer_id": c});
    app.activities(&json!([soft, soft, open, soft])).await;
    let events = wait_for_events(&pega, 6).await;
    let counts: Vec<i64> = events
        .iter()
        .filter(|e| e["metric"] == "bounces")
        .map(|e| e["bounce_count_soft"].as_i64().unwrap())
        .collect();
    let mut sorted = counts.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 1, 2], "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn metrics_not_in_the_activity_list_are_not_sent() {
    each_backend(|| async {
        let (app, pega) = spawn_delivering("activities = [\"broadcasts\"]").await;
        let (b, c, _) = send_trigger(&app).await;
        app.activities(&json!({"metric": "opens", "broadcast_id": b, "customer_id": c}))
            .await;
        wait_for_events(&pega, 2).await;
        crate::pega::settled(&app).await;
        assert!(pega
            .mock
            .events()
            .iter()
            .all(|e| e["metric"] == "broadcasts"));
        let filtered = app.admin_get("/admin/deliveries?status=filtered").await;
        assert_eq!(filtered["deliveries"].as_array().unwrap().len(), 1);
    })
    .await;
}

/// Events handed to the worker in memory but not yet posted when the server stops are made
/// due again (not left leased until their lease runs out): a restart delivers them at once.
#[tokio::test]
async fn events_waiting_for_the_worker_at_shutdown_are_released_for_the_next_start() {
    each_backend(|| async {
        let (mut app, task, pega) = crate::pega::spawn_posting_one_at_a_time(100, 600).await;
        for n in 0..20 {
            crate::pega::send_single(&app, n).await;
        }
        let _ = app.shutdown.take().unwrap().send(());
        task.await.unwrap().unwrap();

        let store = app.store().await;
        let count = |status: &'static str| {
            let store = store.clone();
            async move {
                store
                    .outbox()
                    .deliveries(Some(status.parse().unwrap()), 1000)
                    .await
                    .unwrap()
            }
        };
        let (delivered, pending, inflight) = (
            count("delivered").await,
            count("pending").await,
            count("inflight").await,
        );
        assert!(inflight.is_empty(), "left leased: {inflight:?}");
        assert!(!pending.is_empty(), "the stand-in is slow: some must wait");
        assert_eq!(delivered.len() + pending.len(), 20);
        assert_eq!(pega.mock.events().len(), delivered.len());
        assert!(
            pending.iter().all(|d| d.attempts == 0),
            "no attempt counted"
        );
    })
    .await;
}

/// A handed-over event whose lease runs out while it waits for a slow worker is left to the
/// claim (which may already have sent it): it is not posted twice.
#[tokio::test]
async fn events_whose_lease_ran_out_in_the_hand_off_are_not_posted_twice() {
    each_backend(|| async {
        let (app, _task, pega) = crate::pega::spawn_posting_one_at_a_time(250, 2).await;
        let mut uuids = std::collections::HashSet::new();
        for n in 0..16 {
            uuids.insert(crate::pega::send_single(&app, n).await);
        }
        let (missing, duplicates) = crate::pega::await_all(&pega, &uuids).await;
        assert_eq!(missing, 0);
        // Later duplicates would come only from a claim of a row still pending or leased:
        // once none is left, none can come.
        crate::pega::settled(&app).await;
        let (_, duplicates_later) = crate::pega::await_all(&pega, &uuids).await;
        assert_eq!(
            (duplicates, duplicates_later),
            (0, 0),
            "an event was posted twice"
        );
    })
    .await;
}
