//! How a replica follows the node records and rollouts other replicas write: one etcd watch on
//! each prefix, applied to memory as changes arrive, instead of reading every record again.
//! A third watch on events makes the event log read back the events other replicas committed
//! as soon as they land, for this replica's live watches. A broken watch is opened again from
//! the last change it delivered; only when etcd no longer has that history (compacted), or a
//! change could not be taken, is everything read again.

use std::time::Duration;

use futures_util::FutureExt;
use tracing::{debug, warn};

use super::{Fleet, FleetError, NodeEntry};
use crate::records::{NodeRecord, EVENTS, NODES};
use crate::rollout::{RolloutRecord, ROLLOUTS};
use crate::store::etcd::{is_compacted, Change, PrefixWatch};
use crate::store::{decode, EtcdStore, Revision, Store, StoreError, Versioned};

/// Pause before watching again after a watch broke (etcd down or compacted); before reading
/// every record again it doubles at each try, up to [`MAX_REWATCH_AFTER`], so that a loaded
/// etcd is not asked for every record each second.
const REWATCH_AFTER: Duration = Duration::from_secs(1);
/// Longest pause before watching again.
const MAX_REWATCH_AFTER: Duration = Duration::from_secs(30);
/// Watches opened again from the same revision that broke before delivering anything, after
/// which everything is read again: etcd may refuse that revision in a way not recognised.
const STUCK_LIMIT: usize = 3;

/// Up to which revision memory holds what each watch delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    nodes: Revision,
    rollouts: Revision,
}

/// Why following stopped: the watch stream broke (open it again from where it was), or memory
/// can no longer be trusted to be complete (read everything again).
enum Broke {
    Watch(StoreError),
    Reload(FleetError),
}

impl Fleet {
    /// Follows what other replicas write to node records, rollouts and events after
    /// `loaded_at` (the store revision read before the fleet was loaded), until aborted.
    pub async fn follow(&self, etcd: EtcdStore, loaded_at: Revision) {
        let mut seen = Some(Seen {
            nodes: loaded_at,
            rollouts: loaded_at,
        });
        // Watches opened again from the same point that broke again at once.
        let mut stuck = 0;
        let mut pause = REWATCH_AFTER;
        loop {
            let before = seen;
            match self.follow_once(&etcd, &mut seen).await {
                Ok(()) => debug!("etcd ended the watch on node records and rollouts"),
                Err(Broke::Watch(error)) if is_compacted(&error) || stuck >= STUCK_LIMIT => {
                    warn!(error = %crate::error_chain(&error), "the watch on node records and rollouts cannot resume; reading them again");
                    seen = None;
                }
                Err(Broke::Watch(error)) => {
                    warn!(error = %crate::error_chain(&error), "watch on node records and rollouts broke; watching again from its last change");
                }
                Err(Broke::Reload(error)) => {
                    warn!(error = %crate::error_chain(&error), "cannot follow node records and rollouts; reading them again");
                    seen = None;
                }
            }
            let progressed = seen.is_some() && seen != before;
            stuck = if progressed { 0 } else { stuck + 1 };
            // Resuming a watch is cheap; reading every record again is not.
            pause = match seen {
                None => (pause * 2).min(MAX_REWATCH_AFTER),
                Some(_) => REWATCH_AFTER,
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads every record once unless `seen` says up to where memory has them, then applies
    /// the changes made after that, moving `seen` along.
    async fn follow_once(&self, etcd: &EtcdStore, seen: &mut Option<Seen>) -> Result<(), Broke> {
        let from = match *seen {
            Some(from) => from,
            None => {
                let at: Revision = etcd.revision().await.map_err(Broke::Watch)?;
                self.reload_nodes().await.map_err(Broke::Reload)?;
                self.rollouts
                    .refresh(&*self.store)
                    .await
                    .map_err(Broke::Reload)?;
                *seen.insert(Seen {
                    nodes: at,
                    rollouts: at,
                })
            }
        };
        let mut nodes = etcd
            .watch_prefix(NODES, from.nodes)
            .await
            .map_err(Broke::Watch)?;
        let mut rollouts = etcd
            .watch_prefix(ROLLOUTS, from.rollouts)
            .await
            .map_err(Broke::Watch)?;
        let mut events = etcd
            .watch_prefix(EVENTS, from.nodes)
            .await
            .map_err(Broke::Watch)?;
        loop {
            tokio::select! {
                // The event log reads them back in revision order, with its own last revision:
                // the watch only says when (the supervisor's pass reads back each second too,
                // so a read that fails here is made again there).
                changes = events.next() => match changes.map_err(Broke::Watch)? {
                    Some(changes) => {
                        // Notices already queued are for events the same read takes in: one
                        // read per batch of commits, not one per commit; and none for this
                        // replica's own commits, already in its log.
                        let mut newest = newest_event(&changes);
                        let ended = take_ready(&mut events, &mut newest);
                        if newest > self.events.last_revision() {
                            if let Err(error) = self.events.read_back().await {
                                debug!(error = %error, "cannot read back the events other replicas committed");
                            }
                        }
                        if let Some(ended) = ended {
                            return ended.map_err(Broke::Watch);
                        }
                    }
                    None => return Ok(()),
                },
                changes = nodes.next() => match changes.map_err(Broke::Watch)? {
                    Some(changes) => {
                        let last = changes.last().map(Change::revision);
                        self.take_node_changes(etcd, changes)
                            .await
                            .map_err(|error| Broke::Reload(error.into()))?;
                        let seen = seen.as_mut().expect("set before watching");
                        seen.nodes = last.map_or(seen.nodes, |last| last.max(seen.nodes));
                    }
                    None => return Ok(()),
                },
                changes = rollouts.next() => match changes.map_err(Broke::Watch)? {
                    Some(changes) => {
                        let last = changes.last().map(Change::revision);
                        self.take_rollout_changes(etcd, changes)
                            .map_err(|error| Broke::Reload(error.into()))?;
                        let seen = seen.as_mut().expect("set before watching");
                        seen.rollouts = last.map_or(seen.rollouts, |last| last.max(seen.rollouts));
                    }
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

/// Takes the event notices `events` already holds, without waiting, raising `newest` to the
/// newest event they name; `Some` with how following ends when the watch ended (`Ok`) or
/// broke meanwhile.
fn take_ready(events: &mut PrefixWatch<'_>, newest: &mut u64) -> Option<Result<(), StoreError>> {
    loop {
        match events.next().now_or_never()? {
            Ok(Some(changes)) => *newest = newest_event(&changes).max(*newest),
            Ok(None) => return Some(Ok(())),
            Err(error) => return Some(Err(error)),
        }
    }
}

/// Revision of the newest event written among `changes` (0 when none: deletions of pruned
/// events say nothing new).
fn newest_event(changes: &[Change]) -> u64 {
    let revision = |change: &Change| match change {
        Change::Put(kv) => kv.key.strip_prefix(EVENTS)?.parse().ok(),
        Change::Delete { .. } => None,
    };
    changes.iter().filter_map(revision).max().unwrap_or(0)
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
            *entry.record = v.value;
            entry.revision = v.mod_revision;
            retarget
        }
        Some(_) => false,
        None => {
            let entry = NodeEntry {
                record: Box::new(v.value),
                revision: v.mod_revision,
                live: None,
                last_contact: time::OffsetDateTime::now_utc(),
            };
            nodes.insert(entry.record.name.clone(), entry);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::event_key;
    use crate::store::KeyValue;

    fn put(key: String) -> Change {
        Change::Put(KeyValue {
            key,
            value: Vec::new(),
            create_revision: 1,
            mod_revision: 1,
        })
    }

    #[test]
    fn the_newest_event_is_read_from_the_keys_written() {
        let changes = [put(event_key(7)), put(event_key(12)), put(event_key(9))];
        assert_eq!(newest_event(&changes), 12);
        let pruned = Change::Delete {
            key: event_key(40),
            revision: 3,
        };
        assert_eq!(newest_event(&[pruned, put("nodes/n1".into())]), 0);
    }
}
