//! `applied.json`: what the last committed apply owns (each file's digest, mode and owner, the
//! permission rules, the keys edited in files the image owns, the live sysctls) and what its
//! baseline promises, and the drift check against it.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use opi_profile::{KeyEdit, Promise, SettingFile};
use serde::{Deserialize, Serialize};

use super::fsops::{self, Meta};
use super::kinds::{login_defs, sysctl};
use super::node::Node;

/// The only `version` of the record.
pub const RECORD_VERSION: u32 = 1;

/// A file the applied profile owns whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedFile {
    /// Node path (`/etc/…`).
    pub path: String,
    /// SHA-256 of the content written.
    pub sha256: String,
    /// Mode and owner written.
    pub meta: Meta,
}

/// A file whose mode and owner the applied profile set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedPermission {
    /// Node path.
    pub path: String,
    /// Mode and owner set.
    pub meta: Meta,
}

/// A sysctl the applied profile set live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedSysctl {
    /// Dotted name.
    pub key: String,
    /// Value set.
    pub value: String,
}

/// Keys the applied profile set in a file the node's image owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedEdit {
    /// The file.
    pub file: SettingFile,
    /// Keys and the values set.
    pub keys: BTreeMap<String, String>,
}

/// The record of the last committed apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// When it was committed, RFC 3339.
    pub applied_at: String,
    /// SHA-256 of the profile file applied.
    pub profile_sha256: String,
    /// Files owned whole.
    pub files: Vec<OwnedFile>,
    /// Permission rules.
    pub permissions: Vec<OwnedPermission>,
    /// Live sysctls (only when applied with the root `/`).
    pub sysctls: Vec<OwnedSysctl>,
    /// Keys set in files the image owns (absent from records written before them).
    #[serde(default)]
    pub edits: Vec<OwnedEdit>,
    /// What the profile's baseline promises, for compliance evidence.
    #[serde(default)]
    pub promise: Option<Promise>,
}

/// Something the applied profile owns that is no longer as it was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The file path or the sysctl name.
    pub item: String,
    /// What differs.
    pub what: String,
}

impl AppliedRecord {
    /// Reads the record of `node`; `None` when nothing was ever applied.
    pub fn load(node: &Node) -> io::Result<Option<Self>> {
        let path = node.applied();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(io::Error::other)
    }

    /// Writes the record atomically, readable by root only.
    pub fn store(&self, node: &Node) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let meta = Meta {
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        fsops::write_atomic(&node.applied(), &text, own(meta))
    }
}

/// Every item of `record` that drifted on `node`: file content, mode or owner, and live
/// sysctl values when the node is live.
pub fn check(node: &Node, record: &AppliedRecord) -> io::Result<Vec<Drift>> {
    let mut drifts = Vec::new();
    for file in &record.files {
        let found = fsops::read(&node.file(&file.path))?;
        let what = match found {
            None => Some("the file was removed".to_string()),
            Some(found) if fsops::sha256(&found.content) != file.sha256 => {
                Some("the content was edited".to_string())
            }
            Some(found) => meta_drift(
                Meta {
                    mode: found.mode,
                    uid: found.uid,
                    gid: found.gid,
                },
                file.meta,
            ),
        };
        drifts.extend(what.map(|what| Drift {
            item: file.path.clone(),
            what,
        }));
    }
    for permission in &record.permissions {
        let what = match fsops::meta(&node.file(&permission.path))? {
            None => Some("the file was removed".to_string()),
            Some(found) => meta_drift(found, permission.meta),
        };
        drifts.extend(what.map(|what| Drift {
            item: permission.path.clone(),
            what,
        }));
    }
    for edit in &record.edits {
        drifts.extend(edit_drift(node, edit)?);
    }
    if node.live {
        drifts.extend(sysctl_drift(&node.proc_sys, &record.sysctls)?);
    }
    Ok(drifts)
}

/// The keys of `edit` no longer as applied.
fn edit_drift(node: &Node, edit: &OwnedEdit) -> io::Result<Option<Drift>> {
    let path = edit.file.path();
    let what = match fsops::read(&node.file(path))? {
        None => Some("the file was removed".to_string()),
        Some(found) => {
            let key_edit = KeyEdit {
                file: edit.file,
                keys: edit.keys.clone(),
            };
            let differences =
                login_defs::differences(&key_edit, &String::from_utf8_lossy(&found.content));
            (!differences.is_empty()).then(|| differences.join(", "))
        }
    };
    Ok(what.map(|what| Drift {
        item: path.to_string(),
        what,
    }))
}

fn sysctl_drift(proc_sys: &Path, sysctls: &[OwnedSysctl]) -> io::Result<Vec<Drift>> {
    let mut drifts = Vec::new();
    for owned in sysctls {
        let live = sysctl::read_live(proc_sys, &owned.key)?;
        if live.as_deref() != Some(sysctl::normalise(&owned.value).as_str()) {
            drifts.push(Drift {
                item: owned.key.clone(),
                what: format!(
                    "live value is {}, applied {}",
                    live.unwrap_or_else(|| "absent".into()),
                    owned.value
                ),
            });
        }
    }
    Ok(drifts)
}

fn meta_drift(found: Meta, applied: Meta) -> Option<String> {
    (found != applied).then(|| {
        format!(
            "mode/owner is {:04o} {}:{}, applied {:04o} {}:{}",
            found.mode, found.uid, found.gid, applied.mode, applied.uid, applied.gid
        )
    })
}

/// `meta` owned by the user running the agent (root on a node; the test user in tests).
pub fn own(meta: Meta) -> Meta {
    Meta {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        ..meta
    }
}
