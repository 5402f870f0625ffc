//! Compliance evidence: for each ANSSI-BP-028 recommendation of the applied baseline's level,
//! what the node shows now. Each baseline item of the promise kept with the last apply
//! (`applied.json`) is observed on the node ([`observe`]): the live kernel value when the root
//! is `/`, else the value in the file the agent wrote; modes and owners; module lists; the
//! keys of each settings file. An item passes when the observation matches, fails when it does
//! not, and is an exception when the profile lifted it with a reason (an exception past its
//! day counts as a failure). [`command`] prints it; the run loop sends it to the manager.

pub mod command;
pub mod observe;
pub mod proto;

use std::io;

use opi_profile::hardening::{Coverage, Deviation, Level};
use opi_profile::{ExceptionRecord, ItemPromise, Promise, RulePromise};
use serde::Serialize;
use time::{Date, OffsetDateTime};

use crate::apply::node::Node;
use crate::apply::record::AppliedRecord;
use crate::output::timestamp;
use observe::{Observation, Source};

/// What evidence says of an item or a recommendation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The node shows what the baseline asks.
    Pass,
    /// It does not.
    Fail,
    /// A profile exception, still valid, lifts it.
    Exception,
    /// The exception that lifted it is past its day: it counts as a failure.
    ExpiredException,
    /// No item implements the recommendation: out of scope for a node agent, or a gap.
    OutOfScope,
}

/// One item, observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ItemEvidence {
    /// `sysctl/net.ipv4.ip_forward`.
    pub id: String,
    /// What it does.
    pub what: String,
    /// What the node must show.
    pub expected: String,
    /// What it shows.
    pub observed: String,
    /// Where the observation comes from.
    pub source: Source,
    /// The verdict.
    pub status: Status,
    /// `live`, `file-only` or `reboot`.
    pub scope: String,
    /// The documented departure from the guide, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deviation: Option<Deviation>,
    /// The exception lifting it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionRecord>,
    /// More about the observation (a value pending a reboot, a module still loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One recommendation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleEvidence {
    /// `R12`.
    pub number: String,
    /// Its title.
    pub title: String,
    /// The level the guide gives it.
    pub level: Level,
    /// The verdict: the worst of its items.
    pub status: Status,
    /// Why it is out of scope, or what its items leave to others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its items.
    pub items: Vec<ItemEvidence>,
}

/// Counts of recommendations by verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Recommendations that pass.
    pub pass: u32,
    /// That fail.
    pub fail: u32,
    /// Lifted by an exception.
    pub exception: u32,
    /// Out of scope or not covered.
    pub out_of_scope: u32,
    /// Items whose exception expired.
    pub expired_exceptions: u32,
}

/// The evidence of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// The baseline applied.
    pub baseline: String,
    /// Its level.
    pub level: Level,
    /// When the node was observed, RFC 3339.
    pub observed_at: String,
    /// When the profile was applied, RFC 3339.
    pub applied_at: String,
    /// SHA-256 of the profile applied.
    pub profile_sha256: String,
    /// Whether live kernel values were read (the root is `/`).
    pub live: bool,
    /// Counts by verdict.
    pub summary: Summary,
    /// Every recommendation of the level, in guide order.
    pub rules: Vec<RuleEvidence>,
}

/// The evidence of `node`, from its last committed apply; `None` when no profile with a
/// baseline was applied.
pub fn collect(node: &Node, now: OffsetDateTime) -> io::Result<Option<Evidence>> {
    let Some(record) = AppliedRecord::load(node)? else {
        return Ok(None);
    };
    let Some(promise) = &record.promise else {
        return Ok(None);
    };
    let mut evidence = evaluate(node, promise, now.date())?;
    evidence.observed_at = timestamp(now);
    evidence.applied_at = record.applied_at.clone();
    evidence.profile_sha256 = record.profile_sha256.clone();
    Ok(Some(evidence))
}

/// Observes every item of `promise` on `node` as of `today`.
pub fn evaluate(node: &Node, promise: &Promise, today: Date) -> io::Result<Evidence> {
    let observer = observe::Observer::new(node);
    let mut rules = Vec::new();
    for rule in &promise.rules {
        rules.push(evaluate_rule(&observer, rule, today)?);
    }
    Ok(Evidence {
        baseline: promise.baseline.clone(),
        level: promise.level,
        observed_at: String::new(),
        applied_at: String::new(),
        profile_sha256: String::new(),
        live: node.live,
        summary: summarise(&rules),
        rules,
    })
}

impl Evidence {
    /// Items whose exception expired, as `R12 sysctl/… (expired 2026-06-30)`.
    pub fn expired_exceptions(&self) -> Vec<String> {
        self.rules
            .iter()
            .flat_map(|rule| rule.items.iter().map(move |item| (rule, item)))
            .filter(|(_, item)| item.status == Status::ExpiredException)
            .map(|(rule, item)| {
                let day = item.exception.as_ref().and_then(|e| e.expires.clone());
                format!(
                    "{} {} (expired {})",
                    rule.number,
                    item.id,
                    day.unwrap_or_default()
                )
            })
            .collect()
    }
}

fn evaluate_rule(
    observer: &observe::Observer,
    rule: &RulePromise,
    today: Date,
) -> io::Result<RuleEvidence> {
    let mut items = Vec::new();
    for item in &rule.items {
        items.push(evaluate_item(observer, item, today)?);
    }
    let status = items.iter().map(|i| i.status).max_by_key(|s| severity(*s));
    let (status, reason) = match (&rule.coverage, status) {
        (Coverage::OutOfScope(why) | Coverage::Gap(why), _) => (Status::OutOfScope, Some(why)),
        (Coverage::Covered(partial), Some(status)) => (status, partial.as_ref()),
        (Coverage::Covered(partial), None) => (Status::OutOfScope, partial.as_ref()),
    };
    Ok(RuleEvidence {
        number: rule.number.clone(),
        title: rule.title.clone(),
        level: rule.level,
        status,
        reason: reason.cloned(),
        items,
    })
}

fn evaluate_item(
    observer: &observe::Observer,
    item: &ItemPromise,
    today: Date,
) -> io::Result<ItemEvidence> {
    let Observation {
        observed,
        source,
        matches,
        note,
    } = observer.observe(&item.expected, item.scope)?;
    let status = match &item.exception {
        Some(exception) if exception.expired_on(today) => Status::ExpiredException,
        Some(_) => Status::Exception,
        None if matches => Status::Pass,
        None => Status::Fail,
    };
    let expected = match &item.baseline_value {
        Some(base) => format!("{} (baseline {base})", item.expected.value_text()),
        None if !item.applied => format!("{} (not set: excepted)", item.expected.value_text()),
        None => item.expected.value_text(),
    };
    Ok(ItemEvidence {
        id: item.id.to_string(),
        what: item.what.clone(),
        expected,
        observed,
        source,
        status,
        scope: item.scope.to_string(),
        deviation: item.deviation.clone(),
        exception: item.exception.clone(),
        note,
    })
}

/// How much a verdict weighs when the worst item gives the recommendation's.
fn severity(status: Status) -> u8 {
    match status {
        Status::OutOfScope => 0,
        Status::Pass => 1,
        Status::Exception => 2,
        Status::Fail | Status::ExpiredException => 3,
    }
}

fn summarise(rules: &[RuleEvidence]) -> Summary {
    let mut summary = Summary::default();
    for rule in rules {
        match rule.status {
            Status::Pass => summary.pass += 1,
            Status::Fail | Status::ExpiredException => summary.fail += 1,
            Status::Exception => summary.exception += 1,
            Status::OutOfScope => summary.out_of_scope += 1,
        }
        summary.expired_exceptions += rule
            .items
            .iter()
            .filter(|i| i.status == Status::ExpiredException)
            .count() as u32;
    }
    summary
}

#[cfg(test)]
mod tests;
