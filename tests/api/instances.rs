//! Scale-out: three `serve` processes on one PostgreSQL database, triggers and activities
//! spread over them, one killed with SIGKILL halfway. Runs when
//! PostgreSQL (see `backend::postgres_url`; `PEGABRIDGE_SKIP_POSTGRES=1` skips it and says so).

use crate::backend::create_database;
use crate::pega::{await_all, start_pega};
use crate::processes::{free_port, project_dir, send_triggers, start, wait_healthy};
use crate::server::ACTIVITY_TOKEN;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test]
async fn three_instances_share_one_database_and_survive_losing_one() {
    let Some(server_url) = crate::backend::postgres_url() else {
        return;
    };
    let database = create_database(&server_url).await;
    let pega = start_pega().await;
    pega.mock.control(|b| b.delay = Duration::from_millis(5));
    let dir = project_dir();
    let mut bases = Vec::new();
    let mut servers = Vec::new();
    for k in 0..3 {
        let port = free_port();
        let config = dir.path().join(format!("instance{k}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{}\"\npool_size = 4\n[activities]\ntoken = \"{ACTIVITY_TOKEN}\"\n[pega]\nendpoint = \"{}/in\"\nconcurrency = 2\ntimeout_secs = 1\nlease_secs = 2\npoll_ms = 50\n[pega.retry]\nbase_ms = 50\nmax_delay_secs = 1\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n",
                database.url, pega.url
            ),
        )
        .unwrap();
        // All three start at once: their migrations meet on the advisory lock.
        servers.push(start(&config));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let client = reqwest::Client::new();
    for base in &bases {
        wait_healthy(&client, base).await;
    }

    let sending = tokio::spawn({
        let (client, bases) = (client.clone(), bases.clone());
        async move { send_triggers(&client, &bases, 0..3000).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    servers[0].kill().unwrap(); // SIGKILL, mid-load
    servers[0].wait().unwrap();
    let acked = sending.await.unwrap();
    assert!(!acked.is_empty());
    let broadcast_ids: HashSet<i64> = acked.iter().map(|(_, b, _)| *b).collect();
    assert_eq!(
        broadcast_ids.len(),
        acked.len(),
        "broadcast ids unique across instances"
    );

    // An open per acknowledged send, spread over the two survivors.
    let mut expected: HashSet<String> = acked.iter().map(|(u, _, _)| u.clone()).collect();
    let mut metric_ids = HashSet::new();
    for (n, chunk) in acked.chunks(100).enumerate() {
        let opens: Vec<Value> = chunk
            .iter()
            .map(|(_, b, c)| json!({"metric": "opens", "broadcast_id": b, "customer_id": c}))
            .collect();
        let base = &bases[1 + n % 2];
        let res = client
            .post(format!("{base}/activities"))
            .bearer_auth(ACTIVITY_TOKEN)
            .json(&opens)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let answer: Value = res.json().await.unwrap();
        for a in answer["activities"].as_array().unwrap() {
            expected.insert(a["uuid"].as_str().unwrap().to_owned());
            assert!(
                metric_ids.insert(a["metric_id"].as_i64().unwrap()),
                "metric ids unique"
            );
        }
    }

    // The same idempotency key at two instances at once: one broadcast, one answer.
    let body = json!({"email": "same@x.nl", "interaction": 99999});
    let send = |base: &String| {
        client
            .post(format!("{base}/webhooks/crash"))
            .bearer_auth("crash-token")
            .header("Idempotency-Key", "across-instances")
            .json(&body)
            .send()
    };
    let (a, b) = tokio::join!(send(&bases[1]), send(&bases[2]));
    let (a, b): (Value, Value) = (
        a.unwrap().json().await.unwrap(),
        b.unwrap().json().await.unwrap(),
    );
    assert_eq!(a, b, "the same answer from both instances");
    expected.insert(a["recipients"][0]["uuid"].as_str().unwrap().to_owned());

    let (missing, duplicates) = await_all(&pega, &expected).await;
    for s in servers.iter_mut().skip(1) {
        s.kill().unwrap();
        s.wait().unwrap();
    }
    eprintln!(
        "three instances: {} acknowledged events, {missing} missing, {duplicates} duplicates (rows whose lease ran out with the killed instance)",
        expected.len()
    );
    assert_eq!(missing, 0, "every acknowledged event reaches Pega");
}
