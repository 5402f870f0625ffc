//! Rollout alerts, as a pure function of the pools' rollouts: one `OpiRolloutHalted` per
//! halted rollout, resolved once it resumes, is aborted or is replaced by a new generation.

use super::model::{Alert, ROLLOUT_HALTED};
use super::nodes::NAMES_LISTED;
use crate::records::rfc3339;
use crate::rollout::{RolloutRecord, RolloutState};

/// Every rollout alert of `fleet` due now.
pub fn evaluate(rollouts: &[RolloutRecord], fleet: &str) -> Vec<Alert> {
    rollouts
        .iter()
        .filter(|r| r.state == RolloutState::Halted)
        .map(|r| halted(r, fleet))
        .collect()
}

fn halted(rollout: &RolloutRecord, fleet: &str) -> Alert {
    let pool = &rollout.pool;
    let generation = rollout.to.generation.to_string();
    let mut nodes: Vec<&str> = rollout.failures.iter().map(String::as_str).collect();
    let more = nodes.len().saturating_sub(NAMES_LISTED);
    nodes.truncate(NAMES_LISTED);
    let more = match more {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let description = format!(
        "the rollout of generation {generation} to pool {pool} halted at {}: {}; failed nodes: \
         {}{more}. `opictl rollout status {pool}` shows it; `opictl rollout resume {pool}` goes \
         on, `opictl rollout undo {pool}` rolls the pool back",
        rfc3339(rollout.state_since),
        rollout.reason,
        nodes.join(", "),
    );
    let summary = format!("the rollout of generation {generation} to pool {pool} halted");
    Alert::new(ROLLOUT_HALTED, fleet, "warning", rollout.state_since)
        .label("pool", pool)
        .label("generation", &generation)
        .describe(summary, description)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::records::GenerationId;
    use crate::rollout::Strategy;

    fn rollout(state: RolloutState) -> RolloutRecord {
        let to = GenerationId {
            epoch: 1,
            generation: 7,
        };
        let at = datetime!(2025-03-01 12:00:00 UTC);
        let nodes = ["w1".to_string(), "w2".to_string()];
        let mut record =
            RolloutRecord::new("workers", to, None, Strategy::default(), nodes, "t", at);
        record.state = state;
        record.state_since = at;
        record.reason = "canary failed: w1 (containerd did not answer)".into();
        record.failures = vec!["w1".into()];
        record
    }

    #[test]
    fn a_halted_rollout_fires_with_its_pool_generation_cause_and_nodes() {
        let alerts = evaluate(&[rollout(RolloutState::Halted)], "prod");

        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(alert.name(), ROLLOUT_HALTED);
        assert_eq!(alert.labels["severity"], "warning");
        assert_eq!(alert.labels["pool"], "workers");
        assert_eq!(alert.labels["generation"], "7");
        let description = &alert.annotations["description"];
        assert!(
            description.contains("canary failed: w1 (containerd"),
            "{description}"
        );
        assert!(description.contains("failed nodes: w1."), "{description}");
    }

    #[test]
    fn rollouts_that_are_not_halted_fire_nothing() {
        for state in [
            RolloutState::Progressing,
            RolloutState::Paused,
            RolloutState::Completed,
            RolloutState::Aborted,
        ] {
            assert!(evaluate(&[rollout(state)], "prod").is_empty(), "{state:?}");
        }
    }
}
