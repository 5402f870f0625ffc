//! etcd backend: the fleet's keys under a prefix of an etcd v3 cluster, through our own small
//! gRPC client (the `.proto` subset is in `proto/proto/etcd/kv.proto`, compiled without
//! `protoc`).
//!
//! The store's model is etcd's, so the mapping is direct: a key is the prefix plus the store
//! key, create and mod revisions come from etcd's `KeyValue`, and each [`Txn`] is one etcd
//! `Txn` whose compares are `MOD ==` checks. Two differences from etcd are bridged here, so that
//! the backend honours the [`Store`] contract the conformance suite checks:
//! - a fresh etcd is at revision 1, an empty store at 0: store revision = etcd revision − 1;
//! - etcd only says that *some* compare failed: the failure branch reads every compared key, in
//!   the same atomic step, to name the first one that did not hold;
//! - a transaction whose answer was lost is read back: if every key it puts holds its value at
//!   one revision, it committed; otherwise it is reported as possibly applied, never retried.
//!
//! The revision is etcd's cluster-wide one, so other data in the same etcd moves it too; the
//! manager only needs it to increase, and numbers events with a counter of its own.

mod client;
mod config;
mod lease;
mod watch;

use opi_proto::etcd::compare::{CompareResult, CompareTarget, TargetUnion};
use opi_proto::etcd::range_request::{SortOrder, SortTarget};
use opi_proto::etcd::request_op::Request;
use opi_proto::etcd::response_op::Response;
use opi_proto::etcd::{self as pb, RangeRequest, RequestOp, TxnRequest};
use tracing::info;

pub use client::{EtcdClient, EtcdError};
pub use config::{ConfigError, EtcdConfig, TlsFiles, DEFAULT_PREFIX, SCHEME, TLS_SCHEME};
pub use lease::Lease;
pub use watch::{is_compacted, Change, PrefixWatch};

use super::{Compare, KeyValue, Op, Revision, Store, StoreError, Txn, TxnOutcome};

/// Keys read per Range when listing a whole prefix, all at the revision of the first page.
const LIST_PAGE: i64 = 1000;

/// The fleet store in etcd.
pub struct EtcdStore {
    client: EtcdClient,
    prefix: String,
    describe: String,
}

impl EtcdStore {
    /// A store for `url` (`etcd://…` or `etcds://…`, see [`EtcdConfig`]); connects on first
    /// use.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let config = EtcdConfig::parse(url).map_err(|source| StoreError::BadUrl {
            url: url.into(),
            source: Box::new(source),
        })?;
        let client = EtcdClient::new(&config).map_err(|source| StoreError::BadUrl {
            url: url.into(),
            source: Box::new(source),
        })?;
        let scheme = if config.tls.is_some() {
            TLS_SCHEME
        } else {
            SCHEME
        };
        let describe = format!("{scheme}{}{}", config.endpoints.join(","), config.prefix);
        Ok(Self {
            client,
            prefix: config.prefix,
            describe,
        })
    }

    /// One Range call; a failure names `subject`, what was being read.
    async fn range(
        &self,
        subject: &str,
        request: RangeRequest,
    ) -> Result<pb::RangeResponse, StoreError> {
        self.client
            .range(request)
            .await
            .map_err(|error| self.read_error(subject, error))
    }

    /// The key and its revisions, read at once rather than after the calls waiting for a
    /// slot: for the replica's lease round, which says whether etcd still answers.
    pub async fn get_now(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let request = RangeRequest {
            key: self.full_key(key),
            ..RangeRequest::default()
        };
        let response = self
            .client
            .range_now(request)
            .await
            .map_err(|error| self.read_error(&format!("key `{key}`"), error))?;
        self.first(response)
    }

    /// The first key of a Range answer, decoded.
    fn first(&self, response: pb::RangeResponse) -> Result<Option<KeyValue>, StoreError> {
        response
            .kvs
            .into_iter()
            .next()
            .map(|kv| self.decode(kv))
            .transpose()
    }

    /// Every key in `[from, end)`, paged, all at one revision.
    async fn scan(
        &self,
        subject: &str,
        from: Vec<u8>,
        end: Vec<u8>,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut request = RangeRequest {
            key: from,
            range_end: end,
            limit: LIST_PAGE,
            ..RangeRequest::default()
        };
        let mut keys = Vec::new();
        loop {
            let page = self.range(subject, request.clone()).await?;
            if request.revision == 0 {
                request.revision = page.header.as_ref().map_or(0, |h| h.revision);
            }
            let last = page.kvs.last().map(|kv| kv.key.clone());
            keys.extend(self.decode_all(page.kvs)?);
            match last {
                Some(mut last) if page.more => {
                    last.push(0);
                    request.key = last;
                }
                _ => return Ok(keys),
            }
        }
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    fn decode_all(&self, kvs: Vec<pb::KeyValue>) -> Result<Vec<KeyValue>, StoreError> {
        kvs.into_iter().map(|kv| self.decode(kv)).collect()
    }

    fn decode(&self, kv: pb::KeyValue) -> Result<KeyValue, StoreError> {
        let corrupt = |key: String, problem: &str| StoreError::Corrupt {
            store: self.describe(),
            key,
            source: problem.to_owned().into(),
        };
        let key = String::from_utf8(kv.key).map_err(|e| {
            corrupt(
                String::from_utf8_lossy(e.as_bytes()).into(),
                "key is not UTF-8",
            )
        })?;
        let Some(key) = key.strip_prefix(&self.prefix).map(str::to_owned) else {
            return Err(corrupt(key, "key is outside the store's prefix"));
        };
        Ok(KeyValue {
            key,
            value: kv.value,
            create_revision: from_etcd(kv.create_revision),
            mod_revision: from_etcd(kv.mod_revision),
        })
    }

    fn read_error(&self, subject: &str, error: EtcdError) -> StoreError {
        match error {
            EtcdError::Unavailable { .. } => StoreError::Unavailable {
                store: self.describe(),
                source: Box::new(error),
            },
            error => StoreError::Read {
                store: self.describe(),
                subject: subject.into(),
                source: Box::new(error),
            },
        }
    }

    fn commit_error(&self, txn: &Txn, error: EtcdError) -> StoreError {
        match error {
            EtcdError::Unavailable { .. } => StoreError::Unavailable {
                store: self.describe(),
                source: Box::new(error),
            },
            error => StoreError::Commit {
                store: self.describe(),
                first_key: txn.first_key().into(),
                source: Box::new(error),
            },
        }
    }

    /// Commits `txn`, its puts bound to `lease` (0: none).
    async fn commit(&self, txn: Txn, lease: i64) -> Result<TxnOutcome, StoreError> {
        if let Some(key) = txn.duplicate_key() {
            return Err(StoreError::DuplicateKey { key: key.into() });
        }
        let request = self.txn_request(&txn, lease);
        let response = match self.client.txn(request).await {
            Ok(response) => response,
            Err(error @ EtcdError::Uncertain { .. }) => {
                return match self.applied(&txn).await {
                    Some(revision) => {
                        info!(store = %self.describe, key = %txn.first_key(), revision, "transaction whose answer was lost is in the store: committed");
                        Ok(TxnOutcome::Committed(revision))
                    }
                    None => Err(self.commit_error(&txn, error)),
                };
            }
            Err(error) => return Err(self.commit_error(&txn, error)),
        };

        if response.succeeded {
            // etcd gives a txn that changes nothing the current revision, as the contract asks.
            let revision = response.header.as_ref().map_or(0, |h| h.revision);
            return Ok(TxnOutcome::Committed(from_etcd(revision)));
        }
        Ok(TxnOutcome::Conflict {
            key: first_failed(&txn, &response.responses).to_owned(),
        })
    }

    /// The revision `txn` was applied at, if the store shows it was although its answer was
    /// lost: every key it puts holds its value, all written by one transaction, and every key
    /// it deletes is absent. `None` when that cannot be shown (the txn stays uncertain).
    async fn applied(&self, txn: &Txn) -> Option<Revision> {
        let mut revision = None;
        for op in &txn.ops {
            let current = self.get(op.key()).await.ok()?;
            match (op, current) {
                (Op::Put { value, .. }, Some(kv)) if kv.value == *value => {
                    if *revision.get_or_insert(kv.mod_revision) != kv.mod_revision {
                        return None;
                    }
                }
                (Op::Delete { .. }, None) => {}
                _ => return None,
            }
        }
        // A txn of deletes only leaves nothing that proves it ran.
        revision
    }

    /// The etcd request for `txn`: its compares, its ops on success, reads of every compared
    /// key on failure (to name the compare that failed).
    fn txn_request(&self, txn: &Txn, lease: i64) -> TxnRequest {
        let compare = txn
            .compares
            .iter()
            .map(|Compare::ModRevision { key, revision }| pb::Compare {
                result: CompareResult::Equal.into(),
                target: CompareTarget::Mod.into(),
                key: self.full_key(key),
                target_union: Some(TargetUnion::ModRevision(to_etcd(*revision))),
                range_end: Vec::new(),
            })
            .collect();
        let success = txn.ops.iter().map(|op| self.op(op, lease)).collect();
        let failure = txn
            .compares
            .iter()
            .map(|c| RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: self.full_key(c.key()),
                    keys_only: true,
                    ..RangeRequest::default()
                })),
            })
            .collect();
        TxnRequest {
            compare,
            success,
            failure,
        }
    }

    fn op(&self, op: &Op, lease: i64) -> RequestOp {
        let request = match op {
            Op::Put { key, value } => Request::RequestPut(pb::PutRequest {
                key: self.full_key(key),
                value: value.clone(),
                lease,
                ..pb::PutRequest::default()
            }),
            Op::Delete { key } => Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: self.full_key(key),
                ..pb::DeleteRangeRequest::default()
            }),
        };
        RequestOp {
            request: Some(request),
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let request = RangeRequest {
            key: self.full_key(key),
            ..RangeRequest::default()
        };
        let response = self.range(&format!("key `{key}`"), request).await?;
        self.first(response)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let from = self.full_key(prefix);
        let end = prefix_end(&from);
        self.scan(&format!("keys under `{prefix}`"), from, end)
            .await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut from = self.full_key(prefix);
        let end = prefix_end(&from);
        if let Some(after) = start_after {
            let mut next = self.full_key(after);
            next.push(0);
            from = from.max(next);
        }
        if limit == 0 || from >= end {
            return Ok(Vec::new());
        }
        let request = RangeRequest {
            key: from,
            range_end: end,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            ..RangeRequest::default()
        };
        let response = self
            .range(&format!("a page of keys under `{prefix}`"), request)
            .await?;
        self.decode_all(response.kvs)
    }

    async fn list_last(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = self.full_key(prefix);
        let request = RangeRequest {
            range_end: prefix_end(&from),
            key: from,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            sort_order: SortOrder::Descend.into(),
            sort_target: SortTarget::Key.into(),
            ..RangeRequest::default()
        };
        let response = self
            .range(&format!("the last keys under `{prefix}`"), request)
            .await?;
        let mut keys = self.decode_all(response.kvs)?;
        keys.reverse();
        Ok(keys)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.commit(txn, 0).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let request = RangeRequest {
            key: self.prefix.clone().into_bytes(),
            count_only: true,
            ..RangeRequest::default()
        };
        let response = self.range("the revision", request).await?;
        Ok(from_etcd(response.header.map_or(0, |h| h.revision)))
    }
}

/// The key of the first compare of `txn` that the failure branch's reads contradict.
fn first_failed<'a>(txn: &'a Txn, reads: &[pb::ResponseOp]) -> &'a str {
    let found = txn.compares.iter().zip(reads).find(|(compare, read)| {
        let Compare::ModRevision { revision, .. } = compare;
        let actual = match &read.response {
            Some(Response::ResponseRange(range)) => {
                range.kvs.first().map_or(0, |kv| kv.mod_revision)
            }
            _ => return true,
        };
        actual != to_etcd(*revision)
    });
    // A failed txn has a failed compare; the first key is the best name if etcd said otherwise.
    found.map_or_else(|| txn.first_key(), |(compare, _)| compare.key())
}

/// The store revision of etcd revision `revision` (a fresh etcd is at 1, an empty store at 0).
fn from_etcd(revision: i64) -> Revision {
    u64::try_from(revision.saturating_sub(1)).unwrap_or(0)
}

/// The etcd revision of store revision `revision`; 0 stays 0, etcd's "absent" in compares.
fn to_etcd(revision: Revision) -> i64 {
    if revision == 0 {
        return 0;
    }
    i64::try_from(revision)
        .unwrap_or(i64::MAX)
        .saturating_add(1)
}

/// The first key after every key starting with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only for a prefix of 0xff bytes, which store prefixes are not: "\0" means "to the end".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_map_between_the_store_and_etcd() {
        assert_eq!(from_etcd(1), 0);
        assert_eq!(from_etcd(2), 1);
        assert_eq!(to_etcd(0), 0);
        assert_eq!(to_etcd(1), 2);
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(
            prefix_end(b"/opi-fleet/nodes/"),
            b"/opi-fleet/nodes0".to_vec()
        );
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}
