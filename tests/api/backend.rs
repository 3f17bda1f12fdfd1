//! Which backend a test runs on: every server test runs on SQLite, then on PostgreSQL (each
//! test with a fresh database of its own) at `PEGABRIDGE_TEST_POSTGRES_URL`, by default this
//! kind of machine's `postgres://postgres@127.0.0.1:5432/test`. A PostgreSQL that does not
//! answer fails the test, naming what is missing; only `PEGABRIDGE_SKIP_POSTGRES=1` skips it
//! (and says so).

use std::future::Future;

/// The variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL: &str = "PEGABRIDGE_TEST_POSTGRES_URL";
/// The server used when the variable is not set.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Set to 1 to skip the PostgreSQL runs.
pub const SKIP_POSTGRES: &str = "PEGABRIDGE_SKIP_POSTGRES";

/// The PostgreSQL server of the tests, or `None` (said on stderr) when skipped.
pub fn postgres_url() -> Option<String> {
    if std::env::var(SKIP_POSTGRES).is_ok_and(|v| v == "1") {
        eprintln!("postgres: skipped ({SKIP_POSTGRES}=1)");
        return None;
    }
    Some(std::env::var(POSTGRES_URL).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// The backend of the running test (SQLite outside [`each_backend`]).
pub fn current() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)
}

/// Runs the test body on SQLite, then on PostgreSQL (or says that was skipped).
pub async fn each_backend<F, Fut>(body: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    BACKEND.scope(Backend::Sqlite, body()).await;
    if postgres_url().is_some() {
        eprintln!("now on postgres");
        BACKEND.scope(Backend::Postgres, body()).await;
    }
}

/// A PostgreSQL database made for one test, dropped with this guard.
pub struct Database {
    pub url: String,
    name: String,
    server: String,
}

/// A fresh database when the current backend is PostgreSQL.
pub async fn fresh_database() -> Option<Database> {
    if current() != Backend::Postgres {
        return None;
    }
    let server = postgres_url().expect("checked by each_backend");
    Some(create_database(&server).await)
}

/// Creates `pegabridge_test_<uuid>` on the server of `server_url`.
pub async fn create_database(server_url: &str) -> Database {
    use sqlx::Connection;
    let name = format!("pegabridge_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(server_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {server_url} does not answer ({e}): start it, name another with {POSTGRES_URL}, or set {SKIP_POSTGRES}=1 to skip the PostgreSQL runs"
            )
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = server_url.rsplit_once('/').map_or(server_url, |(b, _)| b);
    Database {
        url: format!("{base}/{name}"),
        name,
        server: server_url.to_owned(),
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            })
        })
        .join();
    }
}
