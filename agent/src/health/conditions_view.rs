//! The node conditions as `opi-agent health` prints them.

use opi_proto::v1::Condition;
use serde::Serialize;

use crate::conditions::{from_timestamp, severity_name, status_name};
use crate::output::timestamp;

/// Column headers of the conditions table.
pub const HEADERS: [&str; 6] = ["TYPE", "SUBJECT", "STATUS", "SEVERITY", "SINCE", "MESSAGE"];
/// Shown in a table cell that has no value.
pub const EMPTY_CELL: &str = "-";

/// One condition as printed.
#[derive(Debug, Serialize)]
pub struct ConditionView {
    /// The condition type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its subject; empty when node-wide.
    pub subject: String,
    /// `OK`, `PROBLEM` or `UNKNOWN`.
    pub status: String,
    /// `info`, `warning`, `critical`, or empty.
    pub severity: String,
    /// The CamelCase reason.
    pub reason: String,
    /// What was seen.
    pub message: String,
    /// When the status last changed, RFC 3339.
    pub last_transition: String,
    /// When the check ran, RFC 3339.
    pub last_observed: String,
}

impl From<&Condition> for ConditionView {
    fn from(condition: &Condition) -> Self {
        let time = |at: Option<&prost_types::Timestamp>| {
            at.and_then(from_timestamp)
                .map(timestamp)
                .unwrap_or_default()
        };
        Self {
            kind: condition.r#type.clone(),
            subject: condition.subject.clone(),
            status: status_name(condition.status()).to_string(),
            severity: severity_name(condition.severity()).to_string(),
            reason: condition.reason.clone(),
            message: condition.message.clone(),
            last_transition: time(condition.last_transition.as_ref()),
            last_observed: time(condition.last_observed.as_ref()),
        }
    }
}

impl ConditionView {
    /// The cells of this condition's table row, in [`HEADERS`] order.
    pub fn cells(&self) -> Vec<String> {
        let or_empty = |text: &str| match text {
            "" => EMPTY_CELL.to_string(),
            text => text.to_string(),
        };
        vec![
            self.kind.clone(),
            or_empty(&self.subject),
            self.status.clone(),
            or_empty(&self.severity),
            or_empty(&self.last_transition),
            self.message.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::transitions::condition;
    use crate::conditions::Observation;
    use opi_proto::v1::Severity;
    use time::macros::datetime;

    #[test]
    fn a_condition_prints_with_its_names_and_times() {
        let observation = Observation::problem(
            "DiskPressure",
            "/var",
            Severity::Critical,
            "DiskAlmostFull",
            "/var is 97.0 % full".into(),
        );
        let since = datetime!(2025-05-01 10:00 UTC);
        let now = datetime!(2025-05-01 10:05 UTC);
        let view = ConditionView::from(&condition(&observation, since, now));
        assert_eq!(
            view.cells(),
            [
                "DiskPressure",
                "/var",
                "PROBLEM",
                "critical",
                "2025-05-01T10:00:00Z",
                "/var is 97.0 % full"
            ]
        );
        assert_eq!(view.last_observed, "2025-05-01T10:05:00Z");
    }

    #[test]
    fn node_wide_fine_conditions_show_placeholders() {
        let observation = Observation::ok("MemoryPressure", "", "MemoryAvailable", "ok".into());
        let at = datetime!(2025-05-01 10:00 UTC);
        let cells = ConditionView::from(&condition(&observation, at, at)).cells();
        assert_eq!(
            (cells[1].as_str(), cells[3].as_str()),
            (EMPTY_CELL, EMPTY_CELL)
        );
    }
}
