//! The built-in hardening baselines, one YAML file per ANSSI-BP-028 level under
//! `profile/baselines/`, embedded in the binary. Each level includes the level below it; an
//! item of a higher level replaces the item of the same name from a lower one.
//!
//! Each file also lists every recommendation the guide puts at its level, with its title and
//! how far the items cover it: covered (perhaps partly), out of scope for a node agent, or a
//! gap not covered yet; [`super::coverage`] renders that as the README's table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::items::{sysctl_scope, Change, Deviation, GuideRef, ItemId, ResolvedItem, Scope};
use super::level::Level;
use super::rules::{self, parse_mode};
use super::settings::SettingFile;

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
    level: Level,
    #[serde(default)]
    includes: Option<String>,
    /// Every recommendation the guide puts at this level.
    rules: BTreeMap<String, RuleEntry>,
    items: Vec<BaselineEntry>,
}

/// A recommendation of the guide at the file's level, and how far the agent covers it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleEntry {
    title: String,
    /// Why no node agent can own it.
    #[serde(default)]
    out_of_scope: Option<String>,
    /// Why it is not covered yet though an agent could own it.
    #[serde(default)]
    gap: Option<String>,
    /// What of it the items leave to others.
    #[serde(default)]
    partial: Option<String>,
}

/// One item of a baseline file: a rule number, exactly one subject, and its scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BaselineEntry {
    rule: String,
    #[serde(default)]
    sysctl: Option<String>,
    #[serde(default)]
    module: Option<String>,
    #[serde(default)]
    load: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    sshd: Option<String>,
    #[serde(default)]
    sudo: Option<String>,
    #[serde(default)]
    login_defs: Option<String>,
    #[serde(default)]
    shell: Option<String>,
    #[serde(default)]
    limits: Option<String>,
    #[serde(default)]
    coredump: Option<String>,
    #[serde(default)]
    pwquality: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
    scope: Scope,
    what: String,
    /// With `deviation`: what the guide asks for instead of `value`.
    #[serde(default)]
    guide: Option<String>,
    /// Why a Kubernetes node departs from the guide here.
    #[serde(default)]
    deviation: Option<String>,
}

/// How far the baselines cover a recommendation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "reason")]
pub enum Coverage {
    /// Items implement it; what they leave to others, if anything.
    Covered(Option<String>),
    /// No node agent can own it, and why.
    OutOfScope(String),
    /// An agent could own it but the baselines do not cover it yet, and why.
    Gap(String),
}

/// A recommendation of the guide, as the baseline files describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `R12`.
    pub number: String,
    /// Its title.
    pub title: String,
    /// The level the guide gives it.
    pub level: Level,
    /// How far the baselines cover it.
    pub coverage: Coverage,
}

/// The names of the built-in baselines.
pub fn names() -> Vec<&'static str> {
    BASELINES.iter().map(|(name, _)| *name).collect()
}

/// The items of baseline `name` with those of the levels it includes, by item name.
pub fn resolve(name: &str) -> Result<BTreeMap<ItemId, ResolvedItem>, String> {
    let mut items = BTreeMap::new();
    for file in chain(name)? {
        for entry in &file.items {
            let item = entry.resolve(&file)?;
            items.insert(item.id.clone(), item);
        }
    }
    Ok(items)
}

/// Every item of every file of baseline `name`, with the level of its file, lower levels
/// first; an item a higher level replaces appears once per level.
pub fn items_by_level(name: &str) -> Result<Vec<(Level, ResolvedItem)>, String> {
    let mut items = Vec::new();
    for file in chain(name)? {
        for entry in &file.items {
            items.push((file.level, entry.resolve(&file)?));
        }
    }
    Ok(items)
}

/// The level of baseline `name`.
pub fn level(name: &str) -> Result<Level, String> {
    Ok(load(name)?.level)
}

/// The recommendations of baseline `name` and the levels it includes, in guide order.
pub fn rules(name: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for file in chain(name)? {
        for (number, entry) in &file.rules {
            let coverage = match (&entry.out_of_scope, &entry.gap) {
                (Some(why), None) => Coverage::OutOfScope(why.clone()),
                (None, Some(why)) => Coverage::Gap(why.clone()),
                (None, None) => Coverage::Covered(entry.partial.clone()),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "built-in baseline {} {number}: a rule is out of scope or a gap, not both",
                        file.name
                    ))
                }
            };
            rules.push(Rule {
                number: number.clone(),
                title: entry.title.clone(),
                level: file.level,
                coverage,
            });
        }
    }
    rules.sort_by_key(|rule| rule_order(&rule.number));
    Ok(rules)
}

/// The number of a rule, for sorting `R2` before `R10`.
pub fn rule_order(number: &str) -> u32 {
    number.trim_start_matches('R').parse().unwrap_or(u32::MAX)
}

/// The file of baseline `name`.
fn load(name: &str) -> Result<BaselineFile, String> {
    let (_, text) = BASELINES
        .iter()
        .find(|(known, _)| *known == name)
        .ok_or_else(|| format!("unknown baseline {name:?}; known: {}", names().join(", ")))?;
    serde_norway::from_str(text)
        .map_err(|error| format!("built-in baseline {name} is broken: {error}"))
}

/// The file of `name` and those it includes, lowest level first.
fn chain(name: &str) -> Result<Vec<BaselineFile>, String> {
    let file = load(name)?;
    let mut files = match &file.includes {
        Some(lower) => chain(lower)?,
        None => Vec::new(),
    };
    files.push(file);
    Ok(files)
}

impl BaselineEntry {
    fn resolve(&self, file: &BaselineFile) -> Result<ResolvedItem, String> {
        let broken = |why: &str| format!("built-in baseline {} {}: {why}", file.name, self.rule);
        let change = self.change().map_err(|why| broken(&why))?;
        if let Change::Sysctl { key, value } = &change {
            let expected = sysctl_scope(key, value);
            if expected == Scope::Reboot && self.scope != Scope::Reboot {
                return Err(broken("a one-way sysctl value must be reboot-scoped"));
            }
        }
        let deviation = match (&self.deviation, &self.guide) {
            (Some(reason), Some(guide)) => Some(Deviation {
                guide: guide.clone(),
                reason: reason.clone(),
            }),
            (None, None) => None,
            _ => return Err(broken("a deviation names the guide's value and its reason")),
        };
        Ok(ResolvedItem {
            id: change.id(),
            change,
            scope: self.scope,
            origin: format!("{} {} ({})", file.name, self.rule, self.what),
            path: None,
            guide: Some(GuideRef {
                level: file.level,
                rule: self.rule.clone(),
                what: self.what.clone(),
                deviation,
            }),
        })
    }

    /// What the item changes; exactly one subject is named.
    fn change(&self) -> Result<Change, String> {
        let settings = [
            (SettingFile::Sudo, &self.sudo),
            (SettingFile::LoginDefs, &self.login_defs),
            (SettingFile::Shell, &self.shell),
            (SettingFile::Limits, &self.limits),
            (SettingFile::Coredump, &self.coredump),
            (SettingFile::Pwquality, &self.pwquality),
        ];
        let subjects = [
            &self.sysctl,
            &self.module,
            &self.load,
            &self.file,
            &self.sshd,
        ]
        .into_iter()
        .chain(settings.iter().map(|(_, key)| *key))
        .filter(|subject| subject.is_some())
        .count();
        if subjects != 1 {
            return Err("an item names exactly one subject (sysctl, module, load, file, sshd or a settings key)".into());
        }
        let value = || self.value.clone().ok_or("missing value".to_string());
        if let Some(key) = &self.sysctl {
            return Ok(Change::Sysctl {
                key: key.clone(),
                value: value()?,
            });
        }
        if let Some(module) = &self.module {
            return Ok(Change::BlacklistModule {
                module: module.clone(),
            });
        }
        if let Some(module) = &self.load {
            return Ok(Change::LoadModule {
                module: module.clone(),
            });
        }
        if let Some(key) = &self.sshd {
            rules::check_sshd(key, &value()?)?;
            return Ok(Change::Sshd {
                key: key.clone(),
                value: value()?,
            });
        }
        if let Some(path) = &self.file {
            let mode = self
                .mode
                .as_deref()
                .and_then(parse_mode)
                .ok_or("file without an octal mode")?;
            let owner = self.owner.clone().unwrap_or_else(|| "root".to_string());
            let group = self.group.clone().unwrap_or_else(|| "root".to_string());
            let refusals = rules::check_permission(path, mode, &owner, &group);
            if let Some(refusal) = refusals.into_iter().next() {
                return Err(refusal);
            }
            return Ok(Change::Permission {
                path: path.clone(),
                mode,
                owner,
                group,
            });
        }
        let (file, key) = settings
            .iter()
            .find_map(|(file, key)| key.as_ref().map(|key| (*file, key.clone())))
            .expect("one subject is named");
        let value = file.check(&key, &value()?)?;
        Ok(Change::Setting { file, key, value })
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
