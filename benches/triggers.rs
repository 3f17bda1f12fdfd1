//! `cargo bench --bench triggers`: a bounded load on loopback against `serve`.
//! - throughput: triggers accepted per second with the durable commit (POST /webhooks), and in
//!   the same run the same server answering without storing (POST /preview, same mapping work);
//! - latency: p50/p99 at a fixed 500 triggers/s;
//! - scale: triggers/s with 1,000,000 customers already stored against an empty store (the
//!   same triggers, same run), and one trigger of 100,000 recipients (recipients/s) with the
//!   p99 of small triggers sent meanwhile. `BENCH_BULK_POSTGRES=1` (with
//!   `PEGABRIDGE_TEST_POSTGRES_URL`) runs only that one, on PostgreSQL.
//!
//! Targets: >= 2,000 triggers/s, p99 <= 50 ms at 500/s, 1M customers within 20% of empty,
//! >= 20,000 recipients/s.

mod common;

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
    if std::env::var_os("BENCH_BULK_POSTGRES").is_some() {
        return bulk_on_postgres(&client).await;
    }
    let (normal, _keep1) = start("normal").await;
    let (full, _keep2) = start("full").await;

    let stored = throughput(&client, &format!("{normal}/webhooks/offer"), 0).await;
    let stored_full = throughput(&client, &format!("{full}/webhooks/offer"), 0).await;
    let baseline = throughput(&client, &format!("{normal}/preview/offer"), 1_000_000).await;
    let (p50, p99) = latency(&client, &format!("{normal}/webhooks/offer"), 500.0, 2500).await;

    let (empty, _keep3) = start_with("normal", LIMITS).await;
    let (million, _keep4) = start_filled(MILLION).await;
    let on_empty = throughput_of(&client, &format!("{empty}/webhooks/offer"), spread).await;
    let on_million = throughput_of(&client, &format!("{million}/webhooks/offer"), spread).await;
    let (bulk_secs, small_p99, small_n) = bulk(&client, &empty).await;
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
    println!(
        "| triggers/s, empty store (customers spread over 1M ids) | {on_empty:.0} | (baseline) |"
    );
    println!("| triggers/s, 1,000,000 customers stored (same triggers) | {on_million:.0} | |");
    println!(
        "| ratio 1M customers / empty | {:.2} | >= 0.80 |",
        on_million / on_empty
    );
    println!(
        "| one trigger of {BULK} recipients | {bulk_secs:.2} s ({:.0} recipients/s) | >= 20000/s |",
        BULK as f64 / bulk_secs
    );
    println!(
        "| p99 of {small_n} small triggers sent meanwhile (20/s) | {:.1} ms | |",
        small_p99.as_secs_f64() * 1e3
    );
}

const MILLION: usize = 1_000_000;
const BULK: usize = 100_000;
/// Limits that admit the bulk trigger.
const LIMITS: &str = "body_limit = 67108864\nmax_recipients = 200000\nmax_trigger_options_bytes = 67108864\nrequest_timeout_secs = 120\n";

/// The `n`th trigger for a customer spread over a million ids.
fn spread(n: usize) -> serde_json::Value {
    let id = (n * 7919) % MILLION;
    json!({"Offer": {"UniqueOfferId": "OFFER-1"},
           "Customers": [{"Email": format!("m{id}@example.com"), "CustomerID": format!("M{id}"),
                          "InteractionID": format!("{}", 5_000_000_000_000i64 + n as i64)}]})
}

/// A server whose store already holds `n` customers (written straight into its database
/// before it starts, with the ids [`spread`] uses).
async fn start_filled(n: usize) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    // Migrated by the store, then filled in one transaction.
    drop(
        pegabridge::store::Storage::connect(&format!("sqlite://{}", db.display()), "normal", 1)
            .await
            .unwrap(),
    );
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("BEGIN").unwrap();
    {
        let mut insert = c
            .prepare("INSERT INTO customers (email, external_id, created_at) VALUES (?1, ?2, 0)")
            .unwrap();
        for id in 0..n {
            insert
                .execute((format!("m{id}@example.com"), format!("M{id}")))
                .unwrap();
        }
    }
    c.execute_batch("COMMIT").unwrap();
    drop(c);
    start_in(dir, "normal", LIMITS).await
}

/// One trigger of [`BULK`] recipients on `base`, with small triggers sent at 20/s meanwhile:
/// the bulk trigger's seconds, the small ones' p99 and count.
async fn bulk(client: &reqwest::Client, base: &str) -> (f64, Duration, usize) {
    let customers: Vec<serde_json::Value> = (0..BULK)
        .map(|i| {
            json!({"Email": format!("b{i}@example.com"), "CustomerID": format!("B{i}"),
                   "InteractionID": format!("{}", 7_000_000_000_000i64 + i as i64)})
        })
        .collect();
    let body =
        serde_json::to_vec(&json!({"Offer": {"UniqueOfferId": "OFFER-1"}, "Customers": customers}))
            .unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let small = {
        let (client, url, done) = (
            client.clone(),
            format!("{base}/webhooks/offer"),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut times = Vec::new();
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let res = client
                    .post(&url)
                    .bearer_auth("change-me")
                    .json(&body_at(9_000_000, n))
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success());
                times.push(t.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            times
        })
    };
    let start = Instant::now();
    let res = client
        .post(format!("{base}/webhooks/offer"))
        .bearer_auth("change-me")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(res.status().is_success(), "{}", res.status());
    done.store(true, Ordering::Relaxed);
    let mut times = small.await.unwrap();
    times.sort();
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    (secs, p99, times.len())
}

/// `BENCH_BULK_POSTGRES=1`: only the bulk trigger, on a database of its own on the
/// PostgreSQL server at `PEGABRIDGE_TEST_POSTGRES_URL`.
async fn bulk_on_postgres(client: &reqwest::Client) {
    let server = std::env::var("PEGABRIDGE_TEST_POSTGRES_URL")
        .expect("BENCH_BULK_POSTGRES=1 needs PEGABRIDGE_TEST_POSTGRES_URL");
    let db = common::Database::create(&server).await;
    let dir = tempfile::tempdir().unwrap();
    common::offer_mapping(dir.path());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{LIMITS}[store]\nurl = \"{}\"\n",
        db.url
    );
    let base = common::serve_in(dir.path(), &config).await;
    let (secs, small_p99, small_n) = bulk(client, &base).await;
    println!("| measure (PostgreSQL) | value |");
    println!("|---|---|");
    println!(
        "| one trigger of {BULK} recipients | {secs:.2} s ({:.0} recipients/s) |",
        BULK as f64 / secs
    );
    println!(
        "| p99 of {small_n} small triggers sent meanwhile (20/s) | {:.1} ms |",
        small_p99.as_secs_f64() * 1e3
    );
    db.drop().await;
}

/// A server on port 0 with the example mapping and its own database; returns its base URL
/// and the folder to keep alive.
async fn start(synchronous: &str) -> (String, tempfile::TempDir) {
    start_with(synchronous, "").await
}

/// Like [`start`], with more `[server]` keys.
async fn start_with(synchronous: &str, server: &str) -> (String, tempfile::TempDir) {
    start_in(tempfile::tempdir().unwrap(), synchronous, server).await
}

/// A server in `dir` (whose `bench.db` may exist already).
async fn start_in(
    dir: tempfile::TempDir,
    synchronous: &str,
    server: &str,
) -> (String, tempfile::TempDir) {
    common::offer_mapping(dir.path());
    let base = common::serve_in(
        dir.path(),
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}[store]\nurl = \"sqlite://bench.db\"\nsynchronous = \"{synchronous}\"\n"),
    )
    .await;
    (base, dir)
}

/// A distinct trigger (a fresh InteractionID, so idempotency does not short-circuit).
fn body(n: usize) -> serde_json::Value {
    body_at(0, n)
}

/// The `n`th trigger of a series starting at `base`.
fn body_at(base: usize, n: usize) -> serde_json::Value {
    let n = base + n;
    json!({"Offer": {"UniqueOfferId": "OFFER-1"},
           "Customers": [{"Email": format!("c{}@example.com", n % 5000), "CustomerID": format!("{}", n % 5000),
                          "InteractionID": format!("{}", 1_000_000_000_000i64 + n as i64)}]})
}

async fn throughput(client: &reqwest::Client, url: &str, offset: usize) -> f64 {
    throughput_of(client, url, move |n| body(n + offset)).await
}

/// Triggers/s posting [`TOTAL`] bodies made by `make` with [`CONCURRENCY`] at once.
async fn throughput_of(
    client: &reqwest::Client,
    url: &str,
    make: impl Fn(usize) -> serde_json::Value + Send + Sync + Copy + 'static,
) -> f64 {
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
                    .json(&make(n))
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
