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
async fn app(
    policy: &str,
    more: &str,
    dir: &std::path::Path,
) -> (TestApp, crate::pega::Pega, Tokens) {
    let ranges = dir.join("egress-ip-ranges.csv");
    std::fs::write(&ranges, APPLE_SAMPLE).unwrap();
    let pega = start_pega().await;
    let base = "https://mail.example.com";
    let extra = format!(
        "[tracking]\nbase_url = \"{base}\"\nsecret = \"{SECRET}\"\n[engagement]\napple_relay_ranges = \"{}\"\nmachine = \"{policy}\"\n{more}\n\n{}",
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
        let (app, pega, tokens) = app("flag", "hold_secs = 0\ntoo_soon_secs = 0", dir.path()).await;
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
        let (app, pega, tokens) = app("drop", "hold_secs = 0\ntoo_soon_secs = 0", dir.path()).await;
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

/// A personal broadcast of a fresh trigger: (broadcast_id, customer_id).
async fn one_message(app: &TestApp) -> (i64, i64) {
    let answer = app.trigger_offer().await;
    (
        answer["broadcast_id"].as_i64().unwrap(),
        answer["recipients"][0]["customer_id"].as_i64().unwrap(),
    )
}

fn link(tokens: &Tokens, (b, c): (i64, i64), link_id: i64) -> String {
    path(
        tokens,
        &Target::Click {
            broadcast_id: b,
            customer_id: c,
            link_id,
            url: format!("https://shop.example/{link_id}"),
            alt: String::new(),
        },
    )
}

#[tokio::test]
async fn a_scanners_burst_over_every_link_is_judged_as_a_whole_after_the_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (app, pega, tokens) = app("flag", "hold_secs = 1\ntoo_soon_secs = 0", dir.path()).await;
    let pb = one_message(&app).await;
    let browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    // A sandbox with a browser's user agent follows the three links at once...
    for l in 1..=3 {
        let status = fetch(
            &app,
            reqwest::Method::GET,
            &link(&tokens, pb, l),
            browser,
            "198.51.100.40",
        )
        .await;
        assert_eq!(status, 302, "redirected at once, judged later");
    }
    // ...while a person clicks one of them.
    fetch(
        &app,
        reqwest::Method::GET,
        &link(&tokens, pb, 2),
        APPLE_MAIL,
        "203.0.113.7",
    )
    .await;
    let broadcasts = 2;
    let events = wait_for_events(&pega, broadcasts + 4).await;
    settled(&app).await;
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        engagement(&events),
        vec![
            ("clicks".into(), false, None),
            ("clicks".into(), true, s("burst")),
            ("clicks".into(), true, s("burst")),
            ("clicks".into(), true, s("burst")),
        ],
        "the first click of the burst too"
    );
}

#[tokio::test]
async fn a_fetch_within_seconds_of_sending_is_a_machines() {
    let dir = tempfile::tempdir().unwrap();
    let (app, pega, tokens) = app("flag", "hold_secs = 0\ntoo_soon_secs = 3600", dir.path()).await;
    let pb = one_message(&app).await;
    // The link was made (the message sent) a moment ago.
    fetch(
        &app,
        reqwest::Method::GET,
        &link(&tokens, pb, 1),
        APPLE_MAIL,
        "203.0.113.8",
    )
    .await;
    let events = wait_for_events(&pega, 3).await;
    settled(&app).await;
    assert_eq!(
        engagement(&events),
        vec![("clicks".into(), true, Some("too_soon".into()))]
    );
}

#[tokio::test]
async fn fetch_ranges_downloads_the_list_to_the_configured_file_and_refuses_what_is_not_one() {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new()
        .route("/egress-ip-ranges.csv", get(|| async { APPLE_SAMPLE }))
        .route("/broken.csv", get(|| async { "<html>not a list</html>" }));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        "[engagement]\napple_relay_ranges = \"relay/ranges.csv\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("relay")).unwrap();
    let run = |url: String| {
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            crate::helpers::pegabridge(&dir, &["engagement", "fetch-ranges", "--url", &url])
        })
    };
    let out = run(format!("http://{addr}/egress-ip-ranges.csv"))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", crate::helpers::stderr(&out));
    let written = std::fs::read_to_string(dir.path().join("relay/ranges.csv")).unwrap();
    assert_eq!(written, APPLE_SAMPLE);
    // What is not the list leaves the file as it was.
    let out = run(format!("http://{addr}/broken.csv")).await.unwrap();
    assert!(!out.status.success());
    assert!(
        crate::helpers::stderr(&out).contains("not the egress list"),
        "{}",
        crate::helpers::stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("relay/ranges.csv")).unwrap(),
        APPLE_SAMPLE
    );
}

#[tokio::test]
async fn with_opens_first_only_a_personal_broadcasts_first_open_by_a_person_is_sent() {
    each_backend(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (app, pega, tokens) = app(
            "flag",
            "hold_secs = 0\ntoo_soon_secs = 0\nopens = \"first\"\nrepeat_window_secs = 0",
            dir.path(),
        )
        .await;
        let (b, c) = one_message(&app).await;
        let open = path(
            &tokens,
            &Target::Open {
                broadcast_id: b,
                customer_id: c,
            },
        );
        use reqwest::Method;
        // Apple's proxy first (a machine's: flagged, not the first person's open), then the
        // person opens three times.
        fetch(&app, Method::GET, &open, "Mozilla/5.0", "172.224.226.9").await;
        for _ in 0..3 {
            fetch(&app, Method::GET, &open, APPLE_MAIL, "203.0.113.9").await;
        }
        let events = wait_for_events(&pega, 4).await;
        settled(&app).await;
        assert_eq!(
            engagement(&events),
            vec![
                ("opens".into(), false, None),
                ("opens".into(), true, Some("apple_mail_privacy".into())),
            ]
        );
        let stats = app.store().await.outbox().outbox_stats().await.unwrap();
        assert_eq!(stats.filtered, 2, "the later opens are recorded, not sent");
    })
    .await;
}
