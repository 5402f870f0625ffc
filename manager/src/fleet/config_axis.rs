//! The config axis of a node, as pure functions of its record and what its agent reports:
//! none (no profile for its pool), applying, in-sync, failed or drifted. Every change of
//! state pushes an event draft of kind `config`.

use time::OffsetDateTime;

use crate::events::Draft;
use crate::records::{ConfigStatus, GenerationId, NodeRecord, Severity};

/// What an agent reported of one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    pub id: GenerationId,
    pub outcome: Outcome,
    pub reason: String,
    pub changes: Vec<String>,
    pub drifted: Vec<String>,
    pub reboot_required: bool,
}

/// What became of a generation on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applying,
    Applied,
    RolledBack,
    Refused,
    Drifted,
}

/// The node should now run `desired`.
pub fn on_target(
    record: &mut NodeRecord,
    desired: GenerationId,
    now: OffsetDateTime,
    drafts: &mut Vec<Draft>,
) {
    record.config.desired = Some(desired);
    if record.config.applied == Some(desired) {
        return;
    }
    let message = format!("generation {} waits to be applied", desired.generation);
    set_status(
        record,
        ConfigStatus::Applying,
        "NewGeneration",
        message,
        now,
        drafts,
    );
}

/// The agent said hello with the generation it runs.
pub fn on_hello(
    record: &mut NodeRecord,
    applied: Option<GenerationId>,
    now: OffsetDateTime,
    drafts: &mut Vec<Draft>,
) {
    if applied.is_some() {
        record.config.applied = applied;
    }
    let config = &record.config;
    let Some(desired) = config.desired else {
        return;
    };
    let in_sync = config.applied == Some(desired);
    match config.status {
        ConfigStatus::Applying | ConfigStatus::None if in_sync => {
            let message = format!("node runs generation {}", desired.generation);
            set_status(
                record,
                ConfigStatus::InSync,
                "Applied",
                message,
                now,
                drafts,
            );
        }
        ConfigStatus::InSync if !in_sync => {
            let message = format!("node does not run generation {}", desired.generation);
            set_status(
                record,
                ConfigStatus::Applying,
                "NotApplied",
                message,
                now,
                drafts,
            );
        }
        _ => {}
    }
}

/// The agent reported what became of a generation. Reports about a generation the node is
/// no longer meant to run change nothing but what it applied.
pub fn on_report(
    record: &mut NodeRecord,
    report: &ApplyReport,
    now: OffsetDateTime,
    drafts: &mut Vec<Draft>,
) {
    let desired = record.config.desired;
    let current = desired == Some(report.id);
    let generation = report.id.generation;
    match report.outcome {
        Outcome::Applying if current => {
            let message = format!("node is applying generation {generation}");
            set_status(
                record,
                ConfigStatus::Applying,
                "Applying",
                message,
                now,
                drafts,
            );
        }
        Outcome::Applied => {
            record.config.applied = Some(report.id);
            record.config.reboot_required = report.reboot_required;
            record.config.drifted.clear();
            if current {
                let message = applied_message(report);
                set_status(
                    record,
                    ConfigStatus::InSync,
                    "Applied",
                    message,
                    now,
                    drafts,
                );
            }
        }
        Outcome::RolledBack | Outcome::Refused if current => {
            let reason = match report.outcome {
                Outcome::RolledBack => "RolledBack",
                _ => "Refused",
            };
            let message = format!("generation {generation}: {}", report.reason);
            set_status(record, ConfigStatus::Failed, reason, message, now, drafts);
        }
        Outcome::Drifted if record.config.applied == Some(report.id) => {
            record.config.drifted = report.drifted.clone();
            let message = format!("drifted from generation {generation}: {}", report.reason);
            set_status(
                record,
                ConfigStatus::Drifted,
                "Drifted",
                message,
                now,
                drafts,
            );
        }
        _ => {}
    }
}

/// What an applied report says, for the event.
fn applied_message(report: &ApplyReport) -> String {
    let generation = report.id.generation;
    let mut message = match report.changes.len() {
        0 => format!("generation {generation} applied, nothing to change"),
        n => format!("generation {generation} applied, {n} change(s)"),
    };
    if report.reboot_required {
        message.push_str("; reboot required for reboot-scoped settings");
    }
    message
}

/// Moves the axis to `status`, with an event when it changes.
fn set_status(
    record: &mut NodeRecord,
    status: ConfigStatus,
    reason: &str,
    message: String,
    now: OffsetDateTime,
    drafts: &mut Vec<Draft>,
) {
    let previous = record.config.status;
    record.config.reason = message.clone();
    if previous == status {
        return;
    }
    let severity = match status {
        ConfigStatus::Failed | ConfigStatus::Drifted => Severity::Warning,
        _ => Severity::Info,
    };
    let subject = record
        .config
        .desired
        .map(|d| format!("generation {}", d.generation))
        .unwrap_or_default();
    drafts.push(
        Draft::new(
            &record.name,
            &record.pool,
            "config",
            previous.name(),
            status.name(),
        )
        .subject(subject)
        .because(reason, message)
        .severity(severity),
    );
    record.config.status = status;
    record.config.since = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Facts, NodeState, Supervision};

    fn record() -> NodeRecord {
        NodeRecord {
            name: "n1".into(),
            pool: "workers".into(),
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

    fn id(generation: u64) -> GenerationId {
        GenerationId {
            epoch: 1,
            generation,
        }
    }

    fn report(generation: u64, outcome: Outcome) -> ApplyReport {
        ApplyReport {
            id: id(generation),
            outcome,
            reason: "containerd did not answer within 30s".into(),
            changes: vec!["/etc/containerd/config.toml".into()],
            drifted: vec![],
            reboot_required: false,
        }
    }

    fn states(drafts: &[Draft]) -> Vec<(String, String)> {
        drafts
            .iter()
            .map(|d| (d.from.clone(), d.to.clone()))
            .collect()
    }

    #[test]
    fn target_then_applied_goes_applying_then_in_sync() {
        let mut node = record();
        let mut drafts = Vec::new();
        let now = OffsetDateTime::now_utc();
        on_target(&mut node, id(3), now, &mut drafts);
        on_report(&mut node, &report(3, Outcome::Applying), now, &mut drafts);
        on_report(&mut node, &report(3, Outcome::Applied), now, &mut drafts);
        assert_eq!(
            states(&drafts),
            [
                ("none".into(), "applying".into()),
                ("applying".into(), "in-sync".into())
            ]
        );
        assert_eq!(node.config.applied, Some(id(3)));
        assert_eq!(drafts[1].subject, "generation 3");
    }

    #[test]
    fn rollback_of_the_desired_generation_fails_the_node_with_its_reason() {
        let mut node = record();
        let mut drafts = Vec::new();
        let now = OffsetDateTime::now_utc();
        on_target(&mut node, id(4), now, &mut drafts);
        on_report(&mut node, &report(4, Outcome::RolledBack), now, &mut drafts);
        assert_eq!(node.config.status, ConfigStatus::Failed);
        let last = drafts.last().expect("failed event");
        assert_eq!(
            (last.reason.as_str(), last.severity),
            ("RolledBack", Severity::Warning)
        );
        assert!(
            last.message.contains("containerd did not answer"),
            "{}",
            last.message
        );
        assert_eq!(node.config.applied, None);
    }

    #[test]
    fn reports_about_an_older_generation_do_not_change_the_state() {
        let mut node = record();
        let mut drafts = Vec::new();
        let now = OffsetDateTime::now_utc();
        on_target(&mut node, id(5), now, &mut drafts);
        on_report(&mut node, &report(4, Outcome::RolledBack), now, &mut drafts);
        on_report(&mut node, &report(4, Outcome::Applied), now, &mut drafts);
        assert_eq!(node.config.status, ConfigStatus::Applying);
        assert_eq!(node.config.applied, Some(id(4)));
        assert_eq!(drafts.len(), 1);
    }

    #[test]
    fn drift_of_the_applied_generation_then_reapply_returns_to_in_sync() {
        let mut node = record();
        let mut drafts = Vec::new();
        let now = OffsetDateTime::now_utc();
        on_target(&mut node, id(2), now, &mut drafts);
        on_report(&mut node, &report(2, Outcome::Applied), now, &mut drafts);
        let mut drift = report(2, Outcome::Drifted);
        drift.drifted = vec!["/etc/sysctl.d/90-opi.conf".into()];
        on_report(&mut node, &drift, now, &mut drafts);
        assert_eq!(node.config.status, ConfigStatus::Drifted);
        assert_eq!(node.config.drifted, drift.drifted);
        on_report(&mut node, &report(2, Outcome::Applied), now, &mut drafts);
        assert_eq!(node.config.status, ConfigStatus::InSync);
        assert!(node.config.drifted.is_empty());
    }

    #[test]
    fn hello_with_the_desired_generation_settles_a_lost_report() {
        let mut node = record();
        let mut drafts = Vec::new();
        let now = OffsetDateTime::now_utc();
        on_target(&mut node, id(6), now, &mut drafts);
        on_hello(&mut node, Some(id(6)), now, &mut drafts);
        assert_eq!(node.config.status, ConfigStatus::InSync);
        on_hello(&mut node, Some(id(5)), now, &mut drafts);
        assert_eq!(node.config.status, ConfigStatus::Applying);
    }
}
