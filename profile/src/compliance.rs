//! What a profile promises, per ANSSI-BP-028 recommendation of its baseline's level: each
//! baseline item with the value the node must show, its deviation from the guide and the
//! exception that lifts it, if any. The agent keeps it with the record of the apply and
//! compares it with what it observes on the node: that is the node's compliance evidence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::desired::SysctlSetting;
use crate::hardening::{Change, Coverage, Deviation, Hardening, ItemId, Level, Scope};

/// A profile's promise for its baseline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    /// The baseline, `anssi-bp028-intermediary`.
    pub baseline: String,
    /// Its level.
    pub level: Level,
    /// Every recommendation up to that level, in guide order.
    pub rules: Vec<RulePromise>,
}

/// One recommendation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulePromise {
    /// `R12`.
    pub number: String,
    /// Its title.
    pub title: String,
    /// The level the guide gives it.
    pub level: Level,
    /// How far the baselines cover it.
    pub coverage: Coverage,
    /// Its items in this baseline.
    pub items: Vec<ItemPromise>,
}

/// One baseline item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemPromise {
    /// Its name, `sysctl/net.ipv4.ip_forward`.
    pub id: ItemId,
    /// What it does.
    pub what: String,
    /// When it takes effect.
    pub scope: Scope,
    /// What the node must show: the baseline's value (raised by the floor where it is
    /// higher), or the value of the profile override an exception allows.
    pub expected: Change,
    /// The baseline's own value, when an override replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_value: Option<String>,
    /// False when an exception removed it: the agent does not set it.
    pub applied: bool,
    /// Its documented departure from the guide, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviation: Option<Deviation>,
    /// The profile exception naming it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionRecord>,
}

/// A profile exception, as evidence shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRecord {
    /// Why the node needs it.
    pub reason: String,
    /// Who approved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The last day it holds, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Its path in the profile.
    pub path: String,
}

impl ExceptionRecord {
    /// Whether the exception no longer holds on `today`.
    pub fn expired_on(&self, today: time::Date) -> bool {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        self.expires
            .as_deref()
            .and_then(|day| time::Date::parse(day, &format).ok())
            .is_some_and(|expires| expires < today)
    }
}

/// The promise of `hardening` once rendered: sysctl values as the floor left them.
pub fn build(hardening: &Hardening, sysctls: &BTreeMap<String, SysctlSetting>) -> Option<Promise> {
    let (baseline, level) = (hardening.baseline.clone()?, hardening.level?);
    let mut by_rule: BTreeMap<&str, Vec<ItemPromise>> = BTreeMap::new();
    for (id, base) in &hardening.baseline_items {
        let Some(guide) = &base.guide else { continue };
        let current = hardening.items.get(id);
        let mut expected = current.map_or(&base.change, |item| &item.change).clone();
        if let Change::Sysctl { key, value } = &mut expected {
            if let Some(setting) = sysctls.get(key).filter(|_| current.is_some()) {
                value.clone_from(&setting.value);
            }
        }
        let baseline_value = (expected != base.change).then(|| base.change.value_text());
        let exception = hardening.exceptions.iter().find(|e| &e.item == id);
        by_rule.entry(&guide.rule).or_default().push(ItemPromise {
            id: id.clone(),
            what: guide.what.clone(),
            scope: current.map_or(base.scope, |item| item.scope),
            expected,
            baseline_value,
            applied: current.is_some(),
            deviation: guide.deviation.clone(),
            exception: exception.map(|e| ExceptionRecord {
                reason: e.reason.clone(),
                approver: e.approver.clone(),
                expires: e.expires.map(|day| day.to_string()),
                path: e.path.clone(),
            }),
        });
    }
    let rules = hardening
        .rules
        .iter()
        .map(|rule| RulePromise {
            number: rule.number.clone(),
            title: rule.title.clone(),
            level: rule.level,
            coverage: rule.coverage.clone(),
            items: by_rule.remove(rule.number.as_str()).unwrap_or_default(),
        })
        .collect();
    Some(Promise {
        baseline,
        level,
        rules,
    })
}
