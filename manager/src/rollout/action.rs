//! Operators' actions on a rollout, as pure functions of its record: pause, resume and abort
//! change its state with a pool event; undo makes a new generation, which the fleet does.

use time::OffsetDateTime;

use super::step::{set_state, Decision};
use super::{RolloutRecord, RolloutState};

/// An operator's action on a pool's rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop starting waves; the nodes in flight are still followed.
    Pause,
    /// Start waves again, forgetting the failures that halted the rollout.
    Resume,
    /// End the rollout where it stands: nodes not yet targeted keep their generation.
    Abort,
    /// Roll the pool back to the rollout's previous generation, as a new generation.
    Undo,
}

/// Why an action cannot be taken in the rollout's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub state: RolloutState,
    pub hint: &'static str,
}

impl Action {
    /// The word operators type, and the audit action's suffix.
    pub fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Undo => "undo",
        }
    }
}

/// Pauses, resumes or aborts `record`; undo is refused here, the fleet carries it out.
pub fn act(
    record: &mut RolloutRecord,
    action: Action,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Decision, Refusal> {
    let refuse = |hint| Refusal {
        state: record.state,
        hint,
    };
    let (state, reason, message) = match (action, record.state) {
        (Action::Pause, RolloutState::Progressing) => {
            (RolloutState::Paused, "Paused", format!("paused by {actor}"))
        }
        (Action::Resume, RolloutState::Paused | RolloutState::Halted) => (
            RolloutState::Progressing,
            "Resumed",
            format!("resumed by {actor}"),
        ),
        (Action::Abort, state) if state.is_active() => (
            RolloutState::Aborted,
            "Aborted",
            format!("aborted by {actor}; nodes not yet targeted keep their generation"),
        ),
        (Action::Pause, _) => return Err(refuse("only a progressing rollout can be paused")),
        (Action::Resume, _) => return Err(refuse("only a paused or halted rollout can resume")),
        (Action::Undo, _) => return Err(refuse("undo makes a new generation")),
        (Action::Abort, _) => {
            return Err(refuse(
                "it has already ended; `opictl rollout undo` rolls the pool back",
            ))
        }
    };
    if action == Action::Resume {
        record.failures.clear();
    }
    let mut decision = Decision::default();
    set_state(record, state, reason, message, now, &mut decision);
    record.updated_at = now;
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::GenerationId;
    use crate::rollout::Strategy;

    fn record() -> RolloutRecord {
        let to = GenerationId {
            epoch: 1,
            generation: 2,
        };
        let nodes = ["a".to_string()];
        let now = OffsetDateTime::UNIX_EPOCH;
        RolloutRecord::new("workers", to, None, Strategy::default(), nodes, "t", now)
    }

    #[test]
    fn pause_then_resume_with_a_pool_event_each_and_failures_forgotten() {
        let mut r = record();
        let now = OffsetDateTime::UNIX_EPOCH;
        let paused = act(&mut r, Action::Pause, "alice", now).expect("pause");
        assert_eq!(r.state, RolloutState::Paused);
        assert_eq!(paused.events[0].to, "paused");
        assert!(paused.events[0].node.is_empty(), "a pool event");
        r.failures.push("a".into());

        act(&mut r, Action::Resume, "alice", now).expect("resume");
        assert_eq!(r.state, RolloutState::Progressing);
        assert!(r.failures.is_empty());
        assert_eq!(r.reason, "resumed by alice");
    }

    #[test]
    fn actions_that_do_not_fit_the_state_are_refused_with_a_hint() {
        let mut r = record();
        let now = OffsetDateTime::UNIX_EPOCH;
        let refusal = act(&mut r, Action::Resume, "bob", now).expect_err("not paused");
        assert_eq!(refusal.state, RolloutState::Progressing);
        act(&mut r, Action::Abort, "bob", now).expect("abort");
        assert_eq!(r.state, RolloutState::Aborted);
        let refusal = act(&mut r, Action::Abort, "bob", now).expect_err("already ended");
        assert!(refusal.hint.contains("rollout undo"), "{}", refusal.hint);
        assert!(act(&mut r, Action::Pause, "bob", now).is_err());
    }
}
