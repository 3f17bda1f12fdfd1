//! `cargo bench --bench triggers`: a bounded load on loopback against `serve`.
//! - throughput: triggers accepted per second with the durable commit (POST /webhooks), and in
//!   the same run the same server answering without storing (POST /preview, same mapping work);
//! - latency: p50/p99 at a fixed 500 triggers/s.
//!
//! Targets: >= 2,000 triggers/s, p99 <= 50 ms at 500/s.

use pegabridge::config::Settings;
use pegabridge::http::Application;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the `pegabridge` binary uses (`src/main.rs`), so that what is measured here
/// runs as it ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOTAL: usize = 6000;
const CONCURRENCY: usize = 32;

#[tokio::main]
async fn main() {
    let client = reqwest::Client::new();
    let (normal, _keep1) = start("normal").await;
    let (full, _keep2) = start("full").await;

    let stored = throughput(&client, &format!("{normal}/webhooks/offer"), 0).await;
    let stored_full = throughput(&client, &format!("{full}/webhooks/offer"), 0).await;
    let baseline = throughput(&client, &format!("{normal}/preview/offer"), 1_000_000).await;
    let (p50, p99) = latency(&client, &format!("{normal}/webhooks/offer"), 500.0, 2500).await;
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| triggers/s, durable commit (POST /webhooks), synchronous = normal | {stored:.0} | >= 2000 |");
    println!(
        "| triggers/s, durable commit, synchronous = full (WAL flushed before answering) | {stored_full:.0} | |"
    );
    println!(
        "| triggers/s, same server without storing (POST /preview) | {baseline:.0} | (baseline) |"
    );
    println!(
        "| ratio stored (normal) / baseline | {:.2} | |",
        stored / baseline
    );
    println!(
        "| p50 latency at 500/s | {:.2} ms | |",
        p50.as_secs_f64() * 1e3
    );
    println!(
        "| p99 latency at 500/s | {:.2} ms | <= 50 ms |",
        p99.as_secs_f64() * 1e3
    );
}

/// A server on port 0 with the example mapping and its own database; returns its base URL
/// and the folder to keep alive.
async fn start(synchronous: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::copy(
        root.join("mappings/offer.toml"),
        dir.path().join("mappings/offer.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        format!(
            "[templates]\ndir = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://bench.db\"\nsynchronous = \"{synchronous}\"\n",
            root.join("templates").display()
        ),
    )
    .unwrap();
    let settings = Settings::load(Some(&dir.path().join("pegabridge.toml"))).unwrap();
    let app = Application::build(&settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    (base, dir)
}

/// A distinct trigger (a fresh InteractionID, so idempotency does not short-circuit).
fn body(n: usize) -> serde_json::Value {
    json!({"Offer": {"UniqueOfferId": "OFFER-1"},
           "Customers": [{"Email": format!("c{}@example.com", n % 5000), "CustomerID": format!("{}", n % 5000),
                          "InteractionID": format!("{}", 1_000_000_000_000i64 + n as i64)}]})
}

async fn throughput(client: &reqwest::Client, url: &str, offset: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, next) = (client.clone(), url.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= TOTAL {
                    break;
                }
                let res = client
                    .post(&url)
                    .bearer_auth("change-me")
                    .json(&body(n + offset))
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success(), "{}", res.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    TOTAL as f64 / start.elapsed().as_secs_f64()
}

async fn latency(
    client: &reqwest::Client,
    url: &str,
    rate: f64,
    count: usize,
) -> (Duration, Duration) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let res = client
                .post(&url)
                .bearer_auth("change-me")
                .json(&body(2_000_000 + i))
                .send()
                .await
                .unwrap();
            assert!(res.status().is_success());
            t.elapsed()
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}
