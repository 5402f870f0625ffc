//! What the node shows for one item: the live kernel value of a sysctl when the root is `/`
//! (else its value in the agent's sysctl file), whether a module is blacklisted or loaded at
//! boot in the agent's files, a file's mode and owner, and each setting as its program would
//! read it from the agent's drop-in (or from `/etc/login.defs`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use opi_profile::desired::{MODPROBE_FILE, MODULES_LOAD_FILE, SSHD_FILE, SYSCTL_FILE};
use opi_profile::hardening::{Change, Scope};
use opi_profile::SettingFile;
use serde::Serialize;

use crate::apply::fsops;
use crate::apply::kinds::{modules, sysctl};
use crate::apply::node::Node;

/// Where an observation comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The running kernel (`/proc/sys`).
    Live,
    /// The file the agent wrote or edited.
    File,
    /// A file's mode and owner.
    Metadata,
}

/// What was seen of one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The value, as the item's kind writes it.
    pub observed: String,
    /// Where it was read.
    pub source: Source,
    /// Whether it is what the item asks.
    pub matches: bool,
    /// More about it, if anything.
    pub note: Option<String>,
}

/// Observes the items of one node; loaded modules are read once, files as each item needs.
pub struct Observer<'a> {
    node: &'a Node,
    loaded: BTreeSet<String>,
}

impl<'a> Observer<'a> {
    /// An observer of `node`.
    pub fn new(node: &'a Node) -> Self {
        let loaded = match node.live {
            true => modules::loaded(&node.proc_modules),
            false => BTreeSet::new(),
        };
        Self { node, loaded }
    }

    /// What the node shows for `expected`, which takes effect as `scope` says.
    pub fn observe(&self, expected: &Change, scope: Scope) -> io::Result<Observation> {
        match expected {
            Change::Sysctl { key, value } => self.sysctl(key, value, scope),
            Change::BlacklistModule { module } => self.blacklisted(module),
            Change::LoadModule { module } => self.loaded_at_boot(module),
            Change::Permission {
                path,
                mode,
                owner,
                group,
            } => self.permission(path, *mode, owner, group),
            Change::Sshd { key, value } => {
                let found = self.sshd()?;
                Ok(setting_observation(
                    found.get(key).map(String::as_str),
                    value,
                    |a, b| a.eq_ignore_ascii_case(b),
                ))
            }
            Change::Setting { file, key, value } => {
                let found = self.settings(*file)?;
                let seen = found.get(key).map(String::as_str);
                Ok(setting_observation(seen, value, |a, b| {
                    file.same(key, a, b)
                }))
            }
        }
    }

    fn sysctl(&self, key: &str, value: &str, scope: Scope) -> io::Result<Observation> {
        let wanted = sysctl::normalise(value);
        let in_file = self.sysctl_file()?.get(key).cloned();
        if self.node.live && scope == Scope::Live {
            let live = sysctl::read_live(&self.node.proc_sys, key)?;
            let note = live.is_none().then(|| {
                "this kernel has no such sysctl now (its module is not loaded)".to_string()
            });
            return Ok(Observation {
                matches: live.as_deref() == Some(wanted.as_str()),
                observed: live.unwrap_or_else(|| "absent".to_string()),
                source: Source::Live,
                note,
            });
        }
        let note = match self.node.live {
            true => sysctl::read_live(&self.node.proc_sys, key)?
                .filter(|live| *live != wanted)
                .map(|live| format!("live value {live} until the next boot")),
            false => None,
        };
        Ok(Observation {
            matches: in_file.as_deref() == Some(wanted.as_str()),
            observed: in_file.unwrap_or_else(|| "absent".to_string()),
            source: Source::File,
            note,
        })
    }

    fn blacklisted(&self, module: &str) -> io::Result<Observation> {
        let text = self.read(MODPROBE_FILE)?;
        let lines: BTreeSet<&str> = text.lines().map(str::trim).collect();
        let blacklisted = lines.contains(format!("blacklist {module}").as_str())
            && lines.contains(format!("install {module} /bin/false").as_str());
        let loaded = self.loaded.contains(&module.replace('-', "_"));
        Ok(Observation {
            observed: if blacklisted {
                "blacklisted"
            } else {
                "not blacklisted"
            }
            .to_string(),
            source: Source::File,
            matches: blacklisted,
            note: loaded.then(|| "loaded now: the blacklist takes effect at the next boot".into()),
        })
    }

    fn loaded_at_boot(&self, module: &str) -> io::Result<Observation> {
        let text = self.read(MODULES_LOAD_FILE)?;
        let listed = text.lines().map(str::trim).any(|line| line == module);
        let note = match self.node.live {
            true if !self.loaded.contains(&module.replace('-', "_")) => {
                Some("not loaded now (or built into the kernel)".to_string())
            }
            _ => None,
        };
        Ok(Observation {
            observed: if listed {
                "loaded at boot"
            } else {
                "not listed"
            }
            .to_string(),
            source: Source::File,
            matches: listed,
            note,
        })
    }

    fn permission(
        &self,
        path: &str,
        mode: u32,
        owner: &str,
        group: &str,
    ) -> io::Result<Observation> {
        let Some(found) = fsops::meta(&self.node.file(path))? else {
            return Ok(Observation {
                observed: "absent".to_string(),
                source: Source::Metadata,
                matches: true,
                note: Some("not on this node: nothing to protect".to_string()),
            });
        };
        let root = &self.node.root;
        let uid_ok = fsops::uid_of(root, owner) == Some(found.uid);
        let gid_ok = fsops::gid_of(root, group) == Some(found.gid);
        // A stricter mode than asked is as good.
        let mode_ok = found.mode & !mode == 0;
        let user = fsops::user_name(root, found.uid).unwrap_or_else(|| found.uid.to_string());
        let group = fsops::group_name(root, found.gid).unwrap_or_else(|| found.gid.to_string());
        Ok(Observation {
            observed: format!("{:04o} {user}:{group}", found.mode),
            source: Source::Metadata,
            matches: uid_ok && gid_ok && mode_ok,
            note: None,
        })
    }

    /// `key = value` lines of the agent's sysctl file.
    fn sysctl_file(&self) -> io::Result<BTreeMap<String, String>> {
        Ok(self
            .read(SYSCTL_FILE)?
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), sysctl::normalise(v)))
            .collect())
    }

    /// Keywords of the agent's sshd drop-in; sshd keeps the first value it reads.
    ///
    /// Shortcoming: only this drop-in is read, so one sorting before it that sets the same
    /// keyword first is not seen (the same holds for the other settings drop-ins).
    fn sshd(&self) -> io::Result<BTreeMap<String, String>> {
        let mut found = BTreeMap::new();
        for line in self.read(SSHD_FILE)?.lines().map(str::trim) {
            if line.starts_with('#') {
                continue;
            }
            if let Some((key, value)) = line.split_once(char::is_whitespace) {
                found
                    .entry(key.to_string())
                    .or_insert_with(|| value.trim().to_string());
            }
        }
        Ok(found)
    }

    fn settings(&self, file: SettingFile) -> io::Result<BTreeMap<String, String>> {
        Ok(file.read(&self.read(file.path())?))
    }

    /// A node file's text; empty when absent.
    fn read(&self, path: &str) -> io::Result<String> {
        Ok(fsops::read(&self.node.file(path))?
            .map(|found| String::from_utf8_lossy(&found.content).to_string())
            .unwrap_or_default())
    }
}

fn setting_observation(
    seen: Option<&str>,
    wanted: &str,
    same: impl Fn(&str, &str) -> bool,
) -> Observation {
    Observation {
        observed: seen.unwrap_or("absent").to_string(),
        source: Source::File,
        matches: seen.is_some_and(|seen| same(seen, wanted)),
        note: None,
    }
}
