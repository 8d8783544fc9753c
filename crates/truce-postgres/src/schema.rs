//! The database schema, as numbered migrations embedded in the binary.
//!
//! Every node applies the missing migrations when it starts, each in its own
//! transaction, under a session advisory lock, so several nodes starting at once
//! apply each migration exactly once (the others wait, then find nothing to do).
//! A database whose schema is newer than this binary knows is refused with a
//! message saying so: an older node must never write rows it does not understand.
//!
//! The tables:
//! - `truce_commit`: one row, the store-wide revision and the newest conflict
//!   event's position. Every write transaction locks it first (`FOR UPDATE`), which
//!   serialises writers across nodes: revisions are gap-free and in commit order.
//! - `truce_versions`: every version, keyed by `(revision, idx)`; also the change
//!   feed. Bodies are the document's bytes exactly as written.
//! - `truce_heads`: each resource's newest version, by `(collection, id)`.
//! - `truce_side`: side records (conflict records, events, settings, ...), by
//!   `(tbl, key)`, as the rules encode them.
//! - `truce_meta`: counters (how far the change feed is compacted).
//!
//! Text keys use the "C" collation, so ids sort by bytes as on the embedded store.

use tokio_postgres::Client;

use crate::error::PostgresError;

/// The key of the advisory lock migrations run under ("truce" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_7275_6365;

/// The migrations, in order; a migration's number is its index plus one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE truce_commit (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    revision bigint NOT NULL,
    events bigint NOT NULL
);
INSERT INTO truce_commit (revision, events) VALUES (0, 0);
CREATE TABLE truce_versions (
    revision bigint NOT NULL,
    idx integer NOT NULL,
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    number bigint NOT NULL,
    at_ms bigint NOT NULL,
    op smallint NOT NULL,
    by_principal text NOT NULL,
    body bytea,
    stripped boolean NOT NULL DEFAULT false,
    PRIMARY KEY (revision, idx)
);
CREATE INDEX truce_versions_by_resource ON truce_versions (collection, id, number);
CREATE TABLE truce_heads (
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    revision bigint NOT NULL,
    idx integer NOT NULL,
    number bigint NOT NULL,
    tombstone boolean NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE TABLE truce_side (
    tbl smallint NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);
CREATE TABLE truce_meta (
    name text PRIMARY KEY,
    value bigint NOT NULL
);
"#,
    r#"
ALTER TABLE truce_commit ADD COLUMN locks bigint NOT NULL DEFAULT 0
"#,
];

/// The newest schema this binary knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the database's schema up to [`SCHEMA_VERSION`]; returns the version it
/// found (the caller logs the change, after the server announced its address).
/// Safe to run from several nodes at once.
pub async fn migrate(client: &Client) -> Result<i32, PostgresError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_missing(client).await;
    // Released on every path; a lost connection releases it too.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let found = result?;
    unlocked?;
    Ok(found)
}

async fn apply_missing(client: &Client) -> Result<i32, PostgresError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS truce_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM truce_schema", &[])
        .await?;
    let found: i32 = row.get(0);
    if found > SCHEMA_VERSION {
        return Err(PostgresError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i32 + 1;
        let sql = format!(
            "BEGIN; {migration}; INSERT INTO truce_schema (version) VALUES ({version}); COMMIT;"
        );
        if let Err(error) = client.batch_execute(&sql).await {
            // The failed transaction is rolled back when the connection goes or by
            // this statement; nothing of the migration remains.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(error.into());
        }
    }
    Ok(found)
}
