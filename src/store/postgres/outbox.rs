//! The outbox on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED` and a lease, so instances
//! never work on the same row at once and a dead instance's rows return when its lease ends.

use super::PgStore;
use crate::outbox::error::{Result, StoreError};
use crate::outbox::now_ms;
use crate::store::sql::DONE;
use crate::store::{
    Attempt, AttemptOutcome, Claimed, Delivery, Lane, Lanes, OutboxStats, Outcome, Purge, Replay,
    Status,
};
use sqlx::postgres::PgRow;
use sqlx::Row;

/// The outbox columns a round changes, one array per column.
#[derive(Default)]
struct Rows {
    id: Vec<i64>,
    status: Vec<String>,
    next_at: Vec<Option<i64>>,
    delivered_at: Vec<Option<i64>>,
    error: Vec<Option<String>>,
    bump: Vec<i32>,
    /// The attempt that delivered it, kept in its row (migration 0012); else in `attempts`.
    delivery_at_ms: Vec<Option<i64>>,
    delivery_status: Vec<Option<i32>>,
    delivery_ms: Vec<Option<i64>>,
    delivery_detail: Vec<Option<String>>,
}

/// The attempts of a round, one array per column.
#[derive(Default)]
struct AttemptRows {
    id: Vec<i64>,
    at_ms: Vec<i64>,
    http_status: Vec<Option<i32>>,
    duration_ms: Vec<i64>,
    outcome: Vec<String>,
    detail: Vec<String>,
}

/// The creation time of the oldest event not yet done, of the lanes `$1`: the earliest of
/// each lane's first open event by id, through `outbox_open` (migration 0014: ids are taken in
/// the transaction that inserts them, so the first by id is within a transaction's length of
/// the oldest).
const OLDEST_OPEN: &str = "SELECT min((SELECT created_at FROM outbox
     WHERE sink = l AND status IN ('pending', 'inflight') ORDER BY id LIMIT 1))
 FROM unnest($1::text[]) AS l";

const COLUMNS: &str =
    "uuid, metric, status, attempts, next_attempt_at, created_at, last_error, sink";

fn delivery(r: &PgRow) -> Result<Delivery> {
    let status: String = r.get(2);
    Ok(Delivery {
        uuid: r.get(0),
        metric: r.get(1),
        status: Status::parse_stored(&status).map_err(|e| StoreError::Other(e.into()))?,
        attempts: r.get::<i32, _>(3) as u32,
        next_attempt_at: r.get(4),
        created_at: r.get(5),
        last_error: r.get(6),
        sink: Lane::parse_stored(r.get::<&str, _>(7))?,
    })
}

use crate::store::sql::{payload, PAYLOAD};

/// A statement's changes of status added to the counts, as the last of its data-modifying
/// CTEs: it reads a CTE `changed` with a row per row changed, its status before (`was`) and
/// after (`now`). Every update of the outbox that changes a status has it (no trigger counts
/// updates since migration 0013); inserts and deletes are counted by their triggers.
/// (A macro, so that a statement with nothing else to fill in stays a `concat!`ed constant.)
macro_rules! count_changes {
    () => {
        "counted AS (
     INSERT INTO outbox_counts (status, shard, n)
     SELECT c.status, pg_backend_pid() % 16, sum(c.d)
     FROM changed, LATERAL (VALUES (changed.was, -1), (changed.now, 1)) AS c(status, d)
     WHERE changed.was IS DISTINCT FROM changed.now
     GROUP BY c.status HAVING sum(c.d) <> 0
     ON CONFLICT (status, shard) DO UPDATE SET n = outbox_counts.n + excluded.n)"
    };
}
const COUNT_CHANGES: &str = count_changes!();

/// The rows of uuid `$2`, through their keys (migration 0014).
const BY_UUID: &str = "SELECT id FROM outbox_keys WHERE uuid = $2";

/// A claim of lane `$4`'s due events at `$2` (pending ones whose attempt is due, in-flight ones
/// whose lease ran out), at most `$3`, leased until `$1`; each locked row's status as it was is
/// the one counted. (`PAYLOAD` names the table, so the update does not alias it.)
const CLAIM: &str = concat!(
    "WITH picked AS (
         SELECT id, status FROM outbox
         WHERE status IN ('pending', 'inflight') AND sink = $4 AND due_at <= $2
           AND NOT EXISTS (SELECT 1 FROM flags WHERE name = 'paused' AND value = '1')
         ORDER BY due_at, id LIMIT $3 FOR UPDATE SKIP LOCKED),
     claimed AS (
         UPDATE outbox SET status = 'inflight', lease_until = $1 FROM picked
         WHERE outbox.id = picked.id
         RETURNING outbox.id, outbox.uuid, outbox.metric, ",
    payload!(),
    " AS payload, outbox.attempts, outbox.created_ms, outbox.lease_until, picked.status AS was),
     changed AS (SELECT was, 'inflight' AS now FROM claimed),
     ",
    count_changes!(),
    "
     SELECT id, uuid, metric, payload, attempts, created_ms, lease_until FROM claimed"
);

#[async_trait::async_trait]
impl crate::store::OutboxStore for PgStore {
    /// Claims up to `limit` due events of `lane` for `lease_secs` (nothing while paused):
    /// pending events whose attempt is due and in-flight ones whose lease ran out (an
    /// instance that died), in order of due time, through one index (`outbox_due`, migration
    /// 0014) in one statement, skipping rows other instances are claiming. An ordered lane is
    /// claimed by one instance at a time ([`PgStore::claim_ordered`]).
    async fn claim(&self, lane: Lane, limit: usize, lease_secs: u64) -> Result<Vec<Claimed>> {
        let now = now_ms();
        let lease = (now + lease_secs as i64 * 1000, now);
        if lane.ordered() {
            return self.claim_ordered(lane, lease, limit).await;
        }
        let rows = sqlx::query(CLAIM)
            .bind(lease.0)
            .bind(now)
            .bind(limit as i64)
            .bind(lane.as_str())
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = rows.iter().map(claimed).collect::<Result<Vec<_>>>()?;
        claimed.sort_by_key(|c| c.id);
        Ok(claimed)
    }

    async fn set_lanes(&self, lanes: Lanes) -> Result<()> {
        self.lanes
            .store(lanes.bits(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Records the outcomes of a delivery round: one set-based statement (one round trip),
    /// whatever the number of events. The attempt that delivered an event is written into
    /// its row; any other attempt is a row of `attempts`.
    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<()> {
        let mut rows = Rows::default();
        let mut attempts = AttemptRows::default();
        for o in &outcomes {
            let (status, next_at, delivered_at) = o.completion.row();
            let attempt: Option<&Attempt> = o.attempt.as_ref();
            let error = attempt
                .filter(|a| a.outcome != AttemptOutcome::Delivered)
                .map(|a| a.detail.clone());
            let delivering = o.delivering();
            for id in &o.ids {
                rows.id.push(*id);
                rows.status.push(status.as_str().to_owned());
                rows.next_at.push(next_at);
                rows.delivered_at.push(delivered_at);
                rows.error.push(error.clone());
                rows.bump.push(i32::from(attempt.is_some()));
                rows.delivery_at_ms.push(delivering.map(|a| a.at_ms));
                rows.delivery_status
                    .push(delivering.and_then(|a| a.http_status.map(i32::from)));
                rows.delivery_ms.push(delivering.map(|a| a.duration_ms));
                rows.delivery_detail
                    .push(delivering.map(|a| a.detail.clone()));
                if let Some(a) = attempt.filter(|_| delivering.is_none()) {
                    attempts.id.push(*id);
                    attempts.at_ms.push(a.at_ms);
                    attempts.http_status.push(a.http_status.map(i32::from));
                    attempts.duration_ms.push(a.duration_ms);
                    attempts.outcome.push(a.outcome.as_str().to_owned());
                    attempts.detail.push(a.detail.clone());
                }
            }
        }
        // One statement: the rows, their counts and their attempts together (atomic as any
        // statement); the rows locked first, so that the status each had is the one counted.
        let mut conn = self.parked.take(&self.pool).await?;
        sqlx::query(concat!(
            "WITH old AS (SELECT id, status FROM outbox WHERE id = ANY($1) FOR UPDATE),
             changed AS (
                 UPDATE outbox o SET status = u.status,
                     next_attempt_at = COALESCE(u.next_at, o.next_attempt_at),
                     delivered_at = COALESCE(u.delivered_at, o.delivered_at),
                     last_error = CASE WHEN u.status = 'delivered' THEN NULL
                                       ELSE COALESCE(u.error, o.last_error) END,
                     attempts = o.attempts + u.bump, lease_until = 0,
                     delivery_at_ms = COALESCE(u.delivery_at_ms, o.delivery_at_ms),
                     delivery_status = CASE WHEN u.delivery_at_ms IS NULL THEN o.delivery_status
                                            ELSE u.delivery_status END,
                     delivery_ms = COALESCE(u.delivery_ms, o.delivery_ms),
                     delivery_detail = COALESCE(u.delivery_detail, o.delivery_detail)
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::int[],
                             $13::bigint[], $14::int[], $15::bigint[], $16::text[])
                      AS u(id, status, next_at, delivered_at, error, bump,
                           delivery_at_ms, delivery_status, delivery_ms, delivery_detail)
                      JOIN old ON old.id = u.id
                 WHERE o.id = u.id
                 RETURNING old.status AS was, o.status AS now),
             ",
            count_changes!(),
            "
             INSERT INTO attempts (outbox_id, at_ms, http_status, duration_ms, outcome, detail)
             SELECT * FROM unnest($7::bigint[], $8::bigint[], $9::int[], $10::bigint[], $11::text[], $12::text[])",
        ))
        .bind(&rows.id)
        .bind(&rows.status)
        .bind(&rows.next_at)
        .bind(&rows.delivered_at)
        .bind(&rows.error)
        .bind(&rows.bump)
        .bind(&attempts.id)
        .bind(&attempts.at_ms)
        .bind(&attempts.http_status)
        .bind(&attempts.duration_ms)
        .bind(&attempts.outcome)
        .bind(&attempts.detail)
        .bind(&rows.delivery_at_ms)
        .bind(&rows.delivery_status)
        .bind(&rows.delivery_ms)
        .bind(&rows.delivery_detail)
        .execute(&mut *conn)
        .await?;
        self.parked.park(conn, &self.pool);
        Ok(())
    }

    /// Events by status (all when `None`), newest first.
    async fn deliveries(&self, status: Option<Status>, limit: usize) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM outbox WHERE ($1::text IS NULL OR status = $1) ORDER BY id DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(status.map(Status::as_str))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(delivery).collect()
    }

    /// One event's row for `lane` (its first when `None`): its row, payload and attempts.
    async fn delivery(
        &self,
        uuid: String,
        lane: Option<Lane>,
    ) -> Result<Option<(Delivery, serde_json::Value, Vec<Attempt>)>> {
        // Found through its keys (migration 0014).
        let sql = format!("SELECT {COLUMNS}, {PAYLOAD}, id, delivery_at_ms, delivery_status, delivery_ms, delivery_detail FROM outbox WHERE id = (SELECT id FROM outbox_keys WHERE uuid = $1 AND ($2::text IS NULL OR sink = $2) ORDER BY id LIMIT 1)");
        let Some(row) = sqlx::query(&sql)
            .bind(&uuid)
            .bind(lane.map(Lane::as_str))
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.get(9);
        let mut attempts: Vec<Attempt> = sqlx::query(
            "SELECT at_ms, http_status, duration_ms, outcome, detail FROM attempts WHERE outbox_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Attempt {
            at_ms: r.get(0),
            http_status: r.get::<Option<i32>, _>(1).map(|s| s as u16),
            duration_ms: r.get(2),
            outcome: AttemptOutcome::parse_stored(r.get::<&str, _>(3)),
            detail: r.get(4),
        })
        .collect();
        // The attempt that delivered it, kept in its row (migration 0012): nothing is
        // attempted after a delivery but a replay, which moves it to `attempts`.
        if let Some(at_ms) = row.get::<Option<i64>, _>(10) {
            attempts.push(Attempt {
                at_ms,
                http_status: row.get::<Option<i32>, _>(11).map(|s| s as u16),
                duration_ms: row.get(12),
                outcome: AttemptOutcome::Delivered,
                detail: row.get(13),
            });
        }
        let payload: String = row.get(8);
        Ok(Some((
            delivery(&row)?,
            serde_json::from_str(&payload)?,
            attempts,
        )))
    }

    /// Removes up to `limit` finished events older than `before` and their attempts, in one
    /// transaction.
    async fn purge(&self, which: Purge, before: i64, limit: usize) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM outbox WHERE {} AND created_at < $1 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            which.condition()
        ))
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        for table in [
            "attempts WHERE outbox_id",
            "outbox_payloads WHERE id",
            "outbox_keys WHERE id",
        ] {
            sqlx::query(&format!("DELETE FROM {table} = ANY($1)"))
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        }
        let n = sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n as usize)
    }

    /// Makes the selected events due again with a fresh schedule; returns how many.
    async fn replay(&self, which: Replay) -> Result<usize> {
        // `$1` is the time; the condition's arguments follow. A delivery kept in its row
        // (migration 0012) moves to `attempts`, to stay in the event's history when the next
        // one takes its place; one statement, its rows locked.
        let replay = |condition: &str| {
            format!(
                "WITH old AS (
                     SELECT id, status, delivery_at_ms, delivery_status, delivery_ms, delivery_detail
                     FROM outbox WHERE {condition} FOR UPDATE),
                 replayed AS (
                     UPDATE outbox o SET status = 'pending', next_attempt_at = $1, created_ms = $1,
                         attempts = 0, lease_until = 0, delivery_at_ms = NULL,
                         delivery_status = NULL, delivery_ms = NULL, delivery_detail = NULL
                     FROM old WHERE o.id = old.id
                     RETURNING old.*),
                 moved AS (
                     INSERT INTO attempts (outbox_id, at_ms, http_status, duration_ms, outcome, detail)
                     SELECT id, delivery_at_ms, delivery_status, delivery_ms, 'delivered', delivery_detail
                     FROM replayed WHERE delivery_at_ms IS NOT NULL ORDER BY id),
                 changed AS (SELECT status AS was, 'pending' AS now FROM replayed),
                 {COUNT_CHANGES}
                 SELECT count(*) FROM replayed"
            )
        };
        let now = now_ms();
        let done: i64 = match which {
            Replay::Uuid(u) => {
                sqlx::query_scalar(&replay(&format!("id IN ({BY_UUID}) AND {DONE}")))
                    .bind(now)
                    .bind(u)
                    .fetch_one(&self.pool)
                    .await?
            }
            Replay::DeadRow { uuid, lane } => {
                sqlx::query_scalar(&replay(&format!(
                    "id IN ({BY_UUID} AND sink = $3) AND status = 'dead'"
                )))
                .bind(now)
                .bind(uuid)
                .bind(lane.as_str())
                .fetch_one(&self.pool)
                .await?
            }
            Replay::Status(s) => {
                sqlx::query_scalar(&replay(&format!("status = $2 AND {DONE}")))
                    .bind(now)
                    .bind(s.status().as_str())
                    .fetch_one(&self.pool)
                    .await?
            }
            Replay::Since { since, status } => {
                sqlx::query_scalar(&replay(&format!(
                    "created_at >= $2 AND status = $3 AND {DONE}"
                )))
                .bind(now)
                .bind(since)
                .bind(status.status().as_str())
                .fetch_one(&self.pool)
                .await?
            }
        };
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(super::CHANNEL)
            .execute(&self.pool)
            .await?;
        Ok(usize::try_from(done).unwrap_or(0))
    }

    /// Pauses or resumes delivery for every instance.
    async fn set_paused(&self, paused: bool) -> Result<()> {
        sqlx::query(
            "INSERT INTO flags (name, value) VALUES ('paused', $1) ON CONFLICT (name) DO UPDATE SET value = $1",
        )
        .bind(if paused { "1" } else { "0" })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether delivery is paused.
    async fn is_paused(&self) -> Result<bool> {
        paused(&self.pool).await
    }

    /// The counts by status (kept in shards by the statements that change a status and by the
    /// insert and delete triggers; [`COUNT_CHANGES`]) and the age of the oldest
    /// undelivered event (through its index): no scan, however big the outbox.
    async fn outbox_stats(&self) -> Result<OutboxStats> {
        let mut stats = OutboxStats::default();
        let rows = sqlx::query("SELECT status, sum(n)::bigint FROM outbox_counts GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        for r in rows {
            let (status, n): (String, i64) = (r.get(0), r.get(1));
            if let Ok(status) = Status::parse_stored(&status) {
                stats.set(status, n);
            }
        }
        let lanes: Vec<&str> = Lane::ALL.iter().map(|l| l.as_str()).collect();
        let oldest: Option<i64> = sqlx::query_scalar(OLDEST_OPEN)
            .bind(&lanes)
            .fetch_one(&self.pool)
            .await?;
        stats.oldest_pending_age_secs = oldest.map_or(0, |t| (now_ms() / 1000 - t).max(0));
        Ok(stats)
    }

    /// The events waiting in the outbox, oldest first.
    async fn pending_events(&self) -> Result<Vec<serde_json::Value>> {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT {PAYLOAD} FROM outbox WHERE status = 'pending' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|p| Ok(serde_json::from_str(p)?)).collect()
    }
}

impl PgStore {
    /// Claims an ordered lane: under a transaction-scoped advisory lock (one instance at a
    /// time), its open events by id up to the first that is not yet due or is leased to
    /// someone else, all leased.
    async fn claim_ordered(
        &self,
        lane: Lane,
        (lease_until, now): (i64, i64),
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ORDERED_CLAIM_LOCK + lane as i64)
            .execute(&mut *tx)
            .await?;
        if paused(&mut *tx).await? {
            return Ok(Vec::new());
        }
        // Locked: their statuses, counted below, stay what they are read as.
        let open: Vec<(i64, bool, i64, i64)> = sqlx::query_as(
            "SELECT id, status = 'pending', next_attempt_at, lease_until FROM outbox
             WHERE sink = $1 AND status IN ('pending', 'inflight') ORDER BY id LIMIT $2
             FOR UPDATE",
        )
        .bind(lane.as_str())
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        let (ids, was): (Vec<i64>, Vec<&str>) = open
            .iter()
            .take_while(
                |(_, pending, due, leased)| if *pending { *due <= now } else { *leased < now },
            )
            .map(|(id, pending, ..)| {
                let was = if *pending {
                    Status::Pending
                } else {
                    Status::Inflight
                };
                (*id, was.as_str())
            })
            .unzip();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "WITH claimed AS (
                 UPDATE outbox SET status = 'inflight', lease_until = $1 WHERE id = ANY($2)
                 RETURNING id, uuid, metric, {PAYLOAD}, attempts, created_ms, lease_until),
             changed AS (SELECT was, 'inflight' AS now FROM unnest($3::text[]) AS w(was)),
             {COUNT_CHANGES}
             SELECT * FROM claimed"
        ))
        .bind(lease_until)
        .bind(&ids)
        .bind(&was)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut claimed = rows.iter().map(claimed).collect::<Result<Vec<_>>>()?;
        claimed.sort_by_key(|c| c.id);
        Ok(claimed)
    }
}

/// The advisory lock of an ordered lane's claims (plus the lane's number).
const ORDERED_CLAIM_LOCK: i64 = 0x7065_6761_0000;

/// A claimed row (`id, uuid, metric, payload, attempts, created_ms, lease_until`).
fn claimed(r: &PgRow) -> Result<Claimed> {
    Ok(Claimed {
        id: r.get(0),
        uuid: r.get(1),
        metric: crate::outbox::stored_metric(r.get::<&str, _>(2))?,
        payload: r.get(3),
        attempts: r.get::<i32, _>(4) as u32,
        created_ms: r.get(5),
        lease_until_ms: r.get(6),
    })
}

/// Whether delivery is paused, read through `e` (the pool, or a transaction's connection).
pub(super) async fn paused<'e>(e: impl sqlx::PgExecutor<'e>) -> Result<bool> {
    let v: Option<String> = sqlx::query_scalar("SELECT value FROM flags WHERE name = 'paused'")
        .fetch_optional(e)
        .await?;
    Ok(v.as_deref() == Some("1"))
}
