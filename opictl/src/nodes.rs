//! `opictl nodes`: the node list, and the node view that `opictl node` shares.

use std::collections::BTreeMap;
use std::time::SystemTime;

use opi_proto::v1::{Connectivity, HealthSummary, Node, NodeState};
use serde::Serialize;

use crate::cli::NodesArgs;
use crate::output::{self, relative_rfc3339, timestamp, Format, Table};
use crate::{Context, Error};

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

/// Runs `opictl nodes`.
pub async fn run(context: &Context, args: NodesArgs) -> Result<(), Error> {
    let pool = args.pool.unwrap_or_default();
    let nodes = context.connect().await?.list_nodes(&pool).await?;
    let views: Vec<NodeView> = nodes.into_iter().map(NodeView::from).collect();

    match context.format {
        Format::Json => output::print_json(&views),
        Format::Table if views.is_empty() => output::print(&empty_message(&pool)),
        Format::Table => output::print(&table(&views, SystemTime::now()).render()),
    }
}

impl From<Node> for NodeView {
    fn from(node: Node) -> Self {
        let connectivity = connectivity_name(node.connectivity());
        let state = state_name(node.state());
        let facts = node.facts.unwrap_or_default();
        Self {
            name: node.name,
            pool: node.pool,
            labels: node.labels.into_iter().collect(),
            connectivity,
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

/// The node list as a table, last-seen times relative to `now`.
pub fn table(views: &[NodeView], now: SystemTime) -> Table {
    let headers = [
        "NAME",
        "POOL",
        "CONNECTIVITY",
        "STATE",
        "LAST-SEEN",
        "AGENT",
        "OS",
        "KERNEL",
    ];
    let mut table = Table::new(&headers);
    for view in views {
        table.row(vec![
            view.name.clone(),
            view.pool.clone(),
            view.connectivity.into(),
            view.state.into(),
            last_seen(view, now),
            view.agent_version.clone(),
            view.os.clone(),
            view.kernel.clone(),
        ]);
    }
    table
}

/// The last-seen time relative to `now`, or `never`.
pub fn last_seen(view: &NodeView, now: SystemTime) -> String {
    relative_rfc3339(view.last_seen.as_deref(), now).unwrap_or_else(|| "never".into())
}

fn empty_message(pool: &str) -> String {
    match pool {
        "" => "no nodes yet: `opictl token create --pool POOL` prints the line that enrolls one\n"
            .into(),
        pool => format!("no nodes in pool `{pool}`; `opictl status` lists the pools\n"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opi_proto::v1::NodeFacts;
    use prost_types::Timestamp;

    use super::*;

    /// Every key the JSON of a node must carry.
    const NODE_KEYS: [&str; 19] = [
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
    ];

    fn node(connectivity: Connectivity, last_seen: Option<i64>) -> Node {
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

    #[test]
    fn node_json_carries_every_required_key() {
        let json = serde_json::to_value(NodeView::from(node(Connectivity::Online, None))).unwrap();

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
        let online = NodeView::from(node(Connectivity::Online, None));
        let offline = NodeView::from(node(Connectivity::Offline, None));
        let unspecified = NodeView::from(node(Connectivity::Unspecified, None));

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
        let seen = NodeView::from(node(Connectivity::Online, Some(1_700_000_000)));
        let never = NodeView::from(node(Connectivity::Offline, None));

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

        let json = serde_json::to_value(NodeView::from(reported)).unwrap();
        assert_eq!(json["summary"]["cpu_percent"], 12.5);
        assert_eq!(json["summary"]["memory_used_bytes"], 1024);
    }

    #[test]
    fn node_table_shows_last_seen_relative_to_now() {
        let view = NodeView::from(node(Connectivity::Online, Some(1_000)));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_004);

        let text = table(&[view], now).render();
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("web-1"), "{text}");
        assert!(row.contains("online"), "{text}");
        assert!(row.contains("4s ago"), "{text}");
        assert!(row.contains("6.1.0-18-amd64"), "{text}");
    }
}
