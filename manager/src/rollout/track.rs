//! How one node of a wave moves along, as pure judgements of what the manager knows of it:
//! from updating to settling (or reboot-pending), from settling to done, or to failed. The
//! rules are listed in [`super::step`].

use std::time::Duration;

use time::OffsetDateTime;

use super::step::NodeFacts;
use super::{NodeProgress, NodeStep, RolloutRecord};
use crate::records::{ConfigRecord, ConfigStatus, GenerationId, Health};

/// A targeted node that has not reported the generation applied by then has failed. This and
/// [`HEALTHY_WITHIN`] are fixed, not options of the strategy.
pub const APPLY_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// A node that applied the generation must be healthy within this time (a health report or
/// two after its services restarted), or it has failed.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// Where a tracked node goes next, and why.
pub(super) type Next = Option<(NodeStep, String)>;

/// Where a node of a wave goes next, if anywhere.
pub(super) fn next(
    rollout: &RolloutRecord,
    progress: &NodeProgress,
    facts: &NodeFacts,
    now: OffsetDateTime,
) -> Next {
    match progress.step {
        NodeStep::Updating => updating(rollout, progress, facts, now),
        NodeStep::RebootPending => rebooting(rollout.to, progress, facts),
        NodeStep::Settling => settling(rollout, progress, facts, now),
        _ => None,
    }
}

/// A targeted node that has not run the generation healthy yet.
fn updating(r: &RolloutRecord, p: &NodeProgress, facts: &NodeFacts, now: OffsetDateTime) -> Next {
    let generation = r.to.generation;
    if let Some(refusal) = refused(&facts.config, r.to) {
        return Some((NodeStep::Failed, refusal));
    }
    if !facts.online {
        return Some((NodeStep::Failed, "went offline before it was done".into()));
    }
    if facts.config.applied != Some(r.to) {
        let waited = p.since.map_or(time::Duration::ZERO, |since| now - since);
        return (waited >= APPLY_DEADLINE).then(|| {
            let deadline = APPLY_DEADLINE.as_secs() / 60;
            let why = format!("did not report generation {generation} applied within {deadline}m");
            (NodeStep::Failed, why)
        });
    }
    if facts.config.reboot_required {
        let why = format!("applied generation {generation}, which waits for a reboot");
        return Some((NodeStep::RebootPending, why));
    }
    if facts.health == Health::Healthy {
        return Some((
            NodeStep::Settling,
            format!("runs generation {generation}, healthy"),
        ));
    }
    let applied_for = facts.config.since.map_or(time::Duration::ZERO, |s| now - s);
    (applied_for >= HEALTHY_WITHIN).then(|| {
        let within = HEALTHY_WITHIN.as_secs();
        let why = format!(
            "not healthy within {within}s of applying: {}",
            health_text(facts)
        );
        (NodeStep::Failed, why)
    })
}

/// A node whose generation waits for its next boot: rebooted once its boot id changed.
/// A reboot-pending node has no deadline: one that is never rebooted holds its wave (visibly)
/// until an operator aborts the rollout.
fn rebooting(to: GenerationId, progress: &NodeProgress, facts: &NodeFacts) -> Next {
    if let Some(refusal) = refused(&facts.config, to) {
        return Some((NodeStep::Failed, refusal));
    }
    let rebooted = facts.online && facts.boot_id != progress.boot_id;
    (rebooted && facts.config.applied == Some(to)).then(|| {
        let why = format!("rebooted into generation {}", to.generation);
        (NodeStep::Settling, why)
    })
}

/// A node running the generation healthy: done once the settle time passed.
fn settling(r: &RolloutRecord, p: &NodeProgress, facts: &NodeFacts, now: OffsetDateTime) -> Next {
    let generation = r.to.generation;
    if let Some(refusal) = refused(&facts.config, r.to) {
        return Some((NodeStep::Failed, refusal));
    }
    if !facts.online {
        return Some((NodeStep::Failed, "went offline before it was done".into()));
    }
    if facts.config.applied != Some(r.to) {
        let why = format!("no longer runs generation {generation}");
        return Some((NodeStep::Failed, why));
    }
    let settle = time::Duration::seconds(r.strategy.settle_secs as i64);
    match facts.health {
        Health::Degraded => {
            let why = format!(
                "degraded on generation {generation}: {}",
                health_text(facts)
            );
            Some((NodeStep::Failed, why))
        }
        Health::Healthy if p.since.is_some_and(|since| now - since >= settle) => {
            let why = format!("stayed healthy for {}s", r.strategy.settle_secs);
            Some((NodeStep::Done, why))
        }
        Health::Healthy | Health::Unknown => None,
    }
}

/// Why the agent refused or rolled back `to`, if it did.
fn refused(config: &ConfigRecord, to: GenerationId) -> Option<String> {
    // The agent's reason may list problems on lines of their own: one line here.
    (config.desired == Some(to) && config.status == ConfigStatus::Failed).then(|| {
        let lines: Vec<&str> = config.reason.lines().map(str::trim).collect();
        lines.join(" ")
    })
}

fn health_text(facts: &NodeFacts) -> String {
    match (facts.health, facts.problems.is_empty()) {
        (Health::Degraded, false) => format!("degraded ({})", facts.problems.join(", ")),
        (Health::Degraded, true) => "degraded".into(),
        (Health::Unknown, _) => "health unknown (no fresh report)".into(),
        (Health::Healthy, _) => "healthy".into(),
    }
}
