//! The node's hardening floor: sysctl bounds and blacklisted modules that no profile can
//! lower. The agent's local configuration owns the values; the check lives here so that the
//! manager can run it too.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a floor-derived item says it came from.
pub const FLOOR_ORIGIN: &str = "the node's hardening floor";

/// Bounds on one sysctl. Any combination may be given; all must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SysctlFloor {
    /// The value must be an integer at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// The value must be an integer at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// The value must be exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
}

/// The floor: sysctl bounds and modules that must stay blacklisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    /// Bounds per sysctl.
    #[serde(default)]
    pub sysctls: BTreeMap<String, SysctlFloor>,
    /// Modules that must stay blacklisted.
    #[serde(default)]
    pub blacklisted_modules: BTreeSet<String>,
}

impl SysctlFloor {
    /// Whether `value` satisfies these bounds.
    pub fn allows(&self, value: &str) -> bool {
        let number = value.trim().parse::<i64>().ok();
        let min_ok = self.min.is_none_or(|min| number.is_some_and(|n| n >= min));
        let max_ok = self.max.is_none_or(|max| number.is_some_and(|n| n <= max));
        let equals_ok = self
            .equals
            .as_ref()
            .is_none_or(|v| v.trim() == value.trim());
        min_ok && max_ok && equals_ok
    }

    /// The value the floor sets when the profile sets none: the exact value, or the bound.
    pub fn value(&self) -> String {
        match (&self.equals, self.min, self.max) {
            (Some(exact), _, _) => exact.clone(),
            (None, Some(min), _) => min.to_string(),
            (None, None, Some(max)) => max.to_string(),
            (None, None, None) => String::new(),
        }
    }

    /// The rule, for messages: `>= 1`, `<= 0`, `= 2`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(min) = self.min {
            parts.push(format!(">= {min}"));
        }
        if let Some(max) = self.max {
            parts.push(format!("<= {max}"));
        }
        if let Some(exact) = &self.equals {
            parts.push(format!("= {exact}"));
        }
        parts.join(" and ")
    }

    /// Problems with the bounds themselves.
    pub fn validate(&self) -> Option<String> {
        if self.min.is_none() && self.max.is_none() && self.equals.is_none() {
            return Some("gives no bound (min, max or equals)".to_string());
        }
        let value = self.value();
        (!self.allows(&value)).then(|| format!("bounds {} contradict each other", self.describe()))
    }
}

impl Default for Floor {
    /// Sane defaults: kernel pointers and log hidden, full ASLR, protected links, no set-id
    /// core dumps, no ICMP redirects or source routing, rare file systems blacklisted.
    fn default() -> Self {
        let at_least = |min| SysctlFloor {
            min: Some(min),
            ..SysctlFloor::default()
        };
        let at_most = |max| SysctlFloor {
            max: Some(max),
            ..SysctlFloor::default()
        };
        let sysctls = [
            ("kernel.kptr_restrict", at_least(1)),
            ("kernel.dmesg_restrict", at_least(1)),
            ("kernel.randomize_va_space", at_least(2)),
            ("fs.protected_symlinks", at_least(1)),
            ("fs.protected_hardlinks", at_least(1)),
            ("fs.suid_dumpable", at_most(0)),
            ("net.ipv4.conf.all.accept_redirects", at_most(0)),
            ("net.ipv4.conf.all.accept_source_route", at_most(0)),
        ];
        Self {
            sysctls: sysctls
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            blacklisted_modules: ["cramfs", "freevxfs", "hfs", "hfsplus", "jffs2"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

impl Floor {
    /// Every problem with the floor itself, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, bound) in &self.sysctls {
            if let Err(why) = crate::hardening::rules::check_sysctl_key(key) {
                problems.push(format!("sysctls.{key:?}: {why}"));
            }
            if let Some(why) = bound.validate() {
                problems.push(format!("sysctls.{key:?}: {why}"));
            }
        }
        for module in &self.blacklisted_modules {
            if let Err(why) = crate::hardening::rules::check_module(module) {
                problems.push(format!("blacklisted_modules: {why}"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_accept_stronger_values_and_refuse_weaker_ones() {
        let min = SysctlFloor {
            min: Some(1),
            ..SysctlFloor::default()
        };
        assert!(min.allows("2"));
        assert!(!min.allows("0"));
        assert!(!min.allows("abc"));
        let exact = SysctlFloor {
            equals: Some("0".into()),
            ..SysctlFloor::default()
        };
        assert!(exact.allows(" 0"));
        assert!(!exact.allows("1"));
        assert_eq!(min.describe(), ">= 1");
    }

    #[test]
    fn default_floor_is_valid_and_contradictions_are_named() {
        assert!(Floor::default().validate().is_empty());
        let mut floor = Floor::default();
        floor.sysctls.insert(
            "kernel.sysrq".into(),
            SysctlFloor {
                min: Some(3),
                max: Some(1),
                equals: None,
            },
        );
        let problems = floor.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("kernel.sysrq"), "{problems:?}");
    }
}
