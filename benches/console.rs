//! `cargo bench --bench console`: each console page's server time (the median of 5 requests,
//! request to last byte on loopback) and weight (uncompressed bytes; the pages have no other
//! assets) with 1,000,000 events stored: 100,000 personal broadcasts with 10 events each, a
//! tenth of them dead. Targets: under 100 ms a page, under 200 KB.

#![allow(clippy::too_many_lines)] // a benchmark scenario reads top to bottom

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::time::{Duration, Instant};

const BROADCASTS: i64 = 100_000;
const EVENTS_EACH: i64 = 10;

/// A migrated SQLite database with the personal broadcasts and their events.
async fn fill(db: &std::path::Path) {
    drop(
        pegabridge::store::Storage::connect(&format!("sqlite://{}", db.display()), "normal", 1)
            .await
            .unwrap(),
    );
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("PRAGMA synchronous = OFF; BEGIN").unwrap();
    c.execute(
        "INSERT INTO broadcasts (id, mapping, created_at) VALUES (1, 'offer', 1700000000)",
        [],
    )
    .unwrap();
    let payload = common::payload();
    {
        let mut customer = c
            .prepare("INSERT INTO customers (id, email, external_id, created_at) VALUES (?1, ?2, ?3, 1700000000)")
            .unwrap();
        let mut personal = c
            .prepare("INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, event) VALUES (1, ?1, ?2, ?3, 'queued', ?4)")
            .unwrap();
        let mut event = c
            .prepare("INSERT INTO outbox (uuid, metric, status, attempts, next_attempt_at, created_at, created_ms, sink, broadcast_id, customer_id, last_error) VALUES (?1, ?2, ?3, 1, 0, 1700000000, 0, 'pega', 1, ?4, ?5)")
            .unwrap();
        let mut body = c
            .prepare("INSERT INTO outbox_payloads (id, payload) VALUES (last_insert_rowid(), ?1)")
            .unwrap();
        for i in 1..=BROADCASTS {
            let email = format!("c{i}@example.com");
            customer
                .execute(rusqlite::params![i, email, format!("CUST-{i}")])
                .unwrap();
            let pb_event = format!(
                r#"{{"metric":"broadcasts","customer_id":{i},"broadcast_id":1,"broadcast_manual_options":{{"InteractionId":"{}","UniqueOfferId":"OFFER-1"}},"uuid":"pb-{i}"}}"#,
                -5_634_813_214_604_497_i64 * 1000 - i
            );
            personal
                .execute(rusqlite::params![i, format!("pb-{i}"), email, pb_event])
                .unwrap();
            for j in 0..EVENTS_EACH {
                let dead = j == EVENTS_EACH - 1;
                let (status, error) = if dead {
                    ("dead", Some("HTTP 400: told to fail"))
                } else {
                    ("delivered", None)
                };
                let metric = if j == 0 { "broadcasts" } else { "opens" };
                // A broadcasts event is its personal broadcast's uuid (its payload is there).
                let uuid = if j == 0 {
                    format!("pb-{i}")
                } else {
                    format!("e-{i}-{j}")
                };
                event
                    .execute(rusqlite::params![uuid, metric, status, i, error])
                    .unwrap();
                if j > 0 {
                    body.execute([&payload]).unwrap();
                }
            }
        }
    }
    c.execute_batch("COMMIT").unwrap();
    // The outbox's counters, as the migrations keep them.
    c.execute_batch(
        "UPDATE outbox_counts SET n = (SELECT count(*) FROM outbox o WHERE o.status = outbox_counts.status)",
    )
    .unwrap();
}

/// The median time and the size of `n` requests made by `make`.
async fn measure(make: impl Fn() -> reqwest::RequestBuilder) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let res = make().send().await.unwrap();
        let status = res.status();
        if !status.is_success() {
            panic!("{status}: {}", res.text().await.unwrap_or_default());
        }
        size = res.bytes().await.unwrap().len();
        times.push(start.elapsed());
    }
    times.sort();
    (times[2], size)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("console.db");
    let started = Instant::now();
    fill(&db).await;
    eprintln!("filled in {:.1} s", started.elapsed().as_secs_f64());
    common::offer_mapping(dir.path());
    let base = common::serve_in(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{}\"\n[admin]\ntoken = \"adm\"\n",
            db.display()
        ),
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .post(format!("{base}/console/login"))
        .form(&[("token", "adm")])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let interaction = (-5_634_813_214_604_497_i64 * 1000 - 77_777).to_string();
    let pages = [
        ("Overview", "/console".to_owned()),
        (
            "Interactions, by InteractionID",
            format!("/console/interactions?q={interaction}"),
        ),
        (
            "Interactions, by email",
            "/console/interactions?q=c88888@example.com".to_owned(),
        ),
        (
            "Interactions, by external id",
            "/console/interactions?q=CUST-4242".to_owned(),
        ),
        (
            "Interactions, by an event's uuid",
            "/console/interactions?q=e-99999-3".to_owned(),
        ),
        ("Deliveries, all", "/console/deliveries".to_owned()),
        (
            "Deliveries, dead",
            "/console/deliveries?status=dead".to_owned(),
        ),
        (
            "Deliveries, delivered opens",
            "/console/deliveries?status=delivered&metric=opens".to_owned(),
        ),
        ("Preview (the form)", "/console/preview".to_owned()),
    ];
    println!("| page (1,000,000 events stored) | server time, median of 5 | weight | target |");
    println!("|---|---|---|---|");
    for (name, path) in pages {
        let (t, size) = measure(|| {
            client
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
        })
        .await;
        println!(
            "| {name} | {:.1} ms | {:.1} KB | < 100 ms, < 200 KB |",
            t.as_secs_f64() * 1e3,
            size as f64 / 1024.0
        );
    }
    let form = client
        .get(format!("{base}/console/preview"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = regex::Regex::new(r#"name="csrf" value="([0-9a-f]+)""#)
        .unwrap()
        .captures(&form)
        .unwrap()[1]
        .to_owned();
    let trigger =
        std::fs::read_to_string(common::root().join("mappings/example-trigger.json")).unwrap();
    let (t, size) = measure(|| {
        client
            .post(format!("{base}/console/preview"))
            .header("cookie", &cookie)
            .header("origin", &base)
            .form(&[
                ("csrf", csrf.as_str()),
                ("mapping", "offer"),
                ("trigger", trigger.as_str()),
            ])
    })
    .await;
    println!(
        "| Preview, the example trigger rendered (2 recipients) | {:.1} ms | {:.1} KB | < 100 ms, < 200 KB |",
        t.as_secs_f64() * 1e3,
        size as f64 / 1024.0
    );
}
