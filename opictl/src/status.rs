//! `opictl status`: the fleet's totals and the node and health counts of each pool.

use opi_proto::v1::{AgentVersionCount, PoolStatus, StatusResponse};
use serde::Serialize;

use crate::output::{self, fields, Format, Table};
use crate::{Context, Error};

/// The JSON shape of `opictl status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Fleet name.
    pub fleet: String,
    /// Nodes in every pool.
    pub nodes: u32,
    /// Nodes connected now.
    pub online: u32,
    /// Nodes not heard from within the grace period.
    pub offline: u32,
    /// Nodes whose certificates are refused.
    pub revoked: u32,
    /// Nodes with a fresh report and no problem.
    pub healthy: u32,
    /// Nodes with a fresh report and at least one problem.
    pub degraded: u32,
    /// Nodes without a fresh report.
    pub unknown: u32,
    /// Nodes in maintenance, whatever their health.
    pub maintenance: u32,
    /// Revision of the manager's store when it answered.
    pub store_revision: u64,
    /// Revision of the latest event; `opictl watch --since` takes it.
    pub event_revision: u64,
    /// Version of the manager that answered.
    pub manager_version: String,
    /// Name of the replica that answered.
    pub replica: String,
    /// The replica that leads, as the one that answered last read it; `null` when none leads.
    pub leader: Option<String>,
    /// The fleet store, as the manager describes it.
    pub store: String,
    /// Set while the replica that answered cannot reach the fleet store: its answer comes from
    /// memory and may be stale (RFC 3339).
    pub store_unavailable_since: Option<String>,
    /// Nodes per agent version (revoked ones left out), newest first.
    pub agent_versions: Vec<AgentVersionView>,
    /// Counts per pool.
    pub pools: Vec<PoolView>,
    /// The manager's server certificate and CAs.
    pub certificates: Vec<CertificateView>,
}

/// When one of the manager's certificates expires.
#[derive(Debug, Serialize)]
pub struct CertificateView {
    /// `server`, `issuing-ca` or `root-ca`.
    pub certificate: String,
    /// Its subject's common name.
    pub subject: String,
    /// End of validity, RFC 3339.
    pub not_after: Option<String>,
    /// It expires within the manager's warning threshold (a CA), or is past its renewal
    /// point (the server's).
    pub warning: bool,
}

/// How many nodes run one agent version, and how far it is from the manager's.
#[derive(Debug, Serialize)]
pub struct AgentVersionView {
    /// The version, as the agent reported it.
    pub version: String,
    /// Nodes running it.
    pub nodes: u32,
    /// `current`, `one minor behind` or `unsupported` (the manager refuses it).
    pub skew: String,
}

/// The node counts of one pool.
#[derive(Debug, Serialize)]
pub struct PoolView {
    /// Pool name.
    pub pool: String,
    /// Nodes in the pool.
    pub nodes: u32,
    /// Nodes connected now.
    pub online: u32,
    /// Nodes not heard from within the grace period.
    pub offline: u32,
    /// Nodes whose certificates are refused.
    pub revoked: u32,
    /// Nodes with a fresh report and no problem.
    pub healthy: u32,
    /// Nodes with a fresh report and at least one problem.
    pub degraded: u32,
    /// Nodes without a fresh report.
    pub unknown: u32,
    /// Nodes in maintenance, whatever their health.
    pub maintenance: u32,
}

/// Runs `opictl status`.
pub async fn run(context: &Context) -> Result<(), Error> {
    let status = context.connect().await?.status().await?;
    let view = StatusView::from(status);

    match context.format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&render(&view)),
    }
}

impl From<StatusResponse> for StatusView {
    fn from(status: StatusResponse) -> Self {
        Self {
            fleet: status.fleet,
            nodes: status.nodes,
            online: status.online,
            offline: status.offline,
            revoked: status.revoked,
            healthy: status.healthy,
            degraded: status.degraded,
            unknown: status.unknown,
            maintenance: status.maintenance,
            store_revision: status.store_revision,
            event_revision: status.event_revision,
            manager_version: status.manager_version,
            replica: status.replica,
            leader: (!status.leader.is_empty()).then_some(status.leader),
            store: status.store,
            store_unavailable_since: output::timestamp(status.store_unavailable_since.as_ref()),
            agent_versions: status
                .agent_versions
                .into_iter()
                .map(AgentVersionView::from)
                .collect(),
            pools: status.pools.into_iter().map(PoolView::from).collect(),
            certificates: status
                .certificates
                .into_iter()
                .map(|c| CertificateView {
                    certificate: c.what,
                    subject: c.subject,
                    not_after: output::timestamp(c.not_after.as_ref()),
                    warning: c.warning,
                })
                .collect(),
        }
    }
}

impl From<AgentVersionCount> for AgentVersionView {
    fn from(count: AgentVersionCount) -> Self {
        Self {
            version: count.version,
            nodes: count.nodes,
            skew: count.skew,
        }
    }
}

impl From<PoolStatus> for PoolView {
    fn from(pool: PoolStatus) -> Self {
        Self {
            pool: pool.pool,
            nodes: pool.nodes,
            online: pool.online,
            offline: pool.offline,
            revoked: pool.revoked,
            healthy: pool.healthy,
            degraded: pool.degraded,
            unknown: pool.unknown,
            maintenance: pool.maintenance,
        }
    }
}

/// The store, and whether the replica that answered reaches it.
fn store_line(view: &StatusView) -> String {
    let store = output::sanitize(&view.store);
    match &view.store_unavailable_since {
        Some(since) => format!(
            "{store} (UNREACHABLE since {since}: this answer comes from the replica's memory and \
             may be stale; changes are refused)"
        ),
        None => store,
    }
}

/// The totals as a field list, then one row per pool.
fn render(view: &StatusView) -> String {
    let mut text = fields(&[
        ("fleet", view.fleet.clone()),
        ("nodes", view.nodes.to_string()),
        ("online", view.online.to_string()),
        ("offline", view.offline.to_string()),
        ("revoked", view.revoked.to_string()),
        ("healthy", view.healthy.to_string()),
        ("degraded", view.degraded.to_string()),
        ("unknown", view.unknown.to_string()),
        ("maintenance", view.maintenance.to_string()),
        ("manager", view.manager_version.clone()),
        ("replica", output::sanitize(&view.replica)),
        (
            "leader",
            view.leader
                .as_deref()
                .map_or_else(|| "none".to_string(), output::sanitize),
        ),
        ("store", store_line(view)),
        ("agent versions", agent_versions(&view.agent_versions)),
        ("revision", view.store_revision.to_string()),
        ("event revision", view.event_revision.to_string()),
    ]);
    for cert in &view.certificates {
        let until = cert.not_after.clone().unwrap_or_else(|| "-".into());
        let line = match cert.warning {
            true => format!(
                "{}: expires {until} (WARNING: expires soon)",
                cert.certificate
            ),
            false => format!("{}: expires {until}", cert.certificate),
        };
        text.push_str(&fields(&[("certificate", line)]));
    }
    if view.pools.is_empty() {
        text.push_str("\nno pools yet: enroll a node with `opictl token create --pool POOL`\n");
        return text;
    }

    let headers = [
        "POOL", "NODES", "ONLINE", "OFFLINE", "REVOKED", "HEALTHY", "DEGRADED", "UNKNOWN", "MAINT",
    ];
    let mut table = Table::new(&headers);
    for pool in &view.pools {
        let counts = [
            pool.nodes,
            pool.online,
            pool.offline,
            pool.revoked,
            pool.healthy,
            pool.degraded,
            pool.unknown,
            pool.maintenance,
        ];
        let mut row = vec![pool.pool.clone()];
        row.extend(counts.iter().map(u32::to_string));
        table.row(row);
    }
    text.push('\n');
    text.push_str(&table.render());
    text
}

/// `0.1.0: 8, 0.0.9: 2 (one minor behind)`: the skew is said when not current.
fn agent_versions(versions: &[AgentVersionView]) -> String {
    if versions.is_empty() {
        return "-".to_string();
    }
    let counts: Vec<String> = versions
        .iter()
        .map(|count| {
            let version = match count.version.as_str() {
                "" => "unknown",
                version => version,
            };
            match count.skew.as_str() {
                "current" => format!("{version}: {}", count.nodes),
                skew => format!("{version}: {} ({skew})", count.nodes),
            }
        })
        .collect();
    output::sanitize(&counts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> StatusResponse {
        StatusResponse {
            fleet: "prod".into(),
            pools: vec![PoolStatus {
                pool: "workers".into(),
                nodes: 3,
                online: 2,
                offline: 1,
                revoked: 0,
                healthy: 1,
                degraded: 1,
                unknown: 1,
                maintenance: 1,
            }],
            nodes: 3,
            online: 2,
            offline: 1,
            revoked: 0,
            manager_version: "0.1.0".into(),
            store_revision: 42,
            healthy: 1,
            degraded: 1,
            unknown: 1,
            maintenance: 1,
            event_revision: 1042,
            replica: "m2".into(),
            leader: "m1".into(),
            store: "etcd://e1:2379/opi-fleet/".into(),
            store_unavailable_since: None,
            agent_versions: vec![
                AgentVersionCount {
                    version: "0.1.0".into(),
                    nodes: 2,
                    skew: "current".into(),
                },
                AgentVersionCount {
                    version: "0.0.9".into(),
                    nodes: 1,
                    skew: "one minor behind".into(),
                },
            ],
            certificates: vec![opi_proto::v1::CertificateExpiry {
                what: "issuing-ca".into(),
                subject: "OPI Fleet issuing CA prod/manager".into(),
                not_after: Some(prost_types::Timestamp {
                    seconds: 1_900_000_000,
                    nanos: 0,
                }),
                warning: true,
            }],
        }
    }

    #[test]
    fn status_shows_when_a_manager_ca_expires_soon() {
        let text = render(&StatusView::from(status()));
        assert!(
            text.contains("issuing-ca: expires 2030-03-17T17:46:40Z (WARNING: expires soon)"),
            "{text}"
        );
    }

    #[test]
    fn status_counts_agent_versions_and_says_which_are_behind() {
        let view = StatusView::from(status());
        let text = render(&view);
        assert!(
            text.contains("agent versions   0.1.0: 2, 0.0.9: 1 (one minor behind)\n"),
            "{text}"
        );
        let json = serde_json::to_value(view).unwrap();
        assert_eq!(json["agent_versions"][1]["version"], "0.0.9");
        assert_eq!(json["agent_versions"][1]["nodes"], 1);
        assert_eq!(json["agent_versions"][1]["skew"], "one minor behind");
    }

    #[test]
    fn status_json_has_totals_revision_version_and_pools() {
        let json = serde_json::to_value(StatusView::from(status())).unwrap();

        assert_eq!(json["fleet"], "prod");
        assert_eq!(json["nodes"], 3);
        assert_eq!(json["online"], 2);
        assert_eq!(json["offline"], 1);
        assert_eq!(json["revoked"], 0);
        assert_eq!(json["store_revision"], 42);
        assert_eq!(json["manager_version"], "0.1.0");
        assert_eq!(json["pools"][0]["pool"], "workers");
        assert_eq!(json["pools"][0]["offline"], 1);
    }

    #[test]
    fn status_json_has_health_counts_and_event_revision() {
        let json = serde_json::to_value(StatusView::from(status())).unwrap();

        assert_eq!(json["event_revision"], 1042);
        for key in ["healthy", "degraded", "unknown", "maintenance"] {
            assert_eq!(json[key], 1, "total `{key}` in {json}");
            assert_eq!(json["pools"][0][key], 1, "pool `{key}` in {json}");
        }
    }

    #[test]
    fn status_says_which_replica_answered_and_which_leads() {
        let view = StatusView::from(status());
        let text = render(&view);
        assert!(text.contains("replica          m2\n"), "{text}");
        assert!(text.contains("leader           m1\n"), "{text}");
        let json = serde_json::to_value(view).unwrap();
        assert_eq!(json["replica"], "m2");
        assert_eq!(json["leader"], "m1");

        let none = StatusView::from(StatusResponse {
            leader: String::new(),
            ..status()
        });
        assert!(render(&none).contains("leader           none\n"));
        assert!(serde_json::to_value(none).unwrap()["leader"].is_null());
    }

    #[test]
    fn status_says_when_the_replica_answers_from_memory_without_its_store() {
        let reachable = render(&StatusView::from(status()));
        assert!(
            reachable.contains("store            etcd://e1:2379/opi-fleet/\n"),
            "{reachable}"
        );

        let lost = StatusView::from(StatusResponse {
            store_unavailable_since: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            }),
            ..status()
        });
        let text = render(&lost);
        assert!(
            text.contains("(UNREACHABLE since 2030-03-17T17:46:40Z: this answer comes from"),
            "{text}"
        );
        let json = serde_json::to_value(lost).unwrap();
        assert_eq!(json["store_unavailable_since"], "2030-03-17T17:46:40Z");
        assert_eq!(json["store"], "etcd://e1:2379/opi-fleet/");
    }

    #[test]
    fn status_table_shows_fleet_then_one_row_per_pool() {
        let text = render(&StatusView::from(status()));

        assert!(text.starts_with("fleet            prod\n"), "{text}");
        assert!(text.contains("maintenance      1\n"), "{text}");
        assert!(text.contains("event revision   1042\n"), "{text}");
        assert!(
            text.contains(
                "POOL      NODES   ONLINE   OFFLINE   REVOKED   HEALTHY   DEGRADED   UNKNOWN   \
                 MAINT\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "workers   3       2        1         0         1         1          1         1\n"
            ),
            "{text}"
        );
    }
}
