//! The apply engine and the `opi-agent plan` and `opi-agent apply` subcommands.
//!
//! A profile is rendered by `opi-profile` into a desired state, which the engine diffs against
//! the node ([`plan`]), then applies as one transaction ([`engine`]): last-known-good and
//! journal first ([`journal`]), atomic writes keeping modes and owners ([`fsops`]), live
//! sysctls and service restarts through systemd's D-Bus API only when `--root` is `/`, health
//! verification ([`verify`]), then commit ([`record`]) or restore. Each kind of change has its
//! own module under [`kinds`]. [`drift`] re-checks what the last apply owns.

pub mod apply_command;
pub mod diff;
pub mod engine;
pub mod floor_file;
pub mod fsops;
pub mod journal;
pub mod kinds;
pub mod node;
pub mod plan;
pub mod plan_command;
pub mod record;
pub mod render;
pub mod verify;

use std::io;
use std::path::PathBuf;

use clap::Args;
use opi_profile::{DesiredState, Profile, ProfileErrors};
use tracing::{error, warn};

use crate::conditions::config::HealthConfig;
use crate::conditions::{ConfigError, NodeFiles};
use crate::paths::{LocationArgs, StatePaths};
pub use apply_command::ApplyArgs;
use engine::{EngineError, Recovery};
use floor_file::FloorError;
use kinds::sysctl::DEFAULT_PROC_SYS;
use node::{Node, DEFAULT_DBUS_SOCKET};
pub use plan_command::PlanArgs;
use record::{AppliedRecord, Drift};
use verify::Verifier;

/// What `plan` and `apply` both take.
#[derive(Args, Debug)]
pub struct TargetArgs {
    /// Where the node's files are; live steps run only when --root is /
    #[command(flatten)]
    pub location: LocationArgs,

    /// The node profile (YAML, apiVersion opi.fleet/v1)
    #[arg(long, value_name = "FILE")]
    pub profile: PathBuf,

    /// Where live sysctls are read and written when --root is /
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PROC_SYS)]
    pub proc_sys: PathBuf,

    /// systemd's D-Bus socket, for service restarts when --root is /
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DBUS_SOCKET)]
    pub dbus_socket: PathBuf,
}

/// Why `plan` or `apply` failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The profile file cannot be read.
    #[error("cannot read the profile {path}")]
    ReadProfile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The profile is invalid, or breaks the node's floor; every problem is listed.
    #[error("{profile} cannot be applied on this node")]
    InvalidProfile {
        /// The file, or the generation received from the manager.
        profile: String,
        /// Every problem.
        #[source]
        source: ProfileErrors,
    },
    /// The node's floor cannot be read.
    #[error(transparent)]
    LoadFloor(FloorError),
    /// `health.toml` cannot be read.
    #[error(transparent)]
    LoadHealthConfig(ConfigError),
    /// An interrupted apply could not be undone.
    #[error("cannot recover the apply interrupted under {state_dir}")]
    Recover {
        /// The state directory.
        state_dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The plan could not be computed, or the apply failed.
    #[error(transparent)]
    Engine(EngineError),
    /// Standard output cannot be written.
    #[error("cannot write the result to standard output")]
    WriteOutput(#[source] io::Error),
}

impl ApplyError {
    /// The process exit code: a bad profile or local setting is a usage error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApplyError::ReadProfile { .. }
            | ApplyError::InvalidProfile { .. }
            | ApplyError::LoadFloor(_)
            | ApplyError::Engine(EngineError::ValidateConfig { .. })
            | ApplyError::Engine(EngineError::RebootNotAllowed { .. }) => crate::EXIT_USAGE,
            ApplyError::LoadHealthConfig(error) => error.exit_code(),
            ApplyError::Recover { .. } | ApplyError::Engine(_) | ApplyError::WriteOutput(_) => {
                crate::EXIT_RUNTIME
            }
        }
    }
}

/// Everything `plan` and `apply` work from.
pub struct Prepared {
    /// The node.
    pub node: Node,
    /// The desired state.
    pub desired: DesiredState,
    /// SHA-256 of the profile file.
    pub profile_sha256: String,
    /// The checks after an apply.
    pub verifier: Verifier,
}

/// Recovers an interrupted apply, then reads the profile, the floor and the health settings.
pub async fn prepare(target: &TargetArgs) -> Result<Prepared, ApplyError> {
    let paths = target.location.resolve();
    let node = Node::new(&paths, &target.proc_sys, &target.dbus_socket);
    recover(&node).await?;

    let text =
        std::fs::read_to_string(&target.profile).map_err(|source| ApplyError::ReadProfile {
            path: target.profile.clone(),
            source,
        })?;
    let name = target.profile.display().to_string();
    prepare_text(node, &text, &name)
}

/// Validates the profile `text` (called `name` in errors) against the node's floor, and reads
/// the health settings the verification uses. Changes nothing.
pub fn prepare_text(node: Node, text: &str, name: &str) -> Result<Prepared, ApplyError> {
    let invalid = |source| ApplyError::InvalidProfile {
        profile: name.to_string(),
        source,
    };
    let profile = Profile::from_yaml(text).map_err(invalid)?;
    profile
        .check_exceptions(time::OffsetDateTime::now_utc().date())
        .map_err(invalid)?;
    let floor = floor_file::load(&node.root).map_err(ApplyError::LoadFloor)?;
    let desired = profile.desired_state(&floor).map_err(invalid)?;

    let files = NodeFiles::new(&node.root);
    let health = HealthConfig::load(&files).map_err(ApplyError::LoadHealthConfig)?;
    let verifier = Verifier {
        health,
        files,
        manager: None,
    };
    let profile_sha256 = fsops::sha256(text.as_bytes());
    Ok(Prepared {
        node,
        desired,
        profile_sha256,
        verifier,
    })
}

/// Finishes or undoes an apply interrupted on `node`; an error if it cannot be undone whole.
pub async fn recover(node: &Node) -> Result<Recovery, ApplyError> {
    let failed = |source| ApplyError::Recover {
        state_dir: node.state_dir.clone(),
        source,
    };
    let recovery = engine::recover(node).await.map_err(failed)?;
    if let Recovery::RolledBack(problems) = &recovery {
        if !problems.is_empty() {
            return Err(failed(io::Error::other(problems.join("; "))));
        }
        warn!(root = %node.root.display(), "the interrupted apply was rolled back to the last-known-good");
    }
    Ok(recovery)
}

/// At `opi-agent run` start: recovers an interrupted apply, logging what happened; the agent
/// starts either way, so that it can still report the node.
pub async fn recover_at_start(paths: &StatePaths) {
    let node = Node::new(
        paths,
        PathBuf::from(DEFAULT_PROC_SYS).as_path(),
        PathBuf::from(DEFAULT_DBUS_SOCKET).as_path(),
    );
    if let Err(failure) = recover(&node).await {
        error!(error = %crate::ErrorChain(&failure), "cannot recover the interrupted apply");
    }
}

/// Every item the last committed apply on `node` owns that drifted since: files edited,
/// removed or with another mode or owner, and live sysctls changed (when `node` is live).
///
/// Shortcoming: nothing calls it periodically yet; the stream integration will, and will
/// report it as a node condition.
pub fn drift(node: &Node) -> io::Result<Vec<Drift>> {
    match AppliedRecord::load(node)? {
        Some(record) => record::check(node, &record),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests;
