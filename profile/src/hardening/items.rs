//! The items a hardening baseline or a profile sets, named by what they change
//! (`sysctl/kernel.kptr_restrict`, `module/usb-storage`, `load/br_netfilter`,
//! `sshd/PermitRootLogin`, `file/etc/shadow`, `sudo/use_pty`, `login.defs/UMASK`…), and when
//! the change takes effect.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::level::Level;
use super::settings::SettingFile;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A kernel module loaded at every boot (`/etc/modules-load.d`).
    LoadModule {
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
    /// One key of a settings file (sudo `Defaults`, `/etc/login.defs`…).
    Setting {
        /// The file.
        file: SettingFile,
        /// The key as its program spells it.
        key: String,
        /// Its value.
        value: String,
    },
}

/// The name of an item: its kind and subject, unique within a resolved hardening.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemId(pub String);

/// Where a baseline item comes from in the guide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuideRef {
    /// The level of the baseline file that sets it.
    pub level: Level,
    /// The recommendation it implements, `R12`.
    pub rule: String,
    /// What it does, for people.
    pub what: String,
    /// Set when the item departs from the guide for Kubernetes, with the guide's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviation: Option<Deviation>,
}

/// A documented departure of a baseline item from the guide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deviation {
    /// What the guide asks for.
    pub guide: String,
    /// Why a Kubernetes node needs otherwise.
    pub reason: String,
}

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
    /// The guide recommendation, for baseline items.
    pub guide: Option<GuideRef>,
}

impl Change {
    /// The name of the item this change belongs to.
    pub fn id(&self) -> ItemId {
        ItemId(match self {
            Change::Sysctl { key, .. } => format!("sysctl/{key}"),
            Change::BlacklistModule { module } => format!("module/{module}"),
            Change::LoadModule { module } => format!("load/{module}"),
            Change::Sshd { key, .. } => format!("sshd/{key}"),
            Change::Permission { path, .. } => format!("file{path}"),
            Change::Setting { file, key, .. } => format!("{}/{key}", file.prefix()),
        })
    }

    /// The value this change sets, for messages.
    pub fn value_text(&self) -> String {
        match self {
            Change::Sysctl { value, .. }
            | Change::Sshd { value, .. }
            | Change::Setting { value, .. } => value.clone(),
            Change::BlacklistModule { .. } => "blacklisted".to_string(),
            Change::LoadModule { .. } => "loaded at boot".to_string(),
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
