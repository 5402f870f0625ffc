//! What the metrics page shows: nodes per pool and state, fleet counters, store durations,
//! alert deliveries and who the manager is. Labels are pools and states only, so the number
//! of series grows with pools, not nodes; per-node series are opt-in.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use time::OffsetDateTime;

use super::counters::{FleetCounters, RefusalReason};
use super::text::{Kind, Page};
use super::Registry;
use crate::alerts::AlertMetrics;
use crate::fleet::supervise::{health_name, name_of};
use crate::fleet::NodeView;
use crate::records::{Connectivity, Health, NodeRecord, NodeState};
use crate::store::{Operation, StoreMetrics};

/// Connectivities, in the order series are written.
const CONNECTIVITIES: [Connectivity; 2] = [Connectivity::Online, Connectivity::Offline];
/// Healths, in the order series are written.
const HEALTHS: [Health; 3] = [Health::Healthy, Health::Degraded, Health::Unknown];

/// Node counts of one pool.
#[derive(Debug, Default)]
pub struct PoolCounts {
    /// Active nodes, indexed like [`CONNECTIVITIES`] then [`HEALTHS`].
    active: [[u64; HEALTHS.len()]; CONNECTIVITIES.len()],
    revoked: u64,
    maintenance: u64,
}

/// Writes `opi_nodes`, `opi_nodes_revoked` and `opi_nodes_in_maintenance`, every combination
/// of states for every pool that has nodes, zeros included.
pub fn write_nodes(page: &mut Page, pools: &BTreeMap<String, PoolCounts>) {
    page.family(
        "opi_nodes",
        Kind::Gauge,
        "Active (not revoked) nodes by pool, connectivity and health.",
    );
    for (pool, counts) in pools {
        for (c, connectivity) in CONNECTIVITIES.iter().enumerate() {
            for (h, health) in HEALTHS.iter().enumerate() {
                let labels = [
                    ("pool", pool.as_str()),
                    ("connectivity", name_of(*connectivity)),
                    ("health", health_name(*health)),
                ];
                page.sample("opi_nodes", &labels, counts.active[c][h] as f64);
            }
        }
    }

    page.family("opi_nodes_revoked", Kind::Gauge, "Revoked nodes by pool.");
    for (pool, counts) in pools {
        page.sample(
            "opi_nodes_revoked",
            &[("pool", pool)],
            counts.revoked as f64,
        );
    }

    page.family(
        "opi_nodes_in_maintenance",
        Kind::Gauge,
        "Active nodes in maintenance (their alerts silenced) by pool.",
    );
    for (pool, counts) in pools {
        let value = counts.maintenance as f64;
        page.sample("opi_nodes_in_maintenance", &[("pool", pool)], value);
    }
}

/// Writes one set of series per active node: connectivity, health as a state set, maintenance,
/// last contact and certificate expiry.
pub fn write_per_node(page: &mut Page, nodes: &[NodeView]) {
    let active: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.record.state == NodeState::Active)
        .collect();

    page.family("opi_node_online", Kind::Gauge, "1 when the node is online.");
    for node in &active {
        let online = node.record.supervision.connectivity == Connectivity::Online;
        page.sample("opi_node_online", &node_labels(node), flag(online));
    }

    page.family(
        "opi_node_health",
        Kind::Gauge,
        "1 for the node's current health, 0 for the others.",
    );
    for node in &active {
        let [name, pool] = node_labels(node);
        for health in HEALTHS {
            let labels = [name, pool, ("health", health_name(health))];
            let current = node.record.supervision.health == health;
            page.sample("opi_node_health", &labels, flag(current));
        }
    }

    page.family(
        "opi_node_in_maintenance",
        Kind::Gauge,
        "1 when the node is in maintenance.",
    );
    for node in &active {
        let resting = node.record.supervision.maintenance.is_some();
        page.sample("opi_node_in_maintenance", &node_labels(node), flag(resting));
    }

    let seen = "opi_node_last_seen_timestamp_seconds";
    page.family(
        seen,
        Kind::Gauge,
        "Last contact with the node, in seconds since the Unix epoch.",
    );
    for node in &active {
        if let Some(at) = node.last_seen {
            page.sample(seen, &node_labels(node), unix_seconds(at));
        }
    }

    let expiry = "opi_node_certificate_expiry_timestamp_seconds";
    page.family(
        expiry,
        Kind::Gauge,
        "End of validity of the node's newest certificate, in seconds since the Unix epoch.",
    );
    for node in &active {
        let value = unix_seconds(node.record.cert_not_after);
        page.sample(expiry, &node_labels(node), value);
    }
}

/// Writes enrollments, heartbeats, open sessions and the event revision.
pub fn write_fleet(page: &mut Page, counters: &FleetCounters, event_revision: u64) {
    page.family(
        "opi_enrollments_total",
        Kind::Counter,
        "Enrollment attempts by outcome (ok or refused) and reason of refusal.",
    );
    let ok = [("outcome", "ok"), ("reason", "none")];
    page.sample("opi_enrollments_total", &ok, counters.enrolled() as f64);
    for reason in RefusalReason::ALL {
        let labels = [("outcome", "refused"), ("reason", reason.as_str())];
        let value = counters.refused(reason) as f64;
        page.sample("opi_enrollments_total", &labels, value);
    }

    page.family(
        "opi_heartbeats_total",
        Kind::Counter,
        "Heartbeats received from agents.",
    );
    page.sample("opi_heartbeats_total", &[], counters.heartbeats() as f64);

    let processing = "opi_heartbeat_processing_seconds";
    page.family(
        processing,
        Kind::Histogram,
        "Time the manager spends handling one heartbeat, decoded message to updated state.",
    );
    counters.heartbeat_processing().write(page, processing, &[]);

    page.family(
        "opi_agent_sessions",
        Kind::Gauge,
        "Agent session streams open now.",
    );
    page.sample("opi_agent_sessions", &[], counters.sessions() as f64);

    page.family(
        "opi_event_revision",
        Kind::Gauge,
        "Revision of the last event of the fleet's event log.",
    );
    page.sample("opi_event_revision", &[], event_revision as f64);
}

/// Writes store call durations and failures.
pub fn write_store(page: &mut Page, store: &StoreMetrics) {
    let name = "opi_store_operation_duration_seconds";
    page.family(
        name,
        Kind::Histogram,
        "Duration of fleet store calls by operation (get, list, txn).",
    );
    for operation in Operation::ALL {
        let labels = [("operation", operation.as_str())];
        store.durations(operation).write(page, name, &labels);
    }

    page.family(
        "opi_store_errors_total",
        Kind::Counter,
        "Fleet store calls that failed.",
    );
    page.sample("opi_store_errors_total", &[], store.errors() as f64);
}

/// Writes alert deliveries and the number of firing alerts.
pub fn write_alerts(page: &mut Page, alerts: &AlertMetrics) {
    page.family(
        "opi_alert_deliveries_total",
        Kind::Counter,
        "Pushes of alerts to Alertmanager by outcome (ok or failed).",
    );
    let (ok, failed) = alerts.deliveries();
    page.sample(
        "opi_alert_deliveries_total",
        &[("outcome", "ok")],
        ok as f64,
    );
    page.sample(
        "opi_alert_deliveries_total",
        &[("outcome", "failed")],
        failed as f64,
    );

    page.family(
        "opi_alerts_active",
        Kind::Gauge,
        "Alerts the manager asserts as firing now, not counting OpiManagerHeartbeat.",
    );
    page.sample("opi_alerts_active", &[], alerts.active() as f64);
}

/// Writes the manager's version and fleet, and when it started.
pub fn write_manager(page: &mut Page, fleet: &str, registry: &Registry) {
    page.family(
        "opi_manager_info",
        Kind::Gauge,
        "Always 1; the labels say which manager version serves which fleet.",
    );
    let labels = [("version", env!("CARGO_PKG_VERSION")), ("fleet", fleet)];
    page.sample("opi_manager_info", &labels, 1.0);

    // The client libraries' conventional name, so that generic restart alerts work unchanged.
    page.family(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the manager, in seconds since the Unix epoch.",
    );
    let started = registry
        .started_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    page.sample("process_start_time_seconds", &[], started.as_secs_f64());
}

/// Writes whether this replica leads (a single manager always does).
pub fn write_leader(page: &mut Page, replica: &str, leads: bool) {
    page.family(
        "opi_manager_leader",
        Kind::Gauge,
        "1 while this replica leads (supervises, delivers alerts, steps rollouts), else 0.",
    );
    page.sample("opi_manager_leader", &[("replica", replica)], flag(leads));
}

/// Writes when the manager's server certificate and CAs expire, and whether that is near.
pub fn write_certificates(page: &mut Page, expiries: &[crate::identity::Expiry]) {
    page.family(
        "opi_manager_certificate_expiry_timestamp_seconds",
        Kind::Gauge,
        "When the manager's server certificate, issuing CA and root CA expire, in seconds since the Unix epoch.",
    );
    for expiry in expiries {
        let labels = [("certificate", expiry.what)];
        let at = unix_seconds(expiry.not_after);
        page.sample(
            "opi_manager_certificate_expiry_timestamp_seconds",
            &labels,
            at,
        );
    }
    page.family(
        "opi_manager_certificate_expiring",
        Kind::Gauge,
        "1 when the certificate expires within its warning threshold (a CA), or is past its renewal point (the server's).",
    );
    for expiry in expiries {
        let labels = [("certificate", expiry.what)];
        page.sample(
            "opi_manager_certificate_expiring",
            &labels,
            flag(expiry.warning),
        );
    }
}

/// The node counts of each pool, from every node's record.
pub fn count_pools<'a>(
    records: impl Iterator<Item = &'a NodeRecord>,
) -> BTreeMap<String, PoolCounts> {
    let mut pools: BTreeMap<String, PoolCounts> = BTreeMap::new();
    for record in records {
        let counts = match pools.get_mut(&record.pool) {
            Some(counts) => counts,
            None => pools.entry(record.pool.clone()).or_default(),
        };
        if record.state == NodeState::Revoked {
            counts.revoked += 1;
            continue;
        }
        let sup = &record.supervision;
        let c = CONNECTIVITIES
            .iter()
            .position(|c| *c == sup.connectivity)
            .expect("CONNECTIVITIES lists every connectivity");
        let h = HEALTHS
            .iter()
            .position(|h| *h == sup.health)
            .expect("HEALTHS lists every health");
        counts.active[c][h] += 1;
        if sup.maintenance.is_some() {
            counts.maintenance += 1;
        }
    }
    pools
}

fn node_labels(node: &NodeView) -> [(&'static str, &str); 2] {
    [("node", &node.record.name), ("pool", &node.record.pool)]
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

fn unix_seconds(at: OffsetDateTime) -> f64 {
    at.unix_timestamp_nanos() as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Facts, MaintenanceRecord, NodeRecord, Supervision};

    fn view(name: &str, pool: &str, connectivity: Connectivity, health: Health) -> NodeView {
        let now = OffsetDateTime::now_utc();
        NodeView {
            record: NodeRecord {
                name: name.into(),
                pool: pool.into(),
                labels: Default::default(),
                facts: Facts::default(),
                enrolled_at: now,
                token_id: "t".into(),
                state: NodeState::Active,
                revoked_reason: None,
                revoked_at: None,
                serials: vec![],
                cert_not_after: now,
                last_seen: Some(now),
                boot_id: String::new(),
                remote_addr: String::new(),
                supervision: Supervision {
                    connectivity,
                    health,
                    ..Supervision::default()
                },
                config: Default::default(),
                rotation_requested: None,
                reenroll: None,
                trust_bundle_digest: String::new(),
            },
            online: connectivity == Connectivity::Online,
            last_seen: Some(now),
            summary: None,
            remote_addr: String::new(),
            conditions_observed_at: None,
        }
    }

    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn node_counts_cover_every_state_of_every_pool_with_zeros() {
        let mut revoked = view("r", "b", Connectivity::Offline, Health::Unknown);
        revoked.record.state = NodeState::Revoked;
        let mut resting = view("m", "a", Connectivity::Offline, Health::Unknown);
        resting.record.supervision.maintenance = Some(MaintenanceRecord {
            by: "op".into(),
            reason: "disk swap".into(),
            since: OffsetDateTime::now_utc(),
        });
        let nodes = [
            view("n1", "a", Connectivity::Online, Health::Healthy),
            view("n2", "a", Connectivity::Online, Health::Healthy),
            resting,
            revoked,
        ];

        let mut page = Page::new();
        write_nodes(&mut page, &count_pools(nodes.iter().map(|n| &n.record)));
        let text = page.finish();

        let a_online = r#"opi_nodes{pool="a",connectivity="online",health="healthy"}"#;
        assert_eq!(sample(&text, a_online).as_deref(), Some("2"), "{text}");
        let a_down = r#"opi_nodes{pool="a",connectivity="offline",health="unknown"}"#;
        assert_eq!(sample(&text, a_down).as_deref(), Some("1"));
        let b_down = r#"opi_nodes{pool="b",connectivity="offline",health="unknown"}"#;
        assert_eq!(
            sample(&text, b_down).as_deref(),
            Some("0"),
            "revoked nodes are apart"
        );
        assert_eq!(
            text.matches("opi_nodes{").count(),
            12,
            "6 combinations per pool"
        );
        assert_eq!(
            sample(&text, r#"opi_nodes_revoked{pool="b"}"#).as_deref(),
            Some("1")
        );
        let resting = r#"opi_nodes_in_maintenance{pool="a"}"#;
        assert_eq!(sample(&text, resting).as_deref(), Some("1"));
    }

    #[test]
    fn per_node_series_name_each_active_node_and_its_health() {
        let mut revoked = view("gone", "a", Connectivity::Offline, Health::Unknown);
        revoked.record.state = NodeState::Revoked;
        let nodes = vec![
            view("n1", "a", Connectivity::Online, Health::Degraded),
            revoked,
        ];

        let mut page = Page::new();
        write_per_node(&mut page, &nodes);
        let text = page.finish();

        let online = r#"opi_node_online{node="n1",pool="a"}"#;
        assert_eq!(sample(&text, online).as_deref(), Some("1"));
        let degraded = r#"opi_node_health{node="n1",pool="a",health="degraded"}"#;
        assert_eq!(sample(&text, degraded).as_deref(), Some("1"));
        let healthy = r#"opi_node_health{node="n1",pool="a",health="healthy"}"#;
        assert_eq!(sample(&text, healthy).as_deref(), Some("0"));
        assert!(
            !text.contains("gone"),
            "revoked nodes have no series: {text}"
        );
    }
}
