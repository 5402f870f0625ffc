//! Last-seen times a stopping manager saves in a few keys of its own rather than in every
//! node record: at 16,667 sessions a replica wrote 167 transactions of 100 records, about
//! six seconds during which its agents could not come back. The times reach memory when a
//! manager loads its fleet, and the records when the supervisor turns those nodes offline.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{Fleet, NodeEntry};
use crate::records::{shutdown_key, NodeRecord, ShutdownRecord, SHUTDOWNS};
use crate::store::{list_json, to_json, Store, StoreError, Txn};

/// Nodes per key: with the longest names, about 540 KB, within etcd's 1.5 MiB requests.
const NODES_PER_KEY: usize = 2_000;
/// Keys written at once at shutdown.
const PUTS_IN_FLIGHT: usize = 4;
/// How long the supervisor reuses the saved times it last read.
const REREAD_AFTER: Duration = Duration::from_secs(10);
/// Whose keys a manager writes when it has no replica name yet.
const DEFAULT_HOLDER: &str = "manager";

/// The saved times of every manager, as last read from the store.
#[derive(Default)]
pub(super) struct SavedTimes {
    read_at: Option<Instant>,
    seen: Arc<HashMap<String, OffsetDateTime>>,
}

/// Every saved time in the store, the latest of each node.
pub(super) async fn read_saved(
    store: &dyn Store,
) -> Result<HashMap<String, OffsetDateTime>, StoreError> {
    let mut seen: HashMap<String, OffsetDateTime> = HashMap::new();
    for saved in list_json::<ShutdownRecord>(store, SHUTDOWNS).await? {
        for (name, secs) in saved.value.last_seen {
            let Ok(at) = OffsetDateTime::from_unix_timestamp(secs) else {
                continue;
            };
            let latest = seen.entry(name).or_insert(at);
            *latest = (*latest).max(at);
        }
    }
    Ok(seen)
}

/// Moves `record`'s last-seen time forward to `at`, unless the node enrolled after it (a
/// time saved under the same name before a re-enrollment).
pub(super) fn raise_last_seen(record: &mut NodeRecord, at: OffsetDateTime) {
    if at >= record.enrolled_at && record.last_seen < Some(at) {
        record.last_seen = Some(at);
    }
}

/// Applies the saved times to the nodes just loaded.
pub(super) fn apply_saved(
    nodes: &mut HashMap<String, NodeEntry>,
    seen: &HashMap<String, OffsetDateTime>,
) {
    for (name, at) in seen {
        if let Some(entry) = nodes.get_mut(name) {
            raise_last_seen(&mut entry.record, *at);
        }
    }
}

impl Fleet {
    /// Saves when this manager last heard from every node whose session the shutdown ended,
    /// in keys of its own: [`NODES_PER_KEY`] nodes a key, [`PUTS_IN_FLIGHT`] keys at once.
    /// The first save of a shutdown also removes the keys of this manager's previous one.
    pub async fn save_last_seen(&self) {
        let names = std::mem::take(
            &mut *self
                .ended_by_shutdown
                .lock()
                .expect("shutdown lock poisoned"),
        );
        if names.is_empty() {
            return;
        }
        let seen: Vec<(String, i64)> = {
            let nodes = self.nodes.read().expect("fleet lock poisoned");
            names
                .iter()
                .filter_map(|name| nodes.get(name))
                .filter(|e| e.live.is_none() && e.record.last_seen < Some(e.last_contact))
                .map(|e| (e.record.name.clone(), e.last_contact.unix_timestamp()))
                .collect()
        };
        let holder = self
            .replica()
            .map_or(DEFAULT_HOLDER, |r| r.name())
            .to_string();
        let parts: Vec<_> = seen.chunks(NODES_PER_KEY).collect();
        let first = self
            .shutdown_parts
            .fetch_add(parts.len(), Ordering::Relaxed);
        let stopped_at = OffsetDateTime::now_utc();
        let saved: usize = futures_util::stream::iter(parts.into_iter().enumerate())
            .map(|(i, part)| {
                let record = ShutdownRecord {
                    stopped_at,
                    last_seen: part.iter().cloned().collect::<BTreeMap<_, _>>(),
                };
                let txn = Txn::new().put(shutdown_key(&holder, first + i), to_json(&record));
                async move {
                    match self.store().txn(txn).await {
                        Ok(_) => part.len(),
                        Err(error) => {
                            warn!(error = %error, nodes = part.len(), "cannot save last-seen times at shutdown");
                            0
                        }
                    }
                }
            })
            .buffer_unordered(PUTS_IN_FLIGHT)
            .fold(0, |saved, part| async move { saved + part })
            .await;
        if first == 0 {
            self.forget_previous_shutdown(&holder).await;
        }
        info!(
            nodes = saved,
            ended = names.len(),
            "last-seen times saved at shutdown"
        );
    }

    /// Deletes the keys of `holder`'s previous shutdown that this one did not overwrite.
    async fn forget_previous_shutdown(&self, holder: &str) {
        let prefix = format!("{SHUTDOWNS}{holder}/");
        let written = shutdown_key(holder, self.shutdown_parts.load(Ordering::Relaxed));
        let old = match self.store().list(&prefix).await {
            Ok(keys) => keys,
            Err(error) => {
                warn!(error = %error, "cannot list the last-seen times of the previous shutdown");
                return;
            }
        };
        let txn = old
            .iter()
            .filter(|kv| kv.key >= written)
            .fold(Txn::new(), |txn, kv| txn.delete(kv.key.clone()));
        if let Err(error) = self.store().txn(txn).await {
            warn!(error = %error, "cannot delete the last-seen times of the previous shutdown");
        }
    }

    /// The saved times of every manager, read again when older than [`REREAD_AFTER`]; what
    /// was read before if the store does not answer.
    pub(super) async fn saved_times(&self) -> Arc<HashMap<String, OffsetDateTime>> {
        {
            let saved = self.saved_times.lock().expect("saved times lock poisoned");
            if saved.read_at.is_some_and(|at| at.elapsed() < REREAD_AFTER) {
                return saved.seen.clone();
            }
        }
        let read = read_saved(self.store()).await;
        let mut saved = self.saved_times.lock().expect("saved times lock poisoned");
        match read {
            Ok(seen) => {
                saved.seen = Arc::new(seen);
                saved.read_at = Some(Instant::now());
            }
            Err(error) => {
                warn!(error = %error, "cannot read the last-seen times saved at shutdown")
            }
        }
        saved.seen.clone()
    }
}
