//! Values of the filter options of `opictl nodes` and `opictl watch`, checked while the command
//! line is parsed: a typing mistake exits with code 2 before any network wait, instead of
//! silently matching nothing.

use clap::ValueEnum;
use opi_proto::v1::Severity;

/// The longest condition type accepted; real ones are a few CamelCase words.
pub const MAX_CONDITION_TYPE: usize = 64;

/// `--health` of `opictl nodes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HealthFilter {
    /// Fresh report, no condition in problem
    Healthy,
    /// Fresh report with at least one condition in problem
    Degraded,
    /// No fresh report: offline, or the last report is too old
    Unknown,
}

/// `--connectivity` of `opictl nodes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConnectivityFilter {
    /// Connected now
    Online,
    /// Not heard from within the grace period
    Offline,
}

/// `--kind` of `opictl watch`: the kinds of event the protocol defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventKind {
    /// A node came online or went offline
    Connectivity,
    /// A node's health changed
    Health,
    /// A condition changed status
    Condition,
    /// A condition changes too often to page on each change
    Flapping,
    /// A node entered or left maintenance
    Maintenance,
    /// A node was enrolled, revoked, moved or deleted
    Lifecycle,
    /// A node's config axis changed: applying, in-sync, failed or drifted
    Config,
    /// A rollout moved a node along its waves, or changed state (node `-`: the whole pool)
    Rollout,
    /// A node's verdict on an ANSSI-BP-028 recommendation changed (pass, fail, exception)
    Compliance,
}

/// `--config-state` of `opictl nodes`: the state of the config axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConfigFilter {
    /// The node's pool has no profile
    None,
    /// The node has a newer generation to apply, or is applying it
    Applying,
    /// The node runs its pool's profile generation
    InSync,
    /// The node refused its generation or rolled it back
    Failed,
    /// What the applied generation owns changed on the node
    Drifted,
}

/// `--severity` of `opictl watch`: the least severe events to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SeverityFilter {
    /// Everything with a severity
    Info,
    /// Warnings and critical events
    Warning,
    /// Critical events only
    Critical,
}

impl SeverityFilter {
    /// The protocol's severity.
    pub fn severity(self) -> Severity {
        match self {
            SeverityFilter::Info => Severity::Info,
            SeverityFilter::Warning => Severity::Warning,
            SeverityFilter::Critical => Severity::Critical,
        }
    }
}

/// The name a value of the command line has on the wire, the same as on the command line.
pub fn wire_name<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .expect("filter enums skip no variant")
        .get_name()
        .to_string()
}

/// Checks a `--condition` value: a condition type as `opictl node show` prints it.
pub fn parse_condition_type(text: &str) -> Result<String, String> {
    let example = "types are CamelCase, as `opictl node show NAME` lists them (DiskPressure…)";
    if let Some((kind, _)) = text.split_once(':') {
        return Err(format!(
            "filter on the condition type alone (`{kind}`): a subject cannot be filtered on"
        ));
    }
    let mut chars = text.chars();
    let starts_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
    if !starts_upper || !chars.all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("`{text}` is not a condition type; {example}"));
    }
    if text.len() > MAX_CONDITION_TYPE {
        return Err(format!(
            "condition type is {} characters long, more than {MAX_CONDITION_TYPE}",
            text.len()
        ));
    }
    Ok(text.to_string())
}

/// Checks a `--since` value: an event revision, which starts at 1.
pub fn parse_revision(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("events start at revision 1; leave --since out to see only new events".into()),
        Ok(revision) => Ok(revision),
        Err(_) => Err(format!(
            "`{text}` is not an event revision: give the number printed as REV or `revision`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_go_on_the_wire_as_typed() {
        assert_eq!(wire_name(&HealthFilter::Degraded), "degraded");
        assert_eq!(wire_name(&ConnectivityFilter::Offline), "offline");
        assert_eq!(wire_name(&EventKind::Connectivity), "connectivity");
        assert_eq!(wire_name(&EventKind::Lifecycle), "lifecycle");
        assert_eq!(wire_name(&EventKind::Rollout), "rollout");
    }

    #[test]
    fn condition_type_accepts_camel_case_names() {
        assert_eq!(
            parse_condition_type("DiskPressure").unwrap(),
            "DiskPressure"
        );
        assert_eq!(
            parse_condition_type("Ipv4Forwarding").unwrap(),
            "Ipv4Forwarding"
        );
    }

    #[test]
    fn condition_type_refuses_lower_case_spaces_and_empty_text() {
        for text in ["diskpressure", "Disk Pressure", "", "Disk-Pressure", "Dïsk"] {
            let error = parse_condition_type(text).unwrap_err();
            assert!(error.contains("CamelCase"), "{text:?}: {error}");
        }
    }

    #[test]
    fn condition_type_with_a_subject_says_to_drop_the_subject() {
        let error = parse_condition_type("DiskPressure:/var").unwrap_err();

        assert!(error.contains("`DiskPressure`"), "{error}");
    }

    #[test]
    fn condition_type_refuses_overlong_names() {
        let long = format!("A{}", "b".repeat(MAX_CONDITION_TYPE));

        assert!(parse_condition_type(&long).is_err());
    }

    #[test]
    fn revision_zero_is_refused_with_a_hint() {
        assert!(parse_revision("0")
            .unwrap_err()
            .contains("leave --since out"));
        assert!(parse_revision("-3")
            .unwrap_err()
            .contains("not an event revision"));
        assert_eq!(parse_revision("1042"), Ok(1042));
    }
}
