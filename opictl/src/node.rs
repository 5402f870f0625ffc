//! `opictl node show|revoke|remove|delete|maintenance|move|rotate|allow-reenroll NAME`: one
//! node, in full, and the changes an operator makes to it.

pub mod lifecycle;

use std::time::SystemTime;

use opi_proto::v1::Node;
use serde::Serialize;

use crate::cli::NodeCommand;
use crate::event::{self, EventView};
use crate::health::condition_lines;
use crate::nodes::{NodeView, SummaryView};
use crate::output::{self, bytes, fields, relative_rfc3339, short_duration, when, Format};
use crate::{Context, Error};

/// Events `opictl node show` lists, the latest ones.
pub const SHOWN_EVENTS: u32 = 10;

/// The JSON answer of `opictl node show`: the node, and its latest events.
#[derive(Debug, Serialize)]
pub struct NodeDetailView {
    /// Every key of the node, at the top level.
    #[serde(flatten)]
    pub node: NodeView,
    /// The node's latest events, oldest first.
    pub events: Vec<EventView>,
}

/// Runs `opictl node …`.
pub async fn run(context: &Context, command: NodeCommand) -> Result<(), Error> {
    let mut client = context.connect().await?;
    let format = context.format;

    match command {
        NodeCommand::Show { name } => {
            let node = client.get_node(&name).await?;
            let events = client.list_events(&name, SHOWN_EVENTS).await?;
            print_detail(format, node, events)
        }
        NodeCommand::Revoke { name, reason } => {
            let reason = reason.unwrap_or_default();
            lifecycle::revoke(&mut client, format, &name, &reason).await
        }
        NodeCommand::Remove { name } => lifecycle::remove(&mut client, format, name).await,
        NodeCommand::Delete { name, reason } => {
            lifecycle::delete(&mut client, format, name, reason).await
        }
        NodeCommand::Maintenance {
            switch,
            name,
            reason,
        } => lifecycle::maintenance(&mut client, format, switch, &name, reason).await,
        NodeCommand::Rotate {
            names,
            pool,
            all,
            reason,
        } => {
            let message = opi_proto::v1::RotateNodesRequest {
                names,
                pool: pool.unwrap_or_default(),
                all,
                reason: reason.unwrap_or_default(),
            };
            lifecycle::rotate(&mut client, format, message).await
        }
        NodeCommand::AllowReenroll { name, ttl } => {
            lifecycle::allow_reenroll(&mut client, format, &name, ttl).await
        }
        NodeCommand::Move { name, pool } => {
            lifecycle::move_to(&mut client, format, &name, &pool).await
        }
    }
}

/// Prints a node as a field list, or as JSON.
fn print_node(format: Format, node: Node) -> Result<(), Error> {
    let now = SystemTime::now();
    let view = NodeView::new(node, now);
    match format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&render(&view, now)),
    }
}

fn print_detail(
    format: Format,
    node: Node,
    events: Vec<opi_proto::v1::Event>,
) -> Result<(), Error> {
    let now = SystemTime::now();
    let view = NodeDetailView {
        node: NodeView::new(node, now),
        events: events.into_iter().map(EventView::from).collect(),
    };
    match format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&render_detail(&view, now)),
    }
}

/// The node's fields, then its conditions, then its latest events.
fn render_detail(view: &NodeDetailView, now: SystemTime) -> String {
    let mut text = render(&view.node, now);
    text.push('\n');
    text.push_str(&conditions(&view.node, now));
    text.push('\n');
    if view.events.is_empty() {
        text.push_str("no events yet\n");
    } else {
        text.push_str(&format!("last {} events:\n", view.events.len()));
        text.push_str(&event::table(&view.events).render());
    }
    text
}

/// The node as a field list, times shown absolute and relative to `now`.
fn render(view: &NodeView, now: SystemTime) -> String {
    let labels: Vec<String> = view
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let connectivity = since_when(view.connectivity, view.connectivity_since.as_deref(), now);

    let mut pairs = vec![
        ("name", view.name.clone()),
        ("pool", view.pool.clone()),
        ("labels", labels.join(",")),
        ("connectivity", connectivity),
        (
            "health",
            since_when(view.health, view.health_since.as_deref(), now),
        ),
        ("maintenance", maintenance(view, now)),
        ("config", config(view, now)),
        ("state", view.state.into()),
        (
            "revoked reason",
            view.revoked_reason.clone().unwrap_or_default(),
        ),
        ("last seen", last_seen(view, now)),
        ("enrolled", when(view.enrolled_at.as_deref(), now)),
        (
            "certificate until",
            when(view.cert_not_after.as_deref(), now),
        ),
        ("agent", view.agent_version.clone()),
        ("os", view.os.clone()),
        ("kernel", view.kernel.clone()),
        ("arch", view.arch.clone()),
        ("hostname", view.hostname.clone()),
        ("machine id", view.machine_id.clone()),
        ("boot id", view.boot_id.clone()),
        ("remote address", view.remote_addr.clone()),
        ("token", view.token_id.clone()),
    ];
    pairs.extend(summary_fields(view.summary.as_ref()));
    fields(&pairs)
}

/// A state and since when the node has had it: `offline since 2024-05-01T10:00:00Z (12m ago)`.
fn since_when(state: &str, since: Option<&str>, now: SystemTime) -> String {
    match since {
        Some(_) => format!("{state} since {}", when(since, now)),
        None => state.to_string(),
    }
}

/// The config axis: state and since when, generations, and what the node said.
fn config(view: &NodeView, now: SystemTime) -> String {
    let config = &view.config;
    let state = if config.state.is_empty() {
        "none"
    } else {
        &config.state
    };
    let mut text = since_when(state, config.since.as_deref(), now);
    if config.desired_generation > 0 {
        text.push_str(&format!(
            ", wants generation {}, applied {}",
            config.desired_generation, config.applied_generation
        ));
    }
    if !config.reason.is_empty() {
        text.push_str(&format!(": {}", config.reason));
    }
    if !config.drifted.is_empty() {
        text.push_str(&format!("; drifted: {}", config.drifted.join(", ")));
    }
    if config.reboot_required {
        text.push_str("; reboot required");
    }
    text
}

/// `off`, or since when, by whom and why the node is in maintenance.
fn maintenance(view: &NodeView, now: SystemTime) -> String {
    let Some(maintenance) = &view.maintenance else {
        return "off".into();
    };
    let mut text = since_when("on", maintenance.since.as_deref(), now);
    if !maintenance.by.is_empty() {
        text.push_str(&format!(" by {}", maintenance.by));
    }
    if !maintenance.reason.is_empty() {
        text.push_str(&format!(": {}", maintenance.reason));
    }
    text
}

/// The node's conditions, problems first, under a heading saying how old the report is and,
/// when the node is offline or its report stale, that they are only the last known ones.
fn conditions(view: &NodeView, now: SystemTime) -> String {
    let reported = relative_rfc3339(view.conditions_observed_at.as_deref(), now);
    if view.conditions.is_empty() && reported.is_none() {
        return "no conditions reported yet\n".into();
    }

    let stale = view.connectivity != "online" || view.health == "unknown";
    let mut heading = match stale {
        true => "last known conditions".to_string(),
        false => "conditions".to_string(),
    };
    if let Some(ago) = reported {
        heading.push_str(&format!(", reported {ago}"));
    }
    if view.conditions.is_empty() {
        return format!("{heading}: none\n");
    }

    let mut text = format!("{heading}:\n");
    for line in condition_lines(&view.conditions).lines() {
        text.push_str(&format!("  {line}\n"));
    }
    text
}

/// When the node was last heard from, or `never`.
fn last_seen(view: &NodeView, now: SystemTime) -> String {
    match view.last_seen.as_deref() {
        Some(time) => when(Some(time), now),
        None => "never".into(),
    }
}

/// Resource lines, or one line saying none was reported yet.
fn summary_fields(summary: Option<&SummaryView>) -> Vec<(&'static str, String)> {
    let Some(summary) = summary else {
        return vec![("resources", "not reported yet".into())];
    };
    let of = |used, total| format!("{} of {}", bytes(used), bytes(total));
    vec![
        ("cpu", format!("{:.1}%", summary.cpu_percent)),
        (
            "memory",
            of(summary.memory_used_bytes, summary.memory_total_bytes),
        ),
        (
            "disk",
            of(summary.disk_used_bytes, summary.disk_total_bytes),
        ),
        (
            "load",
            format!(
                "{:.2} {:.2} {:.2}",
                summary.load1, summary.load5, summary.load15
            ),
        ),
        (
            "uptime",
            short_duration(std::time::Duration::from_secs(summary.uptime_secs)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opi_proto::v1::{
        Condition, ConditionStatus, Connectivity, Event, Health, HealthSummary, Maintenance,
        NodeState, Severity,
    };
    use prost_types::Timestamp;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    /// A node with a critical disk problem for 4 minutes, its report 10 s old at 1_240.
    fn disk_node(connectivity: Connectivity, health: Health) -> Node {
        Node {
            name: "web-1".into(),
            pool: "workers".into(),
            connectivity: connectivity as i32,
            connectivity_since: ts(1_000),
            health: health as i32,
            health_since: ts(1_000),
            conditions_observed_at: ts(1_230),
            conditions: vec![
                Condition {
                    r#type: "KubeletHealthy".into(),
                    status: ConditionStatus::Ok as i32,
                    message: "kubelet answers /healthz".into(),
                    last_transition: ts(40),
                    ..Condition::default()
                },
                Condition {
                    r#type: "DiskPressure".into(),
                    subject: "/var".into(),
                    status: ConditionStatus::Problem as i32,
                    severity: Severity::Critical as i32,
                    reason: "DiskAlmostFull".into(),
                    message: "disk 96% used (threshold 95%)".into(),
                    last_transition: ts(1_000),
                    last_observed: ts(1_230),
                },
            ],
            ..Node::default()
        }
    }

    fn detail(node: Node, events: Vec<Event>, now: SystemTime) -> NodeDetailView {
        NodeDetailView {
            node: NodeView::new(node, now),
            events: events.into_iter().map(EventView::from).collect(),
        }
    }

    fn health_event() -> Event {
        Event {
            revision: 17,
            time: ts(1_000),
            node: "web-1".into(),
            pool: "workers".into(),
            kind: "health".into(),
            from: "healthy".into(),
            to: "degraded".into(),
            reason: "DiskPressure".into(),
            severity: Severity::Critical as i32,
            ..Event::default()
        }
    }

    fn revoked_node() -> Node {
        Node {
            name: "web-1".into(),
            pool: "workers".into(),
            state: NodeState::Revoked as i32,
            revoked_reason: "disk stolen".into(),
            last_seen: Some(Timestamp {
                seconds: 1_000,
                nanos: 0,
            }),
            summary: Some(HealthSummary {
                memory_used_bytes: 1024 * 1024 * 1024,
                memory_total_bytes: 4 * 1024 * 1024 * 1024,
                ..HealthSummary::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn node_show_lists_state_reason_and_last_seen() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_060);
        let text = render(&NodeView::new(revoked_node(), now), now);

        assert!(text.contains("state               revoked\n"), "{text}");
        assert!(text.contains("revoked reason      disk stolen\n"), "{text}");
        assert!(
            text.contains("last seen           1970-01-01T00:16:40Z (1m ago)\n"),
            "{text}"
        );
        assert!(
            text.contains("memory              1.0 GiB of 4.0 GiB\n"),
            "{text}"
        );
    }

    #[test]
    fn node_show_says_when_no_resources_were_reported() {
        let mut node = revoked_node();
        node.summary = None;

        let text = render(
            &NodeView::new(node, SystemTime::UNIX_EPOCH),
            SystemTime::UNIX_EPOCH,
        );
        assert!(
            text.contains("resources           not reported yet\n"),
            "{text}"
        );
    }

    #[test]
    fn node_show_gives_health_and_connectivity_with_since() {
        let node = disk_node(Connectivity::Online, Health::Degraded);
        let text = render(&NodeView::new(node, at(1_240)), at(1_240));

        assert!(
            text.contains("connectivity        online since 1970-01-01T00:16:40Z (4m ago)\n"),
            "{text}"
        );
        assert!(
            text.contains("health              degraded since 1970-01-01T00:16:40Z (4m ago)\n"),
            "{text}"
        );
        assert!(text.contains("maintenance         off\n"), "{text}");
    }

    #[test]
    fn node_show_lists_every_condition_with_its_age_problems_first() {
        let node = disk_node(Connectivity::Online, Health::Degraded);
        let text = render_detail(&detail(node, vec![], at(1_240)), at(1_240));

        let expected = "\nconditions, reported 10s ago:\n  \
                        DiskPressure     /var   problem   critical   since 4m    \
                        disk 96% used (threshold 95%)\n  \
                        KubeletHealthy   -      ok        -          since 20m   \
                        kubelet answers /healthz\n";
        assert!(text.contains(expected), "{text}");
    }

    #[test]
    fn node_show_of_an_offline_node_says_conditions_are_the_last_known() {
        let node = disk_node(Connectivity::Offline, Health::Unknown);
        let now = at(1_230 + 12 * 60);
        let text = render_detail(&detail(node, vec![], now), now);

        assert!(
            text.contains("\nlast known conditions, reported 12m ago:\n"),
            "{text}"
        );
    }

    #[test]
    fn node_show_of_an_online_node_with_a_stale_report_says_so_too() {
        let node = disk_node(Connectivity::Online, Health::Unknown);
        let text = render_detail(&detail(node, vec![], at(1_240)), at(1_240));

        assert!(
            text.contains("\nlast known conditions, reported 10s ago:\n"),
            "{text}"
        );
    }

    #[test]
    fn node_show_says_when_no_condition_or_event_was_reported() {
        let text = render_detail(&detail(revoked_node(), vec![], at(1_060)), at(1_060));

        assert!(text.contains("\nno conditions reported yet\n"), "{text}");
        assert!(text.ends_with("\nno events yet\n"), "{text}");
    }

    #[test]
    fn node_show_ends_with_the_latest_events() {
        let node = disk_node(Connectivity::Online, Health::Degraded);
        let text = render_detail(&detail(node, vec![health_event()], at(1_240)), at(1_240));

        let tail = text
            .split("\nlast 1 events:\n")
            .nth(1)
            .expect("an event section");
        assert!(
            tail.starts_with("REV   TIME                   KIND     SUBJECT"),
            "{text}"
        );
        assert!(tail.contains("healthy -> degraded"), "{text}");
    }

    #[test]
    fn node_show_shows_maintenance_since_by_and_why() {
        let mut node = disk_node(Connectivity::Online, Health::Degraded);
        node.maintenance = Some(Maintenance {
            on: true,
            by: "spiffe://prod/operator/alice".into(),
            reason: "kernel upgrade".into(),
            since: ts(1_180),
        });

        let text = render(&NodeView::new(node, at(1_240)), at(1_240));
        assert!(
            text.contains(
                "maintenance         on since 1970-01-01T00:19:40Z (1m ago) by \
                 spiffe://prod/operator/alice: kernel upgrade\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn node_show_json_is_the_node_plus_its_events() {
        let node = disk_node(Connectivity::Online, Health::Degraded);
        let json = serde_json::to_value(detail(node, vec![health_event()], at(1_240))).unwrap();

        assert_eq!(json["name"], "web-1");
        assert_eq!(json["health"], "degraded");
        assert_eq!(json["conditions"][1]["age_seconds"], 240);
        assert!(json["maintenance"].is_null());
        assert_eq!(json["events"][0]["revision"], 17);
        assert_eq!(json["events"][0]["to"], "degraded");
    }
}
