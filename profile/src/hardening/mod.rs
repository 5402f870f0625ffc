//! The `hardening` section: a built-in baseline, overrides, and exceptions with a reason.
//!
//! Resolution runs baseline → overrides → exceptions. An override adds an item or changes a
//! baseline item; changing a baseline item needs an exception naming it, so that every
//! departure from the baseline carries a reason. An exception alone removes the item.

pub mod baseline;
pub mod coverage;
pub mod items;
pub mod level;
pub mod rules;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;
use time::Date;

use crate::errors::{index, join, ProfileErrors};
use crate::yaml;
pub use baseline::{Coverage, Rule};
pub use items::{sysctl_scope, Change, Deviation, GuideRef, ItemId, ResolvedItem, Scope};
pub use level::Level;
use settings::SettingFile;

/// Keys of the `hardening` section.
pub const HARDENING_KEYS: [&str; 3] = ["baseline", "overrides", "exceptions"];
/// Keys of `hardening.overrides`.
pub const OVERRIDE_KEYS: [&str; 11] = [
    "sysctls",
    "blacklistModules",
    "loadModules",
    "sshd",
    "files",
    "sudo",
    "loginDefs",
    "shell",
    "limits",
    "coredump",
    "pwquality",
];
/// Keys of one exception.
pub const EXCEPTION_KEYS: [&str; 4] = ["item", "reason", "approver", "expires"];
/// Keys of one file permission override.
pub const FILE_KEYS: [&str; 4] = ["path", "mode", "owner", "group"];

/// A departure from the baseline, with its reason.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Exception {
    /// The baseline item it names (`sysctl/net.ipv4.ip_forward`).
    pub item: ItemId,
    /// Why the node needs it.
    pub reason: String,
    /// Who approved it, if recorded.
    pub approver: Option<String>,
    /// The last day it holds, if it expires.
    pub expires: Option<Date>,
    /// Its path in the profile.
    pub path: String,
}

/// The resolved `hardening` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hardening {
    /// The baseline named, if any.
    pub baseline: Option<String>,
    /// Its level.
    pub level: Option<Level>,
    /// The guide's recommendations up to that level, in guide order.
    pub rules: Vec<Rule>,
    /// The baseline's items as it defines them, before overrides and exceptions.
    pub baseline_items: BTreeMap<ItemId, ResolvedItem>,
    /// The exceptions, as written.
    pub exceptions: Vec<Exception>,
    /// Every item after baseline, overrides and exceptions, by name.
    pub items: BTreeMap<ItemId, ResolvedItem>,
    /// Baseline items that exceptions removed, with the path of the exception.
    pub removed: BTreeMap<ItemId, String>,
}

/// An override as read, with its path.
struct Override {
    change: Change,
    path: String,
}

impl Hardening {
    /// Reads and resolves the section at `path`, recording every problem.
    pub fn parse(value: &Value, path: &str, errors: &mut ProfileErrors) -> Self {
        let found = yaml::entries(value, path, errors);
        yaml::refuse_unknown(&found, &HARDENING_KEYS, path, errors);

        let baseline = yaml::get(&found, "baseline")
            .and_then(|v| yaml::string(v, &join(path, "baseline"), errors));
        let mut items = BTreeMap::new();
        let (mut level, mut rules) = (None, Vec::new());
        if let Some(name) = &baseline {
            let resolved = baseline::resolve(name)
                .and_then(|items| Ok((items, baseline::level(name)?, baseline::rules(name)?)));
            match resolved {
                Ok(resolved) => (items, level, rules) = (resolved.0, Some(resolved.1), resolved.2),
                Err(message) => errors.push(join(path, "baseline"), message),
            }
        }
        let baseline_items = items.clone();
        let overrides = yaml::get(&found, "overrides")
            .map(|v| parse_overrides(v, &join(path, "overrides"), errors))
            .unwrap_or_default();
        let exceptions = yaml::get(&found, "exceptions")
            .map(|v| parse_exceptions(v, &join(path, "exceptions"), errors))
            .unwrap_or_default();

        let removed = merge(
            &mut items,
            overrides,
            &exceptions,
            baseline.as_deref(),
            errors,
        );
        Self {
            baseline,
            level,
            rules,
            baseline_items,
            exceptions,
            items,
            removed,
        }
    }

    /// Problems for every exception whose `expires` day is before `today`.
    pub fn expired_exceptions(&self, today: Date) -> ProfileErrors {
        let mut errors = ProfileErrors::default();
        for exception in &self.exceptions {
            if let Some(expires) = exception.expires.filter(|day| *day < today) {
                errors.push(
                    join(&exception.path, "expires"),
                    format!(
                        "exception for {} expired on {expires}; renew it with a new date and reason, or remove it",
                        exception.item
                    ),
                );
            }
        }
        errors
    }
}

/// Applies overrides and exceptions to the baseline items; returns the items removed.
fn merge(
    items: &mut BTreeMap<ItemId, ResolvedItem>,
    overrides: Vec<Override>,
    exceptions: &[Exception],
    baseline: Option<&str>,
    errors: &mut ProfileErrors,
) -> BTreeMap<ItemId, String> {
    let mut removed = BTreeMap::new();
    let excepted: BTreeSet<&ItemId> = exceptions.iter().map(|e| &e.item).collect();
    let baseline_ids: BTreeSet<ItemId> = items.keys().cloned().collect();
    let mut overridden = BTreeSet::new();

    for Override { change, path } in overrides {
        let id = change.id();
        if let Some(base) = items.get(&id) {
            if base.change != change && !excepted.contains(&id) {
                errors.push(
                    &path,
                    format!(
                        "changes {id} of {} from {} to {}; add an exception naming {id} with a reason",
                        base.origin,
                        base.change.value_text(),
                        change.value_text()
                    ),
                );
            }
        }
        let scope = match &change {
            Change::Sysctl { key, value } => sysctl_scope(key, value),
            _ => Scope::Live,
        };
        overridden.insert(id.clone());
        let item = ResolvedItem {
            id: id.clone(),
            change,
            scope,
            origin: path.clone(),
            path: Some(path),
            guide: items.get(&id).and_then(|base| base.guide.clone()),
        };
        items.insert(id, item);
    }

    for exception in exceptions {
        if !baseline_ids.contains(&exception.item) {
            let of = baseline.map_or("no baseline is named".to_string(), |b| {
                format!("baseline {b}")
            });
            errors.push(
                join(&exception.path, "item"),
                format!("names {}, which is no item of {of}", exception.item),
            );
        } else if !overridden.contains(&exception.item) {
            items.remove(&exception.item);
            removed.insert(exception.item.clone(), exception.path.clone());
        }
    }
    removed
}

/// Reads `hardening.overrides`.
fn parse_overrides(value: &Value, path: &str, errors: &mut ProfileErrors) -> Vec<Override> {
    let found = yaml::entries(value, path, errors);
    yaml::refuse_unknown(&found, &OVERRIDE_KEYS, path, errors);
    let mut overrides = Vec::new();

    if let Some(sysctls) = yaml::get(&found, "sysctls") {
        let at = join(path, "sysctls");
        for (key, value) in yaml::entries(sysctls, &at, errors) {
            let at = join(&at, &key);
            if let Some(change) = sysctl_override(&key, value, &at, errors) {
                overrides.push(Override { change, path: at });
            }
        }
    }
    for (section, load) in [("blacklistModules", false), ("loadModules", true)] {
        if let Some(modules) = yaml::get(&found, section) {
            let at = join(path, section);
            overrides.extend(module_overrides(modules, &at, load, errors));
        }
    }
    if let Some(sshd) = yaml::get(&found, "sshd") {
        let at = join(path, "sshd");
        for (key, value) in yaml::entries(sshd, &at, errors) {
            let at = join(&at, &key);
            let Some(value) = yaml::scalar_text(value, &at, errors) else {
                continue;
            };
            let value = match value.as_str() {
                "true" => "yes".to_string(),
                "false" => "no".to_string(),
                _ => value,
            };
            match rules::check_sshd(&key, &value) {
                Ok(()) => overrides.push(Override {
                    change: Change::Sshd { key, value },
                    path: at,
                }),
                Err(message) => errors.push(at, message),
            }
        }
    }
    if let Some(files) = yaml::get(&found, "files") {
        let at = join(path, "files");
        for (i, file) in yaml::sequence(files, &at, errors).iter().enumerate() {
            let at = index(&at, i);
            if let Some(change) = permission_override(file, &at, errors) {
                overrides.push(Override { change, path: at });
            }
        }
    }
    for file in SettingFile::ALL {
        if let Some(section) = yaml::get(&found, file.section()) {
            let at = join(path, file.section());
            overrides.extend(setting_overrides(file, section, &at, errors));
        }
    }
    overrides
}

/// Modules to blacklist, or with `load`, to load at boot.
fn module_overrides(
    value: &Value,
    path: &str,
    load: bool,
    errors: &mut ProfileErrors,
) -> Vec<Override> {
    let mut overrides = Vec::new();
    for (i, module) in yaml::sequence(value, path, errors).iter().enumerate() {
        let at = index(path, i);
        let Some(module) = yaml::string(module, &at, errors) else {
            continue;
        };
        if let Err(message) = rules::check_module(&module) {
            errors.push(at, message);
            continue;
        }
        let change = match load {
            true => Change::LoadModule { module },
            false => Change::BlacklistModule { module },
        };
        overrides.push(Override { change, path: at });
    }
    overrides
}

/// The keys of one settings file, each checked against its allowlist.
fn setting_overrides(
    file: SettingFile,
    value: &Value,
    path: &str,
    errors: &mut ProfileErrors,
) -> Vec<Override> {
    let mut overrides = Vec::new();
    for (key, value) in yaml::entries(value, path, errors) {
        let at = join(path, &key);
        let Some(value) = yaml::scalar_text(value, &at, errors) else {
            continue;
        };
        match file.check(&key, &value) {
            Ok(value) => overrides.push(Override {
                change: Change::Setting { file, key, value },
                path: at,
            }),
            Err(message) => errors.push(at, message),
        }
    }
    overrides
}

/// One sysctl override, checked against the allowlist.
fn sysctl_override(
    key: &str,
    value: &Value,
    path: &str,
    errors: &mut ProfileErrors,
) -> Option<Change> {
    let value = yaml::scalar_text(value, path, errors)?;
    let mut ok = true;
    for check in [
        rules::check_sysctl_key(key),
        rules::check_sysctl_value(&value),
    ] {
        if let Err(message) = check {
            errors.push(path, message);
            ok = false;
        }
    }
    ok.then(|| Change::Sysctl {
        key: key.to_string(),
        value,
    })
}

/// One file permission override.
fn permission_override(value: &Value, path: &str, errors: &mut ProfileErrors) -> Option<Change> {
    let found = yaml::entries(value, path, errors);
    yaml::refuse_unknown(&found, &FILE_KEYS, path, errors);
    let text = |key: &str, errors: &mut ProfileErrors| match yaml::get(&found, key) {
        Some(v) => yaml::string(v, &join(path, key), errors),
        None => {
            errors.push(join(path, key), "missing");
            None
        }
    };
    let file = text("path", errors);
    let mode_text = text("mode", errors);
    let owner = text("owner", errors);
    let group = text("group", errors);
    let mode = mode_text.as_deref().and_then(|m| {
        let parsed = rules::parse_mode(m);
        if parsed.is_none() {
            errors.push(
                join(path, "mode"),
                format!("{m:?} is not an octal mode such as \"0640\""),
            );
        }
        parsed
    });
    let (file, mode, owner, group) = (file?, mode?, owner?, group?);
    let refusals = rules::check_permission(&file, mode, &owner, &group);
    let ok = refusals.is_empty();
    for message in refusals {
        errors.push(path, message);
    }
    ok.then_some(Change::Permission {
        path: file,
        mode,
        owner,
        group,
    })
}

/// Reads `hardening.exceptions`.
fn parse_exceptions(value: &Value, path: &str, errors: &mut ProfileErrors) -> Vec<Exception> {
    let mut exceptions = Vec::new();
    for (i, entry) in yaml::sequence(value, path, errors).iter().enumerate() {
        let at = index(path, i);
        let found = yaml::entries(entry, &at, errors);
        yaml::refuse_unknown(&found, &EXCEPTION_KEYS, &at, errors);
        let item =
            yaml::get(&found, "item").and_then(|v| yaml::string(v, &join(&at, "item"), errors));
        let reason =
            yaml::get(&found, "reason").and_then(|v| yaml::string(v, &join(&at, "reason"), errors));
        let approver = yaml::get(&found, "approver")
            .and_then(|v| yaml::string(v, &join(&at, "approver"), errors));
        let expires =
            yaml::get(&found, "expires").and_then(|v| parse_date(v, &join(&at, "expires"), errors));
        if item.is_none() {
            errors.push(
                join(&at, "item"),
                "missing: name the baseline item, e.g. sysctl/net.ipv4.ip_forward",
            );
        }
        let reason = reason.filter(|r| !r.trim().is_empty());
        if reason.is_none() {
            errors.push(
                join(&at, "reason"),
                "missing: every exception needs a reason",
            );
        }
        if let (Some(item), Some(reason)) = (item, reason) {
            exceptions.push(Exception {
                item: ItemId(item),
                reason,
                approver,
                expires,
                path: at,
            });
        }
    }
    exceptions
}

/// A `YYYY-MM-DD` day.
fn parse_date(value: &Value, path: &str, errors: &mut ProfileErrors) -> Option<Date> {
    let text = yaml::string(value, path, errors)?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    match Date::parse(&text, &format) {
        Ok(day) => Some(day),
        Err(_) => {
            errors.push(path, format!("{text:?} is not a day written YYYY-MM-DD"));
            None
        }
    }
}
