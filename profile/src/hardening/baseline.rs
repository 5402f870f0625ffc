//! The built-in hardening baselines, one YAML file per ANSSI-BP-028 level under
//! `profile/baselines/`, embedded in the binary. Each level includes the level below it; an
//! item of a higher level replaces the item of the same name from a lower one.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::items::{sysctl_scope, Change, ItemId, ResolvedItem, Scope};
use super::rules::parse_mode;

/// The baselines, by name, lowest level first.
pub const BASELINES: [(&str, &str); 4] = [
    (
        "anssi-bp028-minimal",
        include_str!("../../baselines/anssi-bp028-minimal.yaml"),
    ),
    (
        "anssi-bp028-intermediary",
        include_str!("../../baselines/anssi-bp028-intermediary.yaml"),
    ),
    (
        "anssi-bp028-enhanced",
        include_str!("../../baselines/anssi-bp028-enhanced.yaml"),
    ),
    (
        "anssi-bp028-high",
        include_str!("../../baselines/anssi-bp028-high.yaml"),
    ),
];

/// One baseline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineFile {
    name: String,
    #[serde(default)]
    includes: Option<String>,
    items: Vec<BaselineEntry>,
}

/// One item of a baseline file: a rule number, exactly one subject, and its scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineEntry {
    rule: String,
    #[serde(default)]
    sysctl: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    module: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
    scope: Scope,
    what: String,
}

/// The names of the built-in baselines.
pub fn names() -> Vec<&'static str> {
    BASELINES.iter().map(|(name, _)| *name).collect()
}

/// The items of baseline `name` with those of the levels it includes, by item name.
pub fn resolve(name: &str) -> Result<BTreeMap<ItemId, ResolvedItem>, String> {
    let (_, text) = BASELINES
        .iter()
        .find(|(known, _)| *known == name)
        .ok_or_else(|| format!("unknown baseline {name:?}; known: {}", names().join(", ")))?;
    let file: BaselineFile = serde_norway::from_str(text)
        .map_err(|error| format!("built-in baseline {name} is broken: {error}"))?;
    let mut items = match &file.includes {
        Some(lower) => resolve(lower)?,
        None => BTreeMap::new(),
    };
    for entry in &file.items {
        let item = entry.resolve(&file.name)?;
        items.insert(item.id.clone(), item);
    }
    Ok(items)
}

impl BaselineEntry {
    fn resolve(&self, baseline: &str) -> Result<ResolvedItem, String> {
        let broken = |why: &str| format!("built-in baseline {baseline} {}: {why}", self.rule);
        let change = match (&self.sysctl, &self.module, &self.file) {
            (Some(key), None, None) => Change::Sysctl {
                key: key.clone(),
                value: self
                    .value
                    .clone()
                    .ok_or_else(|| broken("sysctl without value"))?,
            },
            (None, Some(module), None) => Change::BlacklistModule {
                module: module.clone(),
            },
            (None, None, Some(path)) => Change::Permission {
                path: path.clone(),
                mode: self
                    .mode
                    .as_deref()
                    .and_then(parse_mode)
                    .ok_or_else(|| broken("file without an octal mode"))?,
                owner: self.owner.clone().unwrap_or_else(|| "root".to_string()),
                group: self.group.clone().unwrap_or_else(|| "root".to_string()),
            },
            _ => return Err(broken("an item names exactly one sysctl, module or file")),
        };
        if let Change::Sysctl { key, value } = &change {
            let expected = sysctl_scope(key, value);
            if expected == Scope::Reboot && self.scope != Scope::Reboot {
                return Err(broken("a one-way sysctl value must be reboot-scoped"));
            }
        }
        Ok(ResolvedItem {
            id: change.id(),
            change,
            scope: self.scope,
            origin: format!("{baseline} {} ({})", self.rule, self.what),
            path: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_baseline_resolves() {
        for name in names() {
            resolve(name).unwrap_or_else(|error| panic!("{error}"));
        }
    }

    #[test]
    fn each_level_includes_the_level_below() {
        let intermediary = resolve("anssi-bp028-intermediary").unwrap();
        let high = resolve("anssi-bp028-high").unwrap();
        for id in intermediary.keys() {
            assert!(high.contains_key(id), "{id} missing from high");
        }
        let kptr = &intermediary[&ItemId("sysctl/kernel.kptr_restrict".into())];
        assert!(kptr.origin.contains("R9"), "{}", kptr.origin);
    }

    #[test]
    fn a_higher_level_replaces_the_same_item_and_marks_one_way_values_reboot_scoped() {
        let high = resolve("anssi-bp028-high").unwrap();
        let ptrace = &high[&ItemId("sysctl/kernel.yama.ptrace_scope".into())];
        assert_eq!(ptrace.change.value_text(), "3");
        assert_eq!(ptrace.scope, Scope::Reboot);
        let modules = &high[&ItemId("sysctl/kernel.modules_disabled".into())];
        assert_eq!(modules.scope, Scope::Reboot);
    }

    #[test]
    fn unknown_baseline_names_the_known_ones() {
        let error = resolve("anssi-bp028-extreme").unwrap_err();
        assert!(error.contains("anssi-bp028-high"), "{error}");
    }
}
