//! Applies the profile generations the manager sends, one at a time in a task of its own, so
//! that sessions keep heartbeating during an apply and an apply survives a broken session.
//!
//! Rules:
//! - a generation older than the one applied is refused, and one whose digest does not match
//!   its document too; the generation applied is answered `applied` again without work;
//! - a generation that failed (refused or rolled back) is not retried when the manager sends
//!   it again: its outcome is reported again, and only a new generation is tried;
//! - while a generation is applied, newer ones wait and only the newest is taken next;
//! - drift of the applied generation (the `ConfigDrift` condition) is reported, and re-applied
//!   once per new set of drifted items when the profile says `driftRemediation: reapply`;
//! - a reboot-scoped change with `apply.allowReboot: true` reboots the node through systemd
//!   once its outcome is reported, and only when the root is `/`.

use std::sync::Arc;
use std::time::Duration;

use opi_profile::DriftRemediation;
use opi_proto::v1::{ApplyOutcome, ApplyReport, ConditionStatus, DesiredProfile};
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{error, info, info_span, warn, Instrument};

use super::evaluation::Latest;
use super::profile_state::{AppliedProfile, Attempt, GenerationId, Outcome, ProfileState};
use crate::apply::engine::{self, Applied, EngineError};
use crate::apply::kinds::sysctl::DEFAULT_PROC_SYS;
use crate::apply::node::{Node, DEFAULT_DBUS_SOCKET};
use crate::apply::plan::{FileAction, Plan};
use crate::apply::verify::ManagerProbe;
use crate::apply::{self, ApplyError};
use crate::conditions::drift::CONFIG_DRIFT;
use crate::output::timestamp;
use crate::paths::StatePaths;
use crate::systemd::Systemd;
use crate::ErrorChain;

/// Time given to the session to deliver the outcome before a reboot the profile allows.
pub const REBOOT_DELAY: Duration = Duration::from_secs(3);

/// The latest outcome to tell the manager, and the generation the node runs.
#[derive(Clone, Debug, Default)]
pub struct Reports {
    /// The latest report; sessions send it when it changes and when they open.
    pub latest: Option<ApplyReport>,
    /// Increased by each new report.
    pub revision: u64,
    /// The generation the node runs, for the hello.
    pub applied: Option<GenerationId>,
}

/// What the run loop holds of the applier task.
pub struct Applier {
    /// The newest generation the manager sent.
    pub desired: watch::Sender<Option<DesiredProfile>>,
    /// What to report.
    pub reports: watch::Receiver<Reports>,
}

impl Applier {
    /// Starts the task for the node at `paths`; `conditions` brings the evaluations it reads
    /// drift from, `manager` checks that the manager is still reachable after a change.
    pub fn start(
        paths: &StatePaths,
        conditions: watch::Receiver<Latest>,
        manager: Arc<dyn ManagerProbe>,
    ) -> Self {
        let state = ProfileState::load(&paths.profile()).unwrap_or_else(|failure| {
            error!(error = %ErrorChain(&failure), "starting without the profile state: the manager's next generation is taken whatever its number");
            ProfileState::empty()
        });
        let first = Reports {
            latest: state.last.as_ref().map(report_of),
            revision: 0,
            applied: state.applied_id(),
        };
        let (reports_sender, reports) = watch::channel(first);
        let (desired, wanted) = watch::channel(None);
        let proc_sys = std::path::PathBuf::from(DEFAULT_PROC_SYS);
        let dbus = std::path::PathBuf::from(DEFAULT_DBUS_SOCKET);
        let task = Task {
            paths: paths.clone(),
            node: Node::new(paths, &proc_sys, &dbus),
            state,
            reports: reports_sender,
            manager,
            drift_reported: None,
            drift_remediated: None,
            signers: crate::store::load_signers(paths),
        };
        tokio::spawn(
            task.run(wanted, conditions)
                .instrument(info_span!("profiles")),
        );
        Self { desired, reports }
    }
}

/// The task's own state.
struct Task {
    paths: StatePaths,
    node: Node,
    state: ProfileState,
    reports: watch::Sender<Reports>,
    manager: Arc<dyn ManagerProbe>,
    /// The drifted items last reported.
    drift_reported: Option<Vec<String>>,
    /// The drifted items last re-applied for.
    drift_remediated: Option<Vec<String>>,
    /// The profile signer keys pinned at enrollment; none means unsigned profiles are taken.
    signers: Vec<Vec<u8>>,
}

/// What one apply of a document led to.
struct Done {
    outcome: Outcome,
    reason: String,
    changes: Vec<String>,
    reboot_required: bool,
    reboot_allowed: bool,
}

impl Task {
    async fn run(
        mut self,
        mut wanted: watch::Receiver<Option<DesiredProfile>>,
        mut conditions: watch::Receiver<Latest>,
    ) {
        let mut evaluating = true;
        loop {
            tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let profile = wanted.borrow_and_update().clone();
                    if let Some(profile) = profile {
                        self.on_profile(profile).await;
                    }
                }
                changed = conditions.changed(), if evaluating => {
                    // The evaluation task only ends with the runtime.
                    evaluating = changed.is_ok();
                    let drifted = drift_status(&conditions.borrow_and_update());
                    self.on_drift(drifted).await;
                }
            }
        }
    }

    /// Takes, refuses or answers again a generation the manager sent.
    async fn on_profile(&mut self, profile: DesiredProfile) {
        let id = GenerationId {
            epoch: profile.epoch,
            generation: profile.generation,
        };
        info!(pool = %profile.pool, generation = id.generation, epoch = id.epoch, "profile generation received");
        if let Some(reason) = self.refusal(id, &profile) {
            warn!(generation = id.generation, reason = %reason, "profile generation refused");
            self.finish(id, &profile.digest, refused(reason), None);
            return;
        }
        if let Some(applied) = &self.state.applied {
            if applied.id == id {
                let done = Done::nothing("the node already runs this generation".into());
                self.finish(id, &profile.digest, done, None);
                return;
            }
        }
        if let Some(last) = self.state.last.clone() {
            if last.id == id && last.digest == profile.digest {
                info!(generation = id.generation, outcome = ?last.outcome, "generation already tried; reporting its outcome again");
                self.publish(report_of(&last));
                return;
            }
        }

        self.publish(applying(id));
        let name = format!("{id} of pool {}", profile.pool);
        let done = self.apply(&profile.yaml, &name, true).await;
        let applied = AppliedProfile {
            pool: profile.pool,
            id,
            digest: profile.digest.clone(),
            yaml: profile.yaml,
        };
        self.drift_reported = None;
        self.drift_remediated = None;
        let reboot = done.reboot_required && done.reboot_allowed;
        self.finish(id, &profile.digest, done, Some(applied));
        if reboot {
            self.reboot().await;
        }
    }

    /// Why `profile` cannot be taken at all, if so.
    fn refusal(&self, id: GenerationId, profile: &DesiredProfile) -> Option<String> {
        if digest(&profile.yaml) != profile.digest {
            return Some(format!(
                "{id} does not match its digest {}; the document was damaged on the way",
                profile.digest
            ));
        }
        if let Some(reason) =
            super::signatures::refusal(&self.signers, profile, self.state.applied.as_ref())
        {
            return Some(format!("{id}: {reason}"));
        }
        let applied = self.state.applied.as_ref()?;
        if id < applied.id {
            return Some(format!(
                "{id} is older than {} which this node applied; an agent never goes back to an older generation",
                applied.id
            ));
        }
        if id == applied.id && applied.digest != profile.digest {
            return Some(format!(
                "{id} was applied with digest {} and now comes with {}; a generation never changes",
                applied.digest, profile.digest
            ));
        }
        None
    }

    /// Applies `yaml` (called `name` in errors) as one transaction; with `probe_manager`, the
    /// manager must still be reachable for the change to be kept.
    async fn apply(&self, yaml: &str, name: &str, probe_manager: bool) -> Done {
        let mut prepared = match apply::prepare_text(self.node.clone(), yaml, name) {
            Ok(prepared) => prepared,
            Err(failure) => return refused(ErrorChain(&failure).to_string()),
        };
        if probe_manager {
            prepared.verifier.manager = Some(self.manager.clone());
        }
        let options = prepared.desired.options.clone();
        let result = engine::apply(
            &prepared.node,
            &prepared.desired,
            &prepared.profile_sha256,
            &prepared.verifier,
        )
        .await;
        let mut done = match result {
            Ok(applied) => applied_done(&applied),
            Err(EngineError::RolledBack { why, problems }) => {
                let failure = ApplyError::Engine(EngineError::RolledBack { why, problems });
                Done {
                    outcome: Outcome::RolledBack,
                    reason: ErrorChain(&failure).to_string(),
                    changes: Vec::new(),
                    reboot_required: false,
                    reboot_allowed: false,
                }
            }
            Err(other) => refused(ErrorChain(&ApplyError::Engine(other)).to_string()),
        };
        done.reboot_allowed = options.allow_reboot && self.node.live;
        done
    }

    /// Records and reports the outcome of `id`; `applied` becomes the node's generation when
    /// the outcome is `applied`.
    fn finish(
        &mut self,
        id: GenerationId,
        digest: &str,
        done: Done,
        applied: Option<AppliedProfile>,
    ) {
        match done.outcome {
            Outcome::Applied => info!(
                generation = id.generation,
                changes = done.changes.len(),
                "profile generation applied"
            ),
            Outcome::RolledBack => {
                warn!(generation = id.generation, reason = %done.reason, "profile generation rolled back")
            }
            Outcome::Refused => {
                warn!(generation = id.generation, reason = %done.reason, "profile generation refused")
            }
        }
        let attempt = attempt_of(id, digest, done);
        if attempt.outcome == Outcome::Applied {
            if let Some(applied) = applied {
                self.state.applied = Some(applied);
            }
        }
        self.state.last = Some(attempt.clone());
        self.save();
        self.publish(report_of(&attempt));
    }

    /// Reports drift of the applied generation, or its end, and re-applies when asked to.
    async fn on_drift(&mut self, drifted: Option<bool>) {
        let Some(applied) = self.state.applied.clone() else {
            return;
        };
        match drifted {
            Some(true) => {}
            Some(false) if self.drift_reported.take().is_some() => {
                info!(generation = applied.id.generation, "drift cleared");
                self.drift_remediated = None;
                let done = Done::nothing("the drift cleared".into());
                self.publish(report_of(&attempt_of(applied.id, &applied.digest, done)));
                return;
            }
            Some(false) | None => return,
        }
        let drifts = match apply::drift(&self.node) {
            Ok(drifts) if !drifts.is_empty() => drifts,
            Ok(_) => return,
            Err(failure) => {
                warn!(error = %ErrorChain(&failure), "cannot list the drifted items");
                return;
            }
        };
        let items: Vec<String> = drifts
            .iter()
            .map(|d| format!("{}: {}", d.item, d.what))
            .collect();
        if self.drift_reported.as_ref() != Some(&items) {
            warn!(generation = applied.id.generation, items = ?items, "the node drifted from its profile");
            let reason = format!("{} item(s) changed on the node", items.len());
            self.publish(drifted_report(applied.id, &items, reason));
            self.drift_reported = Some(items.clone());
        }
        if remediation(&applied) == DriftRemediation::Reapply
            && self.drift_remediated.as_ref() != Some(&items)
        {
            self.drift_remediated = Some(items);
            self.reapply(applied).await;
        }
    }

    /// Applies the node's generation again, over drift.
    async fn reapply(&mut self, applied: AppliedProfile) {
        info!(
            generation = applied.id.generation,
            "re-applying the profile over drift"
        );
        let name = format!(
            "{} of pool {} (re-applied over drift)",
            applied.id, applied.pool
        );
        // The generation was verified when it was first applied; the manager may be away now,
        // which is no reason to leave the node drifted.
        let done = self.apply(&applied.yaml, &name, false).await;
        if done.outcome == Outcome::Applied {
            self.drift_reported = None;
        }
        self.finish(applied.id, &applied.digest, done, None);
    }

    async fn reboot(&self) {
        info!(delay = ?REBOOT_DELAY, "rebooting through systemd, as the profile allows, for its reboot-scoped settings");
        tokio::time::sleep(REBOOT_DELAY).await;
        let result = match Systemd::connect(&self.node.dbus_socket).await {
            Ok(systemd) => systemd.reboot().await,
            Err(failure) => Err(failure),
        };
        if let Err(failure) = result {
            error!(error = %ErrorChain(&failure), "cannot reboot the node; it reports a reboot as required");
        }
    }

    fn save(&self) {
        if let Err(failure) = self.state.store(&self.paths.profile()) {
            error!(error = %ErrorChain(&failure), "cannot store the profile state; after a restart the agent may apply this generation again");
        }
    }

    fn publish(&self, report: ApplyReport) {
        let applied = self.state.applied_id();
        self.reports.send_modify(|reports| {
            reports.latest = Some(report);
            reports.revision += 1;
            reports.applied = applied;
        });
    }
}

impl Done {
    fn nothing(reason: String) -> Self {
        Self {
            outcome: Outcome::Applied,
            reason,
            changes: Vec::new(),
            reboot_required: false,
            reboot_allowed: false,
        }
    }
}

/// Whether the evaluation says the node drifted; `None` when drift is not checked.
fn drift_status(latest: &Latest) -> Option<bool> {
    let condition = latest
        .conditions
        .iter()
        .find(|c| c.r#type == CONFIG_DRIFT)?;
    match condition.status() {
        ConditionStatus::Problem => Some(true),
        ConditionStatus::Ok => Some(false),
        ConditionStatus::Unknown | ConditionStatus::Unspecified => None,
    }
}

/// What the applied profile says of drift; `report` when it cannot be read.
fn remediation(applied: &AppliedProfile) -> DriftRemediation {
    opi_profile::Profile::from_yaml(&applied.yaml)
        .map(|p| p.apply.drift_remediation)
        .unwrap_or(DriftRemediation::Report)
}

fn applied_done(applied: &Applied) -> Done {
    Done {
        outcome: Outcome::Applied,
        reason: String::new(),
        changes: changes(&applied.plan),
        reboot_required: !applied.plan.reboot_required.is_empty(),
        reboot_allowed: false,
    }
}

/// One line per file, mode, live sysctl and restart the plan did.
fn changes(plan: &Plan) -> Vec<String> {
    let files = plan.changed_files().map(|f| {
        let action = match f.action {
            FileAction::Create => "create",
            FileAction::Update => "update",
            FileAction::Remove => "remove",
            FileAction::Unchanged => "keep",
        };
        format!("{action} {}", f.path)
    });
    let modes = plan.permissions.iter().map(|p| format!("mode {}", p.path));
    let sysctls = plan
        .sysctls
        .iter()
        .map(|s| format!("sysctl {}={}", s.key, s.to));
    let restarts = plan.restart.iter().map(|unit| format!("restart {unit}"));
    files.chain(modes).chain(sysctls).chain(restarts).collect()
}

fn refused(reason: String) -> Done {
    Done {
        outcome: Outcome::Refused,
        reason,
        changes: Vec::new(),
        reboot_required: false,
        reboot_allowed: false,
    }
}

fn attempt_of(id: GenerationId, digest: &str, done: Done) -> Attempt {
    Attempt {
        id,
        digest: digest.to_string(),
        outcome: done.outcome,
        reason: done.reason,
        changes: done.changes,
        reboot_required: done.reboot_required,
        at: timestamp(OffsetDateTime::now_utc()),
    }
}

fn report_of(attempt: &Attempt) -> ApplyReport {
    let outcome = match attempt.outcome {
        Outcome::Applied => ApplyOutcome::Applied,
        Outcome::RolledBack => ApplyOutcome::RolledBack,
        Outcome::Refused => ApplyOutcome::Refused,
    };
    ApplyReport {
        generation: attempt.id.generation,
        epoch: attempt.id.epoch,
        outcome: outcome.into(),
        reason: attempt.reason.clone(),
        changes: attempt.changes.clone(),
        drifted: Vec::new(),
        reboot_required: attempt.reboot_required,
    }
}

fn applying(id: GenerationId) -> ApplyReport {
    ApplyReport {
        generation: id.generation,
        epoch: id.epoch,
        outcome: ApplyOutcome::Applying.into(),
        ..ApplyReport::default()
    }
}

fn drifted_report(id: GenerationId, items: &[String], reason: String) -> ApplyReport {
    ApplyReport {
        generation: id.generation,
        epoch: id.epoch,
        outcome: ApplyOutcome::Drifted.into(),
        reason,
        drifted: items.to_vec(),
        ..ApplyReport::default()
    }
}

/// `sha256:` and the hex digest of a document, as the manager computes it.
pub fn digest(yaml: &str) -> String {
    format!("sha256:{}", crate::apply::fsops::sha256(yaml.as_bytes()))
}

/// Queues the latest apply report unless the manager already has it (`sent` is the revision
/// it last got; `None` for a new session, which gets the latest whatever it is). Returns the
/// revision the manager now has; unchanged when the stream is not draining, so that the next
/// heartbeat tries again.
pub fn send_report_if_due(
    outbox: &tokio::sync::mpsc::Sender<opi_proto::v1::AgentMessage>,
    reports: &watch::Receiver<Reports>,
    sent: Option<u64>,
) -> Option<u64> {
    let reports = reports.borrow();
    let Some(report) = &reports.latest else {
        return sent;
    };
    if sent == Some(reports.revision) {
        return sent;
    }
    let message = opi_proto::v1::AgentMessage {
        body: Some(opi_proto::v1::agent_message::Body::Apply(report.clone())),
    };
    match outbox.try_send(message) {
        Ok(()) => Some(reports.revision),
        Err(_) => {
            tracing::debug!("apply report delayed: the stream is not draining");
            sent
        }
    }
}

#[cfg(test)]
#[path = "applier_tests.rs"]
mod tests;
