//! SQLite backend: one file in WAL mode with full sync, so a commit survives the process being
//! killed, and compare-and-swap transactions that stay correct when another process (such as
//! `opi-manager operator issue`) writes to the same file.

mod schema;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, Row, Transaction, TransactionBehavior};

use super::{Compare, KeyValue, Op, Revision, Store, StoreError, Txn, TxnOutcome};

/// Columns selected for a [`KeyValue`], in the order [`row_to_kv`] reads them.
const KV_COLUMNS: &str = "key, value, create_revision, mod_revision";

/// Creates a key or replaces its value, keeping the revision that created it.
const UPSERT: &str = "INSERT INTO kv (key, value, create_revision, mod_revision) \
     VALUES (?1, ?2, ?3, ?3) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision";

/// The fleet store in an SQLite file.
///
/// Handles are cheap to share behind an `Arc`; each holds one connection and runs its calls on
/// tokio's blocking pool, one at a time.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// What the blocking calls of a [`SqliteStore`] need.
struct Inner {
    describe: String,
    conn: Mutex<Connection>,
}

/// Which keys a listing reads: a prefix, where to resume, how many, from which end.
struct Scan<'a> {
    prefix: &'a str,
    start_after: Option<&'a str>,
    limit: Option<usize>,
    from_last: bool,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (mode 0600) and its directory if missing, and
    /// brings its schema up to date. Blocks: call it from `spawn_blocking` in async code.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = schema::open_connection(path)?;
        let describe = format!("sqlite:{}", path.display());
        Ok(Self {
            inner: Arc::new(Inner {
                describe,
                conn: Mutex::new(conn),
            }),
        })
    }

    /// Runs `call` on the connection in tokio's blocking pool.
    async fn call<T, F>(&self, call: F) -> Result<rusqlite::Result<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || {
            // A panic while the lock was held left no transaction open: rusqlite rolls back
            // on drop, so the connection is still sound.
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            call(&mut conn)
        });
        match task.await {
            Ok(result) => Ok(result),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(source) => Err(StoreError::Interrupted {
                store: self.describe(),
                source,
            }),
        }
    }

    /// Runs a read, naming `subject` if it fails.
    async fn read<T, F>(&self, subject: String, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.call(call).await?.map_err(|source| StoreError::Read {
            store: self.describe(),
            subject,
            source: source.into(),
        })
    }

    /// Runs a listing.
    async fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StoreError> {
        let subject = format!("keys under `{}`", scan.prefix);
        let (sql, params) = scan.to_sql();
        self.read(subject, move |conn| {
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(rusqlite::params_from_iter(params), row_to_kv)?;
            rows.collect()
        })
        .await
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let (subject, owned) = (format!("key `{key}`"), key.to_owned());
        self.read(subject, move |conn| select_key(conn, &owned))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.scan(Scan::under(prefix)).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let scan = Scan::under(prefix).after(start_after).first(limit);
        self.scan(scan).await
    }

    async fn list_last(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let mut kvs = self.scan(Scan::under(prefix).last(limit)).await?;
        kvs.reverse();
        Ok(kvs)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        if let Some(key) = txn.duplicate_key() {
            let key = key.to_owned();
            return Err(StoreError::DuplicateKey { key });
        }

        let first_key = txn.first_key().to_owned();
        let applied = self.call(move |conn| apply_txn(conn, &txn)).await?;
        applied.map_err(|source| StoreError::Commit {
            store: self.describe(),
            first_key,
            source: source.into(),
        })
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let subject = "the revision".to_owned();
        self.read(subject, |conn| read_revision(conn)).await
    }
}

impl<'a> Scan<'a> {
    /// Every key starting with `prefix`, in key order.
    fn under(prefix: &'a str) -> Self {
        Self {
            prefix,
            start_after: None,
            limit: None,
            from_last: false,
        }
    }

    /// Only keys after `start_after`, if given.
    fn after(self, start_after: Option<&'a str>) -> Self {
        Self {
            start_after,
            ..self
        }
    }

    /// At most `limit` keys from the start.
    fn first(self, limit: usize) -> Self {
        let limit = Some(limit);
        Self { limit, ..self }
    }

    /// At most `limit` keys from the end, last key first.
    fn last(self, limit: usize) -> Self {
        let limit = Some(limit);
        Self {
            limit,
            from_last: true,
            ..self
        }
    }

    /// The query and its parameters: a key range, so that `%` and `_` in keys mean nothing
    /// special and the primary key index bounds the scan.
    fn to_sql(&self) -> (String, Vec<rusqlite::types::Value>) {
        let (lower_op, lower) = match self.start_after {
            Some(after) if after >= self.prefix => (">", after),
            _ => (">=", self.prefix),
        };
        let mut range = format!("key {lower_op} ?1");
        let mut params = vec![lower.to_owned().into()];
        if let Some(end) = prefix_end(self.prefix) {
            range.push_str(" AND key < ?2");
            params.push(end.into());
        }

        // A negative limit means none to SQLite.
        let limit = self
            .limit
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        params.push(limit.into());
        let order = if self.from_last { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {KV_COLUMNS} FROM kv WHERE {range} ORDER BY key {order} LIMIT ?{}",
            params.len()
        );
        (sql, params)
    }
}

/// Checks the compares, applies the ops and bumps the revision, in one SQLite transaction.
fn apply_txn(conn: &mut Connection, txn: &Txn) -> rusqlite::Result<TxnOutcome> {
    // IMMEDIATE takes the write lock before reading, so the compares and the revision below
    // see the latest commit of every connection, in this process or another.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(key) = first_failed_compare(&tx, &txn.compares)? {
        return Ok(TxnOutcome::Conflict { key });
    }

    let current = read_revision(&tx)?;
    let next = current + 1;
    let mut changed = false;
    for op in &txn.ops {
        changed |= apply_op(&tx, op, next)?;
    }
    if !changed {
        return Ok(TxnOutcome::Committed(current));
    }

    tx.execute(
        "UPDATE meta SET value = ?1 WHERE name = 'revision'",
        [revision_to_sql(next)?],
    )?;
    tx.commit()?;
    Ok(TxnOutcome::Committed(next))
}

/// The key of the first compare that does not hold, if any.
fn first_failed_compare(
    tx: &Transaction<'_>,
    compares: &[Compare],
) -> rusqlite::Result<Option<String>> {
    for compare in compares {
        let Compare::ModRevision { key, revision } = compare;
        let current = select_key(tx, key)?.map_or(0, |kv| kv.mod_revision);
        if current != *revision {
            return Ok(Some(key.clone()));
        }
    }
    Ok(None)
}

/// Applies one op at `revision`; tells whether it changed anything.
fn apply_op(tx: &Transaction<'_>, op: &Op, revision: Revision) -> rusqlite::Result<bool> {
    match op {
        Op::Put { key, value } => {
            let mut upsert = tx.prepare_cached(UPSERT)?;
            upsert.execute(params![key, value, revision_to_sql(revision)?])?;
            Ok(true)
        }
        Op::Delete { key } => {
            let mut delete = tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
            Ok(delete.execute([key])? > 0)
        }
    }
}

fn select_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    let sql = format!("SELECT {KV_COLUMNS} FROM kv WHERE key = ?1");
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query_map([key], row_to_kv)?;
    rows.next().transpose()
}

fn read_revision(conn: &Connection) -> rusqlite::Result<Revision> {
    conn.query_row(
        "SELECT value FROM meta WHERE name = 'revision'",
        [],
        |row| revision_at(row, 0),
    )
}

fn row_to_kv(row: &Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: revision_at(row, 2)?,
        mod_revision: revision_at(row, 3)?,
    })
}

/// Reads a revision column; SQLite integers are signed, revisions are not.
fn revision_at(row: &Row<'_>, column: usize) -> rusqlite::Result<Revision> {
    let stored: i64 = row.get(column)?;
    Revision::try_from(stored).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(column, stored))
}

fn revision_to_sql(revision: Revision) -> rusqlite::Result<i64> {
    i64::try_from(revision).map_err(|error| rusqlite::Error::ToSqlConversionFailure(error.into()))
}

/// The exclusive upper bound of the keys starting with `prefix`, or `None` when nothing bounds
/// them (an empty prefix, or one made only of U+10FFFF).
///
/// SQLite compares text bytewise and UTF-8 byte order is code point order, so bumping the last
/// char that can be bumped (and dropping those after it) gives: `key` starts with `prefix` if
/// and only if `prefix <= key < end`.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut end = prefix.to_owned();
    while let Some(last) = end.pop() {
        if let Some(next) = next_char(last) {
            end.push(next);
            return Some(end);
        }
    }
    None
}

/// The next Unicode scalar value, skipping the surrogate range.
fn next_char(c: char) -> Option<char> {
    match c {
        '\u{D7FF}' => Some('\u{E000}'),
        char::MAX => None,
        c => char::from_u32(u32::from(c) + 1),
    }
}
