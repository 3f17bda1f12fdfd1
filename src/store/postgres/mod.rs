//! The PostgreSQL store: several `serve` instances share one database. Identifiers come from
//! sequences, idempotency keys and customers from unique indexes, outbox rows are claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease, and committed events wake every instance's worker
//! through `LISTEN`/`NOTIFY`. Migrations take sqlx's advisory lock, so instances may start
//! together.

mod outbox;
mod triggers;

use anyhow::Context;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Notify;

/// The channel committed events are announced on.
const CHANNEL: &str = "pegabridge_outbox";

/// The PostgreSQL store (cheap to clone).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects with a pool of `pool_size` and runs the migrations.
    pub async fn connect(url: &str, pool_size: u32) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .connect(url)
            .await
            .context("connecting to PostgreSQL (store.url)")?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .context("running migrations")?;
        Ok(Self { pool })
    }

    /// Whether the database answers.
    /// A small committed write (the readiness probe's time in `flags`). The free space is the
    /// database server's concern, not checked here.
    pub async fn writable(&self, _min_free_bytes: u64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO flags (name, value) VALUES ('ready_probe', extract(epoch from now())::bigint::text) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Wakes `notify` whenever any instance commits events, until the process ends.
    pub async fn listen(&self, notify: Arc<Notify>) -> anyhow::Result<()> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => notify.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(())
    }
}

/// Whether an error is a unique-constraint violation (another instance won a race).
fn is_unique_violation(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}
