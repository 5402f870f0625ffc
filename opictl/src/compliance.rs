//! `opictl compliance`: every node's ANSSI-BP-028 evidence, rolled up fleet-wide (a row per
//! node, then a row per recommendation with how many nodes pass, fail or are excepted), as a
//! table, JSON or CSV; [`report`] writes and verifies the signed report.

pub mod report;

use std::collections::BTreeMap;

use opi_proto::v1::{ComplianceStatus, NodeCompliance, RuleEvidence};
use serde::Serialize;

use crate::cli::{ComplianceArgs, ComplianceCommand};
use crate::output::{self, timestamp, Format, Table};
use crate::{Context, Error};

/// One node as `-o json` prints it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// The node.
    pub node: String,
    /// Its pool.
    pub pool: String,
    /// Empty when the node sent no evidence.
    pub baseline: String,
    /// The level of its baseline, or of the recommendation.
    pub level: String,
    /// Since when the node shows this evidence, RFC 3339.
    pub since: Option<String>,
    /// When the agent observed it, RFC 3339.
    pub observed_at: Option<String>,
    /// The profile generation it ran.
    pub generation: u64,
    /// Whether kernel values were read live.
    pub live: bool,
    /// Recommendations by verdict.
    pub counts: Counts,
    /// The recommendations the node misses.
    pub failing: Vec<String>,
    /// Every recommendation of its level.
    pub rules: Vec<RuleView>,
}

/// Counts of recommendations by verdict.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// Passing.
    pub pass: usize,
    /// Failing, or with an expired exception.
    pub fail: usize,
    /// Lifted by a valid exception.
    pub exception: usize,
    /// Out of scope or not covered.
    pub out_of_scope: usize,
}

/// One recommendation of one node.
#[derive(Debug, Serialize)]
pub struct RuleView {
    /// `R12`.
    pub rule: String,
    /// Its title.
    pub title: String,
    /// The level of its baseline, or of the recommendation.
    pub level: String,
    /// The verdict.
    pub status: &'static str,
    /// Why.
    pub reason: String,
    /// Its items.
    pub items: Vec<ItemView>,
}

/// One item of one node.
#[derive(Debug, Serialize)]
pub struct ItemView {
    /// `sysctl/net.ipv4.ip_forward`.
    pub item: String,
    /// The verdict.
    pub status: &'static str,
    /// What the baseline asks.
    pub expected: String,
    /// What the node shows.
    pub observed: String,
    /// live, file or metadata.
    pub source: String,
    /// A Kubernetes deviation: the guide's value and why.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub deviation: String,
    /// The exception lifting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionView>,
    /// More about the observation.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// An exception as the profile wrote it.
#[derive(Debug, Serialize)]
pub struct ExceptionView {
    /// Why.
    pub reason: String,
    /// Who approved it.
    pub approver: String,
    /// Its last day, YYYY-MM-DD.
    pub expires: String,
}

/// Runs `opictl compliance …`.
pub async fn run(context: &Context, args: ComplianceArgs) -> Result<(), Error> {
    match args.command {
        Some(ComplianceCommand::Report(args)) => report::write(context, args).await,
        Some(ComplianceCommand::Verify(args)) => report::verify(context, args),
        None => {
            let pool = args.pool.unwrap_or_default();
            let nodes = context.connect().await?.get_compliance(&pool).await?;
            let views: Vec<NodeView> = nodes.into_iter().map(NodeView::new).collect();
            match (context.csv, context.format) {
                (true, _) => output::print(&csv(&views)),
                (false, Format::Json) => output::print_json(&views),
                (false, Format::Table) if views.is_empty() => {
                    output::print("no node enrolled in this selection\n")
                }
                (false, Format::Table) => output::print(&tables(&views)),
            }
        }
    }
}

/// How a verdict reads.
pub fn status_name(status: ComplianceStatus) -> &'static str {
    match status {
        ComplianceStatus::Pass => "pass",
        ComplianceStatus::Fail => "fail",
        ComplianceStatus::Exception => "exception",
        ComplianceStatus::ExpiredException => "expired-exception",
        ComplianceStatus::OutOfScope => "out-of-scope",
        ComplianceStatus::Unspecified => "unknown",
    }
}

impl NodeView {
    fn new(node: NodeCompliance) -> Self {
        let report = node.report.unwrap_or_default();
        let rules: Vec<RuleView> = report.rules.into_iter().map(RuleView::new).collect();
        let mut counts = Counts::default();
        for rule in &rules {
            match rule.status {
                "pass" => counts.pass += 1,
                "fail" | "expired-exception" => counts.fail += 1,
                "exception" => counts.exception += 1,
                _ => counts.out_of_scope += 1,
            }
        }
        let failing = rules
            .iter()
            .filter(|r| matches!(r.status, "fail" | "expired-exception"))
            .map(|r| r.rule.clone())
            .collect();
        Self {
            node: node.node,
            pool: node.pool,
            baseline: report.baseline,
            level: report.level,
            since: timestamp(node.received_at.as_ref()),
            observed_at: timestamp(report.observed_at.as_ref()),
            generation: node.generation,
            live: report.live,
            counts,
            failing,
            rules,
        }
    }
}

impl RuleView {
    fn new(rule: RuleEvidence) -> Self {
        Self {
            status: status_name(rule.status()),
            items: rule
                .items
                .into_iter()
                .map(|item| ItemView {
                    status: status_name(item.status()),
                    deviation: match item.deviation_reason.is_empty() {
                        true => String::new(),
                        false => {
                            format!("guide: {}; {}", item.deviation_guide, item.deviation_reason)
                        }
                    },
                    exception: item.exception.map(|e| ExceptionView {
                        reason: e.reason,
                        approver: e.approver,
                        expires: e.expires,
                    }),
                    item: item.item,
                    expected: item.expected,
                    observed: item.observed,
                    source: item.source,
                    note: item.note,
                })
                .collect(),
            rule: rule.rule,
            title: rule.title,
            level: rule.level,
            reason: rule.reason,
        }
    }
}

/// A row per node, then a row per recommendation some node covers.
fn tables(views: &[NodeView]) -> String {
    let mut nodes = Table::new(&[
        "NODE",
        "POOL",
        "BASELINE",
        "PASS",
        "FAIL",
        "EXCEPTION",
        "SINCE",
        "FAILING",
    ]);
    for view in views {
        let evidence = !view.baseline.is_empty();
        let count = |n: usize| {
            if evidence {
                n.to_string()
            } else {
                String::new()
            }
        };
        nodes.row(vec![
            view.node.clone(),
            view.pool.clone(),
            match evidence {
                true => view.baseline.clone(),
                false => "no evidence".to_string(),
            },
            count(view.counts.pass),
            count(view.counts.fail),
            count(view.counts.exception),
            view.since.clone().unwrap_or_default(),
            view.failing.join(","),
        ]);
    }

    let mut rules = Table::new(&[
        "RULE",
        "TITLE",
        "PASS",
        "FAIL",
        "EXCEPTION",
        "FAILING NODES",
    ]);
    for (rule, roll) in rollup(views) {
        rules.row(vec![
            rule,
            roll.title,
            roll.pass.to_string(),
            roll.fail.len().to_string(),
            roll.exception.to_string(),
            roll.fail.join(","),
        ]);
    }
    format!("{}\n{}", nodes.render(), rules.render())
}

/// One recommendation across nodes.
#[derive(Default)]
struct Rollup {
    title: String,
    pass: usize,
    exception: usize,
    fail: Vec<String>,
}

/// The recommendations items cover, in guide order, with their verdict across nodes.
fn rollup(views: &[NodeView]) -> Vec<(String, Rollup)> {
    let mut by_rule: BTreeMap<u32, (String, Rollup)> = BTreeMap::new();
    for view in views {
        for rule in view.rules.iter().filter(|r| r.status != "out-of-scope") {
            let order = rule
                .rule
                .trim_start_matches('R')
                .parse()
                .unwrap_or(u32::MAX);
            let (_, roll) = by_rule
                .entry(order)
                .or_insert_with(|| (rule.rule.clone(), Rollup::default()));
            roll.title.clone_from(&rule.title);
            match rule.status {
                "pass" => roll.pass += 1,
                "exception" => roll.exception += 1,
                _ => roll.fail.push(view.node.clone()),
            }
        }
    }
    by_rule.into_values().collect()
}

/// One row per node and recommendation.
fn csv(views: &[NodeView]) -> String {
    let mut text =
        String::from("node,pool,baseline,since,rule,level,status,items_not_passing,exceptions\n");
    for view in views {
        for rule in &view.rules {
            let not_passing: Vec<&str> = rule
                .items
                .iter()
                .filter(|i| i.status != "pass")
                .map(|i| i.item.as_str())
                .collect();
            let exceptions: Vec<String> = rule
                .items
                .iter()
                .filter_map(|i| {
                    let e = i.exception.as_ref()?;
                    Some(format!(
                        "{} ({}, {}, {})",
                        i.item, e.reason, e.approver, e.expires
                    ))
                })
                .collect();
            let cells = [
                view.node.as_str(),
                &view.pool,
                &view.baseline,
                view.since.as_deref().unwrap_or_default(),
                &rule.rule,
                &rule.level,
                rule.status,
                &not_passing.join(" "),
                &exceptions.join("; "),
            ];
            let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
            text.push_str(&line.join(","));
            text.push('\n');
        }
    }
    text
}

/// A CSV cell, quoted when it must be (RFC 4180), with control characters escaped.
fn csv_cell(text: &str) -> String {
    let text = output::sanitize(text);
    match text.contains([',', '"', '\n']) {
        true => format!("\"{}\"", text.replace('"', "\"\"")),
        false => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_with_commas_and_quotes_are_quoted() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a, b"), "\"a, b\"");
        assert_eq!(csv_cell("say \"no\""), "\"say \"\"no\"\"\"");
    }
}
