//! `cargo bench --bench events`: events/s through `POST /events/sendgrid` in signed batches of
//! 100 (verified, translated, joined, recorded, delivered), from request to arrival at an
//! in-process receiver, against `POST /activities` with the same events (batches of 100) in
//! the same run. Target: >= 0.8 of the activities path.
//!
//! Then one platform batch of 8,000 events joined to known personal broadcasts against one of
//! 4,000 known + 4,000 naming personal broadcasts unknown here (as a shared platform account
//! sends): the request's time, request to answer (recorded), medians of 3 alternating runs.
//! Target: the mixed batch within 1.5 times the known one.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::load::wait_for;
use common::receiver;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const BATCHES: usize = 200;
const PER_BATCH: usize = 100;
const IN_FLIGHT: usize = 8;

/// A SendGrid request of `events`, signed.
fn signed(client: &reqwest::Client, base: &str, events: &[Value]) -> reqwest::RequestBuilder {
    let body = serde_json::to_vec(events).unwrap();
    let ts = pegabridge::event::now().to_string();
    let mut message = ts.as_bytes().to_vec();
    message.extend_from_slice(&body);
    let sig: Signature = key().sign(&message);
    client
        .post(format!("{base}/events/sendgrid"))
        .header(pegabridge::events::sendgrid::TIMESTAMP, ts)
        .header(
            pegabridge::events::sendgrid::SIGNATURE,
            STANDARD.encode(sig.to_der().as_bytes()),
        )
        .body(body)
}

/// `n` open events: `unknown` of them name a personal broadcast that does not exist here.
fn opens(tag: &str, n: usize, unknown: usize, key: (i64, i64)) -> Vec<Value> {
    (0..n)
        .map(|j| {
            let b = if j % 2 == 1 && j / 2 < unknown {
                key.0 + 1_000_000
            } else {
                key.0
            };
            json!({"event": "open", "email": "ann@example.com", "timestamp": 1_700_000_000,
                "sg_event_id": format!("{tag}-{j}"), "pegabridge": format!("{b}-{}", key.1)})
        })
        .collect()
}

/// The time of one signed batch, request to answer; checks what the answer counts.
async fn batch_time(
    client: &reqwest::Client,
    base: &str,
    events: &[Value],
    unknown: usize,
) -> Duration {
    let start = Instant::now();
    let res = signed(client, base, events).send().await.unwrap();
    let took = start.elapsed();
    assert!(res.status().is_success(), "{}", res.status());
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["unmatched"], unknown, "{answer}");
    assert_eq!(answer["recorded"], events.len() - unknown, "{answer}");
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
}

async fn server(pega_url: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    common::offer_mapping(dir.path());
    let public = STANDARD.encode(
        key()
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes(),
    );
    let base = common::serve_in(
        dir.path(),
        &format!("[server]\nlisten = \"127.0.0.1:0\"\nbody_limit = 16777216\n[store]\nurl = \"sqlite://bench.db\"\n[activities]\ntoken = \"a\"\n[pega]\nendpoint = \"{pega_url}/in\"\nbatch_size = 16\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pw\"\n[events.sendgrid]\npublic_key = \"{public}\"\n"),
    )
    .await;
    (base, dir)
}

/// Posts every body, `IN_FLIGHT` at a time; events/s until `pega` holds `before + n`.
async fn run(
    pega: &pegabridge::mock::MockPega,
    requests: Vec<reqwest::RequestBuilder>,
    n: usize,
) -> f64 {
    use futures::StreamExt;
    let before = pega.event_count();
    let start = Instant::now();
    futures::stream::iter(requests)
        .map(|r| async move {
            let res = r.send().await.unwrap();
            assert!(res.status().is_success(), "{}", res.status());
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    wait_for(pega, before + n).await;
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let (pega, pega_url) = receiver().await;
    let (base, _dir) = server(&pega_url).await;
    let client = reqwest::Client::new();
    let answer: Value = client
        .post(format!("{base}/webhooks/offer"))
        .bearer_auth("change-me")
        .json(&json!({"Offer": {"UniqueOfferId": "OFFER-1"},
            "Customers": [{"Email": "ann@example.com", "CustomerID": "1", "InteractionID": "1"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (b, c) = (
        answer["broadcast_id"].as_i64().unwrap(),
        answer["recipients"][0]["customer_id"].as_i64().unwrap(),
    );
    wait_for(&pega, 1).await;
    let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36";
    let n = BATCHES * PER_BATCH;
    let mut platform = Vec::new();
    let mut activities = Vec::new();
    for i in 0..BATCHES {
        let events: Vec<Value> = (0..PER_BATCH)
            .map(|j| json!({"event": "open", "email": "ann@example.com", "timestamp": 1_700_000_000,
                "sg_event_id": format!("ev-{i}-{j}"), "useragent": ua, "pegabridge": format!("{b}-{c}")}))
            .collect();
        platform.push(signed(&client, &base, &events));
        let same: Vec<Value> = (0..PER_BATCH)
            .map(|j| {
                json!({"id": format!("act-{i}-{j}"), "metric": "opens", "broadcast_id": b,
                "customer_id": c, "timestamp": 1_700_000_000, "user_agent": ua})
            })
            .collect();
        activities.push(
            client
                .post(format!("{base}/activities"))
                .bearer_auth("a")
                .json(&same),
        );
    }
    let through_platform = run(&pega, platform, n).await;
    let (mut known, mut mixed) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let all = opens(&format!("known-{round}"), 8_000, 0, (b, c));
        known.push(batch_time(&client, &base, &all, 0).await);
        let half = opens(&format!("mixed-{round}"), 8_000, 4_000, (b, c));
        mixed.push(batch_time(&client, &base, &half, 4_000).await);
    }
    let (known, mixed) = (median(known), median(mixed));
    // Let the recorded opens reach the receiver before the next measure.
    wait_for(&pega, 1 + n + 3 * 12_000).await;
    let through_activities = run(&pega, activities, n).await;
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| events/s, POST /events/sendgrid, signed batches of {PER_BATCH} ({IN_FLIGHT} in flight) | {through_platform:.0} | |");
    println!("| events/s, POST /activities, the same events in batches of {PER_BATCH} | {through_activities:.0} | (baseline) |");
    println!(
        "| ratio | {:.2} | >= 0.8 |",
        through_platform / through_activities
    );
    println!(
        "| one batch of 8,000 known events, request to answer (median of 3) | {:.0} ms | (baseline) |",
        known.as_secs_f64() * 1000.0
    );
    println!(
        "| one batch of 4,000 known + 4,000 unknown, request to answer (median of 3) | {:.0} ms | |",
        mixed.as_secs_f64() * 1000.0
    );
    println!(
        "| mixed / known | {:.2} | <= 1.5 |",
        mixed.as_secs_f64() / known.as_secs_f64()
    );
}
