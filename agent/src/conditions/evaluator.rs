//! One round of checks: every collector runs at once in its own task, all under the same
//! deadline. A collector that fails, panics or misses the deadline leaves its conditions
//! `UNKNOWN` and raises `AgentDegraded`; the others report as usual.
//!
//! A collector that missed the deadline is not started again while its previous run is
//! still going (a check stuck on a dead NFS mount must not pile up threads): it stays
//! `UNKNOWN` until that run ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opi_proto::v1::{Condition, ConditionStatus, Severity};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use super::config::{ConfigError, HealthConfig};
use super::transitions::Transitions;
use super::{CollectError, Collector, NodeFiles, Observation, Validity};
use crate::paths::StatePaths;
use crate::ErrorChain;

/// The condition type raised when checks could not run.
pub const AGENT_DEGRADED: &str = "AgentDegraded";

type Running = JoinHandle<Result<Vec<Observation>, CollectError>>;

/// Runs the collectors, round after round, and keeps their history.
pub struct Evaluator {
    collectors: Vec<Arc<dyn Collector>>,
    timeout: Duration,
    transitions: Transitions,
    persist: bool,
    stalled: HashMap<usize, Running>,
}

/// The outcome of one round.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Every condition, `AgentDegraded` included, ordered by type then subject.
    pub conditions: Vec<Condition>,
    /// When the round ended.
    pub observed_at: OffsetDateTime,
    /// Whether a condition appeared, disappeared, or changed status, severity or reason.
    pub changed: bool,
}

impl Evaluator {
    /// An evaluator of `collectors`, each given `timeout` per round, recording into
    /// `transitions`; the history is written back after a change only when `persist`.
    pub fn new(
        collectors: Vec<Arc<dyn Collector>>,
        timeout: Duration,
        transitions: Transitions,
        persist: bool,
    ) -> Self {
        Self {
            collectors,
            timeout,
            transitions,
            persist,
            stalled: HashMap::new(),
        }
    }

    /// The evaluator of the node at `paths`, as `health.toml` configures it. The certificate
    /// check follows `certificate`. An unreadable history is logged and started afresh.
    pub fn open(
        paths: &StatePaths,
        certificate: watch::Receiver<Option<Validity>>,
        persist: bool,
    ) -> Result<Self, ConfigError> {
        let files = NodeFiles::new(&paths.root);
        let config = HealthConfig::load(&files)?;
        let collectors = super::collectors(&config, &files, paths, certificate);
        let transitions = Transitions::load(&paths.conditions()).unwrap_or_else(|error| {
            warn!(error = %ErrorChain(&error), "starting the condition history afresh");
            Transitions::empty(&paths.conditions())
        });
        let timeout = Duration::from_millis(config.check_timeout_ms);
        Ok(Self::new(collectors, timeout, transitions, persist))
    }

    /// Runs one round.
    pub async fn evaluate(&mut self) -> Evaluation {
        let mut seen = self.observe_all().await;
        seen.push(agent_degraded(&seen));

        let observed_at = OffsetDateTime::now_utc();
        let applied = self.transitions.apply(seen, observed_at);
        if applied.changed && self.persist {
            if let Err(error) = self.transitions.save() {
                warn!(
                    path = %self.transitions.path().display(),
                    error = %ErrorChain(&error),
                    "cannot store the condition history; transition times restart with the agent",
                );
            }
        }
        Evaluation {
            conditions: applied.conditions,
            observed_at,
            changed: applied.changed,
        }
    }

    /// Starts every collector that is not still stuck, then gathers them by one deadline.
    async fn observe_all(&mut self) -> Vec<Observation> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut seen = Vec::new();
        let mut running = Vec::new();
        for index in 0..self.collectors.len() {
            if self.still_stuck(index) {
                let message = format!(
                    "its previous run, past its {:?} limit, has not ended",
                    self.timeout
                );
                seen.extend(self.unknown(index, "CheckStuck", &message));
                continue;
            }
            running.push((
                index,
                tokio::spawn(self.collectors[index].clone().collect()),
            ));
        }

        for (index, mut task) in running {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(observations))) => seen.extend(observations),
                Ok(Ok(Err(error))) => {
                    let message = ErrorChain(&*error).to_string();
                    seen.extend(self.unknown(index, "CheckFailed", &message));
                }
                Ok(Err(panic)) => {
                    let message = format!("the check crashed: {panic}");
                    seen.extend(self.unknown(index, "CheckCrashed", &message));
                }
                Err(_) => {
                    self.stalled.insert(index, task);
                    let message = format!("the check did not finish within {:?}", self.timeout);
                    seen.extend(self.unknown(index, "CheckTimedOut", &message));
                }
            }
        }
        seen
    }

    /// Whether the collector's run from an earlier round is still going.
    fn still_stuck(&mut self, index: usize) -> bool {
        match self.stalled.get(&index) {
            Some(task) if !task.is_finished() => true,
            Some(_) => {
                self.stalled.remove(&index);
                false
            }
            None => false,
        }
    }

    /// `UNKNOWN` for every condition the collector reports: the subjects it had last time,
    /// or a node-wide one when it never reported any.
    fn unknown(&self, index: usize, reason: &'static str, message: &str) -> Vec<Observation> {
        let mut unknown = Vec::new();
        for kind in self.collectors[index].kinds() {
            let mut subjects = self.transitions.subjects(kind);
            if subjects.is_empty() {
                subjects.push(String::new());
            }
            for subject in subjects {
                unknown.push(Observation::unknown(
                    kind,
                    &subject,
                    reason,
                    message.to_string(),
                ));
            }
        }
        unknown
    }
}

/// A warning naming every condition that could not be checked this round.
fn agent_degraded(seen: &[Observation]) -> Observation {
    let unknown: Vec<String> = seen
        .iter()
        .filter(|observation| observation.status == ConditionStatus::Unknown)
        .map(Observation::key)
        .collect();
    if unknown.is_empty() {
        let message = format!("all {} conditions were checked", seen.len());
        return Observation::ok(AGENT_DEGRADED, "", "AllChecksRan", message);
    }
    let message = format!(
        "{} of {} conditions could not be checked: {}",
        unknown.len(),
        seen.len(),
        unknown.join(", ")
    );
    Observation::problem(
        AGENT_DEGRADED,
        "",
        Severity::Warning,
        "ChecksFailed",
        message,
    )
}

#[cfg(test)]
#[path = "evaluator_tests.rs"]
mod tests;
