//! Event commits taken together. While one transaction is in flight, the commits that arrive
//! queue up, and the next transaction takes as many of them as fit, each with its own compares
//! and writes, and its events numbered in queue order. One round trip to the store then
//! commits many nodes' changes: after a restart thousands of sessions open at once, and a
//! replica on etcd would otherwise commit one node's events per round trip.
//!
//! A member whose own compare fails gets its conflict alone and the others are retried
//! without it. Members never share a key, and commits made under a leader fence
//! ([`crate::replica::fence`]) are only merged with commits under the same fence.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::{Draft, EventLog, EVENT_ATTEMPTS};
use crate::records::{event_key, EventRecord, EVENTS};
use crate::replica::{as_leader, Lead};
use crate::store::{to_json, StoreError, Txn, TxnOutcome, MAX_TXN_OPS};

/// A commit waiting for its turn, and where its outcome goes.
pub(super) struct Pending {
    pub txn: Txn,
    pub drafts: Vec<Draft>,
    /// The leader fence of the task that asked for the commit.
    pub lead: Lead,
    pub done: oneshot::Sender<Result<TxnOutcome, StoreError>>,
}

/// The commits waiting, and whether a committer task is taking them.
#[derive(Default)]
pub(super) struct Queue {
    pending: VecDeque<Pending>,
    running: bool,
}

/// Commits being merged into one transaction, with the keys they use and their size so far.
struct Batch {
    members: Vec<Pending>,
    keys: HashSet<String>,
    compares: usize,
    ops: usize,
    /// The first member writes a key twice: the store refuses it, and it must be refused
    /// alone.
    closed: bool,
}

impl EventLog {
    /// Queues `pending` and starts a committer unless one is running.
    pub(super) fn enqueue(self: &Arc<Self>, pending: Pending) {
        let start = {
            let mut queue = self.queue.lock().expect("event queue lock poisoned");
            queue.pending.push_back(pending);
            !std::mem::replace(&mut queue.running, true)
        };
        // A task of its own, so that a caller that goes away (a closed stream) cannot leave
        // the commits queued behind it waiting.
        if start {
            tokio::spawn(Arc::clone(self).run_committer());
        }
    }

    /// Commits what is queued, a batch at a time, until the queue is empty.
    async fn run_committer(self: Arc<Self>) {
        loop {
            let mut last = self.commit_lock.lock().await;
            let Some(batch) = self.next_batch() else {
                return;
            };
            self.commit_batch(&mut last, batch).await;
        }
    }

    /// Takes the first queued commit and every later one that fits beside it; `None` (and the
    /// committer marked stopped) when nothing is queued.
    fn next_batch(&self) -> Option<Vec<Pending>> {
        let mut queue = self.queue.lock().expect("event queue lock poisoned");
        let Some(first) = queue.pending.pop_front() else {
            queue.running = false;
            return None;
        };
        let mut batch = Batch::new(first);
        let mut kept = VecDeque::with_capacity(queue.pending.len());
        for pending in queue.pending.drain(..) {
            match batch.admit(pending) {
                Ok(()) => {}
                Err(pending) => kept.push_back(pending),
            }
        }
        queue.pending = kept;
        Some(batch.members)
    }

    /// Commits `members` as one transaction (`last` being the commit lock's revision), answering
    /// each: all committed together, or a member's own conflict, retried without it.
    async fn commit_batch(&self, last: &mut u64, mut members: Vec<Pending>) {
        let lead = members[0].lead;
        let mut event_conflicts = 0;
        while !members.is_empty() && event_conflicts < EVENT_ATTEMPTS {
            let (txn, events) = merge(&members, *last, OffsetDateTime::now_utc());
            let outcome = match as_leader(lead, self.store.txn(txn)).await {
                Ok(outcome) => outcome,
                Err(error) => return self.fail(members, error),
            };
            match outcome {
                TxnOutcome::Committed(revision) => {
                    *last += events.len() as u64;
                    self.last.store(*last, Ordering::Release);
                    self.publish(events);
                    for member in members {
                        // A caller that went away finds its change in the store.
                        let _ = member.done.send(Ok(TxnOutcome::Committed(revision)));
                    }
                    return;
                }
                // Another replica took these revisions: number after its events.
                TxnOutcome::Conflict { key } if key.starts_with(EVENTS) => {
                    event_conflicts += 1;
                    if let Err(error) = self.take_in(last).await {
                        return self.fail(members, error);
                    }
                }
                TxnOutcome::Conflict { key } => {
                    let Some(at) = members.iter().position(|m| m.touches(&key)) else {
                        // A key no member names (the audit chain head, after its own
                        // tries): every member conflicts on it.
                        return answer_all(members, &key);
                    };
                    let member = members.remove(at);
                    let _ = member.done.send(Ok(TxnOutcome::Conflict { key }));
                }
            }
        }
        answer_all(members, EVENTS);
    }

    /// Answers every member of a transaction the store refused with that failure.
    fn fail(&self, mut members: Vec<Pending>, error: StoreError) {
        if members.len() == 1 {
            let _ = members.remove(0).done.send(Err(error));
            return;
        }
        for member in members {
            let error = member_error(&error, &member, &self.store.describe());
            let _ = member.done.send(Err(error));
        }
    }
}

impl Batch {
    fn new(first: Pending) -> Self {
        let mut batch = Self {
            members: Vec::new(),
            keys: HashSet::new(),
            compares: 0,
            ops: 0,
            closed: first.txn.duplicate_key().is_some(),
        };
        batch.add(first);
        batch
    }

    /// Adds `pending` if it runs under the same fence, shares no key with the members and
    /// keeps the transaction within [`MAX_TXN_OPS`]; otherwise hands it back.
    fn admit(&mut self, pending: Pending) -> Result<(), Pending> {
        let (compares, ops) = pending.size();
        let fits = self.compares + compares <= MAX_TXN_OPS && self.ops + ops <= MAX_TXN_OPS;
        let same_lead = pending.lead == self.members[0].lead;
        let alone = self.closed || pending.txn.duplicate_key().is_some();
        if alone || !fits || !same_lead || pending.keys().any(|key| self.keys.contains(key)) {
            return Err(pending);
        }
        self.add(pending);
        Ok(())
    }

    fn add(&mut self, pending: Pending) {
        let (compares, ops) = pending.size();
        self.compares += compares;
        self.ops += ops;
        self.keys.extend(pending.keys().map(str::to_owned));
        self.members.push(pending);
    }
}

impl Pending {
    /// Compares and ops this commit adds to a transaction: its own, and a compare and a put
    /// for each event.
    fn size(&self) -> (usize, usize) {
        let events = self.drafts.len();
        (
            self.txn.compares.len() + events,
            self.txn.ops.len() + events,
        )
    }

    /// Every key this commit compares or writes.
    fn keys(&self) -> impl Iterator<Item = &str> {
        let compared = self.txn.compares.iter().map(|c| c.key());
        compared.chain(self.txn.ops.iter().map(|op| op.key()))
    }

    fn touches(&self, key: &str) -> bool {
        self.keys().any(|own| own == key)
    }
}

/// One transaction holding every member's compares and writes, each followed by its events
/// numbered from `last + 1` on; also the events.
fn merge(members: &[Pending], last: u64, now: OffsetDateTime) -> (Txn, Vec<EventRecord>) {
    let mut txn = Txn::new();
    let mut events = Vec::new();
    for member in members {
        txn.compares.extend(member.txn.compares.iter().cloned());
        txn.ops.extend(member.txn.ops.iter().cloned());
        for draft in &member.drafts {
            let event = draft
                .clone()
                .into_event(last + 1 + events.len() as u64, now);
            let key = event_key(event.revision);
            txn = txn.when_absent(&key).put(key, to_json(&event));
            events.push(event);
        }
    }
    (txn, events)
}

/// Answers every member with a conflict on `key`.
fn answer_all(members: Vec<Pending>, key: &str) {
    for member in members {
        let conflict = TxnOutcome::Conflict { key: key.into() };
        let _ = member.done.send(Ok(conflict));
    }
}

/// The failure of a merged transaction as one member sees it: an unreachable store and a
/// fenced leader stay what they are, so that callers can act on them; anything else is this
/// member's commit failing, with the store's message as the cause.
fn member_error(error: &StoreError, member: &Pending, store: &str) -> StoreError {
    match error {
        StoreError::Unavailable { store, source } => StoreError::Unavailable {
            store: store.clone(),
            source: crate::error_chain(source.as_ref()).into(),
        },
        StoreError::Fenced {
            store,
            replica,
            revision,
        } => StoreError::Fenced {
            store: store.clone(),
            replica: replica.clone(),
            revision: *revision,
        },
        other => StoreError::Commit {
            store: store.into(),
            first_key: member.txn.first_key().into(),
            source: crate::error_chain(other).into(),
        },
    }
}

#[cfg(test)]
impl EventLog {
    /// Commits queued and not yet taken by the committer.
    fn queued(&self) -> usize {
        let queue = self.queue.lock().expect("event queue lock poisoned");
        queue.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::sync::{mpsc, watch};
    use tokio::task::JoinHandle;

    use super::super::{Draft, EventLog};
    use crate::store::{KeyValue, Revision, SqliteStore, Store, StoreError, Txn, TxnOutcome};

    /// A real SQLite store whose transactions wait at a gate the test opens, counting them.
    struct GatedStore {
        inner: SqliteStore,
        open: watch::Receiver<bool>,
        entered: mpsc::UnboundedSender<()>,
        txns: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Store for GatedStore {
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
            self.txns.fetch_add(1, Ordering::SeqCst);
            let _ = self.entered.send(());
            let mut open = self.open.clone();
            open.wait_for(|open| *open).await.expect("gate sender kept");
            self.inner.txn(txn).await
        }
        async fn revision(&self) -> Result<Revision, StoreError> {
            self.inner.revision().await
        }
    }

    struct Fixture {
        log: Arc<EventLog>,
        store: Arc<GatedStore>,
        gate: watch::Sender<bool>,
        entered: mpsc::UnboundedReceiver<()>,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let (gate, open) = watch::channel(false);
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let store = Arc::new(GatedStore {
            inner: SqliteStore::open(&dir.path().join("fleet.db")).expect("open store"),
            open,
            entered: entered_tx,
            txns: AtomicUsize::new(0),
        });
        let log = EventLog::open(store.clone(), 1000).await.expect("open log");
        Fixture {
            log: Arc::new(log),
            store,
            gate,
            entered,
            _dir: dir,
        }
    }

    fn change(log: &Arc<EventLog>, txn: Txn, node: &str) -> JoinHandle<TxnOutcome> {
        let (log, draft) = (log.clone(), Draft::new(node, "pool", "health", "a", "b"));
        tokio::spawn(async move { log.commit(txn, vec![draft]).await.expect("commit") })
    }

    impl Fixture {
        /// Starts a first commit and waits until it is at the gate, so that the next ones
        /// queue behind it.
        async fn hold_the_store(&mut self) -> JoinHandle<TxnOutcome> {
            let first = change(&self.log, Txn::new().put("first", vec![0]), "first");
            self.entered
                .recv()
                .await
                .expect("the first commit reaches the store");
            first
        }

        /// Waits until `n` commits are queued, then opens the gate.
        async fn release_when_queued(&self, n: usize) {
            while self.log.queued() < n {
                tokio::task::yield_now().await;
            }
            self.gate.send(true).expect("gate open");
        }

        async fn stored_revisions(&self) -> Vec<u64> {
            let events = self.log.read_after(0, 1000).await.expect("read events");
            events.iter().map(|e| e.revision).collect()
        }
    }

    #[tokio::test]
    async fn commits_queued_meanwhile_share_one_transaction_and_number_events_without_gaps() {
        let mut f = fixture().await;
        let first = f.hold_the_store().await;
        let queued: Vec<_> = (0..40)
            .map(|i| {
                change(
                    &f.log,
                    Txn::new().put(format!("k{i}"), vec![1]),
                    &format!("n{i}"),
                )
            })
            .collect();
        f.release_when_queued(40).await;

        assert!(matches!(first.await.unwrap(), TxnOutcome::Committed(1)));
        for handle in queued {
            assert!(matches!(handle.await.unwrap(), TxnOutcome::Committed(2)));
        }
        assert_eq!(
            f.store.txns.load(Ordering::SeqCst),
            2,
            "one for the first, one for the rest"
        );
        assert_eq!(f.stored_revisions().await, (1..=41).collect::<Vec<_>>());
        assert_eq!(f.log.last_revision(), 41);
    }

    #[tokio::test]
    async fn a_member_whose_compare_fails_conflicts_alone_and_the_others_commit() {
        let mut f = fixture().await;
        let first = f.hold_the_store().await;
        let before = change(&f.log, Txn::new().put("a", vec![1]), "a");
        let stale = change(
            &f.log,
            Txn::new().when_revision("first", 99).put("s", vec![1]),
            "s",
        );
        let after = change(&f.log, Txn::new().put("b", vec![1]), "b");
        f.release_when_queued(3).await;

        first.await.unwrap();
        assert_eq!(
            stale.await.unwrap(),
            TxnOutcome::Conflict {
                key: "first".into()
            }
        );
        assert!(matches!(before.await.unwrap(), TxnOutcome::Committed(_)));
        assert!(matches!(after.await.unwrap(), TxnOutcome::Committed(_)));
        assert_eq!(
            f.store.inner.get("s").await.unwrap(),
            None,
            "nothing of it written"
        );
        let events = f.log.read_after(0, 10).await.unwrap();
        let nodes: Vec<&str> = events.iter().map(|e| e.node.as_str()).collect();
        assert_eq!(nodes, ["first", "a", "b"], "its event is not in the log");
        assert_eq!(f.stored_revisions().await, [1, 2, 3]);
    }

    #[tokio::test]
    async fn commits_writing_the_same_key_go_in_separate_transactions_in_queue_order() {
        let mut f = fixture().await;
        let first = f.hold_the_store().await;
        let one = change(&f.log, Txn::new().put("k", b"one".to_vec()), "one");
        let two = change(&f.log, Txn::new().put("k", b"two".to_vec()), "two");
        let other = change(&f.log, Txn::new().put("j", vec![1]), "other");
        f.release_when_queued(3).await;

        first.await.unwrap();
        let one = one.await.unwrap();
        assert_eq!(
            other.await.unwrap(),
            one,
            "committed together with the first write of k"
        );
        let two = two.await.unwrap();
        assert!(matches!(two, TxnOutcome::Committed(_)), "{two:?}");
        assert_ne!(
            two, one,
            "the second write of k goes in a transaction of its own"
        );
        assert_eq!(f.store.txns.load(Ordering::SeqCst), 3);
        let k = f.store.inner.get("k").await.unwrap().expect("k written");
        assert_eq!(k.value, b"two", "the later write of k lands last");
        assert_eq!(f.stored_revisions().await, [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_commit_writing_a_key_twice_is_refused_alone() {
        let mut f = fixture().await;
        let first = f.hold_the_store().await;
        let twice = Txn::new().put("d", vec![1]).put("d", vec![2]);
        let (log, draft) = (f.log.clone(), Draft::new("d", "pool", "health", "a", "b"));
        let refused = tokio::spawn(async move { log.commit(twice, vec![draft]).await });
        let fine = change(&f.log, Txn::new().put("e", vec![1]), "e");
        f.release_when_queued(2).await;

        first.await.unwrap();
        let error = refused
            .await
            .unwrap()
            .expect_err("a key written twice is refused");
        assert!(
            matches!(error, StoreError::DuplicateKey { ref key } if key == "d"),
            "{error}"
        );
        assert!(matches!(fine.await.unwrap(), TxnOutcome::Committed(_)));
        assert_eq!(f.stored_revisions().await, [1, 2]);
    }
}
