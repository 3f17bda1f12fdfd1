//! `pegabridge serve` as separate processes: starting, waiting, loading them with triggers.

use serde_json::{json, Value};
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

/// A folder with the example template and the `crash` mapping, for `serve` processes.
pub fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::copy(
        crate::helpers::root().join("templates/offer.html"),
        dir.path().join("templates/offer.html"),
    )
    .unwrap();
    std::fs::write(dir.path().join("mappings/crash.toml"), MAPPING).unwrap();
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pegabridge --config CONFIG serve` as a child process.
pub fn start(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .stdout(Stdio::null())
        .stderr(if std::env::var("PB_SHOW_SERVE").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap()
}

pub async fn wait_healthy(client: &reqwest::Client, base: &str) {
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

/// Sends triggers `range` with 8 concurrent clients, trigger `i` to `bases[i % n]`; returns
/// the acknowledged (uuid, broadcast_id, customer_id) triples. Failures (a server being
/// killed) are not acknowledged and not counted.
pub async fn send_triggers(
    client: &reqwest::Client,
    bases: &[String],
    range: std::ops::Range<u32>,
) -> Vec<(String, i64, i64)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(Mutex::new(range.clone()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, bases, acked, next) =
            (client.clone(), bases.to_vec(), acked.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(i) = next.lock().unwrap().next() else {
                    break;
                };
                let base = &bases[i as usize % bases.len()];
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
