//! Evidence as the agent sends it on its stream, with every text bounded so that one report
//! stays far below the stream's message limit whatever a file holds.

use opi_proto::v1 as pb;
use prost::Message;
use time::OffsetDateTime;

use super::observe::Source;
use super::{Evidence, ItemEvidence, RuleEvidence, Status};
use crate::conditions::to_timestamp;

/// Longest text kept in one field; longer ones are cut and end with `…`.
pub const MAX_TEXT: usize = 160;
/// Largest report the agent sends.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;

/// `evidence` as a stream message body, at most [`MAX_REPORT_BYTES`] long: past it, the
/// descriptions and notes of items are left out (the manager knows them from the baseline).
pub fn report(evidence: &Evidence) -> pb::ComplianceReport {
    let mut report = pb::ComplianceReport {
        baseline: evidence.baseline.clone(),
        level: evidence.level.to_string(),
        observed_at: parse_time(&evidence.observed_at).map(to_timestamp),
        applied_at: parse_time(&evidence.applied_at).map(to_timestamp),
        profile_sha256: evidence.profile_sha256.clone(),
        live: evidence.live,
        rules: evidence.rules.iter().map(rule).collect(),
    };
    if report.encoded_len() > MAX_REPORT_BYTES {
        for item in report.rules.iter_mut().flat_map(|r| r.items.iter_mut()) {
            item.what.clear();
            item.note.clear();
        }
    }
    report
}

/// The proto status of `status`.
pub fn status(status: Status) -> pb::ComplianceStatus {
    match status {
        Status::Pass => pb::ComplianceStatus::Pass,
        Status::Fail => pb::ComplianceStatus::Fail,
        Status::Exception => pb::ComplianceStatus::Exception,
        Status::ExpiredException => pb::ComplianceStatus::ExpiredException,
        Status::OutOfScope => pb::ComplianceStatus::OutOfScope,
    }
}

fn rule(rule: &RuleEvidence) -> pb::RuleEvidence {
    pb::RuleEvidence {
        rule: rule.number.clone(),
        title: bounded(&rule.title),
        level: rule.level.to_string(),
        status: status(rule.status).into(),
        reason: bounded(rule.reason.as_deref().unwrap_or_default()),
        items: rule.items.iter().map(item).collect(),
    }
}

fn item(item: &ItemEvidence) -> pb::ItemEvidence {
    let (deviation_guide, deviation_reason) = item
        .deviation
        .as_ref()
        .map(|d| (bounded(&d.guide), bounded(&d.reason)))
        .unwrap_or_default();
    pb::ItemEvidence {
        item: bounded(&item.id),
        what: bounded(&item.what),
        expected: bounded(&item.expected),
        observed: bounded(&item.observed),
        source: match item.source {
            Source::Live => "live",
            Source::File => "file",
            Source::Metadata => "metadata",
        }
        .to_string(),
        status: status(item.status).into(),
        scope: item.scope.clone(),
        deviation_guide,
        deviation_reason,
        exception: item.exception.as_ref().map(|e| pb::ComplianceException {
            reason: bounded(&e.reason),
            approver: bounded(e.approver.as_deref().unwrap_or_default()),
            expires: e.expires.clone().unwrap_or_default(),
            path: bounded(&e.path),
        }),
        note: bounded(item.note.as_deref().unwrap_or_default()),
    }
}

/// `text` cut to [`MAX_TEXT`] characters.
fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}
