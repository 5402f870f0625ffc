//! The compliance report: one JSON document with every node's latest evidence, its history
//! and the fleet's exceptions (reason, approver, expiry, since when), signed by this manager
//! replica with a fresh document signer certificate from its issuing CA, so that an auditor
//! verifies it offline with the fleet root CA; and a Markdown rendering of the same document.

use std::collections::BTreeMap;

use opi_pki::ca::SIGNER_CERT_TTL;
use opi_pki::signature;
use opi_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::record::{Snapshot, Status};
use super::{failing_rules, history};
use crate::fleet::{Fleet, FleetError};
use crate::records::rfc3339;

/// The `format` of the document.
pub const FORMAT: &str = "opi-fleet/compliance-report/v1";
/// The guide the evidence is about.
pub const GUIDE: &str =
    "ANSSI-BP-028 v2.0, Recommandations de configuration d'un système GNU/Linux";
/// Snapshots per node in a report when the caller names no number.
pub const DEFAULT_HISTORY: usize = 10;

/// The signed document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub format: String,
    pub guide: String,
    pub fleet: String,
    /// The pool reported on; empty for every pool.
    pub pool: String,
    /// When the manager made and signed it.
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// The manager replica that signed it.
    pub generated_by: String,
    /// The operator who asked for it.
    pub requested_by: String,
    pub summary: Summary,
    /// Every exception of every node, with since when it shows in the evidence.
    pub exceptions: Vec<ExceptionEntry>,
    pub nodes: Vec<NodeEntry>,
}

/// Fleet-wide counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub nodes: usize,
    /// Nodes that sent evidence.
    pub with_evidence: usize,
    /// Nodes with evidence that miss no recommendation.
    pub compliant: usize,
    /// Nodes missing a recommendation, each with the ones it misses.
    pub failing: BTreeMap<String, Vec<String>>,
    pub exceptions: usize,
    pub expired_exceptions: usize,
}

/// One exception of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionEntry {
    pub node: String,
    pub pool: String,
    pub rule: String,
    pub item: String,
    pub reason: String,
    pub approver: String,
    pub expires: String,
    pub expired: bool,
    /// The oldest snapshot of the history that shows it.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node: String,
    pub pool: String,
    /// Its last evidence in full.
    pub latest: Option<Snapshot>,
    /// Its snapshots, oldest first, each summed up.
    pub history: Vec<HistoryEntry>,
}

/// One snapshot, summed up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    pub generation: u64,
    pub baseline: String,
    pub profile_sha256: String,
    pub counts: BTreeMap<String, usize>,
    pub failing: Vec<String>,
}

/// Builds, signs and renders the report of `pool` (every pool when empty) for `requested_by`.
pub async fn signed(
    fleet: &Fleet,
    request: pb::GetComplianceReportRequest,
    requested_by: &str,
) -> Result<pb::SignedComplianceReport, FleetError> {
    let depth = match request.history as usize {
        0 => DEFAULT_HISTORY,
        n => n.min(super::HISTORY_PER_NODE),
    };
    let document = build(fleet, &request.pool, depth, requested_by).await?;
    let bytes = serde_json::to_vec_pretty(&document).expect("a report always serialises");
    let authority = fleet.authority();
    let (signer, key) = fleet
        .trust()
        .issuer
        .issue_signer(&authority.replica, SIGNER_CERT_TTL)?;
    let signature = signature::sign(&key, &bytes)?;
    let markdown = markdown(&document, &sha256(&bytes));
    Ok(pb::SignedComplianceReport {
        document: bytes,
        signature,
        chain_pem: signer.chain_pem,
        markdown,
    })
}

/// The document of `pool` with `depth` snapshots per node.
pub async fn build(
    fleet: &Fleet,
    pool: &str,
    depth: usize,
    requested_by: &str,
) -> Result<Document, FleetError> {
    let views = fleet.nodes((!pool.is_empty()).then_some(pool));
    let today = OffsetDateTime::now_utc().date();
    let mut document = Document {
        format: FORMAT.to_string(),
        guide: GUIDE.to_string(),
        fleet: fleet.fleet_name().to_string(),
        pool: pool.to_string(),
        generated_at: OffsetDateTime::now_utc(),
        generated_by: opi_pki::Identity::manager(fleet.fleet_name(), &fleet.authority().replica)
            .uri(),
        requested_by: requested_by.to_string(),
        summary: Summary {
            nodes: views.len(),
            ..Summary::default()
        },
        exceptions: Vec::new(),
        nodes: Vec::new(),
    };
    for view in views {
        let snapshots = history(fleet, &view.record.name, depth).await?;
        document.exceptions.extend(exceptions(&snapshots, today));
        let latest = snapshots.last().cloned();
        if let Some(latest) = &latest {
            document.summary.with_evidence += 1;
            match failing_rules(latest) {
                failing if failing.is_empty() => document.summary.compliant += 1,
                failing => {
                    document
                        .summary
                        .failing
                        .insert(latest.node.clone(), failing);
                }
            }
        }
        document.nodes.push(NodeEntry {
            node: view.record.name.clone(),
            pool: view.record.pool.clone(),
            history: snapshots.iter().map(summed_up).collect(),
            latest,
        });
    }
    document.summary.exceptions = document.exceptions.len();
    document.summary.expired_exceptions = document.exceptions.iter().filter(|e| e.expired).count();
    Ok(document)
}

/// Lowercase hex SHA-256.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The exceptions of the latest snapshot, each dated by the oldest snapshot showing it.
fn exceptions(snapshots: &[Snapshot], today: time::Date) -> Vec<ExceptionEntry> {
    let Some(latest) = snapshots.last() else {
        return Vec::new();
    };
    let shows = |snapshot: &Snapshot, item: &str| {
        snapshot
            .evidence
            .rules
            .iter()
            .flat_map(|r| &r.items)
            .any(|i| i.item == item && i.exception.is_some())
    };
    let mut entries = Vec::new();
    for rule in &latest.evidence.rules {
        for item in &rule.items {
            let Some(exception) = &item.exception else {
                continue;
            };
            let since = snapshots
                .iter()
                .rev()
                .take_while(|s| shows(s, &item.item))
                .last()
                .map_or(latest.since, |s| s.since);
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let expired =
                time::Date::parse(&exception.expires, &format).is_ok_and(|day| day < today);
            entries.push(ExceptionEntry {
                node: latest.node.clone(),
                pool: latest.pool.clone(),
                rule: rule.rule.clone(),
                item: item.item.clone(),
                reason: exception.reason.clone(),
                approver: exception.approver.clone(),
                expires: exception.expires.clone(),
                expired,
                since,
            });
        }
    }
    entries
}

fn summed_up(snapshot: &Snapshot) -> HistoryEntry {
    let mut counts = BTreeMap::new();
    for rule in &snapshot.evidence.rules {
        *counts.entry(rule.status.name().to_string()).or_insert(0) += 1;
    }
    HistoryEntry {
        since: snapshot.since,
        generation: snapshot.generation,
        baseline: snapshot.evidence.baseline.clone(),
        profile_sha256: snapshot.evidence.profile_sha256.clone(),
        counts,
        failing: failing_rules(snapshot),
    }
}

/// The document for people: what it is, how to verify it, the fleet, the exceptions, then
/// each node's recommendations and history.
pub fn markdown(document: &Document, digest: &str) -> String {
    let summary = &document.summary;
    let pool = match document.pool.is_empty() {
        true => "every pool".to_string(),
        false => format!("pool `{}`", document.pool),
    };
    let mut text = format!(
        "# Compliance report: fleet `{}`, {pool}\n\n\
         | | |\n|---|---|\n\
         | guide | {} |\n| generated | {} by `{}` |\n| requested by | `{}` |\n\
         | document | `compliance-report.json`, SHA-256 `{digest}` |\n\n\
         The JSON document is the signed record; this page renders it. Verify it offline with \
         the fleet root CA: `opictl compliance verify compliance-report.json --ca root-ca.pem`, \
         or with openssl (see the README).\n\n",
        document.fleet,
        document.guide,
        rfc3339(document.generated_at),
        document.generated_by,
        document.requested_by,
    );
    text.push_str(&format!(
        "## Fleet\n\n{} node(s), {} with evidence, {} compliant, {} missing a recommendation, \
         {} exception(s) of which {} expired.\n\n",
        summary.nodes,
        summary.with_evidence,
        summary.compliant,
        summary.failing.len(),
        summary.exceptions,
        summary.expired_exceptions
    ));
    for (node, rules) in &summary.failing {
        text.push_str(&format!("- `{node}` misses {}\n", rules.join(", ")));
    }
    text.push_str("\n## Exceptions\n\n");
    if document.exceptions.is_empty() {
        text.push_str("None.\n");
    } else {
        text.push_str("| node | rule | item | reason | approver | expires | since |\n");
        text.push_str("|---|---|---|---|---|---|---|\n");
        for e in &document.exceptions {
            let expires = match (e.expires.is_empty(), e.expired) {
                (true, _) => "never".to_string(),
                (false, true) => format!("{} (expired)", e.expires),
                (false, false) => e.expires.clone(),
            };
            text.push_str(&format!(
                "| {} | {} | `{}` | {} | {} | {expires} | {} |\n",
                e.node,
                e.rule,
                e.item,
                cell(&e.reason),
                cell(&e.approver),
                rfc3339(e.since)
            ));
        }
    }
    for node in &document.nodes {
        node_markdown(node, &mut text);
    }
    text
}

fn node_markdown(node: &NodeEntry, text: &mut String) {
    text.push_str(&format!(
        "\n## Node `{}` (pool `{}`)\n\n",
        node.node, node.pool
    ));
    let Some(latest) = &node.latest else {
        text.push_str("No evidence received.\n");
        return;
    };
    let source = match latest.evidence.live {
        true => "live kernel values and files",
        false => "files only",
    };
    text.push_str(&format!(
        "Baseline `{}`, generation {}, profile SHA-256 `{}`, evidence since {} ({source}).\n\n",
        latest.evidence.baseline,
        latest.generation,
        latest.evidence.profile_sha256,
        rfc3339(latest.since)
    ));
    text.push_str("| rule | level | title | status | items not passing |\n|---|---|---|---|---|\n");
    for rule in &latest.evidence.rules {
        let items: Vec<String> = rule
            .items
            .iter()
            .filter(|i| i.status != Status::Pass)
            .map(|i| {
                format!(
                    "`{}` {}: {} (expected {})",
                    i.item,
                    i.status.name(),
                    i.observed,
                    i.expected
                )
            })
            .collect();
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            rule.rule,
            rule.level,
            cell(&rule.title),
            rule.status.name(),
            cell(&items.join("; "))
        ));
    }
    text.push_str("\n| since | generation | failing |\n|---|---|---|\n");
    for entry in &node.history {
        text.push_str(&format!(
            "| {} | {} | {} |\n",
            rfc3339(entry.since),
            entry.generation,
            match entry.failing.is_empty() {
                true => "none".to_string(),
                false => entry.failing.join(", "),
            }
        ));
    }
}

/// Text safe in a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::tests::{item, snapshot};

    #[test]
    fn an_exception_is_dated_by_the_oldest_snapshot_that_shows_it_and_expires() {
        let excepted = || {
            vec![(
                "R12",
                Status::Exception,
                vec![item("sysctl/rp", Status::Exception, true)],
            )]
        };
        let mut without = snapshot(vec![("R12", Status::Pass, vec![])]);
        let mut first = snapshot(excepted());
        let mut second = snapshot(excepted());
        let day = time::Duration::days(1);
        without.since = OffsetDateTime::UNIX_EPOCH;
        first.since = OffsetDateTime::UNIX_EPOCH + day;
        second.since = OffsetDateTime::UNIX_EPOCH + day * 2;

        let before = time::macros::date!(2027 - 06 - 30);
        let entries = exceptions(&[without, first.clone(), second], before);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].since, first.since, "since it first showed");
        assert_eq!(entries[0].approver, "secops");
        assert!(!entries[0].expired);
        let after = time::macros::date!(2027 - 07 - 01);
        assert!(exceptions(&[first], after)[0].expired);
    }

    #[test]
    fn markdown_cells_cannot_break_the_tables() {
        assert_eq!(cell("a | b\nc"), "a \\| b c");
    }
}
