//! Copying every key of one store into another, and the digest that proves both hold the same.
//!
//! Used by `opi-manager store migrate` (SQLite to etcd) and by backup and restore. Values are
//! copied byte for byte; revisions are not, since the target numbers its own (the manager only
//! compares a key's revision with the one it read from the same store).

use sha2::{Digest, Sha256};

use super::{KeyValue, Store, StoreError, Txn, TxnOutcome};

/// Keys written per transaction: below etcd's default limit of 128 operations (`--max-txn-ops`).
pub const BATCH: usize = 100;

/// What a copy wrote and found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Keys in the source, and in the target after the copy.
    pub keys: usize,
    /// Bytes of values copied.
    pub bytes: usize,
    /// [`digest`] of the keys, the same on both sides.
    pub digest: String,
}

/// Why a copy did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target holds keys and the copy was not forced.
    #[error(
        "target store {target} is not empty ({keys} keys, e.g. `{first}`); pass --force to replace \
         its content"
    )]
    TargetNotEmpty {
        /// The target store.
        target: String,
        /// How many keys it holds.
        keys: usize,
        /// One of them.
        first: String,
    },
    /// A key appeared in the target while copying: something else writes to it.
    #[error("key `{key}` appeared in target store {target} during the copy; stop every manager using it and retry")]
    Concurrent {
        /// The target store.
        target: String,
        /// The key.
        key: String,
    },
    /// After the copy, the target does not hold what the source does.
    #[error(
        "target store {target} does not match the source after the copy: {found_keys} keys with \
         digest {found} instead of {expected_keys} with {expected}"
    )]
    Mismatch {
        /// The target store.
        target: String,
        /// Keys expected.
        expected_keys: usize,
        /// Digest expected.
        expected: String,
        /// Keys found.
        found_keys: usize,
        /// Digest found.
        found: String,
    },
    /// Reading or writing a store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes `keys` into `target`, which must be empty unless `force` (then its keys are deleted
/// first), and checks that the target then holds exactly `keys`.
pub async fn write_all(
    keys: &[KeyValue],
    target: &dyn Store,
    force: bool,
) -> Result<Summary, CopyError> {
    let existing = target.list("").await?;
    if let Some(first) = existing.first() {
        if !force {
            return Err(CopyError::TargetNotEmpty {
                target: target.describe(),
                keys: existing.len(),
                first: first.key.clone(),
            });
        }
        clear(target, &existing).await?;
    }

    for batch in keys.chunks(BATCH) {
        let txn = batch.iter().fold(Txn::new(), |txn, kv| {
            txn.when_absent(&kv.key).put(&kv.key, kv.value.clone())
        });
        if let TxnOutcome::Conflict { key } = target.txn(txn).await? {
            return Err(CopyError::Concurrent {
                target: target.describe(),
                key,
            });
        }
    }
    verify(keys, target).await
}

/// Copies every key of `source` into `target` (see [`write_all`]), except those replicas
/// hold under their leases.
pub async fn copy_all(
    source: &dyn Store,
    target: &dyn Store,
    force: bool,
) -> Result<Summary, CopyError> {
    let keys = crate::replica::durable(source.list("").await?);
    write_all(&keys, target, force).await
}

/// Checks that `target` holds exactly `keys`, by count and digest.
pub async fn verify(keys: &[KeyValue], target: &dyn Store) -> Result<Summary, CopyError> {
    let expected = digest(keys);
    let found = target.list("").await?;
    let found_digest = digest(&found);
    if found.len() != keys.len() || found_digest != expected {
        return Err(CopyError::Mismatch {
            target: target.describe(),
            expected_keys: keys.len(),
            expected,
            found_keys: found.len(),
            found: found_digest,
        });
    }
    Ok(Summary {
        keys: keys.len(),
        bytes: keys.iter().map(|kv| kv.value.len()).sum(),
        digest: expected,
    })
}

/// `sha256:` and the hex SHA-256 of every key and value, in key order, each length-prefixed so
/// that no two different contents hash alike.
pub fn digest(keys: &[KeyValue]) -> String {
    let mut sorted: Vec<&KeyValue> = keys.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut hash = Sha256::new();
    for kv in sorted {
        hash.update((kv.key.len() as u64).to_be_bytes());
        hash.update(kv.key.as_bytes());
        hash.update((kv.value.len() as u64).to_be_bytes());
        hash.update(&kv.value);
    }
    format!(
        "sha256:{}",
        data_encoding::HEXLOWER.encode(&hash.finalize())
    )
}

/// Deletes `existing` from `target`, in batches.
async fn clear(target: &dyn Store, existing: &[KeyValue]) -> Result<(), StoreError> {
    for batch in existing.chunks(BATCH) {
        let txn = batch.iter().fold(Txn::new(), |txn, kv| txn.delete(&kv.key));
        target.txn(txn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::SqliteStore;

    fn sqlite(dir: &std::path::Path, name: &str) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&dir.join(name)).expect("open store"))
    }

    async fn fill(store: &dyn Store, count: usize) {
        for i in 0..count {
            let txn = Txn::new().put(format!("k/{i:04}"), format!("value {i}").into_bytes());
            store.txn(txn).await.expect("write");
        }
    }

    #[tokio::test]
    async fn copies_every_key_in_batches_and_verifies_the_digest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (source, target) = (sqlite(dir.path(), "a.db"), sqlite(dir.path(), "b.db"));
        fill(&*source, BATCH * 2 + 7).await;

        let summary = copy_all(&*source, &*target, false).await.expect("copy");
        assert_eq!(summary.keys, BATCH * 2 + 7);
        assert_eq!(
            summary.digest,
            digest(&target.list("").await.expect("list"))
        );
        assert_eq!(
            target.get("k/0003").await.expect("get").map(|kv| kv.value),
            Some(b"value 3".to_vec())
        );
    }

    #[tokio::test]
    async fn leaves_out_the_keys_replicas_hold_under_their_leases() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (source, target) = (sqlite(dir.path(), "a.db"), sqlite(dir.path(), "b.db"));
        fill(&*source, 2).await;
        let leased = Txn::new()
            .put("replicas/leader", b"a".to_vec())
            .put("replicas/sessions/a/n1", Vec::new());
        source.txn(leased).await.expect("write");

        let summary = copy_all(&*source, &*target, false).await.expect("copy");
        assert_eq!(summary.keys, 2);
        assert_eq!(target.get("replicas/leader").await.expect("get"), None);
    }

    #[tokio::test]
    async fn refuses_a_non_empty_target_unless_forced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (source, target) = (sqlite(dir.path(), "a.db"), sqlite(dir.path(), "b.db"));
        fill(&*source, 3).await;
        let stale = Txn::new().put("stale", b"x".to_vec());
        target.txn(stale).await.expect("write");

        let error = copy_all(&*source, &*target, false)
            .await
            .expect_err("not empty");
        assert!(
            error
                .to_string()
                .contains("not empty (1 keys, e.g. `stale`)"),
            "{error}"
        );

        let summary = copy_all(&*source, &*target, true)
            .await
            .expect("forced copy");
        assert_eq!(summary.keys, 3);
        assert_eq!(target.get("stale").await.expect("get"), None);
    }

    #[test]
    fn digest_depends_on_keys_and_values_not_on_order_or_revisions() {
        let kv = |key: &str, value: &[u8], revision| KeyValue {
            key: key.into(),
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
        };
        let a = [kv("a", b"1", 1), kv("b", b"2", 2)];
        let b = [kv("b", b"2", 9), kv("a", b"1", 7)];
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&[kv("a", b"12", 1), kv("b", b"", 2)]));
    }
}
