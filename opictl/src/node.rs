//! `opictl node show|revoke|remove NAME`: one node, in full.

use std::time::SystemTime;

use serde::Serialize;

use crate::cli::NodeCommand;
use crate::nodes::{NodeView, SummaryView};
use crate::output::{self, bytes, fields, short_duration, when, Format};
use crate::{Context, Error};

/// The JSON answer of `opictl node remove`.
#[derive(Debug, Serialize)]
pub struct RemovedView {
    /// The node that was forgotten.
    pub name: String,
    /// Always `true`; present so scripts can test one key.
    pub removed: bool,
}

/// Runs `opictl node …`.
pub async fn run(context: &Context, command: NodeCommand) -> Result<(), Error> {
    let mut client = context.connect().await?;

    match command {
        NodeCommand::Show { name } => print_node(context.format, client.get_node(&name).await?),
        NodeCommand::Revoke { name, reason } => {
            let node = client
                .revoke_node(&name, reason.as_deref().unwrap_or(""))
                .await?;
            print_node(context.format, node)
        }
        NodeCommand::Remove { name } => {
            client.remove_node(&name).await?;
            print_removed(context.format, name)
        }
    }
}

fn print_node(format: Format, node: opi_proto::v1::Node) -> Result<(), Error> {
    let view = NodeView::from(node);
    match format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&render(&view, SystemTime::now())),
    }
}

fn print_removed(format: Format, name: String) -> Result<(), Error> {
    match format {
        Format::Json => output::print_json(&RemovedView {
            name,
            removed: true,
        }),
        Format::Table => output::print(&format!(
            "node `{name}` removed: its certificates no longer work and its name is free\n"
        )),
    }
}

/// The node as a field list, times shown absolute and relative to `now`.
fn render(view: &NodeView, now: SystemTime) -> String {
    let labels: Vec<String> = view
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();

    let mut pairs = vec![
        ("name", view.name.clone()),
        ("pool", view.pool.clone()),
        ("labels", labels.join(",")),
        ("connectivity", view.connectivity.into()),
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

    use opi_proto::v1::{HealthSummary, Node, NodeState};
    use prost_types::Timestamp;

    use super::*;

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
        let text = render(&NodeView::from(revoked_node()), now);

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

        let text = render(&NodeView::from(node), SystemTime::UNIX_EPOCH);
        assert!(
            text.contains("resources           not reported yet\n"),
            "{text}"
        );
    }
}
