//! A validated profile rendered into the node's desired state: the files the agent owns with
//! their content, mode and the service each restarts, the sysctls with their scope, the
//! blacklisted modules and the permission rules. The agent diffs this against the node.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::compliance::{self, Promise};
use crate::errors::ProfileErrors;
use crate::floor::{Floor, FLOOR_ORIGIN};
use crate::hardening::settings::SettingFile;
use crate::hardening::{Change, ItemId, Scope};
use crate::kubelet::KERNEL_DEFAULTS;
use crate::options::ApplyOptions;
use crate::Profile;

/// First line of every file the agent writes (files whose syntax takes `#` comments).
pub const MANAGED_HEADER_HASH: &str =
    "# Managed by opi-agent from the node profile: local edits are reported as drift and replaced.\n";
/// Sysctl file.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-opi-fleet.conf";
/// Module blacklist file.
pub const MODPROBE_FILE: &str = "/etc/modprobe.d/opi-fleet-blacklist.conf";
/// Modules loaded at every boot by systemd-modules-load.
pub const MODULES_LOAD_FILE: &str = "/etc/modules-load.d/opi-fleet.conf";
/// sshd drop-in; sshd keeps the first value it reads, and drop-ins are read in name order.
pub const SSHD_FILE: &str = "/etc/ssh/sshd_config.d/10-opi-fleet.conf";
/// kubelet's configuration file.
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// kubelet's systemd drop-in, pointing kubelet at [`KUBELET_CONFIG`].
pub const KUBELET_DROPIN: &str = "/etc/systemd/system/kubelet.service.d/20-opi-fleet.conf";
/// containerd's configuration file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The kinds of change, one agent module each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// `/etc/sysctl.d` and `/proc/sys`.
    Sysctl,
    /// `/etc/modprobe.d`.
    Modules,
    /// Modes and owners of existing files.
    Files,
    /// sshd drop-in.
    Sshd,
    /// kubelet configuration and drop-in.
    Kubelet,
    /// containerd configuration.
    Containerd,
    /// sudo `Defaults` drop-in.
    Sudo,
    /// Keys of `/etc/login.defs`.
    #[serde(rename = "login.defs")]
    LoginDefs,
    /// Login shell timeout and umask.
    Shell,
    /// Core dump limits and systemd-coredump.
    Coredump,
    /// Password quality.
    Pwquality,
}

/// A service restarted when one of its files changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// `systemd-modules-load.service`: loads the modules listed for every boot now, before
    /// the services that need them restart.
    ModulesLoad,
    /// `kubelet.service`.
    Kubelet,
    /// `containerd.service`.
    Containerd,
    /// `ssh.service` (Debian's name for sshd).
    Sshd,
}

/// A file whose whole content the agent owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManagedFile {
    /// Absolute path on the node.
    pub path: String,
    /// The kind of change it belongs to.
    pub kind: ChangeKind,
    /// The content to write. May hold credentials: show [`ManagedFile::shown`] instead.
    #[serde(skip)]
    pub content: String,
    /// The content as it may be shown, credentials redacted.
    pub shown: String,
    /// Permission bits.
    pub mode: u32,
    /// The service restarted when it changes.
    pub restarts: Option<Service>,
    /// Whether systemd must reload its units when it changes.
    pub daemon_reload: bool,
}

/// A sysctl the agent sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SysctlSetting {
    /// Dotted name.
    pub key: String,
    /// Value.
    pub value: String,
    /// When it takes effect.
    pub scope: Scope,
    /// Why it is set (baseline rule, profile path, floor, kubelet).
    pub origin: String,
}

/// Mode and owner of an existing file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Permission {
    /// Absolute path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner user.
    pub owner: String,
    /// Owner group.
    pub group: String,
    /// Why it is set.
    pub origin: String,
}

/// Keys the agent sets in a file the node's image owns, keeping its other lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyEdit {
    /// The file.
    pub file: SettingFile,
    /// Keys and values.
    pub keys: BTreeMap<String, String>,
}

/// Everything the profile wants on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    /// Files the agent owns whole.
    pub files: Vec<ManagedFile>,
    /// Sysctls, sorted by name.
    pub sysctls: Vec<SysctlSetting>,
    /// Blacklisted modules, sorted.
    pub blacklisted_modules: Vec<String>,
    /// Modules loaded at every boot, sorted.
    pub loaded_modules: Vec<String>,
    /// Permission rules.
    pub permissions: Vec<Permission>,
    /// Keys set in files the image owns.
    pub edits: Vec<KeyEdit>,
    /// What the baseline promises, for evidence; `None` without a baseline.
    pub promise: Option<Promise>,
    /// How to apply.
    pub options: ApplyOptions,
}

impl Service {
    /// The systemd unit.
    pub fn unit(self) -> &'static str {
        match self {
            Service::Kubelet => "kubelet.service",
            Service::Containerd => "containerd.service",
            Service::Sshd => "ssh.service",
            Service::ModulesLoad => "systemd-modules-load.service",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.unit())
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self).expect("a unit enum serialises");
        f.write_str(name.as_str().unwrap_or_default())
    }
}

impl DesiredState {
    /// The file at `path`, if the agent owns it.
    pub fn file(&self, path: &str) -> Option<&ManagedFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The sysctl `key`, if set.
    pub fn sysctl(&self, key: &str) -> Option<&SysctlSetting> {
        self.sysctls.iter().find(|s| s.key == key)
    }
}

/// Renders `profile` over `floor`.
pub fn build(profile: &Profile, floor: &Floor) -> Result<DesiredState, ProfileErrors> {
    let mut errors = ProfileErrors::default();
    let mut sysctls = BTreeMap::new();
    let mut modules = BTreeMap::new();
    let mut sshd = BTreeMap::new();
    let mut loaded = BTreeMap::new();
    let mut settings: BTreeMap<SettingFile, BTreeMap<String, String>> = BTreeMap::new();
    let mut permissions = Vec::new();

    for item in profile.hardening.items.values() {
        let setting = |key: &str, value: &str| SysctlSetting {
            key: key.to_string(),
            value: value.to_string(),
            scope: item.scope,
            origin: item.origin.clone(),
        };
        match &item.change {
            Change::Sysctl { key, value } => {
                sysctls.insert(key.clone(), (setting(key, value), item.path.clone()));
            }
            Change::BlacklistModule { module } => {
                modules.insert(module.clone(), item.origin.clone());
            }
            Change::LoadModule { module } => {
                loaded.insert(module.clone(), item.path.clone());
            }
            Change::Setting { file, key, value } => {
                settings
                    .entry(*file)
                    .or_default()
                    .insert(key.clone(), value.clone());
            }
            Change::Sshd { key, value } => {
                sshd.insert(key.clone(), value.clone());
            }
            Change::Permission {
                path,
                mode,
                owner,
                group,
            } => permissions.push(Permission {
                path: path.clone(),
                mode: *mode,
                owner: owner.clone(),
                group: group.clone(),
                origin: item.origin.clone(),
            }),
        }
    }
    if profile
        .kubelet
        .as_ref()
        .is_some_and(|k| k.protects_kernel_defaults())
    {
        add_kubelet_sysctls(&mut sysctls, &mut errors);
    }
    apply_floor(profile, floor, &mut sysctls, &mut modules, &mut errors);
    refuse_loading_blacklisted(&loaded, &modules, &mut errors);

    let sysctls: BTreeMap<String, SysctlSetting> =
        sysctls.into_iter().map(|(k, (s, _))| (k, s)).collect();
    let promise = compliance::build(&profile.hardening, &sysctls);
    let sysctls: Vec<SysctlSetting> = sysctls.into_values().collect();
    let modules: Vec<String> = modules.into_keys().collect();
    let loaded: Vec<String> = loaded.into_keys().collect();
    let mut files = render_files(profile, &sysctls, &modules, &sshd);
    files.extend(render_modules_load(&loaded));
    let edits = render_settings(settings, &mut files);
    errors.into_result(DesiredState {
        files,
        sysctls,
        blacklisted_modules: modules,
        loaded_modules: loaded,
        permissions,
        edits,
        promise,
        options: profile.apply.clone(),
    })
}

/// A module both blacklisted and loaded at boot is a contradiction the profile must settle.
fn refuse_loading_blacklisted(
    loaded: &BTreeMap<String, Option<String>>,
    blacklisted: &BTreeMap<String, String>,
    errors: &mut ProfileErrors,
) {
    for (module, path) in loaded {
        if let Some(origin) = blacklisted.get(module) {
            let at = path
                .clone()
                .unwrap_or_else(|| "hardening.baseline".to_string());
            errors.push(
                at,
                format!("loads module {module} at boot, which {origin} blacklists"),
            );
        }
    }
}

/// The modules-load.d file, restarting systemd-modules-load so they load now too.
fn render_modules_load(loaded: &[String]) -> Option<ManagedFile> {
    if loaded.is_empty() {
        return None;
    }
    let mut content = MANAGED_HEADER_HASH.to_string();
    for module in loaded {
        content.push_str(&format!("{module}\n"));
    }
    Some(ManagedFile {
        path: MODULES_LOAD_FILE.to_string(),
        kind: ChangeKind::Modules,
        shown: content.clone(),
        content,
        mode: 0o644,
        restarts: Some(Service::ModulesLoad),
        daemon_reload: false,
    })
}

/// Drop-ins into `files`; the edits of files the image owns are returned.
fn render_settings(
    settings: BTreeMap<SettingFile, BTreeMap<String, String>>,
    files: &mut Vec<ManagedFile>,
) -> Vec<KeyEdit> {
    let mut edits = Vec::new();
    for (file, keys) in settings {
        if file.is_edit() {
            edits.push(KeyEdit { file, keys });
            continue;
        }
        let content = file.render(&keys);
        files.push(ManagedFile {
            path: file.path().to_string(),
            kind: file.kind(),
            shown: content.clone(),
            content,
            mode: file.mode(),
            restarts: None,
            daemon_reload: false,
        });
    }
    edits
}

type Sysctls = BTreeMap<String, (SysctlSetting, Option<String>)>;

/// Adds the sysctls kubelet's `protectKernelDefaults` insists on, refusing a conflict.
fn add_kubelet_sysctls(sysctls: &mut Sysctls, errors: &mut ProfileErrors) {
    for (key, value) in KERNEL_DEFAULTS {
        match sysctls.get_mut(key) {
            Some((existing, _)) if existing.value.trim() != value => errors.push(
                "kubelet.protectKernelDefaults",
                format!(
                    "kubelet requires {key}={value} with protectKernelDefaults, but {} sets {}",
                    existing.origin, existing.value
                ),
            ),
            // kubelet reads the live value when it starts: a file-only item must apply now.
            Some((existing, _)) if existing.scope == Scope::FileOnly => {
                existing.scope = Scope::Live
            }
            Some(_) => {}
            None => {
                let setting = SysctlSetting {
                    key: key.to_string(),
                    value: value.to_string(),
                    scope: Scope::Live,
                    origin: "kubelet protectKernelDefaults".to_string(),
                };
                sysctls.insert(key.to_string(), (setting, None));
            }
        }
    }
}

/// Enforces the floor: refuses what lowers it, raises baseline values under it, adds the rest.
fn apply_floor(
    profile: &Profile,
    floor: &Floor,
    sysctls: &mut Sysctls,
    modules: &mut BTreeMap<String, String>,
    errors: &mut ProfileErrors,
) {
    for (key, bound) in &floor.sysctls {
        let id = ItemId(format!("sysctl/{key}"));
        if let Some(path) = profile.hardening.removed.get(&id) {
            errors.push(path, format!("removes {key}, which the node's hardening floor requires ({key} {}); the floor cannot be lowered by a profile", bound.describe()));
            continue;
        }
        match sysctls.get_mut(key) {
            Some((setting, path)) if !bound.allows(&setting.value) => match path {
                Some(path) => errors.push(
                    path.clone(),
                    format!(
                        "lowers the node's hardening floor: {key} must be {}, the profile sets {}",
                        bound.describe(),
                        setting.value
                    ),
                ),
                None => {
                    setting.value = bound.value();
                    setting.origin = format!("{FLOOR_ORIGIN} (raised from {})", setting.origin);
                }
            },
            Some(_) => {}
            None => {
                let value = bound.value();
                let setting = SysctlSetting {
                    scope: crate::hardening::sysctl_scope(key, &value),
                    key: key.clone(),
                    value,
                    origin: FLOOR_ORIGIN.to_string(),
                };
                sysctls.insert(key.clone(), (setting, None));
            }
        }
    }
    for module in &floor.blacklisted_modules {
        let id = ItemId(format!("module/{module}"));
        if let Some(path) = profile.hardening.removed.get(&id) {
            errors.push(path, format!("removes the blacklist of module {module}, which the node's hardening floor requires"));
        }
        modules
            .entry(module.clone())
            .or_insert_with(|| FLOOR_ORIGIN.to_string());
    }
}

/// The files the agent owns for this state.
fn render_files(
    profile: &Profile,
    sysctls: &[SysctlSetting],
    modules: &[String],
    sshd: &BTreeMap<String, String>,
) -> Vec<ManagedFile> {
    let plain = |path: &str, kind, content: String, restarts| ManagedFile {
        path: path.to_string(),
        kind,
        shown: content.clone(),
        content,
        mode: 0o644,
        restarts,
        daemon_reload: false,
    };
    let mut files = Vec::new();
    if !sysctls.is_empty() {
        files.push(plain(
            SYSCTL_FILE,
            ChangeKind::Sysctl,
            render_sysctls(sysctls),
            None,
        ));
    }
    if !modules.is_empty() {
        files.push(plain(
            MODPROBE_FILE,
            ChangeKind::Modules,
            render_modules(modules),
            None,
        ));
    }
    if !sshd.is_empty() {
        let body: String = sshd.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        let content = format!("{MANAGED_HEADER_HASH}{body}");
        files.push(plain(
            SSHD_FILE,
            ChangeKind::Sshd,
            content,
            Some(Service::Sshd),
        ));
    }
    if let Some(kubelet) = &profile.kubelet {
        files.push(plain(
            KUBELET_CONFIG,
            ChangeKind::Kubelet,
            kubelet.render(),
            Some(Service::Kubelet),
        ));
        let dropin = format!(
            "{MANAGED_HEADER_HASH}[Service]\nEnvironment=\"KUBELET_CONFIG_ARGS=--config={KUBELET_CONFIG}\"\n"
        );
        let mut dropin = plain(
            KUBELET_DROPIN,
            ChangeKind::Kubelet,
            dropin,
            Some(Service::Kubelet),
        );
        dropin.daemon_reload = true;
        files.push(dropin);
    }
    if let Some(containerd) = &profile.containerd {
        let mut file = plain(
            CONTAINERD_CONFIG,
            ChangeKind::Containerd,
            containerd.render(),
            Some(Service::Containerd),
        );
        file.shown = containerd.render_redacted();
        if containerd.has_secrets() {
            file.mode = 0o600;
        }
        files.push(file);
    }
    files
}

fn render_sysctls(sysctls: &[SysctlSetting]) -> String {
    let mut text = MANAGED_HEADER_HASH.to_string();
    for setting in sysctls {
        text.push_str(&format!("# {} [{}]\n", setting.origin, setting.scope));
        text.push_str(&format!("{} = {}\n", setting.key, setting.value));
    }
    text
}

fn render_modules(modules: &[String]) -> String {
    let mut text = MANAGED_HEADER_HASH.to_string();
    for module in modules {
        // `blacklist` stops automatic loading; `install … /bin/false` stops explicit loading.
        text.push_str(&format!(
            "blacklist {module}\ninstall {module} /bin/false\n"
        ));
    }
    text
}
