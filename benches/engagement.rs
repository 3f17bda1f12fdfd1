//! `cargo bench --bench engagement`:
//! - the classifier's cost per tracked request with a relay list the size of Apple's loaded
//!   (50,000 ranges, IPv4 and IPv6; this machine cannot download Apple's own), for the bare
//!   `Mozilla/5.0` (a range lookup) and for a mail client's user agent (the table). Target:
//!   under 5 us.
//! - a tracked request (the open pixel) to its event at the receiver, p50 and p99, with
//!   `hold_secs = 1` and with `hold_secs = 0` in the same run. Target: at most 50 ms above the
//!   hold.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use pegabridge::config::mail::TrackingSettings;
use pegabridge::config::secret::Secret;
use pegabridge::engagement::{classify, relay::Ranges, Evidence};
use pegabridge::mail::tracking::{Target, Tokens};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-tracking-secret-of-at-least-32-chars";

/// A list shaped like Apple's: `n` prefixes, a quarter IPv6.
fn relay_list(n: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut text = String::with_capacity(n * 40);
    for i in 0..n {
        if i % 4 == 0 {
            let a = rng.u16(..);
            let b = rng.u16(..);
            text.push_str(&format!("2a02:26f7:{a:x}:{b:x}::/64,DE,DE-BE,Berlin,\n"));
        } else {
            let ip = std::net::Ipv4Addr::from(rng.u32(..) & 0xffff_ffe0);
            text.push_str(&format!("{ip}/27,GB,GB-EN,London,\n"));
        }
    }
    text
}

fn classifier() -> (f64, f64, usize) {
    let ranges = Ranges::parse(&relay_list(50_000)).unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let addresses: Vec<IpAddr> = (0..10_000)
        .map(|i| {
            if i % 4 == 0 {
                IpAddr::V6(std::net::Ipv6Addr::from(rng.u128(..)))
            } else {
                IpAddr::V4(std::net::Ipv4Addr::from(rng.u32(..)))
            }
        })
        .collect();
    let client = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    let time = |ua: &str| {
        let rounds = 20;
        let start = Instant::now();
        let mut machines = 0usize;
        for _ in 0..rounds {
            for ip in &addresses {
                let e = Evidence {
                    user_agent: ua,
                    client: Some(*ip),
                    ..Evidence::default()
                };
                machines += usize::from(classify(&e, Some(&ranges)).machine);
            }
        }
        std::hint::black_box(machines);
        start.elapsed().as_secs_f64() * 1e6 / (rounds * addresses.len()) as f64
    };
    (time("Mozilla/5.0"), time(client), ranges.len())
}

/// p50 and p99 (ms) from pixel requests to their events at the receiver, for `hold_secs`.
async fn pixel_latency(hold_secs: u64, n: usize) -> (f64, f64) {
    let (pega, pega_url) = common::receiver().await;
    let dir = tempfile::tempdir().unwrap();
    common::offer_mapping(dir.path());
    let base = common::serve_in(
        dir.path(),
        &format!("[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n[store]\nurl = \"sqlite://bench.db\"\n[pega]\nendpoint = \"{pega_url}/in\"\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pw\"\n[tracking]\nbase_url = \"https://t.example\"\nsecret = \"{SECRET}\"\n[engagement]\nhold_secs = {hold_secs}\ntoo_soon_secs = 0\n"),
    )
    .await;
    let client = reqwest::Client::new();
    let answer: serde_json::Value = client
        .post(format!("{base}/webhooks/offer"))
        .bearer_auth("change-me")
        .json(&serde_json::json!({"Offer": {"UniqueOfferId": "OFFER-1"},
            "Customers": [{"Email": "ann@example.com", "CustomerID": "1", "InteractionID": "1"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tokens = Tokens::new(&TrackingSettings {
        base_url: "https://t.example".into(),
        secret: Secret::new(SECRET),
    });
    let pixel = tokens
        .url(&Target::Open {
            broadcast_id: answer["broadcast_id"].as_i64().unwrap(),
            customer_id: answer["recipients"][0]["customer_id"].as_i64().unwrap(),
        })
        .replace("https://t.example", &base);
    while pega.event_count() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // One pixel fetch every 5 ms, each from its own client (not a repeat), each marked by
    // its user agent.
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        sent.push(Instant::now());
        let res = client
            .get(&pixel)
            .header("user-agent", format!("Mozilla/5.0 (bench {i})"))
            .header(
                "x-forwarded-for",
                format!("203.0.{}.{}", i / 250, i % 250 + 1),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while pega.event_count() < n + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (events, arrivals) = (pega.events(), pega.arrivals());
    let mut latencies: Vec<f64> = events
        .iter()
        .zip(arrivals)
        .filter_map(|(e, at)| {
            let ua = e["user_agent"].as_str()?;
            let i: usize = ua
                .strip_prefix("Mozilla/5.0 (bench ")?
                .strip_suffix(')')?
                .parse()
                .ok()?;
            Some(at.duration_since(sent[i]).as_secs_f64() * 1000.0)
        })
        .collect();
    assert_eq!(latencies.len(), n, "every fetch arrived");
    latencies.sort_by(f64::total_cmp);
    (latencies[n / 2], latencies[n * 99 / 100])
}

#[tokio::main]
async fn main() {
    let (bare, client, ranges) = classifier();
    let (p50_0, p99_0) = pixel_latency(0, 400).await;
    let (p50_1, p99_1) = pixel_latency(1, 400).await;
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| classifier, bare `Mozilla/5.0` (range lookup, {ranges} merged ranges) | {bare:.3} us | < 5 us |");
    println!("| classifier, a mail client's user agent (the table) | {client:.3} us | < 5 us |");
    println!("| pixel to event at the receiver, hold_secs = 0: p50 / p99 | {p50_0:.1} / {p99_0:.1} ms | |");
    println!(
        "| pixel to event at the receiver, hold_secs = 1: p50 / p99 | {p50_1:.1} / {p99_1:.1} ms | <= 1050 ms |"
    );
}
