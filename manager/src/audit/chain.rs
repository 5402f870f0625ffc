//! A store decorator that chains audit entries as they are committed: each audit entry a
//! transaction writes gets the next sequence number and the hash of the entry before it
//! ([`opi_pki::chain`]), and the chain head (`meta/audit-head`) moves in the same transaction
//! under a compare on its revision, so that two writers (`serve` and an `opi-manager operator
//! issue` beside it) never fork the chain. Every committed entry is then logged once, as a
//! structured line (target `opi_audit`) a SIEM can ingest.

use std::sync::Arc;

use opi_pki::chain::GENESIS;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::info;

use crate::records::{rfc3339, AuditRecord, AUDIT};
use crate::store::{to_json, KeyValue, Op, Revision, Store, StoreError, Txn, TxnOutcome};

/// Key of the chain head.
pub const HEAD_KEY: &str = "meta/audit-head";
/// Times a transaction is retried because another writer moved the head meanwhile.
const HEAD_ATTEMPTS: usize = 16;

/// The last chained entry, as stored at [`HEAD_KEY`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// A store whose audit entries are chained on commit.
pub struct ChainedStore {
    inner: Arc<dyn Store>,
    /// The head and the revision it was written at, once read; `None` after a conflict.
    head: Mutex<Option<(Head, Revision)>>,
}

impl ChainedStore {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Self {
            inner,
            head: Mutex::new(None),
        })
    }

    async fn read_head(&self) -> Result<(Head, Revision), StoreError> {
        match self.inner.get(HEAD_KEY).await? {
            None => Ok((
                Head {
                    seq: 0,
                    hash: GENESIS.into(),
                },
                0,
            )),
            Some(kv) => {
                let head =
                    serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt {
                        store: self.inner.describe(),
                        key: HEAD_KEY.into(),
                        source: source.into(),
                    })?;
                Ok((head, kv.mod_revision))
            }
        }
    }

    async fn chained_txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let mut cached = self.head.lock().await;
        for _ in 0..HEAD_ATTEMPTS {
            let (head, revision) = match cached.take() {
                Some(known) => known,
                None => self.read_head().await?,
            };
            let (chained, entries, new_head) = chain(txn.clone(), &head, revision);
            match self.inner.txn(chained).await? {
                TxnOutcome::Committed(at) => {
                    *cached = Some((new_head, at));
                    entries.iter().for_each(log_entry);
                    return Ok(TxnOutcome::Committed(at));
                }
                TxnOutcome::Conflict { key } if key == HEAD_KEY => continue,
                conflict => {
                    *cached = Some((head, revision));
                    return Ok(conflict);
                }
            }
        }
        Ok(TxnOutcome::Conflict {
            key: HEAD_KEY.into(),
        })
    }
}

/// Whether `op` writes an audit entry.
fn is_audit_put(op: &Op) -> bool {
    matches!(op, Op::Put { key, .. } if key.starts_with(AUDIT))
}

/// `txn` with its audit entries numbered and hashed from `head`, the head moved, and a compare
/// on the head's revision; also the entries and the new head.
fn chain(mut txn: Txn, head: &Head, revision: Revision) -> (Txn, Vec<AuditRecord>, Head) {
    let mut head = head.clone();
    let mut entries = Vec::new();
    for op in txn.ops.iter_mut() {
        let Op::Put { key, value } = op else { continue };
        if !key.starts_with(AUDIT) {
            continue;
        }
        // Our own entries always decode; anything else is left as it is, and verify shows it.
        let Ok(mut record) = serde_json::from_slice::<AuditRecord>(value) else {
            continue;
        };
        record.seq = head.seq + 1;
        record.prev_hash = head.hash.clone();
        record.hash = record.link().hash();
        head = Head {
            seq: record.seq,
            hash: record.hash.clone(),
        };
        *value = to_json(&record);
        entries.push(record);
    }
    let txn = txn
        .when_revision(HEAD_KEY, revision)
        .put(HEAD_KEY, to_json(&head));
    (txn, entries, head)
}

/// One structured line per entry; never a secret, since entries hold none.
fn log_entry(entry: &AuditRecord) {
    info!(
        target: "opi_audit",
        seq = entry.seq,
        at = %rfc3339(entry.at),
        actor = %entry.actor,
        action = %entry.action,
        subject = %entry.subject,
        outcome = %entry.outcome,
        detail = %entry.detail,
        remote_addr = %entry.remote_addr,
        hash = %entry.hash,
        "audit entry"
    );
}

#[async_trait::async_trait]
impl Store for ChainedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list_page(prefix, start_after, limit).await
    }

    async fn list_last(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list_last(prefix, limit).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        if let Some(key) = txn.duplicate_key() {
            return Err(StoreError::DuplicateKey { key: key.into() });
        }
        if txn.ops.iter().any(is_audit_put) {
            self.chained_txn(txn).await
        } else {
            self.inner.txn(txn).await
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Entry;
    use crate::store::{list_json, SqliteStore};

    fn stores(dir: &std::path::Path) -> (Arc<dyn Store>, Arc<dyn Store>) {
        let raw: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("fleet.db")).unwrap());
        (raw.clone(), ChainedStore::wrap(raw))
    }

    #[tokio::test]
    async fn entries_chain_in_commit_order_across_two_writers() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, first) = stores(dir.path());
        let second = ChainedStore::wrap(raw.clone());
        Entry::ok("a", "token.create", "t1", "local")
            .write(&*first)
            .await;
        Entry::ok("b", "token.create", "t2", "local")
            .write(&*second)
            .await;
        let txn = Entry::ok("a", "node.revoke", "n1", "local").into_txn(Txn::new());
        let txn = Entry::ok("a", "node.revoke", "n2", "local").into_txn(txn);
        first.txn(txn).await.unwrap();

        let mut entries: Vec<AuditRecord> = list_json(&*raw, AUDIT)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.value)
            .collect();
        entries.sort_by_key(|e| e.seq);
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(entries[0].prev_hash, GENESIS);
        for pair in entries.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].hash, pair[1].link().hash());
        }
    }

    #[tokio::test]
    async fn a_refused_compare_leaves_the_chain_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, store) = stores(dir.path());
        let txn = Entry::ok("a", "node.move", "n1", "local")
            .into_txn(Txn::new().when_revision("nodes/n1", 99));
        let outcome = store.txn(txn).await.unwrap();
        assert_eq!(
            outcome,
            TxnOutcome::Conflict {
                key: "nodes/n1".into()
            }
        );
        Entry::ok("a", "token.create", "t1", "local")
            .write(&*store)
            .await;

        let entries: Vec<AuditRecord> = list_json(&*raw, AUDIT)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.value)
            .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].seq, 1);
    }
}
