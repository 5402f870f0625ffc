//! The node view that `opictl nodes` lists and `opictl node` shows: its JSON shape, and how
//! the manager's answer becomes it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use opi_proto::v1::{ConfigState, Connectivity, HealthSummary, Node, NodeState};
use serde::Serialize;

use crate::health::{health_name, ConditionView, MaintenanceView};
use crate::output::timestamp;

/// The JSON shape of a node. Every key is always present; unknown times are `null`.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Node name, as in its certificate.
    pub name: String,
    /// Pool the node enrolled into.
    pub pool: String,
    /// Labels from the enrollment token.
    pub labels: BTreeMap<String, String>,
    /// `online`, `offline`, or `unknown` when the manager did not say.
    pub connectivity: &'static str,
    /// Since when the node has had its connectivity, RFC 3339.
    pub connectivity_since: Option<String>,
    /// `healthy`, `degraded`, or `unknown` when no fresh report exists.
    pub health: &'static str,
    /// Since when the node has had its health, RFC 3339.
    pub health_since: Option<String>,
    /// Last known conditions; kept, with their age, while the node is offline.
    pub conditions: Vec<ConditionView>,
    /// When the node last checked its conditions, RFC 3339.
    pub conditions_observed_at: Option<String>,
    /// Who put the node in maintenance, why and since when; `null` when not in maintenance.
    pub maintenance: Option<MaintenanceView>,
    /// `active`, `revoked`, or `unknown` when the manager did not say.
    pub state: &'static str,
    /// Last heartbeat, RFC 3339.
    pub last_seen: Option<String>,
    /// Enrollment time, RFC 3339.
    pub enrolled_at: Option<String>,
    /// End of validity of the node's current certificate, RFC 3339.
    pub cert_not_after: Option<String>,
    /// Version of the agent, as the node reports it.
    pub agent_version: String,
    /// Operating system, as the node reports it.
    pub os: String,
    /// Kernel release, as the node reports it.
    pub kernel: String,
    /// CPU architecture, as the node reports it.
    pub arch: String,
    /// Host name, as the node reports it.
    pub hostname: String,
    /// `/etc/machine-id`, as the node reports it.
    pub machine_id: String,
    /// Boot id of the node's current boot.
    pub boot_id: String,
    /// Address the node's stream comes from.
    pub remote_addr: String,
    /// Why the node was revoked; `null` unless it was.
    pub revoked_reason: Option<String>,
    /// Token the node enrolled with.
    pub token_id: String,
    /// Latest resource summary; `null` before the first heartbeat.
    pub summary: Option<SummaryView>,
    /// The config axis: which profile generation the node should run and what it reported.
    pub config: ConfigView,
}

/// The JSON shape of a node's config axis.
#[derive(Debug, Default, Serialize)]
pub struct ConfigView {
    /// `none`, `applying`, `in-sync`, `failed` or `drifted`.
    pub state: String,
    /// The generation the node should run; 0 while its pool has no profile.
    pub desired_generation: u64,
    /// The last generation the node applied; 0 for none.
    pub applied_generation: u64,
    /// What the node last said about it.
    pub reason: String,
    /// Since when the axis has had its state, RFC 3339.
    pub since: Option<String>,
    /// What drifted from the applied generation.
    pub drifted: Vec<String>,
    /// A reboot-scoped setting waits for the next boot.
    pub reboot_required: bool,
}

/// The JSON shape of a node's resource summary.
#[derive(Debug, Serialize)]
pub struct SummaryView {
    /// CPU use, percent of all cores.
    pub cpu_percent: f32,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory installed, bytes.
    pub memory_total_bytes: u64,
    /// Disk in use on the root file system, bytes.
    pub disk_used_bytes: u64,
    /// Size of the root file system, bytes.
    pub disk_total_bytes: u64,
    /// Load average over one minute.
    pub load1: f32,
    /// Load average over five minutes.
    pub load5: f32,
    /// Load average over fifteen minutes.
    pub load15: f32,
    /// Time since boot, seconds.
    pub uptime_secs: u64,
}

impl NodeView {
    /// A node as the manager described it, condition ages taken at `now`.
    pub fn new(node: Node, now: SystemTime) -> Self {
        let connectivity = connectivity_name(node.connectivity());
        let health = health_name(node.health());
        let state = state_name(node.state());
        let facts = node.facts.unwrap_or_default();
        let conditions = node
            .conditions
            .into_iter()
            .map(|c| ConditionView::new(c, now))
            .collect();
        Self {
            name: node.name,
            pool: node.pool,
            labels: node.labels.into_iter().collect(),
            connectivity,
            connectivity_since: timestamp(node.connectivity_since.as_ref()),
            health,
            health_since: timestamp(node.health_since.as_ref()),
            conditions,
            conditions_observed_at: timestamp(node.conditions_observed_at.as_ref()),
            maintenance: MaintenanceView::new(node.maintenance),
            state,
            last_seen: timestamp(node.last_seen.as_ref()),
            enrolled_at: timestamp(node.enrolled_at.as_ref()),
            cert_not_after: timestamp(node.cert_not_after.as_ref()),
            agent_version: facts.agent_version,
            os: facts.os,
            kernel: facts.kernel,
            arch: facts.arch,
            hostname: facts.hostname,
            machine_id: facts.machine_id,
            boot_id: node.boot_id,
            remote_addr: node.remote_addr,
            revoked_reason: Some(node.revoked_reason).filter(|r| !r.is_empty()),
            token_id: node.token_id,
            summary: node.summary.map(SummaryView::from),
            config: node.config.map(ConfigView::from).unwrap_or_default(),
        }
    }
}

impl From<ConfigState> for ConfigView {
    fn from(config: ConfigState) -> Self {
        Self {
            since: timestamp(config.since.as_ref()),
            state: config.state,
            desired_generation: config.desired_generation,
            applied_generation: config.applied_generation,
            reason: config.reason,
            drifted: config.drifted,
            reboot_required: config.reboot_required,
        }
    }
}

impl From<HealthSummary> for SummaryView {
    fn from(summary: HealthSummary) -> Self {
        Self {
            cpu_percent: summary.cpu_percent,
            memory_used_bytes: summary.memory_used_bytes,
            memory_total_bytes: summary.memory_total_bytes,
            disk_used_bytes: summary.disk_used_bytes,
            disk_total_bytes: summary.disk_total_bytes,
            load1: summary.load1,
            load5: summary.load5,
            load15: summary.load15,
            uptime_secs: summary.uptime_secs,
        }
    }
}

/// How connectivity reads in tables and JSON.
pub fn connectivity_name(connectivity: Connectivity) -> &'static str {
    match connectivity {
        Connectivity::Online => "online",
        Connectivity::Offline => "offline",
        Connectivity::Unspecified => "unknown",
    }
}

/// How a node's state reads in tables and JSON.
pub fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Active => "active",
        NodeState::Revoked => "revoked",
        NodeState::Unspecified => "unknown",
    }
}

/// Nodes and times shared by the tests of the node views.
#[cfg(test)]
pub mod fixtures {
    use std::time::Duration;

    use opi_proto::v1::{Condition, ConditionStatus, Health, NodeFacts, Severity};
    use prost_types::Timestamp;

    use super::*;

    /// A time, in seconds after the epoch.
    pub fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A protobuf timestamp, in seconds after the epoch.
    pub fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    /// A degraded node with a critical disk problem, a warning and a healthy kubelet.
    pub fn degraded_node() -> Node {
        let problem = |kind: &str, subject: &str, severity: Severity| Condition {
            r#type: kind.into(),
            subject: subject.into(),
            status: ConditionStatus::Problem as i32,
            severity: severity as i32,
            reason: "Threshold".into(),
            message: "disk 96% used (threshold 95%)".into(),
            last_transition: ts(1_700_000_000),
            last_observed: ts(1_700_000_230),
        };
        Node {
            health: Health::Degraded as i32,
            health_since: ts(1_700_000_000),
            connectivity_since: ts(1_699_990_000),
            conditions_observed_at: ts(1_700_000_230),
            conditions: vec![
                Condition {
                    r#type: "KubeletHealthy".into(),
                    status: ConditionStatus::Ok as i32,
                    ..Condition::default()
                },
                problem("ClockUnsynchronised", "", Severity::Warning),
                problem("DiskPressure", "/var", Severity::Critical),
                problem("DiskPressure", "/data", Severity::Warning),
                problem("ContainerdHealthy", "", Severity::Warning),
            ],
            ..node(Connectivity::Online, Some(1_700_000_230))
        }
    }

    /// An active node of pool `workers`, as the manager lists it.
    pub fn node(connectivity: Connectivity, last_seen: Option<i64>) -> Node {
        Node {
            name: "web-1".into(),
            pool: "workers".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            connectivity: connectivity as i32,
            state: NodeState::Active as i32,
            last_seen: last_seen.map(|seconds| Timestamp { seconds, nanos: 0 }),
            facts: Some(NodeFacts {
                os: "Debian GNU/Linux 12".into(),
                kernel: "6.1.0-18-amd64".into(),
                agent_version: "0.1.0".into(),
                ..NodeFacts::default()
            }),
            ..Node::default()
        }
    }

    /// The view of `node` at the time the tests print: four minutes into the disk problem of
    /// [`degraded_node`].
    pub fn view(node: Node) -> NodeView {
        NodeView::new(node, at(1_700_000_240))
    }
}

#[cfg(test)]
mod tests {
    use opi_proto::v1::Maintenance;

    use super::fixtures::*;
    use super::*;

    /// Every key the JSON of a node must carry.
    const NODE_KEYS: [&str; 25] = [
        "name",
        "pool",
        "labels",
        "connectivity",
        "state",
        "last_seen",
        "enrolled_at",
        "cert_not_after",
        "agent_version",
        "os",
        "kernel",
        "hostname",
        "machine_id",
        "boot_id",
        "remote_addr",
        "revoked_reason",
        "summary",
        "arch",
        "token_id",
        "health",
        "health_since",
        "connectivity_since",
        "conditions",
        "conditions_observed_at",
        "maintenance",
    ];

    /// Every key the JSON of a condition must carry.
    const CONDITION_KEYS: [&str; 9] = [
        "type",
        "subject",
        "status",
        "severity",
        "reason",
        "message",
        "last_transition",
        "last_observed",
        "age_seconds",
    ];

    #[test]
    fn node_json_carries_every_required_key() {
        let json = serde_json::to_value(view(node(Connectivity::Online, None))).unwrap();

        let object = json.as_object().unwrap();
        for key in NODE_KEYS {
            assert!(object.contains_key(key), "missing `{key}` in {json}");
        }
        assert_eq!(json["labels"]["zone"], "a");
        assert!(json["summary"].is_null());
        assert!(json["revoked_reason"].is_null());
    }

    #[test]
    fn node_json_names_connectivity_online_or_offline() {
        let online = view(node(Connectivity::Online, None));
        let offline = view(node(Connectivity::Offline, None));
        let unspecified = view(node(Connectivity::Unspecified, None));

        assert_eq!(
            serde_json::to_value(online).unwrap()["connectivity"],
            "online"
        );
        assert_eq!(
            serde_json::to_value(offline).unwrap()["connectivity"],
            "offline"
        );
        assert_eq!(
            serde_json::to_value(unspecified).unwrap()["connectivity"],
            "unknown"
        );
    }

    #[test]
    fn node_json_gives_last_seen_as_rfc3339_or_null() {
        let seen = view(node(Connectivity::Online, Some(1_700_000_000)));
        let never = view(node(Connectivity::Offline, None));

        assert_eq!(
            serde_json::to_value(seen).unwrap()["last_seen"],
            "2023-11-14T22:13:20Z"
        );
        assert!(serde_json::to_value(never).unwrap()["last_seen"].is_null());
    }

    #[test]
    fn node_json_keeps_summary_when_reported() {
        let mut reported = node(Connectivity::Online, None);
        reported.summary = Some(HealthSummary {
            cpu_percent: 12.5,
            memory_used_bytes: 1024,
            ..HealthSummary::default()
        });

        let json = serde_json::to_value(view(reported)).unwrap();
        assert_eq!(json["summary"]["cpu_percent"], 12.5);
        assert_eq!(json["summary"]["memory_used_bytes"], 1024);
    }

    #[test]
    fn node_json_has_health_and_each_condition_with_its_age() {
        let json = serde_json::to_value(view(degraded_node())).unwrap();

        assert_eq!(json["health"], "degraded");
        assert_eq!(json["health_since"], "2023-11-14T22:13:20Z");
        assert_eq!(json["conditions_observed_at"], "2023-11-14T22:17:10Z");
        assert!(json["connectivity_since"].is_string());
        let conditions = json["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 5);
        for condition in conditions {
            let object = condition.as_object().unwrap();
            for key in CONDITION_KEYS {
                assert!(object.contains_key(key), "missing `{key}` in {condition}");
            }
        }
        let disk = &conditions[2];
        assert_eq!(disk["type"], "DiskPressure");
        assert_eq!(disk["subject"], "/var");
        assert_eq!(disk["status"], "problem");
        assert_eq!(disk["severity"], "critical");
        assert_eq!(disk["age_seconds"], 240);
        assert_eq!(conditions[0]["status"], "ok");
        assert!(conditions[0]["severity"].is_null());
    }

    #[test]
    fn node_json_maintenance_is_null_or_an_object() {
        let mut node = degraded_node();
        assert!(serde_json::to_value(view(node.clone())).unwrap()["maintenance"].is_null());

        node.maintenance = Some(Maintenance {
            on: true,
            by: "spiffe://prod/operator/alice".into(),
            reason: "kernel upgrade".into(),
            since: ts(1_700_000_100),
        });
        let json = serde_json::to_value(view(node)).unwrap();
        assert_eq!(json["maintenance"]["on"], true);
        assert_eq!(json["maintenance"]["by"], "spiffe://prod/operator/alice");
        assert_eq!(json["maintenance"]["reason"], "kernel upgrade");
        assert_eq!(json["maintenance"]["since"], "2023-11-14T22:15:00Z");
    }
}
