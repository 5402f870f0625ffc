//! One decision step of a rollout, a pure function of its record, the pool's nodes and the
//! time: track the nodes of the current wave, halt on failures over budget, start the next
//! wave within the unavailability budget, or complete.
//!
//! Rules (mirrored in the README):
//! - a node is done once it runs the new generation and stayed online and healthy for the
//!   settle time;
//! - it fails when its agent refuses or rolls back the generation, when it goes offline before
//!   it is done, when it is degraded while settling, when it is not healthy within
//!   [`track::HEALTHY_WITHIN`] of applying, or when it has not applied within
//!   [`track::APPLY_DEADLINE`];
//! - a node that applied a generation needing a reboot is `reboot-pending` (not done, not
//!   failed) until it says hello with a new boot id; it may be offline meanwhile;
//! - any failure in the canary wave halts the rollout; after it, more failures than the budget;
//! - a wave starts only when the previous one has no node in flight (updating, reboot-pending,
//!   settling); it holds at most `canary` nodes (the first wave) or `maxUnavailable` nodes;
//! - guardrail: every online node of the pool that is not healthy, whatever the cause, and
//!   every reboot-pending node uses up the unavailability budget; a wave takes a healthy node
//!   only while the budget has room left, so the rollout never has more nodes out of healthy
//!   than the budget; a pending node already out of healthy costs nothing (the rollout does not
//!   take it out) and is taken after the healthy ones;
//! - waves take pending online nodes healthy first, in name order (domain by domain with a
//!   failure domain); the canary wave takes a node that is not healthy only when no healthy
//!   node is pending;
//! - a node offline when its wave comes is skipped rather than waited for; it is queued again
//!   when it comes back while the rollout runs, and is targeted when the rollout completes.

use time::OffsetDateTime;

use super::track;
use super::{NodeProgress, NodeStep, RolloutRecord, RolloutState, Wave};
use crate::events::Draft;
use crate::records::{ConfigRecord, GenerationId, Health, Severity};

/// What the step needs to know of one node of the pool.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub name: String,
    pub online: bool,
    pub health: Health,
    pub config: ConfigRecord,
    pub boot_id: String,
    /// Value of the failure-domain label, when the strategy names one.
    pub domain: Option<String>,
    /// Conditions that make the node degraded, for the failure reason.
    pub problems: Vec<String>,
}

/// What the step decided beyond the record it changed.
#[derive(Debug, Default)]
pub struct Decision {
    /// Nodes to target now, at the generation given.
    pub target: Vec<(String, GenerationId)>,
    pub events: Vec<Draft>,
    /// The record changed and must be stored.
    pub changed: bool,
}

/// Advances `rollout` by one step.
pub fn step(rollout: &mut RolloutRecord, nodes: &[NodeFacts], now: OffsetDateTime) -> Decision {
    let mut decision = Decision::default();
    if !rollout.state.is_active() {
        return decision;
    }
    sync_membership(rollout, nodes, now, &mut decision);
    for facts in nodes {
        track(rollout, facts, now, &mut decision);
    }
    if matches!(
        rollout.state,
        RolloutState::Progressing | RolloutState::Paused
    ) {
        check_failures(rollout, now, &mut decision);
    }
    if rollout.state == RolloutState::Progressing {
        advance(rollout, nodes, now, &mut decision);
    }
    retarget(rollout, nodes, &mut decision);
    if decision.changed {
        rollout.updated_at = now;
    }
    decision
}

/// New nodes of the pool join the queue; nodes that left it are forgotten; skipped nodes that
/// came back are queued again.
fn sync_membership(
    rollout: &mut RolloutRecord,
    nodes: &[NodeFacts],
    now: OffsetDateTime,
    d: &mut Decision,
) {
    let before = rollout.nodes.len();
    rollout
        .nodes
        .retain(|name, _| nodes.iter().any(|n| &n.name == name));
    d.changed |= rollout.nodes.len() != before;
    for facts in nodes {
        match rollout.nodes.get(&facts.name).map(|p| p.step) {
            None => {
                rollout
                    .nodes
                    .insert(facts.name.clone(), NodeProgress::pending());
                let reason = "joined the pool during the rollout; waits for its wave".into();
                note_node(rollout, facts, "none", NodeStep::Pending, reason, d);
            }
            Some(NodeStep::Skipped) if facts.online => {
                let reason = "back online; waits for its wave".into();
                move_node(rollout, facts, NodeStep::Pending, reason, now, d);
            }
            Some(_) => {}
        }
    }
}

/// Moves one node of a wave along: settling, reboot-pending, done or failed.
fn track(rollout: &mut RolloutRecord, facts: &NodeFacts, now: OffsetDateTime, d: &mut Decision) {
    let Some(progress) = rollout.nodes.get(&facts.name) else {
        return;
    };
    let Some((step, reason)) = track::next(rollout, progress, facts, now) else {
        return;
    };
    if step == NodeStep::Failed {
        rollout.failures.push(facts.name.clone());
    }
    move_node(rollout, facts, step, reason, now, d);
}

/// Halts the rollout when the canary failed or failures exceed the budget.
fn check_failures(rollout: &mut RolloutRecord, now: OffsetDateTime, d: &mut Decision) {
    if rollout.failures.is_empty() {
        return;
    }
    let canary_failed = rollout.failures.iter().any(|name| {
        let wave = rollout.nodes.get(name).and_then(|p| p.wave);
        wave.is_some_and(|w| rollout.waves.get(w as usize).is_some_and(|w| w.canary))
    });
    let budget = rollout.strategy.failure_budget as usize;
    let reason = if canary_failed {
        format!("canary failed: {}", failure_list(rollout))
    } else if rollout.failures.len() > budget {
        format!(
            "{} failure(s), more than the budget of {budget}: {}",
            rollout.failures.len(),
            failure_list(rollout)
        )
    } else {
        return;
    };
    set_state(rollout, RolloutState::Halted, "Halted", reason, now, d);
}

/// Starts the next wave, or completes the rollout when no node is left.
fn advance(
    rollout: &mut RolloutRecord,
    nodes: &[NodeFacts],
    now: OffsetDateTime,
    d: &mut Decision,
) {
    if rollout.nodes.values().any(|p| p.step.in_flight()) {
        return;
    }
    skip_offline(rollout, nodes, now, d);
    if rollout.count(NodeStep::Pending) == 0 {
        complete(rollout, now, d);
        return;
    }

    let room = room(rollout, nodes);
    let chosen = choose(rollout, next_candidates(rollout, nodes), room);
    if chosen.is_empty() {
        let reason = "waiting: the pool has no room for another node out of healthy".to_string();
        if rollout.reason != reason {
            rollout.reason = reason;
            d.changed = true;
        }
        return;
    }
    start_wave(rollout, chosen, nodes, now, d);
}

/// The nodes of the next wave: candidates in order, at most the wave's size, a healthy node
/// only while `room` is left (a node already out of healthy costs none).
fn choose<'a>(
    rollout: &RolloutRecord,
    candidates: Vec<&'a NodeFacts>,
    mut room: usize,
) -> Vec<&'a NodeFacts> {
    let canary = rollout.waves.is_empty();
    let size = match canary {
        true => rollout.strategy.canary as usize,
        false => rollout.strategy.max_unavailable.of(rollout.nodes.len()),
    };
    let any_healthy = candidates.iter().any(|n| n.health == Health::Healthy);
    let mut chosen = Vec::new();
    for node in candidates {
        if chosen.len() == size {
            break;
        }
        let healthy = node.health == Health::Healthy;
        if healthy && room == 0 || !healthy && canary && any_healthy {
            continue;
        }
        room -= usize::from(healthy);
        chosen.push(node);
    }
    chosen
}

/// Pending nodes that are offline now are skipped: a wave never waits for them.
fn skip_offline(
    rollout: &mut RolloutRecord,
    nodes: &[NodeFacts],
    now: OffsetDateTime,
    d: &mut Decision,
) {
    for facts in nodes.iter().filter(|n| !n.online) {
        if rollout.nodes.get(&facts.name).map(|p| p.step) == Some(NodeStep::Pending) {
            let reason = "offline when its wave came; gets the generation when it returns".into();
            move_node(rollout, facts, NodeStep::Skipped, reason, now, d);
        }
    }
}

/// Online pending nodes, healthy ones first, in name order; of one failure domain only when
/// the strategy names one: the first domain with a healthy pending node, else the first.
fn next_candidates<'a>(rollout: &RolloutRecord, nodes: &'a [NodeFacts]) -> Vec<&'a NodeFacts> {
    let mut ready: Vec<&NodeFacts> = nodes
        .iter()
        .filter(|n| n.online)
        .filter(|n| rollout.nodes.get(&n.name).map(|p| p.step) == Some(NodeStep::Pending))
        .collect();
    let unhealthy = |n: &NodeFacts| n.health != Health::Healthy;
    ready.sort_by(|a, b| {
        (&a.domain, unhealthy(a), &a.name).cmp(&(&b.domain, unhealthy(b), &b.name))
    });
    if rollout.strategy.failure_domain.is_some() {
        let first = ready
            .iter()
            .find(|n| !unhealthy(n))
            .or(ready.first())
            .map(|n| n.domain.clone());
        ready.retain(|n| Some(&n.domain) == first.as_ref());
    }
    ready.sort_by(|a, b| (unhealthy(a), &a.name).cmp(&(unhealthy(b), &b.name)));
    ready
}

/// How many more nodes may leave healthy now.
fn room(rollout: &RolloutRecord, nodes: &[NodeFacts]) -> usize {
    let budget = rollout.strategy.max_unavailable.of(nodes.len());
    let unavailable = nodes
        .iter()
        .filter(|n| {
            let rebooting = rollout.nodes.get(&n.name).map(|p| p.step);
            (n.online && n.health != Health::Healthy) || rebooting == Some(NodeStep::RebootPending)
        })
        .count();
    budget.saturating_sub(unavailable)
}

fn start_wave(
    rollout: &mut RolloutRecord,
    chosen: Vec<&NodeFacts>,
    nodes: &[NodeFacts],
    now: OffsetDateTime,
    d: &mut Decision,
) {
    let index = rollout.waves.len() as u32;
    let canary = rollout.waves.is_empty();
    let domain = chosen
        .first()
        .and_then(|n| n.domain.clone())
        .filter(|_| rollout.strategy.failure_domain.is_some());
    let names: Vec<String> = chosen.iter().map(|n| n.name.clone()).collect();
    let what = if canary { "canary wave" } else { "wave" };
    let in_domain = domain
        .as_ref()
        .map(|v| format!(" in failure domain {v}"))
        .unwrap_or_default();
    let message = format!(
        "{what} {} started{in_domain}: {}",
        index + 1,
        names.join(", ")
    );
    d.events.push(pool_event(
        rollout,
        "progressing",
        "progressing",
        "WaveStarted",
        message,
    ));

    for name in &names {
        let facts = nodes
            .iter()
            .find(|n| &n.name == name)
            .expect("chosen from nodes");
        let reason = format!("targeted in {what} {}", index + 1);
        move_node(rollout, facts, NodeStep::Updating, reason, now, d);
        if let Some(progress) = rollout.nodes.get_mut(name) {
            progress.wave = Some(index);
        }
        d.target.push((name.clone(), rollout.to));
    }
    rollout.waves.push(Wave {
        index,
        canary,
        domain,
        nodes: names,
        started_at: now,
    });
    rollout.reason.clear();
    d.changed = true;
}

/// Ends the rollout; skipped nodes get the generation now, or when they return.
fn complete(rollout: &mut RolloutRecord, now: OffsetDateTime, d: &mut Decision) {
    for (name, progress) in &rollout.nodes {
        if progress.step == NodeStep::Skipped {
            d.target.push((name.clone(), rollout.to));
        }
    }
    let mut message = format!(
        "{} node(s) done, {} failed",
        rollout.count(NodeStep::Done),
        rollout.count(NodeStep::Failed)
    );
    match rollout.count(NodeStep::Skipped) {
        0 => {}
        n => message.push_str(&format!(", {n} skipped while offline (targeted now)")),
    }
    set_state(
        rollout,
        RolloutState::Completed,
        "Completed",
        message,
        now,
        d,
    );
}

/// Targets again the nodes the rollout reached whose desired generation is not its own: a
/// manager stopped between storing a step and targeting its nodes.
fn retarget(rollout: &RolloutRecord, nodes: &[NodeFacts], d: &mut Decision) {
    for facts in nodes {
        let reached = rollout
            .nodes
            .get(&facts.name)
            .is_some_and(|p| p.step.in_flight());
        let targeted = d.target.iter().any(|(name, _)| name == &facts.name);
        if reached && !targeted && facts.config.desired != Some(rollout.to) {
            d.target.push((facts.name.clone(), rollout.to));
        }
    }
}

/// Moves the rollout to `state`, with a pool event.
pub(super) fn set_state(
    rollout: &mut RolloutRecord,
    state: RolloutState,
    reason: &str,
    message: String,
    now: OffsetDateTime,
    d: &mut Decision,
) {
    let from = rollout.state.name();
    rollout.state = state;
    rollout.state_since = now;
    rollout.reason = message.clone();
    let mut event = pool_event(rollout, from, state.name(), reason, message);
    if state == RolloutState::Halted {
        event = event.severity(Severity::Warning);
    }
    d.events.push(event);
    d.changed = true;
}

fn move_node(
    rollout: &mut RolloutRecord,
    facts: &NodeFacts,
    step: NodeStep,
    reason: String,
    now: OffsetDateTime,
    d: &mut Decision,
) {
    let Some(progress) = rollout.nodes.get(&facts.name) else {
        return;
    };
    let from = progress.step.name();
    note_node(rollout, facts, from, step, reason.clone(), d);
    let progress = rollout
        .nodes
        .get_mut(&facts.name)
        .expect("looked up just above");
    progress.step = step;
    progress.since = Some(now);
    progress.reason = reason;
    progress.boot_id = facts.boot_id.clone();
}

/// The event of a node's move from `from` to `step`.
fn note_node(
    rollout: &RolloutRecord,
    facts: &NodeFacts,
    from: &str,
    step: NodeStep,
    reason: String,
    d: &mut Decision,
) {
    let severity = match step {
        NodeStep::Failed => Severity::Warning,
        _ => Severity::Info,
    };
    d.events.push(
        Draft::new(&facts.name, &rollout.pool, "rollout", from, step.name())
            .subject(format!("generation {}", rollout.to.generation))
            .because(step_reason(step), reason)
            .severity(severity),
    );
    d.changed = true;
}

fn step_reason(step: NodeStep) -> &'static str {
    match step {
        NodeStep::Pending => "Queued",
        NodeStep::Updating => "Targeted",
        NodeStep::RebootPending => "RebootPending",
        NodeStep::Settling => "Settling",
        NodeStep::Done => "Done",
        NodeStep::Failed => "Failed",
        NodeStep::Skipped => "SkippedOffline",
    }
}

/// A rollout event about the whole pool: its node is empty.
pub(super) fn pool_event(
    rollout: &RolloutRecord,
    from: &str,
    to: &str,
    reason: &str,
    message: String,
) -> Draft {
    Draft::new("", &rollout.pool, "rollout", from, to)
        .subject(format!("generation {}", rollout.to.generation))
        .because(reason, message)
        .severity(Severity::Info)
}

/// The failed nodes with why each failed.
pub(super) fn failure_list(rollout: &RolloutRecord) -> String {
    rollout
        .failures
        .iter()
        .map(|name| {
            let why = rollout
                .nodes
                .get(name)
                .map(|p| p.reason.as_str())
                .unwrap_or("");
            format!("{name} ({why})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;
