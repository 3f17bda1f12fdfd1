//! [`Tx`] on the SQLite write connection: each operation one cached statement, run in the
//! writer's current batch.

use super::Conn;
use crate::event::Common;
use crate::outbox::error::Result;
use crate::outbox::SendStatus;
use crate::recording::port::{CountChange, CustomerKey, NewEvent, PersonalRow, Standing, Tx};
use crate::recording::{ActivityAnswer, ActivityStatus, RecipientAnswer, RecipientStatus};
use crate::store::{Claimed, Queue};
use rusqlite::{params, OptionalExtension};

/// The write connection in one piece of work, queuing events to `queue`.
pub(super) struct SqliteTx<'a> {
    pub c: &'a Conn,
    pub queue: Queue,
    pub lanes: crate::outbox::Lanes,
}

/// Most personal broadcasts whose common part the store keeps parsed ([`super::Conn`]). A
/// personal broadcast's event never changes once written, so an entry stays right until a
/// rollback undoes the row it came from (ids are then given out again; the map is emptied
/// then). When full, it starts again empty.
const CACHED_BROADCASTS: usize = 4096;

const TRIGGER_ANSWER: &str = "SELECT response FROM broadcasts WHERE idempotency_key = ?1";
const EARLIER_SEND: &str = "SELECT broadcast_id, customer_id, uuid, email, status FROM personal_broadcasts WHERE idempotency_key = ?1";
const BROADCAST_EVENT: &str =
    "SELECT event FROM personal_broadcasts WHERE broadcast_id = ?1 AND customer_id = ?2";
const EARLIER_ACTIVITY: &str = "SELECT o.uuid, json_extract(p.payload, '$.metric_id') FROM outbox o JOIN outbox_payloads p ON p.id = o.id WHERE o.external_id = ?1";
const STANDING: &str = "SELECT id, bounce_count_hard, bounce_count_soft, complaints, unsubscribed FROM customers WHERE id = ?1";

/// Every lookup a request makes, with the index that serves it (tested with `EXPLAIN QUERY
/// PLAN`).
#[cfg(test)]
const LOOKUPS: [(&str, &str); 7] = [
    (TRIGGER_ANSWER, "sqlite_autoindex_broadcasts_1"),
    (EARLIER_SEND, "sqlite_autoindex_personal_broadcasts_2"),
    (BROADCAST_EVENT, "sqlite_autoindex_personal_broadcasts_3"),
    (EARLIER_ACTIVITY, "outbox_external_id"),
    (STANDING, "INTEGER PRIMARY KEY"),
    (CUSTOMER_BY_EXTERNAL_ID, "customers_by_external_id"),
    (CUSTOMER_BY_EMAIL, "customers_by_email"),
];

/// The lookup of a customer. Both go through a unique partial index, which SQLite uses only
/// when the query repeats the index's condition (a plain `external_id = ?1` scanned the
/// whole table: quadratic bulk triggers).
fn customer_query(key: CustomerKey<'_>) -> &'static str {
    match key {
        CustomerKey::ExternalId(_) => CUSTOMER_BY_EXTERNAL_ID,
        CustomerKey::Email(_) => CUSTOMER_BY_EMAIL,
    }
}

const CUSTOMER_BY_EXTERNAL_ID: &str = "SELECT id, bounce_count_hard, bounce_count_soft, complaints, unsubscribed FROM customers WHERE external_id = ?1 AND external_id <> ''";
const CUSTOMER_BY_EMAIL: &str = "SELECT id, bounce_count_hard, bounce_count_soft, complaints, unsubscribed FROM customers WHERE email = ?1 AND external_id = ''";

fn standing(r: &rusqlite::Row<'_>) -> rusqlite::Result<Standing> {
    Ok(Standing {
        id: r.get(0)?,
        bounce_count_hard: r.get(1)?,
        bounce_count_soft: r.get(2)?,
        complaints: r.get(3)?,
        unsubscribed: r.get(4)?,
    })
}

impl SqliteTx<'_> {
    /// The customer with this key, created (with `email`) if new.
    fn customer(&mut self, key: CustomerKey<'_>, email: &str, at: i64) -> Result<Standing> {
        let (CustomerKey::ExternalId(k) | CustomerKey::Email(k)) = key;
        let found = self
            .c
            .prepare_cached(customer_query(key))?
            .query_row([k], standing)
            .optional()?;
        if let Some(found) = found {
            return Ok(found);
        }
        let external_id = match key {
            CustomerKey::ExternalId(id) => id,
            CustomerKey::Email(_) => "",
        };
        self.c
            .prepare_cached(
                "INSERT INTO customers (email, external_id, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![email, external_id, at])?;
        Ok(Standing {
            id: self.c.last_insert_rowid(),
            ..Standing::default()
        })
    }
}

impl Tx for SqliteTx<'_> {
    async fn trigger_answer(&mut self, key: &str) -> Result<Option<String>> {
        Ok(self
            .c
            .prepare_cached(TRIGGER_ANSWER)?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    async fn set_trigger_answer(&mut self, broadcast_id: i64, answer: &str) -> Result<()> {
        self.c
            .prepare_cached("UPDATE broadcasts SET response = ?1 WHERE id = ?2")?
            .execute(params![answer, broadcast_id])?;
        Ok(())
    }

    /// One indexed read per key: a statement costs no round trip here.
    async fn earlier_sends(
        &mut self,
        keys: &[Option<&str>],
    ) -> Result<Vec<Option<(i64, RecipientAnswer)>>> {
        let mut stmt = self.c.prepare_cached(EARLIER_SEND)?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(key) = key else {
                found.push(None);
                continue;
            };
            let row: Option<(i64, i64, String, String, String)> = stmt
                .query_row([key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()?;
            found.push(match row {
                Some((broadcast_id, customer_id, uuid, email_address, status)) => Some((
                    broadcast_id,
                    RecipientAnswer {
                        customer_id,
                        uuid,
                        email_address,
                        status: RecipientStatus::parse_stored(&status)?,
                    },
                )),
                None => None,
            });
        }
        Ok(found)
    }

    async fn insert_broadcast(&mut self, mapping: &str, at: i64, key: Option<&str>) -> Result<i64> {
        self.c
            .prepare_cached(
                "INSERT INTO broadcasts (mapping, created_at, idempotency_key) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![mapping, at, key])?;
        Ok(self.c.last_insert_rowid())
    }

    async fn customers(
        &mut self,
        wanted: &[(CustomerKey<'_>, &str)],
        at: i64,
    ) -> Result<Vec<Standing>> {
        // An indexed read each, and an insert for a new one: no round trips here.
        let mut found = Vec::with_capacity(wanted.len());
        for &(key, email) in wanted {
            found.push(self.customer(key, email, at)?);
        }
        Ok(found)
    }

    async fn insert_personal(&mut self, row: PersonalRow<'_>) -> Result<()> {
        self.c
            .prepare_cached(
                "INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, event, idempotency_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                row.broadcast_id,
                row.customer_id,
                row.uuid,
                row.email,
                row.status.as_str(),
                row.event,
                row.idempotency_key
            ])?;
        Ok(())
    }

    async fn first_human_open(&mut self, broadcast_id: i64, customer_id: i64) -> Result<bool> {
        let changed = self
            .c
            .prepare_cached(
                "UPDATE personal_broadcasts SET human_opened = 1 WHERE broadcast_id = ?1 AND customer_id = ?2 AND human_opened = 0",
            )?
            .execute(params![broadcast_id, customer_id])?;
        Ok(changed == 1)
    }

    async fn broadcast_event(
        &mut self,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<Option<Common>> {
        let key = (broadcast_id, customer_id);
        if let Some(common) = self.c.commons.borrow().get(&key) {
            return Ok(Some(common.clone()));
        }
        let stored: Option<String> = self
            .c
            .prepare_cached(BROADCAST_EVENT)?
            .query_row(params![broadcast_id, customer_id], |r| r.get(0))
            .optional()?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let common: Common = serde_json::from_str(&stored)?;
        let mut cached = self.c.commons.borrow_mut();
        if cached.len() >= CACHED_BROADCASTS {
            cached.clear();
        }
        cached.insert(key, common.clone());
        Ok(Some(common))
    }

    async fn earlier_activity(&mut self, external_id: &str) -> Result<Option<ActivityAnswer>> {
        Ok(self
            .c
            .prepare_cached(EARLIER_ACTIVITY)?
            .query_row([external_id], |r| {
                Ok(ActivityAnswer {
                    uuid: r.get(0)?,
                    metric_id: r.get(1)?,
                    status: ActivityStatus::Duplicate,
                })
            })
            .optional()?)
    }

    /// No write at all when nothing would change (an open's reset of a soft count that is
    /// already 0, a second unsubscribe).
    async fn change_counts(&mut self, customer_id: i64, change: CountChange) -> Result<()> {
        let Some((set, unchanged)) = change.sql("1") else {
            return Ok(());
        };
        let sql = format!("UPDATE customers SET {set} WHERE id = ?1 AND NOT ({unchanged})");
        self.c.prepare_cached(&sql)?.execute([customer_id])?;
        Ok(())
    }

    async fn standing(&mut self, customer_id: i64) -> Result<Standing> {
        Ok(self
            .c
            .prepare_cached(STANDING)?
            .query_row([customer_id], standing)?)
    }

    async fn enqueue_send(
        &mut self,
        uuid: &str,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<()> {
        let ms = crate::outbox::now_ms();
        self.c
            .prepare_cached(
                "INSERT INTO sends (uuid, broadcast_id, customer_id, status, next_attempt_at, created_at) VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
            )?
            .execute(params![uuid, broadcast_id, customer_id, ms, ms / 1000])?;
        Ok(())
    }

    async fn update_broadcast_event(
        &mut self,
        broadcast_id: i64,
        customer_id: i64,
        event: &str,
    ) -> Result<()> {
        self.c
            .prepare_cached(
                "UPDATE personal_broadcasts SET event = ?3 WHERE broadcast_id = ?1 AND customer_id = ?2",
            )?
            .execute(params![broadcast_id, customer_id, event])?;
        // The parsed copy is stale now.
        self.c
            .commons
            .borrow_mut()
            .remove(&(broadcast_id, customer_id));
        Ok(())
    }

    async fn mark_send(
        &mut self,
        id: i64,
        status: SendStatus,
        next_at_ms: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        self.c
            .prepare_cached(
                "UPDATE sends SET status = ?2, next_attempt_at = COALESCE(?3, next_attempt_at), last_error = COALESCE(?4, last_error), attempts = attempts + 1, lease_until = 0 WHERE id = ?1",
            )?
            .execute(params![id, status.as_str(), next_at_ms, error])?;
        Ok(())
    }

    async fn enqueue(
        &mut self,
        new: NewEvent<'_>,
        payload: impl FnOnce(i64) -> Result<String> + Send,
    ) -> Result<(i64, Option<Claimed>)> {
        super::outbox::enqueue(self.c, new, payload, self.queue, self.lanes)
    }
}

/// Runs `work` (a [`crate::recording`] algorithm over a [`SqliteTx`]) to its end: SQLite's
/// operations never wait, so its future is ready the first time it is polled.
pub(super) fn run<T>(work: impl std::future::Future<Output = T>) -> T {
    use futures::FutureExt;
    work.now_or_never()
        .expect("SQLite's operations complete without waiting")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lookup_of_a_request_goes_through_an_index() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrate::run(&c).unwrap();
        for (sql, index) in LOOKUPS {
            let n = sql.matches('?').count();
            let args: Vec<&str> = vec!["1"; n];
            let plan: Vec<String> = c
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("SCAN"), "{sql}: {plan}");
        }
    }

    /// The console's search goes through an index in each of its branches (InteractionID,
    /// email, customer, uuids) and for a personal broadcast's events: no scan.
    #[test]
    fn the_consoles_search_goes_through_indexes() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrate::run(&c).unwrap();
        let plan = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> String {
            let rows: Vec<String> = c
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(args, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows.join("; ")
        };
        let find = crate::outbox::find_personal_sql(
            "?1",
            "?2",
            "CAST(json_extract(event, '$.broadcast_manual_options.InteractionId') AS TEXT)",
            "?3",
            "outbox",
        );
        let found = plan(&find, &[&"-5634", &Some(7_i64), &20_i64]);
        for index in [
            "personal_broadcasts_interaction",
            "personal_broadcasts_email",
            "personal_broadcasts_customer",
            "customers_by_external_id",
            "outbox_uuid",
            "sqlite_autoindex_personal_broadcasts_1",
        ] {
            assert!(found.contains(index), "{index}: {found}");
        }
        assert!(
            !found.contains("SCAN p ")
                && !found.contains("SCAN personal_broadcasts")
                && !found.contains("SCAN outbox"),
            "{found}"
        );
        let events = plan(
            "SELECT uuid, sink FROM outbox WHERE broadcast_id = ?1 AND customer_id = ?2 ORDER BY id",
            &[&1_i64, &2_i64],
        );
        assert!(events.contains("outbox_personal"), "{events}");
    }

    /// A customer, a broadcast and a personal broadcast whose event names `campaign`.
    fn personal_broadcast(c: &rusqlite::Connection, campaign: &str) -> Result<(i64, i64)> {
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
            "INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, event) VALUES (?1, ?2, ?3, 'a@b.nl', 'queued', ?4)",
            params![broadcast, customer, format!("u{broadcast}"), serde_json::to_string(&event)?],
        )?;
        Ok((broadcast, customer))
    }

    #[tokio::test]
    async fn a_rolled_back_personal_broadcast_is_not_served_from_the_cache() {
        use crate::store::Store;
        let (_dir, store) = super::super::tests::store_in_a_file("normal").await;
        // Written, read (and cached), then rolled back by a failure after the change.
        let failed = store
            .call(|c| -> Result<()> {
                let (b, cu) = personal_broadcast(c, "rolled back")?;
                let mut tx = SqliteTx {
                    c,
                    queue: Queue::Due,
                    lanes: crate::outbox::Lanes::default(),
                };
                let cached = run(tx.broadcast_event(b, cu))?.unwrap().campaign_name;
                assert_eq!(cached.as_deref(), Some("rolled back"));
                Err(anyhow::anyhow!("fails after writing").into())
            })
            .await;
        assert!(failed.is_err());
        // The ids are given out again: the activity must get the new row's event.
        let (b, cu) = store.call(|c| personal_broadcast(c, "kept")).await.unwrap();
        let open = crate::activity::Activity {
            external_id: None,
            metric: crate::event::Metric::Opens,
            broadcast_id: b,
            customer_id: cu,
            timestamp: None,
            detail: crate::activity::Detail::Open {
                user_agent: String::new(),
                os: String::new(),
                browser: String::new(),
                machine_generated: false,
                machine_reason: None,
            },
            withheld: false,
            first_open_only: false,
        };
        let (answers, _) = store
            .record_activities(vec![open], crate::recording::Unknown::Refuse, Queue::Due)
            .await
            .unwrap();
        let payload = crate::store::OutboxStore::pending_events(&store)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(answers[0].answer().unwrap().status, ActivityStatus::Queued);
        assert_eq!(payload["campaign_name"], "kept");
    }
}
