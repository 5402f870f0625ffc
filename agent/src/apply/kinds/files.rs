//! Modes and owners of existing files (`/etc/shadow` 0640 root:shadow…): the step a
//! permission rule needs on this node, with owner names resolved in the root's own
//! `/etc/passwd` and `/etc/group`.

use std::path::Path;

use opi_profile::Permission;

use super::super::fsops::{self, Meta};
use crate::paths::under_root;

/// What a permission rule needs on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermissionStep {
    /// Nothing: the file already has this mode and owner.
    Unchanged,
    /// The file does not exist here; nothing to do.
    Absent,
    /// An owner name is unknown here.
    UnknownOwner(String),
    /// Mode or owner must change.
    Change {
        /// As found.
        from: Meta,
        /// As wanted.
        to: Meta,
    },
}

/// The step `rule` needs under `root`.
pub fn step(root: &Path, rule: &Permission) -> std::io::Result<PermissionStep> {
    let Some(from) = fsops::meta(&under_root(root, Path::new(&rule.path)))? else {
        return Ok(PermissionStep::Absent);
    };
    Ok(step_from(root, rule, from))
}

/// The step `rule` needs on a directory the apply itself creates with `created` (such as
/// `/etc/sudoers.d` for the agent's sudo drop-in).
pub fn step_from(root: &Path, rule: &Permission, from: Meta) -> PermissionStep {
    let Some(uid) = fsops::uid_of(root, &rule.owner) else {
        return PermissionStep::UnknownOwner(format!("user {}", rule.owner));
    };
    let Some(gid) = fsops::gid_of(root, &rule.group) else {
        return PermissionStep::UnknownOwner(format!("group {}", rule.group));
    };
    let to = Meta {
        mode: rule.mode,
        uid,
        gid,
    };
    if from == to {
        PermissionStep::Unchanged
    } else {
        PermissionStep::Change { from, to }
    }
}
