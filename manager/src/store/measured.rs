//! A decorator that measures any [`Store`]: how long each call takes and how many fail, for
//! the metrics page and the store-errors alert. The backends themselves know nothing of it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{KeyValue, Revision, Store, StoreError, Txn, TxnOutcome};
use crate::metrics::histogram::{Histogram, STORE_BUCKETS};

/// The kind of store call, as the `operation` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A read of one key, or of the store revision.
    Get,
    /// A listing of keys under a prefix, whole or a page.
    List,
    /// A compare-and-swap transaction.
    Txn,
}

/// Durations and failures of store calls.
#[derive(Debug)]
pub struct StoreMetrics {
    get: Histogram,
    list: Histogram,
    txn: Histogram,
    errors: AtomicU64,
}

/// A store whose calls are measured into [`StoreMetrics`].
pub struct MeasuredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<StoreMetrics>,
}

impl Operation {
    /// Every operation, in the order metrics list them.
    pub const ALL: [Operation; 3] = [Operation::Get, Operation::List, Operation::Txn];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::List => "list",
            Operation::Txn => "txn",
        }
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            get: Histogram::new(STORE_BUCKETS),
            list: Histogram::new(STORE_BUCKETS),
            txn: Histogram::new(STORE_BUCKETS),
            errors: AtomicU64::new(0),
        }
    }
}

impl StoreMetrics {
    /// Durations of `operation`.
    pub fn durations(&self, operation: Operation) -> &Histogram {
        match operation {
            Operation::Get => &self.get,
            Operation::List => &self.list,
            Operation::Txn => &self.txn,
        }
    }

    /// Store calls that failed since the manager started (a compare that does not hold is not
    /// a failure).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

impl MeasuredStore {
    /// Measures `inner` into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<StoreMetrics>) -> Self {
        Self { inner, metrics }
    }

    async fn measure<T>(
        &self,
        operation: Operation,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = call.await;
        self.metrics.durations(operation).observe(start.elapsed());
        if result.is_err() {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[async_trait::async_trait]
impl Store for MeasuredStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.measure(Operation::Get, self.inner.get(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.measure(Operation::List, self.inner.list(prefix)).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let call = self.inner.list_page(prefix, start_after, limit);
        self.measure(Operation::List, call).await
    }

    async fn list_last(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let call = self.inner.list_last(prefix, limit);
        self.measure(Operation::List, call).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.measure(Operation::Txn, self.inner.txn(txn)).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.measure(Operation::Get, self.inner.revision()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn measured(dir: &tempfile::TempDir) -> (Arc<MeasuredStore>, Arc<StoreMetrics>) {
        let inner = SqliteStore::open(&dir.path().join("fleet.db")).expect("open store");
        let metrics = Arc::new(StoreMetrics::default());
        let store = MeasuredStore::new(Arc::new(inner), metrics.clone());
        (Arc::new(store), metrics)
    }

    #[tokio::test]
    async fn measured_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, metrics) = measured(&dir);

        crate::store::conformance::run_all(store).await;
        assert!(metrics.durations(Operation::Txn).count() > 0);
        assert!(metrics.durations(Operation::List).count() > 0);
        assert!(metrics.durations(Operation::Get).count() > 0);
    }

    #[tokio::test]
    async fn failed_calls_are_counted_as_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, metrics) = measured(&dir);

        let twice = Txn::new().put("a", vec![1]).put("a", vec![2]);
        store
            .txn(twice)
            .await
            .expect_err("a key written twice is refused");
        store.get("a").await.expect("get");

        assert_eq!(metrics.errors(), 1);
        assert_eq!(metrics.durations(Operation::Txn).count(), 1);
        assert_eq!(metrics.durations(Operation::Get).count(), 1);
    }
}
