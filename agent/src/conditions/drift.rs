//! `ConfigDrift`: something the last committed apply owns (a file's content, mode or owner, a
//! live sysctl) is no longer as it was applied. Checked every round against `applied.json`;
//! while an apply is in progress its own writes are not drift, so the check waits.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use opi_proto::v1::Severity;

use super::{blocking, CollectFuture, Collector, Observation};
use crate::apply::kinds::sysctl::DEFAULT_PROC_SYS;
use crate::apply::node::{Node, DEFAULT_DBUS_SOCKET};
use crate::apply::record::Drift;
use crate::paths::StatePaths;

/// The condition type.
pub const CONFIG_DRIFT: &str = "ConfigDrift";
/// Most drifted items named in the message; the rest are counted.
pub const MAX_NAMED: usize = 10;

/// Compares the node with what its last apply owns.
#[derive(Debug)]
pub struct DriftCollector {
    node: Node,
}

impl DriftCollector {
    /// A check of the node at `paths`, live sysctls included when the root is `/`.
    pub fn new(paths: &StatePaths) -> Self {
        let proc_sys = PathBuf::from(DEFAULT_PROC_SYS);
        let dbus = PathBuf::from(DEFAULT_DBUS_SOCKET);
        Self {
            node: Node::new(paths, &proc_sys, &dbus),
        }
    }

    /// Checks now.
    pub fn observe(&self) -> io::Result<Observation> {
        if self.node.journal().try_exists()? {
            let message = "an apply is in progress; drift is checked once it ends".to_string();
            return Ok(Observation::ok(
                CONFIG_DRIFT,
                "",
                "ApplyInProgress",
                message,
            ));
        }
        let Some(record) = crate::apply::record::AppliedRecord::load(&self.node)? else {
            let message = "no profile was applied on this node".to_string();
            return Ok(Observation::ok(CONFIG_DRIFT, "", "NothingApplied", message));
        };
        let drifts = crate::apply::record::check(&self.node, &record)?;
        if drifts.is_empty() {
            let message = format!(
                "{} file(s), {} permission rule(s) and {} live sysctl(s) match the apply of {}",
                record.files.len(),
                record.permissions.len(),
                record.sysctls.len(),
                record.applied_at
            );
            return Ok(Observation::ok(CONFIG_DRIFT, "", "NoDrift", message));
        }
        // The config axis says the node drifted; its health stays what it is.
        let severity = Severity::Info;
        let message = describe(&drifts);
        Ok(Observation::problem(
            CONFIG_DRIFT,
            "",
            severity,
            "Drifted",
            message,
        ))
    }
}

impl Collector for DriftCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![CONFIG_DRIFT]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        blocking(move || Ok(vec![self.observe()?]))
    }
}

/// `N item(s) drifted from the applied profile: ITEM: WHAT; …`, naming at most [`MAX_NAMED`].
pub fn describe(drifts: &[Drift]) -> String {
    let named: Vec<String> = drifts
        .iter()
        .take(MAX_NAMED)
        .map(|d| format!("{}: {}", d.item, d.what))
        .collect();
    let mut message = format!(
        "{} item(s) drifted from the applied profile: {}",
        drifts.len(),
        named.join("; ")
    );
    if drifts.len() > MAX_NAMED {
        message.push_str(&format!("; and {} more", drifts.len() - MAX_NAMED));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_every_item_up_to_the_limit_then_counts_the_rest() {
        let drifts: Vec<Drift> = (0..12)
            .map(|i| Drift {
                item: format!("/etc/f{i}"),
                what: "the content was edited".into(),
            })
            .collect();
        let message = describe(&drifts);
        assert!(message.starts_with("12 item(s) drifted"), "{message}");
        assert!(
            message.contains("/etc/f9: the content was edited"),
            "{message}"
        );
        assert!(!message.contains("/etc/f10"), "{message}");
        assert!(message.ends_with("and 2 more"), "{message}");
    }
}
