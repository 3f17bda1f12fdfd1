//! Triggers and activities on PostgreSQL: the same rules as the SQLite backend, one
//! transaction each, retried when another instance wins a race on a unique key.

use super::{is_unique_violation, PgStore, CHANNEL};
use crate::activity::{event, Activity, Counts};
use crate::event::{now, Common};
use crate::store::outbox::now_ms;
use crate::store::{duplicate_of, earlier_answer};
use crate::store::{
    ActivityAnswer, NewRecipient, RecipientAnswer, TriggerAnswer, UnknownBroadcast,
};
use sqlx::{PgConnection, Row};

/// Attempts when a unique key races with another instance.
const RACE_ATTEMPTS: usize = 3;

impl PgStore {
    /// Records a trigger (see the SQLite backend for the rules).
    pub async fn record_trigger(
        &self,
        mapping: String,
        idempotency_key: Option<String>,
        recipients: Vec<NewRecipient>,
    ) -> anyhow::Result<TriggerAnswer> {
        let mut tries = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let result = record(&mut tx, &mapping, idempotency_key.as_deref(), &recipients).await;
            match result {
                Ok(answer) => {
                    tx.commit().await?;
                    return Ok(answer);
                }
                Err(e) if is_unique_violation(&e) && tries + 1 < RACE_ATTEMPTS => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Records activities, all or nothing (see the SQLite backend for the rules).
    pub async fn record_activities(
        &self,
        activities: Vec<Activity>,
    ) -> anyhow::Result<Vec<ActivityAnswer>> {
        let mut tries = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let mut answers = Vec::new();
            let mut failed = None;
            for (i, a) in activities.iter().enumerate() {
                match record_activity(&mut tx, i, a).await {
                    Ok(answer) => answers.push(answer),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => {
                    tx.commit().await?;
                    return Ok(answers);
                }
                Some(e) if is_unique_violation(&e) && tries + 1 < RACE_ATTEMPTS => tries += 1,
                Some(e) => return Err(e),
            }
        }
    }
}

async fn record(
    c: &mut PgConnection,
    mapping: &str,
    idempotency_key: Option<&str>,
    recipients: &[NewRecipient],
) -> anyhow::Result<TriggerAnswer> {
    if let Some(key) = idempotency_key {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT response FROM broadcasts WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&mut *c)
                .await?;
        if let Some(response) = stored {
            return Ok(serde_json::from_str(&response)?);
        }
    }
    let mut earlier = Vec::new();
    for r in recipients {
        earlier.push(match &r.idempotency_key {
            Some(k) => earlier_send(c, k).await?,
            None => None,
        });
    }
    if let Some(answer) = earlier_answer(&earlier) {
        return Ok(answer);
    }
    let ts = now();
    let broadcast_id: i64 = sqlx::query_scalar(
        "INSERT INTO broadcasts (mapping, created_at, idempotency_key) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(mapping)
    .bind(ts)
    .bind(idempotency_key)
    .fetch_one(&mut *c)
    .await?;
    let mut answers: Vec<RecipientAnswer> = Vec::new();
    for (r, before) in recipients.iter().zip(earlier) {
        if let Some(duplicate) = duplicate_of(before, &answers, None) {
            answers.push(duplicate);
            continue;
        }
        let (customer_id, mailable) = customer(c, &r.email, &r.external_id, ts).await?;
        if let Some(duplicate) = duplicate_of(None, &answers, Some(customer_id)) {
            answers.push(duplicate);
            continue;
        }
        answers.push(insert_personal(c, r, broadcast_id, (customer_id, mailable), ts).await?);
    }
    let answer = TriggerAnswer {
        broadcast_id,
        recipients: answers,
    };
    if idempotency_key.is_some() {
        sqlx::query("UPDATE broadcasts SET response = $1 WHERE id = $2")
            .bind(serde_json::to_string(&answer)?)
            .bind(broadcast_id)
            .execute(&mut *c)
            .await?;
    }
    Ok(answer)
}

async fn insert_personal(
    c: &mut PgConnection,
    r: &NewRecipient,
    broadcast_id: i64,
    (customer_id, mailable): (i64, bool),
    ts: i64,
) -> anyhow::Result<RecipientAnswer> {
    let status = if mailable { "queued" } else { "suppressed" };
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut event = r.event.clone();
    event.broadcast_id = broadcast_id;
    event.customer_id = customer_id;
    event.uuid = uuid.clone();
    event.broadcast_timestamp = ts;
    event.metric_timestamp = ts;
    let payload = serde_json::to_string(&event)?;
    sqlx::query(
        "INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, manual_options, event, idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(broadcast_id)
    .bind(customer_id)
    .bind(&uuid)
    .bind(&r.email)
    .bind(status)
    .bind(serde_json::to_string(&r.manual_options)?)
    .bind(&payload)
    .bind(&r.idempotency_key)
    .execute(&mut *c)
    .await?;
    if mailable {
        enqueue(c, &uuid, "broadcasts", &payload).await?;
    }
    Ok(RecipientAnswer {
        customer_id,
        uuid,
        email_address: r.email.clone(),
        status: status.into(),
    })
}

async fn earlier_send(
    c: &mut PgConnection,
    key: &str,
) -> anyhow::Result<Option<(i64, RecipientAnswer)>> {
    let row = sqlx::query(
        "SELECT broadcast_id, customer_id, uuid, email, status FROM personal_broadcasts WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *c)
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

/// The customer by external id (or email without one), created if new, atomically across
/// instances (the unique indexes), and whether it is mailable.
async fn customer(
    c: &mut PgConnection,
    email: &str,
    external_id: &str,
    ts: i64,
) -> anyhow::Result<(i64, bool)> {
    let conflict = if external_id.is_empty() {
        "(email) WHERE external_id = ''"
    } else {
        "(external_id) WHERE external_id <> ''"
    };
    let sql = format!(
        "INSERT INTO customers (email, external_id, created_at) VALUES ($1, $2, $3)
         ON CONFLICT {conflict} DO UPDATE SET email = customers.email
         RETURNING id, (bounce_count_hard = 0 AND bounce_count_soft <= 4 AND complaints = 0 AND NOT unsubscribed)"
    );
    let row = sqlx::query(&sql)
        .bind(email)
        .bind(external_id)
        .bind(ts)
        .fetch_one(&mut *c)
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Queues an event and announces it to every instance (delivered at commit).
pub(super) async fn enqueue(
    c: &mut PgConnection,
    uuid: &str,
    metric: &str,
    payload: &str,
) -> anyhow::Result<()> {
    let ms = now_ms();
    sqlx::query(
        "INSERT INTO outbox (uuid, metric, payload, next_attempt_at, created_ms, created_at) VALUES ($1, $2, $3, $4, $4, $5)",
    )
    .bind(uuid)
    .bind(metric)
    .bind(payload)
    .bind(ms)
    .bind(ms / 1000)
    .execute(&mut *c)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn record_activity(
    c: &mut PgConnection,
    index: usize,
    a: &Activity,
) -> anyhow::Result<ActivityAnswer> {
    if let Some(id) = &a.external_id {
        let earlier = sqlx::query("SELECT uuid, id FROM activities WHERE external_id = $1")
            .bind(id)
            .fetch_optional(&mut *c)
            .await?;
        if let Some(r) = earlier {
            return Ok(ActivityAnswer {
                uuid: r.get(0),
                metric_id: r.get(1),
                status: "duplicate".into(),
            });
        }
    }
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT event FROM personal_broadcasts WHERE broadcast_id = $1 AND customer_id = $2",
    )
    .bind(a.broadcast_id)
    .bind(a.customer_id)
    .fetch_optional(&mut *c)
    .await?;
    let Some(stored) = stored else {
        return Err(UnknownBroadcast {
            index,
            broadcast_id: a.broadcast_id,
            customer_id: a.customer_id,
        }
        .into());
    };
    let common: Common = serde_json::from_str(&stored)?;
    let counts = count(c, a).await?;
    let ts = a.timestamp.unwrap_or_else(now);
    let uuid = uuid::Uuid::new_v4().to_string();
    let metric_id: i64 = sqlx::query_scalar(
        "INSERT INTO activities (external_id, uuid, metric, broadcast_id, customer_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(&a.external_id)
    .bind(&uuid)
    .bind(a.metric.as_str())
    .bind(a.broadcast_id)
    .bind(a.customer_id)
    .bind(now())
    .fetch_one(&mut *c)
    .await?;
    let payload = serde_json::to_string(&event(common, a, metric_id, ts, &uuid, counts))?;
    enqueue(c, &uuid, a.metric.as_str(), &payload).await?;
    Ok(ActivityAnswer {
        uuid,
        metric_id,
        status: "queued".into(),
    })
}

async fn count(c: &mut PgConnection, a: &Activity) -> anyhow::Result<Counts> {
    let change = crate::store::count_change(a, "true");
    let sql = format!(
        "UPDATE customers SET {change} WHERE id = $1 RETURNING bounce_count_hard, bounce_count_soft, complaints"
    );
    let row = sqlx::query(&sql)
        .bind(a.customer_id)
        .fetch_one(&mut *c)
        .await?;
    Ok(Counts {
        bounce_count_hard: row.get(0),
        bounce_count_soft: row.get(1),
        complaints: row.get(2),
    })
}
