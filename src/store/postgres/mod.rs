//! The PostgreSQL store: several `serve` instances share one database. Identifiers come from
//! sequences, idempotency keys and customers from unique indexes, outbox rows are claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease, and committed events wake every instance's worker
//! through `LISTEN`/`NOTIFY`. Migrations take sqlx's advisory lock, so instances may start
//! together.

mod outbox;
mod parked;
mod tx;

use crate::activity::Activity;
use crate::outbox::error::{Result, StoreError};
use crate::recording::{ActivityOutcome, NewRecipient, TriggerAnswer, Unknown};
use crate::store::{
    Claimed, ClaimedSend, Queue, SendOutcome, SendQueue, SendReplay, SendRow, SendStatus,
};
use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The channel committed events are announced on.
const CHANNEL: &str = "pegabridge_outbox";

/// The PostgreSQL store (cheap to clone).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// A connection kept between pieces of work (sqlx pings one going back to the pool).
    parked: parked::Parked,
    /// The sinks new events are queued to ([`crate::outbox::Lanes`]'s bits).
    lanes: Arc<std::sync::atomic::AtomicU8>,
}

impl PgStore {
    /// Connects with a pool of `pool_size` and runs the migrations. A server that cannot be
    /// reached is named with its cause within `timeout` (refused, unknown host, wrong
    /// password), not after the pool's long wait.
    pub async fn connect(url: &str, pool_size: u32, timeout: Duration) -> anyhow::Result<Self> {
        let options = first_connection(url, timeout).await?;
        // No ping before each use of a pooled connection (sqlx's default): it was a round trip
        // per statement outside a transaction and per transaction. A connection the server
        // dropped fails its next statement instead, is closed, and the work is retried as any
        // store error (`tests/api/outages.rs` restarts PostgreSQL under load).
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(pool_size.max(2))
            .acquire_timeout(timeout.max(Duration::from_secs(5)))
            .connect_with(options)
            .await
            .context("connecting to PostgreSQL (store.url)")?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .context("running migrations")?;
        Ok(Self {
            pool,
            parked: parked::Parked::default(),
            lanes: Arc::new(std::sync::atomic::AtomicU8::new(
                crate::outbox::Lanes::default().bits(),
            )),
        })
    }
}

/// The options of `url`, once one connection was made with them within `timeout`.
async fn first_connection(url: &str, timeout: Duration) -> anyhow::Result<PgConnectOptions> {
    use sqlx::{ConnectOptions, Connection};
    let options: PgConnectOptions = url.parse().context("store.url: not a PostgreSQL URL")?;
    let shown = crate::config::without_credentials(url);
    let where_ = format!("PostgreSQL at {shown}");
    match tokio::time::timeout(timeout, options.connect()).await {
        Err(_) => anyhow::bail!(
            "{where_}: no answer within {} s (store.connect_timeout_secs): is it running, and reachable from here?",
            timeout.as_secs()
        ),
        Ok(Err(e)) => anyhow::bail!("{where_}: {}", crate::quote::cut_chain(&e)),
        Ok(Ok(c)) => {
            let _ = c.close().await;
        }
    }
    Ok(options)
}

/// `config check --connect`: connects without migrating and says how far its schema is.
pub async fn check(url: &str, timeout: Duration) -> anyhow::Result<String> {
    use sqlx::{ConnectOptions, Connection};
    let options = first_connection(url, timeout).await?;
    let mut c = options.connect().await?;
    let latest = sqlx::migrate!("migrations/postgres").iter().count();
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations'",
    )
    .fetch_one(&mut c)
    .await?;
    let applied: i64 = if applied == 0 {
        0
    } else {
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut c)
            .await?
    };
    let _ = c.close().await;
    let shown = crate::config::without_credentials(url);
    Ok(if (applied as usize) < latest {
        format!("{shown}: {applied} of {latest} migrations applied (serve applies the rest)")
    } else {
        format!("{shown}: {applied} of {latest} migrations applied")
    })
}

/// Attempts of a transaction that loses a race on a unique key to another instance.
const RACE_ATTEMPTS: usize = 3;

/// Runs `$work` (an expression over `$tx`, a [`tx::PgTx`]) in a transaction (begun by its
/// first statement that may write: [`tx::Conn`]), again when another instance took a unique
/// key first; where due events were queued, every instance
/// is told at commit. (A macro: a closure over the transaction would make the future's
/// lifetimes too general for `Send`.)
macro_rules! transaction {
    ($store:expr, $queue:expr, |$tx:ident| $work:expr) => {{
        let mut tries = 0;
        loop {
            let mut conn = $store.parked.take(&$store.pool).await?;
            let done = {
                let mut tx = tx::PgTx {
                    c: tx::Conn::Plain(&mut conn),
                    queue: $queue,
                    paused: None,
                    lanes: crate::outbox::Lanes::from_bits(
                        $store.lanes.load(std::sync::atomic::Ordering::Relaxed),
                    ),
                    announce: false,
                    ahead: tx::Ahead::default(),
                };
                let $tx = &mut tx;
                match $work.await {
                    Ok(done) => match tx.finish().await {
                        Ok(()) => tx.c.commit().await.map(|()| done),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            };
            match done {
                Ok(done) => {
                    // Committed: the connection is clean for the next piece of work.
                    $store.parked.park(conn, &$store.pool);
                    break Ok(done);
                }
                Err(StoreError::Conflict(_)) if tries + 1 < RACE_ATTEMPTS => tries += 1,
                Err(e) => break Err(e),
            }
        }
    }};
}

#[async_trait::async_trait]
impl crate::store::Store for PgStore {
    async fn find_personal(&self, q: String) -> Result<Vec<crate::outbox::PersonalFound>> {
        use sqlx::Row;
        let sql = crate::outbox::find_personal_sql(
            "$1",
            "$2",
            "(event::jsonb -> 'broadcast_manual_options' ->> 'InteractionId')",
            "$3",
            "outbox_keys",
        );
        let rows = sqlx::query(&sql)
            .bind(&q)
            .bind(q.parse::<i64>().ok())
            .bind(crate::outbox::FOUND_AT_MOST as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| crate::outbox::PersonalFound {
                broadcast_id: r.get(0),
                customer_id: r.get(1),
                uuid: r.get(2),
                email: r.get(3),
                mapping: r.get(4),
                triggered_at: r.get(5),
                event: r.get(6),
            })
            .collect())
    }

    async fn personal_events(
        &self,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<Vec<(String, crate::outbox::Lane)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT uuid, sink FROM outbox_keys WHERE broadcast_id = $1 AND customer_id = $2 ORDER BY id",
        )
        .bind(broadcast_id)
        .bind(customer_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(u, s)| Ok((u, crate::outbox::Lane::parse_stored(&s)?)))
            .collect()
    }

    async fn record_trigger(
        &self,
        mapping: String,
        idempotency_key: Option<String>,
        recipients: Vec<NewRecipient>,
        queue: Queue,
        sending: bool,
    ) -> Result<(TriggerAnswer, Vec<Claimed>)> {
        let key = idempotency_key.as_deref();
        // A copy per try: a race with another instance (a customer inserted meanwhile) tries
        // the whole trigger again.
        transaction!(self, queue, |tx| crate::recording::trigger(
            tx,
            &mapping,
            key,
            recipients.clone(),
            sending
        ))
    }

    async fn sends(&self, status: Option<SendStatus>, limit: usize) -> Result<Vec<SendRow>> {
        let sql = crate::store::sql::SEND_ROW;
        let rows = match status {
            Some(s) => {
                sqlx::query(&format!(
                    "{sql} WHERE s.status = $1 ORDER BY s.id DESC LIMIT $2"
                ))
                .bind(s.as_str())
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("{sql} ORDER BY s.id DESC LIMIT $1"))
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(send_row).collect()
    }

    async fn send(&self, uuid: String) -> Result<Option<SendRow>> {
        let sql = format!("{} WHERE s.uuid = $1", crate::store::sql::SEND_ROW);
        let row = sqlx::query(&sql)
            .bind(uuid)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(send_row).transpose()
    }

    async fn replay_sends(&self, which: SendReplay) -> Result<usize> {
        let set = crate::store::sql::SEND_REPLAY;
        let now = crate::outbox::now_ms();
        let done = match which {
            SendReplay::Uuid(u) => {
                sqlx::query(&format!("{set} = $1 WHERE uuid = $2 AND status = 'dead'"))
                    .bind(now)
                    .bind(u)
                    .execute(&self.pool)
                    .await?
            }
            SendReplay::Dead { since } => {
                sqlx::query(&format!(
                    "{set} = $1 WHERE status = 'dead' AND created_at >= $2"
                ))
                .bind(now)
                .bind(since.unwrap_or(i64::MIN))
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() as usize)
    }

    async fn send_queue(&self) -> Result<SendQueue> {
        let (pending, inflight): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM sends WHERE status = 'pending'), (SELECT count(*) FROM sends WHERE status = 'inflight')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(SendQueue { pending, inflight })
    }

    async fn claim_sends(&self, limit: usize, lease_secs: u64) -> Result<Vec<ClaimedSend>> {
        let now = crate::outbox::now_ms();
        let lease_until = now + lease_secs as i64 * 1000;
        let sql = format!(
            "WITH claimed AS (
               UPDATE sends SET status = 'inflight', lease_until = $1
               WHERE id IN (SELECT id FROM sends
                            WHERE (status = 'inflight' AND lease_until < $2)
                               OR (status = 'pending' AND next_attempt_at <= $2)
                            LIMIT $3 FOR UPDATE SKIP LOCKED)
               RETURNING *)
             SELECT {} FROM claimed s JOIN personal_broadcasts p ON p.uuid = s.uuid JOIN broadcasts b ON b.id = s.broadcast_id",
            crate::store::sql::CLAIMED_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(lease_until)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        use sqlx::Row;
        Ok(rows
            .iter()
            .map(|r| ClaimedSend {
                id: r.get(0),
                uuid: r.get(1),
                broadcast_id: r.get(2),
                customer_id: r.get(3),
                email: r.get(4),
                mapping: r.get(5),
                event: r.get(6),
                attempts: r.get::<i32, _>(7) as u32,
            })
            .collect())
    }

    async fn complete_sends(
        &self,
        outcomes: Vec<(ClaimedSend, SendOutcome)>,
        queue: Queue,
    ) -> Result<Vec<Claimed>> {
        transaction!(self, queue, |tx| crate::recording::send_outcomes(
            tx, &outcomes
        ))
    }

    async fn record_activities(
        &self,
        activities: Vec<Activity>,
        unknown: Unknown,
        queue: Queue,
    ) -> Result<(Vec<ActivityOutcome>, Vec<Claimed>)> {
        transaction!(self, queue, |tx| crate::recording::activities(
            tx,
            &activities,
            unknown
        ))
    }

    /// Whether the database answers.
    /// A small committed write (the readiness probe's time in `flags`). The free space is the
    /// database server's concern, not checked here.
    async fn writable(&self, _min_free_bytes: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO flags (name, value) VALUES ('ready_probe', extract(epoch from now())::bigint::text) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    /// Whether the database answers.
    async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
    /// Wakes `notify` whenever any instance commits events, until the process ends.
    ///
    /// The listener has a connection of its own, not one of the pool's: it would hold one for
    /// good, and at `pool_size = 2` all the work shared the other, where sqlx's pool timed
    /// out requests (503 after 5 s) under a saturated load: in 6 of 11 runs of the cost bench
    /// with `PEGABRIDGE_STORE__POOL_SIZE=2`, none of 3 with the listener apart.
    async fn listen(&self, notify: Arc<Notify>) -> Result<()> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_lazy_with(self.pool.connect_options().as_ref().clone());
        let mut listener = PgListener::connect_with(&own).await?;
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

/// A [`SendRow`] from the columns of [`crate::store::sql::SEND_ROW`].
fn send_row(r: &sqlx::postgres::PgRow) -> Result<SendRow> {
    use sqlx::Row;
    let status: String = r.try_get(4)?;
    Ok(SendRow {
        id: r.try_get(0)?,
        uuid: r.try_get(1)?,
        email: r.try_get(2)?,
        mapping: r.try_get(3)?,
        status: status
            .parse()
            .map_err(|e: String| crate::store::StoreError::Other(anyhow::anyhow!(e)))?,
        attempts: i64::from(r.try_get::<i32, _>(5)?),
        next_attempt_at_ms: r.try_get(6)?,
        created_at: r.try_get(7)?,
        last_error: r.try_get(8)?,
        broadcast_id: r.try_get(9)?,
        customer_id: r.try_get(10)?,
    })
}

/// Test stores on fresh databases.
#[cfg(test)]
mod testing {
    use sqlx::Connection;

    /// A store on a database of its own on the server at `PEGABRIDGE_TEST_POSTGRES_URL`
    /// (this machine's by default), dropped by [`Fresh::drop`].
    pub struct Fresh {
        pub store: super::PgStore,
        admin: sqlx::PgConnection,
        name: String,
    }

    impl Fresh {
        /// A fresh store with a pool of `pool_size`; `None` when `PEGABRIDGE_SKIP_POSTGRES=1`.
        pub async fn store(pool_size: u32) -> Option<Self> {
            if std::env::var("PEGABRIDGE_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
                eprintln!("postgres: skipped (PEGABRIDGE_SKIP_POSTGRES=1)");
                return None;
            }
            let server = std::env::var("PEGABRIDGE_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let name = format!("pegabridge_unit_{}", uuid::Uuid::new_v4().simple());
            let mut admin = (sqlx::PgConnection::connect(&server).await).unwrap_or_else(|e| {
                panic!("PostgreSQL at {server} does not answer ({e}): start it, name another with PEGABRIDGE_TEST_POSTGRES_URL, or set PEGABRIDGE_SKIP_POSTGRES=1")
            });
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
            let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
            let url = format!("{base}/{name}");
            let timeout = std::time::Duration::from_secs(5);
            let store = super::PgStore::connect(&url, pool_size, timeout)
                .await
                .unwrap();
            Some(Self { store, admin, name })
        }

        pub async fn drop(mut self) {
            self.store.pool.close().await;
            let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
                .execute(&mut self.admin)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    /// The backend process of a connection (the same process: the same connection).
    async fn backend(c: &mut sqlx::PgConnection) -> i32 {
        (sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(c))
            .await
            .unwrap()
    }

    /// A connection whose work committed waits for the next piece of work (no trip back to
    /// the pool, which pings it), is given back after `PARK_FOR` unused, and is not kept when
    /// the pool could lend no other at once.
    #[tokio::test]
    async fn a_connection_waits_for_the_next_work_but_never_keeps_anyone_waiting() {
        use crate::store::OutboxStore;
        let Some(fresh) = super::testing::Fresh::store(3).await else {
            return;
        };
        let (store, pool) = (&fresh.store, &fresh.store.pool);
        let (a, b, c) = tokio::join!(pool.acquire(), pool.acquire(), pool.acquire());
        let (a, b, mut c) = (a.unwrap(), b.unwrap(), c.unwrap());
        store.parked.park(a, pool);
        assert!(
            !store.parked.holds(),
            "kept while the pool could lend no other"
        );
        // Out of the pool: it may open another now.
        let apart = b.detach();
        let kept = backend(&mut c).await;
        store.parked.park(c, pool);
        assert!(store.parked.holds());
        let mut next = store.parked.take(pool).await.unwrap();
        assert_eq!(backend(&mut next).await, kept, "the next work takes it");
        store.parked.park(next, pool);
        // The store's work takes it and parks it again when done.
        store.complete(Vec::new()).await.unwrap();
        assert!(store.parked.holds());
        tokio::time::pause();
        // Its timer's task starts, then the clock moves past its time.
        tokio::task::yield_now().await;
        tokio::time::advance(super::parked::PARK_FOR + std::time::Duration::from_millis(1)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!store.parked.holds(), "given back to the pool once unused");
        drop(apart);
        fresh.drop().await;
    }

    /// `LISTEN` does not hold one of the pool's connections: at the smallest pool, the work
    /// still has two (with one, sqlx's pool timed requests out under load).
    #[tokio::test]
    async fn listen_leaves_the_whole_pool_to_the_work() {
        let Some(fresh) = super::testing::Fresh::store(2).await else {
            return;
        };
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        fresh.store.listen(notify.clone()).await.unwrap();
        let pool = &fresh.store.pool;
        let (a, b) = tokio::join!(pool.acquire(), pool.acquire());
        assert!(
            a.is_ok() && b.is_ok(),
            "two connections for the work: {a:?} {b:?}"
        );
        drop((a, b));
        // The listener is listening.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(super::CHANNEL)
            .execute(pool)
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), notify.notified())
            .await
            .expect("the listener is woken");
        fresh.drop().await;
    }
}
