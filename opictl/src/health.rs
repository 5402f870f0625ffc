//! How node health reads in every view: health and condition names, conditions with their
//! age, maintenance, and the short problem list of `opictl nodes`.

use std::cmp::Reverse;
use std::time::{Duration, SystemTime};

use opi_proto::v1::{Condition, ConditionStatus, Health, Maintenance, Severity};
use serde::Serialize;

use crate::output::{age, short_duration, timestamp, Table};

/// Problem types the PROBLEMS column of `opictl nodes` names before it only counts the rest.
pub const PROBLEMS_SHOWN: usize = 2;

/// The JSON shape of a condition.
#[derive(Debug, Serialize)]
pub struct ConditionView {
    /// What is checked (`DiskPressure`, `KubeletHealthy`…).
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is checked on (a mount point…); empty when node-wide.
    pub subject: String,
    /// `ok`, `problem`, or `unknown` when the check could not run.
    pub status: &'static str,
    /// `info`, `warning`, `critical`, or `null` when the status is ok.
    pub severity: Option<&'static str>,
    /// Machine-readable cause, CamelCase.
    pub reason: String,
    /// What the node saw, with the figures.
    pub message: String,
    /// When the status last changed, RFC 3339.
    pub last_transition: Option<String>,
    /// When the check last ran, RFC 3339.
    pub last_observed: Option<String>,
    /// Seconds since `last_transition` when opictl printed it; `null` when unknown.
    pub age_seconds: Option<u64>,
}

/// The JSON shape of a node's maintenance, present only while it is on.
#[derive(Debug, Serialize)]
pub struct MaintenanceView {
    /// Always `true`: a node out of maintenance has `"maintenance": null`.
    pub on: bool,
    /// Identity of the operator who started it.
    pub by: String,
    /// Why.
    pub reason: String,
    /// Since when, RFC 3339.
    pub since: Option<String>,
}

impl ConditionView {
    /// A condition as reported, its age taken at `now`.
    pub fn new(condition: Condition, now: SystemTime) -> Self {
        let status = condition_status_name(condition.status());
        let severity = severity_name(condition.severity());
        let age_seconds = age(condition.last_transition.as_ref(), now).map(|age| age.as_secs());
        Self {
            kind: condition.r#type,
            subject: condition.subject,
            status,
            severity,
            reason: condition.reason,
            message: condition.message,
            last_transition: timestamp(condition.last_transition.as_ref()),
            last_observed: timestamp(condition.last_observed.as_ref()),
            age_seconds,
        }
    }

    fn is_problem(&self) -> bool {
        self.status == condition_status_name(ConditionStatus::Problem)
    }

    /// Sort key putting problems first, the most severe first, then unknown, then ok.
    fn urgency(&self) -> (u8, Reverse<u8>) {
        let status = match self.status {
            "problem" => 0,
            "unknown" => 1,
            _ => 2,
        };
        (status, Reverse(severity_rank(self.severity)))
    }
}

impl MaintenanceView {
    /// The maintenance of a node, or `None` when it is not in maintenance.
    pub fn new(maintenance: Option<Maintenance>) -> Option<Self> {
        let maintenance = maintenance.filter(|m| m.on)?;
        Some(Self {
            on: true,
            by: maintenance.by,
            reason: maintenance.reason,
            since: timestamp(maintenance.since.as_ref()),
        })
    }
}

/// How a node's health reads in tables and JSON.
pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Healthy => "healthy",
        Health::Degraded => "degraded",
        Health::Unknown | Health::Unspecified => "unknown",
    }
}

/// How a condition's status reads in tables and JSON.
pub fn condition_status_name(status: ConditionStatus) -> &'static str {
    match status {
        ConditionStatus::Ok => "ok",
        ConditionStatus::Problem => "problem",
        ConditionStatus::Unknown | ConditionStatus::Unspecified => "unknown",
    }
}

/// How a severity reads in tables and JSON; `None` when unspecified.
pub fn severity_name(severity: Severity) -> Option<&'static str> {
    match severity {
        Severity::Info => Some("info"),
        Severity::Warning => Some("warning"),
        Severity::Critical => Some("critical"),
        Severity::Unspecified => None,
    }
}

/// How long a condition has had its status: `since 4m`; empty when unknown.
pub fn since(age_seconds: Option<u64>) -> String {
    age_seconds
        .map(|secs| format!("since {}", short_duration(Duration::from_secs(secs))))
        .unwrap_or_default()
}

/// The types of the conditions in problem, each once, the most severe first; past
/// [`PROBLEMS_SHOWN`] only their count: `DiskPressure,KubeletHealthy +1`. Empty when none.
pub fn problems(conditions: &[ConditionView]) -> String {
    let mut in_problem: Vec<&ConditionView> =
        conditions.iter().filter(|c| c.is_problem()).collect();
    in_problem.sort_by_key(|c| (Reverse(severity_rank(c.severity)), c.kind.as_str()));
    let mut kinds: Vec<&str> = Vec::new();
    for condition in in_problem {
        if !kinds.contains(&condition.kind.as_str()) {
            kinds.push(&condition.kind);
        }
    }

    let shown = kinds.len().min(PROBLEMS_SHOWN);
    let mut text = kinds[..shown].join(",");
    if kinds.len() > shown {
        text.push_str(&format!(" +{}", kinds.len() - shown));
    }
    text
}

/// One aligned line per condition, problems first: type, subject, status, severity, age and
/// what the node saw.
pub fn condition_lines(conditions: &[ConditionView]) -> String {
    let mut sorted: Vec<&ConditionView> = conditions.iter().collect();
    sorted.sort_by_key(|c| (c.urgency(), c.kind.as_str(), c.subject.as_str()));

    let mut table = Table::headless();
    for condition in sorted {
        let said = match condition.message.as_str() {
            "" => condition.reason.clone(),
            message => message.to_string(),
        };
        table.row(vec![
            condition.kind.clone(),
            condition.subject.clone(),
            condition.status.into(),
            condition.severity.unwrap_or_default().into(),
            since(condition.age_seconds),
            said,
        ]);
    }
    table.render()
}

/// Orders severities, unspecified lowest.
fn severity_rank(severity: Option<&str>) -> u8 {
    match severity {
        Some("critical") => 3,
        Some("warning") => 2,
        Some("info") => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn condition(kind: &str, status: ConditionStatus, severity: Severity) -> ConditionView {
        let condition = Condition {
            r#type: kind.into(),
            status: status as i32,
            severity: severity as i32,
            last_transition: Some(Timestamp {
                seconds: 1_000,
                nanos: 0,
            }),
            ..Condition::default()
        };
        ConditionView::new(condition, at(1_240))
    }

    #[test]
    fn condition_json_names_status_severity_and_age() {
        let disk = Condition {
            r#type: "DiskPressure".into(),
            subject: "/var".into(),
            status: ConditionStatus::Problem as i32,
            severity: Severity::Critical as i32,
            reason: "DiskAlmostFull".into(),
            message: "disk 96% used (threshold 95%)".into(),
            last_transition: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            last_observed: None,
        };

        let json = serde_json::to_value(ConditionView::new(disk, at(1_700_000_240))).unwrap();
        assert_eq!(json["type"], "DiskPressure");
        assert_eq!(json["subject"], "/var");
        assert_eq!(json["status"], "problem");
        assert_eq!(json["severity"], "critical");
        assert_eq!(json["reason"], "DiskAlmostFull");
        assert_eq!(json["message"], "disk 96% used (threshold 95%)");
        assert_eq!(json["last_transition"], "2023-11-14T22:13:20Z");
        assert!(json["last_observed"].is_null());
        assert_eq!(json["age_seconds"], 240);
    }

    #[test]
    fn ok_condition_has_null_severity_and_unset_transition_has_null_age() {
        let ok = Condition {
            r#type: "KubeletHealthy".into(),
            status: ConditionStatus::Ok as i32,
            ..Condition::default()
        };

        let json = serde_json::to_value(ConditionView::new(ok, at(10))).unwrap();
        assert_eq!(json["status"], "ok");
        assert!(json["severity"].is_null());
        assert!(json["age_seconds"].is_null());
    }

    #[test]
    fn condition_age_reads_as_since_and_a_short_duration() {
        assert_eq!(since(Some(0)), "since 0s");
        assert_eq!(since(Some(240)), "since 4m");
        assert_eq!(since(Some(2 * 3600 + 5 * 60)), "since 2h5m");
        assert_eq!(since(Some(3 * 86_400)), "since 3d");
        assert_eq!(since(None), "");
    }

    #[test]
    fn maintenance_is_absent_unless_on() {
        let off = Maintenance {
            on: false,
            by: "spiffe://prod/operator/alice".into(),
            ..Maintenance::default()
        };
        let on = Maintenance {
            on: true,
            by: "spiffe://prod/operator/alice".into(),
            reason: "kernel upgrade".into(),
            since: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        };

        assert!(MaintenanceView::new(None).is_none());
        assert!(MaintenanceView::new(Some(off)).is_none());
        let json = serde_json::to_value(MaintenanceView::new(Some(on))).unwrap();
        assert_eq!(json["on"], true);
        assert_eq!(json["reason"], "kernel upgrade");
        assert_eq!(json["since"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn problems_name_each_type_once_most_severe_first_then_count_the_rest() {
        let conditions = [
            condition(
                "ClockUnsynchronised",
                ConditionStatus::Problem,
                Severity::Warning,
            ),
            condition("DiskPressure", ConditionStatus::Problem, Severity::Warning),
            condition("DiskPressure", ConditionStatus::Problem, Severity::Critical),
            condition("KubeletHealthy", ConditionStatus::Ok, Severity::Unspecified),
            condition(
                "ContainerdHealthy",
                ConditionStatus::Problem,
                Severity::Critical,
            ),
        ];

        assert_eq!(problems(&conditions), "ContainerdHealthy,DiskPressure +1");
        assert_eq!(problems(&conditions[3..]), "ContainerdHealthy");
        assert_eq!(problems(&conditions[3..4]), "");
    }

    #[test]
    fn condition_lines_put_problems_first_with_their_age() {
        let mut disk = condition("DiskPressure", ConditionStatus::Problem, Severity::Critical);
        disk.subject = "/var".into();
        disk.message = "disk 96% used (threshold 95%)".into();
        let mut kubelet = condition("KubeletHealthy", ConditionStatus::Ok, Severity::Unspecified);
        kubelet.reason = "HealthzOk".into();

        let text = condition_lines(&[kubelet, disk]);
        assert_eq!(
            text,
            "DiskPressure     /var   problem   critical   since 4m   \
             disk 96% used (threshold 95%)\n\
             KubeletHealthy   -      ok        -          since 4m   HealthzOk\n"
        );
    }
}
