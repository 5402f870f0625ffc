//! The coverage of ANSSI-BP-028 v2.0 by the built-in baselines, computed from the baseline
//! files only: every recommendation R1 to R80 once, covered (by which items, at which
//! level), covered with a Kubernetes deviation, out of scope for a node agent, or a gap. The
//! README's table is [`markdown`]'s output, checked by a test so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::Serialize;

use super::baseline::{self, Coverage, Rule};
use super::items::{Change, ResolvedItem};
use super::level::Level;

/// The first and last recommendation numbers of the guide.
pub const GUIDE_RULES: std::ops::RangeInclusive<u32> = 1..=80;
/// The baseline holding every level.
pub const TOP_BASELINE: &str = "anssi-bp028-high";
/// The line before the table in the README.
pub const BEGIN_MARKER: &str = "<!-- coverage:begin (generated from profile/baselines by `OPI_WRITE_COVERAGE=1 cargo test -p opi-profile coverage`) -->";
/// The line after it.
pub const END_MARKER: &str = "<!-- coverage:end -->";

/// What the table says of one recommendation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Items implement it as the guide says.
    Covered,
    /// Items implement it, one or more departing from the guide for Kubernetes.
    Deviation,
    /// No node agent can own it.
    OutOfScope,
    /// Not covered yet, though an agent could own it.
    Gap,
}

/// One recommendation with its items.
#[derive(Clone, Debug, Serialize)]
pub struct RuleCoverage {
    /// The recommendation.
    pub rule: Rule,
    /// What the table says.
    pub status: Status,
    /// Its items, by the level of the baseline file that sets them.
    pub items: Vec<(Level, ResolvedItem)>,
}

/// Every recommendation of the guide, in order, with the items of every level.
pub fn rules() -> Result<Vec<RuleCoverage>, String> {
    let mut by_rule: BTreeMap<String, Vec<(Level, ResolvedItem)>> = BTreeMap::new();
    for (level, item) in baseline::items_by_level(TOP_BASELINE)? {
        let rule = item
            .guide
            .as_ref()
            .map(|g| g.rule.clone())
            .unwrap_or_default();
        by_rule.entry(rule).or_default().push((level, item));
    }
    let mut covered = Vec::new();
    for rule in baseline::rules(TOP_BASELINE)? {
        let items = by_rule.remove(&rule.number).unwrap_or_default();
        let deviates = items
            .iter()
            .any(|(_, item)| item.guide.as_ref().is_some_and(|g| g.deviation.is_some()));
        let status = match (&rule.coverage, items.is_empty(), deviates) {
            (Coverage::Covered(_), false, false) => Status::Covered,
            (Coverage::Covered(_), false, true) => Status::Deviation,
            (Coverage::OutOfScope(_), true, _) => Status::OutOfScope,
            (Coverage::Gap(_), true, _) => Status::Gap,
            (Coverage::Covered(_), true, _) => {
                return Err(format!(
                    "{} is marked covered but no item implements it",
                    rule.number
                ))
            }
            (_, false, _) => {
                return Err(format!(
                    "{} has items but is marked out of scope or a gap",
                    rule.number
                ))
            }
        };
        covered.push(RuleCoverage {
            rule,
            status,
            items,
        });
    }
    if let Some(unknown) = by_rule.keys().next() {
        return Err(format!(
            "items name {unknown}, which no baseline file lists in its rules"
        ));
    }
    Ok(covered)
}

/// The README section: a summary per level, then one row per recommendation.
pub fn markdown() -> Result<String, String> {
    let rules = rules()?;
    let mut text = String::new();
    text.push_str("| level | recommendations | covered | deviation | out of scope | gap | items in the baseline |\n");
    text.push_str("|---|---|---|---|---|---|---|\n");
    for level in Level::ALL {
        let at: Vec<&RuleCoverage> = rules.iter().filter(|r| r.rule.level == level).collect();
        let count = |status| at.iter().filter(|r| r.status == status).count();
        let items = baseline::resolve(&level.baseline())?.len();
        text.push_str(&format!(
            "| {level} ({}) | {} | {} | {} | {} | {} | {items} |\n",
            level.guide_letter(),
            at.len(),
            count(Status::Covered),
            count(Status::Deviation),
            count(Status::OutOfScope),
            count(Status::Gap),
        ));
    }
    text.push_str("\n| rule | level | title | status | items, deviations and reasons |\n");
    text.push_str("|---|---|---|---|---|\n");
    for rule in &rules {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            rule.rule.number,
            rule.rule.level.guide_letter(),
            rule.rule.title,
            status_text(rule.status),
            how(rule),
        ));
    }
    Ok(text)
}

/// `text` with the part between the markers replaced by `section`; `None` without markers.
pub fn replace_section(text: &str, section: &str) -> Option<String> {
    let start = text.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let end = text[start..].find(END_MARKER)? + start;
    Some(format!("{}\n{section}{}", &text[..start], &text[end..]))
}

fn status_text(status: Status) -> &'static str {
    match status {
        Status::Covered => "covered",
        Status::Deviation => "deviation",
        Status::OutOfScope => "out of scope",
        Status::Gap => "gap",
    }
}

/// The last cell: items per level, deviations with their reasons, and what is left out.
fn how(rule: &RuleCoverage) -> String {
    let mut parts = Vec::new();
    for level in Level::ALL {
        let items: Vec<String> = rule
            .items
            .iter()
            .filter(|(at, _)| *at == level)
            .map(|(_, item)| format!("`{}`", item_text(item)))
            .collect();
        if !items.is_empty() {
            parts.push(format!("{}: {}", level.guide_letter(), items.join(", ")));
        }
    }
    for (_, item) in &rule.items {
        if let Some(deviation) = item.guide.as_ref().and_then(|g| g.deviation.as_ref()) {
            parts.push(format!(
                "deviation `{}` (guide: {}): {}",
                item.id, deviation.guide, deviation.reason
            ));
        }
    }
    match &rule.rule.coverage {
        Coverage::Covered(Some(partial)) => parts.push(format!("not covered: {partial}")),
        Coverage::Covered(None) => {}
        Coverage::OutOfScope(why) | Coverage::Gap(why) => parts.push(why.clone()),
    }
    parts.join("; ").replace('|', "\\|")
}

/// `sysctl/kernel.kptr_restrict=2`, `module/cramfs`, `file/etc/shadow 0640 root:shadow`.
fn item_text(item: &ResolvedItem) -> String {
    match &item.change {
        Change::BlacklistModule { .. } | Change::LoadModule { .. } => item.id.to_string(),
        Change::Permission { .. } => format!("{} {}", item.id, item.change.value_text()),
        _ => format!("{}={}", item.id, item.change.value_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README, as compiled in.
    const README: &str = include_str!("../../../README.md");

    #[test]
    fn every_recommendation_of_the_guide_appears_once() {
        let rules = rules().unwrap_or_else(|e| panic!("{e}"));
        let numbers: Vec<u32> = rules
            .iter()
            .map(|r| baseline::rule_order(&r.rule.number))
            .collect();
        assert_eq!(numbers, GUIDE_RULES.collect::<Vec<_>>());
    }

    #[test]
    fn kubernetes_deviations_carry_the_guides_value_and_a_reason() {
        let rules = rules().unwrap();
        let r12 = rules.iter().find(|r| r.rule.number == "R12").unwrap();
        assert_eq!(r12.status, Status::Deviation);
        let forward = r12
            .items
            .iter()
            .find(|(_, i)| i.id.0 == "sysctl/net.ipv4.ip_forward")
            .expect("ip_forward is an item of R12");
        let deviation = forward
            .1
            .guide
            .as_ref()
            .unwrap()
            .deviation
            .as_ref()
            .unwrap();
        assert_eq!(deviation.guide, "0");
        assert!(deviation.reason.contains("pod"), "{}", deviation.reason);
    }

    #[test]
    fn coverage_table_in_the_readme_matches_the_baselines() {
        let table = markdown().unwrap_or_else(|e| panic!("{e}"));
        let expected = replace_section(README, &table).expect("README.md has the coverage markers");
        if expected == README {
            return;
        }
        if std::env::var_os("OPI_WRITE_COVERAGE").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
            std::fs::write(path, &expected).expect("README.md is writable");
            return;
        }
        panic!(
            "the coverage table in README.md differs from the baselines; regenerate it with \
             `OPI_WRITE_COVERAGE=1 cargo test -p opi-profile coverage`\n\n{table}"
        );
    }
}
