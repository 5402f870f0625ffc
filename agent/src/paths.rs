//! Where the agent keeps its files. Every path is resolved under `--root`, so that tests,
//! image builds and audits can point the agent at a directory tree instead of the host.

use std::path::{Component, Path, PathBuf};

use clap::Args;

/// Default `--root`: the host itself.
pub const DEFAULT_ROOT: &str = "/";
/// Default state directory, resolved under the root.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/opi-agent";
/// Mode of the state directory: only root may even list it.
pub const STATE_DIR_MODE: u32 = 0o700;

/// The node's private key.
pub const NODE_KEY: &str = "node.key";
/// The node's certificate followed by its issuing CA.
pub const NODE_CERT: &str = "node.pem";
/// The fleet trust bundle (root CAs).
pub const CA_BUNDLE: &str = "ca.pem";
/// The agent's settings; written last, its presence means "enrolled".
pub const AGENT_CONFIG: &str = "agent.toml";
/// When each node condition last changed status, kept across agent restarts.
pub const CONDITIONS_FILE: &str = "conditions.json";
/// The profile generation the manager sent and what became of it (0600: it holds the
/// profile's registry credentials).
pub const PROFILE_FILE: &str = "profile.json";
/// Suffix of a key made for an enrollment that has not completed yet.
pub const PENDING_SUFFIX: &str = ".pending";
/// The profile signer keys pinned at enrollment.
pub const PROFILE_SIGNERS: &str = "profile-signers.txt";
/// Why the manager refused to renew the expired certificate, while it does (for `status`).
pub const RENEWAL_REFUSED: &str = "renewal-refused.txt";
/// Suffix of a renewed key or certificate not yet moved in place.
pub const NEXT_SUFFIX: &str = ".next";

/// `--root` and `--state-dir`, shared by the subcommands that read the node's state.
#[derive(Args, Clone, Debug)]
pub struct LocationArgs {
    /// Directory under which every file the agent writes lives (tests, image builds, audits)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,

    /// Directory of the node's key, certificate and settings, resolved under --root
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// The resolved locations of the agent's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatePaths {
    /// The root every written file lives under.
    pub root: PathBuf,
    /// The state directory, already under the root.
    pub dir: PathBuf,
}

impl LocationArgs {
    /// The paths these arguments name.
    pub fn resolve(&self) -> StatePaths {
        StatePaths::new(&self.root, &self.state_dir)
    }

    /// The `--root`/`--state-dir` arguments to repeat in a suggested command, if not defaults.
    pub fn as_flags(&self) -> String {
        let mut flags = String::new();
        if self.root != Path::new(DEFAULT_ROOT) {
            flags.push_str(&format!(" --root {}", self.root.display()));
        }
        if self.state_dir != Path::new(DEFAULT_STATE_DIR) {
            flags.push_str(&format!(" --state-dir {}", self.state_dir.display()));
        }
        flags
    }
}

impl StatePaths {
    /// Resolves `state_dir` under `root`.
    pub fn new(root: &Path, state_dir: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            dir: under_root(root, state_dir),
        }
    }

    /// `profile.json`.
    pub fn profile(&self) -> PathBuf {
        self.dir.join(PROFILE_FILE)
    }

    /// `node.key`.
    pub fn node_key(&self) -> PathBuf {
        self.dir.join(NODE_KEY)
    }

    /// `node.pem`.
    pub fn node_cert(&self) -> PathBuf {
        self.dir.join(NODE_CERT)
    }

    /// `ca.pem`.
    pub fn ca_bundle(&self) -> PathBuf {
        self.dir.join(CA_BUNDLE)
    }

    /// `agent.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join(AGENT_CONFIG)
    }

    /// `conditions.json`.
    pub fn conditions(&self) -> PathBuf {
        self.dir.join(CONDITIONS_FILE)
    }

    /// `node.key.pending`.
    pub fn pending_key(&self) -> PathBuf {
        self.dir.join(format!("{NODE_KEY}{PENDING_SUFFIX}"))
    }

    /// `node.key.next`.
    pub fn next_key(&self) -> PathBuf {
        self.dir.join(format!("{NODE_KEY}{NEXT_SUFFIX}"))
    }

    /// `profile-signers.txt`: the signer keys pinned at enrollment, one hex DER per line.
    pub fn profile_signers(&self) -> PathBuf {
        self.dir.join(PROFILE_SIGNERS)
    }

    /// `renewal-refused.txt`.
    pub fn renewal_refused(&self) -> PathBuf {
        self.dir.join(RENEWAL_REFUSED)
    }

    /// The key of a re-enrollment in progress.
    pub fn reenroll_key(&self) -> PathBuf {
        self.dir.join(format!("{NODE_KEY}.reenroll"))
    }

    /// `node.pem.next`.
    pub fn next_cert(&self) -> PathBuf {
        self.dir.join(format!("{NODE_CERT}{NEXT_SUFFIX}"))
    }
}

/// `path` taken as if `root` were `/`. `..` never climbs above the root.
pub fn under_root(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = root.to_path_buf();
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Normal(part) => {
                resolved.push(part);
                depth += 1;
            }
            Component::ParentDir if depth > 0 => {
                resolved.pop();
                depth -= 1;
            }
            Component::ParentDir | Component::RootDir | Component::CurDir => {}
            Component::Prefix(_) => {}
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_dir_lives_under_the_root() {
        let paths = StatePaths::new(Path::new("/tmp/r"), Path::new(DEFAULT_STATE_DIR));
        assert_eq!(paths.dir, Path::new("/tmp/r/var/lib/opi-agent"));
        assert_eq!(
            paths.node_key(),
            Path::new("/tmp/r/var/lib/opi-agent/node.key")
        );
    }

    #[test]
    fn explicit_state_dir_is_also_resolved_under_the_root() {
        let paths = StatePaths::new(Path::new("/tmp/r"), Path::new("/srv/agent"));
        assert_eq!(paths.dir, Path::new("/tmp/r/srv/agent"));
        let relative = StatePaths::new(Path::new("/tmp/r"), Path::new("srv/agent"));
        assert_eq!(relative.dir, Path::new("/tmp/r/srv/agent"));
    }

    #[test]
    fn host_root_leaves_paths_unchanged() {
        let paths = StatePaths::new(Path::new("/"), Path::new(DEFAULT_STATE_DIR));
        assert_eq!(paths.dir, Path::new(DEFAULT_STATE_DIR));
    }

    #[test]
    fn parent_components_never_escape_the_root() {
        let escaped = under_root(Path::new("/tmp/r"), Path::new("/../../etc/x/../y"));
        assert_eq!(escaped, Path::new("/tmp/r/etc/y"));
    }

    #[test]
    fn suggested_flags_repeat_only_non_defaults() {
        let args = LocationArgs {
            root: PathBuf::from("/tmp/r"),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        };
        assert_eq!(args.as_flags(), " --root /tmp/r");
    }
}
