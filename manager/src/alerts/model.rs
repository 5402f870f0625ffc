//! Alerts as the manager computes them, and as Alertmanager's API v2 takes them: a JSON array
//! of label sets with annotations, a start and an end.

use std::collections::BTreeMap;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::records::Severity;

/// A node went offline.
pub const NODE_OFFLINE: &str = "OpiNodeOffline";
/// A condition that degrades a node is failing.
pub const NODE_DEGRADED: &str = "OpiNodeDegraded";
/// A node certificate is past its renewal window.
pub const NODE_CERTIFICATE_EXPIRING: &str = "OpiNodeCertificateExpiring";
/// Many nodes of one pool are offline at once (replaces their per-node alerts).
pub const POOL_NODES_OFFLINE: &str = "OpiPoolNodesOffline";
/// Most of the manager's online nodes vanished at once (replaces their offline alerts).
pub const MANAGER_LOST_MOST_AGENTS: &str = "OpiManagerLostMostAgents";
/// A pool's rollout halted on failures.
pub const ROLLOUT_HALTED: &str = "OpiRolloutHalted";
/// Fleet store calls are failing.
pub const MANAGER_STORE_ERRORS: &str = "OpiManagerStoreErrors";
/// The manager's server certificate failed to renew, or a fleet CA nears its expiry.
pub const MANAGER_CERTIFICATE_EXPIRING: &str = "OpiManagerCertificateExpiring";
/// Always firing while the manager runs: the dead-man's switch.
pub const MANAGER_HEARTBEAT: &str = "OpiManagerHeartbeat";

/// The labels of an alert: what Alertmanager identifies it by.
pub type Labels = BTreeMap<String, String>;

/// One alert the manager asserts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub labels: Labels,
    /// `summary` and `description`.
    pub annotations: BTreeMap<String, String>,
    /// When the problem began.
    pub starts_at: OffsetDateTime,
}

/// An alert in the shape `POST /api/v2/alerts` takes.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Postable<'a> {
    labels: &'a Labels,
    annotations: &'a BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
}

impl Alert {
    /// An alert named `name` of `fleet`, with its severity, starting at `starts_at`.
    pub fn new(name: &str, fleet: &str, severity: &str, starts_at: OffsetDateTime) -> Self {
        let labels = [
            ("alertname", name),
            ("fleet", fleet),
            ("severity", severity),
        ];
        Self {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
            starts_at,
        }
    }

    /// Adds a label.
    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// Sets the `summary` and `description` annotations.
    pub fn describe(mut self, summary: String, description: String) -> Self {
        self.annotations.insert("summary".into(), summary);
        self.annotations.insert("description".into(), description);
        self
    }

    /// Sets the `runbook_url` annotation: `runbooks#alertname`, the alert's section there.
    pub fn link_runbook(&mut self, runbooks: &str) {
        let anchor = self.name().to_lowercase();
        let url = format!("{}#{anchor}", runbooks.trim_end_matches('#'));
        self.annotations.insert("runbook_url".into(), url);
    }

    /// The `alertname` label.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

/// The `severity` label of a condition's severity.
pub fn severity_label(severity: Severity) -> &'static str {
    match severity {
        Severity::None => "none",
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// The body of a push: `firing` alerts valid until `until` (Alertmanager resolves them on its
/// own if no push renews them by then), and `resolved` alerts with the time they ended.
pub fn payload(
    firing: &[Alert],
    until: OffsetDateTime,
    resolved: &[(Alert, OffsetDateTime)],
) -> Vec<u8> {
    let firing = firing.iter().map(|alert| postable(alert, until));
    let resolved = resolved.iter().map(|(alert, at)| postable(alert, *at));
    let all: Vec<Postable> = firing.chain(resolved).collect();
    serde_json::to_vec(&all).expect("serialising string maps to JSON cannot fail")
}

fn postable(alert: &Alert, ends_at: OffsetDateTime) -> Postable<'_> {
    Postable {
        labels: &alert.labels,
        annotations: &alert.annotations,
        starts_at: timestamp(alert.starts_at),
        ends_at: timestamp(ends_at),
    }
}

/// RFC 3339 in UTC with fractions of a second, as Alertmanager parses it.
fn timestamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.format(&Rfc3339)
        .expect("alert times fall within years 0 to 9999")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn payload_lists_firing_then_resolved_alerts_with_their_ends() {
        let start = datetime!(2025-03-01 10:00:00 UTC);
        let mut offline = Alert::new(NODE_OFFLINE, "prod", "critical", start)
            .label("node", "n1")
            .describe("node n1 is offline".into(), "no contact".into());
        offline.link_runbook("https://docs.example/runbooks.md");
        let until = datetime!(2025-03-01 10:03:00 UTC);
        let ended = datetime!(2025-03-01 10:01:30.5 UTC);

        let body = payload(
            std::slice::from_ref(&offline),
            until,
            &[(offline.clone(), ended)],
        );
        let json: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");

        assert_eq!(json[0]["labels"]["alertname"], NODE_OFFLINE);
        assert_eq!(json[0]["labels"]["severity"], "critical");
        assert_eq!(json[0]["labels"]["node"], "n1");
        assert_eq!(json[0]["annotations"]["summary"], "node n1 is offline");
        assert_eq!(
            json[0]["annotations"]["runbook_url"],
            "https://docs.example/runbooks.md#opinodeoffline"
        );
        assert_eq!(json[0]["startsAt"], "2025-03-01T10:00:00Z");
        assert_eq!(json[0]["endsAt"], "2025-03-01T10:03:00Z");
        assert_eq!(json[1]["endsAt"], "2025-03-01T10:01:30.5Z");
    }
}
