//! Recording activities: joined with their personal broadcast, counted against the
//! customer's mailability, and queued as events, all or nothing per request.

use super::{Conn, SqliteStore};
use crate::activity::{event, Activity, Counts};
use crate::event::{now, Common};
use crate::store::{ActivityAnswer, Claimed, Queue};
use rusqlite::{params, Connection, OptionalExtension};

impl SqliteStore {
    /// Records the activities of one request, all or nothing: an unknown personal broadcast
    /// fails them all ([`UnknownBroadcast`] in the error chain), found before anything is
    /// written. Returns the answers and the events leased to this process.
    pub async fn record_activities(
        &self,
        activities: Vec<Activity>,
        queue: Queue,
    ) -> anyhow::Result<(Vec<ActivityAnswer>, Vec<Claimed>)> {
        self.call(move |c| {
            let queue = super::outbox::effective(c, queue)?;
            let commons = activities
                .iter()
                .enumerate()
                .map(|(i, a)| common_of(c, i, a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut leased = Vec::new();
            let answers = activities
                .iter()
                .zip(commons)
                .map(|(a, common)| record(c, a, common, queue, &mut leased))
                .collect::<anyhow::Result<_>>()?;
            Ok((answers, leased))
        })
        .await
    }
}

/// Bytes reserved for an event's JSON (events are about 1.5 KB).
const PAYLOAD_CAPACITY: usize = 2048;

/// Most personal broadcasts whose common part the store keeps parsed ([`super::Conn`]). A
/// personal broadcast's event never changes once written, so an entry stays right until a
/// rollback undoes the row it came from (ids are then given out again; the map is emptied
/// then). When full, it starts again empty.
const CACHED_BROADCASTS: usize = 4096;

/// The common part of the activity's personal broadcast's event.
fn common_of(c: &Conn, index: usize, a: &Activity) -> anyhow::Result<Common> {
    let key = (a.broadcast_id, a.customer_id);
    if let Some(common) = c.commons.borrow().get(&key) {
        return Ok(common.clone());
    }
    let stored: Option<String> = c
        .prepare_cached(
            "SELECT event FROM personal_broadcasts WHERE broadcast_id = ?1 AND customer_id = ?2",
        )?
        .query_row(params![a.broadcast_id, a.customer_id], |r| r.get(0))
        .optional()?;
    let common = crate::store::common_of_stored(stored, index, a)?;
    let mut cached = c.commons.borrow_mut();
    if cached.len() >= CACHED_BROADCASTS {
        cached.clear();
    }
    cached.insert(key, common.clone());
    Ok(common)
}

fn record(
    c: &Connection,
    a: &Activity,
    common: Common,
    queue: Queue,
    leased: &mut Vec<Claimed>,
) -> anyhow::Result<ActivityAnswer> {
    // Checked here, not with the broadcasts: an earlier activity of the same request may
    // have just recorded this id.
    if let Some(id) = &a.external_id {
        let sql = format!(
            "SELECT uuid, json_extract({}, '$.metric_id') FROM outbox WHERE external_id = ?1",
            super::outbox::PAYLOAD
        );
        let earlier = c
            .prepare_cached(&sql)?
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
    let counts = count(c, a)?;
    let ts = a.timestamp.unwrap_or_else(now);
    let uuid = crate::event::new_uuid();
    let new = super::outbox::NewEvent {
        uuid: &uuid,
        metric: a.metric.as_str(),
        external_id: a.external_id.as_deref(),
    };
    // The event's metric_id is its outbox row's id.
    let payload = |id| {
        // Sized for a whole event up front: growing the buffer step by step cost a tenth of
        // the serializing.
        let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
        serde_json::to_writer(&mut payload, &event(common, a, id, ts, &uuid, counts))?;
        Ok(String::from_utf8(payload)?)
    };
    let (metric_id, lease) = super::outbox::enqueue(c, new, payload, queue)?;
    leased.extend(lease);
    Ok(ActivityAnswer {
        uuid,
        metric_id,
        status: "queued".into(),
    })
}

/// Updates the customer's mailability counts for this activity and returns them, when its
/// event reports them (zeros otherwise). An update then a read, since `UPDATE .. RETURNING`
/// costs SQLite a temporary table; no write at all when nothing would change.
fn count(c: &Connection, a: &Activity) -> anyhow::Result<Counts> {
    let (change, unchanged) = crate::store::count_change(a, "1");
    let sql = format!("UPDATE customers SET {change} WHERE id = ?1 AND NOT ({unchanged})");
    c.prepare_cached(&sql)?.execute([a.customer_id])?;
    if !a.reports_counts() {
        return Ok(Counts::default());
    }
    Ok(c.prepare_cached(
        "SELECT bounce_count_hard, bounce_count_soft, complaints FROM customers WHERE id = ?1",
    )?
    .query_row([a.customer_id], |r| {
        Ok(Counts {
            bounce_count_hard: r.get(0)?,
            bounce_count_soft: r.get(1)?,
            complaints: r.get(2)?,
        })
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Detail;
    use crate::event::Metric;

    /// A customer, a broadcast and a personal broadcast whose event names `campaign`.
    fn personal_broadcast(c: &Connection, campaign: &str) -> anyhow::Result<(i64, i64)> {
        c.execute(
            "INSERT INTO customers (email, created_at) VALUES ('a@b.nl', 0)",
            [],
        )?;
        let customer = c.last_insert_rowid();
        c.execute(
            "INSERT INTO broadcasts (mapping, created_at) VALUES ('m', 0)",
            [],
        )?;
        let broadcast = c.last_insert_rowid();
        let event: Common = serde_json::from_value(serde_json::json!({
            "portal_id": 1, "portal_name": "p", "brand_id": 1, "brand_name": "b",
            "metric": "broadcasts", "metric_id": 0, "metric_timestamp": 0, "customer_id": customer,
            "external_id": "", "campaign_id": 1, "campaign_name": campaign,
            "campaign_object_id": 1, "broadcast_id": broadcast, "broadcast_timestamp": 0,
            "broadcast_type": "SINGLEMAIL", "broadcast_event_type": "SINGLEMAIL",
            "broadcast_manual_options": {}, "sub_type": "SINGLEMAIL", "content_id": 1,
            "email_domain": "b.nl", "mailing_type": "regular", "test_mailing": false,
            "email_address_override": false, "uuid": "u",
        }))?;
        c.execute(
            "INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, manual_options, event) VALUES (?1, ?2, ?3, 'a@b.nl', 'queued', '{}', ?4)",
            params![broadcast, customer, format!("u{broadcast}"), serde_json::to_string(&event)?],
        )?;
        Ok((broadcast, customer))
    }

    fn open(broadcast_id: i64, customer_id: i64) -> Activity {
        Activity {
            external_id: None,
            metric: Metric::Opens,
            broadcast_id,
            customer_id,
            timestamp: None,
            detail: Detail::Open {
                user_agent: String::new(),
                os: String::new(),
                browser: String::new(),
                machine_generated: false,
            },
        }
    }

    #[tokio::test]
    async fn a_rolled_back_personal_broadcast_is_not_served_from_the_cache() {
        let (_dir, store) = super::super::tests::store_in_a_file("normal").await;
        // Written, read (and cached), then rolled back by a failure after the change.
        let failed = store
            .call(|c| -> anyhow::Result<()> {
                let (b, cu) = personal_broadcast(c, "rolled back")?;
                let cached = common_of(c, 0, &open(b, cu))?.campaign_name;
                assert_eq!(cached.as_deref(), Some("rolled back"));
                anyhow::bail!("fails after writing")
            })
            .await;
        assert!(failed.is_err());
        // The ids are given out again: the activity must get the new row's event.
        let (b, cu) = store.call(|c| personal_broadcast(c, "kept")).await.unwrap();
        let (answers, _) = store
            .record_activities(vec![open(b, cu)], Queue::Due)
            .await
            .unwrap();
        let payload: serde_json::Value = store.pending_events().await.unwrap().pop().unwrap();
        assert_eq!(answers[0].status, "queued");
        assert_eq!(payload["campaign_name"], "kept");
    }

    #[tokio::test]
    async fn events_and_activity_ids_written_before_the_payload_table_survive_its_migration() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        // A database as the previous schema left it: an activity with a caller's id, and its
        // event (metric_id 41) pending, its payload in the outbox row.
        {
            let c = Connection::open(&db).unwrap();
            for sql in &super::super::migrate::MIGRATIONS[..3] {
                c.execute_batch(sql).unwrap();
            }
            c.execute_batch("PRAGMA user_version = 3").unwrap();
            let (b, cu) = personal_broadcast(&c, "c").unwrap();
            c.execute(
                "INSERT INTO activities (id, external_id, uuid, metric, broadcast_id, customer_id, created_at) VALUES (41, 'open-1', 'u-41', 'opens', ?1, ?2, 0)",
                params![b, cu],
            )
            .unwrap();
            c.execute(
                "INSERT INTO outbox (uuid, metric, payload, next_attempt_at, created_at) VALUES ('u-41', 'opens', '{\"metric_id\":41}', 0, 0)",
                [],
            )
            .unwrap();
        }
        let url = format!("sqlite://{}", db.display());
        let store = SqliteStore::connect(&url, "normal").await.unwrap();
        assert_eq!(
            store.pending_events().await.unwrap(),
            vec![serde_json::json!({"metric_id": 41})]
        );
        // The caller's id still makes a resend a no-op, answered as before.
        let (b, cu) = store
            .call(|c| {
                Ok(c.query_row(
                    "SELECT broadcast_id, customer_id FROM personal_broadcasts",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .await
            .unwrap();
        let mut again = open(b, cu);
        again.external_id = Some("open-1".into());
        let (answers, _) = store
            .record_activities(vec![again], Queue::Due)
            .await
            .unwrap();
        assert_eq!(
            (
                answers[0].uuid.as_str(),
                answers[0].metric_id,
                answers[0].status.as_str()
            ),
            ("u-41", 41, "duplicate")
        );
        assert_eq!(store.pending_events().await.unwrap().len(), 1);
    }
}
