//! `opictl audit`: the latest entries of the manager's audit log, filtered; [`verify`]
//! checks the whole log against its hash chain and signed checkpoints.

pub mod verify;

use opi_proto::v1::{AuditEntry, ListAuditRequest};
use serde::Serialize;

use crate::cli::{AuditArgs, AuditCommand};
use crate::output::{self, timestamp, Format, Table};
use crate::{Context, Error};

/// The JSON shape of an audit entry.
#[derive(Debug, Serialize)]
pub struct AuditView {
    /// Store revision of the entry; entries are ordered by it.
    pub revision: u64,
    /// When it happened, RFC 3339.
    pub at: Option<String>,
    /// Certificate identity of the caller, or `token:ID` for an enrollment.
    pub actor: String,
    /// What was done (`node.revoke`, `token.create`…).
    pub action: String,
    /// What it was done to.
    pub subject: String,
    /// How it ended.
    pub outcome: String,
    /// More about it.
    pub detail: String,
    /// Address the call came from.
    pub remote_addr: String,
    /// Position in the audit chain; 0 for an entry older than the chain.
    pub seq: u64,
    /// The entry's chain hash.
    pub hash: String,
}

/// Runs `opictl audit`.
pub async fn run(context: &Context, args: AuditArgs) -> Result<(), Error> {
    match args.command {
        Some(AuditCommand::Verify(verify)) => return verify::run(context, verify).await,
        Some(AuditCommand::Checkpoint(export)) => return verify::export(context, export).await,
        None => {}
    }
    let message = ListAuditRequest {
        limit: args.limit,
        since: args.since.map(prost_types::Timestamp::from),
        actor: args.actor.unwrap_or_default(),
        action: args.action.unwrap_or_default(),
        ..Default::default()
    };
    let entries = context.connect().await?.list_audit(message).await?.entries;
    let views: Vec<AuditView> = entries.into_iter().map(AuditView::from).collect();

    match context.format {
        Format::Json => output::print_json(&views),
        Format::Table if views.is_empty() => output::print("the audit log is empty\n"),
        Format::Table => output::print(&table(&views).render()),
    }
}

impl From<AuditEntry> for AuditView {
    fn from(entry: AuditEntry) -> Self {
        Self {
            revision: entry.revision,
            at: timestamp(entry.at.as_ref()),
            actor: entry.actor,
            action: entry.action,
            subject: entry.subject,
            outcome: entry.outcome,
            detail: entry.detail,
            remote_addr: entry.remote_addr,
            seq: entry.seq,
            hash: entry.hash,
        }
    }
}

/// Entries as a table, times absolute: an audit trail is read against other logs.
pub fn table(views: &[AuditView]) -> Table {
    let headers = [
        "SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "OUTCOME", "DETAIL", "FROM",
    ];
    let mut table = Table::new(&headers);
    for view in views {
        table.row(vec![
            view.seq.to_string(),
            view.at.clone().unwrap_or_default(),
            view.actor.clone(),
            view.action.clone(),
            view.subject.clone(),
            view.outcome.clone(),
            view.detail.clone(),
            view.remote_addr.clone(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            revision: 7,
            at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            actor: "spiffe://prod/operator/alice".into(),
            action: "node.revoke".into(),
            subject: "web-1".into(),
            outcome: "ok".into(),
            detail: String::new(),
            remote_addr: "10.0.0.5:51234".into(),
            seq: 7,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn audit_table_has_one_row_per_entry_with_absolute_time() {
        let text = table(&[AuditView::from(entry())]).render();

        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("7     2023-11-14T22:13:20Z   spiffe://prod/operator/alice"),
            "{text}"
        );
        assert!(row.ends_with("ok        -        10.0.0.5:51234"), "{text}");
    }

    #[test]
    fn audit_json_keeps_every_field() {
        let json = serde_json::to_value(AuditView::from(entry())).unwrap();

        assert_eq!(json["revision"], 7);
        assert_eq!(json["at"], "2023-11-14T22:13:20Z");
        assert_eq!(json["remote_addr"], "10.0.0.5:51234");
    }
}
