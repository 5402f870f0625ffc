//! Health-gated rollouts of a pool's profile generation: a canary wave, then waves bounded by
//! `maxUnavailable` (optionally one failure domain at a time), each node done only once it runs
//! the generation and stayed healthy for the settle time, halting when failures exceed the
//! budget. This module holds the stored shape, the pure decision step ([`step`], whose module
//! states the rules) and the pure operator actions ([`act`]); `fleet::rollouts` stores, targets
//! and emits what they decide.

mod action;
mod step;
mod track;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::records::GenerationId;

pub use action::{act, Action, Refusal};
pub use step::{step, Decision, NodeFacts};
pub use track::{APPLY_DEADLINE, HEALTHY_WITHIN};

/// Key prefix of rollouts: one record per pool, its latest rollout; earlier rollouts live on
/// in the events and the audit log only.
pub const ROLLOUTS: &str = "rollouts/";

/// Default nodes in the canary wave.
pub const DEFAULT_CANARY: u32 = 1;
/// Default time a node must stay healthy on the new generation to count as done.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(30);
/// Longest settle time accepted.
pub const MAX_SETTLE: Duration = Duration::from_secs(24 * 3600);

/// Key of a pool's rollout.
pub fn rollout_key(pool: &str) -> String {
    format!("{ROLLOUTS}{pool}")
}

/// How many nodes may be out of healthy at once: a count or a percentage of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    Count(u32),
    Percent(u32),
}

/// How a rollout proceeds; given with `opictl profile set` and reused by `undo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    /// Nodes of the first wave; any failure among them halts the rollout.
    pub canary: u32,
    pub max_unavailable: Budget,
    /// A node label; when set, a wave holds nodes of one value of it only, so two failure
    /// domains never change at once.
    pub failure_domain: Option<String>,
    pub settle_secs: u64,
    /// Failures tolerated after the canary wave; one more halts the rollout.
    pub failure_budget: u32,
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Progressing,
    Paused,
    Halted,
    Completed,
    Aborted,
}

/// Where one node of the pool stands in the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStep {
    /// Waits for its wave; runs the previous generation.
    Pending,
    /// Targeted at the new generation, not yet running it healthy.
    Updating,
    /// Applied the generation, which waits for the node's next boot.
    RebootPending,
    /// Runs the new generation and is healthy; counts down the settle time.
    Settling,
    Done,
    Failed,
    /// Offline when its wave came; queued again when it returns, targeted at completion.
    Skipped,
}

/// One node's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    pub step: NodeStep,
    /// Index of the node's wave, once it had one.
    pub wave: Option<u32>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    pub reason: String,
    /// The node's boot id when it entered its step: a reboot-pending node is rebooted once
    /// it says hello with another one.
    #[serde(default)]
    pub boot_id: String,
}

/// One wave: the nodes targeted together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub index: u32,
    pub canary: bool,
    pub domain: Option<String>,
    pub nodes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// A pool's rollout, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub pool: String,
    pub to: GenerationId,
    /// The last generation the whole pool was given; `None` for its first profile.
    pub from: Option<GenerationId>,
    /// For an undo: the generation whose content `to` repeats.
    #[serde(default)]
    pub reverts_to: Option<u64>,
    pub strategy: Strategy,
    pub state: RolloutState,
    #[serde(with = "time::serde::rfc3339")]
    pub state_since: OffsetDateTime,
    /// Why it is paused, halted, aborted, completed or waiting.
    pub reason: String,
    pub waves: Vec<Wave>,
    pub nodes: BTreeMap<String, NodeProgress>,
    /// Nodes that failed since the rollout started or was last resumed.
    pub failures: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            canary: DEFAULT_CANARY,
            max_unavailable: Budget::Count(1),
            failure_domain: None,
            settle_secs: DEFAULT_SETTLE.as_secs(),
            failure_budget: 0,
        }
    }
}

impl Strategy {
    /// Every problem of the strategy, empty when it is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.canary == 0 {
            problems.push("the canary wave needs at least 1 node".to_string());
        }
        if self.settle_secs > MAX_SETTLE.as_secs() {
            problems.push(format!(
                "settle time {}s is longer than {}s",
                self.settle_secs,
                MAX_SETTLE.as_secs()
            ));
        }
        if let Some(label) = &self.failure_domain {
            let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
            if label.is_empty() || !label.chars().all(valid) {
                problems.push(format!("failure domain `{label}` is not a node label key"));
            }
        }
        problems
    }

    /// The strategy in one line, as status shows it.
    pub fn describe(&self) -> String {
        let domain = self
            .failure_domain
            .as_ref()
            .map(|label| format!(", one {label} at a time"))
            .unwrap_or_default();
        format!(
            "canary {}, max unavailable {}, settle {}s, failure budget {}{domain}",
            self.canary, self.max_unavailable, self.settle_secs, self.failure_budget
        )
    }
}

impl Budget {
    /// The number of nodes this budget allows in a pool of `total`, at least 1.
    pub fn of(self, total: usize) -> usize {
        let allowed = match self {
            Budget::Count(n) => n as usize,
            Budget::Percent(p) => total * p as usize / 100,
        };
        allowed.max(1)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Count(n) => write!(f, "{n}"),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Budget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("max unavailable `{text}` is not a count (2) or a percentage (25%)");
        match text.strip_suffix('%') {
            Some(percent) => match percent.parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Budget::Percent(p)),
                _ => Err(bad()),
            },
            None => match text.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Budget::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl RolloutState {
    /// How operators read it.
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Whether the rollout still moves nodes along: it is stepped, and may be resumed.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::Progressing | RolloutState::Paused | RolloutState::Halted
        )
    }
}

impl NodeStep {
    /// How operators read it.
    pub fn name(self) -> &'static str {
        match self {
            NodeStep::Pending => "pending",
            NodeStep::Updating => "updating",
            NodeStep::RebootPending => "reboot-pending",
            NodeStep::Settling => "settling",
            NodeStep::Done => "done",
            NodeStep::Failed => "failed",
            NodeStep::Skipped => "skipped",
        }
    }

    /// Whether the node's wave came and it was targeted at the new generation.
    pub fn reached(self) -> bool {
        !matches!(self, NodeStep::Pending | NodeStep::Skipped)
    }

    /// Whether the node is still on its way through its wave.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            NodeStep::Updating | NodeStep::RebootPending | NodeStep::Settling
        )
    }
}

impl RolloutRecord {
    /// A rollout of `to` over `nodes`, every node pending.
    pub fn new(
        pool: &str,
        to: GenerationId,
        from: Option<GenerationId>,
        strategy: Strategy,
        nodes: impl IntoIterator<Item = String>,
        by: &str,
        now: OffsetDateTime,
    ) -> Self {
        let nodes = nodes
            .into_iter()
            .map(|name| (name, NodeProgress::pending()))
            .collect();
        Self {
            pool: pool.into(),
            to,
            from,
            reverts_to: None,
            strategy,
            state: RolloutState::Progressing,
            state_since: now,
            reason: String::new(),
            waves: Vec::new(),
            nodes,
            failures: Vec::new(),
            created_at: now,
            created_by: by.into(),
            updated_at: now,
        }
    }

    /// The generation a node of the pool should run now: the new one once its wave came or
    /// the rollout completed, else the previous one. A node the rollout does not know yet (it
    /// joined the pool since the last step) waits for its wave like the others.
    pub fn generation_for(&self, node: &str) -> Option<GenerationId> {
        let reached = self.nodes.get(node).is_some_and(|p| p.step.reached());
        if reached || self.state == RolloutState::Completed {
            Some(self.to)
        } else {
            self.from
        }
    }

    /// The generation the whole pool was given once this rollout ended or was replaced:
    /// `to` when it completed, else what it started from.
    pub fn settled_generation(&self) -> Option<GenerationId> {
        match self.state {
            RolloutState::Completed => Some(self.to),
            _ => self.from,
        }
    }

    /// How many nodes are at each step.
    pub fn count(&self, step: NodeStep) -> usize {
        self.nodes.values().filter(|p| p.step == step).count()
    }

    /// How many nodes of a wave are done, and how many failed.
    pub fn wave_counts(&self, wave: &Wave) -> (usize, usize) {
        let step_of = |name: &String| self.nodes.get(name).map(|p| p.step);
        let done = wave
            .nodes
            .iter()
            .filter(|n| step_of(n) == Some(NodeStep::Done))
            .count();
        let failed = wave
            .nodes
            .iter()
            .filter(|n| step_of(n) == Some(NodeStep::Failed))
            .count();
        (done, failed)
    }
}

impl NodeProgress {
    /// A node waiting for its wave.
    pub fn pending() -> Self {
        Self {
            step: NodeStep::Pending,
            wave: None,
            since: None,
            reason: String::new(),
            boot_id: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_as_counts_or_percentages_and_allow_at_least_one_node() {
        assert_eq!("3".parse::<Budget>(), Ok(Budget::Count(3)));
        assert_eq!("25%".parse::<Budget>(), Ok(Budget::Percent(25)));
        for bad in ["0", "0%", "101%", "-1", "a", ""] {
            let error = bad.parse::<Budget>().expect_err(bad);
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
        assert_eq!(Budget::Percent(25).of(10), 2);
        assert_eq!(Budget::Percent(10).of(3), 1);
        assert_eq!(Budget::Count(4).of(2), 4);
    }

    #[test]
    fn a_strategy_lists_every_problem_at_once() {
        let strategy = Strategy {
            canary: 0,
            settle_secs: MAX_SETTLE.as_secs() + 1,
            failure_domain: Some("zone name".into()),
            ..Strategy::default()
        };
        let problems = strategy.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(Strategy::default().problems().is_empty());
    }

    #[test]
    fn stored_records_without_the_newer_fields_still_read() {
        let record = RolloutRecord::new(
            "workers",
            GenerationId {
                epoch: 1,
                generation: 2,
            },
            None,
            Strategy::default(),
            ["a".to_string()],
            "test",
            OffsetDateTime::UNIX_EPOCH,
        );
        let mut json = serde_json::to_value(&record).expect("record serialises");
        json.as_object_mut().expect("object").remove("reverts_to");
        json["nodes"]["a"]
            .as_object_mut()
            .expect("progress")
            .remove("boot_id");
        let read: RolloutRecord = serde_json::from_value(json).expect("older record reads");
        assert_eq!(read, record);
    }
}
