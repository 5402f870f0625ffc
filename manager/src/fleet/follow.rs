//! How a replica follows the node records and rollouts other replicas write: one etcd watch on
//! each prefix, applied to memory as changes arrive, instead of reading every record again.
//! A third watch on events makes the event log read back the events other replicas committed
//! as soon as they land, for this replica's live watches. After a broken watch it reads
//! everything once, then watches again from where that read was.

use std::time::Duration;

use tracing::{debug, warn};

use super::{Fleet, FleetError, NodeEntry};
use crate::records::{NodeRecord, EVENTS, NODES};
use crate::rollout::{RolloutRecord, ROLLOUTS};
use crate::store::etcd::Change;
use crate::store::{decode, EtcdStore, Revision, Store, StoreError, Versioned};

/// Pause before watching again after a watch broke (etcd down or compacted).
const REWATCH_AFTER: Duration = Duration::from_secs(1);

impl Fleet {
    /// Follows what other replicas write to node records, rollouts and events, until aborted.
    pub async fn follow(&self, etcd: EtcdStore) {
        loop {
            match self.follow_once(&etcd).await {
                Ok(()) => debug!("etcd ended the watch on node records and rollouts"),
                Err(error) => {
                    warn!(error = %error, "watch on node records and rollouts broke; reading them again")
                }
            }
            tokio::time::sleep(REWATCH_AFTER).await;
        }
    }

    /// Reads every record once, then applies the changes made after that read.
    async fn follow_once(&self, etcd: &EtcdStore) -> Result<(), FleetError> {
        let from: Revision = etcd.revision().await?;
        self.reload_nodes().await?;
        self.rollouts.refresh(&*self.store).await?;
        let mut nodes = etcd.watch_prefix(NODES, from).await?;
        let mut rollouts = etcd.watch_prefix(ROLLOUTS, from).await?;
        let mut events = etcd.watch_prefix(EVENTS, from).await?;
        loop {
            tokio::select! {
                // The event log reads them back in revision order, with its own last revision:
                // the watch only says when (the supervisor's pass reads back each second too).
                changes = events.next() => match changes? {
                    Some(_) => {
                        self.events.read_back().await?;
                    }
                    None => return Ok(()),
                },
                changes = nodes.next() => match changes? {
                    Some(changes) => self.take_node_changes(etcd, changes).await?,
                    None => return Ok(()),
                },
                changes = rollouts.next() => match changes? {
                    Some(changes) => self.take_rollout_changes(etcd, changes)?,
                    None => return Ok(()),
                },
            }
        }
    }

    /// Applies node record changes that are newer than memory's; a node whose session this
    /// replica holds and whose desired generation changed is sent that generation.
    async fn take_node_changes(
        &self,
        etcd: &EtcdStore,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        let mut retargeted = Vec::new();
        {
            let mut nodes = self.nodes.write().expect("fleet lock poisoned");
            for change in changes {
                match change {
                    Change::Put(kv) => {
                        let v: Versioned<NodeRecord> = decode(etcd as &dyn Store, &kv)?;
                        if take_record(&mut nodes, v) {
                            retargeted.push(kv.key[NODES.len()..].to_string());
                        }
                    }
                    Change::Delete { key, revision } => {
                        let name = &key[NODES.len()..];
                        // A node removed at another replica while its session is here keeps
                        // its entry until that session ends.
                        let gone = nodes
                            .get(name)
                            .is_some_and(|e| e.live.is_none() && e.revision < revision);
                        if gone {
                            nodes.remove(name);
                        }
                    }
                }
            }
        }
        for name in retargeted {
            self.send_desired(&name).await;
        }
        Ok(())
    }

    fn take_rollout_changes(
        &self,
        etcd: &EtcdStore,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        for change in changes {
            if let Change::Put(kv) = change {
                let v: Versioned<RolloutRecord> = decode(etcd as &dyn Store, &kv)?;
                self.rollouts.take(v);
            }
        }
        Ok(())
    }
}

/// Puts `v` in memory if it is newer than what memory holds; true when the node's session is
/// here and its desired generation changed.
pub(super) fn take_record(
    nodes: &mut std::collections::HashMap<String, NodeEntry>,
    v: Versioned<NodeRecord>,
) -> bool {
    match nodes.get_mut(&v.value.name) {
        Some(entry) if v.mod_revision > entry.revision => {
            let retarget =
                entry.live.is_some() && v.value.config.desired != entry.record.config.desired;
            entry.record = v.value;
            entry.revision = v.mod_revision;
            retarget
        }
        Some(_) => false,
        None => {
            let entry = NodeEntry {
                record: v.value,
                revision: v.mod_revision,
                live: None,
                last_contact: time::OffsetDateTime::now_utc(),
            };
            nodes.insert(entry.record.name.clone(), entry);
            false
        }
    }
}
