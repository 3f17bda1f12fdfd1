//! POST /preview/{mapping} and `pegabridge preview`: nothing stored, values escaped.

use crate::helpers::{pegabridge, root, stdout};
use crate::server::{each_backend, spawn_app, trigger};
use serde_json::{json, Value};

#[tokio::test]
async fn the_preview_shows_options_meta_and_event_and_stores_nothing() {
    each_backend(|| async {
        let app = spawn_app().await;
        let res = app.post("/preview/offer", &trigger()).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        let r = &body["recipients"][0];
        assert_eq!(r["manual_options"]["UniqueOfferId"], "OFFER-1");
        assert_eq!(r["meta"]["InteractionId"], "-563481321460449721");
        assert_eq!(r["event"]["metric"], "broadcasts");
        assert_eq!(r["event"]["broadcast_manual_options"], r["manual_options"]);
        assert!(r.get("html").is_none());
        assert!(app.outbox().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_script_in_a_trigger_value_renders_inert() {
    each_backend(|| async {
        let app = spawn_app().await;
        let mut t = trigger();
        t["Customers"][0]["FirstName"] = json!("\"><script>alert(1)</script>");
        let res = app.post("/preview/offer?html=true", &t).await;
        let body: Value = res.json().await.unwrap();
        let html = body["recipients"][0]["html"].as_str().unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&quot;&gt;&lt;script&gt;alert(1)&lt;&#x2F;script&gt;"),
            "{html}"
        );
        assert!(html.contains("OFFER-1"));
    })
    .await;
}

/// `pegabridge preview --mapping offer --trigger TRIGGER [extra...]` in the repository.
fn preview_offer(trigger: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["preview", "--mapping", "offer", "--trigger", trigger];
    args.extend_from_slice(extra);
    pegabridge(&root(), &args)
}

const EXAMPLE: &str = "mappings/example-trigger.json";

#[test]
fn the_preview_command_prints_the_json_shape() {
    let out = preview_offer(EXAMPLE, &["--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["recipients"][1]["manual_options"]["InteractionId"],
        json!(18446744073709551615u64)
    );
    assert_eq!(
        body["recipients"][0]["meta"]["UniqueOfferId"],
        "OFFER-2026-SPRING"
    );
}

#[test]
fn the_preview_command_reports_invalid_triggers_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.json"),
        "{\"Customers\": [{\"Email\": \"a@b.nl\"}]}",
    )
    .unwrap();
    let t = dir.path().join("t.json");
    let out = preview_offer(t.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("variables.InteractionId"));
    let text = preview_offer(EXAMPLE, &[]);
    assert!(stdout(&text).contains("warning: OfferText: not mapped, template default used"));
}
