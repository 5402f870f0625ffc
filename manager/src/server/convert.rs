//! Conversions between records and wire messages.

use opi_proto::v1 as pb;
use time::OffsetDateTime;

use crate::fleet::config_axis::{ApplyReport, Outcome};
use crate::fleet::NodeView;
use crate::records::{
    AuditRecord, ConditionRecord, ConditionStatus, ConfigRecord, EventRecord, Facts, GenerationId,
    Health, NodeState, ProfileRecord, Severity, TokenRecord,
};
use crate::store::Revision;

/// A wire timestamp.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    }
}

/// Most conditions one report may carry.
pub const MAX_CONDITIONS: usize = 256;
/// Longest condition message kept; longer ones are cut.
const MAX_MESSAGE: usize = 1024;

/// A wire timestamp as a time, if valid and set.
pub fn time_from(ts: prost_types::Timestamp) -> Option<OffsetDateTime> {
    if ts.seconds == 0 && ts.nanos == 0 {
        return None;
    }
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// Conditions of a report, checked: bounded count, named, with a known status.
pub fn conditions_from_proto(
    conditions: Vec<pb::Condition>,
) -> Result<Vec<ConditionRecord>, String> {
    if conditions.len() > MAX_CONDITIONS {
        return Err(format!(
            "{} conditions, more than the {MAX_CONDITIONS} allowed",
            conditions.len()
        ));
    }
    conditions.into_iter().map(condition_from_proto).collect()
}

fn condition_from_proto(c: pb::Condition) -> Result<ConditionRecord, String> {
    let valid_type = !c.r#type.is_empty()
        && c.r#type.len() <= 64
        && c.r#type.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid_type {
        return Err(format!(
            "condition type `{}` is not 1-64 letters and digits",
            c.r#type.escape_default()
        ));
    }
    if c.subject.len() > 256 {
        return Err(format!(
            "condition {} has a subject longer than 256 bytes",
            c.r#type
        ));
    }
    let status = match c.status() {
        pb::ConditionStatus::Ok => ConditionStatus::Ok,
        pb::ConditionStatus::Problem => ConditionStatus::Problem,
        pb::ConditionStatus::Unknown => ConditionStatus::Unknown,
        pb::ConditionStatus::Unspecified => {
            return Err(format!("condition {} has no status", c.r#type))
        }
    };
    let severity = severity_from_proto(c.severity());
    let mut message = c.message;
    if message.len() > MAX_MESSAGE {
        let cut = (0..=MAX_MESSAGE)
            .rev()
            .find(|i| message.is_char_boundary(*i))
            .unwrap_or(0);
        message.truncate(cut);
    }
    Ok(ConditionRecord {
        kind: c.r#type,
        subject: c.subject,
        status,
        severity,
        reason: c.reason.chars().take(64).collect(),
        message,
        last_transition: c.last_transition.and_then(time_from),
        last_observed: c.last_observed.and_then(time_from),
    })
}

fn condition_to_proto(c: &ConditionRecord) -> pb::Condition {
    let status = match c.status {
        ConditionStatus::Ok => pb::ConditionStatus::Ok,
        ConditionStatus::Problem => pb::ConditionStatus::Problem,
        ConditionStatus::Unknown => pb::ConditionStatus::Unknown,
    };
    pb::Condition {
        r#type: c.kind.clone(),
        subject: c.subject.clone(),
        status: status.into(),
        severity: severity_to_proto(c.severity).into(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition: c.last_transition.map(timestamp),
        last_observed: c.last_observed.map(timestamp),
    }
}

/// Severity as stored.
pub fn severity_from_proto(severity: pb::Severity) -> Severity {
    match severity {
        pb::Severity::Unspecified => Severity::None,
        pb::Severity::Info => Severity::Info,
        pb::Severity::Warning => Severity::Warning,
        pb::Severity::Critical => Severity::Critical,
    }
}

fn severity_to_proto(severity: Severity) -> pb::Severity {
    match severity {
        Severity::None => pb::Severity::Unspecified,
        Severity::Info => pb::Severity::Info,
        Severity::Warning => pb::Severity::Warning,
        Severity::Critical => pb::Severity::Critical,
    }
}

/// An event on the wire.
pub fn event_to_proto(e: &EventRecord) -> pb::Event {
    pb::Event {
        revision: e.revision,
        time: Some(timestamp(e.time)),
        node: e.node.clone(),
        pool: e.pool.clone(),
        kind: e.kind.clone(),
        subject: e.subject.clone(),
        from: e.from.clone(),
        to: e.to.clone(),
        reason: e.reason.clone(),
        message: e.message.clone(),
        severity: severity_to_proto(e.severity).into(),
    }
}

/// Facts as stored.
pub fn facts_from_proto(facts: pb::NodeFacts) -> Facts {
    Facts {
        hostname: facts.hostname,
        os: facts.os,
        kernel: facts.kernel,
        machine_id: facts.machine_id,
        arch: facts.arch,
        agent_version: facts.agent_version,
    }
}

fn facts_to_proto(facts: &Facts) -> pb::NodeFacts {
    pb::NodeFacts {
        hostname: facts.hostname.clone(),
        os: facts.os.clone(),
        kernel: facts.kernel.clone(),
        machine_id: facts.machine_id.clone(),
        arch: facts.arch.clone(),
        agent_version: facts.agent_version.clone(),
    }
}

/// A node as operators see it.
pub fn node_to_proto(view: &NodeView) -> pb::Node {
    let record = &view.record;
    let connectivity = if view.online {
        pb::Connectivity::Online
    } else {
        pb::Connectivity::Offline
    };
    let state = match record.state {
        NodeState::Active => pb::NodeState::Active,
        NodeState::Revoked => pb::NodeState::Revoked,
    };
    pb::Node {
        name: record.name.clone(),
        pool: record.pool.clone(),
        labels: record.labels.clone().into_iter().collect(),
        connectivity: connectivity.into(),
        state: state.into(),
        last_seen: view.last_seen.map(timestamp),
        enrolled_at: Some(timestamp(record.enrolled_at)),
        cert_not_after: Some(timestamp(record.cert_not_after)),
        facts: Some(facts_to_proto(&record.facts)),
        summary: view.summary,
        boot_id: record.boot_id.clone(),
        remote_addr: view.remote_addr.clone(),
        revoked_reason: record.revoked_reason.clone().unwrap_or_default(),
        token_id: record.token_id.clone(),
        health: health_to_proto(record.supervision.health).into(),
        conditions: record
            .supervision
            .conditions
            .iter()
            .map(condition_to_proto)
            .collect(),
        conditions_observed_at: view.conditions_observed_at.map(timestamp),
        maintenance: record
            .supervision
            .maintenance
            .as_ref()
            .map(|m| pb::Maintenance {
                on: true,
                by: m.by.clone(),
                reason: m.reason.clone(),
                since: Some(timestamp(m.since)),
            }),
        connectivity_since: record.supervision.connectivity_since.map(timestamp),
        health_since: record.supervision.health_since.map(timestamp),
        config: Some(config_to_proto(&record.config)),
    }
}

fn config_to_proto(config: &ConfigRecord) -> pb::ConfigState {
    pb::ConfigState {
        state: config.status.name().into(),
        desired_generation: config.desired.map_or(0, |d| d.generation),
        applied_generation: config.applied.map_or(0, |a| a.generation),
        reason: config.reason.clone(),
        since: config.since.map(timestamp),
        drifted: config.drifted.clone(),
        reboot_required: config.reboot_required,
    }
}

/// A profile generation for operators: `yaml` is the redacted document.
pub fn profile_to_proto(profile: &ProfileRecord, yaml: String, changed: bool) -> pb::ProfileInfo {
    pb::ProfileInfo {
        pool: profile.pool.clone(),
        generation: profile.generation,
        epoch: profile.epoch,
        yaml,
        digest: profile.digest.clone(),
        created_at: Some(timestamp(profile.created_at)),
        created_by: profile.created_by.clone(),
        changed,
    }
}

/// Most items an apply report may list.
const MAX_REPORT_ITEMS: usize = 4096;

/// An agent's apply report, checked.
pub fn apply_report_from_proto(report: pb::ApplyReport) -> Result<ApplyReport, String> {
    let outcome = match pb::ApplyOutcome::try_from(report.outcome) {
        Ok(pb::ApplyOutcome::Applying) => Outcome::Applying,
        Ok(pb::ApplyOutcome::Applied) => Outcome::Applied,
        Ok(pb::ApplyOutcome::RolledBack) => Outcome::RolledBack,
        Ok(pb::ApplyOutcome::Refused) => Outcome::Refused,
        Ok(pb::ApplyOutcome::Drifted) => Outcome::Drifted,
        Ok(pb::ApplyOutcome::Unspecified) | Err(_) => {
            return Err(format!("unknown apply outcome {}", report.outcome))
        }
    };
    if report.generation == 0 {
        return Err("apply report names generation 0".into());
    }
    if report.changes.len() + report.drifted.len() > MAX_REPORT_ITEMS {
        return Err(format!(
            "apply report lists more than {MAX_REPORT_ITEMS} items"
        ));
    }
    Ok(ApplyReport {
        id: GenerationId {
            epoch: report.epoch,
            generation: report.generation,
        },
        outcome,
        reason: report.reason,
        changes: report.changes,
        drifted: report.drifted,
        reboot_required: report.reboot_required,
    })
}

fn health_to_proto(health: Health) -> pb::Health {
    match health {
        Health::Healthy => pb::Health::Healthy,
        Health::Degraded => pb::Health::Degraded,
        Health::Unknown => pb::Health::Unknown,
    }
}

/// A token without its secret.
pub fn token_to_proto(token: &TokenRecord) -> pb::Token {
    pb::Token {
        id: token.id.clone(),
        pool: token.pool.clone(),
        labels: token.labels.clone().into_iter().collect(),
        uses: token.uses,
        used: token.used,
        created_at: Some(timestamp(token.created_at)),
        expires_at: Some(timestamp(token.expires_at)),
        revoked: token.revoked,
        created_by: token.created_by.clone(),
        description: token.description.clone(),
        enrolled_nodes: token.enrollments.iter().map(|e| e.node.clone()).collect(),
    }
}

/// An audit entry with the store revision that committed it.
pub fn audit_to_proto(record: &AuditRecord, revision: Revision) -> pb::AuditEntry {
    pb::AuditEntry {
        revision,
        at: Some(timestamp(record.at)),
        actor: record.actor.clone(),
        action: record.action.clone(),
        subject: record.subject.clone(),
        outcome: record.outcome.clone(),
        detail: record.detail.clone(),
        remote_addr: record.remote_addr.clone(),
        seq: record.seq,
        prev_hash: record.prev_hash.clone(),
        hash: record.hash.clone(),
    }
}
