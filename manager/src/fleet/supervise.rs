//! The supervised axes of a node, as pure functions of its record and what memory knows:
//! connectivity (online, or offline after the grace period), health (healthy, degraded, or
//! unknown when offline or when the last report is stale) and conditions (from reports, with
//! flap damping). Every change pushes an event draft.

use std::time::Instant;

use time::OffsetDateTime;

use crate::events::{Draft, FlapDetector, FlapVerdict};
use crate::records::{
    ConditionRecord, ConditionStatus, Connectivity, Health, NodeRecord, Severity,
};

/// What the manager observes of a node now, besides its record.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    pub online: bool,
    /// The conditions were observed recently enough to be trusted.
    pub fresh: bool,
}

/// Health the node should have given its conditions and what is observed.
pub fn desired_health(record: &NodeRecord, observed: Observed, flaps: &FlapDetector) -> Health {
    if !observed.online || !observed.fresh {
        return Health::Unknown;
    }
    let degraded = record
        .supervision
        .conditions
        .iter()
        .any(|c| c.degrades() || flaps.is_flapping(&record.name, &c.key()));
    if degraded {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

/// Sets connectivity and health, pushing an event for each that changes.
pub fn apply_axes(
    record: &mut NodeRecord,
    observed: Observed,
    flaps: &FlapDetector,
    now: OffsetDateTime,
    drafts: &mut Vec<Draft>,
) {
    let connectivity = if observed.online {
        Connectivity::Online
    } else {
        Connectivity::Offline
    };
    let sup = &record.supervision;
    if sup.connectivity != connectivity {
        let (reason, severity) = match connectivity {
            Connectivity::Online => ("SessionOpen", Severity::Info),
            Connectivity::Offline => ("NoContact", Severity::Critical),
        };
        drafts.push(
            Draft::new(
                &record.name,
                &record.pool,
                "connectivity",
                name_of(sup.connectivity),
                name_of(connectivity),
            )
            .because(reason, connectivity_message(record, connectivity))
            .severity(severity),
        );
        record.supervision.connectivity = connectivity;
        record.supervision.connectivity_since = Some(now);
    }

    let health = desired_health(record, observed, flaps);
    let sup = &record.supervision;
    if sup.health != health {
        let (reason, message, severity) = health_cause(record, health, observed, flaps);
        drafts.push(
            Draft::new(
                &record.name,
                &record.pool,
                "health",
                health_name(sup.health),
                health_name(health),
            )
            .because(reason, message)
            .severity(severity),
        );
        record.supervision.health = health;
        record.supervision.health_since = Some(now);
    }
}

/// Replaces the node's conditions with a report, pushing condition events (damped when a
/// condition flaps).
pub fn apply_report(
    record: &mut NodeRecord,
    report: Vec<ConditionRecord>,
    observed_at: OffsetDateTime,
    flaps: &mut FlapDetector,
    now: Instant,
    drafts: &mut Vec<Draft>,
) {
    let previous = std::mem::take(&mut record.supervision.conditions);
    for condition in &report {
        let before = previous.iter().find(|c| c.key() == condition.key());
        let from = before.map(|c| status_name(c.status)).unwrap_or("none");
        let changed =
            before.is_none_or(|b| b.status != condition.status || b.severity != condition.severity);
        if changed && !(before.is_none() && condition.status == ConditionStatus::Ok) {
            push_condition(record, condition, from, flaps, now, drafts);
        }
    }
    for gone in previous
        .iter()
        .filter(|p| !report.iter().any(|c| c.key() == p.key()))
    {
        if gone.status != ConditionStatus::Ok {
            let draft = Draft::new(
                &record.name,
                &record.pool,
                "condition",
                status_name(gone.status),
                "none",
            )
            .subject(gone.key())
            .because(
                "NoLongerReported",
                format!("{} is no longer reported by the node", gone.key()),
            );
            drafts.push(draft);
        }
    }
    record.supervision.conditions = report;
    record.supervision.conditions_observed_at = Some(observed_at);
}

fn push_condition(
    record: &NodeRecord,
    condition: &ConditionRecord,
    from: &str,
    flaps: &mut FlapDetector,
    now: Instant,
    drafts: &mut Vec<Draft>,
) {
    let key = condition.key();
    let to = status_name(condition.status);
    let draft = Draft::new(&record.name, &record.pool, "condition", from, to)
        .subject(key.clone())
        .because(condition.reason.clone(), condition.message.clone())
        .severity(event_severity(condition));
    match flaps.on_change(&record.name, &key, from, to, now) {
        FlapVerdict::Emit => drafts.push(draft),
        FlapVerdict::StartFlapping { changes } => drafts.push(
            Draft::new(&record.name, &record.pool, "flapping", "stable", "flapping")
                .subject(key.clone())
                .because("Flapping", format!("{key} changed status {changes} times within 10m; further changes are held back until it is stable for 5m"))
                .severity(Severity::Warning),
        ),
        FlapVerdict::Suppress => {}
    }
}

/// Severity an event about `condition` carries: its own when a problem, info otherwise.
fn event_severity(condition: &ConditionRecord) -> Severity {
    match condition.status {
        ConditionStatus::Problem => condition.severity.max(Severity::Info),
        ConditionStatus::Unknown => Severity::Warning,
        ConditionStatus::Ok => Severity::Info,
    }
}

fn health_cause(
    record: &NodeRecord,
    health: Health,
    observed: Observed,
    flaps: &FlapDetector,
) -> (String, String, Severity) {
    match health {
        Health::Healthy => (
            "AllConditionsOk".into(),
            "every condition is ok".into(),
            Severity::Info,
        ),
        Health::Unknown if !observed.online => (
            "Offline".into(),
            "the node is offline; its last known conditions are kept with their age".into(),
            Severity::Warning,
        ),
        Health::Unknown => (
            "StaleReport".into(),
            "the node's last health report is older than the freshness limit".into(),
            Severity::Warning,
        ),
        Health::Degraded => {
            let bad: Vec<&ConditionRecord> = record
                .supervision
                .conditions
                .iter()
                .filter(|c| c.degrades() || flaps.is_flapping(&record.name, &c.key()))
                .collect();
            let severity = bad
                .iter()
                .map(|c| c.severity)
                .max()
                .unwrap_or(Severity::Warning)
                .max(Severity::Warning);
            let names: Vec<String> = bad.iter().map(|c| c.key()).collect();
            (
                "ConditionsFailing".into(),
                format!("failing: {}", names.join(", ")),
                severity,
            )
        }
    }
}

fn connectivity_message(record: &NodeRecord, connectivity: Connectivity) -> String {
    match connectivity {
        Connectivity::Online => format!("node {} has an open session", record.name),
        Connectivity::Offline => format!(
            "no contact with node {} for longer than the grace period",
            record.name
        ),
    }
}

/// Lowercase name of a connectivity.
pub fn name_of(connectivity: Connectivity) -> &'static str {
    match connectivity {
        Connectivity::Online => "online",
        Connectivity::Offline => "offline",
    }
}

/// Lowercase name of a health.
pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Healthy => "healthy",
        Health::Degraded => "degraded",
        Health::Unknown => "unknown",
    }
}

/// Lowercase name of a condition status.
pub fn status_name(status: ConditionStatus) -> &'static str {
    match status {
        ConditionStatus::Ok => "ok",
        ConditionStatus::Problem => "problem",
        ConditionStatus::Unknown => "unknown",
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::records::{Facts, NodeState, Supervision};

    /// A node record with nothing set, for tests.
    pub(in crate::fleet) fn record() -> NodeRecord {
        NodeRecord {
            name: "n1".into(),
            pool: "p".into(),
            labels: Default::default(),
            facts: Facts::default(),
            enrolled_at: OffsetDateTime::now_utc(),
            token_id: "t".into(),
            state: NodeState::Active,
            revoked_reason: None,
            revoked_at: None,
            serials: vec![],
            cert_not_after: OffsetDateTime::now_utc(),
            last_seen: None,
            boot_id: String::new(),
            remote_addr: String::new(),
            supervision: Supervision::default(),
            config: Default::default(),
            rotation_requested: None,
            reenroll: None,
            trust_bundle_digest: String::new(),
        }
    }

    /// A condition of `kind`, for tests.
    pub(in crate::fleet) fn condition(
        kind: &str,
        status: ConditionStatus,
        severity: Severity,
    ) -> ConditionRecord {
        ConditionRecord {
            kind: kind.into(),
            subject: String::new(),
            status,
            severity,
            reason: "R".into(),
            message: "m".into(),
            last_transition: None,
            last_observed: None,
        }
    }

    const ONLINE: Observed = Observed {
        online: true,
        fresh: true,
    };

    #[test]
    fn first_report_emits_only_problems_and_sets_axes() {
        let mut node = record();
        let mut flaps = FlapDetector::default();
        let mut drafts = Vec::new();
        let report = vec![
            condition("KubeletHealthy", ConditionStatus::Ok, Severity::None),
            condition("DiskPressure", ConditionStatus::Problem, Severity::Critical),
        ];
        let now = OffsetDateTime::now_utc();
        apply_report(
            &mut node,
            report,
            now,
            &mut flaps,
            Instant::now(),
            &mut drafts,
        );
        apply_axes(&mut node, ONLINE, &flaps, now, &mut drafts);
        let kinds: Vec<_> = drafts
            .iter()
            .map(|d| (d.kind, d.subject.as_str(), d.to.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("condition", "DiskPressure", "problem"),
                ("connectivity", "", "online"),
                ("health", "", "degraded")
            ]
        );
        assert_eq!(drafts[2].severity, Severity::Critical);
    }

    #[test]
    fn unchanged_report_emits_nothing() {
        let mut node = record();
        let mut flaps = FlapDetector::default();
        let report = vec![condition(
            "DiskPressure",
            ConditionStatus::Problem,
            Severity::Warning,
        )];
        let now = OffsetDateTime::now_utc();
        let mut drafts = Vec::new();
        apply_report(
            &mut node,
            report.clone(),
            now,
            &mut flaps,
            Instant::now(),
            &mut drafts,
        );
        apply_axes(&mut node, ONLINE, &flaps, now, &mut drafts);
        drafts.clear();
        apply_report(
            &mut node,
            report,
            now,
            &mut flaps,
            Instant::now(),
            &mut drafts,
        );
        apply_axes(&mut node, ONLINE, &flaps, now, &mut drafts);
        assert!(drafts.is_empty(), "{drafts:?}");
    }

    #[test]
    fn offline_or_stale_node_has_unknown_health_but_keeps_its_conditions() {
        let mut node = record();
        let flaps = FlapDetector::default();
        node.supervision.conditions = vec![condition(
            "DiskPressure",
            ConditionStatus::Problem,
            Severity::Critical,
        )];
        assert_eq!(
            desired_health(
                &node,
                Observed {
                    online: false,
                    fresh: true
                },
                &flaps
            ),
            Health::Unknown
        );
        assert_eq!(
            desired_health(
                &node,
                Observed {
                    online: true,
                    fresh: false
                },
                &flaps
            ),
            Health::Unknown
        );
        node.supervision.connectivity = Connectivity::Online;
        node.supervision.health = Health::Degraded;
        let mut drafts = Vec::new();
        apply_axes(
            &mut node,
            Observed {
                online: false,
                fresh: true,
            },
            &flaps,
            OffsetDateTime::now_utc(),
            &mut drafts,
        );
        assert_eq!(node.supervision.conditions.len(), 1);
        assert_eq!(drafts.last().unwrap().reason, "Offline");
    }

    #[test]
    fn flapping_condition_is_damped_and_counts_as_a_problem() {
        let mut node = record();
        let mut flaps = FlapDetector::default();
        let mut drafts = Vec::new();
        let start = Instant::now();
        let now = OffsetDateTime::now_utc();
        for i in 0..10u32 {
            let status = if i.is_multiple_of(2) {
                ConditionStatus::Problem
            } else {
                ConditionStatus::Ok
            };
            let report = vec![condition("ClockUnsynchronised", status, Severity::Warning)];
            apply_report(&mut node, report, now, &mut flaps, start, &mut drafts);
        }
        let condition_events = drafts.iter().filter(|d| d.kind == "condition").count();
        let flapping_events = drafts.iter().filter(|d| d.kind == "flapping").count();
        assert_eq!((condition_events, flapping_events), (4, 1), "{drafts:?}");
        assert_eq!(
            desired_health(&node, ONLINE, &flaps),
            Health::Degraded,
            "ends ok but flapping"
        );
    }
}
