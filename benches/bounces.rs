//! `cargo bench --bench bounces`: reports per second through the bounce domain's SMTP
//! listener to recorded activities (target >= 500/s), and the resident size of `serve` with
//! 1,000 connections open to the listener (bounded by `max_connections`). `serve` runs as its
//! own process; 8 clients speak SMTP to it, each report (Hotmail's real mailbox-full DSN,
//! tests/bounces) to its own personal broadcast's return path, each answered after it is
//! recorded.

#![allow(clippy::too_many_lines)]

mod common;

use pegabridge::bounces::ReturnPaths;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const REPORTS: usize = 4_000;
const CLIENTS: usize = 8;
const OPEN: usize = 1_000;

const MAPPING: &str = "template = \"offer.html\"\nsubject = \"Offer\"\ncampaign_id = 1\ncampaign_name = \"Bulk\"\ncampaign_object_id = 1\ncontent_id = 1\ncontent_name = \"Bulk\"\nbroadcast_event_type = \"CAMPAIGNMAIL\"\nsub_type = \"CAMPAIGNMAIL\"\n[auth]\ntype = \"bearer\"\ntoken = \"t\"\n[recipient]\neach = \"Customers\"\nemail = \"Email\"\n";

/// Reads one SMTP reply; its first line.
async fn reply(r: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>) -> String {
    let mut first = String::new();
    while let Ok(Some(line)) = r.next_line().await {
        if first.is_empty() {
            first = line.clone();
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    first
}

#[tokio::main]
async fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/bulk.toml"), MAPPING).unwrap();
    let (http, smtp) = (common::free_port(), common::free_port());
    let bounces = format!("[bounces]\ndomain = \"bounce.example.com\"\nsecret = \"a bounce secret of more than 32 characters\"\nlisten = \"127.0.0.1:{smtp}\"\nmax_connections = {OPEN}\n");
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        format!(
            "[templates]\ndir = \"{}\"\n[server]\nlisten = \"127.0.0.1:{http}\"\nmax_recipients = 100000\nbody_limit = 67108864\nmax_trigger_options_bytes = 67108864\n[store]\nurl = \"sqlite://bench.db\"\n{bounces}",
            root.join("templates").display()
        ),
    )
    .unwrap();
    let settings: pegabridge::config::bounces::BounceSettings =
        toml::from_str::<toml::Table>(&bounces).unwrap()["bounces"]
            .clone()
            .try_into()
            .unwrap();
    let paths = ReturnPaths::new(&settings);
    let mut child = std::process::Command::new(common::serve_bin())
        .args([
            "--config",
            dir.path().join("pegabridge.toml").to_str().unwrap(),
            "serve",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http}");
    let start = Instant::now();
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let customers: Vec<Value> = (0..REPORTS)
        .map(|i| json!({"Email": format!("r{i}@example.org")}))
        .collect();
    let answer: Value = client
        .post(format!("{base}/webhooks/bulk"))
        .bearer_auth("t")
        .json(&json!({ "Customers": customers }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let broadcast = answer["broadcast_id"].as_i64().unwrap();
    let mut paths_of: Vec<String> = answer["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| paths.address(broadcast, r["customer_id"].as_i64().unwrap()))
        .collect();
    let report = std::fs::read(root.join("tests/bounces/hotmail-mailbox-full.eml")).unwrap();
    let report = String::from_utf8(report).unwrap();
    let rss_before = common::rss_mb(child.id());

    // Reports: CLIENTS sessions, one report per transaction, each with its own Message-ID.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mine: Vec<String> = paths_of.drain(..REPORTS / CLIENTS).collect();
        let report = report.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", smtp))
                .await
                .unwrap();
            tcp.set_nodelay(true).unwrap();
            let (r, mut w) = tcp.into_split();
            let mut r = BufReader::new(r).lines();
            assert!(reply(&mut r).await.starts_with("220"));
            w.write_all(b"EHLO bench\r\n").await.unwrap();
            reply(&mut r).await;
            for (i, rcpt) in mine.iter().enumerate() {
                let body = report
                    .replace("a0xtAEHLB0000d09e", &format!("bench-{c}-{i}"))
                    .replace('\n', "\r\n");
                w.write_all(b"MAIL FROM:<>\r\n").await.unwrap();
                assert!(reply(&mut r).await.starts_with("250"));
                w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
                    .await
                    .unwrap();
                assert!(reply(&mut r).await.starts_with("250"));
                w.write_all(b"DATA\r\n").await.unwrap();
                assert!(reply(&mut r).await.starts_with("354"));
                w.write_all(body.as_bytes()).await.unwrap();
                w.write_all(b".\r\n").await.unwrap();
                let done = reply(&mut r).await;
                assert!(done.starts_with("250 2.0.0 Recorded"), "{done}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_second = REPORTS as f64 / started.elapsed().as_secs_f64();
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "pegabridge_bounce_reports_total{{kind=\"dsn\",outcome=\"recorded\"}} {REPORTS}"
        )),
        "every report recorded"
    );

    // 1,000 connections held open (each greeted, then silent).
    let mut open = Vec::new();
    for _ in 0..OPEN {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", smtp))
            .await
            .unwrap();
        let (r, w) = tcp.into_split();
        let mut r = BufReader::new(r).lines();
        assert!(reply(&mut r).await.starts_with("220"));
        open.push((r, w));
    }
    let rss_open = common::rss_mb(child.id());
    drop(open);
    child.kill().unwrap();
    child.wait().unwrap();

    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| reports/s through the listener to recorded activities ({CLIENTS} clients, {REPORTS} reports) | {per_second:.0} | >= 500 |");
    println!("| resident size of serve before the reports | {rss_before:.1} MB | |");
    println!("| resident size with {OPEN} connections open to the listener | {rss_open:.1} MB | bounded |");
}
