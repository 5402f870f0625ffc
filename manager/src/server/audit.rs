//! The audit calls of the Operator service: filtered listings, newest first or a page at a
//! time oldest first (for `opictl audit verify`), and the signed checkpoints.

use opi_proto::v1 as pb;

use super::convert::{audit_to_proto, time_from};
use crate::audit::checkpoint;
use crate::fleet::{Fleet, FleetError};
use crate::records::{audit_key_from, AuditRecord, AUDIT};
use crate::store::{decode, KeyValue};

/// Audit entries returned when the caller names no limit.
const DEFAULT_LIMIT: usize = 50;
/// Most audit entries returned by one call.
const MAX_LIMIT: usize = 1000;
/// Entries read from the store per step while filtering.
const SCAN_PAGE: usize = 500;

/// What a listing keeps.
struct Filter {
    actor: String,
    action: String,
}

impl Filter {
    fn matches(&self, entry: &AuditRecord) -> bool {
        let action = self.action.is_empty()
            || entry.action == self.action
            || entry
                .action
                .strip_prefix(&self.action)
                .is_some_and(|rest| rest.starts_with('.'));
        action && entry.actor.contains(&self.actor)
    }

    fn is_empty(&self) -> bool {
        self.actor.is_empty() && self.action.is_empty()
    }
}

/// Answers a `ListAudit` request.
pub async fn list(
    fleet: &Fleet,
    request: pb::ListAuditRequest,
) -> Result<pb::ListAuditResponse, FleetError> {
    let limit = match request.limit as usize {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let filter = Filter {
        actor: request.actor,
        action: request.action,
    };
    let since = request.since.and_then(time_from).map(audit_key_from);
    if request.oldest_first {
        let start = match request.page_after.is_empty() {
            true => since,
            false => Some(request.page_after),
        };
        return oldest_first(fleet, start, &filter, limit).await;
    }
    if since.is_none() && filter.is_empty() {
        let values = fleet.store().list_last(AUDIT, limit).await?;
        let entries = decode_all(fleet, &values)?;
        return Ok(response(entries, String::new()));
    }
    newest_matching(fleet, since, &filter, limit).await
}

/// One page, oldest first, from after `start`.
async fn oldest_first(
    fleet: &Fleet,
    start: Option<String>,
    filter: &Filter,
    limit: usize,
) -> Result<pb::ListAuditResponse, FleetError> {
    let values = fleet
        .store()
        .list_page(AUDIT, start.as_deref(), limit)
        .await?;
    let next = match values.len() == limit {
        true => values.last().map(|kv| kv.key.clone()).unwrap_or_default(),
        false => String::new(),
    };
    let entries = decode_all(fleet, &values)?
        .into_iter()
        .filter(|(e, _)| filter.matches(e))
        .collect();
    Ok(response(entries, next))
}

/// The newest `limit` entries matching, at or after `since`; scans the log from there.
async fn newest_matching(
    fleet: &Fleet,
    since: Option<String>,
    filter: &Filter,
    limit: usize,
) -> Result<pb::ListAuditResponse, FleetError> {
    let mut kept = std::collections::VecDeque::with_capacity(limit);
    let mut cursor = since;
    loop {
        let values = fleet
            .store()
            .list_page(AUDIT, cursor.as_deref(), SCAN_PAGE)
            .await?;
        for entry in decode_all(fleet, &values)? {
            if filter.matches(&entry.0) {
                if kept.len() == limit {
                    kept.pop_front();
                }
                kept.push_back(entry);
            }
        }
        if values.len() < SCAN_PAGE {
            break;
        }
        cursor = values.last().map(|kv| kv.key.clone());
    }
    Ok(response(kept.into(), String::new()))
}

fn decode_all(fleet: &Fleet, values: &[KeyValue]) -> Result<Vec<(AuditRecord, u64)>, FleetError> {
    values
        .iter()
        .map(|kv| {
            decode::<AuditRecord>(fleet.store(), kv)
                .map(|v| (v.value, v.mod_revision))
                .map_err(FleetError::from)
        })
        .collect()
}

fn response(entries: Vec<(AuditRecord, u64)>, next_page: String) -> pb::ListAuditResponse {
    pb::ListAuditResponse {
        entries: entries
            .iter()
            .map(|(entry, revision)| audit_to_proto(entry, *revision))
            .collect(),
        next_page,
    }
}

/// Signs a checkpoint now.
pub async fn create_checkpoint(fleet: &Fleet) -> Result<pb::AuditCheckpoint, FleetError> {
    let signed = checkpoint::create(fleet).await?.ok_or_else(|| {
        FleetError::InvalidArgument("the audit log is empty: nothing to checkpoint yet".into())
    })?;
    Ok(to_proto(&signed))
}

/// Every kept checkpoint.
pub async fn list_checkpoints(
    fleet: &Fleet,
) -> Result<pb::ListAuditCheckpointsResponse, FleetError> {
    let checkpoints = checkpoint::list(fleet)
        .await?
        .iter()
        .map(to_proto)
        .collect();
    Ok(pb::ListAuditCheckpointsResponse { checkpoints })
}

fn to_proto(signed: &opi_pki::chain::SignedCheckpoint) -> pb::AuditCheckpoint {
    pb::AuditCheckpoint {
        signed_json: serde_json::to_string(signed).expect("a checkpoint always serialises"),
    }
}
