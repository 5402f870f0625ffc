//! Compliance evidence as the manager stores it (`compliance/NODE/TIME`, JSON), checked when it
//! arrives from an agent and converted back for operators.

use opi_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Most recommendations a report may hold (the guide has 80).
pub const MAX_RULES: usize = 200;
/// Most items one recommendation may hold.
pub const MAX_ITEMS: usize = 200;

/// What evidence says of a recommendation or an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    Exception,
    ExpiredException,
    OutOfScope,
}

/// An exception as the profile wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRecord {
    pub reason: String,
    pub approver: String,
    /// `YYYY-MM-DD`, empty when it does not expire.
    pub expires: String,
    pub path: String,
}

/// One item, observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub item: String,
    pub what: String,
    pub expected: String,
    pub observed: String,
    pub source: String,
    pub status: Status,
    pub scope: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deviation_guide: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deviation_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionRecord>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// One recommendation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    pub rule: String,
    pub title: String,
    pub level: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub items: Vec<ItemRecord>,
}

/// The evidence of one node, as one agent report said it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub baseline: String,
    pub level: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub applied_at: Option<OffsetDateTime>,
    pub profile_sha256: String,
    /// Kernel values read live (root `/`), not from the agent's files only.
    pub live: bool,
    pub rules: Vec<RuleRecord>,
}

/// A stored snapshot: evidence that differed from the node's previous one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub node: String,
    pub pool: String,
    /// When the manager received it: the node showed this evidence from then on.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// When the agent observed it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub observed_at: Option<OffsetDateTime>,
    /// The profile generation the node ran, 0 when applied by hand.
    pub generation: u64,
    pub epoch: u64,
    pub evidence: Evidence,
}

impl Status {
    /// The name reports print.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Exception => "exception",
            Status::ExpiredException => "expired-exception",
            Status::OutOfScope => "out-of-scope",
        }
    }

    /// Whether the node misses the recommendation without a valid exception.
    pub fn fails(self) -> bool {
        matches!(self, Status::Fail | Status::ExpiredException)
    }

    fn from_proto(status: i32) -> Result<Self, String> {
        match pb::ComplianceStatus::try_from(status) {
            Ok(pb::ComplianceStatus::Pass) => Ok(Status::Pass),
            Ok(pb::ComplianceStatus::Fail) => Ok(Status::Fail),
            Ok(pb::ComplianceStatus::Exception) => Ok(Status::Exception),
            Ok(pb::ComplianceStatus::ExpiredException) => Ok(Status::ExpiredException),
            Ok(pb::ComplianceStatus::OutOfScope) => Ok(Status::OutOfScope),
            Ok(pb::ComplianceStatus::Unspecified) | Err(_) => {
                Err(format!("status {status} is not a compliance status"))
            }
        }
    }

    fn to_proto(self) -> pb::ComplianceStatus {
        match self {
            Status::Pass => pb::ComplianceStatus::Pass,
            Status::Fail => pb::ComplianceStatus::Fail,
            Status::Exception => pb::ComplianceStatus::Exception,
            Status::ExpiredException => pb::ComplianceStatus::ExpiredException,
            Status::OutOfScope => pb::ComplianceStatus::OutOfScope,
        }
    }
}

impl Evidence {
    /// Checks an agent's report: bounded, every status known.
    pub fn from_proto(
        report: pb::ComplianceReport,
    ) -> Result<(Self, Option<OffsetDateTime>), String> {
        if report.rules.len() > MAX_RULES {
            return Err(format!(
                "{} recommendations, at most {MAX_RULES}",
                report.rules.len()
            ));
        }
        let mut rules = Vec::with_capacity(report.rules.len());
        for rule in report.rules {
            if rule.items.len() > MAX_ITEMS {
                return Err(format!(
                    "{} has {} items, at most {MAX_ITEMS}",
                    rule.rule,
                    rule.items.len()
                ));
            }
            let status =
                Status::from_proto(rule.status).map_err(|e| format!("{}: {e}", rule.rule))?;
            let mut items = Vec::with_capacity(rule.items.len());
            for item in rule.items {
                let status = Status::from_proto(item.status)
                    .map_err(|e| format!("{} {}: {e}", rule.rule, item.item))?;
                items.push(ItemRecord {
                    status,
                    exception: item.exception.map(|e| ExceptionRecord {
                        reason: e.reason,
                        approver: e.approver,
                        expires: e.expires,
                        path: e.path,
                    }),
                    item: item.item,
                    what: item.what,
                    expected: item.expected,
                    observed: item.observed,
                    source: item.source,
                    scope: item.scope,
                    deviation_guide: item.deviation_guide,
                    deviation_reason: item.deviation_reason,
                    note: item.note,
                });
            }
            rules.push(RuleRecord {
                rule: rule.rule,
                title: rule.title,
                level: rule.level,
                status,
                reason: rule.reason,
                items,
            });
        }
        let observed_at = report.observed_at.and_then(time_from);
        let evidence = Evidence {
            baseline: report.baseline,
            level: report.level,
            applied_at: report.applied_at.and_then(time_from),
            profile_sha256: report.profile_sha256,
            live: report.live,
            rules,
        };
        Ok((evidence, observed_at))
    }

    /// The proto form, stamped `observed_at`.
    pub fn to_proto(&self, observed_at: Option<OffsetDateTime>) -> pb::ComplianceReport {
        pb::ComplianceReport {
            baseline: self.baseline.clone(),
            level: self.level.clone(),
            observed_at: observed_at.map(timestamp),
            applied_at: self.applied_at.map(timestamp),
            profile_sha256: self.profile_sha256.clone(),
            live: self.live,
            rules: self.rules.iter().map(RuleRecord::to_proto).collect(),
        }
    }
}

impl RuleRecord {
    fn to_proto(&self) -> pb::RuleEvidence {
        pb::RuleEvidence {
            rule: self.rule.clone(),
            title: self.title.clone(),
            level: self.level.clone(),
            status: self.status.to_proto().into(),
            reason: self.reason.clone(),
            items: self.items.iter().map(ItemRecord::to_proto).collect(),
        }
    }
}

impl ItemRecord {
    fn to_proto(&self) -> pb::ItemEvidence {
        pb::ItemEvidence {
            item: self.item.clone(),
            what: self.what.clone(),
            expected: self.expected.clone(),
            observed: self.observed.clone(),
            source: self.source.clone(),
            status: self.status.to_proto().into(),
            scope: self.scope.clone(),
            deviation_guide: self.deviation_guide.clone(),
            deviation_reason: self.deviation_reason.clone(),
            exception: self.exception.as_ref().map(|e| pb::ComplianceException {
                reason: e.reason.clone(),
                approver: e.approver.clone(),
                expires: e.expires.clone(),
                path: e.path.clone(),
            }),
            note: self.note.clone(),
        }
    }
}

impl Snapshot {
    /// The proto form for operators.
    pub fn to_proto(&self) -> pb::NodeCompliance {
        pb::NodeCompliance {
            node: self.node.clone(),
            pool: self.pool.clone(),
            report: Some(self.evidence.to_proto(self.observed_at)),
            received_at: Some(timestamp(self.since)),
            generation: self.generation,
            epoch: self.epoch,
        }
    }
}

/// A time as a protobuf timestamp.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).expect("nanoseconds are below one billion"),
    }
}

/// A protobuf timestamp as a time; `None` when unset or out of range.
fn time_from(at: prost_types::Timestamp) -> Option<OffsetDateTime> {
    if at.seconds == 0 && at.nanos == 0 {
        return None;
    }
    let nanos = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}
