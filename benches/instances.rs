//! `cargo bench --bench instances`: delivery throughput with one, two and three `serve`
//! processes on one PostgreSQL database, beside one process on SQLite, in the same run. Each
//! starts with the same backlog of pending events and delivers it to an in-process receiver;
//! the rate is events over the time from the first arrival to the last. All processes share
//! this machine's two cores with PostgreSQL and the receiver. Needs
//! `PEGABRIDGE_TEST_POSTGRES_URL` (as the tests); without it only SQLite is measured.

mod common;

use common::{fill_sqlite, payload, receiver};
use pegabridge::mock::MockPega;
use pegabridge::store::{PgStore, SqliteStore};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BACKLOG: i64 = 20_000;

#[tokio::main]
async fn main() {
    let (pega, pega_url) = receiver().await;
    let payload = payload();
    let dir = tempfile::tempdir().unwrap();

    let sqlite_url = format!("sqlite://{}/bench.db", dir.path().display());
    SqliteStore::connect(&sqlite_url, "full").await.unwrap();
    fill_sqlite(&dir.path().join("bench.db"), &payload, BACKLOG as usize);
    let sqlite = deliver(&pega, &pega_url, dir.path(), &sqlite_url, 1).await;

    println!("| store | instances | events/s |");
    println!("|---|---|---|");
    println!("| SQLite | 1 | {sqlite:.0} |");
    let Ok(server) = std::env::var("PEGABRIDGE_TEST_POSTGRES_URL") else {
        println!("\nPostgreSQL: skipped (PEGABRIDGE_TEST_POSTGRES_URL is not set)");
        return;
    };
    for n in 1..=3 {
        let name = format!("pegabridge_bench_{}", uuid::Uuid::new_v4().simple());
        admin(&server, &format!("CREATE DATABASE {name}")).await;
        let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
        let store = PgStore::connect(&url, 2, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        drop(store);
        fill_postgres(&url, &payload).await;
        let rate = deliver(&pega, &pega_url, dir.path(), &url, n).await;
        println!("| PostgreSQL | {n} | {rate:.0} |");
        admin(&server, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
    }
}

/// Starts `n` processes on `store_url`, waits for the whole backlog, stops them; events/s.
async fn deliver(pega: &MockPega, pega_url: &str, dir: &Path, store_url: &str, n: usize) -> f64 {
    let before = pega.event_count();
    let mut children: Vec<Child> = (0..n)
        .map(|k| {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = dir.join(format!("instance{k}.toml"));
            std::fs::write(
                &config,
                format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"{store_url}\"\npool_size = 4\n[pega]\nendpoint = \"{pega_url}/in\"\nconcurrency = 4\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pw\"\n"),
            )
            .unwrap();
            Command::new(env!("CARGO_BIN_EXE_pegabridge"))
                .args(["--config", config.to_str().unwrap(), "serve"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let target = before + BACKLOG as usize;
    let start = Instant::now();
    while pega.event_count() < target {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "backlog not delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in &mut children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let arrivals = pega.arrivals();
    let (first, last) = (arrivals[before], arrivals[target - 1]);
    BACKLOG as f64 / last.duration_since(first).as_secs_f64()
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

async fn admin(server: &str, sql: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(server).await.unwrap();
    sqlx::query(sql).execute(&mut c).await.unwrap();
}
