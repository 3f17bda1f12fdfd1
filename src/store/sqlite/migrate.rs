//! Schema migrations for SQLite, tracked in `PRAGMA user_version`: migration N (1-based) runs
//! once, in a transaction with the version bump.

use rusqlite::Connection;

pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_initial.sql"),
    include_str!("../../../migrations/sqlite/0002_activities_delivery.sql"),
    include_str!("../../../migrations/sqlite/0003_claim_indexes.sql"),
    include_str!("../../../migrations/sqlite/0004_outbox_payloads.sql"),
    include_str!("../../../migrations/sqlite/0005_retention.sql"),
    include_str!("../../../migrations/sqlite/0006_one_model.sql"),
    include_str!("../../../migrations/sqlite/0007_sends.sql"),
    include_str!("../../../migrations/sqlite/0008_first_open.sql"),
    include_str!("../../../migrations/sqlite/0009_sends_status.sql"),
    include_str!("../../../migrations/sqlite/0010_sinks.sql"),
    include_str!("../../../migrations/sqlite/0011_journeys.sql"),
    include_str!("../../../migrations/sqlite/0012_open_age_by_id.sql"),
    include_str!("../../../migrations/sqlite/0013_delivering_attempt.sql"),
];

/// Applies the migrations this database has not seen.
pub fn run(conn: &Connection) -> anyhow::Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "the database is at schema version {current}, newer than this pegabridge ({})",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}
