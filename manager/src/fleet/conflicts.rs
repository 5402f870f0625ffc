//! Two peers with one node certificate: each new session replaces the older one (the newest
//! wins, so a half-open connection never locks a node out), but a session replaced while it
//! was still heard from is not half-open. When that happens twice for one node within
//! [`WINDOW`], the node's certificate is in two places: a `lifecycle` event (reason
//! `IdentityConflict`, a warning) and an audit entry say so, at most once per window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Fleet;
use crate::audit;
use crate::events::Draft;
use crate::records::Severity;

/// Replacements of live sessions counted together.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Replacements of live sessions within [`WINDOW`] that make a conflict.
pub const REPLACEMENTS: usize = 2;

/// Recent replacements of live sessions, per node.
#[derive(Debug, Default)]
pub struct ConflictTracker {
    nodes: HashMap<String, NodeReplacements>,
}

#[derive(Debug, Default)]
struct NodeReplacements {
    at: Vec<Instant>,
    reported: Option<Instant>,
}

impl ConflictTracker {
    /// Records that a live session of `node` was replaced; true when a conflict is due.
    pub fn replaced(&mut self, node: &str, now: Instant) -> bool {
        let entry = self.nodes.entry(node.to_string()).or_default();
        entry.at.retain(|at| now.duration_since(*at) < WINDOW);
        entry.at.push(now);
        let quiet = entry
            .reported
            .is_none_or(|at| now.duration_since(at) >= WINDOW);
        if entry.at.len() >= REPLACEMENTS && quiet {
            entry.reported = Some(now);
            return true;
        }
        false
    }
}

impl Fleet {
    /// Notes that a session of `node` from `older` was replaced by one from `newer` while
    /// the older one was still heard from; raises the conflict when due.
    pub(super) async fn live_session_replaced(&self, node: &str, older: &str, newer: &str) {
        let due = self
            .conflicts
            .lock()
            .expect("conflict lock poisoned")
            .replaced(node, Instant::now());
        if !due {
            return;
        }
        let message = format!(
            "node {node}'s certificate is in use from two places at once ({older} and {newer}); \
             if that is not expected, revoke it with `opictl node revoke {node}` and re-enroll"
        );
        warn!(node = %node, older = %older, newer = %newer, "identity conflict: one node certificate, two peers");
        let entry = audit::Entry::refused(node, "node.identity-conflict", node, newer, &message);
        let result = self
            .update_node(node, Some(entry), |record, drafts| {
                drafts.push(
                    Draft::new(
                        &record.name,
                        &record.pool,
                        "lifecycle",
                        "single",
                        "conflict",
                    )
                    .subject("identity")
                    .because("IdentityConflict", message.clone())
                    .severity(Severity::Warning),
                );
                Ok(())
            })
            .await;
        if let Err(error) = result {
            warn!(node = %node, error = %error, "cannot record the identity conflict");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_live_replacements_in_the_window_make_one_conflict() {
        let mut tracker = ConflictTracker::default();
        let start = Instant::now();
        assert!(!tracker.replaced("n1", start));
        assert!(tracker.replaced("n1", start + Duration::from_secs(2)));
        assert!(
            !tracker.replaced("n1", start + Duration::from_secs(4)),
            "once per window"
        );
        assert!(!tracker.replaced("n2", start + Duration::from_secs(4)));
        let later = start + WINDOW + Duration::from_secs(10);
        assert!(
            !tracker.replaced("n1", later),
            "old replacements have expired"
        );
        assert!(tracker.replaced("n1", later + Duration::from_secs(1)));
    }
}
