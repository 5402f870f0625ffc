//! The node conditions while `opi-agent run` runs: one task evaluates them every heartbeat
//! interval, one round after the other (so at most one evaluation is in flight), and
//! publishes the latest set. Sessions send that set in their hello, send it again as a
//! report as soon as a condition changes, and stamp each heartbeat with its time.

use std::time::Duration;

use opi_proto::v1::agent_message::Body as AgentBody;
use opi_proto::v1::{AgentMessage, Condition, ConditionStatus, HealthReport};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, Instrument};

use crate::cert::LeafInfo;
use crate::conditions::{self, ConfigError, Evaluation, Evaluator, Validity};
use crate::paths::StatePaths;

/// The latest completed evaluation, as sessions see it.
#[derive(Clone, Debug)]
pub struct Latest {
    /// Every condition.
    pub conditions: Vec<Condition>,
    /// When the evaluation ended.
    pub observed_at: OffsetDateTime,
    /// Increased by each evaluation that changed a condition; a session whose last report
    /// (or hello) carried an older revision owes the manager a report.
    pub revision: u64,
}

/// What the run loop keeps to follow and steer the evaluations.
pub struct Checks {
    /// The latest evaluation.
    pub latest: watch::Receiver<Latest>,
    /// The evaluation interval; follows the heartbeat interval.
    pub interval: watch::Sender<Duration>,
    /// The node certificate the `CertificateExpiring` check looks at.
    pub certificate: watch::Sender<Option<Validity>>,
}

impl Checks {
    /// Loads `health.toml`, evaluates once (so that the first hello carries conditions), then
    /// evaluates every `interval` in a task of its own.
    pub async fn start(
        paths: &StatePaths,
        leaf: &LeafInfo,
        interval: Duration,
    ) -> Result<Self, ConfigError> {
        let (certificate, current) = watch::channel(Some(Validity::of(leaf)));
        let mut evaluator = Evaluator::open(paths, current, true)?;
        let first = evaluator.evaluate().await;
        log_evaluation(&first);

        let (latest_sender, latest) = watch::channel(Latest::first(first));
        let (interval, every) = watch::channel(interval);
        let task = evaluate_forever(evaluator, latest_sender, every);
        tokio::spawn(task.instrument(info_span!("conditions")));
        Ok(Self {
            latest,
            interval,
            certificate,
        })
    }
}

impl Latest {
    fn first(evaluation: Evaluation) -> Self {
        Self {
            conditions: evaluation.conditions,
            observed_at: evaluation.observed_at,
            revision: 0,
        }
    }

    fn update(&mut self, evaluation: Evaluation) {
        if evaluation.changed {
            self.revision += 1;
        }
        self.conditions = evaluation.conditions;
        self.observed_at = evaluation.observed_at;
    }

    /// The full set as a report message.
    pub fn report(&self) -> HealthReport {
        HealthReport {
            conditions: self.conditions.clone(),
        }
    }
}

/// A `reported` revision that no evaluation has: the next [`send_report_if_due`] sends.
pub const NOTHING_REPORTED: u64 = u64::MAX;

/// Queues a report of `latest` if a condition changed since revision `reported`; returns
/// the revision the manager now has (unchanged when the stream is not draining, so that
/// the next heartbeat tries again).
pub fn send_report_if_due(
    outbox: &mpsc::Sender<AgentMessage>,
    latest: &watch::Receiver<Latest>,
    reported: u64,
) -> u64 {
    let latest = latest.borrow();
    if latest.revision == reported {
        return reported;
    }
    let message = AgentMessage {
        body: Some(AgentBody::Report(latest.report())),
    };
    match outbox.try_send(message) {
        Ok(()) => {
            debug!(revision = latest.revision, "health report queued");
            latest.revision
        }
        Err(_) => {
            debug!("health report delayed: the stream is not draining");
            reported
        }
    }
}

async fn evaluate_forever(
    mut evaluator: Evaluator,
    latest: watch::Sender<Latest>,
    mut interval: watch::Receiver<Duration>,
) {
    loop {
        pause(&mut interval).await;
        let evaluation = evaluator.evaluate().await;
        log_evaluation(&evaluation);
        latest.send_modify(|latest| latest.update(evaluation));
    }
}

/// Waits one interval; a new interval (the manager's welcome) starts the wait again with it.
async fn pause(interval: &mut watch::Receiver<Duration>) {
    loop {
        let period = *interval.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep(period) => return,
            changed = interval.changed() => {
                if changed.is_err() {
                    // The agent is shutting down: nobody will change the interval again.
                    tokio::time::sleep(period).await;
                    return;
                }
            }
        }
    }
}

/// Logs the problems of an evaluation that changed something.
fn log_evaluation(evaluation: &Evaluation) {
    if !evaluation.changed {
        return;
    }
    let problems: Vec<String> = evaluation
        .conditions
        .iter()
        .filter(|c| c.status() != ConditionStatus::Ok)
        .map(|c| conditions::condition_key(&c.r#type, &c.subject))
        .collect();
    info!(
        conditions = evaluation.conditions.len(),
        problems = ?problems,
        "node conditions changed",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::testing::{new_key, TestFleet};
    use std::path::Path;

    /// A node root whose only check is `RebootRequired`, and the node's certificate.
    fn node() -> (tempfile::TempDir, StatePaths, LeafInfo) {
        let root = tempfile::tempdir().unwrap();
        let settings = root.path().join("etc/opi-agent/health.toml");
        std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
        std::fs::write(&settings, "version = 1\nchecks = [\"RebootRequired\"]\n").unwrap();
        std::fs::create_dir_all(root.path().join("var/run")).unwrap();
        let paths = StatePaths::new(root.path(), Path::new(crate::paths::DEFAULT_STATE_DIR));
        std::fs::create_dir_all(&paths.dir).unwrap();
        let (key, _) = new_key();
        let chain = TestFleet::new("prod").node_chain("worker-1", &key);
        (root, paths, LeafInfo::from_chain(&chain).unwrap())
    }

    fn status_of(latest: &Latest, kind: &str) -> ConditionStatus {
        let condition = latest.conditions.iter().find(|c| c.r#type == kind);
        condition.expect("condition reported").status()
    }

    /// Waits, up to a bound, for an evaluation that changed a condition.
    async fn next_revision(latest: &mut watch::Receiver<Latest>) {
        let changed = async {
            while latest.borrow_and_update().revision == 0 {
                latest.changed().await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(10), changed)
            .await
            .expect("no changed evaluation within 10 s");
    }

    #[tokio::test]
    async fn a_changed_condition_makes_a_report_of_the_full_set_due_at_once() {
        let (root, paths, leaf) = node();
        let checks = Checks::start(&paths, &leaf, Duration::from_millis(20))
            .await
            .unwrap();
        let mut latest = checks.latest.clone();
        let first = latest.borrow_and_update().clone();
        assert_eq!(status_of(&first, "RebootRequired"), ConditionStatus::Ok);
        let (outbox, mut queue) = mpsc::channel(4);
        assert_eq!(send_report_if_due(&outbox, &latest, first.revision), 0);
        assert!(queue.try_recv().is_err(), "nothing changed, nothing sent");

        std::fs::write(root.path().join("var/run/reboot-required"), "").unwrap();
        next_revision(&mut latest).await;
        assert_eq!(send_report_if_due(&outbox, &latest, first.revision), 1);
        let Ok(AgentMessage {
            body: Some(AgentBody::Report(report)),
        }) = queue.try_recv()
        else {
            panic!("no report queued");
        };
        let kinds: Vec<&str> = report
            .conditions
            .iter()
            .map(|c| c.r#type.as_str())
            .collect();
        assert_eq!(kinds, ["AgentDegraded", "RebootRequired"]);
        assert_eq!(report.conditions[1].status(), ConditionStatus::Problem);
        assert!(
            paths.conditions().exists(),
            "the history is kept for restarts"
        );
    }

    #[tokio::test]
    async fn a_report_the_outbox_cannot_take_stays_due() {
        let (root, paths, leaf) = node();
        let checks = Checks::start(&paths, &leaf, Duration::from_millis(20))
            .await
            .unwrap();
        let mut latest = checks.latest.clone();
        std::fs::write(root.path().join("var/run/reboot-required"), "").unwrap();
        next_revision(&mut latest).await;

        let (outbox, mut queue) = mpsc::channel(1);
        outbox.try_send(AgentMessage { body: None }).unwrap();
        assert_eq!(send_report_if_due(&outbox, &latest, 0), 0, "still owed");
        queue.try_recv().unwrap();
        assert_eq!(
            send_report_if_due(&outbox, &latest, 0),
            latest.borrow().revision
        );
    }

    #[tokio::test]
    async fn a_bad_health_file_stops_the_start_naming_it() {
        let (root, paths, leaf) = node();
        let settings = root.path().join("etc/opi-agent/health.toml");
        std::fs::write(&settings, "version = 1\nchecks = [\"Nope\"]\n").unwrap();
        let Err(error) = Checks::start(&paths, &leaf, Duration::from_secs(10)).await else {
            panic!("a bad health.toml was accepted");
        };
        assert!(
            error.to_string().contains(&settings.display().to_string()),
            "{error}"
        );
        assert_eq!(error.exit_code(), crate::EXIT_USAGE);
    }
}
