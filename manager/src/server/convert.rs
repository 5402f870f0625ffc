//! Conversions between records and wire messages.

use opi_proto::v1 as pb;
use time::OffsetDateTime;

use crate::fleet::NodeView;
use crate::records::{AuditRecord, Facts, NodeState, TokenRecord};
use crate::store::Revision;

/// A wire timestamp.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
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
    }
}
