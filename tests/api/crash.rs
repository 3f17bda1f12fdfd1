//! The server killed with SIGKILL under load and started again: every acknowledged trigger
//! and activity is delivered (duplicates only for events whose lease ran out).

use crate::pega::{await_all, start_pega};
use crate::processes::{free_port, project_dir, send_triggers, start, wait_healthy};
use crate::server::ACTIVITY_TOKEN;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test]
async fn a_server_killed_under_load_delivers_every_acknowledged_event_after_a_restart() {
    let pega = start_pega().await;
    pega.mock.control(|b| b.delay = Duration::from_millis(5));
    let dir = project_dir();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://crash.db\"\n[activities]\ntoken = \"{ACTIVITY_TOKEN}\"\n[pega]\nendpoint = \"{}/in\"\nconcurrency = 2\ntimeout_secs = 1\nlease_secs = 2\npoll_ms = 50\n[pega.retry]\nbase_ms = 50\nmax_delay_secs = 1\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n",
            pega.url
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();

    let mut server = start(&dir.path().join("pegabridge.toml"));
    wait_healthy(&client, &base).await;
    // Kill it while triggers are being sent and delivered.
    let sending = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move { send_triggers(&client, &[base], 0..3000).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let mut acked = sending.await.unwrap();
    assert!(
        !acked.is_empty(),
        "some triggers were acknowledged before the kill"
    );

    let mut server = start(&dir.path().join("pegabridge.toml"));
    wait_healthy(&client, &base).await;
    acked.extend(send_triggers(&client, std::slice::from_ref(&base), 3000..3050).await);
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

    let (missing, duplicates) = await_all(&pega, &expected).await;
    server.kill().unwrap();
    server.wait().unwrap();
    eprintln!(
        "crash test: {} acknowledged events, {missing} missing, {duplicates} duplicates (leases that ran out)",
        expected.len()
    );
    assert_eq!(missing, 0, "every acknowledged event reaches Pega");
}
