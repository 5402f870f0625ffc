//! `profile.json`: the last profile generation this node applied, with its document (so that
//! drift can be remediated while the manager is away), and what became of the last generation
//! the manager sent, so that a generation that failed is reported again instead of retried at
//! every reconnection. The agent never takes a generation older than the one it applied.

use std::cmp::Ordering;
use std::io;
use std::path::{Path, PathBuf};

use opi_pki::files::{self, FileError};
use serde::{Deserialize, Serialize};

/// The only `version` of the file.
pub const PROFILE_STATE_VERSION: u32 = 1;

/// A profile generation as the fleet numbers it: the store's epoch first, so that a restored
/// backup (a new epoch) still moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GenerationId {
    /// The store's epoch.
    pub epoch: u64,
    /// The fleet-wide generation number.
    pub generation: u64,
}

/// The generation the node runs. Its `Debug` leaves the document out: it may hold registry
/// credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedProfile {
    /// The pool it belongs to.
    pub pool: String,
    /// Its number.
    pub id: GenerationId,
    /// `sha256:` and the hex digest of `yaml`.
    pub digest: String,
    /// The document, secrets included.
    pub yaml: String,
}

/// What became of a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied and verified, or already in place.
    Applied,
    /// Applying or verifying failed and the last-known-good was restored.
    RolledBack,
    /// Refused without touching the node.
    Refused,
}

/// The last generation the manager sent, and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its number.
    pub id: GenerationId,
    /// Its digest.
    pub digest: String,
    /// What became of it.
    pub outcome: Outcome,
    /// Why, for every outcome but `applied`.
    pub reason: String,
    /// What changed (applied) or was restored (rolled back).
    pub changes: Vec<String>,
    /// A reboot-scoped change waits for the next boot.
    pub reboot_required: bool,
    /// When it ended, RFC 3339.
    pub at: String,
}

/// The file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileState {
    /// [`PROFILE_STATE_VERSION`].
    pub version: u32,
    /// The generation the node runs, if the manager ever sent one it applied.
    pub applied: Option<AppliedProfile>,
    /// The last generation received.
    pub last: Option<Attempt>,
}

/// Why `profile.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileStateError {
    /// The file exists but cannot be read.
    #[error("cannot read the profile state {path}")]
    ReadProfileState {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not what this agent writes.
    #[error("{path} is not a profile state this agent can read")]
    ParseProfileState {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file cannot be written.
    #[error(transparent)]
    StoreProfileState(FileError),
}

impl PartialOrd for GenerationId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GenerationId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.epoch, self.generation).cmp(&(other.epoch, other.generation))
    }
}

impl std::fmt::Display for GenerationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {} (epoch {})", self.generation, self.epoch)
    }
}

impl ProfileState {
    /// The state of a node that never received a profile.
    pub fn empty() -> Self {
        Self {
            version: PROFILE_STATE_VERSION,
            ..Self::default()
        }
    }

    /// Reads the state at `path`; empty when the node never received a profile.
    pub fn load(path: &Path) -> Result<Self, ProfileStateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Self::empty()),
            Err(source) => {
                return Err(ProfileStateError::ReadProfileState {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| ProfileStateError::ParseProfileState {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the state atomically, 0600.
    pub fn store(&self, path: &Path) -> Result<(), ProfileStateError> {
        let text = serde_json::to_vec_pretty(self).expect("the profile state serialises");
        files::write_secret(path, &text).map_err(ProfileStateError::StoreProfileState)
    }

    /// The generation the node runs.
    pub fn applied_id(&self) -> Option<GenerationId> {
        self.applied.as_ref().map(|a| a.id)
    }
}

impl std::fmt::Debug for AppliedProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppliedProfile")
            .field("pool", &self.pool)
            .field("id", &self.id)
            .field("digest", &self.digest)
            .field("yaml", &format_args!("<{} bytes>", self.yaml.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(epoch: u64, generation: u64) -> GenerationId {
        GenerationId { epoch, generation }
    }

    #[test]
    fn generations_order_by_epoch_first() {
        assert!(id(1, 9) < id(2, 1));
        assert!(id(2, 1) < id(2, 2));
        assert_eq!(id(3, 4).max(id(3, 5)), id(3, 5));
    }

    #[test]
    fn state_round_trips_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        let empty = ProfileState::load(&path).unwrap();
        assert_eq!(empty.version, PROFILE_STATE_VERSION);
        assert!(empty.applied.is_none());

        let state = ProfileState {
            version: PROFILE_STATE_VERSION,
            applied: Some(AppliedProfile {
                pool: "workers".into(),
                id: id(1, 3),
                digest: "sha256:00".into(),
                yaml: "apiVersion: opi.fleet/v1\n".into(),
            }),
            last: None,
        };
        state.store(&path).unwrap();
        assert_eq!(ProfileState::load(&path).unwrap(), state);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        std::fs::write(&path, "{not json").unwrap();
        let error = ProfileState::load(&path).unwrap_err();
        assert!(error.to_string().contains("profile.json"), "{error}");
    }

    #[test]
    fn applied_profiles_print_without_their_document() {
        let applied = AppliedProfile {
            pool: "workers".into(),
            id: id(1, 2),
            digest: "sha256:00".into(),
            yaml: "password: hunter2".into(),
        };
        let shown = format!("{applied:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<17 bytes>"), "{shown}");
    }
}
