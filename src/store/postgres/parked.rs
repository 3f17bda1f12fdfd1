//! One connection kept out of the pool between pieces of work. sqlx pings a connection each
//! time it goes back to its pool (a round trip it does not let us turn off), and the store
//! takes one from the pool for every transaction: at a steady rate, a round trip for every
//! group of two or three requests. A connection whose work ended cleanly (committed, nothing
//! unread) is kept here instead, for the next piece of work, for at most [`PARK_FOR`]; then
//! it goes back to the pool. It is not kept when the pool could lend no other at once (none
//! idle, and as many open as it may have): someone may be waiting for it. Work that finds the
//! pool empty while it is parked waits at most [`PARK_FOR`] for it. A piece of work that fails or is cancelled drops its connection as
//! before: the pool pings it, and closes it if it is broken.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest a connection stays parked unused.
pub const PARK_FOR: Duration = Duration::from_millis(20);

/// The parked connection, if any, and how many were parked so far (to tell them apart).
#[derive(Debug, Default, Clone)]
pub struct Parked(Arc<Slot>);

#[derive(Debug, Default)]
struct Slot {
    conn: Mutex<Option<(PoolConnection<Postgres>, u64)>>,
    parked: AtomicU64,
}

impl Parked {
    /// A connection for a piece of work: the parked one, else one from the pool.
    pub async fn take(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let parked = self.lock().take();
        match parked {
            Some((conn, _)) => Ok(conn),
            None => pool.acquire().await,
        }
    }

    /// Keeps `conn`, whose work ended cleanly, for the next piece of work (see the module's
    /// notes); gives it back to the pool when another is parked or the pool could lend no
    /// other at once.
    pub fn park(&self, conn: PoolConnection<Postgres>, pool: &PgPool) {
        // Parked only while the pool can still lend another at once, idle or new: nobody
        // waits for this one.
        let max = pool.options().get_max_connections();
        if pool.num_idle() == 0 && pool.size() >= max {
            return; // dropped: back to the pool
        }
        let mut slot = self.lock();
        if slot.is_some() {
            return;
        }
        let n = self.0.parked.fetch_add(1, Ordering::Relaxed);
        *slot = Some((conn, n));
        drop(slot);
        let parked = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PARK_FOR).await;
            let mut slot = parked.lock();
            let stale = slot.take_if(|(_, m)| *m == n);
            drop(slot);
            drop(stale); // back to the pool
        });
    }

    /// Whether a connection is parked now.
    #[cfg(test)]
    pub fn holds(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(PoolConnection<Postgres>, u64)>> {
        self.0.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}
