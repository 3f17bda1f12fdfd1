//! `cargo bench --bench instances`: delivery throughput with one, two and three `serve`
//! processes on one PostgreSQL database, beside one process on SQLite, in the same run. Each
//! starts with the same backlog of pending events and delivers it to an in-process receiver;
//! the rate is events over the time from the first arrival to the last. The CPU per event is
//! the `serve` processes' CPU (start included) plus, on PostgreSQL, every `postgres`
//! process's (read before the instances stop), over the backlog; the ratio compares it with
//! SQLite's in the same run. All processes share this machine's cores with PostgreSQL and the
//! receiver unless `BENCH_DB_CPU` names a CPU for the database (`taskset`: the instances and
//! this process are kept off it). Needs
//! `PEGABRIDGE_TEST_POSTGRES_URL` (as the tests); without it only SQLite is measured.

mod common;

use common::load::wait_for;
use common::{cpu_of, fill_sqlite, payload, postgres_cpu, postgres_cpu_since, receiver, Database};
use pegabridge::mock::MockPega;
use pegabridge::store::{PgStore, SqliteStore};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BACKLOG: i64 = 20_000;

#[tokio::main]
async fn main() {
    let pinned = pin_database();
    let (pega, pega_url) = receiver().await;
    let payload = payload();
    let dir = tempfile::tempdir().unwrap();

    let sqlite_url = format!("sqlite://{}/bench.db", dir.path().display());
    SqliteStore::connect(&sqlite_url, "full").await.unwrap();
    fill_sqlite(&dir.path().join("bench.db"), &payload, BACKLOG as usize);
    let sqlite = deliver(&pega, &pega_url, dir.path(), &sqlite_url, 1).await;

    println!("| store | instances | events/s | CPU per event (instances + PostgreSQL) | of which PostgreSQL | CPU / SQLite's (target <= 2) | the receiver's CPU per event (not counted) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| SQLite | 1 | {:.0} | {:.0} us | | 1 | {:.0} us |",
        sqlite.rate, sqlite.cpu, sqlite.receiver
    );
    let Ok(server) = std::env::var("PEGABRIDGE_TEST_POSTGRES_URL") else {
        println!("\nPostgreSQL: skipped (PEGABRIDGE_TEST_POSTGRES_URL is not set)");
        return;
    };
    // `BENCH_INSTANCES`: the most instances measured (3 unless set).
    let most = std::env::var("BENCH_INSTANCES").map_or(3, |n| n.parse().expect("BENCH_INSTANCES"));
    for n in 1..=most {
        let database = Database::create(&server).await;
        let url = database.url.clone();
        let store = PgStore::connect(&url, 2, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        drop(store);
        fill_postgres(&url, &payload).await;
        let d = deliver(&pega, &pega_url, dir.path(), &url, n).await;
        println!(
            "| PostgreSQL | {n} | {:.0} | {:.0} us | {:.0} us | {:.2} | {:.0} us |",
            d.rate,
            d.cpu,
            d.postgres,
            d.cpu / sqlite.cpu,
            d.receiver
        );
        database.drop().await;
    }
    if pinned {
        let all = format!("0-{}", machine_cpus() - 1);
        taskset(&all, postgres_cpu().keys().copied());
    }
}

/// The machine's CPUs, as counted before this process is pinned (`others_cpus` reads it
/// first; after, the count would be this process's CPUs', and PostgreSQL left on them).
fn machine_cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// With `BENCH_DB_CPU`, puts every `postgres` process (its server first: new backends
/// inherit it) on that CPU and this process on the others; whether it did.
fn pin_database() -> bool {
    let (Ok(db), Some(others)) = (std::env::var("BENCH_DB_CPU"), others_cpus()) else {
        return false;
    };
    taskset(&db, postgres_cpu().keys().copied());
    taskset(&others, [std::process::id()]);
    true
}

/// `taskset -apc cpus pid` for each of `pids` (all their threads).
fn taskset(cpus: &str, pids: impl IntoIterator<Item = u32>) {
    for pid in pids {
        let status = Command::new("taskset")
            .args(["-apc", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("taskset (util-linux)");
        assert!(status.success(), "taskset -apc {cpus} {pid}");
    }
}

/// What one bench run measured: events/s, and CPU microseconds per event of the instances
/// plus PostgreSQL, of PostgreSQL alone, and of this process (the receiver; not counted in
/// `cpu`, but it shares the instances' cores).
struct Delivered {
    rate: f64,
    cpu: f64,
    postgres: f64,
    receiver: f64,
}

/// Starts `n` processes on `store_url`, waits for the whole backlog, stops them; events/s
/// and the CPU microseconds per event of the processes and of PostgreSQL.
async fn deliver(
    pega: &MockPega,
    pega_url: &str,
    dir: &Path,
    store_url: &str,
    n: usize,
) -> Delivered {
    let before = pega.event_count();
    let database_before = postgres_cpu();
    let receiver_before = cpu_time::ProcessTime::now();
    let mut children: Vec<Child> = (0..n)
        .map(|k| {
            let port = common::free_port();
            let config = dir.join(format!("instance{k}.toml"));
            std::fs::write(
                &config,
                format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store_url}\"\npool_size = 4\n[pega]\nendpoint = \"{pega_url}/in\"\nconcurrency = 4\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pw\"\n"),
            )
            .unwrap();
            instance_command()
                .args(["--config", config.to_str().unwrap(), "serve"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let target = before + BACKLOG as usize;
    wait_for(pega, target).await;
    let database = if store_url.starts_with("postgres") {
        postgres_cpu_since(&database_before)
    } else {
        Duration::ZERO
    };
    let cpu = children.iter().map(|c| cpu_of(c.id())).sum::<Duration>() + database;
    let receiver = receiver_before.elapsed();
    for c in &mut children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let arrivals = pega.arrivals();
    let (first, last) = (arrivals[before], arrivals[target - 1]);
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / BACKLOG as f64;
    Delivered {
        rate: BACKLOG as f64 / last.duration_since(first).as_secs_f64(),
        cpu: per_event(cpu),
        postgres: per_event(database),
        receiver: per_event(receiver),
    }
}

/// `pegabridge` ([`common::serve_bin`]), kept off `BENCH_DB_CPU` when it is set.
fn instance_command() -> Command {
    let exe = common::serve_bin();
    match others_cpus() {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus, &exe]);
            c
        }
        None => Command::new(exe),
    }
}

/// The CPUs other than `BENCH_DB_CPU` (as `taskset -c` takes them), when it is set.
fn others_cpus() -> Option<String> {
    let db: usize = std::env::var("BENCH_DB_CPU").ok()?.parse().ok()?;
    let others: Vec<String> = (0..machine_cpus())
        .filter(|c| *c != db)
        .map(|c| c.to_string())
        .collect();
    Some(others.join(","))
}

async fn fill_postgres(url: &str, payload: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    // As the SQLite fill: the rows, then each row's payload in `outbox_payloads`.
    sqlx::query(
        "WITH rows AS (
             INSERT INTO outbox (uuid, metric, next_attempt_at, created_at, created_ms)
             SELECT gen_random_uuid()::text, 'opens', 0, 0, 0 FROM generate_series(1, $2)
             RETURNING id)
         INSERT INTO outbox_payloads (id, payload) SELECT id, $1 FROM rows",
    )
    .bind(payload)
    .bind(BACKLOG)
    .execute(&mut c)
    .await
    .unwrap();
}
