//! The SQLite store: one connection that commits the work waiting at each moment in one
//! transaction (group commit). Callers get their answer only after the commit is durable.
//!
//! The writer is not a thread of its own. A caller queues its piece of work; if no batch is
//! running, it spawns a task that takes everything queued, runs it in one transaction, commits,
//! yields, and goes on until the queue is empty. So the store's work runs on the runtime's
//! threads, between requests, with no hand-off to a sleeping thread. (With a writer thread,
//! each hand-off waited for the thread to be scheduled: 23 us at the median, but 0.7 ms at
//! p90 and 2 ms at p99 under load, since the tokio workers held the cores; the delivery
//! bench's rate rose by about a tenth without it.) A batch is at most [`MAX_BATCH`] pieces of
//! short work, and it blocks the thread that runs it for that long; reads that may be long (an
//! operator's listings and counts) go to their own connection on the blocking pool instead.
//!
//! A piece of work that fails before it has changed a row (an unknown broadcast, a duplicate
//! key: the stores check before they write) fails alone. One that fails after changing rows
//! (a database error) rolls back the transaction: the work before it in the batch is answered
//! with an error too, never with a false success, and the work after it goes on in a new
//! transaction. (Each piece of work used to run in its own savepoint instead; copying every
//! page it touched into the savepoint's journal cost about a fifth of the writer's time.)
//!
//! With `synchronous = full`, the connection commits without waiting for the disk (SQLite's
//! `NORMAL`: the commit's WAL frames are written, not flushed), and the WAL file is flushed
//! (`fdatasync`) before the batch's callers are answered: in the batch's task while flushes
//! take under [`QUICK_FLUSH`], else on a flush thread, which lets the next batches run
//! meanwhile and covers every batch committed before it with one flush (see [`Flusher`]). A
//! caller is never answered before its commit is on disk: the same guarantee as SQLite's
//! `FULL`, which flushes inside the commit. (SQLite's own flushes, at checkpoints, are
//! unchanged.)
//!
//! Why not an async driver: every statement through an async SQLite driver costs two thread
//! hand-offs, which dominated a trigger's cost (about 1 ms for its nine statements); here a
//! trigger costs none, and a batch one commit.

mod migrate;
pub mod outbox;
mod tx;

use crate::activity::Activity;
use crate::event::Common;
use crate::outbox::error::{Result, StoreError};
use crate::recording::{ActivityOutcome, NewRecipient, TriggerAnswer, Unknown};
use crate::store::{
    Claimed, ClaimedSend, Queue, SendOutcome, SendQueue, SendReplay, SendRow, SendStatus,
};
use anyhow::Context;
use rusqlite::Connection;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// The write connection, with what the store keeps beside it from one piece of work to the
/// next (dereferences to the connection).
pub struct Conn {
    db: Connection,
    /// Parsed common parts of personal broadcasts, by (broadcast id, customer id); see
    /// [`activities`]. Emptied on every rollback.
    commons: RefCell<HashMap<(i64, i64), Common>>,
    /// Whether delivery is paused, as read in the current transaction.
    paused: Cell<Option<bool>>,
    /// Why the last batch could not be committed (a full disk, an I/O error): told to the
    /// callers whose answers were dropped with it.
    failure: Arc<Mutex<Option<String>>>,
    /// The database file and its identity (device, inode) when it was opened: a file deleted
    /// or replaced under a running server would take everything acknowledged since with it.
    file: Option<(PathBuf, u64, u64)>,
    /// The sinks new events are queued to (a row for each).
    lanes: Cell<crate::outbox::Lanes>,
}

/// The identity of a file: its device and inode.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

impl Conn {
    /// Whether the database file is still the one opened; the reason when it is not.
    fn file_gone(&self) -> Option<String> {
        let (path, dev, ino) = self.file.as_ref()?;
        match identity(path) {
            Ok((d, i)) if d == *dev && i == *ino => None,
            Ok(_) => Some(format!(
                "the database file {} was replaced while pegabridge ran: restart it",
                path.display()
            )),
            Err(e) => Some(format!(
                "the database file {} is gone ({e}): restart pegabridge",
                path.display()
            )),
        }
    }

    /// Records why a batch failed, for the callers whose answers are dropped with it.
    fn fail(&self, e: &dyn std::fmt::Display) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }

    /// A commit went through: an earlier failure is over.
    fn committed(&self) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_some() {
            *failure = None;
        }
    }
}

impl std::ops::Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.db
    }
}

/// A piece of work: runs on the connection, says whether it failed after changing rows, and
/// gives the answer to send once the outcome is known.
type Work = Box<dyn FnOnce(&Conn) -> (Dirty, Box<dyn FnOnce() + Send>) + Send>;

/// Whether a piece of work failed after changing rows (its transaction must be rolled back).
type Dirty = bool;

/// Most pieces of work committed together.
const MAX_BATCH: usize = 256;

/// The store (cheap to clone).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

struct Inner {
    /// Work waiting for the next batch.
    queue: Mutex<Vec<Work>>,
    /// Whether a task is running batches (it empties the queue before it stops).
    leading: AtomicBool,
    conn: Mutex<Conn>,
    /// The same as the connection's `failure`.
    failure: Arc<Mutex<Option<String>>>,
    /// A second connection for long reads, when the database is a file.
    reader: Option<Arc<Mutex<Connection>>>,
    answer: Answer,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://FILE` or
    /// `sqlite::memory:`) and runs the migrations.
    pub async fn connect(url: &str, synchronous: &str) -> anyhow::Result<Self> {
        let flush = match synchronous {
            "full" => true,
            "normal" => false,
            other => anyhow::bail!("store.synchronous: `{other}` is not `normal` or `full`"),
        };
        let path = file_of(url)?;
        let inner = tokio::task::spawn_blocking(move || -> anyhow::Result<Inner> {
            let db = open(&path)?;
            let wal = wal_of(&db, flush)?;
            let reader = match db.path() {
                Some(file) if !file.is_empty() => {
                    Some(Arc::new(Mutex::new(open_reader(Path::new(file))?)))
                }
                _ => None,
            };
            let failure = Arc::new(Mutex::new(None));
            let file = match db.path() {
                Some(f) if !f.is_empty() => {
                    let f = PathBuf::from(f);
                    let (dev, ino) = identity(&f)?;
                    Some((f, dev, ino))
                }
                _ => None,
            };
            Ok(Inner {
                queue: Mutex::new(Vec::new()),
                leading: AtomicBool::new(false),
                conn: Mutex::new(Conn {
                    db,
                    commons: RefCell::new(HashMap::new()),
                    paused: Cell::new(None),
                    failure: failure.clone(),
                    file,
                    lanes: Cell::new(crate::outbox::Lanes::default()),
                }),
                failure,
                reader,
                answer: match wal {
                    Some(wal) => Answer::AfterFlush(Flusher::spawn(wal, QUICK_FLUSH)?),
                    None => Answer::AtCommit,
                },
            })
        })
        .await
        .context("opening the SQLite database")??;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Runs `f` inside the current batch's transaction and answers after the commit. `f`
    /// should check what can fail before it writes: an error after a change rolls back the
    /// batch so far (see the module's notes).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let before = conn.total_changes();
            let result = f(conn);
            // SQLite ends the whole transaction itself on some errors (a full disk, I/O):
            // that too undoes the batch's earlier work.
            let dirty = result.is_err() && (conn.total_changes() != before || conn.is_autocommit());
            let answer = Box::new(move || {
                let _ = tx.send(result);
            });
            (dirty, answer)
        });
        (self.inner.queue.lock())
            .unwrap_or_else(|e| e.into_inner())
            .push(work);
        if !self.inner.leading.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.inner.clone().lead());
        }
        match rx.await {
            Ok(result) => result,
            // The answer was dropped with its batch: the store could not commit it.
            Err(_) => {
                let why = (self.inner.failure.lock())
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| "it could not be made durable (see the log)".into());
                Err(StoreError::Unavailable(format!(
                    "the SQLite batch failed to commit: {why}"
                )))
            }
        }
    }

    /// Runs a read on the reading connection, on the blocking pool (on the write connection
    /// for a database in memory, which a second connection would not see).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match &self.inner.reader {
            Some(reader) => {
                let reader = reader.clone();
                tokio::task::spawn_blocking(move || {
                    f(&reader.lock().unwrap_or_else(|e| e.into_inner()))
                })
                .await
                .map_err(|e| StoreError::Other(anyhow::anyhow!("a SQLite read stopped: {e}")))?
            }
            None => self.call(move |c| f(c)).await,
        }
    }
}

#[async_trait::async_trait]
impl crate::store::Store for SqliteStore {
    /// A repeated idempotency key records nothing: its work fails before any write, as does
    /// every check of [`crate::recording`].
    async fn record_trigger(
        &self,
        mapping: String,
        idempotency_key: Option<String>,
        recipients: Vec<NewRecipient>,
        queue: Queue,
        sending: bool,
    ) -> Result<(TriggerAnswer, Vec<Claimed>)> {
        self.call(move |c| {
            let queue = outbox::effective(c, queue)?;
            let mut tx = tx::SqliteTx {
                c,
                queue,
                lanes: c.lanes.get(),
            };
            let key = idempotency_key.as_deref();
            tx::run(crate::recording::trigger(
                &mut tx, &mapping, key, recipients, sending,
            ))
        })
        .await
    }

    async fn sends(&self, status: Option<SendStatus>, limit: usize) -> Result<Vec<SendRow>> {
        self.read(move |c| {
            let sql = crate::store::sql::SEND_ROW;
            let limit = limit as i64;
            let mut stmt;
            let rows = match status {
                Some(s) => {
                    stmt = c.prepare_cached(&format!(
                        "{sql} WHERE s.status = ?1 ORDER BY s.id DESC LIMIT ?2"
                    ))?;
                    stmt.query_map(rusqlite::params![s.as_str(), limit], send_row)?
                }
                None => {
                    stmt = c.prepare_cached(&format!("{sql} ORDER BY s.id DESC LIMIT ?1"))?;
                    stmt.query_map([limit], send_row)?
                }
            };
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn find_personal(&self, q: String) -> Result<Vec<crate::outbox::PersonalFound>> {
        self.read(move |c| {
            let sql = crate::outbox::find_personal_sql(
                "?1",
                "?2",
                "CAST(json_extract(event, '$.broadcast_manual_options.InteractionId') AS TEXT)",
                "?3",
                "outbox",
            );
            let n = q.parse::<i64>().ok();
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                rusqlite::params![q, n, crate::outbox::FOUND_AT_MOST as i64],
                |r| {
                    Ok(crate::outbox::PersonalFound {
                        broadcast_id: r.get(0)?,
                        customer_id: r.get(1)?,
                        uuid: r.get(2)?,
                        email: r.get(3)?,
                        mapping: r.get(4)?,
                        triggered_at: r.get(5)?,
                        event: r.get(6)?,
                    })
                },
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn personal_events(
        &self,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<Vec<(String, crate::outbox::Lane)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT uuid, sink FROM outbox WHERE broadcast_id = ?1 AND customer_id = ?2 ORDER BY id",
            )?;
            let rows = stmt.query_map([broadcast_id, customer_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (uuid, sink) = row?;
                out.push((uuid, crate::outbox::Lane::parse_stored(&sink)?));
            }
            Ok(out)
        })
        .await
    }

    async fn send(&self, uuid: String) -> Result<Option<SendRow>> {
        self.read(move |c| {
            use rusqlite::OptionalExtension;
            let sql = format!("{} WHERE s.uuid = ?1", crate::store::sql::SEND_ROW);
            Ok(c.prepare_cached(&sql)?
                .query_row([uuid], send_row)
                .optional()?)
        })
        .await
    }

    async fn replay_sends(&self, which: SendReplay) -> Result<usize> {
        self.call(move |c| {
            let set = crate::store::sql::SEND_REPLAY;
            let now = crate::outbox::now_ms();
            Ok(match which {
                SendReplay::Uuid(u) => c.execute(
                    &format!("{set} = ?1 WHERE uuid = ?2 AND status = 'dead'"),
                    rusqlite::params![now, u],
                )?,
                SendReplay::Dead { since } => c.execute(
                    &format!("{set} = ?1 WHERE status = 'dead' AND created_at >= ?2"),
                    rusqlite::params![now, since.unwrap_or(i64::MIN)],
                )?,
            })
        })
        .await
    }

    async fn send_queue(&self) -> Result<SendQueue> {
        self.read(|c| {
            let count = |status: &str| -> rusqlite::Result<i64> {
                c.prepare_cached("SELECT count(*) FROM sends WHERE status = ?1")?
                    .query_row([status], |r| r.get(0))
            };
            Ok(SendQueue {
                pending: count("pending")?,
                inflight: count("inflight")?,
            })
        })
        .await
    }

    async fn claim_sends(&self, limit: usize, lease_secs: u64) -> Result<Vec<ClaimedSend>> {
        self.call(move |c| {
            let now = crate::outbox::now_ms();
            let lease_until = now + lease_secs as i64 * 1000;
            // Sends of an instance that died first, then new ones by due time.
            let ids: Vec<i64> = c
                .prepare_cached(
                    "UPDATE sends SET status = 'inflight', lease_until = ?1 WHERE id IN (
                       SELECT id FROM (
                         SELECT id FROM sends WHERE status = 'inflight' AND lease_until < ?2
                         UNION ALL
                         SELECT id FROM sends WHERE status = 'pending' AND next_attempt_at <= ?2)
                       LIMIT ?3)
                     RETURNING id",
                )?
                .query_map(rusqlite::params![lease_until, now, limit as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM sends s JOIN personal_broadcasts p ON p.uuid = s.uuid JOIN broadcasts b ON b.id = s.broadcast_id WHERE s.id = ?1",
                crate::store::sql::CLAIMED_COLUMNS
            ))?;
            let mut claimed = Vec::with_capacity(ids.len());
            for id in ids {
                claimed.push(stmt.query_row([id], |r| {
                    Ok(ClaimedSend {
                        id: r.get(0)?,
                        uuid: r.get(1)?,
                        broadcast_id: r.get(2)?,
                        customer_id: r.get(3)?,
                        email: r.get(4)?,
                        mapping: r.get(5)?,
                        event: r.get(6)?,
                        attempts: r.get(7)?,
                    })
                })?);
            }
            Ok(claimed)
        })
        .await
    }

    async fn complete_sends(
        &self,
        outcomes: Vec<(ClaimedSend, SendOutcome)>,
        queue: Queue,
    ) -> Result<Vec<Claimed>> {
        self.call(move |c| {
            let queue = outbox::effective(c, queue)?;
            let mut tx = tx::SqliteTx {
                c,
                queue,
                lanes: c.lanes.get(),
            };
            tx::run(crate::recording::send_outcomes(&mut tx, &outcomes))
        })
        .await
    }

    async fn record_activities(
        &self,
        activities: Vec<Activity>,
        unknown: Unknown,
        queue: Queue,
    ) -> Result<(Vec<ActivityOutcome>, Vec<Claimed>)> {
        self.call(move |c| {
            let queue = outbox::effective(c, queue)?;
            let mut tx = tx::SqliteTx {
                c,
                queue,
                lanes: c.lanes.get(),
            };
            tx::run(crate::recording::activities(&mut tx, &activities, unknown))
        })
        .await
    }

    /// At least `min_free_bytes` free on the database file's filesystem, then a small committed
    /// write (the readiness probe's time in `flags`).
    async fn writable(&self, min_free_bytes: u64) -> Result<()> {
        self.call(move |c| {
            if let Some((path, ..)) = &c.file {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                let stat = nix::sys::statvfs::statvfs(dir.unwrap_or(Path::new(".")))
                    .map_err(|e| StoreError::Other(e.into()))?;
                let free = stat.blocks_available().saturating_mul(stat.fragment_size());
                if free < min_free_bytes {
                    return Err(StoreError::Unavailable(format!(
                        "{free} bytes free where {} is, less than [store] min_free_mb",
                        path.display()
                    )));
                }
            }
            c.execute(
                "INSERT INTO flags (name, value) VALUES ('ready_probe', strftime('%s','now')) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether the database answers.
    async fn ping(&self) -> bool {
        self.call(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }

    async fn listen(&self, _notify: std::sync::Arc<tokio::sync::Notify>) -> Result<()> {
        Ok(())
    }
}

impl Inner {
    /// Runs batches until the queue is empty, yielding between them.
    async fn lead(self: Arc<Self>) {
        // Clears `leading` if this task ends early (a panic in a piece of work, or the runtime
        // shutting down), so the next caller starts another.
        struct Leading<'a>(&'a AtomicBool, bool);
        impl Drop for Leading<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
        }
        let mut leading = Leading(&self.leading, true);
        loop {
            let batch: Vec<Work> = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                leading.1 = false;
                self.leading.store(false, Ordering::SeqCst);
                // Work queued after the queue was found empty, and before `leading` was
                // cleared, did not start a task: this one goes on with it, unless another
                // caller has started one meanwhile.
                if self
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                    || self.leading.swap(true, Ordering::SeqCst)
                {
                    return;
                }
                leading.1 = true;
                continue;
            }
            run_batch(&self.connection(), batch, &self.answer);
            tokio::task::yield_now().await;
        }
    }

    /// The write connection. After a panic in a piece of work, the transaction it left open
    /// is rolled back (its callers, and those of the work before it, got no answer).
    fn connection(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|poisoned| {
            self.conn.clear_poison();
            let conn = poisoned.into_inner();
            rollback(&conn);
            conn
        })
    }
}

/// `config check --connect`: what the database at `url` is, without creating or migrating
/// it (a file that is not there yet is created by `serve`, in a folder that must exist).
pub fn check(url: &str) -> anyhow::Result<String> {
    let path = file_of(url)?;
    let latest = migrate::MIGRATIONS.len();
    if path.as_os_str() == ":memory:" {
        return Ok("in memory".into());
    }
    if !path.exists() {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        anyhow::ensure!(
            dir.is_dir(),
            "{}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
        return Ok(format!(
            "{} does not exist yet: serve creates it (schema version {latest})",
            path.display()
        ));
    }
    let conn = open_reader(&path)?;
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    anyhow::ensure!(
        version <= latest,
        "{} is at schema version {version}, newer than this pegabridge ({latest})",
        path.display()
    );
    Ok(if version < latest {
        format!(
            "{} at schema version {version}: serve migrates it to {latest}",
            path.display()
        )
    } else {
        format!("{} at schema version {version}", path.display())
    })
}

/// The file of a `sqlite://` URL (`:memory:` stays in memory).
fn file_of(url: &str) -> anyhow::Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .with_context(|| format!("store.url: `{url}` is not a sqlite:// URL"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    Ok(PathBuf::from(rest))
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A 16 MiB page cache (the default is 2 MiB, with which the writer spent much of its time
    // re-reading pages; rarer checkpoints were tried too: no faster, and p99 latency x4). A
    // bulk trigger's one transaction fills it: at 64 MiB it was half of what a trigger of
    // 100,000 recipients added to the process, and the lookups among 1,000,000 customers
    // measured the same at 16 (docs/benchmarks.md).
    // `synchronous = NORMAL`: commits do not flush; see the module's notes for who does.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -16384;",
    )?;
    migrate::run(&conn).context("running migrations")?;
    Ok(conn)
}

/// The connection for long reads (opened after the migrations have run).
fn open_reader(path: &Path) -> anyhow::Result<Connection> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} to read", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// The WAL file to flush after commits, when `flush` is asked and the database is a file.
fn wal_of(conn: &Connection, flush: bool) -> anyhow::Result<Option<PathBuf>> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    match conn.path() {
        Some(db) if flush && !db.is_empty() && mode.eq_ignore_ascii_case("wal") => {
            Ok(Some(PathBuf::from(format!("{db}-wal"))))
        }
        _ => Ok(None),
    }
}

/// When a batch's callers are answered.
enum Answer {
    /// Right after the commit (`synchronous = normal`, or a database in memory).
    AtCommit,
    /// After the flusher has flushed the WAL written by the commit.
    AfterFlush(Flusher),
}

type Answers = Vec<Box<dyn FnOnce() + Send>>;

/// Flushes the WAL file after commits and then answers the batches' callers: in the batch's
/// own task while flushes are quick, else on a thread of its own, which answers the batches
/// committed before each flush and lets the next batches run meanwhile. (A quick flush in the
/// task saves waking the thread, which under load waited for a core; a slow disk must not hold
/// a runtime thread.)
struct Flusher {
    wal: PathBuf,
    /// Whether the last flush was quick enough to run in the batch's task.
    inline: Arc<AtomicBool>,
    batches: mpsc::Sender<Answers>,
    /// The longest flush that counts as quick ([`QUICK_FLUSH`]).
    quick: std::time::Duration,
}

/// The longest flush that keeps flushing in the batch's task.
const QUICK_FLUSH: std::time::Duration = std::time::Duration::from_millis(2);

impl Flusher {
    /// A flusher whose flushes count as quick up to `quick` (the store uses [`QUICK_FLUSH`]).
    fn spawn(wal: PathBuf, quick: std::time::Duration) -> anyhow::Result<Self> {
        let (batches, committed) = mpsc::channel::<Answers>();
        let inline = Arc::new(AtomicBool::new(true));
        let (file, flag) = (wal.clone(), inline.clone());
        std::thread::Builder::new()
            .name("pegabridge-flush".into())
            .spawn(move || {
                while let Ok(first) = committed.recv() {
                    // Every batch committed until now is in the file: one flush for all.
                    let mut waiting = vec![first];
                    waiting.extend(committed.try_iter());
                    if timed_flush(&file, &flag, quick) {
                        waiting.into_iter().flatten().for_each(|answer| answer());
                    }
                }
            })
            .context("starting the SQLite flush thread")?;
        Ok(Self {
            wal,
            inline,
            batches,
            quick,
        })
    }

    /// Flushes, then answers (a failed flush drops the answers: callers see an error).
    fn after_commit(&self, answers: Answers) {
        if self.inline.load(Ordering::Relaxed) {
            if timed_flush(&self.wal, &self.inline, self.quick) {
                answers.into_iter().for_each(|answer| answer());
            }
        } else {
            let _ = self.batches.send(answers);
        }
    }
}

/// Flushes the WAL and records whether it took at most `quick`; says whether it succeeded.
fn timed_flush(wal: &Path, inline: &AtomicBool, quick: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    let flushed = flush(wal);
    inline.store(start.elapsed() <= quick, Ordering::Relaxed);
    match flushed {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "flushing the SQLite WAL failed");
            false
        }
    }
}

/// Flushes the WAL file's data to disk. The file stays the same while the store's connection
/// is open (SQLite resets a WAL, it does not replace it), so opening it by name is safe.
/// No file yet means no commit has written to it.
fn flush(wal: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(wal) {
        Ok(file) => file.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs a batch: one transaction, committed, its callers answered (or handed to the flusher).
fn run_batch(conn: &Conn, batch: Vec<Work>, answer: &Answer) {
    let mut work = batch.into_iter();
    // Each pass commits one transaction; a piece of work that fails after changing rows ends
    // it early, rolled back.
    while work.len() > 0 {
        if let Some(gone) = conn.file_gone() {
            tracing::error!(error = gone.as_str(), "refusing writes");
            conn.fail(&gone);
            return; // dropping the work answers its callers with that error
        }
        if let Err(e) = execute(conn, "BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin a transaction");
            conn.fail(&e);
            return; // dropping the work answers its callers with an error
        }
        // Another process may have changed the flag since the last transaction.
        conn.paused.set(None);
        let mut answers: Answers = Vec::new();
        let mut failed = None;
        for w in work.by_ref() {
            match w(conn) {
                (false, a) => answers.push(a),
                (true, a) => {
                    failed = Some(a);
                    break;
                }
            }
        }
        if let Some(failed) = failed {
            rollback(conn);
            // The earlier answers are dropped unsent: those callers see an error, as their
            // changes were rolled back. The failed work gets its own error.
            failed();
            continue;
        }
        match execute(conn, "COMMIT") {
            Ok(()) => {
                conn.committed();
                match answer {
                    Answer::AtCommit => answers.into_iter().for_each(|answer| answer()),
                    // A failed send drops the answers: callers see an error.
                    Answer::AfterFlush(f) => f.after_commit(answers),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                conn.fail(&e);
                rollback(conn);
                // The answers are dropped unsent: callers see an error, never a false success.
            }
        }
    }
}

/// Runs a statement prepared once (these run for every batch).
fn execute(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Rolls back the open transaction, if SQLite has not already, and forgets the personal
/// broadcasts cached from it (the paused flag is read again at the next `BEGIN` anyway).
fn rollback(conn: &Conn) {
    conn.commons.borrow_mut().clear();
    if conn.is_autocommit() {
        return;
    }
    if let Err(e) = conn.execute_batch("ROLLBACK") {
        tracing::error!(error = %e, "rollback failed");
    }
}

/// A [`SendRow`] from the columns of [`crate::store::sql::SEND_ROW`].
fn send_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SendRow> {
    let status: String = r.get(4)?;
    Ok(SendRow {
        id: r.get(0)?,
        uuid: r.get(1)?,
        email: r.get(2)?,
        mapping: r.get(3)?,
        status: status.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
        })?,
        attempts: r.get(5)?,
        next_attempt_at_ms: r.get(6)?,
        created_at: r.get(7)?,
        last_error: r.get(8)?,
        broadcast_id: r.get(9)?,
        customer_id: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::{Conn, Result, SqliteStore};
    use crate::store::OutboxStore;

    /// A store on a new file (kept while the directory lives).
    pub(super) async fn store_in_a_file(synchronous: &str) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = SqliteStore::connect(&url, synchronous).await.unwrap();
        (dir, store)
    }

    fn insert(uuid: &'static str) -> impl FnOnce(&Conn) -> Result<()> {
        move |c| {
            c.execute(
                "INSERT INTO outbox (uuid, metric, next_attempt_at, created_at) VALUES (?1, 'opens', 0, 0)",
                [uuid],
            )?;
            c.execute(
                "INSERT INTO outbox_payloads (id, payload) VALUES (last_insert_rowid(), '{}')",
                [],
            )?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failing_piece_of_work_does_not_undo_the_rest_of_its_batch() {
        let (dir, store) = store_in_a_file("normal").await;
        let url = format!("sqlite://{}/t.db", dir.path().display());
        store.call(insert("a")).await.unwrap();
        // Sent together, these land in one batch: the duplicate fails alone.
        let (dup, b, c) = tokio::join!(
            store.call(insert("a")),
            store.call(insert("b")),
            store.call(insert("c"))
        );
        assert!(dup.is_err());
        assert!(b.is_ok() && c.is_ok());
        let reopened = SqliteStore::connect(&url, "normal").await.unwrap();
        assert_eq!(reopened.pending_events().await.unwrap().len(), 3);
    }

    async fn uuids(store: &SqliteStore) -> Vec<String> {
        store
            .call(|c| {
                let mut stmt = c.prepare("SELECT uuid FROM outbox ORDER BY uuid")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn work_failing_after_a_change_leaves_nothing_half_written_and_no_false_success() {
        let (_dir, store) = store_in_a_file("full").await;
        let half_written = |c: &Conn| -> Result<()> {
            insert("half")(c)?;
            Err(anyhow::anyhow!("failed after a change").into())
        };
        for round in 0..20 {
            let (a, b) = (format!("a{round}"), format!("b{round}"));
            let (a, b) = (a.leak() as &'static str, b.leak() as &'static str);
            let (before, failed, after) = tokio::join!(
                store.call(insert(a)),
                store.call(half_written),
                store.call(insert(b))
            );
            assert_eq!(failed.unwrap_err().to_string(), "failed after a change");
            let stored = uuids(&store).await;
            assert!(
                !stored.contains(&"half".to_owned()),
                "half-written work kept"
            );
            // Work before it in its batch is rolled back with it, and says so.
            assert_eq!(
                before.is_ok(),
                stored.contains(&a.to_owned()),
                "round {round}"
            );
            // Work after it goes on in a new transaction.
            assert!(after.is_ok() && stored.contains(&b.to_owned()));
        }
    }

    /// The outbox's own statements say `OR ROLLBACK` (no statement journal): one that fails
    /// ends the whole transaction in SQLite at once. Its batch's earlier work is answered with
    /// an error, not a false success, the counters agree with the rows, and the work after it
    /// commits in a new transaction. (Without the check that SQLite left the transaction, the
    /// earlier work would be answered as committed.)
    #[tokio::test]
    async fn an_outbox_statement_that_fails_rolls_back_its_batch_and_the_store_goes_on() {
        use crate::event::Metric;
        use crate::outbox::{Lane, Lanes};
        use crate::recording::port::NewEvent;
        let (_dir, store) = store_in_a_file("full").await;
        let queue = |uuid: &'static str| {
            move |c: &Conn| -> Result<()> {
                let new = NewEvent {
                    uuid,
                    metric: Metric::Opens,
                    external_id: None,
                    in_personal_broadcast: false,
                    withheld: false,
                    personal: (1, 1),
                };
                let lanes = Lanes::only(Lane::Pega);
                let payload = |_| Ok("{}".to_owned());
                super::outbox::enqueue(c, new, payload, super::Queue::Due, lanes)?;
                Ok(())
            }
        };
        store.call(queue("taken")).await.unwrap();
        for round in 0..20 {
            let (a, b) = (format!("a{round}"), format!("b{round}"));
            let (a, b) = (a.leak() as &'static str, b.leak() as &'static str);
            // The same uuid on the same lane: the insert's unique index refuses it.
            let (before, failed, after) = tokio::join!(
                store.call(queue(a)),
                store.call(queue("taken")),
                store.call(queue(b))
            );
            assert!(failed.is_err());
            let stored = uuids(&store).await;
            assert_eq!(
                before.is_ok(),
                stored.contains(&a.to_owned()),
                "round {round}: answered {before:?}"
            );
            assert!(after.is_ok() && stored.contains(&b.to_owned()));
            let counted = store.outbox_stats().await.unwrap().pending;
            assert_eq!(counted as usize, stored.len(), "round {round}");
        }
    }

    /// The oldest open event is each lane's first by id (migration 0012 dropped the index
    /// of open events by age), read through `outbox_open`.
    #[tokio::test]
    async fn the_oldest_open_event_is_found_through_each_lanes_first() {
        let (_dir, store) = store_in_a_file("normal").await;
        let now = crate::outbox::now_ms() / 1000;
        // Inserted oldest first, as the store does; the oldest of all is done.
        let rows = [
            ("d", "pega", "delivered", 900),
            ("k", "kafka", "pending", 500),
            ("p", "pega", "inflight", 300),
            ("q", "pega", "pending", 100),
        ];
        store
            .call(move |c| {
                for (uuid, sink, status, age) in rows {
                    c.execute(
                        "INSERT INTO outbox (uuid, metric, next_attempt_at, created_at, status, sink) VALUES (?1, 'opens', 0, ?2, ?3, ?4)",
                        rusqlite::params![uuid, now - age, status, sink],
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let age = store.outbox_stats().await.unwrap().oldest_pending_age_secs;
        assert!((500..510).contains(&age), "{age}");
        let plan = store
            .call(|c| {
                let sql = format!("EXPLAIN QUERY PLAN {}", super::outbox::OLDEST_OPEN);
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map(["pega"], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("\n"))
            })
            .await
            .unwrap();
        assert!(plan.contains("USING INDEX outbox_open"), "{plan}");
    }

    #[tokio::test]
    async fn a_panic_in_a_piece_of_work_fails_its_batch_and_the_store_goes_on() {
        let (_dir, store) = store_in_a_file("full").await;
        let panics = |c: &Conn| -> Result<()> {
            insert("half")(c)?;
            panic!("a bug in a piece of work")
        };
        let (before, panicked) = tokio::join!(store.call(insert("before")), store.call(panics));
        assert!(panicked.is_err());
        assert!(
            before.is_err(),
            "its change was rolled back: no false success"
        );
        store.call(insert("after")).await.unwrap();
        assert_eq!(uuids(&store).await, ["after"]);
    }

    #[test]
    fn answers_follow_the_flush_in_the_task_or_on_the_flush_thread() {
        use super::{Answers, Flusher};
        use std::sync::atomic::Ordering;
        // Every flush counts as quick, whatever the disk's speed: the switch to the thread is
        // made by hand below, not by timing a flush.
        const NEVER_SLOW: std::time::Duration = std::time::Duration::from_secs(3600);
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("t.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let flusher = Flusher::spawn(wal, NEVER_SLOW).unwrap();
        // Answers with the name of the thread that answered.
        let answered = |flusher: &Flusher| {
            let (tx, rx) = std::sync::mpsc::channel();
            let answers: Answers = vec![Box::new(move || {
                let thread = std::thread::current().name().map(str::to_owned);
                tx.send(thread).unwrap()
            })];
            flusher.after_commit(answers);
            rx.recv_timeout(std::time::Duration::from_secs(5))
        };
        let here = std::thread::current().name().map(str::to_owned);
        assert_eq!(answered(&flusher).unwrap(), here, "flushed in the task");
        flusher.inline.store(false, Ordering::Relaxed); // as after a slow flush
        assert_eq!(
            answered(&flusher).unwrap().as_deref(),
            Some("pegabridge-flush"),
            "flushed on the thread"
        );
        assert!(
            flusher.inline.load(Ordering::Relaxed),
            "a quick flush brings flushing back into the task"
        );
        // A flush that fails answers nobody: the callers see an error.
        let broken = Flusher::spawn(dir.path().to_owned(), NEVER_SLOW).unwrap(); // a directory
        assert!(answered(&broken).is_err());
        broken.inline.store(false, Ordering::Relaxed);
        assert!(answered(&broken).is_err());
    }

    #[tokio::test]
    async fn migrations_run_once_and_reopening_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        SqliteStore::connect(&url, "full")
            .await
            .unwrap()
            .call(insert("x"))
            .await
            .unwrap();
        let again = SqliteStore::connect(&url, "normal").await.unwrap();
        assert_eq!(again.pending_events().await.unwrap().len(), 1);
        assert!(SqliteStore::connect(&url, "sometimes").await.is_err());
    }
}
