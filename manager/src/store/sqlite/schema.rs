//! Opening the SQLite file: its directory and mode, the connection settings that make commits
//! durable and shareable between processes, and the schema migrations.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use tracing::{info, warn};

use crate::store::StoreError;

/// How long a call waits for another connection, possibly in another process, to release the
/// write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Mode of the database file: it holds token hashes. SQLite gives its `-wal` and `-shm` files
/// the same mode.
const FILE_MODE: u32 = 0o600;

/// Mode of a data directory created for the database.
const DIR_MODE: u32 = 0o700;

/// Schema migrations: applying entry `i` takes the schema from version `i` to `i + 1`. The
/// `meta` table itself exists before any migration, as it records the version.
const MIGRATIONS: &[&str] = &[
    // 1: keys with their revisions, and the store revision.
    "CREATE TABLE kv (
         key TEXT PRIMARY KEY,
         value BLOB NOT NULL,
         create_revision INTEGER NOT NULL,
         mod_revision INTEGER NOT NULL
     );
     INSERT INTO meta (name, value) VALUES ('revision', 0);",
];

/// The schema version this binary writes: the number of migrations.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating if needed) the database at `path`, configured and migrated.
pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    create_parent(path)?;
    restrict_file(path)?;
    let mut conn = connect(path).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source: source.into(),
    })?;

    migrate(&mut conn, path)?;
    info!(path = %path.display(), schema_version = SCHEMA_VERSION, "fleet store opened");
    Ok(conn)
}

/// Creates the directory holding `path`, owner-only, if it is missing.
fn create_parent(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut builder = fs::DirBuilder::new();
    builder
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

/// Creates the database file with mode 0600 before SQLite opens it, so it is never readable
/// by others, and tightens the mode of an existing file.
fn restrict_file(path: &Path) -> Result<(), StoreError> {
    let failed = |source| StoreError::Restrict {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE);
    let file = options.open(path).map_err(failed)?;

    let mode = file.metadata().map_err(failed)?.permissions().mode() & 0o777;
    if mode != FILE_MODE {
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(failed)?;
    }
    Ok(())
}

/// Opens the connection: WAL so readers never block the writer, full sync so a commit is on
/// disk before it returns, and a busy timeout so concurrent writers queue instead of failing.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        let path = path.display();
        warn!(%path, %mode, "fleet store cannot use WAL; readers will wait for writers");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// Applies the migrations the file lacks, in one transaction so that two processes opening a
/// new file do not both migrate it.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let failed = |version: i64| {
        move |source: rusqlite::Error| StoreError::Migrate {
            path: path.to_owned(),
            version,
            source: source.into(),
        }
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed(0))?;
    let found = schema_version(&tx).map_err(failed(0))?;
    if found > SCHEMA_VERSION {
        let (path, known) = (path.to_owned(), SCHEMA_VERSION);
        return Err(StoreError::SchemaTooNew { path, found, known });
    }

    for version in found + 1..=SCHEMA_VERSION {
        apply_migration(&tx, version).map_err(failed(version))?;
        info!(path = %path.display(), version, "fleet store schema migrated");
    }
    tx.commit().map_err(failed(SCHEMA_VERSION))
}

/// The schema version recorded in the file, 0 for a new file.
fn schema_version(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    tx.execute_batch("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)")?;
    let sql = "SELECT value FROM meta WHERE name = 'schema_version'";
    let found: i64 = tx
        .query_row(sql, [], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    if found < 0 {
        return Err(rusqlite::Error::IntegralValueOutOfRange(0, found));
    }
    Ok(found)
}

/// Runs the migration that brings the schema to `version` and records it.
fn apply_migration(tx: &Transaction<'_>, version: i64) -> rusqlite::Result<()> {
    let index = usize::try_from(version - 1).expect("migration versions start at 1");
    tx.execute_batch(MIGRATIONS[index])?;
    tx.execute(
        "INSERT INTO meta (name, value) VALUES ('schema_version', ?1) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [version],
    )?;
    Ok(())
}
