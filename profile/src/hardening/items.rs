//! The items a hardening baseline or a profile sets, named by what they change
//! (`sysctl/kernel.kptr_restrict`, `module/usb-storage`, `sshd/PermitRootLogin`,
//! `file/etc/shadow`), and when the change takes effect.

use std::fmt;

use serde::{Deserialize, Serialize};

/// When a change takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Written to its file and applied to the running system now.
    Live,
    /// Written to its file only; takes effect at the next boot, and no reboot is asked for.
    FileOnly,
    /// Written to its file only, because applying it live cannot be undone without a reboot;
    /// the plan says a reboot is required.
    Reboot,
}

/// What an item changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Change {
    /// A kernel parameter.
    Sysctl {
        /// Dotted name, `kernel.kptr_restrict`.
        key: String,
        /// Value as written to the sysctl file.
        value: String,
    },
    /// A kernel module that must not load.
    BlacklistModule {
        /// Module name.
        module: String,
    },
    /// One sshd keyword in the agent's drop-in.
    Sshd {
        /// The keyword, `PermitRootLogin`.
        key: String,
        /// Its value.
        value: String,
    },
    /// Mode and owner of an existing file.
    Permission {
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Owner user name.
        owner: String,
        /// Owner group name.
        group: String,
    },
}

/// The name of an item: its kind and subject, unique within a resolved hardening.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ItemId(pub String);

/// A hardening item after resolution, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResolvedItem {
    /// Its name.
    pub id: ItemId,
    /// What it changes.
    pub change: Change,
    /// When it takes effect.
    pub scope: Scope,
    /// Where it came from: `anssi-bp028-intermediary R9 (…)` or the profile path of an override.
    pub origin: String,
    /// Its path in the profile, when the profile set it rather than the baseline.
    pub path: Option<String>,
}

impl Change {
    /// The name of the item this change belongs to.
    pub fn id(&self) -> ItemId {
        ItemId(match self {
            Change::Sysctl { key, .. } => format!("sysctl/{key}"),
            Change::BlacklistModule { module } => format!("module/{module}"),
            Change::Sshd { key, .. } => format!("sshd/{key}"),
            Change::Permission { path, .. } => format!("file{path}"),
        })
    }

    /// The value this change sets, for messages.
    pub fn value_text(&self) -> String {
        match self {
            Change::Sysctl { value, .. } | Change::Sshd { value, .. } => value.clone(),
            Change::BlacklistModule { .. } => "blacklisted".to_string(),
            Change::Permission {
                mode, owner, group, ..
            } => format!("{mode:04o} {owner}:{group}"),
        }
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Live => "live",
            Scope::FileOnly => "file-only",
            Scope::Reboot => "reboot",
        })
    }
}

/// The scope a sysctl value must have: values that lock the kernel until the next boot
/// (`kernel.modules_disabled=1`, `kernel.yama.ptrace_scope=3`,
/// `kernel.unprivileged_bpf_disabled=1`) are reboot-scoped, every other is live.
pub fn sysctl_scope(key: &str, value: &str) -> Scope {
    let one_way = matches!(
        (key, value.trim()),
        ("kernel.modules_disabled", "1")
            | ("kernel.yama.ptrace_scope", "3")
            | ("kernel.unprivileged_bpf_disabled", "1")
            | ("kernel.kexec_load_disabled", "1")
    );
    if one_way {
        Scope::Reboot
    } else {
        Scope::Live
    }
}
