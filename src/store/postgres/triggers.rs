//! Triggers and activities on PostgreSQL: the same rules as the SQLite backend, one
//! transaction each, retried when another instance wins a race on a unique key.

use super::{is_unique_violation, PgStore, CHANNEL};
use crate::activity::{event, Activity, Counts};
use crate::event::now;
use crate::store::outbox::now_ms;
use crate::store::{duplicate_of, earlier_answer};
use crate::store::{ActivityAnswer, Claimed, NewRecipient, Queue, RecipientAnswer, TriggerAnswer};
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
        queue: Queue,
    ) -> anyhow::Result<(TriggerAnswer, Vec<Claimed>)> {
        let mut tries = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let mut leased = Vec::new();
            let queue = effective(&mut tx, queue).await?;
            let key = idempotency_key.as_deref();
            let result = record(&mut tx, &mapping, key, &recipients, (queue, &mut leased)).await;
            match result {
                Ok(answer) => {
                    tx.commit().await?;
                    return Ok((answer, leased));
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
        queue: Queue,
    ) -> anyhow::Result<(Vec<ActivityAnswer>, Vec<Claimed>)> {
        let mut tries = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let mut answers = Vec::new();
            let mut leased = Vec::new();
            let mut failed = None;
            let queue = effective(&mut tx, queue).await?;
            for (i, a) in activities.iter().enumerate() {
                match record_activity(&mut tx, i, a, (queue, &mut leased)).await {
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
                    return Ok((answers, leased));
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
    (queue, leased): (Queue, &mut Vec<Claimed>),
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
        let (answer, event) =
            insert_personal(c, r, broadcast_id, (customer_id, mailable), ts, queue).await?;
        answers.push(answer);
        leased.extend(event);
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
    queue: Queue,
) -> anyhow::Result<(RecipientAnswer, Option<Claimed>)> {
    let status = if mailable { "queued" } else { "suppressed" };
    let uuid = crate::event::new_uuid();
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
    let leased = if mailable {
        enqueue(c, &uuid, "broadcasts", payload, queue).await?
    } else {
        None
    };
    let answer = RecipientAnswer {
        customer_id,
        uuid,
        email_address: r.email.clone(),
        status: status.into(),
    };
    Ok((answer, leased))
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

/// Where a request's events go now: not leased while delivery is paused.
async fn effective(c: &mut PgConnection, queue: Queue) -> anyhow::Result<Queue> {
    Ok(match queue {
        Queue::Leased { .. } if super::outbox::paused(&mut *c).await? => Queue::Due,
        other => other,
    })
}

/// Queues an event: a due one is announced to every instance (at commit); a leased one is
/// returned for this process's hand-off.
pub(super) async fn enqueue(
    c: &mut PgConnection,
    uuid: &str,
    metric: &str,
    payload: String,
    queue: Queue,
) -> anyhow::Result<Option<Claimed>> {
    let ms = now_ms();
    let (status, lease_until) = queue.row(ms);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (uuid, metric, payload, next_attempt_at, created_ms, created_at, status, lease_until) VALUES ($1, $2, $3, $4, $4, $5, $6, $7) RETURNING id",
    )
    .bind(uuid)
    .bind(metric)
    .bind(&payload)
    .bind(ms)
    .bind(ms / 1000)
    .bind(status)
    .bind(lease_until)
    .fetch_one(&mut *c)
    .await?;
    if queue == Queue::Due {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *c)
            .await?;
        return Ok(None);
    }
    let row = (ms, lease_until);
    Ok(Some(Claimed::new_leased(id, uuid, metric, payload, row)))
}

async fn record_activity(
    c: &mut PgConnection,
    index: usize,
    a: &Activity,
    (queue, leased): (Queue, &mut Vec<Claimed>),
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
    let common = crate::store::common_of_stored(stored, index, a)?;
    let counts = count(c, a).await?;
    let ts = a.timestamp.unwrap_or_else(now);
    let uuid = crate::event::new_uuid();
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
    leased.extend(enqueue(c, &uuid, a.metric.as_str(), payload, queue).await?);
    Ok(ActivityAnswer {
        uuid,
        metric_id,
        status: "queued".into(),
    })
}

async fn count(c: &mut PgConnection, a: &Activity) -> anyhow::Result<Counts> {
    let (change, _) = crate::store::count_change(a, "true");
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
