//! The plan: what applying a desired state would change on this node (files, modes, live
//! sysctls, services to restart, reboot needed, live steps skipped), computed without
//! changing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use opi_profile::desired::{
    CONTAINERD_CONFIG, KUBELET_CONFIG, KUBELET_DROPIN, MODULES_LOAD_FILE, SSHD_FILE, SYSCTL_FILE,
};
use opi_profile::{ChangeKind, DesiredState, ManagedFile, Permission, Scope, Service};
use serde::Serialize;

use super::diff::changed_lines;
use super::fsops::{self, Found, Meta};
use super::kinds::files::{self, PermissionStep};
use super::kinds::login_defs::{self, EditStep};
use super::kinds::{modules, sysctl};
use super::node::Node;
use super::record::{own, AppliedRecord};

/// Where systemd finds unit files, to tell whether a service is installed on the node.
pub const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];
/// Services a node image may lack: their restart is skipped, not failed, when absent.
pub const OPTIONAL_SERVICES: [Service; 2] = [Service::Sshd, Service::ModulesLoad];

/// What happens to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    /// It does not exist yet.
    Create,
    /// Its content, mode or owner changes.
    Update,
    /// A previous apply wrote it and the profile no longer does.
    Remove,
    /// Nothing.
    Unchanged,
}

/// One file of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct FileStep {
    /// Node path.
    pub path: String,
    /// Kind of change.
    pub kind: String,
    /// What happens.
    pub action: FileAction,
    /// Mode after the apply, octal.
    pub mode: String,
    /// Lines removed and added, credentials redacted.
    pub lines: Vec<String>,
    /// The service restarted when it changes.
    #[serde(skip)]
    pub restarts: Option<Service>,
    /// Whether systemd reloads its units when it changes.
    #[serde(skip)]
    pub daemon_reload: bool,
    /// What to write (`None` for a removal).
    #[serde(skip)]
    pub write: Option<(Vec<u8>, Meta)>,
}

/// A live sysctl change.
#[derive(Clone, Debug, Serialize)]
pub struct SysctlStep {
    /// Dotted name.
    pub key: String,
    /// Live value now, if the kernel has it.
    pub from: Option<String>,
    /// Value set.
    pub to: String,
    /// Why it is set.
    pub origin: String,
}

/// A mode or owner change.
#[derive(Clone, Debug, Serialize)]
pub struct PermissionChange {
    /// Node path.
    pub path: String,
    /// Before.
    pub from: Meta,
    /// After.
    pub to: Meta,
}

/// Everything an apply would do.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// The root files are written under.
    pub root: String,
    /// Whether live steps run.
    pub live: bool,
    /// Files, each with its action.
    pub files: Vec<FileStep>,
    /// Mode and owner changes of existing files.
    pub permissions: Vec<PermissionChange>,
    /// Live sysctl writes.
    pub sysctls: Vec<SysctlStep>,
    /// Units to restart, in order.
    pub restart: Vec<String>,
    /// Whether systemd reloads its units first.
    pub daemon_reload: bool,
    /// Reboot-scoped values that take effect only after a reboot.
    pub reboot_required: Vec<String>,
    /// Blacklisted modules loaded right now (the blacklist does not unload them).
    pub modules_still_loaded: Vec<String>,
    /// Live steps not run, and why.
    pub skipped: Vec<String>,
    /// Permission rules with nothing to do here, and why.
    pub notes: Vec<String>,
}

impl Plan {
    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        self.files.iter().any(|f| f.action != FileAction::Unchanged)
            || !self.permissions.is_empty()
            || !self.sysctls.is_empty()
    }

    /// The services whose files change.
    pub fn services(&self) -> BTreeSet<Service> {
        self.changed_files().filter_map(|f| f.restarts).collect()
    }

    /// The files that change.
    pub fn changed_files(&self) -> impl Iterator<Item = &FileStep> {
        self.files
            .iter()
            .filter(|f| f.action != FileAction::Unchanged)
    }
}

/// Computes the plan of `desired` on `node`, given the record of the last apply.
pub fn compute(
    node: &Node,
    desired: &DesiredState,
    previous: Option<&AppliedRecord>,
) -> io::Result<Plan> {
    let mut plan = Plan {
        root: node.root.display().to_string(),
        live: node.live,
        files: Vec::new(),
        permissions: Vec::new(),
        sysctls: Vec::new(),
        restart: Vec::new(),
        daemon_reload: false,
        reboot_required: Vec::new(),
        modules_still_loaded: Vec::new(),
        skipped: Vec::new(),
        notes: Vec::new(),
    };
    let current_sysctls = sysctl_file_values(node)?;
    for file in &desired.files {
        plan.files.push(file_step(node, file)?);
    }
    plan.files.extend(removals(node, desired, previous)?);
    plan_edits(node, desired, &mut plan)?;
    plan_permissions(node, desired, &mut plan)?;
    plan_sysctls(node, desired, &current_sysctls, &mut plan)?;
    plan_services(node, desired, &mut plan);
    if node.live {
        let loaded = modules::loaded(&node.proc_modules);
        plan.modules_still_loaded = modules::still_loaded(&desired.blacklisted_modules, &loaded);
    }
    Ok(plan)
}

/// The step for one managed file.
fn file_step(node: &Node, file: &ManagedFile) -> io::Result<FileStep> {
    let found = fsops::read(&node.file(&file.path))?;
    let meta = own(Meta {
        mode: file.mode,
        uid: 0,
        gid: 0,
    });
    let (action, lines) = match &found {
        None => (FileAction::Create, changed_lines("", &file.shown)),
        Some(found) => compare(found, file, meta),
    };
    Ok(FileStep {
        path: file.path.clone(),
        kind: file.kind.to_string(),
        action,
        mode: format!("{:04o}", file.mode),
        lines,
        restarts: file.restarts,
        daemon_reload: file.daemon_reload,
        write: Some((file.content.clone().into_bytes(), meta)),
    })
}

fn compare(found: &Found, file: &ManagedFile, meta: Meta) -> (FileAction, Vec<String>) {
    let before = String::from_utf8_lossy(&found.content);
    let before = match file.kind {
        ChangeKind::Containerd => opi_profile::containerd::redact_text(&before),
        _ => before.to_string(),
    };
    let mut lines = Vec::new();
    if found.content != file.content.as_bytes() {
        lines = changed_lines(&before, &file.shown);
        if lines.is_empty() {
            // Only redacted values differ.
            lines.push("~ credentials changed (not shown)".to_string());
        }
    }
    let found_meta = Meta {
        mode: found.mode,
        uid: found.uid,
        gid: found.gid,
    };
    if found_meta != meta {
        lines.push(format!(
            "~ mode/owner {:04o} {}:{} -> {:04o} {}:{}",
            found.mode, found.uid, found.gid, meta.mode, meta.uid, meta.gid
        ));
    }
    let action = if lines.is_empty() {
        FileAction::Unchanged
    } else {
        FileAction::Update
    };
    (action, lines)
}

/// Files a previous apply wrote that the profile no longer has.
fn removals(
    node: &Node,
    desired: &DesiredState,
    previous: Option<&AppliedRecord>,
) -> io::Result<Vec<FileStep>> {
    let mut steps = Vec::new();
    for owned in previous.map(|p| p.files.as_slice()).unwrap_or_default() {
        if desired.file(&owned.path).is_some() || !node.file(&owned.path).exists() {
            continue;
        }
        let service = service_of(&owned.path);
        steps.push(FileStep {
            path: owned.path.clone(),
            kind: "removed".to_string(),
            action: FileAction::Remove,
            mode: format!("{:04o}", owned.meta.mode),
            lines: vec!["- (the whole file)".to_string()],
            restarts: service,
            daemon_reload: owned.path == KUBELET_DROPIN,
            write: None,
        });
    }
    Ok(steps)
}

/// The service a managed file belongs to.
pub fn service_of(path: &str) -> Option<Service> {
    match path {
        KUBELET_CONFIG | KUBELET_DROPIN => Some(Service::Kubelet),
        CONTAINERD_CONFIG => Some(Service::Containerd),
        SSHD_FILE => Some(Service::Sshd),
        MODULES_LOAD_FILE => Some(Service::ModulesLoad),
        _ => None,
    }
}

/// Keys set in files the image owns: a file step each, keeping the file's mode and owner.
fn plan_edits(node: &Node, desired: &DesiredState, plan: &mut Plan) -> io::Result<()> {
    for edit in &desired.edits {
        let path = edit.file.path();
        let (found, content, meta) = match login_defs::step(node, edit)? {
            EditStep::Absent => {
                plan.notes
                    .push(format!("{path}: absent here, keys not set"));
                continue;
            }
            EditStep::Write {
                found,
                content,
                meta,
            } => (found, content, meta),
        };
        let before = String::from_utf8_lossy(&found.content);
        let lines = changed_lines(&before, &content);
        let action = match found.content == content.as_bytes() {
            true => FileAction::Unchanged,
            false => FileAction::Update,
        };
        plan.files.push(FileStep {
            path: path.to_string(),
            kind: edit.file.kind().to_string(),
            action,
            mode: format!("{:04o}", meta.mode),
            lines,
            restarts: None,
            daemon_reload: false,
            write: Some((content.into_bytes(), meta)),
        });
    }
    Ok(())
}

/// The step a permission rule needs; a directory that the apply creates for one of its files
/// (`/etc/sudoers.d`) gets its mode right after it is made.
pub fn permission_step(
    node: &Node,
    desired: &DesiredState,
    rule: &Permission,
) -> io::Result<PermissionStep> {
    let step = files::step(&node.root, rule)?;
    let created = desired
        .files
        .iter()
        .any(|f| std::path::Path::new(&f.path).parent() == Some(std::path::Path::new(&rule.path)));
    Ok(match step {
        PermissionStep::Absent if created => {
            let made = own(Meta {
                mode: fsops::NEW_DIR_MODE,
                uid: 0,
                gid: 0,
            });
            files::step_from(&node.root, rule, made)
        }
        step => step,
    })
}

fn plan_permissions(node: &Node, desired: &DesiredState, plan: &mut Plan) -> io::Result<()> {
    for rule in &desired.permissions {
        match permission_step(node, desired, rule)? {
            PermissionStep::Unchanged => {}
            PermissionStep::Absent => plan
                .notes
                .push(format!("{}: absent here, mode not set", rule.path)),
            PermissionStep::UnknownOwner(who) => plan.notes.push(format!(
                "{}: {who} unknown under {}, mode not set",
                rule.path,
                node.root.display()
            )),
            PermissionStep::Change { from, to } => plan.permissions.push(PermissionChange {
                path: rule.path.clone(),
                from,
                to,
            }),
        }
    }
    Ok(())
}

/// `key = value` lines of the sysctl file as it is now.
fn sysctl_file_values(node: &Node) -> io::Result<BTreeMap<String, String>> {
    let text = fsops::read(&node.file(SYSCTL_FILE))?
        .map(|found| String::from_utf8_lossy(&found.content).to_string())
        .unwrap_or_default();
    Ok(text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), sysctl::normalise(v)))
        .collect())
}

fn plan_sysctls(
    node: &Node,
    desired: &DesiredState,
    in_file: &BTreeMap<String, String>,
    plan: &mut Plan,
) -> io::Result<()> {
    for setting in &desired.sysctls {
        let value = sysctl::normalise(&setting.value);
        let file_changes = in_file.get(&setting.key) != Some(&value);
        match setting.scope {
            Scope::Reboot if file_changes => plan
                .reboot_required
                .push(format!("{}={}", setting.key, value)),
            Scope::Live if node.live => {
                let from = sysctl::read_live(&node.proc_sys, &setting.key)?;
                if from.is_none() {
                    // net.bridge.* appear only once br_netfilter is loaded, at the next boot.
                    plan.skipped.push(format!(
                        "live sysctl {}={} (this kernel has no such sysctl now: its module is not loaded; set from the file at boot)",
                        setting.key, value
                    ));
                } else if from.as_ref() != Some(&value) {
                    let origin = setting.origin.clone();
                    plan.sysctls.push(SysctlStep {
                        key: setting.key.clone(),
                        from,
                        to: value,
                        origin,
                    });
                }
            }
            Scope::Live if file_changes => plan.skipped.push(format!(
                "live sysctl {}={} (root is not /)",
                setting.key, value
            )),
            _ => {}
        }
    }
    Ok(())
}

fn plan_services(node: &Node, desired: &DesiredState, plan: &mut Plan) {
    let reload = plan.changed_files().any(|f| f.daemon_reload);
    plan.daemon_reload = reload;
    for service in plan.services() {
        if node.live && OPTIONAL_SERVICES.contains(&service) && !unit_installed(node, service) {
            plan.skipped.push(format!(
                "restart {} (not installed on this node)",
                service.unit()
            ));
        } else if !node.live {
            plan.skipped
                .push(format!("restart {} (root is not /)", service.unit()));
        } else if !desired.options.restart_services {
            plan.skipped.push(format!(
                "restart {} (apply.restartServices is false)",
                service.unit()
            ));
        } else {
            plan.restart.push(service.unit().to_string());
        }
    }
    if plan.daemon_reload && !node.live {
        plan.skipped
            .push("systemd daemon-reload (root is not /)".to_string());
        plan.daemon_reload = false;
    }
}

/// Whether the unit of `service` has a unit file on `node`.
fn unit_installed(node: &Node, service: Service) -> bool {
    UNIT_DIRS
        .iter()
        .any(|dir| node.file(&format!("{dir}/{}", service.unit())).exists())
}
