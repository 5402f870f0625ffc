//! The transaction: plan, save the last-known-good, apply, verify, then commit, or restore the
//! last-known-good and say why. [`recover`] finishes or undoes an apply a crash interrupted.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use opi_profile::{ChangeKind, DesiredState, Scope};
use tracing::{info, warn};

use super::fsops::{self, Meta};
use super::journal::{self, Journal, Phase};
use super::kinds::{self, files::PermissionStep, login_defs::EditStep, sysctl};
use super::node::Node;
use super::plan::{self, Plan};
use super::record::{own, AppliedRecord, OwnedEdit, OwnedFile, OwnedPermission, OwnedSysctl};
use super::verify::Verifier;
use crate::output::timestamp;
use crate::systemd::{Systemd, DEFAULT_JOB_TIMEOUT};
use crate::ErrorChain;

/// The flag file that marks a node as needing a reboot, as Debian's packages do.
pub const REBOOT_FLAG: &str = "/var/run/reboot-required";
/// Test-only: pause after this many file writes (see [`pause_after_write`]).
pub const TEST_PAUSE_ENV: &str = "OPI_AGENT_TEST_PAUSE_AFTER_WRITE";
/// Test-only: the line printed to standard error when pausing.
pub const TEST_PAUSE_MARKER: &str = "opi-agent test hook: paused after write";

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The node's files or live values cannot be read.
    #[error("cannot read the current state of the node under {root}")]
    ReadNode {
        /// The root.
        root: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The program that owns a configuration refused it; nothing was changed.
    #[error("{path} was refused before anything changed: {reason}")]
    ValidateConfig {
        /// The file.
        path: String,
        /// What the program said.
        reason: String,
    },
    /// The change needs a reboot and the profile does not allow one; nothing was changed.
    #[error("the profile needs a reboot to take effect ({}) and apply.allowReboot is false; nothing was changed", items.join(", "))]
    RebootNotAllowed {
        /// The reboot-scoped values.
        items: Vec<String>,
    },
    /// The last-known-good or the journal cannot be saved; nothing was changed.
    #[error("cannot save the last-known-good in {dir}; nothing was changed")]
    SaveLastKnownGood {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Applying or verifying failed, and the last-known-good was restored.
    #[error(
        "the apply was rolled back to the last-known-good: {why}{}",
        restore_problems(problems)
    )]
    RolledBack {
        /// Why it was rolled back.
        why: String,
        /// What could not be restored.
        problems: Vec<String>,
    },
    /// The commit could not be recorded.
    #[error("cannot record the committed apply in {path}")]
    Commit {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A committed apply.
#[derive(Debug)]
pub struct Applied {
    /// What was planned and done.
    pub plan: Plan,
    /// Whether anything changed.
    pub changed: bool,
    /// One line per verification.
    pub verified: Vec<String>,
}

/// What [`recover`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No apply was interrupted.
    Nothing,
    /// An interrupted apply was undone; what could not be restored, if anything.
    RolledBack(Vec<String>),
    /// A verified apply was interrupted while committing, and its commit finished.
    Committed,
}

/// Applies `desired` on `node` as one transaction.
pub async fn apply(
    node: &Node,
    desired: &DesiredState,
    profile_sha256: &str,
    verifier: &Verifier,
) -> Result<Applied, EngineError> {
    let read = |source| EngineError::ReadNode {
        root: node.root.clone(),
        source,
    };
    let previous = AppliedRecord::load(node).map_err(read)?;
    let plan = plan::compute(node, desired, previous.as_ref()).map_err(read)?;
    validate_configs(desired, &plan)?;
    if !plan.reboot_required.is_empty() && !desired.options.allow_reboot {
        return Err(EngineError::RebootNotAllowed {
            items: plan.reboot_required.clone(),
        });
    }
    let record = new_record(node, desired, profile_sha256).map_err(read)?;
    if !plan.has_changes() {
        record.store(node).map_err(|source| EngineError::Commit {
            path: node.applied(),
            source,
        })?;
        return Ok(Applied {
            plan,
            changed: false,
            verified: Vec::new(),
        });
    }

    let dir = node.apply_dir();
    let journal = journal::save(node, &plan, record)
        .map_err(|source| EngineError::SaveLastKnownGood { dir, source })?;
    info!(root = %node.root.display(), files = plan.changed_files().count(), "applying profile");
    let deadline = Duration::from_secs(desired.options.verify_timeout_secs);
    match run_steps(node, &plan, verifier, deadline).await {
        Ok(verified) => {
            commit(node, journal, !plan.reboot_required.is_empty())?;
            info!(root = %node.root.display(), "profile applied and committed");
            Ok(Applied {
                plan,
                changed: true,
                verified,
            })
        }
        Err(why) => {
            warn!(root = %node.root.display(), %why, "apply failed, restoring the last-known-good");
            let problems = rollback(node, &journal).await;
            Err(EngineError::RolledBack { why, problems })
        }
    }
}

/// Finishes or undoes an apply that a crash interrupted; to run before anything else.
pub async fn recover(node: &Node) -> io::Result<Recovery> {
    let Some(journal) = journal::load(node)? else {
        return Ok(Recovery::Nothing);
    };
    if journal.phase == Phase::Committing {
        warn!(root = %node.root.display(), "finishing the commit of an interrupted apply");
        commit(node, journal, false).map_err(io::Error::other)?;
        return Ok(Recovery::Committed);
    }
    warn!(root = %node.root.display(), "an apply was interrupted; restoring the last-known-good");
    let problems = rollback(node, &journal).await;
    Ok(Recovery::RolledBack(problems))
}

/// Checks the changed configurations with their own programs before anything is written.
fn validate_configs(desired: &DesiredState, plan: &Plan) -> Result<(), EngineError> {
    for step in plan.changed_files() {
        let Some(file) = desired.file(&step.path) else {
            continue;
        };
        let checked = match file.kind {
            ChangeKind::Sshd => kinds::sshd::validate(&file.content),
            ChangeKind::Sudo => kinds::sudo::validate(&file.content),
            ChangeKind::Containerd => kinds::containerd::validate(&file.content),
            _ => continue,
        };
        checked.map_err(|reason| EngineError::ValidateConfig {
            path: step.path.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Writes, sets, restarts and verifies; `Err` says why the apply must be undone.
async fn run_steps(
    node: &Node,
    plan: &Plan,
    verifier: &Verifier,
    deadline: Duration,
) -> Result<Vec<String>, String> {
    let pause_after = std::env::var(TEST_PAUSE_ENV)
        .ok()
        .and_then(|n| n.parse::<usize>().ok());
    for (index, step) in plan.changed_files().enumerate() {
        let path = node.file(&step.path);
        let written = match &step.write {
            Some((content, meta)) => fsops::write_atomic(&path, content, *meta),
            None => fsops::remove(&path),
        };
        written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if pause_after == Some(index + 1) {
            pause_after_write(index + 1).await;
        }
    }
    for change in &plan.permissions {
        let path = node.file(&change.path);
        fsops::set_meta(&path, change.to)
            .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    }
    for step in &plan.sysctls {
        sysctl::write_live(&node.proc_sys, &step.key, &step.to)
            .map_err(|e| format!("cannot set sysctl {}={}: {e}", step.key, step.to))?;
    }
    restart(node, &plan.restart, plan.daemon_reload).await?;
    verifier.verify(&plan.services(), deadline).await
}

/// Test-only hook: says so on standard error and waits to be killed.
async fn pause_after_write(count: usize) {
    eprintln!("{TEST_PAUSE_MARKER} {count}");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// Reloads systemd if asked and restarts `units`, in order.
async fn restart(node: &Node, units: &[String], daemon_reload: bool) -> Result<(), String> {
    if units.is_empty() && !daemon_reload {
        return Ok(());
    }
    let systemd = Systemd::connect(&node.dbus_socket)
        .await
        .map_err(|e| ErrorChain(&e).to_string())?;
    if daemon_reload {
        systemd
            .reload()
            .await
            .map_err(|e| ErrorChain(&e).to_string())?;
    }
    for unit in units {
        info!(unit = %unit, "restarting");
        systemd
            .restart(unit, DEFAULT_JOB_TIMEOUT)
            .await
            .map_err(|e| ErrorChain(&e).to_string())?;
    }
    Ok(())
}

/// Records the apply as committed, then drops the journal and the copies.
fn commit(node: &Node, mut journal: Journal, reboot_required: bool) -> Result<(), EngineError> {
    let failed = |path: PathBuf| move |source| EngineError::Commit { path, source };
    journal.phase = Phase::Committing;
    journal::store(node, &journal).map_err(failed(node.journal()))?;
    journal.record.store(node).map_err(failed(node.applied()))?;
    if reboot_required {
        let flag = node.file(REBOOT_FLAG);
        let meta = own(Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        fsops::write_atomic(&flag, b"*** System restart required ***\n", meta)
            .map_err(failed(flag))?;
    }
    journal::clear(node).map_err(failed(node.apply_dir()))
}

/// Restores the last-known-good, restarts what was restarted, drops the journal.
async fn rollback(node: &Node, journal: &Journal) -> Vec<String> {
    let mut problems = journal::restore(node, journal);
    if journal.live {
        if let Err(why) = restart(node, &journal.restart, journal.daemon_reload).await {
            problems.push(format!("cannot restart the services again: {why}"));
        }
    }
    if problems.is_empty() {
        if let Err(error) = journal::clear(node) {
            problems.push(format!(
                "cannot remove the journal {}: {error}",
                node.journal().display()
            ));
        }
    }
    problems
}

/// What the apply will own once committed.
fn new_record(
    node: &Node,
    desired: &DesiredState,
    profile_sha256: &str,
) -> io::Result<AppliedRecord> {
    let files = desired
        .files
        .iter()
        .map(|f| OwnedFile {
            path: f.path.clone(),
            sha256: fsops::sha256(f.content.as_bytes()),
            meta: own(Meta {
                mode: f.mode,
                uid: 0,
                gid: 0,
            }),
        })
        .collect();
    let mut permissions = Vec::new();
    for rule in &desired.permissions {
        let meta = match plan::permission_step(node, desired, rule)? {
            PermissionStep::Change { to, .. } => Some(to),
            PermissionStep::Unchanged => fsops::meta(&node.file(&rule.path))?,
            PermissionStep::Absent | PermissionStep::UnknownOwner(_) => None,
        };
        permissions.extend(meta.map(|meta| OwnedPermission {
            path: rule.path.clone(),
            meta,
        }));
    }
    let sysctls = match node.live {
        true => desired
            .sysctls
            .iter()
            .filter(|s| s.scope == Scope::Live)
            .map(|s| OwnedSysctl {
                key: s.key.clone(),
                value: s.value.clone(),
            })
            .collect(),
        false => Vec::new(),
    };
    let mut edits = Vec::new();
    for edit in &desired.edits {
        if let EditStep::Write { .. } = kinds::login_defs::step(node, edit)? {
            edits.push(OwnedEdit {
                file: edit.file,
                keys: edit.keys.clone(),
            });
        }
    }
    let applied_at = timestamp(time::OffsetDateTime::now_utc());
    Ok(AppliedRecord {
        version: super::record::RECORD_VERSION,
        applied_at,
        profile_sha256: profile_sha256.to_string(),
        files,
        permissions,
        sysctls,
        edits,
        promise: desired.promise.clone(),
    })
}

fn restore_problems(problems: &[String]) -> String {
    match problems.is_empty() {
        true => String::new(),
        false => format!("; restoring failed too: {}", problems.join("; ")),
    }
}
