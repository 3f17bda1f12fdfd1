//! Helpers the benchmarks share: an in-process receiver and a pre-filled SQLite outbox.

#![allow(dead_code)] // each benchmark uses part of this

pub mod load;

use pegabridge::config::secret::Secret;
use pegabridge::mock::{Behaviour, MockAuth, MockPega};
use std::path::Path;

/// The `mock-pega` receiver on port 0 (Basic auth pega / pw); returns it and its URL.
pub async fn receiver() -> (MockPega, String) {
    receiver_with(Behaviour::default()).await
}

/// Like [`receiver`], behaving as `behaviour` says.
pub async fn receiver_with(behaviour: Behaviour) -> (MockPega, String) {
    let auth = MockAuth::Basic {
        username: "pega".into(),
        password: Secret::new("pw"),
    };
    let mock = MockPega::new(auth, behaviour);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = mock.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (mock, url)
}

/// The seed's example open, as the payload of pre-filled events.
pub fn payload() -> String {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/seed/opens.json"
    ))
    .unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_str(&seed).unwrap();
    serde_json::to_string(&events[0]).unwrap()
}

/// Writes `n` pending events straight into a migrated SQLite outbox.
pub fn fill_sqlite(db: &Path, payload: &str, n: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut row = conn
            .prepare("INSERT INTO outbox (uuid, metric, next_attempt_at, created_at, created_ms) VALUES (?1, 'opens', 0, 0, 0)")
            .unwrap();
        let mut event = conn
            .prepare("INSERT INTO outbox_payloads (id, payload) VALUES (last_insert_rowid(), ?1)")
            .unwrap();
        for _ in 0..n {
            row.execute([uuid::Uuid::new_v4().to_string()]).unwrap();
            event.execute([payload]).unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
}

/// The resident size of process `pid`, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// The most process `pid` has been resident so far (its high-water mark), in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// A size from `/proc/{pid}/status` (`field` is e.g. `VmRSS:`), in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// The project's folder (its `templates/` and `mappings/`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `serve`, in this process, from `dir` with `config` as its `pegabridge.toml` (`[templates]
/// dir` set to the project's): its base URL.
pub async fn serve_in(dir: &Path, config: &str) -> String {
    let config = format!(
        "[templates]\ndir = \"{}\"\n{config}",
        root().join("templates").display()
    );
    std::fs::write(dir.join("pegabridge.toml"), config).unwrap();
    let settings = pegabridge::config::Settings::load(Some(&dir.join("pegabridge.toml"))).unwrap();
    let app = pegabridge::app::Application::build(&settings)
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    base
}

/// The project's `mappings/offer.toml` in `dir/mappings`.
pub fn offer_mapping(dir: &Path) {
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::copy(
        root().join("mappings/offer.toml"),
        dir.join("mappings/offer.toml"),
    )
    .unwrap();
}

/// The CPU time (user + system) process `pid` used so far.
pub fn cpu_of(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return std::time::Duration::ZERO; // it has ended
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    std::time::Duration::from_millis(ticks * 10)
}

/// The CPU time every `postgres` process on this machine used so far, by process id (its
/// server, background workers and every connection's backend).
pub fn postgres_cpu() -> std::collections::HashMap<u32, std::time::Duration> {
    let mut cpu = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            cpu.insert(pid, cpu_of(pid));
        }
    }
    cpu
}

/// The CPU PostgreSQL used between two [`postgres_cpu`] readings (a process that started
/// meanwhile counts from zero; one that ended meanwhile is not counted: read before the
/// clients disconnect).
pub fn postgres_cpu_since(
    before: &std::collections::HashMap<u32, std::time::Duration>,
) -> std::time::Duration {
    postgres_cpu()
        .iter()
        .map(|(pid, now)| now.saturating_sub(before.get(pid).copied().unwrap_or_default()))
        .sum()
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `pegabridge` binary the benches run: this build's, or the one `BENCH_BIN` names (an
/// earlier commit's, to compare in the same sitting).
pub fn serve_bin() -> String {
    match std::env::var("BENCH_BIN")
        .ok()
        .filter(|bin| !bin.is_empty())
    {
        // A relative path is the bench's own (the crate's directory), not that of `serve`,
        // which runs in a directory of its own.
        Some(bin) => std::fs::canonicalize(&bin).map_or(bin, |path| path.display().to_string()),
        None => env!("CARGO_BIN_EXE_pegabridge").into(),
    }
}

/// `pegabridge serve` ([`serve_bin`]) with `dir`'s `pegabridge.toml`, run from `dir`, once it
/// accepts connections on `port`.
pub fn start_serve(dir: &Path, port: u16) -> std::process::Child {
    use std::time::{Duration, Instant};
    let child = std::process::Command::new(serve_bin())
        .args(["--config", "pegabridge.toml", "serve"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A database of a bench's own on a PostgreSQL server, dropped with [`Database::drop`].
pub struct Database {
    server: String,
    name: String,
    pub url: String,
}

impl Database {
    /// A new database on `server` (a PostgreSQL URL naming any database).
    pub async fn create(server: &str) -> Self {
        let name = format!("pegabridge_bench_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
        let this = Self {
            server: server.to_owned(),
            name,
            url,
        };
        admin(&this.server, &format!("CREATE DATABASE {}", this.name)).await;
        this
    }

    /// This database's commits and the server's WAL flushes so far (`pg_stat_database`,
    /// `pg_stat_wal`; a backend reports its counts within about a second).
    pub async fn activity(&self) -> (i64, i64) {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.server).await.unwrap();
        sqlx::query_as(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = $1), (SELECT wal_sync FROM pg_stat_wal)",
        )
        .bind(&self.name)
        .fetch_one(&mut c)
        .await
        .unwrap()
    }

    pub async fn drop(self) {
        admin(
            &self.server,
            &format!("DROP DATABASE {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

/// Runs `sql` on `server` (creating or dropping a database).
pub async fn admin(server: &str, sql: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(server).await.unwrap();
    sqlx::query(sql).execute(&mut c).await.unwrap();
}
