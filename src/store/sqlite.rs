//! The SQLite store: one connection (writes are serialized by SQLite anyway), WAL journal.

use super::{RecipientAnswer, TriggerAnswer};
use crate::event::{now, Common};
use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use std::str::FromStr;

/// A new personal broadcast to record.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub email: String,
    pub external_id: String,
    pub manual_options: serde_json::Map<String, serde_json::Value>,
    pub idempotency_key: Option<String>,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs the migrations.
    pub async fn connect(url: &str, synchronous: &str) -> anyhow::Result<Self> {
        let sync = match synchronous {
            "full" => SqliteSynchronous::Full,
            "normal" => SqliteSynchronous::Normal,
            other => anyhow::bail!("store.synchronous: `{other}` is not `normal` or `full`"),
        };
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("store.url: `{url}` is not a sqlite:// URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {url}"))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .context("running migrations")?;
        Ok(Self { pool })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Records a trigger: its broadcast, each recipient's customer and personal broadcast, and
    /// each `broadcasts` event in the outbox, in one transaction. `event` builds a recipient's
    /// event from (broadcast id, broadcast time, customer id, uuid). A repeated idempotency key
    /// returns the first answer and records nothing.
    pub async fn record_trigger(
        &self,
        mapping: &str,
        idempotency_key: Option<&str>,
        recipients: &[NewRecipient],
        event: impl Fn(&NewRecipient, i64, i64, i64, &str) -> Common,
    ) -> anyhow::Result<TriggerAnswer> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = idempotency_key {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT response FROM broadcasts WHERE idempotency_key = ?")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(response) = stored {
                return Ok(serde_json::from_str(&response)?);
            }
        }
        let mut earlier = Vec::new();
        for r in recipients {
            earlier.push(match &r.idempotency_key {
                Some(k) => find_recipient(&mut tx, k).await?,
                None => None,
            });
        }
        if !earlier.is_empty() && earlier.iter().all(Option::is_some) {
            let found: Vec<(i64, RecipientAnswer)> = earlier.into_iter().flatten().collect();
            let broadcast_id = found[0].0;
            return Ok(TriggerAnswer {
                broadcast_id,
                recipients: found.into_iter().map(|(_, r)| r).collect(),
            });
        }

        let ts = now();
        let broadcast_id: i64 = sqlx::query_scalar(
            "INSERT INTO broadcasts (mapping, created_at, idempotency_key) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(mapping)
        .bind(ts)
        .bind(idempotency_key)
        .fetch_one(&mut *tx)
        .await?;
        let mut answers = Vec::new();
        let mut customers_here = Vec::new();
        for (r, before) in recipients.iter().zip(earlier) {
            if let Some((_, mut answer)) = before {
                answer.status = "duplicate".into();
                answers.push(answer);
                continue;
            }
            let customer_id = customer(&mut tx, &r.email, &r.external_id, ts).await?;
            if customers_here.contains(&customer_id) {
                // The same customer twice in one trigger gets one mail.
                let first = answers
                    .iter()
                    .find(|a: &&RecipientAnswer| a.customer_id == customer_id)
                    .cloned()
                    .expect("recorded above");
                answers.push(RecipientAnswer {
                    status: "duplicate".into(),
                    ..first
                });
                continue;
            }
            customers_here.push(customer_id);
            let uuid = uuid::Uuid::new_v4().to_string();
            let ev = event(r, broadcast_id, ts, customer_id, &uuid);
            let payload = serde_json::to_string(&ev)?;
            sqlx::query(
                "INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, manual_options, event, idempotency_key) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
            )
            .bind(broadcast_id)
            .bind(customer_id)
            .bind(&uuid)
            .bind(&r.email)
            .bind(serde_json::to_string(&r.manual_options)?)
            .bind(&payload)
            .bind(&r.idempotency_key)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO outbox (uuid, metric, payload, next_attempt_at, created_at) VALUES (?, 'broadcasts', ?, ?, ?)",
            )
            .bind(&uuid)
            .bind(&payload)
            .bind(ts)
            .bind(ts)
            .execute(&mut *tx)
            .await?;
            answers.push(RecipientAnswer {
                customer_id,
                uuid,
                email_address: r.email.clone(),
                status: "queued".into(),
            });
        }
        let answer = TriggerAnswer {
            broadcast_id,
            recipients: answers,
        };
        sqlx::query("UPDATE broadcasts SET response = ? WHERE id = ?")
            .bind(serde_json::to_string(&answer)?)
            .bind(broadcast_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(answer)
    }

    /// The events waiting in the outbox, oldest first (for operators and tests).
    pub async fn pending_events(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let rows = sqlx::query("SELECT payload FROM outbox WHERE status = 'pending' ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(serde_json::from_str(r.get::<&str, _>(0))?))
            .collect()
    }
}

async fn find_recipient(
    tx: &mut SqliteConnection,
    key: &str,
) -> anyhow::Result<Option<(i64, RecipientAnswer)>> {
    let row = sqlx::query(
        "SELECT broadcast_id, customer_id, uuid, email, status FROM personal_broadcasts WHERE idempotency_key = ?",
    )
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.map(|r| {
        (
            r.get(0),
            RecipientAnswer {
                customer_id: r.get(1),
                uuid: r.get(2),
                email_address: r.get(3),
                status: r.get(4),
            },
        )
    }))
}

/// The customer with this external id (or, without one, this email), created if new.
async fn customer(
    tx: &mut SqliteConnection,
    email: &str,
    external_id: &str,
    ts: i64,
) -> anyhow::Result<i64> {
    let found: Option<i64> = if external_id.is_empty() {
        sqlx::query_scalar("SELECT id FROM customers WHERE email = ? ORDER BY id LIMIT 1")
            .bind(email)
            .fetch_optional(&mut *tx)
            .await?
    } else {
        sqlx::query_scalar("SELECT id FROM customers WHERE external_id = ? ORDER BY id LIMIT 1")
            .bind(external_id)
            .fetch_optional(&mut *tx)
            .await?
    };
    if let Some(id) = found {
        return Ok(id);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO customers (email, external_id, created_at) VALUES (?, ?, ?) RETURNING id",
    )
    .bind(email)
    .bind(external_id)
    .bind(ts)
    .fetch_one(&mut *tx)
    .await?)
}
