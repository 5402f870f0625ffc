//! `/etc/login.defs`: the image owns the file (Debian 12 reads no drop-in for it), so the
//! agent replaces the lines of the keys the profile sets and keeps every other line, mode and
//! owner as found. The last-known-good of the file is saved like any other.
//!
//! Shortcoming: keys stay as set when a later profile no longer sets them, since the image's
//! previous values are not kept.

use std::io;

use opi_profile::KeyEdit;

use super::super::fsops::{self, Found, Meta};
use super::super::node::Node;

/// What an edit needs on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditStep {
    /// The file is not there; nothing is set.
    Absent,
    /// The content to write (equal to `found` when nothing changes), keeping its mode and owner.
    Write {
        /// The file as found.
        found: Found,
        /// Its new content.
        content: String,
        /// Its mode and owner, as found.
        meta: Meta,
    },
}

/// The step `edit` needs on `node`.
pub fn step(node: &Node, edit: &KeyEdit) -> io::Result<EditStep> {
    let Some(found) = fsops::read(&node.file(edit.file.path()))? else {
        return Ok(EditStep::Absent);
    };
    let current = String::from_utf8_lossy(&found.content);
    let content = edit.file.edit(&current, &edit.keys);
    let meta = Meta {
        mode: found.mode,
        uid: found.uid,
        gid: found.gid,
    };
    Ok(EditStep::Write {
        found,
        content,
        meta,
    })
}

/// The keys of `edit` that differ in `content`, as `KEY is X, applied Y`.
pub fn differences(edit: &KeyEdit, content: &str) -> Vec<String> {
    let found = edit.file.read(content);
    edit.keys
        .iter()
        .filter(|(key, value)| {
            !found
                .get(*key)
                .is_some_and(|seen| edit.file.same(key, seen, value))
        })
        .map(|(key, value)| {
            let seen = found.get(key).map_or("absent", String::as_str);
            format!("{key} is {seen}, applied {value}")
        })
        .collect()
}
