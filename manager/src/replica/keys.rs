//! The session keys of one replica, written a batch at a time. A whole fleet reconnects at
//! once after a restart; one transaction per session opening or closing would double what etcd
//! has to commit. While one batch is in flight, the writes that arrive queue, and the next
//! transaction takes them in order, up to what etcd takes and never the same node twice, so
//! that a session's opening and its closing reach etcd in the order they happened.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::warn;

use super::Replica;
use crate::store::{Txn, MAX_TXN_OPS};

/// The writes waiting, and whether a task is writing them.
#[derive(Default)]
pub(super) struct KeyQueue {
    pending: VecDeque<KeyWrite>,
    running: bool,
}

/// One session key to write (the session opened here) or delete (it ended).
struct KeyWrite {
    node: String,
    held: bool,
    done: oneshot::Sender<()>,
}

impl Replica {
    /// Queues the write of `node`'s session key and waits until it is in etcd, or failed (a
    /// failure is logged: the next lease grant records every session held again).
    pub(super) async fn write_key(self: &Arc<Self>, node: &str, held: bool) {
        let (done, written) = oneshot::channel();
        let start = {
            let mut queue = self.keys.lock().expect("key queue lock poisoned");
            queue.pending.push_back(KeyWrite {
                node: node.into(),
                held,
                done,
            });
            !std::mem::replace(&mut queue.running, true)
        };
        // A task of its own, so that a session that goes away mid-write does not leave the
        // writes queued behind it waiting.
        if start {
            tokio::spawn(Arc::clone(self).write_keys());
        }
        let _ = written.await;
    }

    /// Writes what is queued, a batch at a time, until the queue is empty.
    async fn write_keys(self: Arc<Self>) {
        let etcd = self.etcd.as_ref().expect("session keys only on etcd");
        while let Some(batch) = next_batch(&self.keys) {
            let lease = self.state.lock().expect("replica lock poisoned").lease;
            let mut txn = Txn::new();
            for write in &batch {
                let key = self.session_key(&write.node);
                // Without a lease, the next grant records the sessions held.
                txn = match (write.held, lease) {
                    (true, Some(_)) => txn.put(key, Vec::new()),
                    (true, None) => txn,
                    (false, _) => txn.delete(key),
                };
            }
            let lease = lease.map_or(0, |lease| lease.id);
            let written = match txn.ops.is_empty() {
                true => Ok(()),
                false => etcd.txn_with_lease(txn, lease).await.map(drop),
            };
            if let Err(error) = written {
                let writes = batch.len();
                warn!(replica = %self.name, writes, error = %error, "cannot record session openings and closings in etcd");
            }
            for write in batch {
                let _ = write.done.send(());
            }
        }
    }
}

/// The next writes, in order, up to [`MAX_TXN_OPS`] and stopping before a node already in the
/// batch; `None` (and the writer marked stopped) when nothing is queued.
fn next_batch(keys: &Mutex<KeyQueue>) -> Option<Vec<KeyWrite>> {
    let mut queue = keys.lock().expect("key queue lock poisoned");
    if queue.pending.is_empty() {
        queue.running = false;
        return None;
    }
    let mut nodes = HashSet::new();
    let mut batch = Vec::new();
    while let Some(write) = queue.pending.front() {
        if batch.len() == MAX_TXN_OPS || !nodes.insert(write.node.clone()) {
            break;
        }
        batch.push(queue.pending.pop_front().expect("front exists"));
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(nodes: &[(&str, bool)]) -> Mutex<KeyQueue> {
        let pending = nodes
            .iter()
            .map(|&(node, held)| KeyWrite {
                node: node.into(),
                held,
                done: oneshot::channel().0,
            })
            .collect();
        Mutex::new(KeyQueue {
            pending,
            running: true,
        })
    }

    fn taken(batch: Option<Vec<KeyWrite>>) -> Vec<(String, bool)> {
        batch
            .expect("a batch")
            .into_iter()
            .map(|w| (w.node, w.held))
            .collect()
    }

    #[test]
    fn a_batch_stops_before_a_node_it_already_writes_so_order_is_kept() {
        let keys = queue(&[("a", true), ("b", true), ("a", false), ("c", true)]);

        let first = taken(next_batch(&keys));
        assert_eq!(first, [("a".into(), true), ("b".into(), true)]);
        let second = taken(next_batch(&keys));
        assert_eq!(second, [("a".into(), false), ("c".into(), true)]);
        assert!(next_batch(&keys).is_none());
        assert!(
            !keys.lock().unwrap().running,
            "the writer is marked stopped"
        );
    }

    #[test]
    fn a_batch_holds_at_most_what_etcd_takes() {
        let names: Vec<String> = (0..MAX_TXN_OPS + 5).map(|i| format!("n{i}")).collect();
        let writes: Vec<(&str, bool)> = names.iter().map(|n| (n.as_str(), true)).collect();
        let keys = queue(&writes);

        assert_eq!(taken(next_batch(&keys)).len(), MAX_TXN_OPS);
        assert_eq!(taken(next_batch(&keys)).len(), 5);
    }
}
