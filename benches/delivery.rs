//! `cargo bench --bench delivery`: end to end on loopback with bounded load.
//! - throughput: activities/s from `POST /activities` to arrival at a receiver, and in the same
//!   run a plain client posting the same event bodies (`[{...}]`, one event each) to the same
//!   receiver with the same number of requests in flight; at two load levels, and with
//!   pegabridge's default `[pega]` (adaptive concurrency, `batch_size = 1`) and with
//!   `batch_size = 16`. Each setup runs
//!   [`TRIALS`] alternating trials of both; medians are reported, with each side's process CPU
//!   time per event (everything runs in this one process: load, pegabridge and receiver);
//! - latency: p50/p99 from an activity's POST to its arrival, at a fixed 1,000/s;
//! - memory: resident size of `pegabridge serve` holding 1,000,000 pending events with the
//!   endpoint down, beside the same process with an empty outbox.
//!
//! Targets: >= 0.5 of the raw rate (the efficiency issue's: 0.3 with the default
//! configuration); p99 <= 100 ms at 1,000/s; <= 150 MB with the backlog.
//! `BENCH_THROUGHPUT_ONLY=1` skips latency and memory; `BENCH_SETUPS=64/16,16/1` runs only
//! the given setups (in flight/batch_size); `BENCH_BRIDGED_ONLY=1` runs only pegabridge's side
//! (for profiling: no plain client, no ratio); `BENCH_THREADS=1` prints each thread's CPU per
//! event; `BENCH_LIMITER=1` prints the concurrency limit, round trip and its last decrease
//! after each trial; `BENCH_OUTAGE_ONLY=1` runs only the mid-bulk outage.
#![allow(clippy::too_many_lines)] // a bench reads best as its scenarios, whole

mod common;

/// The allocator the `pegabridge` binary uses (`src/main.rs`), so that what is measured here
/// runs as it ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::load::{
    first_broadcast, post_activity, send_expecting, trial, wait_for, write_config_with,
};
use common::{fill_sqlite, payload, receiver, receiver_with};
use pegabridge::app::Application;
use pegabridge::config::Settings;
use pegabridge::mock::Behaviour;
use pegabridge::mock::MockPega;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Activities per trial.
const ACTIVITIES: usize = 10000;
/// Alternating trials per setup.
const TRIALS: usize = 7;
/// (requests in flight for both clients, pegabridge's `batch_size`).
const SETUPS: [(usize, usize); 3] = [(16, 1), (64, 1), (64, 16)];

/// Medians of one setup's trials.
struct Row {
    in_flight: usize,
    batch_size: usize,
    bridged: f64,
    raw: f64,
    ratio: f64,
    bridged_cpu_us: f64,
    raw_cpu_us: f64,
}

#[tokio::main]
async fn main() {
    if std::env::var_os("BENCH_OUTAGE_ONLY").is_some() {
        mid_bulk_outage().await;
        return;
    }
    if std::env::var_os("BENCH_ENDPOINT_ONLY").is_some() {
        endpoints().await;
        return;
    }
    if std::env::var_os("BENCH_STEADY_ONLY").is_some() {
        steady().await;
        return;
    }
    let (pega, pega_url) = receiver().await;
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    let mut latency_server = None;
    for (in_flight, batch_size) in setups() {
        let dir = tempfile::tempdir().unwrap();
        let base = server(dir.path(), &pega_url, batch_size).await;
        let open = first_broadcast(&client, &base, &pega).await;
        let open_body = serde_json::to_vec(&open).unwrap();
        // The plain client posts what pegabridge posts: one of its events, as an array.
        let before = pega.event_count();
        trial(in_flight, 1, || post_activity(&client, &base, &open_body)).await;
        wait_for(&pega, before + 1).await;
        let event = pega.events().pop().unwrap();
        let event_body = serde_json::to_vec(&vec![event]).unwrap();

        let (mut bridged, mut raw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        let (mut bridged_cpu, mut raw_cpu) = (Vec::new(), Vec::new());
        for _ in 0..TRIALS {
            let before = pega.event_count();
            let threads = threads_cpu();
            let (rate, cpu) = measured(|| async {
                trial(in_flight, ACTIVITIES, || {
                    post_activity(&client, &base, &open_body)
                })
                .await;
                wait_for(&pega, before + ACTIVITIES).await;
            })
            .await;
            if std::env::var_os("BENCH_LIMITER").is_some() {
                let metrics = metrics_of(&base).await;
                println!(
                    "limit {}, rtt {} s, last decrease {}",
                    gauge(&metrics, "pegabridge_delivery_concurrency_limit"),
                    gauge(&metrics, "pegabridge_delivery_rtt_seconds"),
                    last_decrease(&metrics)
                );
            }
            if std::env::var_os("BENCH_THREADS").is_some() {
                let after = threads_cpu();
                for (name, t) in &after {
                    let us = t.saturating_sub(*threads.get(name).unwrap_or(&0)) as f64 * 1e4
                        / ACTIVITIES as f64;
                    println!("thread {name}: {us:.0} us/event");
                }
            }
            bridged.push(rate);
            bridged_cpu.push(cpu);
            if std::env::var_os("BENCH_BRIDGED_ONLY").is_some() {
                continue;
            }
            let before = pega.event_count();
            let (rate, cpu) = measured(|| async {
                trial(in_flight, ACTIVITIES, || {
                    post_basic(&client, &format!("{pega_url}/raw"), &event_body)
                })
                .await;
            })
            .await;
            assert_eq!(pega.event_count(), before + ACTIVITIES);
            raw.push(rate);
            raw_cpu.push(cpu);
            ratio.push(bridged[bridged.len() - 1] / rate);
        }
        rows.push(Row {
            in_flight,
            batch_size,
            bridged: median(bridged),
            raw: median_or_zero(raw),
            ratio: median_or_zero(ratio),
            bridged_cpu_us: median(bridged_cpu),
            raw_cpu_us: median_or_zero(raw_cpu),
        });
        if latency_server.is_none() {
            latency_server = Some((dir, base, open));
        }
    }

    println!("| in flight | batch_size | pegabridge activities/s (POST to arrival) | plain client requests/s | ratio (target >= 0.5) | CPU per event, pegabridge path | CPU per event, plain client |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} us | {:.0} us |",
            r.in_flight, r.batch_size, r.bridged, r.raw, r.ratio, r.bridged_cpu_us, r.raw_cpu_us
        );
    }
    if std::env::var_os("BENCH_THROUGHPUT_ONLY").is_some() {
        return;
    }
    let (_dir, base, open) = latency_server.unwrap();
    let (p50, p99) = latency(&client, &base, &open, &pega, 1000.0, 3000).await;
    let (empty_rss, backlog_rss) = memory(&pega_url);

    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| p50 activity-to-arrival at 1,000/s | {:.1} ms | |",
        p50 * 1e3
    );
    println!(
        "| p99 activity-to-arrival at 1,000/s | {:.1} ms | <= 100 ms |",
        p99 * 1e3
    );
    println!("| resident size, empty outbox | {:.1} MB | |", empty_rss);
    println!(
        "| resident size, 1,000,000 pending events, endpoint down | {:.1} MB | <= 150 MB |",
        backlog_rss
    );
    println!();
    endpoints().await;
}

/// A server with the default `[pega]` settings (adaptive concurrency, `batch_size = 1`) and
/// `n` events already pending, delivering to `url`; returns when it has started.
async fn backlog_server(n: usize, url: &str, pega: &str) -> tempfile::TempDir {
    backlog_server_on(n, "127.0.0.1:0", url, pega).await
}

/// [`backlog_server`], listening on `listen`.
async fn backlog_server_on(n: usize, listen: &str, url: &str, pega: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_config_with(dir.path(), listen, &format!("{url}/in"), pega);
    // Migrated by the store, filled, then served.
    drop(
        pegabridge::store::Storage::connect(
            &format!("sqlite://{}", dir.path().join("bench.db").display()),
            "normal",
            1,
        )
        .await
        .unwrap(),
    );
    fill_sqlite(&dir.path().join("bench.db"), &payload(), n);
    let settings = Settings::load(Some(&dir.path().join("pegabridge.toml"))).unwrap();
    let app = Application::build(&settings).await.unwrap();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    dir
}

/// Events/s from `start` (the server's start, after its backlog was written) to the arrival
/// of all `n`.
async fn drain(pega: &MockPega, n: usize, start: Instant) -> f64 {
    wait_for(pega, n).await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// The endpoint scenarios: a slow endpoint, a rate-limited one, the loopback one with the
/// defaults, and one down for a while.
async fn endpoints() {
    println!("| endpoint (default [pega]: adaptive concurrency up to 256, batch_size = 1) | measure | value | target |");
    println!("|---|---|---|---|");

    if std::env::var_os("BENCH_LOOPBACK_ONLY").is_none() {
        // Answers every POST after 50 ms.
        let n = 30_000;
        let (slow, url) = receiver_with(Behaviour {
            delay: Duration::from_millis(50),
            ..Behaviour::default()
        })
        .await;
        let port = common::free_port();
        let _dir = backlog_server_on(n, &format!("127.0.0.1:{port}"), &url, "").await;
        let start = Instant::now();
        let rate = drain(&slow, n, start).await;
        let ideal = 256.0 / 0.05;
        println!(
            "| answers after 50 ms | events/s ({n} pending) | {rate:.0} | >= {:.0} (0.8 of the ideal) |",
            0.8 * ideal
        );
        println!("| answers after 50 ms | ideal at 256 in flight (256 / 50 ms) | {ideal:.0} | |");
        println!(
            "| answers after 50 ms | most requests in flight at once | {} | <= 256 |",
            slow.max_in_flight()
        );
        println!(
            "| answers after 50 ms | the limit's last decrease | {} | |",
            last_decrease(&metrics_of(&format!("http://127.0.0.1:{port}")).await)
        );
        drop(_dir);

        // Allows R requests per second, 429 with Retry-After: 1 beyond.
        let r = 1000;
        let n = 20_000;
        let (limited, url) = receiver_with(Behaviour {
            rate_limit: Some(r),
            ..Behaviour::default()
        })
        .await;
        let _dir = backlog_server(n, &url, "").await;
        let start = Instant::now();
        let rate = drain(&limited, n, start).await;
        let after = start + Duration::from_secs(10);
        let requests = limited
            .request_times()
            .iter()
            .filter(|t| **t >= after)
            .count();
        let refused = limited.limited().iter().filter(|t| **t >= after).count();
        println!("| allows {r} requests/s, 429 + Retry-After: 1 beyond | events/s ({n} pending) | {rate:.0} ({:.2} R) | >= 0.8 R |", rate / r as f64);
        println!(
            "| allows {r} requests/s | 429s after the first 10 s | {:.1}% of {requests} | < 5% |",
            100.0 * refused as f64 / requests.max(1) as f64
        );
        drop(_dir);
    }

    // The loopback receiver, answering at once.
    let n = 50_000;
    let (fast, url) = receiver().await;
    let extra = std::env::var("BENCH_LOOPBACK_PEGA")
        .unwrap_or_default()
        .replace("\\n", "\n");
    let _dir = backlog_server(n, &url, &extra).await;
    let start = Instant::now();
    let rate = drain(&fast, n, start).await;
    println!("| loopback, answers at once | events/s ({n} pending) | {rate:.0} | >= 9500 |");
    drop(_dir);

    if std::env::var_os("BENCH_LOOPBACK_ONLY").is_some() {
        return;
    }
    // The same, taking activities as fast as 64 clients send them meanwhile.
    let (fast, url) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    write_config_with(dir.path(), "127.0.0.1:0", &format!("{url}/in"), "");
    let settings = Settings::load(Some(&dir.path().join("pegabridge.toml"))).unwrap();
    let app = Application::build(&settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::new();
    let open = first_broadcast(&client, &base, &fast).await;
    let body = serde_json::to_vec(&open).unwrap();
    let n = 30_000;
    let before = fast.event_count();
    let start = Instant::now();
    trial(64, n, || post_activity(&client, &base, &body)).await;
    let intake_secs = start.elapsed().as_secs_f64();
    let behind = n - (fast.event_count() - before);
    wait_for(&fast, before + n).await;
    let total = start.elapsed().as_secs_f64();
    println!(
        "| loopback, 64 clients posting activities | intake activities/s | {:.0} | |",
        n as f64 / intake_secs
    );
    println!(
        "| loopback, 64 clients posting activities | events not yet delivered when intake ended | {behind} ({:.0} ms of delivery) | |",
        (total - intake_secs) * 1e3
    );
    println!(
        "| loopback, 64 clients posting activities | delivered events/s, first POST to last arrival | {:.0} | |",
        n as f64 / total
    );

    // Down (503) for a while, then back.
    let down_secs: u64 = std::env::var("BENCH_DOWN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let n = 5_000;
    let (flaky, url) = receiver_with(Behaviour {
        fail_rate: 1.0,
        ..Behaviour::default()
    })
    .await;
    let start = Instant::now();
    let _dir = backlog_server(
        n,
        &url,
        "[pega.retry]\nbase_ms = 200\nmax_delay_secs = 10\nmax_attempts = 1000",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(down_secs)).await;
    flaky.control(|b| b.fail_rate = 0.0);
    let back = Instant::now();
    wait_for(&flaky, n).await;
    let times = flaky.request_times();
    // Once open (10 s in, well after the first failures), requests per 5 s probe interval.
    let mut worst = 0;
    let mut t = start + Duration::from_secs(10);
    while t + Duration::from_secs(5) <= back {
        let in_interval = times
            .iter()
            .filter(|x| **x >= t && **x < t + Duration::from_secs(5))
            .count();
        worst = worst.max(in_interval);
        t += Duration::from_secs(5);
    }
    println!(
        "| down (503) for {down_secs} s, then back | most requests in a 5 s probe interval while down | {worst} | <= 1 |"
    );
    println!(
        "| down (503) for {down_secs} s, then back | all {n} delivered, seconds after it came back | {:.1} | |",
        back.elapsed().as_secs_f64()
    );

    mid_bulk_outage().await;
}

/// Down in the middle of a bulk send: answering, then 503 right after thousands were
/// delivered (the breaker's window full of successes), for 30 s, then back.
async fn mid_bulk_outage() {
    let n = 40_000;
    let (flaky, url) = receiver_with(Behaviour::default()).await;
    let port = common::free_port();
    let _dir = backlog_server_on(
        n,
        &format!("127.0.0.1:{port}"),
        &url,
        "[pega.retry]\nbase_ms = 200\nmax_delay_secs = 10\nmax_attempts = 1000",
    )
    .await;
    while flaky.request_times().len() < 4_900 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The limit and the POSTs under way, just before it goes down.
    let metrics = metrics_of(&format!("http://127.0.0.1:{port}")).await;
    let (limit, under_way) = (
        gauge(&metrics, "pegabridge_delivery_concurrency_limit"),
        gauge(&metrics, "pegabridge_delivery_requests_in_flight"),
    );
    while flaky.request_times().len() < 5_000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    flaky.control(|b| b.fail_rate = 1.0);
    let down = Instant::now();
    let before = flaky.request_times().len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after_down: Vec<Duration> = (flaky.request_times().iter())
        .filter(|t| **t >= down)
        .map(|t| t.duration_since(down))
        .collect();
    let in_first_30s = after_down.len();
    // Those already under way when it went down reach it at once; the probes come later.
    let at_once = after_down
        .iter()
        .filter(|d| **d < Duration::from_secs(1))
        .count();
    flaky.control(|b| b.fail_rate = 0.0);
    wait_for(&flaky, n).await;
    println!(
        "| down (503) right after {before} requests answered, mid-bulk | requests in its first 30 s down | {in_first_30s} | <= 60 |"
    );
    println!(
        "| down (503) mid-bulk | of which in its first second down / later (the probes) | {at_once} / {} | |",
        in_first_30s - at_once
    );
    println!(
        "| down (503) mid-bulk | concurrency limit / POSTs under way, 100 requests before | {limit} / {under_way} | |"
    );
    println!(
        "| down (503) right after {before} requests answered, mid-bulk | all {n} delivered once back | yes | |"
    );
}

/// The `/metrics` text of the server at `base`.
async fn metrics_of(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A gauge's value in a `/metrics` text (NaN when it is not there).
fn gauge(metrics: &str, name: &str) -> f64 {
    (metrics.lines())
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// Why the delivery's concurrency limit last came down, from a `/metrics` text (`none` when
/// it never did).
fn last_decrease(metrics: &str) -> String {
    let prefix = "pegabridge_delivery_concurrency_last_decrease{reason=\"";
    (metrics.lines())
        .filter_map(|l| l.strip_prefix(prefix)?.split_once("\"} "))
        .find(|(_, value)| value.trim() == "1")
        .map_or_else(|| "none".to_owned(), |(reason, _)| reason.to_owned())
}

/// [`SETUPS`], or those named by `BENCH_SETUPS`.
fn setups() -> Vec<(usize, usize)> {
    let Ok(list) = std::env::var("BENCH_SETUPS") else {
        return SETUPS.to_vec();
    };
    list.split(',')
        .map(|s| {
            let (f, b) = s
                .trim()
                .split_once('/')
                .expect("BENCH_SETUPS: in_flight/batch_size");
            (f.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// Runs `f`; returns events/s over [`ACTIVITIES`] and the process CPU microseconds per event.
async fn measured<F, Fut>(f: F) -> (f64, f64)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let cpu = cpu_time::ProcessTime::now();
    let start = Instant::now();
    f().await;
    let n = ACTIVITIES as f64;
    (
        n / start.elapsed().as_secs_f64(),
        cpu.elapsed().as_secs_f64() * 1e6 / n,
    )
}

/// CPU ticks (1/100 s) by thread name, from /proc (empty elsewhere).
fn threads_cpu() -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        *by_name.entry(stat[open + 1..close].to_owned()).or_insert(0) += ticks;
    }
    by_name
}

/// The median, or 0 when nothing was measured (`BENCH_BRIDGED_ONLY`).
fn median_or_zero(v: Vec<f64>) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        median(v)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The plain client's POST to the receiver (Basic auth, as pegabridge sends).
fn post_basic(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let req = client.post(url).basic_auth("pega", Some("pw"));
    send_expecting(req, body, 200)
}

fn write_config(dir: &std::path::Path, listen: &str, endpoint: &str, batch_size: usize) {
    write_config_with(dir, listen, endpoint, &format!("batch_size = {batch_size}"));
}

async fn server(dir: &std::path::Path, pega_url: &str, batch_size: usize) -> String {
    write_config(dir, "127.0.0.1:0", &format!("{pega_url}/in"), batch_size);
    let settings = Settings::load(Some(&dir.join("pegabridge.toml"))).unwrap();
    let app = Application::build(&settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    base
}

/// The process's CPU per event (this whole process: the load generator, `serve` and the
/// receiver) at a steady 500 activities a second for 5 s, with the default `[pega]`
/// settings (adaptive concurrency, `batch_size = 1`); three runs, each on a fresh server.
async fn steady() {
    let mut cpu_us = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..3 {
        let (pega, pega_url) = receiver().await;
        let client = reqwest::Client::new();
        let dir = tempfile::tempdir().unwrap();
        write_config_with(dir.path(), "127.0.0.1:0", &format!("{pega_url}/in"), "");
        let settings = Settings::load(Some(&dir.path().join("pegabridge.toml"))).unwrap();
        let app = Application::build(&settings).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        let open = first_broadcast(&client, &base, &pega).await;
        let n = 2500;
        let cpu = cpu_time::ProcessTime::now();
        let (_, p99) = latency(&client, &base, &open, &pega, 500.0, n).await;
        cpu_us.push(cpu.elapsed().as_secs_f64() * 1e6 / n as f64);
        p99s.push(p99 * 1e3);
    }
    println!("| measure | runs | median |");
    println!("|---|---|---|");
    println!(
        "| CPU per event at a steady 500/s (load generator, serve and receiver) | {:.0}, {:.0}, {:.0} us | {:.0} us |",
        cpu_us[0], cpu_us[1], cpu_us[2], median(cpu_us.clone())
    );
    println!(
        "| p99 activity-to-arrival at 500/s | {:.1}, {:.1}, {:.1} ms | {:.1} ms |",
        p99s[0],
        p99s[1],
        p99s[2],
        median(p99s.clone())
    );
}

/// Activities at a fixed rate; seconds from each POST to its event's arrival.
async fn latency(
    client: &reqwest::Client,
    base: &str,
    open: &Value,
    pega: &MockPega,
    rate: f64,
    count: usize,
) -> (f64, f64) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let req = client
            .post(format!("{base}/activities"))
            .bearer_auth("a")
            .json(open);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            (
                v["activities"][0]["uuid"].as_str().unwrap().to_owned(),
                sent,
            )
        }));
    }
    let mut sent = std::collections::HashMap::new();
    for t in tasks {
        let (uuid, at) = t.await.unwrap();
        sent.insert(uuid, at);
    }
    let start_wait = Instant::now();
    loop {
        let events = pega.events();
        let arrived = events
            .iter()
            .filter(|e| sent.contains_key(e["uuid"].as_str().unwrap()))
            .count();
        if arrived >= count || start_wait.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (events, arrivals) = (pega.events(), pega.arrivals());
    let mut lat: Vec<f64> = events
        .iter()
        .zip(arrivals)
        .filter_map(|(e, at)| {
            sent.get(e["uuid"].as_str().unwrap())
                .map(|s| at.duration_since(*s).as_secs_f64())
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

/// Resident MB of `serve` with an empty outbox, then with 1,000,000 pending events while its
/// endpoint refuses connections.
fn memory(_pega_url: &str) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/in", l.local_addr().unwrap())
    }; // closed again: connections are refused
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write_config(dir.path(), &format!("127.0.0.1:{port}"), &down, 1);
    let empty = rss_of_serve(dir.path(), port);
    fill_sqlite(&dir.path().join("bench.db"), &payload(), 1_000_000);
    let backlog = rss_of_serve(dir.path(), port);
    (empty, backlog)
}

fn rss_of_serve(dir: &std::path::Path, port: u16) -> f64 {
    // Let it start and run delivery rounds against the dead endpoint.
    let mut child = common::start_serve(dir, port);
    std::thread::sleep(Duration::from_secs(5));
    let mb = common::rss_mb(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    mb
}
