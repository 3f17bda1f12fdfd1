//! `cargo bench --bench kafka`: events/s from `POST /activities` (batches of 100, 8 in
//! flight) to records acknowledged by a Kafka-protocol broker (Tansu, memory storage, on
//! loopback), beside the same events through the REST sink to the in-process loopback
//! receiver, in the same run, each sink with its defaults. Target: at least the REST figure.
//!
//! Then the end-to-end latency at a steady 1,000 events/s for 10 s: from the start of each
//! single-activity POST to the record read back from the topic by a consumer (rskafka,
//! fetching with a 5 ms wait). Target: p99 under 50 ms.
//!
//! Needs Tansu: the virtual environment the Kafka tests make (`target/kafka-test-venv`, from
//! `cargo test --test api kafka`), or `PEGABRIDGE_TANSU=/path/to/tansu`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCHES: usize = 200;
const PER_BATCH: usize = 100;
const IN_FLIGHT: usize = 8;

fn tansu() -> std::path::PathBuf {
    if let Ok(t) = std::env::var("PEGABRIDGE_TANSU") {
        return t.into();
    }
    let lib = common::root().join("target/kafka-test-venv/lib");
    walkdir::WalkDir::new(&lib)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "tansu")
        .map(walkdir::DirEntry::into_path)
        .expect("Tansu: run `cargo test --test api kafka` once (it makes target/kafka-test-venv), or set PEGABRIDGE_TANSU")
}

/// A server from `config`, with one personal broadcast: its base URL, (broadcast, customer).
async fn server(config: &str) -> (String, (i64, i64), tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    common::offer_mapping(dir.path());
    let base = common::serve_in(
        dir.path(),
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://bench.db\"\n[activities]\ntoken = \"a\"\n[admin]\ntoken = \"adm\"\n{config}"),
    )
    .await;
    let answer: Value = reqwest::Client::new()
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
    let key = (
        answer["broadcast_id"].as_i64().unwrap(),
        answer["recipients"][0]["customer_id"].as_i64().unwrap(),
    );
    (base, key, dir)
}

/// A counter of `/metrics` (0 before it is first counted).
async fn counter(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .bearer_auth("adm")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Posts `BATCHES` x `PER_BATCH` opens, `IN_FLIGHT` at a time; events/s until `delivered`
/// (a `/metrics` counter) has grown by all of them.
async fn throughput(base: &str, key: (i64, i64), delivered: &str) -> f64 {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let before = counter(&client, base, delivered).await;
    let batch: Vec<Value> = (0..PER_BATCH)
        .map(|_| json!({"metric": "opens", "broadcast_id": key.0, "customer_id": key.1}))
        .collect();
    let n = (BATCHES * PER_BATCH) as u64;
    let start = Instant::now();
    futures::stream::iter(0..BATCHES)
        .map(|_| {
            let r = client
                .post(format!("{base}/activities"))
                .bearer_auth("a")
                .json(&batch);
            async move { assert_eq!(r.send().await.unwrap().status(), 202) }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    while counter(&client, base, delivered).await < before + n {
        assert!(start.elapsed() < Duration::from_secs(300), "not delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let port = common::free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut broker = Command::new(tansu())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let created = Command::new(tansu())
        .args([
            "topic",
            "create",
            "--broker",
            &url,
            "--partitions",
            "1",
            "bench",
        ])
        .status()
        .unwrap();
    assert!(created.success());

    let (_pega, pega_url) = common::receiver().await;
    let (rest, rest_key, _d1) = server(&format!(
        "[pega]\nendpoint = \"{pega_url}/in\"\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pw\"\n"
    ))
    .await;
    let (kafka, kafka_key, _d2) = server(&format!(
        "[kafka]\nbrokers = [\"127.0.0.1:{port}\"]\ntopic = \"bench\"\n{}\n",
        std::env::var("BENCH_KAFKA").unwrap_or_default()
    ))
    .await;

    let mut rest_runs = Vec::new();
    let mut kafka_runs = Vec::new();
    let (mut own, mut theirs) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        rest_runs.push(throughput(&rest, rest_key, "pegabridge_delivered_total").await);
        let before = (cpu_time::ProcessTime::now(), common::cpu_of(broker.id()));
        kafka_runs.push(throughput(&kafka, kafka_key, "pegabridge_kafka_delivered_total").await);
        own += before.0.elapsed();
        theirs += common::cpu_of(broker.id()) - before.1;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, k) = (median(rest_runs), median(kafka_runs));
    println!("| events/s, POST /activities to the REST sink (loopback receiver), median of 3 | {r:.0} | (baseline) |");
    println!(
        "| events/s, POST /activities to records acknowledged by the broker, median of 3 | {k:.0} | {:.2} of REST (target >= 1) |",
        k / r
    );

    let text = reqwest::Client::new()
        .get(format!("{kafka}/metrics"))
        .bearer_auth("adm")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in text.lines().filter(|l| {
        l.starts_with("pegabridge_kafka_delivery_rtt")
            || l.starts_with("pegabridge_kafka_delivery_latency_seconds_count")
    }) {
        eprintln!("{line}");
    }
    let n = (3 * BATCHES * PER_BATCH) as f64;
    println!(
        "| CPU per event to Kafka: this process (both servers, the clients) / the broker | {:.3} / {:.3} ms | |",
        own.as_secs_f64() * 1e3 / n,
        theirs.as_secs_f64() * 1e3 / n
    );
    let p = latency(&kafka, kafka_key, port).await;
    println!("| end-to-end latency at 1,000 events/s for 10 s, POST to record read back: p50 / p99 / max | {:.1} / {:.1} / {:.1} ms | target p99 < 50 ms |", p.0, p.1, p.2);
    let _ = broker.kill();
    let _ = broker.wait();
}

/// p50, p99 and the longest time (ms) from a POST's start to its record read back, at 1,000
/// single-activity POSTs a second for 10 s.
async fn latency(base: &str, key: (i64, i64), port: u16) -> (f64, f64, f64) {
    let client = rskafka::client::ClientBuilder::new(vec![format!("127.0.0.1:{port}")])
        .build()
        .await
        .unwrap();
    let partition = client
        .partition_client("bench", 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut offset = partition.get_offset(OffsetAt::Latest).await.unwrap();
    let reader = tokio::spawn({
        let arrived = arrived.clone();
        async move {
            loop {
                let (records, _) = partition
                    .fetch_records(offset, 1..1_000_000, 5)
                    .await
                    .unwrap();
                let now = Instant::now();
                for r in records {
                    offset = r.offset + 1;
                    if let Some(u) = r.record.headers.get("uuid") {
                        arrived
                            .lock()
                            .unwrap()
                            .insert(String::from_utf8_lossy(u).into_owned(), now);
                    }
                }
            }
        }
    });
    let http = reqwest::Client::new();
    let sent: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut posts = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        tick.tick().await;
        let (http, base, sent) = (http.clone(), base.to_owned(), sent.clone());
        posts.spawn(async move {
            let start = Instant::now();
            let answer: Value = http
                .post(format!("{base}/activities"))
                .bearer_auth("a")
                .json(&json!({"metric": "opens", "broadcast_id": key.0, "customer_id": key.1}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let uuid = answer["activities"][0]["uuid"].as_str().unwrap().to_owned();
            sent.lock().unwrap().push((uuid, start));
        });
    }
    while posts.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ms: Vec<f64> = loop {
        let sent = sent.lock().unwrap().clone();
        let got: Vec<f64> = {
            let arrived = arrived.lock().unwrap();
            sent.iter()
                .filter_map(|(u, s)| {
                    arrived
                        .get(u)
                        .map(|a| a.duration_since(*s).as_secs_f64() * 1e3)
                })
                .collect()
        };
        if got.len() == sent.len() || Instant::now() > deadline {
            assert_eq!(got.len(), sent.len(), "every record read back");
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    reader.abort();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    (at(0.5), at(0.99), ms[ms.len() - 1])
}
