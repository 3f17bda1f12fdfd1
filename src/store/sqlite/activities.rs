//! Recording activities: joined with their personal broadcast, counted against the
//! customer's mailability, and queued as events, all or nothing per request.

use super::SqliteStore;
use crate::activity::{event, Activity, Counts};
use crate::event::{now, Common};
use crate::store::{ActivityAnswer, Claimed, Queue, UnknownBroadcast};
use rusqlite::{params, Connection, OptionalExtension};

impl SqliteStore {
    /// Records the activities of one request in one savepoint: an unknown personal broadcast
    /// fails them all ([`UnknownBroadcast`] in the error chain). Returns the answers and the
    /// events leased to this process.
    pub async fn record_activities(
        &self,
        activities: Vec<Activity>,
        queue: Queue,
    ) -> anyhow::Result<(Vec<ActivityAnswer>, Vec<Claimed>)> {
        self.call(move |c| {
            let queue = super::outbox::effective(c, queue)?;
            let mut leased = Vec::new();
            let answers = activities
                .iter()
                .enumerate()
                .map(|(i, a)| record(c, i, a, queue, &mut leased))
                .collect::<anyhow::Result<_>>()?;
            Ok((answers, leased))
        })
        .await
    }
}

fn record(
    c: &Connection,
    index: usize,
    a: &Activity,
    queue: Queue,
    leased: &mut Vec<Claimed>,
) -> anyhow::Result<ActivityAnswer> {
    if let Some(id) = &a.external_id {
        let earlier = c
            .prepare_cached("SELECT uuid, id FROM activities WHERE external_id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((uuid, metric_id)) = earlier {
            return Ok(ActivityAnswer {
                uuid,
                metric_id,
                status: "duplicate".into(),
            });
        }
    }
    let stored: Option<String> = c
        .prepare_cached(
            "SELECT event FROM personal_broadcasts WHERE broadcast_id = ?1 AND customer_id = ?2",
        )?
        .query_row(params![a.broadcast_id, a.customer_id], |r| r.get(0))
        .optional()?;
    let Some(stored) = stored else {
        return Err(UnknownBroadcast {
            index,
            broadcast_id: a.broadcast_id,
            customer_id: a.customer_id,
        }
        .into());
    };
    let common: Common = serde_json::from_str(&stored)?;
    let counts = count(c, a)?;
    let ts = a.timestamp.unwrap_or_else(now);
    let uuid = crate::event::new_uuid();
    let metric_id: i64 = c
        .prepare_cached(
            "INSERT INTO activities (external_id, uuid, metric, broadcast_id, customer_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        )?
        .query_row(
            params![a.external_id, uuid, a.metric.as_str(), a.broadcast_id, a.customer_id, now()],
            |r| r.get(0),
        )?;
    let payload = serde_json::to_string(&event(common, a, metric_id, ts, &uuid, counts))?;
    leased.extend(super::outbox::enqueue(
        c,
        &uuid,
        a.metric.as_str(),
        payload,
        queue,
    )?);
    Ok(ActivityAnswer {
        uuid,
        metric_id,
        status: "queued".into(),
    })
}

/// Updates the customer's mailability counts for this activity and returns them.
fn count(c: &Connection, a: &Activity) -> anyhow::Result<Counts> {
    let change = crate::store::count_change(a, "1");
    let sql = format!(
        "UPDATE customers SET {change} WHERE id = ?1 RETURNING bounce_count_hard, bounce_count_soft, complaints"
    );
    Ok(c.prepare_cached(&sql)?.query_row([a.customer_id], |r| {
        Ok(Counts {
            bounce_count_hard: r.get(0)?,
            bounce_count_soft: r.get(1)?,
            complaints: r.get(2)?,
        })
    })?)
}
