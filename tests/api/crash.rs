//! The server killed with SIGKILL under load and started again: every acknowledged trigger
//! and activity is delivered (duplicates only for events whose lease ran out).

use crate::pega::{start_pega, wait_for_events};
use crate::server::ACTIVITY_TOKEN;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAPPING: &str = r#"
template = "offer.html"
subject = "Hi"
campaign_id = 1
campaign_name = "Crash"
campaign_object_id = 1
content_id = 1
content_name = "Crash"
broadcast_event_type = "SINGLEMAIL"
sub_type = "SINGLEMAIL"
[auth]
type = "bearer"
token = "crash-token"
[recipient]
email = "email"
[variables.InteractionId]
path = "interaction"
required = true
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args([
            "--config",
            dir.join("pegabridge.toml").to_str().unwrap(),
            "serve",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if client
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not start");
}

/// Sends triggers `range` with 8 concurrent clients; returns the acknowledged
/// (uuid, broadcast_id, customer_id) triples. Failures (the server being killed) are not
/// acknowledged and not counted.
async fn send_triggers(
    client: &reqwest::Client,
    base: &str,
    range: std::ops::Range<u32>,
) -> Vec<(String, i64, i64)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(Mutex::new(range.clone()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, base, acked, next) =
            (client.clone(), base.to_owned(), acked.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(i) = next.lock().unwrap().next() else {
                    break;
                };
                let body = json!({"email": format!("c{i}@x.nl"), "interaction": i});
                let res = client
                    .post(format!("{base}/webhooks/crash"))
                    .bearer_auth("crash-token")
                    .json(&body)
                    .send()
                    .await;
                if let Ok(res) = res {
                    if res.status() == 202 {
                        let v: Value = res.json().await.unwrap();
                        let r = &v["recipients"][0];
                        acked.lock().unwrap().push((
                            r["uuid"].as_str().unwrap().to_owned(),
                            v["broadcast_id"].as_i64().unwrap(),
                            r["customer_id"].as_i64().unwrap(),
                        ));
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

#[tokio::test]
async fn a_server_killed_under_load_delivers_every_acknowledged_event_after_a_restart() {
    let pega = start_pega().await;
    pega.mock.control(|b| b.delay = Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::copy(
        crate::helpers::root().join("templates/offer.html"),
        dir.path().join("templates/offer.html"),
    )
    .unwrap();
    std::fs::write(dir.path().join("mappings/crash.toml"), MAPPING).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://crash.db\"\n[activities]\ntoken = \"{ACTIVITY_TOKEN}\"\n[pega]\nendpoint = \"{}/in\"\nconcurrency = 2\nlease_secs = 2\npoll_ms = 50\n[pega.retry]\nbase_ms = 50\nmax_delay_secs = 1\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n",
            pega.url
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();

    let mut server = start(dir.path());
    wait_healthy(&client, &base).await;
    // Kill it while triggers are being sent and delivered.
    let sending = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move { send_triggers(&client, &base, 0..3000).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let mut acked = sending.await.unwrap();
    assert!(
        !acked.is_empty(),
        "some triggers were acknowledged before the kill"
    );

    let mut server = start(dir.path());
    wait_healthy(&client, &base).await;
    acked.extend(send_triggers(&client, &base, 3000..3050).await);
    // An open for every acknowledged send.
    let opens: Vec<Value> = acked
        .iter()
        .map(|(_, b, c)| json!({"metric": "opens", "broadcast_id": b, "customer_id": c}))
        .collect();
    let res = client
        .post(format!("{base}/activities"))
        .bearer_auth(ACTIVITY_TOKEN)
        .json(&opens)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let mut expected: HashSet<String> = acked.iter().map(|(u, _, _)| u.clone()).collect();
    for a in answer["activities"].as_array().unwrap() {
        expected.insert(a["uuid"].as_str().unwrap().to_owned());
    }

    let start = Instant::now();
    let mut received: HashMap<String, usize> = HashMap::new();
    while start.elapsed() < Duration::from_secs(60) {
        received.clear();
        for e in wait_for_events(&pega, 0).await {
            *received
                .entry(e["uuid"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        if expected.iter().all(|u| received.contains_key(u)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let missing = expected
        .iter()
        .filter(|u| !received.contains_key(*u))
        .count();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {} acknowledged events, {missing} missing, {duplicates} duplicates (leases that ran out)",
        expected.len()
    );
    assert_eq!(missing, 0, "every acknowledged event reaches Pega");
}
