//! The SQLite store: one connection owned by a writer thread that commits the work waiting at
//! each moment in one transaction (group commit), each piece of work in its own savepoint.
//! Callers get their answer only after the commit is durable.
//!
//! With `synchronous = full`, durability is pipelined: the connection commits without waiting
//! for the disk (SQLite's `NORMAL`: the commit's WAL frames are written, not flushed), and a
//! second thread flushes the WAL file (`fdatasync`) before it answers the batch's callers.
//! Meanwhile the writer runs the next batch, so a flush overlaps work instead of stalling it,
//! and one flush covers every batch committed before it. A caller is never answered before
//! its commit is on disk: the same guarantee as SQLite's `FULL`, which flushes inside the
//! commit. (SQLite's own flushes, at checkpoints, are unchanged.)
//!
//! Why a thread and not an async driver: every statement through an async SQLite driver costs
//! two thread hand-offs, which dominated a trigger's cost (about 1 ms for its nine statements);
//! here a trigger costs one hand-off, and a batch one commit.

pub mod activities;
mod migrate;
pub mod outbox;
mod triggers;

use anyhow::Context;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::oneshot;

type Work = Box<dyn FnOnce(&Connection) -> Box<dyn FnOnce() + Send> + Send>;

/// Most pieces of work committed together.
const MAX_BATCH: usize = 256;

/// The store: a handle to the writer thread (cheap to clone).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    work: mpsc::Sender<Work>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://FILE` or
    /// `sqlite::memory:`), runs the migrations and starts the writer thread.
    pub async fn connect(url: &str, synchronous: &str) -> anyhow::Result<Self> {
        let flush = match synchronous {
            "full" => true,
            "normal" => false,
            other => anyhow::bail!("store.synchronous: `{other}` is not `normal` or `full`"),
        };
        let path = file_of(url)?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (work, queue) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("pegabridge-sqlite".into())
            .spawn(move || match open(&path) {
                Ok(conn) => {
                    let answer = match wal_of(&conn, flush) {
                        Ok(Some(wal)) => Answer::AfterFlush(Flusher::spawn(wal)),
                        Ok(None) => Answer::AtCommit,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    run(conn, queue, answer);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })?;
        ready_rx.await.context("the SQLite thread stopped")??;
        Ok(Self { work })
    }

    /// Runs `f` on the writer thread inside the current batch's transaction (in a savepoint:
    /// an error undoes only this work) and answers after the commit.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move || {
                let _ = tx.send(result);
            })
        });
        self.work
            .send(work)
            .map_err(|_| anyhow::anyhow!("the SQLite thread stopped"))?;
        rx.await.context("the SQLite batch failed to commit")?
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        self.call(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }

    /// The events waiting in the outbox, oldest first (for operators and tests).
    pub async fn pending_events(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT payload FROM outbox WHERE status = 'pending' ORDER BY id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|p| Ok(serde_json::from_str(&p?)?)).collect()
        })
        .await
    }
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
    // A 64 MiB page cache (the default is 2 MiB): the writer thread spent much of its time
    // re-reading pages. (Rarer checkpoints were tried too: no faster, and p99 latency x4.)
    // `synchronous = NORMAL`: commits do not flush; see the module's notes for who does.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -65536;",
    )?;
    migrate::run(&conn).context("running migrations")?;
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

/// The thread that flushes the WAL file and then answers the batches committed before.
struct Flusher {
    batches: mpsc::Sender<Answers>,
}

impl Flusher {
    fn spawn(wal: PathBuf) -> Self {
        let (batches, committed) = mpsc::channel::<Answers>();
        let thread = std::thread::Builder::new()
            .name("pegabridge-flush".into())
            .spawn(move || {
                while let Ok(first) = committed.recv() {
                    // Every batch committed until now is in the file: one flush for all.
                    let mut waiting = vec![first];
                    waiting.extend(committed.try_iter());
                    match flush(&wal) {
                        Ok(()) => waiting.into_iter().flatten().for_each(|answer| answer()),
                        // The answers are dropped unsent: callers see an error.
                        Err(e) => tracing::error!(error = %e, "flushing the SQLite WAL failed"),
                    }
                }
            });
        if let Err(e) = thread {
            // Without the thread the sender below fails and callers see an error.
            tracing::error!(error = %e, "cannot start the SQLite flush thread");
        }
        Self { batches }
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

/// The writer loop: take the work waiting now, run it in one transaction, commit, answer.
fn run(conn: Connection, queue: mpsc::Receiver<Work>, answer: Answer) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        if let Err(e) = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
        {
            tracing::error!(error = %e, "cannot begin a transaction");
            continue; // dropping the work answers its callers with an error
        }
        let answers: Answers = batch.into_iter().map(|w| w(&conn)).collect();
        match conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
        {
            Ok(_) => match &answer {
                Answer::AtCommit => answers.into_iter().for_each(|answer| answer()),
                // A failed send drops the answers: callers see an error.
                Answer::AfterFlush(f) => {
                    let _ = f.batches.send(answers);
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                let _ = conn.execute_batch("ROLLBACK");
                // The answers are dropped unsent: callers see an error, never a false success.
            }
        }
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    // Prepared once: these run for every piece of work.
    conn.prepare_cached("SAVEPOINT work")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE work")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO work")?.execute([])?;
            conn.prepare_cached("RELEASE work")?.execute([])?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SqliteStore;

    fn insert(uuid: &'static str) -> impl FnOnce(&rusqlite::Connection) -> anyhow::Result<()> {
        move |c| {
            c.execute(
                "INSERT INTO outbox (uuid, metric, payload, next_attempt_at, created_at) VALUES (?1, 'opens', '{}', 0, 0)",
                [uuid],
            )?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failing_piece_of_work_does_not_undo_the_rest_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = SqliteStore::connect(&url, "normal").await.unwrap();
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
