//! Truthful engagement end to end: tracked links and the open pixel fetched by people and by
//! machines (a link checker's HEAD, Apple Mail Privacy Protection through a trusted proxy, a
//! security scanner, a repeat), over real HTTP, and what the stand-in Pega receives under
//! each `[engagement] machine` policy, on both backends.

use crate::backend::each_backend;
use crate::pega::{pega_section, settled, start_pega, wait_for_events};
use crate::server::{spawn_app_with, TestApp};
use pegabridge::config::mail::TrackingSettings;
use pegabridge::config::secret::Secret;
use pegabridge::mail::tracking::{Target, Tokens};
use serde_json::Value;

const SECRET: &str = "engagement-test-secret-of-32-chars-at-least";

/// A sample of Apple's Private Relay egress list, in its published format (lines
/// `prefix,country,region,city,`; the list is Apple's, published for this use).
const APPLE_SAMPLE: &str = "172.224.226.0/27,GB,GB-EN,London,\n172.224.226.32/27,GB,GB-EN,London,\n2a02:26f7:b3c0:4000::/64,DE,DE-BE,Berlin,\n104.28.0.20/32,US,US-CA,Los Angeles,\n";

const APPLE_MAIL: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";

/// A server with tracking, the sample relay list and loopback as its trusted proxy.
async fn app(policy: &str, dir: &std::path::Path) -> (TestApp, crate::pega::Pega, Tokens) {
    let ranges = dir.join("egress-ip-ranges.csv");
    std::fs::write(&ranges, APPLE_SAMPLE).unwrap();
    let pega = start_pega().await;
    let base = "https://mail.example.com";
    let extra = format!(
        "[tracking]\nbase_url = \"{base}\"\nsecret = \"{SECRET}\"\n[engagement]\napple_relay_ranges = \"{}\"\nmachine = \"{policy}\"\n\n{}",
        ranges.display(),
        pega_section(&pega, "")
    );
    let (app, _) = spawn_app_with("trusted_proxies = [\"127.0.0.1/32\", \"::1\"]", &extra).await;
    let tokens = Tokens::new(&TrackingSettings {
        base_url: base.into(),
        secret: Secret::new(SECRET),
    });
    (app, pega, tokens)
}

/// A tracked URL's path on the test server.
fn path(tokens: &Tokens, target: &Target) -> String {
    tokens
        .url(target)
        .trim_start_matches("https://mail.example.com")
        .to_owned()
}

async fn fetch(app: &TestApp, method: reqwest::Method, path: &str, ua: &str, client: &str) -> u16 {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .request(method, app.url(path))
        .header("user-agent", ua)
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The opens and clicks received: (metric, machine_generated, machine_reason).
fn engagement(events: &[Value]) -> Vec<(String, bool, Option<String>)> {
    let mut seen: Vec<_> = events
        .iter()
        .filter(|e| e["metric"] == "opens" || e["metric"] == "clicks")
        .map(|e| {
            (
                e["metric"].as_str().unwrap().to_owned(),
                e["machine_generated"].as_bool().expect("always present"),
                e["machine_reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    seen.sort();
    seen
}

/// The fetches of one message: a link checker's HEAD, Apple's privacy proxy, a scanner, then
/// the person (open and click, the click twice). Returns the trigger's broadcasts events.
async fn fetches(app: &TestApp, tokens: &Tokens) -> usize {
    let answer = app.trigger_offer().await;
    let broadcasts = answer["recipients"].as_array().unwrap().len();
    let (b, c) = (
        answer["broadcast_id"].as_i64().unwrap(),
        answer["recipients"][0]["customer_id"].as_i64().unwrap(),
    );
    let click = path(
        tokens,
        &Target::Click {
            broadcast_id: b,
            customer_id: c,
            link_id: 1,
            url: "https://shop.example/offer".into(),
            alt: "Offer".into(),
        },
    );
    let open = path(
        tokens,
        &Target::Open {
            broadcast_id: b,
            customer_id: c,
        },
    );
    use reqwest::Method;
    assert_eq!(
        fetch(
            app,
            Method::HEAD,
            &click,
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            "198.51.100.20"
        )
        .await,
        302
    );
    assert_eq!(
        fetch(app, Method::GET, &open, "Mozilla/5.0", "172.224.226.9").await,
        200
    );
    assert_eq!(
        fetch(
            app,
            Method::GET,
            &click,
            "Mimecast-URL-Protect/1.0",
            "198.51.100.30"
        )
        .await,
        302
    );
    assert_eq!(
        fetch(app, Method::GET, &open, APPLE_MAIL, "203.0.113.5").await,
        200
    );
    assert_eq!(
        fetch(app, Method::GET, &click, APPLE_MAIL, "203.0.113.5").await,
        302
    );
    // The same person's second click within the window: redirected, nothing new recorded.
    assert_eq!(
        fetch(app, Method::GET, &click, APPLE_MAIL, "203.0.113.5").await,
        302
    );
    broadcasts
}

#[tokio::test]
async fn machines_opens_and_clicks_reach_pega_flagged_with_their_reason() {
    each_backend(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (app, pega, tokens) = app("flag", dir.path()).await;
        let broadcasts = fetches(&app, &tokens).await;
        // The trigger's broadcasts events and the five recorded opens and clicks.
        let events = wait_for_events(&pega, broadcasts + 5).await;
        settled(&app).await;
        assert_eq!(pega.mock.events().len(), broadcasts + 5, "the repeat recorded nothing");
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            engagement(&events),
            vec![
                ("clicks".into(), false, None),
                ("clicks".into(), true, s("head")),
                ("clicks".into(), true, s("scanner")),
                ("opens".into(), false, None),
                ("opens".into(), true, s("apple_mail_privacy")),
            ]
        );
        let metrics = app.metrics().await;
        for line in [
            "pegabridge_engagement_total{metric=\"opens\",reason=\"apple_mail_privacy\",verdict=\"machine\"} 1",
            "pegabridge_engagement_total{metric=\"clicks\",reason=\"person\",verdict=\"person\"} 1",
        ] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
    })
    .await;
}

#[tokio::test]
async fn under_the_drop_policy_machines_are_recorded_and_counted_but_not_sent() {
    each_backend(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (app, pega, tokens) = app("drop", dir.path()).await;
        let broadcasts = fetches(&app, &tokens).await;
        // The broadcasts events and the person's open and click; the machines' three are kept
        // back, recorded `filtered`.
        let events = wait_for_events(&pega, broadcasts + 2).await;
        settled(&app).await;
        let sent = pega.mock.events().len();
        assert_eq!(
            sent,
            broadcasts + 2,
            "{:?}",
            engagement(&pega.mock.events())
        );
        assert_eq!(
            engagement(&events),
            vec![
                ("clicks".into(), false, None),
                ("opens".into(), false, None)
            ]
        );
        let stats = app.store().await.outbox().outbox_stats().await.unwrap();
        assert_eq!(stats.filtered, 3, "recorded, not sent");
    })
    .await;
}
