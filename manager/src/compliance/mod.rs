//! The fleet's compliance evidence: what each node reports per ANSSI-BP-028 recommendation
//! of its baseline, kept as snapshots under `compliance/NODE/TIME` (a new one only when the
//! evidence changes, so each snapshot says since when the node showed it), the last
//! [`HISTORY_PER_NODE`] per node. Each recommendation whose verdict changes is an event of
//! kind `compliance`. [`report`] turns it into the signed document auditors keep.

pub mod record;
pub mod report;

use opi_proto::v1 as pb;
use time::OffsetDateTime;
use tracing::info;

use crate::events::Draft;
use crate::fleet::{Fleet, FleetError};
use crate::records::Severity;
use crate::store::{decode, to_json, Txn};
use record::{Evidence, Snapshot, Status};

/// Key prefix of compliance snapshots.
pub const COMPLIANCE: &str = "compliance/";
/// Snapshots kept per node; older ones are deleted as new ones come.
pub const HISTORY_PER_NODE: usize = 50;
/// The event kind of a changed verdict.
pub const EVENT_KIND: &str = "compliance";

/// Key prefix of the snapshots of `node`.
pub fn node_prefix(node: &str) -> String {
    format!("{COMPLIANCE}{node}/")
}

/// A new, time-ordered snapshot key.
pub fn snapshot_key(node: &str, at: OffsetDateTime) -> String {
    let nanos = at.unix_timestamp_nanos().max(0);
    format!("{}{nanos:020}", node_prefix(node))
}

/// Records a report of `node`; returns whether it differed from the node's last evidence (and
/// was stored, with its events).
pub async fn receive(
    fleet: &Fleet,
    node: &str,
    report: pb::ComplianceReport,
) -> Result<bool, FleetError> {
    let view = fleet.node(node)?;
    let (evidence, observed_at) = Evidence::from_proto(report).map_err(|why| {
        FleetError::InvalidArgument(format!(
            "node {node} sent invalid compliance evidence: {why}"
        ))
    })?;
    let previous = latest(fleet, node).await?;
    if previous.as_ref().is_some_and(|p| p.evidence == evidence) {
        return Ok(false);
    }
    let applied = view.record.config.applied;
    let snapshot = Snapshot {
        node: node.to_string(),
        pool: view.record.pool.clone(),
        since: OffsetDateTime::now_utc(),
        observed_at,
        generation: applied.map_or(0, |g| g.generation),
        epoch: applied.map_or(0, |g| g.epoch),
        evidence,
    };
    let drafts = changes(previous.as_ref(), &snapshot);
    let mut txn = Txn::new().put(snapshot_key(node, snapshot.since), to_json(&snapshot));
    for old in expired_keys(fleet, node).await? {
        txn = txn.delete(old);
    }
    fleet.events().commit(txn, drafts).await?;
    let failing = failing_rules(&snapshot);
    info!(node = %node, baseline = %snapshot.evidence.baseline, failing = ?failing, "compliance evidence stored");
    Ok(true)
}

/// The last evidence of every node of `pool` (every pool when empty), by node name; nodes that
/// sent none are listed without a report.
pub async fn listing(fleet: &Fleet, pool: &str) -> Result<Vec<pb::NodeCompliance>, FleetError> {
    let mut nodes = Vec::new();
    for view in fleet.nodes((!pool.is_empty()).then_some(pool)) {
        let name = &view.record.name;
        nodes.push(match latest(fleet, name).await? {
            Some(snapshot) => snapshot.to_proto(),
            None => pb::NodeCompliance {
                node: name.clone(),
                pool: view.record.pool.clone(),
                ..pb::NodeCompliance::default()
            },
        });
    }
    Ok(nodes)
}

/// The last evidence `node` sent, if any.
pub async fn latest(fleet: &Fleet, node: &str) -> Result<Option<Snapshot>, FleetError> {
    Ok(history(fleet, node, 1).await?.pop())
}

/// The last `limit` snapshots of `node`, oldest first.
pub async fn history(fleet: &Fleet, node: &str, limit: usize) -> Result<Vec<Snapshot>, FleetError> {
    let store = fleet.store();
    let kvs = store.list_last(&node_prefix(node), limit).await?;
    let mut snapshots = Vec::with_capacity(kvs.len());
    for kv in &kvs {
        snapshots.push(decode::<Snapshot>(store, kv)?.value);
    }
    Ok(snapshots)
}

/// The recommendations of `snapshot` the node misses, `R12`….
pub fn failing_rules(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .evidence
        .rules
        .iter()
        .filter(|r| r.status.fails())
        .map(|r| r.rule.clone())
        .collect()
}

/// Keys of the oldest snapshots of `node` beyond what one more snapshot leaves room for.
///
/// Shortcoming: the store lists values with their keys, so this reads up to 51 snapshots at
/// each change of a node's evidence; snapshots of a removed node are never deleted.
async fn expired_keys(fleet: &Fleet, node: &str) -> Result<Vec<String>, FleetError> {
    let kvs = fleet
        .store()
        .list_page(&node_prefix(node), None, HISTORY_PER_NODE + 1)
        .await?;
    let excess = (kvs.len() + 1).saturating_sub(HISTORY_PER_NODE);
    Ok(kvs.into_iter().take(excess).map(|kv| kv.key).collect())
}

/// An event per recommendation whose verdict changed; on a node's first evidence, one per
/// recommendation that does not simply pass.
fn changes(previous: Option<&Snapshot>, snapshot: &Snapshot) -> Vec<Draft> {
    let before = |rule: &str| {
        previous.and_then(|p| {
            p.evidence
                .rules
                .iter()
                .find(|r| r.rule == rule)
                .map(|r| r.status)
        })
    };
    let mut drafts = Vec::new();
    for rule in &snapshot.evidence.rules {
        let from = before(&rule.rule);
        let quiet = matches!(rule.status, Status::Pass | Status::OutOfScope);
        if from == Some(rule.status) || (from.is_none() && quiet) {
            continue;
        }
        // Failures first: they are why the verdict is what it is.
        let mut not_passing: Vec<_> = rule
            .items
            .iter()
            .filter(|i| i.status != Status::Pass)
            .collect();
        not_passing.sort_by_key(|i| !i.status.fails());
        let why: Vec<String> = not_passing
            .into_iter()
            .take(3)
            .map(|i| match &i.exception {
                Some(e) => format!("{} excepted: {}", i.item, e.reason),
                None => format!(
                    "{} observed {}, expected {}",
                    i.item, i.observed, i.expected
                ),
            })
            .collect();
        let from = from.map_or("none", Status::name);
        let message = match why.is_empty() {
            true => format!(
                "{} {}: {from} -> {}",
                rule.rule,
                rule.title,
                rule.status.name()
            ),
            false => format!(
                "{} {}: {from} -> {}: {}",
                rule.rule,
                rule.title,
                rule.status.name(),
                why.join("; ")
            ),
        };
        drafts.push(Draft {
            node: snapshot.node.clone(),
            pool: snapshot.pool.clone(),
            kind: EVENT_KIND,
            subject: rule.rule.clone(),
            from: from.to_string(),
            to: rule.status.name().to_string(),
            reason: "ComplianceChanged".to_string(),
            message,
            severity: match rule.status.fails() {
                true => Severity::Warning,
                false => Severity::Info,
            },
        });
    }
    drafts
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use record::{ExceptionRecord, ItemRecord, RuleRecord};

    pub(crate) fn item(name: &str, status: Status, excepted: bool) -> ItemRecord {
        ItemRecord {
            item: name.into(),
            what: String::new(),
            expected: "1".into(),
            observed: "0".into(),
            source: "file".into(),
            status,
            scope: "live".into(),
            deviation_guide: String::new(),
            deviation_reason: String::new(),
            exception: excepted.then(|| ExceptionRecord {
                reason: "Calico".into(),
                approver: "secops".into(),
                expires: "2027-06-30".into(),
                path: "hardening.exceptions[0]".into(),
            }),
            note: String::new(),
        }
    }

    pub(crate) fn snapshot(rules: Vec<(&str, Status, Vec<ItemRecord>)>) -> Snapshot {
        let rules = rules
            .into_iter()
            .map(|(rule, status, items)| RuleRecord {
                rule: rule.into(),
                title: format!("{rule} title"),
                level: "intermediary".into(),
                status,
                reason: String::new(),
                items,
            })
            .collect();
        Snapshot {
            node: "w1".into(),
            pool: "workers".into(),
            since: OffsetDateTime::UNIX_EPOCH,
            observed_at: None,
            generation: 1,
            epoch: 1,
            evidence: Evidence {
                baseline: "anssi-bp028-intermediary".into(),
                level: "intermediary".into(),
                applied_at: None,
                profile_sha256: "sha".into(),
                live: false,
                rules,
            },
        }
    }

    #[test]
    fn a_first_report_raises_events_only_for_what_does_not_simply_pass() {
        let first = snapshot(vec![
            (
                "R9",
                Status::Pass,
                vec![item("sysctl/kernel.sysrq", Status::Pass, false)],
            ),
            (
                "R12",
                Status::Exception,
                vec![item("sysctl/rp", Status::Exception, true)],
            ),
            ("R28", Status::OutOfScope, vec![]),
        ]);
        let drafts = changes(None, &first);
        assert_eq!(drafts.len(), 1, "{drafts:?}");
        assert_eq!(
            (drafts[0].from.as_str(), drafts[0].to.as_str()),
            ("none", "exception")
        );
        assert_eq!(drafts[0].severity, Severity::Info);
        assert!(
            drafts[0].message.contains("sysctl/rp excepted: Calico"),
            "{}",
            drafts[0].message
        );
    }

    #[test]
    fn a_changed_verdict_is_an_event_naming_the_failing_item_first() {
        let before = snapshot(vec![(
            "R39",
            Status::Exception,
            vec![item("sudo/requiretty", Status::Exception, true)],
        )]);
        let after = snapshot(vec![(
            "R39",
            Status::Fail,
            vec![
                item("sudo/requiretty", Status::Exception, true),
                item("sudo/use_pty", Status::Fail, false),
            ],
        )]);
        let drafts = changes(Some(&before), &after);
        assert_eq!(drafts.len(), 1);
        let event = &drafts[0];
        assert_eq!((event.kind, event.subject.as_str()), (EVENT_KIND, "R39"));
        assert_eq!(
            (event.from.as_str(), event.to.as_str()),
            ("exception", "fail")
        );
        assert_eq!(event.severity, Severity::Warning);
        assert!(
            event
                .message
                .contains(": sudo/use_pty observed 0, expected 1; sudo/requiretty"),
            "{}",
            event.message
        );
        assert!(
            changes(Some(&after), &after).is_empty(),
            "no change, no event"
        );
    }
}
