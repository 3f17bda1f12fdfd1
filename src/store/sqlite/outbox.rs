//! The outbox: events committed with the change that made them, claimed by the delivery
//! worker with a lease, completed with a record of every attempt.
//!
//! The statements that write the outbox on every event (its insert, its claim, and its
//! outcome's update) say `OR ROLLBACK`. The counters' triggers make each a statement that may write
//! several rows, and SQLite then copies every page it changes that the transaction had
//! changed before into a statement journal, to undo that statement alone if it fails midway:
//! at saturation 29 pages an event, 4% of `serve`'s instructions (`valgrind
//! --tool=callgrind`). A failure there rolls back the whole batch anyway (see [`super`]);
//! with `OR ROLLBACK` SQLite does it at once and keeps no statement journal. What these
//! statements write is checked by the store before (an activity's `id` among those stored).

use super::{Conn, SqliteStore};
use crate::outbox::error::Result;
use crate::outbox::{
    now_ms, Attempt, AttemptOutcome, Claimed, Delivery, Lane, Lanes, OutboxStats, Outcome, Purge,
    Replay, Status,
};
use crate::recording::port::NewEvent;
use crate::store::sql::DONE;
use crate::store::Queue;
use rusqlite::{params, Connection, OptionalExtension};

/// Where a request's events go now: not leased while delivery is paused.
pub(super) fn effective(c: &Conn, queue: Queue) -> Result<Queue> {
    Ok(match queue {
        Queue::Leased { .. } if paused(c)? => Queue::Due,
        other => other,
    })
}

pub(super) use crate::store::sql::PAYLOAD;

/// The creation time of a lane's oldest open event: its first by id, as one connection
/// inserts the outbox's rows with their `created_at` (migration 0012).
pub(super) const OLDEST_OPEN: &str = "SELECT created_at FROM outbox
 WHERE sink = ?1 AND status IN ('pending', 'inflight') ORDER BY id LIMIT 1";

/// Queues an event (inside the caller's transaction), a row for each of `lanes`: `payload`
/// is given the first row's id, which is an activity's `metric_id`. Returns that id, and the
/// event if leased, for the hand-off (only Pega's lane is handed over; the others are due).
pub(super) fn enqueue(
    c: &Connection,
    new: NewEvent<'_>,
    payload: impl FnOnce(i64) -> Result<String>,
    queue: Queue,
    lanes: Lanes,
) -> Result<(i64, Option<Claimed>)> {
    let ms = now_ms();
    let mut payload = Some(payload);
    let mut first: Option<(i64, String)> = None;
    let mut leased = None;
    for lane in lanes.iter() {
        let queue = if new.withheld || lane != Lane::Pega {
            Queue::Due
        } else {
            queue
        };
        let (status, lease_until) = if new.withheld {
            (Status::Filtered, 0)
        } else {
            queue.row(ms)
        };
        // The caller's `id` stays with the event's own (first) row.
        let external_id = if first.is_none() {
            new.external_id
        } else {
            None
        };
        // `last_insert_rowid`, not `RETURNING id`: SQLite gathers RETURNING rows in a
        // temporary table first, which cost a third of this insert. `OR ROLLBACK`: the
        // module's notes.
        c.prepare_cached(
            "INSERT OR ROLLBACK INTO outbox (uuid, metric, external_id, next_attempt_at, created_ms, created_at, status, lease_until, sink, broadcast_id, customer_id) VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![new.uuid, new.metric.as_str(), external_id, ms, ms / 1000, status.as_str(), lease_until, lane.as_str(), new.personal.0, new.personal.1])?;
        let id = c.last_insert_rowid();
        let body = match &first {
            None => (payload.take().expect("called for the first row"))(id)?,
            Some((_, body)) => body.clone(),
        };
        if !new.in_personal_broadcast {
            c.prepare_cached("INSERT INTO outbox_payloads (id, payload) VALUES (?1, ?2)")?
                .execute(params![id, body])?;
        }
        if let Queue::Leased { .. } = queue {
            leased = Some(Claimed::new_leased(
                id,
                new.uuid,
                new.metric,
                body.clone(),
                (ms, lease_until),
            ));
        }
        first.get_or_insert((id, body));
    }
    let (id, _) = first.expect("at least one lane");
    Ok((id, leased))
}

/// Records an attempt on each of the outcome's events and moves them on. The attempt that
/// delivered them is written into their own rows, in one statement; any other attempt is a
/// row of `attempts`, with a second statement (migration 0013). A round's events go in one
/// POST and share its attempt: one event (the default `batch_size = 1`) is named by its id,
/// several are passed as a JSON array.
fn record_outcome(c: &Connection, outcome: &Outcome) -> Result<()> {
    let one = outcome.ids.len() == 1;
    macro_rules! each {
        ($statement:literal) => {
            if one {
                concat!($statement, "WHERE id = ?1")
            } else {
                concat!($statement, "WHERE id IN (SELECT value FROM json_each(?1))")
            }
        };
    }
    let ids: rusqlite::types::Value = match outcome.ids.as_slice() {
        [one] => (*one).into(),
        many => serde_json::to_string(many)?.into(),
    };
    let (status, next_at, delivered_at) = outcome.completion.row();
    let attempt = outcome.attempt.as_ref();
    if let Some(a) = outcome.delivering() {
        c.prepare_cached(each!(
            "UPDATE OR ROLLBACK outbox SET status = 'delivered', delivered_at = ?2,
             last_error = NULL, attempts = attempts + 1, lease_until = 0, delivery_at_ms = ?3,
             delivery_status = ?4, delivery_ms = ?5, delivery_detail = ?6 "
        ))?
        .execute(params![
            ids,
            delivered_at,
            a.at_ms,
            a.http_status,
            a.duration_ms,
            a.detail
        ])?;
        return Ok(());
    }
    let error = attempt
        .filter(|a| a.outcome != AttemptOutcome::Delivered)
        .map(|a| a.detail.as_str());
    let bump = i64::from(attempt.is_some());
    c.prepare_cached(each!(
        "UPDATE OR ROLLBACK outbox SET status = ?2, next_attempt_at = COALESCE(?3, next_attempt_at),
         delivered_at = COALESCE(?4, delivered_at),
         last_error = CASE WHEN ?2 = 'delivered' THEN NULL ELSE COALESCE(?5, last_error) END,
         attempts = attempts + ?6, lease_until = 0 "
    ))?
    .execute(params![
        ids,
        status.as_str(),
        next_at,
        delivered_at,
        error,
        bump
    ])?;
    if let Some(a) = attempt {
        let add = if one {
            "INSERT INTO attempts (outbox_id, at_ms, http_status, duration_ms, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        } else {
            "INSERT INTO attempts (outbox_id, at_ms, http_status, duration_ms, outcome, detail) SELECT value, ?2, ?3, ?4, ?5, ?6 FROM json_each(?1)"
        };
        c.prepare_cached(add)?.execute(params![
            ids,
            a.at_ms,
            a.http_status,
            a.duration_ms,
            a.outcome.as_str(),
            a.detail
        ])?;
    }
    Ok(())
}

const COLUMNS: &str =
    "uuid, metric, status, attempts, next_attempt_at, created_at, last_error, sink";

fn delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    let status: String = r.get(2)?;
    Ok(Delivery {
        uuid: r.get(0)?,
        metric: r.get(1)?,
        status: Status::parse_stored(&status).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?,
        attempts: r.get(3)?,
        next_attempt_at: r.get(4)?,
        created_at: r.get(5)?,
        last_error: r.get(6)?,
        sink: crate::outbox::Lane::parse_stored(&r.get::<_, String>(7)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, e.into())
        })?,
    })
}

#[async_trait::async_trait]
impl crate::store::OutboxStore for SqliteStore {
    /// Claims up to `limit` due events of `lane` (pending and due, or in flight with an
    /// expired lease), reserving them for `lease_secs`. Nothing while delivery is paused.
    async fn claim(&self, lane: Lane, limit: usize, lease_secs: u64) -> Result<Vec<Claimed>> {
        self.call(move |c| {
            if paused(c)? {
                return Ok(Vec::new());
            }
            let now = now_ms();
            let lease_until = now + lease_secs as i64 * 1000;
            if lane.ordered() {
                return claim_ordered(c, lane, (lease_until, now, limit));
            }
            // Rows of an instance that died first, then new work by due time: each through
            // its own partial index.
            let mut claimed = claim_where(
                c,
                "status = 'inflight' AND sink = ?4 AND lease_until < ?2 ORDER BY lease_until",
                lane,
                (lease_until, now, limit),
            )?;
            let rest = limit - claimed.len();
            if rest > 0 {
                claimed.extend(claim_where(
                    c,
                    "status = 'pending' AND sink = ?4 AND next_attempt_at <= ?2 ORDER BY next_attempt_at, id",
                    lane,
                    (lease_until, now, rest),
                )?);
            }
            claimed.sort_by_key(|c| c.id);
            Ok(claimed)
        })
        .await
    }

    async fn set_lanes(&self, lanes: Lanes) -> Result<()> {
        self.call(move |c| {
            c.lanes.set(lanes);
            Ok(())
        })
        .await
    }

    /// Records the outcomes of a delivery round, in one piece of work.
    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<()> {
        self.call(move |c| {
            for outcome in &outcomes {
                record_outcome(c, outcome)?;
            }
            Ok(())
        })
        .await
    }

    /// Events by status (all when `None`), newest first.
    async fn deliveries(&self, status: Option<Status>, limit: usize) -> Result<Vec<Delivery>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM outbox WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let status = status.map(Status::as_str);
            let rows = stmt.query_map(params![status, limit as i64], delivery)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// One event: its row, its payload and its attempts.
    async fn delivery(
        &self,
        uuid: String,
        lane: Option<Lane>,
    ) -> Result<Option<(Delivery, serde_json::Value, Vec<Attempt>)>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {COLUMNS}, {PAYLOAD}, id, delivery_at_ms, delivery_status, delivery_ms, delivery_detail FROM outbox WHERE uuid = ?1 AND (?2 IS NULL OR sink = ?2) ORDER BY id LIMIT 1"
            );
            let found = c
                .prepare_cached(&sql)?
                .query_row(params![&uuid, lane.map(Lane::as_str)], |r| {
                    // The attempt that delivered it, kept in its row (migration 0013).
                    let delivering = match r.get::<_, Option<i64>>(10)? {
                        Some(at_ms) => Some(Attempt {
                            at_ms,
                            http_status: r.get(11)?,
                            duration_ms: r.get(12)?,
                            outcome: AttemptOutcome::Delivered,
                            detail: r.get(13)?,
                        }),
                        None => None,
                    };
                    Ok((delivery(r)?, r.get::<_, String>(8)?, r.get::<_, i64>(9)?, delivering))
                })
                .optional()?;
            let Some((row, payload, id, delivering)) = found else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT at_ms, http_status, duration_ms, outcome, detail FROM attempts WHERE outbox_id = ?1 ORDER BY id",
            )?;
            let mut attempts = stmt
                .query_map([id], |r| {
                    Ok(Attempt {
                        at_ms: r.get(0)?,
                        http_status: r.get(1)?,
                        duration_ms: r.get(2)?,
                        outcome: AttemptOutcome::parse_stored(&r.get::<_, String>(3)?),
                        detail: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // Nothing is attempted after a delivery but a replay, which moves it to `attempts`.
            attempts.extend(delivering);
            Ok(Some((row, serde_json::from_str(&payload)?, attempts)))
        })
        .await
    }

    /// Removes up to `limit` finished events older than `before`, their payloads and
    /// attempts, in one transaction.
    async fn purge(&self, which: Purge, before: i64, limit: usize) -> Result<usize> {
        self.call(move |c| {
            let ids = format!(
                "SELECT id FROM outbox WHERE {} AND created_at < ?1 ORDER BY created_at LIMIT ?2",
                which.condition()
            );
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            c.execute(
                &format!("DELETE FROM attempts WHERE outbox_id IN ({ids})"),
                params![before, limit],
            )?;
            c.execute(
                &format!("DELETE FROM outbox_payloads WHERE id IN ({ids})"),
                params![before, limit],
            )?;
            let n = c.execute(
                &format!("DELETE FROM outbox WHERE id IN ({ids})"),
                params![before, limit],
            )?;
            Ok(n)
        })
        .await
    }

    /// Makes the selected events due again with a fresh retry schedule; returns how many.
    async fn replay(&self, which: Replay) -> Result<usize> {
        self.call(move |c| {
            use rusqlite::types::Value;
            let text = |s: &str| Value::Text(s.to_owned());
            // `?1` is the time; the condition's arguments follow.
            let (condition, args) = match which {
                Replay::Uuid(u) => (format!("uuid = ?2 AND {DONE}"), vec![Value::Text(u)]),
                Replay::DeadRow { uuid, lane } => (
                    "uuid = ?2 AND sink = ?3 AND status = 'dead'".to_owned(),
                    vec![Value::Text(uuid), text(lane.as_str())],
                ),
                Replay::Status(s) => (
                    format!("status = ?2 AND {DONE}"),
                    vec![text(s.status().as_str())],
                ),
                Replay::Since { since, status } => (
                    format!("created_at >= ?2 AND status = ?3 AND {DONE}"),
                    vec![Value::Integer(since), text(status.status().as_str())],
                ),
            };
            let args: Vec<Value> = std::iter::once(Value::Integer(now_ms()))
                .chain(args)
                .collect();
            // A delivery kept in its row (migration 0013) moves to `attempts`, to stay in the
            // event's history when the next one takes its place.
            c.execute(
                &format!(
                    "INSERT INTO attempts (outbox_id, at_ms, http_status, duration_ms, outcome, detail)
                     SELECT id, delivery_at_ms, delivery_status, delivery_ms, 'delivered', delivery_detail
                     FROM outbox WHERE delivery_at_ms IS NOT NULL AND {condition} ORDER BY id"
                ),
                rusqlite::params_from_iter(&args),
            )?;
            let n = c.execute(
                &format!(
                    "UPDATE outbox SET status = 'pending', next_attempt_at = ?1, created_ms = ?1,
                     attempts = 0, lease_until = 0, delivery_at_ms = NULL, delivery_status = NULL,
                     delivery_ms = NULL, delivery_detail = NULL WHERE {condition}"
                ),
                rusqlite::params_from_iter(&args),
            )?;
            Ok(n)
        })
        .await
    }

    /// Pauses or resumes delivery (claims return nothing while paused).
    async fn set_paused(&self, paused: bool) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO flags (name, value) VALUES ('paused', ?1) ON CONFLICT (name) DO UPDATE SET value = ?1",
                [if paused { "1" } else { "0" }],
            )?;
            c.paused.set(Some(paused));
            Ok(())
        })
        .await
    }

    /// Whether delivery is paused.
    async fn is_paused(&self) -> Result<bool> {
        self.call(paused).await
    }

    /// The counts by status (kept by triggers with every change) and the age of the oldest
    /// undelivered event (its lane's first open event, through `outbox_open`): no scan,
    /// however big the outbox.
    async fn outbox_stats(&self) -> Result<OutboxStats> {
        self.read(|c| {
            let mut stats = OutboxStats::default();
            let mut stmt = c.prepare_cached("SELECT status, n FROM outbox_counts")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (status, n) = row?;
                if let Ok(status) = Status::parse_stored(&status) {
                    stats.set(status, n);
                }
            }
            let mut oldest = Vec::new();
            for lane in Lane::ALL {
                let mut first = c.prepare_cached(OLDEST_OPEN)?;
                oldest.push(first.query_row([lane.as_str()], |r| r.get(0)).optional()?);
            }
            let oldest: Option<i64> = oldest.into_iter().flatten().min();
            stats.oldest_pending_age_secs = oldest.map_or(0, |t| (now_ms() / 1000 - t).max(0));
            Ok(stats)
        })
        .await
    }

    /// The events waiting in the outbox, oldest first (for operators and tests).
    async fn pending_events(&self) -> Result<Vec<serde_json::Value>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {} FROM outbox WHERE status = 'pending' ORDER BY id",
                PAYLOAD
            ))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|p| Ok(serde_json::from_str(&p?)?)).collect()
        })
        .await
    }
}

/// Leases up to `limit` rows of `lane` matching `filter` (which orders them) until
/// `lease_until`.
fn claim_where(
    c: &Connection,
    filter: &str,
    lane: Lane,
    (lease_until, now, limit): (i64, i64, usize),
) -> Result<Vec<Claimed>> {
    let sql = format!(
        "UPDATE OR ROLLBACK outbox SET status = 'inflight', lease_until = ?1
         WHERE id IN (SELECT id FROM outbox WHERE {filter} LIMIT ?3)
         RETURNING id, uuid, metric, {PAYLOAD}, attempts, created_ms, lease_until"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![lease_until, now, limit as i64, lane.as_str()],
        claimed,
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Claims an ordered lane: its open events by id, up to the first one that is not due yet
/// (a retry waiting) or leased to someone else (in flight): everything before it, leased.
fn claim_ordered(
    c: &Connection,
    lane: Lane,
    (lease_until, now, limit): (i64, i64, usize),
) -> Result<Vec<Claimed>> {
    let mut ids = Vec::new();
    {
        let mut open = c.prepare_cached(
            "SELECT id, status = 'pending', next_attempt_at, lease_until FROM outbox
             WHERE sink = ?1 AND status IN ('pending', 'inflight') ORDER BY id LIMIT ?2",
        )?;
        let mut rows = open.query(params![lane.as_str(), limit as i64])?;
        while let Some(r) = rows.next()? {
            let (id, pending, due, leased): (i64, bool, i64, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let free = if pending { due <= now } else { leased < now };
            if !free {
                break;
            }
            ids.push(id);
        }
    }
    let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "UPDATE OR ROLLBACK outbox SET status = 'inflight', lease_until = ?1
         WHERE sink = ?2 AND id BETWEEN ?3 AND ?4 AND status IN ('pending', 'inflight')
         RETURNING id, uuid, metric, {PAYLOAD}, attempts, created_ms, lease_until"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![lease_until, lane.as_str(), first, last], claimed)?;
    let mut claimed = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// A claimed row (`id, uuid, metric, payload, attempts, created_ms, lease_until`).
fn claimed(r: &rusqlite::Row<'_>) -> rusqlite::Result<Claimed> {
    let metric: String = r.get(2)?;
    let metric = crate::outbox::stored_metric(&metric).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(Claimed {
        id: r.get(0)?,
        uuid: r.get(1)?,
        metric,
        payload: r.get(3)?,
        attempts: r.get(4)?,
        created_ms: r.get(5)?,
        lease_until_ms: r.get(6)?,
    })
}

/// Whether delivery is paused: read once per transaction (every request asks, and nobody else
/// writes while the transaction runs).
fn paused(c: &Conn) -> Result<bool> {
    if let Some(paused) = c.paused.get() {
        return Ok(paused);
    }
    let v: Option<String> = c
        .prepare_cached("SELECT value FROM flags WHERE name = 'paused'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let paused = v.as_deref() == Some("1");
    c.paused.set(Some(paused));
    Ok(paused)
}
