use time::macros::datetime;

use super::*;
use crate::records::{
    ConditionRecord, ConditionStatus, Facts, MaintenanceRecord, NodeRecord, Severity, Supervision,
};

const NOW: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn settings() -> RuleSettings {
    RuleSettings {
        fleet: "prod".into(),
        storm_threshold: 5,
        grouping_window: Duration::from_secs(11),
        offline_after: Duration::from_secs(40),
        node_cert_ttl: DAY,
        runbooks: "docs/runbooks.md".into(),
    }
}

fn online(name: &str, pool: &str) -> NodeView {
    NodeView {
        record: NodeRecord {
            name: name.into(),
            pool: pool.into(),
            labels: Default::default(),
            facts: Facts::default(),
            enrolled_at: NOW - DAY,
            token_id: "t".into(),
            state: NodeState::Active,
            revoked_reason: None,
            revoked_at: None,
            serials: vec![],
            cert_not_after: NOW + DAY,
            last_seen: Some(NOW),
            boot_id: String::new(),
            remote_addr: "10.0.0.1:4000".into(),
            supervision: Supervision {
                connectivity: Connectivity::Online,
                connectivity_since: Some(NOW - DAY),
                health: Health::Healthy,
                health_since: Some(NOW - DAY),
                ..Supervision::default()
            },
            config: Default::default(),
            rotation_requested: None,
            reenroll: None,
            trust_bundle_digest: String::new(),
        },
        online: true,
        last_seen: Some(NOW),
        summary: None,
        remote_addr: "10.0.0.1:4000".into(),
        conditions_observed_at: Some(NOW),
    }
}

fn offline(name: &str, pool: &str, ago: u64) -> NodeView {
    let mut node = online(name, pool);
    let since = NOW - Duration::from_secs(ago);
    node.online = false;
    node.record.supervision.connectivity = Connectivity::Offline;
    node.record.supervision.connectivity_since = Some(since);
    node.record.supervision.health = Health::Unknown;
    node.last_seen = Some(since - Duration::from_secs(40));
    node
}

fn names(alerts: &NodeAlerts) -> Vec<(String, String)> {
    alerts
        .firing
        .iter()
        .map(|a| {
            let subject = ["node", "pool"]
                .iter()
                .find_map(|k| a.labels.get(*k))
                .cloned()
                .unwrap_or_default();
            (a.name().to_string(), subject)
        })
        .collect()
}

fn many(
    prefix: &str,
    pool: &str,
    count: usize,
    make: impl Fn(&str, &str) -> NodeView,
) -> Vec<NodeView> {
    (0..count)
        .map(|i| make(&format!("{prefix}-{i:02}"), pool))
        .collect()
}

#[test]
fn an_offline_node_fires_once_the_grouping_window_has_passed() {
    let early = evaluate(&[offline("n1", "workers", 5)], &settings(), NOW);
    assert!(early.firing.is_empty(), "held back within the window");
    assert_eq!(early.next_due, Some(NOW + Duration::from_secs(6)));

    let due = evaluate(&[offline("n1", "workers", 11)], &settings(), NOW);
    let alert = &due.firing[0];
    assert_eq!(alert.name(), NODE_OFFLINE);
    assert_eq!(alert.labels["node"], "n1");
    assert_eq!(alert.labels["pool"], "workers");
    assert_eq!(alert.labels["severity"], "critical");
    assert_eq!(alert.labels["fleet"], "prod");
    assert_eq!(alert.starts_at, NOW - Duration::from_secs(11));
    let description = &alert.annotations["description"];
    assert!(
        description.contains("offline since 2025-03-01T11:59:49Z"),
        "{description}"
    );
    assert!(description.contains("grace period of 40s"), "{description}");
}

#[test]
fn nodes_in_maintenance_and_revoked_nodes_raise_nothing() {
    let mut resting = offline("resting", "workers", 60);
    resting.record.supervision.maintenance = Some(MaintenanceRecord {
        by: "operator:ops".into(),
        reason: "disk swap".into(),
        since: NOW - DAY,
    });
    resting.record.cert_not_after = NOW;
    let mut revoked = offline("revoked", "workers", 60);
    revoked.record.state = NodeState::Revoked;

    let alerts = evaluate(&[resting, revoked], &settings(), NOW);
    assert!(alerts.firing.is_empty(), "{:?}", alerts.firing);
}

#[test]
fn more_offline_nodes_than_the_threshold_in_a_pool_fire_one_pool_alert_listing_fifty() {
    // Gone one by one, a minute apart: a storm in the pool, not a burst.
    let mut nodes: Vec<NodeView> = (0..60)
        .map(|i| offline(&format!("w-{i:02}"), "workers", 3600 - i * 60))
        .collect();
    nodes.push(offline("lone", "db", 600));
    nodes.extend(many("ok", "workers", 3, online));

    let alerts = evaluate(&nodes, &settings(), NOW);

    assert_eq!(
        names(&alerts),
        vec![
            (NODE_OFFLINE.into(), "lone".into()),
            (POOL_NODES_OFFLINE.into(), "workers".into())
        ]
    );
    let storm = alerts
        .firing
        .iter()
        .find(|a| a.name() == POOL_NODES_OFFLINE)
        .unwrap();
    assert_eq!(
        storm.starts_at,
        NOW - Duration::from_secs(3600 - 5 * 60),
        "sixth node"
    );
    let description = &storm.annotations["description"];
    assert!(description.contains("w-00, w-01"), "{description}");
    assert!(description.contains("w-49 and 10 more"), "{description}");
    assert!(!description.contains("w-50"), "{description}");
    assert_eq!(
        storm.annotations["summary"],
        "60 nodes of pool workers are offline"
    );
}

#[test]
fn losing_most_online_nodes_at_once_fires_one_manager_alert_and_no_offline_alerts() {
    let mut nodes = many("a", "workers", 5, |n, p| offline(n, p, 20));
    nodes.extend(many("b", "db", 4, |n, p| offline(n, p, 15)));
    nodes.extend(many("up", "db", 3, online));
    nodes.push(offline("long-gone", "db", 3600));

    let alerts = evaluate(&nodes, &settings(), NOW);

    assert_eq!(
        names(&alerts),
        vec![
            (MANAGER_LOST_MOST_AGENTS.into(), String::new()),
            (NODE_OFFLINE.into(), "long-gone".into())
        ]
    );
    let lost = &alerts.firing[0];
    assert_eq!(lost.labels["severity"], "critical");
    assert_eq!(lost.starts_at, NOW - Duration::from_secs(20));
    assert_eq!(
        lost.annotations["summary"],
        "the manager lost contact with 9 of its 12 online nodes at once"
    );
}

#[test]
fn losing_exactly_half_at_once_is_a_pool_storm_not_a_lost_manager() {
    let mut nodes = many("a", "workers", 7, |n, p| offline(n, p, 20));
    nodes.extend(many("up", "steady", 7, online));

    let alerts = evaluate(&nodes, &settings(), NOW);

    assert_eq!(
        names(&alerts),
        vec![(POOL_NODES_OFFLINE.into(), "workers".into())]
    );
}

#[test]
fn a_storm_still_inside_the_grouping_window_sends_nothing_yet() {
    let mut nodes = many("a", "workers", 7, |n, p| offline(n, p, 3));
    nodes.extend(many("up", "steady", 8, online));

    let alerts = evaluate(&nodes, &settings(), NOW);

    assert!(alerts.firing.is_empty(), "{:?}", names(&alerts));
    assert_eq!(alerts.next_due, Some(NOW + Duration::from_secs(8)));
}

#[test]
fn each_failing_condition_of_an_online_node_fires_with_its_severity() {
    let mut node = online("n1", "workers");
    let condition = |kind: &str, subject: &str, status, severity| ConditionRecord {
        kind: kind.into(),
        subject: subject.into(),
        status,
        severity,
        reason: "Full".into(),
        message: "97 % used".into(),
        last_transition: Some(NOW - Duration::from_secs(300)),
        last_observed: Some(NOW),
    };
    node.record.supervision.health = Health::Degraded;
    node.record.supervision.conditions = vec![
        condition(
            "DiskPressure",
            "/var",
            ConditionStatus::Problem,
            Severity::Critical,
        ),
        condition(
            "ClockSynced",
            "",
            ConditionStatus::Problem,
            Severity::Warning,
        ),
        condition("KubeletHealthy", "", ConditionStatus::Ok, Severity::None),
        condition("Swap", "", ConditionStatus::Problem, Severity::Info),
    ];
    let mut gone = node.clone();
    gone.record.name = "gone".into();
    gone.record.supervision.connectivity = Connectivity::Offline;
    gone.record.supervision.connectivity_since = Some(NOW);

    let alerts = evaluate(&[node, gone], &settings(), NOW);

    let degraded: Vec<(&str, &str)> = alerts
        .firing
        .iter()
        .map(|a| {
            (
                a.labels["condition"].as_str(),
                a.labels["severity"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        degraded,
        vec![
            ("DiskPressure:/var", "critical"),
            ("ClockSynced", "warning")
        ]
    );
    let disk = &alerts.firing[0];
    assert_eq!(disk.name(), NODE_DEGRADED);
    assert_eq!(disk.starts_at, NOW - Duration::from_secs(300));
    let description = &disk.annotations["description"];
    assert!(
        description.contains("since 2025-03-01T11:55:00Z: Full: 97 % used"),
        "{description}"
    );
}

#[test]
fn a_certificate_warns_past_the_renewal_window_and_is_critical_in_its_last_twenty_fourth() {
    let at = |left: u64| {
        let mut node = online("n1", "workers");
        node.record.cert_not_after = NOW + Duration::from_secs(left);
        let alerts = evaluate(&[node], &settings(), NOW);
        alerts
            .firing
            .first()
            .map(|a| (a.labels["severity"].clone(), a.starts_at))
    };
    let not_after = |left: u64| NOW + Duration::from_secs(left);

    assert_eq!(at(5 * 3600), None, "still inside the renewal window");
    let warning = Some(("warning".into(), not_after(4 * 3600) - DAY / 5));
    assert_eq!(at(4 * 3600), warning);
    let critical = Some(("critical".into(), not_after(1800) - DAY / 24));
    assert_eq!(at(1800), critical);

    let mut expired = online("n1", "workers");
    expired.record.cert_not_after = NOW - DAY;
    let alerts = evaluate(&[expired], &settings(), NOW);
    assert!(alerts.firing[0].annotations["summary"].ends_with("has expired"));
}

#[test]
fn largest_burst_finds_the_widest_run_within_the_window() {
    let t = |s: i64| NOW + time::Duration::seconds(s);
    let times = [t(0), t(30), t(31), t(33), t(45), t(46)];

    assert_eq!(largest_burst(&times, Duration::from_secs(3)), 1..4);
    assert_eq!(largest_burst(&[], Duration::from_secs(3)), 0..0);
}
