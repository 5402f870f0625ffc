//! The rollout calls of the Operator service: a pool's rollout as operators read it, and the
//! actions on it.

use opi_proto::v1 as pb;

use super::convert::timestamp;
use crate::fleet::{Fleet, FleetError};
use crate::rollout::{Action, RolloutRecord, Strategy};

/// The latest rollout of a pool.
pub fn status(fleet: &Fleet, request: pb::RolloutStatusRequest) -> Result<pb::Rollout, FleetError> {
    Ok(rollout_to_proto(&fleet.rollout(&request.pool)?))
}

/// Pauses, resumes, aborts or undoes a pool's rollout; answers with the rollout now in force.
pub async fn act(
    fleet: &Fleet,
    request: pb::RolloutActionRequest,
    actor: &str,
    from: &str,
) -> Result<pb::Rollout, FleetError> {
    let action = match request.action() {
        pb::RolloutActionKind::Pause => Action::Pause,
        pb::RolloutActionKind::Resume => Action::Resume,
        pb::RolloutActionKind::Abort => Action::Abort,
        pb::RolloutActionKind::Undo => Action::Undo,
        pb::RolloutActionKind::Unspecified => {
            return Err(FleetError::InvalidArgument(format!(
                "no rollout action given for pool {}: pause, resume, abort or undo",
                request.pool
            )))
        }
    };
    let record = fleet
        .rollout_action(&request.pool, action, actor, from)
        .await?;
    Ok(rollout_to_proto(&record))
}

/// A rollout record as the protocol carries it.
pub fn rollout_to_proto(record: &RolloutRecord) -> pb::Rollout {
    let waves = record
        .waves
        .iter()
        .map(|wave| {
            let (done, failed) = record.wave_counts(wave);
            pb::RolloutWave {
                number: wave.index + 1,
                canary: wave.canary,
                domain: wave.domain.clone().unwrap_or_default(),
                nodes: wave.nodes.clone(),
                started_at: Some(timestamp(wave.started_at)),
                done: done as u32,
                failed: failed as u32,
            }
        })
        .collect();
    let nodes = record
        .nodes
        .iter()
        .map(|(name, progress)| pb::RolloutNode {
            name: name.clone(),
            step: progress.step.name().into(),
            wave: progress.wave.map_or(0, |w| w + 1),
            since: progress.since.map(timestamp),
            reason: progress.reason.clone(),
        })
        .collect();
    pb::Rollout {
        pool: record.pool.clone(),
        state: record.state.name().into(),
        state_since: Some(timestamp(record.state_since)),
        reason: record.reason.clone(),
        from_generation: record.from.map_or(0, |f| f.generation),
        to_generation: record.to.generation,
        reverts_to: record.reverts_to.unwrap_or(0),
        strategy: Some(strategy_to_proto(&record.strategy)),
        waves,
        nodes,
        failures: record.failures.clone(),
        created_at: Some(timestamp(record.created_at)),
        created_by: record.created_by.clone(),
        updated_at: Some(timestamp(record.updated_at)),
    }
}

fn strategy_to_proto(strategy: &Strategy) -> pb::RolloutStrategy {
    pb::RolloutStrategy {
        canary: strategy.canary,
        max_unavailable: strategy.max_unavailable.to_string(),
        failure_domain: strategy.failure_domain.clone().unwrap_or_default(),
        settle_secs: strategy.settle_secs,
        failure_budget: strategy.failure_budget,
    }
}
