//! `cargo bench --bench cost`: the CPU one event costs `serve` when it runs as its own
//! process, from its `POST /activities` to its arrival at the receiver, on SQLite and (with
//! `PEGABRIDGE_TEST_POSTGRES_URL`, as the tests) on PostgreSQL, where every `postgres`
//! process's CPU meanwhile is added (its backends, WAL writer, checkpointer and autovacuum).
//! The load generator and the receiver run in this process and are not counted.
//!
//! Two loads, each on a fresh `serve` with the default `[pega]` settings (adaptive
//! concurrency, `batch_size = 1`): saturation ([`SATURATED`] activities, [`IN_FLIGHT`] at a
//! time) and a steady 500 a second for 5 s. [`RUNS`] runs of each store, alternating;
//! medians (`BENCH_GROUP_COMMIT_MS` sets `[store] group_commit_ms`; `BENCH_STEADY_RATE` the steady load's rate, for as long; `BENCH_SPLIT=1` prints each PostgreSQL run's `serve` and database parts, its commits and WAL flushes per event at 500/s, and `serve`'s context switches per event; `BENCH_ATTACH="perf record -g -o FILE -p {pid}"` runs a command on `serve` during the steady load, or at saturation with `BENCH_ATTACH_TO=saturation`; `BENCH_ATTACH=benches/postgres-cpu.sh` prints each `postgres` process's CPU meanwhile; `BENCH_BIN=benches/callgrind-serve.sh BENCH_ATTACH="benches/callgrind-attach.sh {pid}"` counts `serve`'s instructions instead, the same on a busy machine: see those scripts). Targets (issue 29): at most 60 us at saturation and 200 us at 500/s on SQLite;
//! PostgreSQL at most twice SQLite's.

mod common;

use common::load::{first_broadcast, post_activity, trial, wait_for, write_config_on};
use common::{
    cpu_of, free_port, postgres_cpu, postgres_cpu_since, receiver, start_serve, Database,
};
use pegabridge::mock::MockPega;
use std::time::{Duration, Instant};

/// Activities of a saturated run.
const SATURATED: usize = 10_000;
/// Requests in flight in a saturated run.
const IN_FLIGHT: usize = 64;
/// Activities a second of a steady run, and how many.
const STEADY_RATE: f64 = 500.0;
const STEADY: usize = 2_500;
/// Runs per store.
const RUNS: usize = 3;

/// A store to measure: its name, and the PostgreSQL server's URL (`None`: SQLite).
type Backend = (&'static str, Option<String>);

#[tokio::main]
async fn main() {
    let (pega, pega_url) = receiver().await;
    let mut backends: Vec<Backend> = vec![("SQLite", None)];
    match std::env::var("PEGABRIDGE_TEST_POSTGRES_URL") {
        Ok(server) => backends.push(("PostgreSQL", Some(server))),
        Err(_) => println!("PostgreSQL: skipped (PEGABRIDGE_TEST_POSTGRES_URL is not set)\n"),
    }
    let mut measured: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); backends.len()];
    for _ in 0..RUNS {
        for (k, backend) in backends.iter().enumerate() {
            let (saturated, steady) = run(&pega, &pega_url, backend).await;
            measured[k].0.push(saturated);
            measured[k].1.push(steady);
        }
    }
    let rate = steady_load().0;
    println!("| store | CPU per event at saturation ({IN_FLIGHT} in flight) | at a steady {rate}/s | saturation / SQLite's | {rate}/s / SQLite's |");
    println!("|---|---|---|---|---|");
    let sqlite = (median(&measured[0].0), median(&measured[0].1));
    for ((name, _), (saturated, steady)) in backends.iter().zip(&measured) {
        println!(
            "| {name} | {:.0} us ({}) | {:.0} us ({}) | {:.2} | {:.2} |",
            median(saturated),
            runs(saturated),
            median(steady),
            runs(steady),
            median(saturated) / sqlite.0,
            median(steady) / sqlite.1
        );
    }
}

/// One fresh `serve` on `backend`: its CPU microseconds per event at saturation, then at a
/// steady rate.
async fn run(pega: &MockPega, pega_url: &str, (_, server): &Backend) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let database = match server {
        Some(s) => Some(Database::create(s).await),
        None => None,
    };
    let store_url = database
        .as_ref()
        .map_or_else(|| "sqlite://bench.db".to_owned(), |d| d.url.clone());
    let port = free_port();
    write_config_on(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &store_url,
        &format!("{pega_url}/in"),
        "",
    );
    if let Ok(ms) = std::env::var("BENCH_GROUP_COMMIT_MS") {
        let config = dir.path().join("pegabridge.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("[store]\n", &format!("[store]\ngroup_commit_ms = {ms}\n"));
        std::fs::write(&config, text).unwrap();
    }
    let mut serve = start_serve(dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let open = first_broadcast(&client, &base, pega).await;
    let body = serde_json::to_vec(&open).unwrap();
    let on_postgres = database.is_some();

    // `BENCH_ATTACH` runs during the steady load, or at saturation with
    // `BENCH_ATTACH_TO=saturation`.
    let at_saturation = std::env::var("BENCH_ATTACH_TO").is_ok_and(|to| to == "saturation");
    let attached = at_saturation.then(|| attach(serve.id())).flatten();
    let saturated = cost(serve.id(), on_postgres, SATURATED, async {
        let before = pega.event_count();
        trial(IN_FLIGHT, SATURATED, || {
            post_activity(&client, &base, &body)
        })
        .await;
        wait_for(pega, before + SATURATED).await;
    })
    .await;
    detach(attached);
    let attached = (!at_saturation).then(|| attach(serve.id())).flatten();
    let split = std::env::var_os("BENCH_SPLIT").is_some();
    let counted = match &database {
        Some(d) if split => Some(d.activity().await),
        _ => None,
    };
    let (rate, steady_events) = steady_load();
    let steady = cost(serve.id(), on_postgres, steady_events, async {
        let before = pega.event_count();
        paced(&client, &base, &body, rate, steady_events).await;
        wait_for(pega, before + steady_events).await;
    })
    .await;
    detach(attached);
    if let (Some(d), Some((commits, syncs))) = (&database, counted) {
        // Backends report their counts within a second of going idle.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let (commits_after, syncs_after) = d.activity().await;
        println!(
            "PostgreSQL at {rate}/s: {:.2} commits and {:.2} WAL flushes per event",
            (commits_after - commits) as f64 / steady_events as f64,
            (syncs_after - syncs) as f64 / steady_events as f64
        );
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    if let Some(d) = database {
        d.drop().await;
    }
    (saturated, steady)
}

/// The steady load's rate and its events: 500/s for 5 s, or `BENCH_STEADY_RATE` a second for
/// as long (`BENCH_STEADY_RATE=20` with callgrind counts an event that commits alone: under
/// valgrind `serve` runs some fifty times slower, and 500/s would saturate it).
fn steady_load() -> (f64, usize) {
    let rate = std::env::var("BENCH_STEADY_RATE")
        .ok()
        .map(|r| {
            r.parse::<f64>()
                .expect("BENCH_STEADY_RATE: events a second")
        })
        .filter(|r| *r > 0.0)
        .unwrap_or(STEADY_RATE);
    let events = (rate * STEADY as f64 / STEADY_RATE).round().max(1.0) as usize;
    (rate, events)
}

/// `BENCH_ATTACH`: a command run on `serve`, `{pid}` its process id (`perf record -g -o FILE
/// -p {pid}`, `strace -c -f -o FILE -p {pid}`), until [`detach`].
fn attach(pid: u32) -> Option<std::process::Child> {
    let command = std::env::var("BENCH_ATTACH").ok()?;
    let command = command.replace("{pid}", &pid.to_string());
    let mut words = command.split_whitespace();
    let child = std::process::Command::new(words.next().expect("BENCH_ATTACH: a command"))
        .args(words)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("BENCH_ATTACH");
    Some(child)
}

/// Stops an [`attach`]ed command with SIGINT (perf and strace write their file and end).
fn detach(attached: Option<std::process::Child>) {
    if let Some(mut attached) = attached {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &attached.id().to_string()])
            .status();
        let _ = attached.wait();
    }
}

/// The context switches of process `pid`'s threads so far (those alive now).
fn switches_of(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let counts = tasks.flatten().flat_map(|task| {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        (status.lines())
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    counts.sum()
}

/// The CPU microseconds per event `serve` (and PostgreSQL, `on_postgres`) spent while
/// `work` ran, over `n` events.
async fn cost(pid: u32, on_postgres: bool, n: usize, work: impl std::future::Future) -> f64 {
    let (own, database, switched) = (cpu_of(pid), postgres_cpu(), switches_of(pid));
    work.await;
    let mut spent = cpu_of(pid) - own;
    if std::env::var_os("BENCH_SPLIT").is_some() {
        println!(
            "serve: {:.1} context switches per event",
            (switches_of(pid) - switched) as f64 / n as f64
        );
    }
    if on_postgres {
        let theirs = postgres_cpu_since(&database);
        if std::env::var_os("BENCH_SPLIT").is_some() {
            println!(
                "serve {:.0} us + PostgreSQL {:.0} us per event",
                spent.as_secs_f64() * 1e6 / n as f64,
                theirs.as_secs_f64() * 1e6 / n as f64
            );
        }
        spent += theirs;
    }
    spent.as_secs_f64() * 1e6 / n as f64
}

/// `n` activities at `rate` a second, each sent at its time whatever the answers before.
async fn paced(client: &reqwest::Client, base: &str, body: &[u8], rate: f64, n: usize) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        tasks.push(tokio::spawn(post_activity(client, base, body)));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Each run's figure, as `a, b, c`.
fn runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
