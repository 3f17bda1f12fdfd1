//! Load for the benches that post activities: a broadcast to post them for, the requests,
//! `in flight` at a time, and the wait for their arrival.

use pegabridge::mock::MockPega;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A broadcast to send activities for; returns an open activity on it.
pub async fn first_broadcast(client: &reqwest::Client, base: &str, pega: &MockPega) -> Value {
    let before = pega.event_count();
    let trigger = json!({"customer": {"email": "a@b.nl"}, "interaction": 1});
    let answer: Value = client
        .post(format!("{base}/webhooks/bench"))
        .bearer_auth("t")
        .json(&trigger)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    wait_for(pega, before + 1).await;
    json!({"metric": "opens", "broadcast_id": answer["broadcast_id"],
        "customer_id": answer["recipients"][0]["customer_id"],
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/81.0 Safari/537.36"})
}

/// `POST /activities` of a pre-serialized activity, accepted.
pub fn post_activity(
    client: &reqwest::Client,
    base: &str,
    body: &[u8],
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let req = client.post(format!("{base}/activities")).bearer_auth("a");
    send_expecting(req, body, 202)
}

/// Sends a JSON body and checks the answer's status.
pub fn send_expecting(
    req: reqwest::RequestBuilder,
    body: &[u8],
    status: u16,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let req = req
        .header("content-type", "application/json")
        .body(body.to_vec());
    async move { assert_eq!(req.send().await.unwrap().status(), status) }
}

pub const MAPPING: &str = "template = \"offer.html\"\nsubject = \"s\"\ncampaign_id = 1\ncampaign_name = \"c\"\ncampaign_object_id = 1\ncontent_id = 1\ncontent_name = \"c\"\nbroadcast_event_type = \"SINGLEMAIL\"\nsub_type = \"SINGLEMAIL\"\n[auth]\ntype = \"bearer\"\ntoken = \"t\"\n[recipient]\nemail = \"customer.email\"\n[variables.InteractionId]\npath = \"interaction\"\n";

/// The bench's configuration with these `[pega]` keys (none: the defaults).
pub fn write_config_with(dir: &std::path::Path, listen: &str, endpoint: &str, pega: &str) {
    write_config_on(dir, listen, "sqlite://bench.db", endpoint, pega);
}

/// [`write_config_with`] on the store at `store_url`.
pub fn write_config_on(dir: &Path, listen: &str, store_url: &str, endpoint: &str, pega: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/bench.toml"), MAPPING).unwrap();
    std::fs::write(
        dir.join("pegabridge.toml"),
        format!("[templates]\ndir = \"{}\"\n[server]\nlisten = \"{listen}\"\n[store]\nurl = \"{store_url}\"\n[activities]\ntoken = \"a\"\n[pega]\nendpoint = \"{endpoint}\"\n{pega}\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pw\"\n",
            root.join("templates").display()),
    )
    .unwrap();
}

pub async fn wait_for(pega: &MockPega, n: usize) {
    let start = Instant::now();
    while pega.event_count() < n {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "events did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs `count` requests made by `make`, `in_flight` at a time.
pub async fn trial<F, Fut>(in_flight: usize, count: usize, make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let futures: Vec<_> = (0..count).map(|_| Some(make())).collect();
    let futures = Arc::new(std::sync::Mutex::new(futures));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (next, futures) = (next.clone(), futures.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = futures.lock().unwrap().get_mut(i).and_then(Option::take) else {
                    break;
                };
                f.await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
