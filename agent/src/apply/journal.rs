//! The journal of an apply in progress and its last-known-good copies.
//!
//! Before the first change, the engine copies every file it will touch (content, mode, owner,
//! or "absent") into `STATE/apply/last-known-good/` and the previous live sysctl values into
//! `STATE/apply/journal.json`. While the journal exists, an apply is in progress: an agent that
//! starts and finds one restores the last-known-good, unless the journal says the apply was
//! already committing, in which case it finishes the commit.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;

use serde::{Deserialize, Serialize};

use super::fsops::{self, Meta};
use super::kinds::sysctl;
use super::node::Node;
use super::plan::Plan;
use super::record::{own, AppliedRecord};

/// The only `version` of the journal.
pub const JOURNAL_VERSION: u32 = 1;
/// Mode of the engine's directories: they hold copies of files that may hold credentials.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Where an apply stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Changes may be half done: restore the last-known-good.
    Applying,
    /// Verified: finish the commit.
    Committing,
}

/// A file as it was before the apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    /// Node path.
    pub path: String,
    /// Mode and owner before; `None` when the file did not exist.
    pub before: Option<Meta>,
    /// Name of its copy in the last-known-good directory, when the content changes.
    pub copy: Option<String>,
}

/// A live sysctl value before the apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSysctl {
    /// Dotted name.
    pub key: String,
    /// Live value before.
    pub before: String,
}

/// `journal.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// [`JOURNAL_VERSION`].
    pub version: u32,
    /// Where the apply stands.
    pub phase: Phase,
    /// Whether live steps ran.
    pub live: bool,
    /// Files touched, in the order they are changed.
    pub files: Vec<SavedFile>,
    /// Live sysctls changed.
    pub sysctls: Vec<SavedSysctl>,
    /// Units restarted, to restart again after a restore.
    pub restart: Vec<String>,
    /// Whether systemd reloads its units after a restore.
    pub daemon_reload: bool,
    /// The record the commit writes.
    pub record: AppliedRecord,
}

/// Saves the last-known-good of everything `plan` touches, then writes the journal.
pub fn save(node: &Node, plan: &Plan, record: AppliedRecord) -> io::Result<Journal> {
    let lkg = node.lkg_dir();
    if lkg.exists() {
        fs::remove_dir_all(&lkg)?;
    }
    fs::create_dir_all(&lkg)?;
    for dir in [node.apply_dir(), lkg.clone()] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    let mut files = Vec::new();
    for (index, step) in plan.changed_files().enumerate() {
        let found = fsops::read(&node.file(&step.path))?;
        let copy = match &found {
            Some(found) => {
                let name = index.to_string();
                let meta = own(Meta {
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                });
                fsops::write_atomic(&lkg.join(&name), &found.content, meta)?;
                Some(name)
            }
            None => None,
        };
        let before = found.map(|f| Meta {
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        });
        files.push(SavedFile {
            path: step.path.clone(),
            before,
            copy,
        });
    }
    for change in &plan.permissions {
        files.push(SavedFile {
            path: change.path.clone(),
            before: Some(change.from),
            copy: None,
        });
    }
    let sysctls = plan
        .sysctls
        .iter()
        .filter_map(|s| {
            Some(SavedSysctl {
                key: s.key.clone(),
                before: s.from.clone()?,
            })
        })
        .collect();
    let journal = Journal {
        version: JOURNAL_VERSION,
        phase: Phase::Applying,
        live: plan.live,
        files,
        sysctls,
        restart: plan.restart.clone(),
        daemon_reload: plan.daemon_reload,
        record,
    };
    store(node, &journal)?;
    Ok(journal)
}

/// Writes the journal atomically.
pub fn store(node: &Node, journal: &Journal) -> io::Result<()> {
    let text = serde_json::to_vec_pretty(journal).map_err(io::Error::other)?;
    fsops::write_atomic(
        &node.journal(),
        &text,
        own(Meta {
            mode: 0o600,
            uid: 0,
            gid: 0,
        }),
    )
}

/// The journal of an interrupted apply, if any.
pub fn load(node: &Node) -> io::Result<Option<Journal>> {
    match fs::read_to_string(node.journal()) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(io::Error::other),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Ends the apply: the journal goes first, then the copies.
pub fn clear(node: &Node) -> io::Result<()> {
    fsops::remove(&node.journal())?;
    match fs::remove_dir_all(node.lkg_dir()) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Puts every file and live value back as the journal saved them, last change first; returns
/// what could not be restored, each naming its file or sysctl.
pub fn restore(node: &Node, journal: &Journal) -> Vec<String> {
    let mut problems = Vec::new();
    for saved in journal.files.iter().rev() {
        if let Err(error) = restore_file(node, saved) {
            problems.push(format!("cannot restore {}: {error}", saved.path));
        }
    }
    if journal.live {
        for saved in &journal.sysctls {
            if let Err(error) = sysctl::write_live(&node.proc_sys, &saved.key, &saved.before) {
                problems.push(format!(
                    "cannot restore sysctl {}={}: {error}",
                    saved.key, saved.before
                ));
            }
        }
    }
    problems
}

/// Shortcoming: directories created for a new file stay after the file is removed.
fn restore_file(node: &Node, saved: &SavedFile) -> io::Result<()> {
    let path = node.file(&saved.path);
    match (&saved.before, &saved.copy) {
        (None, _) => fsops::remove(&path),
        (Some(meta), Some(copy)) => {
            let content = fs::read(node.lkg_dir().join(copy))?;
            fsops::write_atomic(&path, &content, *meta)
        }
        // A directory the apply was to create for a new file may not exist yet.
        (Some(meta), None) => match fsops::set_meta(&path, *meta) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            done => done,
        },
    }
}
