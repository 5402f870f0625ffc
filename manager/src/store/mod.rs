//! Fleet store: the manager's durable key-value state, with store-wide revisions.
//!
//! The model follows etcd's v3 KV so that an etcd backend maps onto it directly: keys are
//! strings, values opaque bytes (the manager writes JSON), every transaction that changes
//! something gets the next store-wide revision, and each key records the revision that created
//! it and the one that last changed it. Every update is a compare-and-swap [`Txn`].
//!
//! The manager answers queries from memory; the store is there so that nothing committed is
//! lost, even when the process is killed.

pub mod conformance;
pub mod copy;
pub mod etcd;
mod measured;
mod sqlite;
mod typed;

use std::path::Path;
use std::sync::Arc;

pub use etcd::EtcdStore;
pub use measured::{MeasuredStore, Operation, StoreMetrics};
pub use sqlite::SqliteStore;
pub use typed::{decode, get_json, list_json, to_json, Versioned};

/// A store-wide revision: 0 for an empty store, one more for every transaction that changes
/// at least one key.
pub type Revision = u64;

/// The URL scheme of the embedded SQLite backend.
const SQLITE_SCHEME: &str = "sqlite:";

/// Most compares, and most ops, in one transaction the manager builds. etcd refuses a
/// transaction with more than 128 of either (its default `--max-txn-ops`), and the store
/// decorators add a compare and a put of their own (the audit chain head, the leader fence).
pub const MAX_TXN_OPS: usize = 124;

/// A key, its value and the revisions that created it and last modified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, unique in the store.
    pub key: String,
    /// The value, opaque to the store.
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (since it was last deleted).
    pub create_revision: Revision,
    /// Revision of the transaction that last wrote the key.
    pub mod_revision: Revision,
}

/// A condition a transaction checks before applying its operations.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key's `mod_revision` equals `revision`; 0 means the key must not exist.
    ModRevision {
        /// The key whose revision is checked.
        key: String,
        /// The expected `mod_revision`, or 0 for "absent".
        revision: Revision,
    },
}

/// A write applied by a transaction whose compares all hold.
#[derive(Clone, Debug)]
pub enum Op {
    /// Creates the key or replaces its value.
    Put {
        /// The key written.
        key: String,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Removes the key; removing an absent key changes nothing.
    Delete {
        /// The key removed.
        key: String,
    },
}

/// An atomic compare-and-swap: every compare must hold, then every op is applied.
///
/// A transaction may write each key at most once.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    /// Conditions checked first, in order.
    pub compares: Vec<Compare>,
    /// Writes applied, in order, when every compare holds.
    pub ops: Vec<Op>,
}

/// What became of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held and the ops were applied; the store is now at this revision.
    Committed(Revision),
    /// The compare on `key` (the first one that failed) did not hold; nothing was written.
    Conflict {
        /// The key of the first failed compare.
        key: String,
    },
}

/// Durable storage for the fleet state.
///
/// Every backend must pass [`conformance::run_all`].
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Human-readable description, e.g. `sqlite:/var/lib/opi/fleet.db`.
    fn describe(&self) -> String;

    /// The key and its revisions, or `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// At most `limit` keys starting with `prefix`, in key order, after `start_after` if given.
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// The last `limit` keys starting with `prefix` (for newest-first audit listings),
    /// returned in key order.
    async fn list_last(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies all ops atomically if every compare holds.
    ///
    /// A committed transaction that changes at least one key moves the store to the next
    /// revision, which every key it writes carries; one that changes nothing (no ops, or only
    /// deletes of absent keys) returns the current revision. A transaction writing a key twice
    /// is refused with [`StoreError::DuplicateKey`] before anything is checked.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// Current store revision (0 for an empty store).
    async fn revision(&self) -> Result<Revision, StoreError>;
}

/// A backend's own failure, kept as the source of a [`StoreError`].
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the fleet store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL names no backend this binary has.
    #[error(
        "unsupported fleet store url `{0}`; use `sqlite:PATH`, `etcd://HOST:PORT[,HOST:PORT…]` or \
         `etcds://HOST:PORT[,…]?ca=FILE[&cert=FILE&key=FILE]`"
    )]
    UnsupportedUrl(String),

    /// The store URL names a backend but its options are wrong.
    #[error("invalid fleet store url `{url}`")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        #[source]
        source: BackendError,
    },

    /// No server of the store could be reached; nothing was read or written.
    #[error("fleet store {store} is unavailable")]
    Unavailable {
        /// The store, as [`Store::describe`] puts it.
        store: String,
        /// What happened at each server tried.
        #[source]
        source: BackendError,
    },

    /// The directory that holds the database could not be created.
    #[error("cannot create fleet store directory {path}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },

    /// The database file could not be created or restricted to its owner.
    #[error("cannot restrict fleet store file {path} to mode 0600")]
    Restrict {
        /// The database file.
        path: std::path::PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },

    /// The database could not be opened or configured.
    #[error("cannot open fleet store {path}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// Why it failed.
        #[source]
        source: BackendError,
    },

    /// The database was written by a newer opi-manager.
    #[error(
        "fleet store {path} has schema version {found}, newer than the {known} this opi-manager \
         knows; run a newer opi-manager"
    )]
    SchemaTooNew {
        /// The database file.
        path: std::path::PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this binary knows.
        known: i64,
    },

    /// The database schema could not be brought up to date.
    #[error("cannot migrate fleet store {path} to schema version {version}")]
    Migrate {
        /// The database file.
        path: std::path::PathBuf,
        /// The schema version being applied.
        version: i64,
        /// Why it failed.
        #[source]
        source: BackendError,
    },

    /// Reading keys or the revision failed.
    #[error("cannot read {subject} from fleet store {store}")]
    Read {
        /// The store, as [`Store::describe`] puts it.
        store: String,
        /// What was being read, e.g. "key `nodes/a`".
        subject: String,
        /// Why it failed.
        #[source]
        source: BackendError,
    },

    /// A transaction could not be applied (a compare that does not hold is not an error).
    #[error("cannot commit a transaction writing `{first_key}` to fleet store {store}")]
    Commit {
        /// The store, as [`Store::describe`] puts it.
        store: String,
        /// The first key the transaction compares or writes.
        first_key: String,
        /// Why it failed.
        #[source]
        source: BackendError,
    },

    /// A transaction writes the same key twice, which etcd refuses too.
    #[error("transaction writes key `{key}` twice; write each key once per transaction")]
    DuplicateKey {
        /// The key written twice.
        key: String,
    },

    /// A stored value does not decode as the type expected at its key.
    #[error("value at key `{key}` in fleet store {store} is corrupt")]
    Corrupt {
        /// The store, as [`Store::describe`] puts it.
        store: String,
        /// The key holding the value.
        key: String,
        /// Why it does not decode.
        #[source]
        source: BackendError,
    },

    /// A leader's write was refused because this replica no longer leads: the leader key it
    /// wrote at `revision` expired or another replica holds it. Nothing was written.
    #[error(
        "replica {replica} no longer leads (its leader key of revision {revision} is gone from \
         fleet store {store}); the leader's write was not applied"
    )]
    Fenced {
        /// The store, as [`Store::describe`] puts it.
        store: String,
        /// The replica that tried to write.
        replica: String,
        /// The create revision of the leader key it held.
        revision: Revision,
    },

    /// The blocking task running a store call did not finish (runtime shutting down).
    #[error("fleet store {store} call did not finish")]
    Interrupted {
        /// The store, as [`Store::describe`] puts it.
        store: String,
        /// Why it stopped.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Txn {
    /// An empty transaction.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` not to exist.
    #[must_use = "a Txn does nothing until passed to Store::txn"]
    pub fn when_absent(self, key: impl Into<String>) -> Self {
        self.when_revision(key, 0)
    }

    /// Requires `key` to have been last written at `revision` (0: not to exist).
    #[must_use = "a Txn does nothing until passed to Store::txn"]
    pub fn when_revision(mut self, key: impl Into<String>, revision: Revision) -> Self {
        self.compares.push(Compare::ModRevision {
            key: key.into(),
            revision,
        });
        self
    }

    /// Writes `value` at `key`.
    #[must_use = "a Txn does nothing until passed to Store::txn"]
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value,
        });
        self
    }

    /// Removes `key`.
    #[must_use = "a Txn does nothing until passed to Store::txn"]
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    /// The first key written twice, if any: such a transaction is refused.
    pub fn duplicate_key(&self) -> Option<&str> {
        let mut seen = std::collections::HashSet::new();
        self.ops.iter().map(Op::key).find(|key| !seen.insert(*key))
    }

    /// Whether every backend takes this transaction: at most [`MAX_TXN_OPS`] compares and
    /// as many ops.
    pub fn within_limit(&self) -> bool {
        self.compares.len() <= MAX_TXN_OPS && self.ops.len() <= MAX_TXN_OPS
    }

    /// The first key this transaction compares or writes, to name it in errors.
    pub fn first_key(&self) -> &str {
        let compared = self.compares.iter().map(Compare::key);
        compared
            .chain(self.ops.iter().map(Op::key))
            .next()
            .unwrap_or("")
    }
}

impl Compare {
    /// The key this compare checks.
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision { key, .. } => key,
        }
    }
}

impl Op {
    /// The key this op writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// Opens a store from a URL: `sqlite:PATH`, the file being created if missing, or
/// `etcd://…` / `etcds://…` (see [`etcd::EtcdConfig`]), connected on first use.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with(etcd::SCHEME) || url.starts_with(etcd::TLS_SCHEME) {
        return Ok(Arc::new(EtcdStore::open(url)?));
    }
    let path = match url.strip_prefix(SQLITE_SCHEME) {
        Some(path) if !path.is_empty() => Path::new(path).to_path_buf(),
        _ => return Err(StoreError::UnsupportedUrl(url.to_owned())),
    };

    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .map_err(|source| StoreError::Interrupted {
            store: url.to_owned(),
            source,
        })??;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_builder_keeps_compares_and_ops_in_order() {
        let txn = Txn::new()
            .when_absent("a")
            .when_revision("b", 7)
            .put("a", vec![1])
            .delete("b");

        assert_eq!(
            txn.compares.iter().map(Compare::key).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(matches!(
            txn.compares[1],
            Compare::ModRevision { revision: 7, .. }
        ));
        assert_eq!(txn.ops.iter().map(Op::key).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(txn.first_key(), "a");
    }

    #[test]
    fn duplicate_key_finds_a_key_written_twice() {
        assert_eq!(
            Txn::new().put("a", vec![]).delete("b").duplicate_key(),
            None
        );
        assert_eq!(
            Txn::new().put("a", vec![]).delete("a").duplicate_key(),
            Some("a")
        );
    }

    #[tokio::test]
    async fn unsupported_url_is_refused_clearly() {
        let error = open("mysql://x")
            .await
            .err()
            .expect("mysql is not a backend");
        assert!(matches!(&error, StoreError::UnsupportedUrl(url) if url == "mysql://x"));
        assert!(error.to_string().contains("`sqlite:PATH`"), "{error}");
        assert!(error.to_string().contains("`etcd://"), "{error}");
    }

    #[tokio::test]
    async fn bad_etcd_url_is_refused_naming_the_problem() {
        let error = open("etcd://h1").await.err().expect("no port");
        assert!(matches!(&error, StoreError::BadUrl { url, .. } if url == "etcd://h1"));
        let cause = std::error::Error::source(&error)
            .expect("cause")
            .to_string();
        assert!(
            cause.contains("`h1` in `etcd://h1` is not HOST:PORT"),
            "{cause}"
        );
    }

    #[tokio::test]
    async fn sqlite_url_opens_a_new_store_in_a_new_directory() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let url = format!("sqlite:{}", dir.path().join("new/fleet.db").display());

        let store = open(&url).await.expect("open store");
        assert_eq!(store.describe(), url);
        assert_eq!(store.revision().await.expect("revision"), 0);
    }

    #[tokio::test]
    async fn sqlite_url_without_a_path_is_refused() {
        let error = open("sqlite:")
            .await
            .err()
            .expect("an empty path must be refused");
        assert!(matches!(error, StoreError::UnsupportedUrl(_)), "{error}");
    }
}
