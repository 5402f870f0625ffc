//! The event log: every change of a node's supervised state, numbered by a fleet-wide
//! revision that increases by one per event and is never reused.
//!
//! Events are written in the same store transaction as the node record change they describe,
//! under one lock, so revision order is commit order; watchers catch up from the store and
//! then follow a broadcast of new events, going back to the store whenever they fall behind.

mod flap;
mod group;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::{broadcast, oneshot};
use tracing::info;

pub use flap::{FlapDetector, FlapVerdict, CALM_AFTER, FLAP_THRESHOLD, FLAP_WINDOW};
pub use watch::{Sink, WatchError, WatchFilter};

use crate::records::{event_key, EventRecord, Severity, EVENTS};
use crate::store::{decode, Store, StoreError, Txn, TxnOutcome};

/// Tries of a commit whose event revisions another replica took meanwhile.
const EVENT_ATTEMPTS: usize = 8;
/// Events kept by default; older ones are pruned.
pub const DEFAULT_RETENTION: usize = 100_000;
/// Events buffered for live watchers before a slow one must catch up from the store.
const BROADCAST_CAPACITY: usize = 4096;
/// Events read from the store per page when taking in other replicas' events.
const TAKE_IN_PAGE: usize = 500;
/// Recent events remembered per node, for `opictl node show`.
pub const RECENT_PER_NODE: usize = 20;
/// Revisions a node's recent events reserve room for at first: a node has a handful.
const RECENT_FIRST_ROOM: usize = 4;
/// Events deleted per pruning transaction: below etcd's default limit of 128 operations per
/// transaction (`--max-txn-ops`), so that pruning works on either backend.
const PRUNE_BATCH: usize = 100;

/// An event before it is given its revision and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub node: String,
    pub pool: String,
    pub kind: &'static str,
    pub subject: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub message: String,
    pub severity: Severity,
}

/// The durable, ordered log of events.
pub struct EventLog {
    store: Arc<dyn Store>,
    /// Last assigned revision; held while committing so revisions follow commit order.
    commit_lock: tokio::sync::Mutex<u64>,
    last: AtomicU64,
    live: broadcast::Sender<EventRecord>,
    recent: Mutex<HashMap<String, Recent>>,
    retention: usize,
    /// Commits waiting to be taken together ([`group`]).
    queue: Mutex<group::Queue>,
}

impl EventLog {
    /// Opens the log, resuming after the last stored event.
    pub async fn open(store: Arc<dyn Store>, retention: usize) -> Result<Self, StoreError> {
        let tail = store.list_last(EVENTS, RECENT_PER_NODE * 100).await?;
        let mut recent: HashMap<String, Recent> = HashMap::new();
        let mut last = 0;
        for kv in &tail {
            let event = decode::<EventRecord>(&*store, kv)?.value;
            last = event.revision;
            remember(&mut recent, &event);
        }
        let (live, _) = broadcast::channel(BROADCAST_CAPACITY);
        Ok(Self {
            store,
            commit_lock: tokio::sync::Mutex::new(last),
            last: AtomicU64::new(last),
            live,
            recent: Mutex::new(recent),
            retention: retention.max(1),
            queue: Mutex::default(),
        })
    }

    /// Commits `txn` with `drafts` appended as events, all or nothing; publishes the events
    /// once committed. Commits that wait meanwhile, with events or without (sessions opening
    /// by thousands after a restart), are taken together in one transaction ([`group`]), each
    /// still all or nothing and answered with its own outcome.
    pub async fn commit(
        self: &Arc<Self>,
        txn: Txn,
        drafts: Vec<Draft>,
    ) -> Result<TxnOutcome, StoreError> {
        let (done, outcome) = oneshot::channel();
        self.enqueue(group::Pending {
            txn,
            drafts,
            lead: crate::replica::fence::current(),
            done,
        });
        outcome
            .await
            .expect("the event committer answers every commit it takes")
    }

    /// Takes in the events other replicas committed since this one last did, and publishes
    /// them to live watchers in revision order; returns how many. Replicas call it every
    /// supervision pass, so a watch on any replica follows every replica's events.
    pub async fn read_back(&self) -> Result<usize, StoreError> {
        let mut last = self.commit_lock.lock().await;
        self.take_in(&mut last).await
    }

    /// Reads the stored events after `*last` (the commit lock held), publishes them and moves
    /// `*last` to the newest.
    async fn take_in(&self, last: &mut u64) -> Result<usize, StoreError> {
        let mut taken = 0;
        loop {
            let page = self.read_after(*last, TAKE_IN_PAGE).await?;
            let Some(newest) = page.last().map(|e| e.revision) else {
                return Ok(taken);
            };
            // A short page was the end of the log when read: no second read to find it empty.
            let more = page.len() == TAKE_IN_PAGE;
            taken += page.len();
            *last = newest;
            self.last.store(newest, Ordering::Release);
            self.publish(page);
            if !more {
                return Ok(taken);
            }
        }
    }

    /// Revision of the last committed event (0 when none).
    pub fn last_revision(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Revision of the oldest event still kept, if any.
    pub async fn oldest_revision(&self) -> Result<Option<u64>, StoreError> {
        let first = self.store.list_page(EVENTS, None, 1).await?;
        Ok(first
            .first()
            .map(|kv| decode::<EventRecord>(&*self.store, kv))
            .transpose()?
            .map(|v| v.value.revision))
    }

    /// Up to `limit` events after revision `after`, in order.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let start = (after > 0).then(|| event_key(after));
        let page = self
            .store
            .list_page(EVENTS, start.as_deref(), limit)
            .await?;
        page.iter()
            .map(|kv| decode::<EventRecord>(&*self.store, kv).map(|v| v.value))
            .collect()
    }

    /// The last events of one node, oldest first, read from the store; those pruned
    /// meanwhile are left out.
    pub async fn recent(&self, node: &str, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let revisions: Vec<u64> = {
            let recent = self.recent.lock().expect("event lock poisoned");
            let Some(kept) = recent.get(node) else {
                return Ok(Vec::new());
            };
            kept.0[kept.0.len().saturating_sub(limit)..].to_vec()
        };
        let mut events = Vec::with_capacity(revisions.len());
        for revision in revisions {
            if let Some(kv) = self.store.get(&event_key(revision)).await? {
                events.push(decode::<EventRecord>(&*self.store, &kv)?.value);
            }
        }
        Ok(events)
    }

    /// A receiver of events committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.live.subscribe()
    }

    /// Deletes events beyond the retention limit; returns how many.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let keep_from = self.last_revision().saturating_sub(self.retention as u64) + 1;
        let mut pruned = 0;
        loop {
            let page = self.store.list_page(EVENTS, None, PRUNE_BATCH).await?;
            let old: Vec<_> = page
                .iter()
                .filter(|kv| kv.key < event_key(keep_from))
                .collect();
            if old.is_empty() {
                break;
            }
            let txn = old
                .iter()
                .fold(Txn::new(), |txn, kv| txn.delete(kv.key.clone()));
            self.store.txn(txn).await?;
            pruned += old.len();
        }
        if pruned > 0 {
            info!(pruned, keep_from, "old events pruned");
        }
        Ok(pruned)
    }

    fn publish(&self, events: Vec<EventRecord>) {
        let mut recent = self.recent.lock().expect("event lock poisoned");
        for event in events {
            info!(
                revision = event.revision,
                node = %event.node,
                kind = event.kind,
                subject = %event.subject,
                from = %event.from,
                to = %event.to,
                "event"
            );
            remember(&mut recent, &event);
            let _ = self.live.send(event);
        }
    }
}

impl Draft {
    /// A draft for `node` of `pool`.
    pub fn new(node: &str, pool: &str, kind: &'static str, from: &str, to: &str) -> Self {
        Self {
            node: node.into(),
            pool: pool.into(),
            kind,
            subject: String::new(),
            from: from.into(),
            to: to.into(),
            reason: String::new(),
            message: String::new(),
            severity: Severity::None,
        }
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Sets reason and message.
    pub fn because(mut self, reason: impl Into<String>, message: impl Into<String>) -> Self {
        self.reason = reason.into();
        self.message = message.into();
        self
    }

    /// Sets the severity.
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    fn into_event(self, revision: u64, time: OffsetDateTime) -> EventRecord {
        EventRecord {
            revision,
            time,
            node: self.node,
            pool: self.pool,
            kind: self.kind.into(),
            subject: self.subject,
            from: self.from,
            to: self.to,
            reason: self.reason,
            message: self.message,
            severity: self.severity,
        }
    }
}

/// The revisions of one node's last events, oldest first; the events are read from the store
/// when asked for. Every replica keeps these for every node: kept whole, as their JSON, they
/// took about 740 bytes a node, against about 100 for their revisions.
struct Recent(Vec<u64>);

fn remember(recent: &mut HashMap<String, Recent>, event: &EventRecord) {
    // Events about a whole pool (rollouts) belong to no node's recent events.
    if event.node.is_empty() {
        return;
    }
    let kept = &mut recent
        .entry(event.node.clone())
        .or_insert_with(|| Recent(Vec::with_capacity(RECENT_FIRST_ROOM)))
        .0;
    if kept.len() == RECENT_PER_NODE {
        kept.remove(0);
    }
    kept.push(event.revision);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn a_node_keeps_its_last_events_in_order_across_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("fleet.db")).expect("open store"));
        let log = Arc::new(EventLog::open(store.clone(), 1000).await.expect("open log"));
        let total = RECENT_PER_NODE + 5;
        for i in 0..total {
            let drafts = vec![
                Draft::new("a", "pool", "health", "x", &format!("to-{i}"))
                    .because("Reason", format!("message {i}")),
                Draft::new("b", "pool", "health", "x", "y"),
            ];
            log.commit(Txn::new(), drafts).await.expect("commit");
        }

        let kept = log.recent("a", 100).await.expect("recent");
        assert_eq!(kept.len(), RECENT_PER_NODE);
        let to: Vec<_> = kept.iter().map(|e| e.to.clone()).collect();
        let expected: Vec<_> = (5..total).map(|i| format!("to-{i}")).collect();
        assert_eq!(to, expected, "the oldest ones dropped, oldest first");
        assert_eq!(kept[0].message, "message 5");
        assert!(kept.windows(2).all(|w| w[0].revision < w[1].revision));
        assert!(kept.iter().all(|e| e.node == "a" && e.pool == "pool"));
        let last_three = log.recent("a", 3).await.expect("recent");
        assert_eq!(last_three, kept[kept.len() - 3..]);
        assert!(log.recent("nobody", 10).await.expect("recent").is_empty());

        drop(log);
        let reopened = EventLog::open(store, 1000).await.expect("reopen log");
        let again = reopened.recent("a", 100).await.expect("recent");
        assert_eq!(again, kept, "read back from the store");
    }

    #[tokio::test]
    async fn recent_events_pruned_from_the_store_are_left_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("fleet.db")).expect("open store"));
        let log = Arc::new(EventLog::open(store, 3).await.expect("open log"));
        for i in 0..5 {
            let draft = Draft::new("a", "pool", "health", "x", &format!("to-{i}"));
            log.commit(Txn::new(), vec![draft]).await.expect("commit");
        }
        assert_eq!(log.recent("a", 100).await.expect("recent").len(), 5);

        assert_eq!(log.prune().await.expect("prune"), 2);
        let kept = log.recent("a", 100).await.expect("recent");
        let to: Vec<_> = kept.iter().map(|e| e.to.as_str()).collect();
        assert_eq!(to, ["to-2", "to-3", "to-4"], "the two oldest were pruned");
    }
}
