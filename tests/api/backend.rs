//! Which backend a test runs on: every server test runs on SQLite, then on PostgreSQL when
//! `PEGABRIDGE_TEST_POSTGRES_URL` names a server (each test with a fresh database of its own);
//! without the variable the PostgreSQL run says it was skipped.

use std::future::Future;

/// The variable naming the PostgreSQL server for tests (`.ci/run` sets it).
pub const POSTGRES_URL: &str = "PEGABRIDGE_TEST_POSTGRES_URL";

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
    if std::env::var(POSTGRES_URL).is_ok() {
        eprintln!("now on postgres");
        BACKEND.scope(Backend::Postgres, body()).await;
    } else {
        eprintln!("postgres: skipped ({POSTGRES_URL} is not set)");
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
    let server = std::env::var(POSTGRES_URL).expect("checked by each_backend");
    Some(create_database(&server).await)
}

/// Creates `pegabridge_test_<uuid>` on the server of `server_url`.
pub async fn create_database(server_url: &str) -> Database {
    use sqlx::Connection;
    let name = format!("pegabridge_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(server_url)
        .await
        .expect("PostgreSQL answers");
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
