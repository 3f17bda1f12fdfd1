//! [`Tx`] on a PostgreSQL transaction. Customers are found or created with `INSERT .. ON
//! CONFLICT`, atomically across instances; a unique key another instance takes first fails
//! the transaction, which the store runs again. A batch of activities reads what it needs in
//! one statement ahead and writes its events in one statement at the end; a trigger reads its
//! recipients' earlier sends in one statement, takes its events' ids ahead, finds or creates
//! its customers a thousand at a time (a statement for each kind of key) and writes its
//! personal broadcasts and events a thousand at a time ([`CHUNK`]): a round trip costs more
//! here than the work of a row. (A trigger of 100,000 recipients took more than the bench's
//! 120 s with four round trips per recipient, 18 to 33 s with one, the customer's, and 8 s
//! with none: `BENCH_BULK_POSTGRES=1 cargo bench --bench triggers`.)

use super::CHANNEL;
use crate::event::Common;
use crate::outbox::error::Result;
use crate::outbox::now_ms;
use crate::outbox::SendStatus;
use crate::recording::port::{CountChange, CustomerKey, NewEvent, PersonalRow, Standing, Tx};
use crate::recording::{ActivityAnswer, ActivityStatus, RecipientAnswer, RecipientStatus};
use crate::store::{Claimed, Queue};
use sqlx::{PgConnection, Row};

/// The connection of a [`PgTx`], its transaction begun by the first statement that may
/// write. Reads before it see what is committed, as each statement of a `READ COMMITTED`
/// transaction does; a batch of activities reads ahead and then writes its events in one
/// statement, which needs no `BEGIN` and `COMMIT` (two round trips of four).
pub(super) enum Conn<'a> {
    /// Nothing written yet: each statement is its own transaction.
    Plain(&'a mut PgConnection),
    /// The transaction, begun.
    Begun(sqlx::Transaction<'a, sqlx::Postgres>),
    /// Only while `BEGIN` is under way (left so if it fails).
    Beginning,
}

impl<'a> Conn<'a> {
    /// The connection as it is: in the transaction if it was begun.
    pub fn current(&mut self) -> &mut PgConnection {
        match self {
            Conn::Plain(c) => c,
            Conn::Begun(t) => t,
            Conn::Beginning => unreachable!("a failed BEGIN ends the work"),
        }
    }

    /// The connection in the transaction, begun now if need be.
    pub async fn begun(&mut self) -> Result<&mut PgConnection> {
        if let Conn::Plain(_) = self {
            let Conn::Plain(c) = std::mem::replace(self, Conn::Beginning) else {
                unreachable!()
            };
            *self = Conn::Begun(sqlx::Connection::begin(c).await?);
        }
        Ok(self.current())
    }

    /// Commits the transaction, if one was begun.
    pub async fn commit(self) -> Result<()> {
        if let Conn::Begun(t) = self {
            t.commit().await?;
        }
        Ok(())
    }
}

/// One transaction, queuing events to `queue` (due instead while delivery is paused).
pub(super) struct PgTx<'a> {
    pub c: Conn<'a>,
    pub queue: Queue,
    /// Whether delivery is paused, once read in this transaction (by [`Tx::read_ahead`], or
    /// by the first event queued to be leased).
    pub paused: Option<bool>,
    /// The sinks an event is queued to: a row for each.
    pub lanes: crate::outbox::Lanes,
    /// Whether a due event was queued (every instance is told at commit).
    pub announce: bool,
    /// What [`Tx::read_ahead`] read for the statements to come.
    pub ahead: Ahead,
}

/// What a batch of activities read ahead ([`Tx::read_ahead`], one statement): its personal
/// broadcasts' events (`None`: there is none) and outbox ids taken from the sequence, so that
/// its events, their ids known, are written together at the end ([`PgTx::flush`]) instead of
/// two statements each.
#[derive(Debug, Default)]
pub(super) struct Ahead {
    events: std::collections::HashMap<(i64, i64), Option<String>>,
    ids: std::collections::VecDeque<i64>,
    /// Events queued with ids taken ahead, not yet written ([`PgTx::flush`]).
    rows: Rows,
    /// Personal broadcasts queued, not yet written ([`PgTx::flush`]).
    personal: Personal,
    /// Customers read with no soft bounces (and none counted since in this transaction): an
    /// open's or a click's reset would not change them, and is not sent.
    no_soft_bounces: std::collections::HashSet<i64>,
}

/// Outbox rows and their payloads to write together, one array per column.
#[derive(Debug, Default)]
struct Rows {
    id: Vec<i64>,
    uuid: Vec<String>,
    metric: Vec<String>,
    external_id: Vec<Option<String>>,
    at_ms: Vec<i64>,
    status: Vec<String>,
    lease_until: Vec<i64>,
    sink: Vec<String>,
    personal: (Vec<i64>, Vec<i64>),
    /// `None` for a `broadcasts` event, kept in its personal broadcast.
    payload: Vec<Option<String>>,
}

/// Personal broadcasts to write together, one array per column.
#[derive(Debug, Default)]
struct Personal {
    broadcast_id: Vec<i64>,
    customer_id: Vec<i64>,
    uuid: Vec<String>,
    email: Vec<String>,
    status: Vec<&'static str>,
    event: Vec<String>,
    idempotency_key: Vec<Option<String>>,
}

/// Rows queued to be written together are written once there are this many: a bulk trigger
/// holds a chunk in memory, not all of it.
const CHUNK: usize = 1000;

/// A statement taking `$n` outbox ids from the sequence, in order, as one array.
macro_rules! ids_ahead {
    ($n:literal) => {
        concat!(
            "SELECT array_agg(nextval(pg_get_serial_sequence('outbox', 'id')) ORDER BY g) FROM generate_series(1, ",
            $n,
            ") AS g"
        )
    };
}

/// A batch's read ahead, one statement: a row with `$3` outbox ids from the sequence (in
/// order) and whether delivery is paused, and a row for each personal broadcast `($1[i], $2[i])` found, with its event and
/// whether its customer has no soft bounces.
const READ_AHEAD: &str = concat!("SELECT (", ids_ahead!("$3"), "), NULL::bigint, NULL::bigint, NULL::text, NULL::boolean, EXISTS (SELECT 1 FROM flags WHERE name = 'paused' AND value = '1')
 UNION ALL
 SELECT NULL, p.broadcast_id, p.customer_id, p.event, c.bounce_count_soft = 0, NULL
 FROM personal_broadcasts p JOIN unnest($1::bigint[], $2::bigint[]) AS k(b, c) ON p.broadcast_id = k.b AND p.customer_id = k.c
 JOIN customers c ON c.id = p.customer_id");
const OUTBOX_ROW: &str = "INSERT INTO outbox (uuid, metric, external_id, next_attempt_at, created_ms, created_at, status, lease_until, sink, broadcast_id, customer_id, id) VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10, COALESCE($11, nextval(pg_get_serial_sequence('outbox', 'id')))) RETURNING id";
/// The events of a batch written at once, rows and payloads (their ids taken ahead).
const FLUSH: &str = "WITH o AS (INSERT INTO outbox (id, uuid, metric, external_id, next_attempt_at, created_ms, created_at, status, lease_until, sink, broadcast_id, customer_id)
     SELECT id, uuid, metric, external_id, at_ms, at_ms, at_ms / 1000, status, lease_until, sink, b, c
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[])
          AS r(id, uuid, metric, external_id, at_ms, status, lease_until, sink, b, c))
 INSERT INTO outbox_payloads (id, payload)
 SELECT id, payload FROM unnest($1::bigint[], $11::text[]) AS p(id, payload) WHERE payload IS NOT NULL";
/// `$1` outbox ids from the sequence, in order.
const IDS_AHEAD: &str = ids_ahead!("$1");
/// A trigger's personal broadcasts written at once.
const PERSONAL: &str = "INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, event, idempotency_key)
 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])";

fn standing(r: &sqlx::postgres::PgRow) -> Standing {
    Standing {
        id: r.get(0),
        bounce_count_hard: r.get(1),
        bounce_count_soft: r.get(2),
        complaints: r.get(3),
        unsubscribed: r.get(4),
    }
}

const TRIGGER_ANSWER: &str = "SELECT response FROM broadcasts WHERE idempotency_key = $1";
const EARLIER_SENDS: &str = "SELECT broadcast_id, customer_id, uuid, email, status, idempotency_key FROM personal_broadcasts WHERE idempotency_key = ANY($1)";

/// An earlier send's broadcast and answer, from the columns of [`EARLIER_SENDS`].
fn earlier(r: &sqlx::postgres::PgRow) -> Result<(i64, RecipientAnswer)> {
    let status: String = r.get(4);
    let answer = RecipientAnswer {
        customer_id: r.get(1),
        uuid: r.get(2),
        email_address: r.get(3),
        status: RecipientStatus::parse_stored(&status)?,
    };
    Ok((r.get(0), answer))
}
const BROADCAST_EVENT: &str =
    "SELECT event FROM personal_broadcasts WHERE broadcast_id = $1 AND customer_id = $2";
const EARLIER_ACTIVITY: &str = "SELECT o.uuid, (p.payload::jsonb ->> 'metric_id')::bigint FROM outbox_keys o JOIN outbox_payloads p ON p.id = o.id WHERE o.external_id = $1";
const STANDING: &str = "SELECT id, bounce_count_hard, bounce_count_soft, complaints, unsubscribed FROM customers WHERE id = $1";

/// The statements that find or create the customers of one kind of key (`$1` their keys,
/// each once, `$2` their emails, `$3` the time), through the unique index of that key, in
/// the order given. Each row returned ends with its key.
const CUSTOMERS_BY_EXTERNAL_ID: &str = "INSERT INTO customers (email, external_id, created_at)
 SELECT email, key, $3 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(key, email, n) ORDER BY n
 ON CONFLICT (external_id) WHERE external_id <> '' DO UPDATE SET email = customers.email
 RETURNING id, bounce_count_hard, bounce_count_soft, complaints, unsubscribed, external_id";
const CUSTOMERS_BY_EMAIL: &str = "INSERT INTO customers (email, external_id, created_at)
 SELECT email, '', $3 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(key, email, n) ORDER BY n
 ON CONFLICT (email) WHERE external_id = '' DO UPDATE SET email = customers.email
 RETURNING id, bounce_count_hard, bounce_count_soft, complaints, unsubscribed, email";

/// Customers' keys of one kind, each once, with the email of its first place.
#[derive(Default)]
struct KeysOnce<'a> {
    keys: Vec<&'a str>,
    emails: Vec<&'a str>,
    given: std::collections::HashSet<&'a str>,
}

impl<'a> KeysOnce<'a> {
    fn add(&mut self, key: &'a str, email: &'a str) {
        if self.given.insert(key) {
            self.keys.push(key);
            self.emails.push(email);
        }
    }
}

impl Tx for PgTx<'_> {
    async fn trigger_answer(&mut self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(TRIGGER_ANSWER)
            .bind(key)
            .fetch_optional(self.c.begun().await?)
            .await?)
    }

    async fn set_trigger_answer(&mut self, broadcast_id: i64, answer: &str) -> Result<()> {
        sqlx::query("UPDATE broadcasts SET response = $1 WHERE id = $2")
            .bind(answer)
            .bind(broadcast_id)
            .execute(self.c.begun().await?)
            .await?;
        Ok(())
    }

    async fn earlier_sends(
        &mut self,
        keys: &[Option<&str>],
    ) -> Result<Vec<Option<(i64, RecipientAnswer)>>> {
        self.flush().await?;
        let given: Vec<&str> = keys.iter().flatten().copied().collect();
        let rows = sqlx::query(EARLIER_SENDS)
            .bind(&given)
            .fetch_all(self.c.begun().await?)
            .await?;
        let mut by_key = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            by_key.insert(r.get::<String, _>(5), earlier(r)?);
        }
        Ok(keys
            .iter()
            .map(|k| k.and_then(|k| by_key.get(k).cloned()))
            .collect())
    }

    async fn insert_broadcast(&mut self, mapping: &str, at: i64, key: Option<&str>) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO broadcasts (mapping, created_at, idempotency_key) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(mapping)
        .bind(at)
        .bind(key)
        .fetch_one(self.c.begun().await?)
        .await?)
    }

    async fn customers(
        &mut self,
        wanted: &[(CustomerKey<'_>, &str)],
        at: i64,
    ) -> Result<Vec<Standing>> {
        // One statement for each kind of key. A key goes in once, with its first email:
        // PostgreSQL refuses to update a row twice in one statement, and the first recipient
        // of a customer is the one that creates it.
        let (mut by_id, mut by_email) = (KeysOnce::default(), KeysOnce::default());
        for &(key, email) in wanted {
            match key {
                CustomerKey::ExternalId(k) => by_id.add(k, email),
                CustomerKey::Email(k) => by_email.add(k, email),
            }
        }
        let by_id = self
            .upsert_customers(CUSTOMERS_BY_EXTERNAL_ID, by_id, at)
            .await?;
        let by_email = self
            .upsert_customers(CUSTOMERS_BY_EMAIL, by_email, at)
            .await?;
        (wanted.iter())
            .map(|&(key, _)| {
                let found = match key {
                    CustomerKey::ExternalId(k) => by_id.get(k),
                    CustomerKey::Email(k) => by_email.get(k),
                };
                found.copied().ok_or_else(|| {
                    crate::outbox::StoreError::Other(anyhow::anyhow!(
                        "no customer returned for a key"
                    ))
                })
            })
            .collect()
    }

    async fn insert_personal(&mut self, row: PersonalRow<'_>) -> Result<()> {
        self.ahead.events.clear();
        // Written with the others at the next flush.
        let p = &mut self.ahead.personal;
        p.broadcast_id.push(row.broadcast_id);
        p.customer_id.push(row.customer_id);
        p.uuid.push(row.uuid.to_owned());
        p.email.push(row.email.to_owned());
        p.status.push(row.status.as_str());
        p.event.push(row.event.to_owned());
        p.idempotency_key
            .push(row.idempotency_key.map(str::to_owned));
        if p.uuid.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn first_human_open(&mut self, broadcast_id: i64, customer_id: i64) -> Result<bool> {
        // It may be one of those queued, not written yet.
        self.flush().await?;
        let changed = sqlx::query(
            "UPDATE personal_broadcasts SET human_opened = TRUE WHERE broadcast_id = $1 AND customer_id = $2 AND NOT human_opened",
        )
        .bind(broadcast_id)
        .bind(customer_id)
        .execute(self.c.begun().await?)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn broadcast_event(
        &mut self,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<Option<Common>> {
        // It may be one of those queued, not written yet.
        self.flush().await?;
        let stored: Option<String> = match self.ahead.events.get(&(broadcast_id, customer_id)) {
            Some(read) => read.clone(),
            None => {
                sqlx::query_scalar(BROADCAST_EVENT)
                    .bind(broadcast_id)
                    .bind(customer_id)
                    .fetch_optional(self.c.begun().await?)
                    .await?
            }
        };
        Ok(match stored {
            Some(s) => Some(serde_json::from_str(&s)?),
            None => None,
        })
    }

    async fn earlier_activity(&mut self, external_id: &str) -> Result<Option<ActivityAnswer>> {
        // It may be one of this batch's, not written yet.
        self.flush().await?;
        let row = sqlx::query(EARLIER_ACTIVITY)
            .bind(external_id)
            .fetch_optional(self.c.begun().await?)
            .await?;
        Ok(row.map(|r| ActivityAnswer {
            uuid: r.get(0),
            metric_id: r.get(1),
            status: ActivityStatus::Duplicate,
        }))
    }

    async fn change_counts(&mut self, customer_id: i64, change: CountChange) -> Result<()> {
        let Some((set, unchanged)) = change.sql("true") else {
            return Ok(());
        };
        // The statement's own condition would skip the write; this skips the round trip.
        if change == CountChange::ResetSoftBounces {
            if self.ahead.no_soft_bounces.contains(&customer_id) {
                return Ok(());
            }
        } else {
            self.ahead.no_soft_bounces.remove(&customer_id);
        }
        let sql = format!("UPDATE customers SET {set} WHERE id = $1 AND NOT ({unchanged})");
        sqlx::query(&sql)
            .bind(customer_id)
            .execute(self.c.begun().await?)
            .await?;
        Ok(())
    }

    async fn standing(&mut self, customer_id: i64) -> Result<Standing> {
        let row = sqlx::query(STANDING)
            .bind(customer_id)
            .fetch_one(self.c.begun().await?)
            .await?;
        Ok(standing(&row))
    }

    async fn enqueue_send(
        &mut self,
        uuid: &str,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<()> {
        let ms = now_ms();
        sqlx::query(
            "INSERT INTO sends (uuid, broadcast_id, customer_id, status, next_attempt_at, created_at) VALUES ($1, $2, $3, 'pending', $4, $5)",
        )
        .bind(uuid)
        .bind(broadcast_id)
        .bind(customer_id)
        .bind(ms)
        .bind(ms / 1000)
        .execute(self.c.begun().await?)
        .await?;
        Ok(())
    }

    async fn update_broadcast_event(
        &mut self,
        broadcast_id: i64,
        customer_id: i64,
        event: &str,
    ) -> Result<()> {
        self.ahead.events.clear();
        self.flush().await?;
        sqlx::query(
            "UPDATE personal_broadcasts SET event = $3 WHERE broadcast_id = $1 AND customer_id = $2",
        )
        .bind(broadcast_id)
        .bind(customer_id)
        .bind(event)
        .execute(self.c.begun().await?)
        .await?;
        Ok(())
    }

    async fn mark_send(
        &mut self,
        id: i64,
        status: SendStatus,
        next_at_ms: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sends SET status = $2, next_attempt_at = COALESCE($3, next_attempt_at), last_error = COALESCE($4, last_error), attempts = attempts + 1, lease_until = 0 WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(next_at_ms)
        .bind(error)
        .execute(self.c.begun().await?)
        .await?;
        Ok(())
    }

    async fn read_ahead(&mut self, activities: &[crate::activity::Activity]) -> Result<()> {
        type Found = (
            Option<Vec<i64>>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<bool>,
            Option<bool>,
        );
        let personal: Vec<(i64, i64)> = activities
            .iter()
            .map(|a| (a.broadcast_id, a.customer_id))
            .collect();
        let (b, c): (Vec<i64>, Vec<i64>) = personal.iter().copied().unzip();
        let n = activities.len() * self.lanes.iter().count();
        let rows: Vec<Found> = sqlx::query_as(READ_AHEAD)
            .bind(&b)
            .bind(&c)
            .bind(n as i64)
            .fetch_all(self.c.current())
            .await?;
        self.ahead.events = personal.iter().map(|k| (*k, None)).collect();
        self.ahead.no_soft_bounces.clear();
        self.ahead.ids.clear();
        for (ids, b, c, event, no_soft_bounces, paused) in rows {
            if let Some(ids) = ids {
                self.ahead.ids = ids.into();
            }
            if paused.is_some() {
                self.paused = paused;
            }
            let (Some(b), Some(c), Some(event)) = (b, c, event) else {
                continue;
            };
            self.ahead.events.insert((b, c), Some(event));
            if no_soft_bounces == Some(true) {
                self.ahead.no_soft_bounces.insert(c);
            }
        }
        Ok(())
    }

    async fn ids_ahead(&mut self, n: usize) -> Result<()> {
        let n = n * self.lanes.iter().count();
        let ids: Option<Vec<i64>> = sqlx::query_scalar(IDS_AHEAD)
            .bind(n as i64)
            .fetch_one(self.c.begun().await?)
            .await?;
        self.ahead.ids = ids.unwrap_or_default().into();
        Ok(())
    }

    async fn enqueue(
        &mut self,
        new: NewEvent<'_>,
        payload: impl FnOnce(i64) -> Result<String> + Send,
    ) -> Result<(i64, Option<Claimed>)> {
        let ms = now_ms();
        let mut payload = Some(payload);
        let mut first: Option<(i64, String)> = None;
        let mut leased = None;
        let handed = self.queue().await?;
        for lane in self.lanes.iter() {
            // Only Pega's lane is handed over; the others are due.
            let queue = if new.withheld || lane != crate::outbox::Lane::Pega {
                Queue::Due
            } else {
                handed
            };
            let (status, lease_until) = if new.withheld {
                (crate::store::Status::Filtered, 0)
            } else {
                queue.row(ms)
            };
            let external_id = if first.is_none() {
                new.external_id
            } else {
                None
            };
            let ahead = self.ahead.ids.pop_front();
            let mut body_of = |id| match &first {
                None => (payload.take().expect("called for the first row"))(id),
                Some((_, body)) => Ok(body.clone()),
            };
            let (id, body) = match ahead {
                Some(id) => {
                    // Written with the others at the next flush.
                    let body = body_of(id)?;
                    let rows = &mut self.ahead.rows;
                    rows.id.push(id);
                    rows.uuid.push(new.uuid.to_owned());
                    rows.metric.push(new.metric.as_str().to_owned());
                    rows.external_id.push(external_id.map(str::to_owned));
                    rows.at_ms.push(ms);
                    rows.status.push(status.as_str().to_owned());
                    rows.lease_until.push(lease_until);
                    rows.sink.push(lane.as_str().to_owned());
                    rows.personal.0.push(new.personal.0);
                    rows.personal.1.push(new.personal.1);
                    rows.payload
                        .push((!new.in_personal_broadcast).then(|| body.clone()));
                    if rows.id.len() >= CHUNK {
                        self.flush().await?;
                    }
                    (id, body)
                }
                _ => {
                    let id = sqlx::query_scalar::<_, i64>(OUTBOX_ROW)
                        .bind(new.uuid)
                        .bind(new.metric.as_str())
                        .bind(external_id)
                        .bind(ms)
                        .bind(ms / 1000)
                        .bind(status.as_str())
                        .bind(lease_until)
                        .bind(lane.as_str())
                        .bind(new.personal.0)
                        .bind(new.personal.1)
                        .bind(ahead)
                        .fetch_one(self.c.begun().await?)
                        .await?;
                    let body = body_of(id)?;
                    if !new.in_personal_broadcast {
                        sqlx::query("INSERT INTO outbox_payloads (id, payload) VALUES ($1, $2)")
                            .bind(id)
                            .bind(&body)
                            .execute(self.c.begun().await?)
                            .await?;
                    }
                    (id, body)
                }
            };
            if !new.withheld {
                match queue {
                    Queue::Due => self.announce = true,
                    Queue::Leased { .. } => {
                        let row = (ms, lease_until);
                        leased = Some(Claimed::new_leased(
                            id,
                            new.uuid,
                            new.metric,
                            body.clone(),
                            row,
                        ));
                    }
                }
            }
            first.get_or_insert((id, body));
        }
        let (id, _) = first.expect("at least one lane");
        Ok((id, leased))
    }
}

impl PgTx<'_> {
    /// Finds or creates the customers of `keys` with `sql` ([`CUSTOMERS_BY_EXTERNAL_ID`] or
    /// [`CUSTOMERS_BY_EMAIL`]): each by its key.
    async fn upsert_customers(
        &mut self,
        sql: &str,
        keys: KeysOnce<'_>,
        at: i64,
    ) -> Result<std::collections::HashMap<String, Standing>> {
        if keys.keys.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let rows = sqlx::query(sql)
            .bind(&keys.keys)
            .bind(&keys.emails)
            .bind(at)
            .fetch_all(self.c.begun().await?)
            .await?;
        Ok(rows.iter().map(|r| (r.get(5), standing(r))).collect())
    }

    /// Where this transaction's events go: as asked, but due while delivery is paused (read
    /// once per transaction, and only when they would be leased).
    async fn queue(&mut self) -> Result<Queue> {
        if let Queue::Leased { .. } = self.queue {
            let paused = match self.paused {
                Some(p) => p,
                None => {
                    let p = super::outbox::paused(self.c.current()).await?;
                    self.paused = Some(p);
                    p
                }
            };
            if paused {
                return Ok(Queue::Due);
            }
        }
        Ok(self.queue)
    }

    /// Writes what is queued: the personal broadcasts in one statement, the events (ids taken
    /// ahead) in another.
    ///
    /// In the transaction, begun if need be: what is written before the work's end (an
    /// activity's `id` is looked up among its events; a bulk trigger writes a chunk at a
    /// time) must not commit before the rest of it.
    async fn flush(&mut self) -> Result<()> {
        if self.ahead.rows.id.is_empty() && self.ahead.personal.uuid.is_empty() {
            return Ok(());
        }
        self.c.begun().await?;
        self.write_personal().await?;
        self.write_rows().await
    }

    async fn write_personal(&mut self) -> Result<()> {
        if self.ahead.personal.uuid.is_empty() {
            return Ok(());
        }
        let p = std::mem::take(&mut self.ahead.personal);
        sqlx::query(PERSONAL)
            .bind(&p.broadcast_id)
            .bind(&p.customer_id)
            .bind(&p.uuid)
            .bind(&p.email)
            .bind(&p.status)
            .bind(&p.event)
            .bind(&p.idempotency_key)
            .execute(self.c.current())
            .await?;
        Ok(())
    }

    /// Writes the events queued, on the connection as it is ([`PgTx::flush`] begins the
    /// transaction first; [`PgTx::finish`] need not, when they are all the work wrote).
    async fn write_rows(&mut self) -> Result<()> {
        if self.ahead.rows.id.is_empty() {
            return Ok(());
        }
        let r = std::mem::take(&mut self.ahead.rows);
        sqlx::query(FLUSH)
            .bind(&r.id)
            .bind(&r.uuid)
            .bind(&r.metric)
            .bind(&r.external_id)
            .bind(&r.at_ms)
            .bind(&r.status)
            .bind(&r.lease_until)
            .bind(&r.sink)
            .bind(&r.personal.0)
            .bind(&r.personal.1)
            .bind(&r.payload)
            .execute(self.c.current())
            .await?;
        Ok(())
    }

    /// Ends the transaction's work: writes what is queued ([`PgTx::flush`]) and tells every
    /// instance's worker, at commit, that due events were queued. Work that wrote nothing
    /// before (a batch of activities that only queues events) writes them in a statement of
    /// its own, without `BEGIN` and `COMMIT`.
    pub async fn finish(&mut self) -> Result<()> {
        if self.announce {
            // The notice is sent at the commit of the events it announces.
            self.c.begun().await?;
        }
        if self.ahead.personal.uuid.is_empty() {
            // One statement is atomic on its own; anything written before it is in the
            // transaction, and so is this.
            self.write_rows().await?;
        } else {
            self.flush().await?;
        }
        if self.announce {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(self.c.begun().await?)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_customer_statement_names_the_index_of_its_key() {
        let by_id = CUSTOMERS_BY_EXTERNAL_ID;
        assert!(by_id.contains("ON CONFLICT (external_id) WHERE external_id <> ''"));
        assert!(by_id.ends_with(", external_id"));
        let by_email = CUSTOMERS_BY_EMAIL;
        assert!(by_email.contains("ON CONFLICT (email) WHERE external_id = ''"));
        assert!(by_email.ends_with(", email"));
    }

    /// Every lookup a request makes can be served by an index: with sequential scans
    /// disabled, the planner still finds a plan without one. (On tables this small it would
    /// rightly choose a scan otherwise.) On the server of `PEGABRIDGE_TEST_POSTGRES_URL`
    /// (this machine's by default); `PEGABRIDGE_SKIP_POSTGRES=1` skips it.
    #[tokio::test]
    async fn every_lookup_of_a_request_goes_through_an_index() {
        let Some(fresh) = super::super::testing::Fresh::store(2).await else {
            return;
        };
        let store = &fresh.store;
        let mut c = store.pool.acquire().await.unwrap();
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *c)
            .await
            .unwrap();
        let lookups = [
            TRIGGER_ANSWER,
            EARLIER_SENDS,
            BROADCAST_EVENT,
            EARLIER_ACTIVITY,
            STANDING,
            CUSTOMERS_BY_EXTERNAL_ID,
            CUSTOMERS_BY_EMAIL,
        ];
        let mut plans = Vec::new();
        for sql in lookups {
            // Untyped literals for the parameters: the planner types them as it would those.
            // An array of one for `= ANY(..)`.
            let mut explain = format!("EXPLAIN {sql}").replace("ANY($1)", "ANY('{1}')");
            for i in (1..=8).rev() {
                explain = explain.replace(&format!("${i}::text[]"), "'{1}'::text[]");
                explain = explain.replace(&format!("${i}"), "'1'");
            }
            let plan = sqlx::query_scalar::<_, String>(&explain)
                .fetch_all(&mut *c)
                .await;
            plans.push((sql.to_owned(), plan));
        }
        drop(c);
        fresh.drop().await;
        for (sql, plan) in plans {
            let plan = plan.unwrap().join("\n");
            assert!(!plan.contains("Seq Scan"), "{sql}:\n{plan}");
            assert!(plan.contains("Index"), "{sql}:\n{plan}");
        }
    }
}
