//! `opictl node revoke|remove|delete|maintenance|move|rotate|allow-reenroll`: changes to one
//! node. Each prints what it did: a sentence for people, the node (or a small object once it
//! is gone) in JSON.

use std::time::SystemTime;

use opi_proto::v1::Node;
use serde::Serialize;

use crate::cli::Switch;
use crate::client::Client;
use crate::nodes::NodeView;
use crate::output::{self, when, Format};
use crate::Error;

/// The JSON answer of `opictl node remove`.
#[derive(Debug, Serialize)]
pub struct RemovedView {
    /// The node that was forgotten.
    pub name: String,
    /// Always `true`; present so scripts can test one key.
    pub removed: bool,
}

/// The JSON answer of `opictl node delete`.
#[derive(Debug, Serialize)]
pub struct DeletedView {
    /// The node that was revoked and forgotten.
    pub name: String,
    /// Always `true`; present so scripts can test one key.
    pub deleted: bool,
    /// The reason given; `null` when none was.
    pub reason: Option<String>,
}

/// Revokes a node and prints it as revoked.
pub async fn revoke(
    client: &mut Client,
    format: Format,
    name: &str,
    reason: &str,
) -> Result<(), Error> {
    let node = client.revoke_node(name, reason).await?;
    super::print_node(format, node)
}

/// Forgets a node.
pub async fn remove(client: &mut Client, format: Format, name: String) -> Result<(), Error> {
    client.remove_node(&name).await?;
    let view = RemovedView {
        name,
        removed: true,
    };
    print(format, &view, || removed_message(&view.name))
}

/// Revokes a node and forgets it.
pub async fn delete(
    client: &mut Client,
    format: Format,
    name: String,
    reason: Option<String>,
) -> Result<(), Error> {
    client
        .delete_node(&name, reason.as_deref().unwrap_or(""))
        .await?;
    let view = DeletedView {
        name,
        deleted: true,
        reason,
    };
    print(format, &view, || deleted_message(&view))
}

/// Starts or ends a node's maintenance.
pub async fn maintenance(
    client: &mut Client,
    format: Format,
    switch: Switch,
    name: &str,
    reason: Option<String>,
) -> Result<(), Error> {
    let on = switch == Switch::On;
    let reason = reason.unwrap_or_default();
    let node = client.set_maintenance(name, on, &reason).await?;
    print_changed(format, node, maintenance_message)
}

/// The JSON answer of `opictl node rotate`.
#[derive(Debug, Serialize)]
pub struct RotatedView {
    /// Nodes asked over their session to renew now.
    pub asked: Vec<String>,
    /// Offline nodes, asked when they next connect.
    pub pending: Vec<String>,
}

/// Asks nodes to renew their certificate now.
pub async fn rotate(
    client: &mut Client,
    format: Format,
    message: opi_proto::v1::RotateNodesRequest,
) -> Result<(), Error> {
    let answer = client.rotate_nodes(message).await?;
    let view = RotatedView {
        asked: answer.asked,
        pending: answer.pending,
    };
    print(format, &view, || rotated_message(&view))
}

/// Lets a node re-enroll under its name, once, within `ttl`.
pub async fn allow_reenroll(
    client: &mut Client,
    format: Format,
    name: &str,
    ttl: std::time::Duration,
) -> Result<(), Error> {
    let node = client.allow_reenroll(name, ttl.as_secs().max(1)).await?;
    let until = humantime::format_duration(ttl);
    print_changed(format, node, |view, _| {
        format!(
            "node `{}` may re-enroll once within {until}: on the node, run `opi-agent enroll --reenroll --token-file FILE` with a new token for pool `{}`\n",
            view.name, view.pool
        )
    })
}

/// Moves a node to another pool.
pub async fn move_to(
    client: &mut Client,
    format: Format,
    name: &str,
    pool: &str,
) -> Result<(), Error> {
    let node = client.move_node(name, pool).await?;
    print_changed(format, node, |view, _| moved_message(view))
}

/// Prints a changed node: the sentence `message` makes of it, or the node in JSON.
fn print_changed(
    format: Format,
    node: Node,
    message: impl FnOnce(&NodeView, SystemTime) -> String,
) -> Result<(), Error> {
    let now = SystemTime::now();
    let view = NodeView::new(node, now);
    print(format, &view, || message(&view, now))
}

fn print<T: Serialize>(
    format: Format,
    view: &T,
    message: impl FnOnce() -> String,
) -> Result<(), Error> {
    match format {
        Format::Json => output::print_json(view),
        Format::Table => output::print(&message()),
    }
}

fn rotated_message(view: &RotatedView) -> String {
    let mut text = format!(
        "{} node(s) asked to renew their certificate now",
        view.asked.len()
    );
    if !view.pending.is_empty() {
        text.push_str(&format!(
            "; {} offline, asked when they reconnect: {}",
            view.pending.len(),
            view.pending.join(", ")
        ));
    }
    text.push('\n');
    text
}

fn removed_message(name: &str) -> String {
    format!("node `{name}` removed: its certificates no longer work and its name is free\n")
}

fn deleted_message(view: &DeletedView) -> String {
    let because = match view.reason.as_deref() {
        Some(reason) => format!(" ({})", output::sanitize(reason)),
        None => String::new(),
    };
    format!(
        "node `{}` deleted{because}: revoked and forgotten, its name is free; its audit entries \
         and events are kept\n",
        view.name
    )
}

/// What a maintenance change did, as the manager reports the node after it.
fn maintenance_message(view: &NodeView, now: SystemTime) -> String {
    let Some(maintenance) = &view.maintenance else {
        return format!("node `{}` is out of maintenance\n", view.name);
    };
    let since = match maintenance.since.as_deref() {
        Some(since) => format!(" since {}", when(Some(since), now)),
        None => String::new(),
    };
    format!(
        "node `{}` is in maintenance{since}: {}\n",
        view.name,
        output::sanitize(&maintenance.reason)
    )
}

fn moved_message(view: &NodeView) -> String {
    format!("node `{}` is now in pool `{}`\n", view.name, view.pool)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opi_proto::v1::Maintenance;
    use prost_types::Timestamp;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn node(maintenance: Option<Maintenance>) -> NodeView {
        let node = Node {
            name: "web-1".into(),
            pool: "db".into(),
            maintenance,
            ..Node::default()
        };
        NodeView::new(node, at(1_000))
    }

    #[test]
    fn maintenance_on_says_since_when_and_why() {
        let on = Maintenance {
            on: true,
            by: "spiffe://prod/operator/alice".into(),
            reason: "kernel upgrade".into(),
            since: Some(Timestamp {
                seconds: 995,
                nanos: 0,
            }),
        };

        assert_eq!(
            maintenance_message(&node(Some(on)), at(1_000)),
            "node `web-1` is in maintenance since 1970-01-01T00:16:35Z (5s ago): kernel upgrade\n"
        );
    }

    #[test]
    fn maintenance_off_says_the_node_is_out() {
        assert_eq!(
            maintenance_message(&node(None), at(1_000)),
            "node `web-1` is out of maintenance\n"
        );
    }

    #[test]
    fn move_names_the_new_pool() {
        assert_eq!(
            moved_message(&node(None)),
            "node `web-1` is now in pool `db`\n"
        );
    }

    #[test]
    fn delete_says_what_it_did_and_what_is_kept() {
        let view = DeletedView {
            name: "web-1".into(),
            deleted: true,
            reason: Some("disk died".into()),
        };

        let text = deleted_message(&view);
        assert!(text.starts_with("node `web-1` deleted (disk died): revoked and forgotten"));
        assert!(
            text.ends_with("its audit entries and events are kept\n"),
            "{text}"
        );
    }

    #[test]
    fn delete_json_has_name_deleted_and_reason_or_null() {
        let without = DeletedView {
            name: "web-1".into(),
            deleted: true,
            reason: None,
        };

        let json = serde_json::to_value(&without).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "web-1", "deleted": true, "reason": null})
        );
    }

    #[test]
    fn remove_json_keeps_its_shape() {
        let view = RemovedView {
            name: "web-1".into(),
            removed: true,
        };

        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json, serde_json::json!({"name": "web-1", "removed": true}));
    }
}
