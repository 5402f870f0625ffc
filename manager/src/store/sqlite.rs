//! SQLite backend: one file in WAL mode with full sync, so a commit survives the process being
//! killed, and compare-and-swap transactions that stay correct when another process (such as
//! `opi-manager operator issue`) writes to the same file.
//!
//! Writes go through one writer thread that commits together every transaction queued while
//! the previous commit was syncing (group commit): each keeps its own compares, revision and
//! outcome, but a burst of them (a reconnection storm's session opens) costs one sync instead
//! of one each. Reads use a connection of their own, so they never wait for a sync.

mod schema;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, Row, TransactionBehavior};
use tokio::sync::oneshot;

use super::{Compare, KeyValue, Op, Revision, Store, StoreError, Txn, TxnOutcome};

/// Most transactions committed together by the writer thread.
const MAX_GROUP: usize = 256;

/// Columns selected for a [`KeyValue`], in the order [`row_to_kv`] reads them.
const KV_COLUMNS: &str = "key, value, create_revision, mod_revision";

/// Creates a key or replaces its value, keeping the revision that created it.
const UPSERT: &str = "INSERT INTO kv (key, value, create_revision, mod_revision) \
     VALUES (?1, ?2, ?3, ?3) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision";

/// The fleet store in an SQLite file.
///
/// Handles are cheap to share behind an `Arc`; each holds a connection for reads, run on
/// tokio's blocking pool one at a time, and a writer thread with a connection of its own.
pub struct SqliteStore {
    inner: Arc<Inner>,
    writer: mpsc::Sender<Queued>,
}

/// What the blocking reads of a [`SqliteStore`] need.
struct Inner {
    describe: String,
    conn: Mutex<Connection>,
    /// SQLite transactions the writer thread committed, each holding one or more of ours.
    commits: Arc<AtomicU64>,
}

/// A transaction waiting for the writer thread, with where its outcome goes.
struct Queued {
    txn: Txn,
    done: oneshot::Sender<rusqlite::Result<TxnOutcome>>,
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
        let write_conn = schema::open_connection(path)?;
        let read_conn = schema::open_connection(path)?;
        let describe = format!("sqlite:{}", path.display());
        let (writer, queue) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&commits);
        std::thread::Builder::new()
            .name("fleet-store-writer".into())
            .spawn(move || write_groups(write_conn, &queue, &counted))
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source: source.into(),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                describe,
                conn: Mutex::new(read_conn),
                commits,
            }),
            writer,
        })
    }

    /// How many SQLite transactions this handle's writes took so far: fewer than the
    /// transactions committed when several were grouped.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
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
        let failed = |source: rusqlite::Error| StoreError::Commit {
            store: self.describe(),
            first_key: first_key.clone(),
            source: source.into(),
        };
        let (done, outcome) = oneshot::channel();
        // The writer thread ends only once every handle is dropped, so both channels stay
        // open while `self` lives; a writer that panicked is reported as a failed commit.
        let queued = Queued { txn, done };
        if self.writer.send(queued).is_err() {
            return Err(failed(writer_gone()));
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(writer_gone()))
            .map_err(failed)
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

/// The writer thread: takes the next transaction, with every other one already queued (up to
/// [`MAX_GROUP`]), commits them together and answers each; ends when every handle is gone.
fn write_groups(mut conn: Connection, queue: &mpsc::Receiver<Queued>, commits: &AtomicU64) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        group.extend(queue.try_iter().take(MAX_GROUP - 1));
        let (txns, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|q| (q.txn, q.done)).unzip();
        let outcomes = match apply_group(&mut conn, &txns) {
            Ok(outcomes) => {
                commits.fetch_add(1, Ordering::Relaxed);
                outcomes
            }
            // Nothing of the group was committed: each transaction fails with the same cause.
            Err(error) => txns.iter().map(|_| Err(copy_error(&error))).collect(),
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that stopped waiting needs no answer; its commit stands.
            let _ = reply.send(outcome);
        }
    }
}

/// Applies `txns` in order in one SQLite transaction, each under a savepoint of its own, so
/// that each sees the ones before it, gets its own revision and conflicts or fails alone.
/// An error returned here means the whole group was rolled back.
fn apply_group(
    conn: &mut Connection,
    txns: &[Txn],
) -> rusqlite::Result<Vec<rusqlite::Result<TxnOutcome>>> {
    // IMMEDIATE takes the write lock before reading, so the compares and the revision below
    // see the latest commit of every connection, in this process or another.
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let start = read_revision(&tx)?;
    let mut current = start;
    let mut outcomes = Vec::with_capacity(txns.len());
    for txn in txns {
        let mut savepoint = tx.savepoint()?;
        let outcome = apply_txn(&savepoint, txn, current);
        match &outcome {
            Ok(TxnOutcome::Committed(revision)) if *revision > current => {
                savepoint.commit()?;
                current = *revision;
            }
            // A conflict wrote nothing; a failed statement is undone with what it began.
            // Releasing the rolled-back savepoint then ends it with nothing in it.
            _ => {
                savepoint.rollback()?;
                savepoint.commit()?;
            }
        }
        outcomes.push(outcome);
    }
    if current != start {
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'revision'",
            [revision_to_sql(current)?],
        )?;
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Checks the compares of one transaction and applies its ops at the revision after
/// `current`; tells the revision the store is at afterwards.
fn apply_txn(tx: &Connection, txn: &Txn, current: Revision) -> rusqlite::Result<TxnOutcome> {
    if let Some(key) = first_failed_compare(tx, &txn.compares)? {
        return Ok(TxnOutcome::Conflict { key });
    }
    let next = current + 1;
    let mut changed = false;
    for op in &txn.ops {
        changed |= apply_op(tx, op, next)?;
    }
    Ok(TxnOutcome::Committed(if changed { next } else { current }))
}

/// The error of a failed group, once for each of its transactions.
fn copy_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => failure(other.to_string()),
    }
}

/// The error of a transaction whose writer thread is gone.
fn writer_gone() -> rusqlite::Error {
    failure("the fleet store's writer thread stopped".into())
}

/// A generic SQLite failure carrying `message`.
fn failure(message: String) -> rusqlite::Error {
    let code = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR);
    rusqlite::Error::SqliteFailure(code, Some(message))
}

/// The key of the first compare that does not hold, if any.
fn first_failed_compare(tx: &Connection, compares: &[Compare]) -> rusqlite::Result<Option<String>> {
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
fn apply_op(tx: &Connection, op: &Op, revision: Revision) -> rusqlite::Result<bool> {
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
