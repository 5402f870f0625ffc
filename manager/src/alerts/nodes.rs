//! Node alerts, as pure functions of the nodes and the time: offline nodes, failing
//! conditions and certificates past their renewal window.
//!
//! Offline nodes are summarised rather than listed when many go at once: when more than the
//! storm threshold and more than half of the nodes that were online vanish within one grouping
//! window, one `OpiManagerLostMostAgents` replaces their alerts (the manager's own network is
//! the likely cause); otherwise, when more than the storm threshold of one pool are offline,
//! one `OpiPoolNodesOffline` replaces that pool's per-node alerts. Per-node and per-pool
//! offline alerts wait one grouping window before firing, so that nodes failing together are
//! grouped before anything is sent. Nodes in maintenance and revoked nodes raise nothing.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use time::OffsetDateTime;

use super::model::{
    severity_label, Alert, MANAGER_LOST_MOST_AGENTS, NODE_CERTIFICATE_EXPIRING, NODE_DEGRADED,
    NODE_OFFLINE, POOL_NODES_OFFLINE,
};
use crate::fleet::NodeView;
use crate::records::{rfc3339, Connectivity, Health, NodeState};

/// Node names an annotation lists at most; the rest are counted.
pub const NAMES_LISTED: usize = 50;
/// Share of a node certificate's lifetime left when it warns: the end of the agents' renewal
/// window (they renew at 60–80 % of the lifetime).
const CERT_WARNING_SHARE: u32 = 5;
/// Share of a node certificate's lifetime left when it turns critical (1 h of the default 24 h).
const CERT_CRITICAL_SHARE: u32 = 24;

/// What the node rules need to know.
#[derive(Clone, Debug)]
pub struct RuleSettings {
    pub fleet: String,
    /// More offline nodes than this in one pool are summarised in one alert.
    pub storm_threshold: usize,
    /// Nodes going offline within this window went offline "at once"; offline alerts also
    /// wait this long before firing.
    pub grouping_window: Duration,
    /// The grace period before a node is offline, quoted in descriptions.
    pub offline_after: Duration,
    /// Lifetime of node certificates, which the expiry thresholds are shares of.
    pub node_cert_ttl: Duration,
    /// Where the runbooks are (`docs/runbooks.md` as published): each alert links to
    /// `RUNBOOKS#alertname` in its `runbook_url` annotation.
    pub runbooks: String,
}

/// The node alerts due now, and when the next held-back one comes due.
#[derive(Debug, Default)]
pub struct NodeAlerts {
    pub firing: Vec<Alert>,
    pub next_due: Option<OffsetDateTime>,
}

/// An offline node and since when.
type Offline<'a> = (&'a NodeView, OffsetDateTime);

/// Every node alert due at `now`.
pub fn evaluate(nodes: &[NodeView], settings: &RuleSettings, now: OffsetDateTime) -> NodeAlerts {
    let watched: Vec<&NodeView> = nodes.iter().filter(|n| is_watched(n)).collect();
    let mut alerts = NodeAlerts::default();
    offline_alerts(&watched, settings, now, &mut alerts);
    for node in &watched {
        alerts.firing.extend(degraded_alerts(node, settings, now));
        alerts.firing.extend(certificate_alert(node, settings, now));
    }
    alerts
}

impl NodeAlerts {
    /// Fires `alert` if `due` has come, else remembers when it will.
    fn hold(&mut self, alert: Alert, due: OffsetDateTime, now: OffsetDateTime) {
        if due <= now {
            self.firing.push(alert);
        } else {
            self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
        }
    }
}

/// Active nodes not in maintenance: the ones alerts are about.
fn is_watched(node: &NodeView) -> bool {
    node.record.state == NodeState::Active && node.record.supervision.maintenance.is_none()
}

fn offline_alerts(
    watched: &[&NodeView],
    settings: &RuleSettings,
    now: OffsetDateTime,
    alerts: &mut NodeAlerts,
) {
    let mut offline: Vec<Offline> = watched
        .iter()
        .filter(|n| n.record.supervision.connectivity == Connectivity::Offline)
        .map(|n| (*n, offline_since(n, now)))
        .collect();
    offline.sort_by(|a, b| (a.1, &a.0.record.name).cmp(&(b.1, &b.0.record.name)));
    let online = watched.len() - offline.len();

    if let Some(burst) = mass_loss(&offline, online, settings) {
        let before = online + offline.len() - burst.start;
        let lost: Vec<Offline> = offline.drain(burst).collect();
        alerts.firing.push(lost_most_alert(&lost, before, settings));
    }

    let mut pools: BTreeMap<&str, Vec<Offline>> = BTreeMap::new();
    for entry in offline {
        pools.entry(&entry.0.record.pool).or_default().push(entry);
    }
    let window = settings.grouping_window;
    for (pool, nodes) in pools {
        if nodes.len() > settings.storm_threshold {
            let alert = pool_alert(pool, &nodes, settings);
            let due = alert.starts_at + window;
            alerts.hold(alert, due, now);
        } else {
            for (node, since) in nodes {
                alerts.hold(offline_alert(node, since, settings), since + window, now);
            }
        }
    }
}

/// The burst of offline nodes that makes the manager look cut off, if any: more than the
/// storm threshold, and more than half of the nodes online when the burst began.
fn mass_loss(offline: &[Offline], online: usize, settings: &RuleSettings) -> Option<Range<usize>> {
    let times: Vec<OffsetDateTime> = offline.iter().map(|(_, since)| *since).collect();
    let burst = largest_burst(&times, settings.grouping_window);
    // Online when the burst began: online now, plus every node offline since then.
    let before = online + offline.len() - burst.start;
    let lost = burst.len();
    (lost > settings.storm_threshold && lost * 2 > before).then_some(burst)
}

/// The widest run of sorted `times` that fits in `window`; the earliest among equals.
fn largest_burst(times: &[OffsetDateTime], window: Duration) -> Range<usize> {
    let mut best = 0..0;
    let mut end = 0;
    for start in 0..times.len() {
        while end < times.len() && times[end] - times[start] <= window {
            end += 1;
        }
        if end - start > best.len() {
            best = start..end;
        }
    }
    best
}

fn lost_most_alert(lost: &[Offline], before: usize, settings: &RuleSettings) -> Alert {
    let start = lost[0].1;
    let summary = format!(
        "the manager lost contact with {} of its {before} online nodes at once",
        lost.len()
    );
    let description = format!(
        "{} of the {before} nodes online at {} went offline within {}: {}. Check the manager's \
         own network first; no per-node or per-pool offline alert is sent for these nodes \
         while this alert fires.",
        lost.len(),
        rfc3339(start),
        humantime::format_duration(settings.grouping_window),
        list_names(lost),
    );
    Alert::new(MANAGER_LOST_MOST_AGENTS, &settings.fleet, "critical", start)
        .describe(summary, description)
}

fn pool_alert(pool: &str, nodes: &[Offline], settings: &RuleSettings) -> Alert {
    // It began when the offline count first went over the threshold.
    let start = nodes[settings.storm_threshold].1;
    let summary = format!("{} nodes of pool {pool} are offline", nodes.len());
    let description = format!(
        "{} nodes of pool {pool} are offline, the first since {}, more than the storm \
         threshold of {}: {}",
        nodes.len(),
        rfc3339(nodes[0].1),
        settings.storm_threshold,
        list_names(nodes),
    );
    Alert::new(POOL_NODES_OFFLINE, &settings.fleet, "critical", start)
        .label("pool", pool)
        .describe(summary, description)
}

fn offline_alert(node: &NodeView, since: OffsetDateTime, settings: &RuleSettings) -> Alert {
    let name = &node.record.name;
    let pool = &node.record.pool;
    let seen = node.last_seen.map_or_else(
        || "never seen".to_string(),
        |at| format!("last seen {}", rfc3339(at)),
    );
    let description = format!(
        "no contact with node {name} (pool {pool}), {seen} from {}; offline since {} after a \
         grace period of {}",
        node.remote_addr,
        rfc3339(since),
        humantime::format_duration(settings.offline_after),
    );
    Alert::new(NODE_OFFLINE, &settings.fleet, "critical", since)
        .label("node", name)
        .label("pool", pool)
        .describe(
            format!("node {name} of pool {pool} is offline"),
            description,
        )
}

/// One alert per condition that degrades an online node.
fn degraded_alerts(node: &NodeView, settings: &RuleSettings, now: OffsetDateTime) -> Vec<Alert> {
    let sup = &node.record.supervision;
    if sup.connectivity != Connectivity::Online || sup.health != Health::Degraded {
        return Vec::new();
    }
    let name = &node.record.name;
    let pool = &node.record.pool;
    // A condition that degrades only by flapping raises no alert of its own: its status alone
    // does not say it is a problem, and the flap state is not in the node view.
    let failing = sup.conditions.iter().filter(|c| c.degrades());
    failing
        .map(|condition| {
            let key = condition.key();
            let severity = severity_label(condition.severity);
            let since = condition
                .last_transition
                .or(sup.health_since)
                .unwrap_or(now);
            let description = format!(
                "{key} on node {name} (pool {pool}) has been a {severity} problem since {}: {}: {}",
                rfc3339(since),
                condition.reason,
                condition.message,
            );
            Alert::new(NODE_DEGRADED, &settings.fleet, severity, since)
                .label("node", name)
                .label("pool", pool)
                .label("condition", &key)
                .describe(
                    format!("{key} is failing on node {name} of pool {pool}"),
                    description,
                )
        })
        .collect()
}

/// A warning once the certificate is past the agents' renewal window, critical near its end.
fn certificate_alert(
    node: &NodeView,
    settings: &RuleSettings,
    now: OffsetDateTime,
) -> Option<Alert> {
    let not_after = node.record.cert_not_after;
    let warning = settings.node_cert_ttl / CERT_WARNING_SHARE;
    let critical = settings.node_cert_ttl / CERT_CRITICAL_SHARE;
    let left = not_after - now;
    let (severity, threshold) = if left < critical {
        ("critical", critical)
    } else if left < warning {
        ("warning", warning)
    } else {
        return None;
    };

    let name = &node.record.name;
    let pool = &node.record.pool;
    let (summary, state) = if left.is_negative() {
        (
            format!("certificate of node {name} of pool {pool} has expired"),
            "expired",
        )
    } else {
        let left = Duration::from_secs(left.whole_seconds().unsigned_abs());
        let left = humantime::format_duration(left);
        (
            format!("certificate of node {name} of pool {pool} expires in {left}"),
            "expires",
        )
    };
    let description = format!(
        "the certificate of node {name} (pool {pool}) {state} at {}; agents renew at 60-80 % of \
         its lifetime, so renewal is overdue: check `opi-agent status` and the agent's log on \
         the node, or re-enroll it once the certificate has expired",
        rfc3339(not_after),
    );
    Some(
        Alert::new(
            NODE_CERTIFICATE_EXPIRING,
            &settings.fleet,
            severity,
            not_after - threshold,
        )
        .label("node", name)
        .label("pool", pool)
        .describe(summary, description),
    )
}

/// Since when a node is offline: its last transition, else its last contact.
fn offline_since(node: &NodeView, now: OffsetDateTime) -> OffsetDateTime {
    node.record
        .supervision
        .connectivity_since
        .or(node.last_seen)
        .unwrap_or(now)
}

/// Node names in alphabetical order, at most [`NAMES_LISTED`], then how many more.
fn list_names(nodes: &[Offline]) -> String {
    let mut names: Vec<&str> = nodes.iter().map(|(n, _)| n.record.name.as_str()).collect();
    names.sort_unstable();
    let listed = names[..names.len().min(NAMES_LISTED)].join(", ");
    match names.len().saturating_sub(NAMES_LISTED) {
        0 => listed,
        more => format!("{listed} and {more} more"),
    }
}

#[cfg(test)]
mod tests;
