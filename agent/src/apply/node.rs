//! The node the engine works on: its root, its state directory, and whether live steps
//! (sysctl writes, service restarts) run, which they do only when the root is `/`.

use std::path::{Path, PathBuf};

use crate::paths::{under_root, StatePaths};

/// Name of the engine's directory inside the agent's state directory.
pub const APPLY_DIR: &str = "apply";
/// The journal of an apply in progress.
pub const JOURNAL_FILE: &str = "journal.json";
/// The last-known-good copies of the files an apply in progress touches.
pub const LKG_DIR: &str = "last-known-good";
/// What the last committed apply owns, for drift checks.
pub const APPLIED_FILE: &str = "applied.json";
/// systemd's D-Bus socket by default.
pub const DEFAULT_DBUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// Where and how the engine applies.
#[derive(Clone, Debug)]
pub struct Node {
    /// The root every managed file lives under.
    pub root: PathBuf,
    /// The agent's state directory, under the root.
    pub state_dir: PathBuf,
    /// Whether live steps run (the root is `/`).
    pub live: bool,
    /// Where live sysctls are read and written.
    pub proc_sys: PathBuf,
    /// The kernel's list of loaded modules.
    pub proc_modules: PathBuf,
    /// systemd's D-Bus socket.
    pub dbus_socket: PathBuf,
}

impl Node {
    /// A node rooted at `paths.root`; live steps run only when that is `/`.
    pub fn new(paths: &StatePaths, proc_sys: &Path, dbus_socket: &Path) -> Self {
        Self {
            live: paths.root == Path::new("/"),
            root: paths.root.clone(),
            state_dir: paths.dir.clone(),
            proc_sys: proc_sys.to_path_buf(),
            proc_modules: PathBuf::from(super::kinds::modules::PROC_MODULES),
            dbus_socket: dbus_socket.to_path_buf(),
        }
    }

    /// Where the node path `path` (`/etc/…`) is on this machine.
    pub fn file(&self, path: &str) -> PathBuf {
        under_root(&self.root, Path::new(path))
    }

    /// The engine's directory.
    pub fn apply_dir(&self) -> PathBuf {
        self.state_dir.join(APPLY_DIR)
    }

    /// The journal.
    pub fn journal(&self) -> PathBuf {
        self.apply_dir().join(JOURNAL_FILE)
    }

    /// The last-known-good directory.
    pub fn lkg_dir(&self) -> PathBuf {
        self.apply_dir().join(LKG_DIR)
    }

    /// The applied record.
    pub fn applied(&self) -> PathBuf {
        self.state_dir.join(APPLIED_FILE)
    }
}
