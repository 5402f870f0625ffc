//! `opictl nodes`: the node list and its filters; [`view`] holds the node view that
//! `opictl node` shares.

pub mod view;

use std::time::SystemTime;

use opi_proto::v1::ListNodesRequest;

pub use view::{connectivity_name, state_name, NodeView, SummaryView};

use crate::cli::NodesArgs;
use crate::filter::wire_name;
use crate::health::problems;
use crate::output::{self, relative_rfc3339, Format, Table};
use crate::{Context, Error};

/// What the HEALTH column adds for a node in maintenance.
const MAINTENANCE_MARK: &str = " (maint)";

/// Runs `opictl nodes`.
pub async fn run(context: &Context, args: NodesArgs) -> Result<(), Error> {
    let filter = list_request(args);
    let nodes = context.connect().await?.list_nodes(filter.clone()).await?;
    let now = SystemTime::now();
    let views: Vec<NodeView> = nodes.into_iter().map(|n| NodeView::new(n, now)).collect();

    match context.format {
        Format::Json => output::print_json(&views),
        Format::Table if views.is_empty() => output::print(&empty_message(&filter)),
        Format::Table => output::print(&table(&views, now).render()),
    }
}

/// The request `opictl nodes` sends: its filters, as the manager names them.
pub fn list_request(args: NodesArgs) -> ListNodesRequest {
    ListNodesRequest {
        pool: args.pool.unwrap_or_default(),
        health: args.health.as_ref().map(wire_name).unwrap_or_default(),
        connectivity: args
            .connectivity
            .as_ref()
            .map(wire_name)
            .unwrap_or_default(),
        condition: args.condition.unwrap_or_default(),
        config: args
            .config_state
            .as_ref()
            .map(wire_name)
            .unwrap_or_default(),
    }
}

/// The node list as a table, last-seen times relative to `now`.
pub fn table(views: &[NodeView], now: SystemTime) -> Table {
    let headers = [
        "NAME",
        "POOL",
        "CONNECTIVITY",
        "HEALTH",
        "PROBLEMS",
        "CONFIG",
        "STATE",
        "LAST-SEEN",
        "AGENT",
        "OS",
        "KERNEL",
    ];
    let mut table = Table::new(&headers);
    for view in views {
        table.row(vec![
            view.name.clone(),
            view.pool.clone(),
            view.connectivity.into(),
            health_cell(view),
            problems(&view.conditions),
            config_cell(view),
            view.state.into(),
            last_seen(view, now),
            view.agent_version.clone(),
            view.os.clone(),
            view.kernel.clone(),
        ]);
    }
    table
}

/// The last-seen time relative to `now`, or `never`.
pub fn last_seen(view: &NodeView, now: SystemTime) -> String {
    relative_rfc3339(view.last_seen.as_deref(), now).unwrap_or_else(|| "never".into())
}

/// The node's health, marked when it is in maintenance.
fn health_cell(view: &NodeView) -> String {
    match view.maintenance {
        Some(_) => format!("{}{MAINTENANCE_MARK}", view.health),
        None => view.health.to_string(),
    }
}

/// The config axis with the generation it is about: `in-sync@7`, `failed@8`, `none`.
fn config_cell(view: &NodeView) -> String {
    match view.config.desired_generation {
        0 => view.config.state.clone(),
        generation => format!("{}@{generation}", view.config.state),
    }
}

fn empty_message(filter: &ListNodesRequest) -> String {
    let filtered = !(filter.health.is_empty()
        && filter.connectivity.is_empty()
        && filter.condition.is_empty()
        && filter.config.is_empty());
    match filter.pool.as_str() {
        _ if filtered => "no nodes match these filters\n".into(),
        "" => "no nodes yet: `opictl token create --pool POOL` prints the line that enrolls one\n"
            .into(),
        pool => format!("no nodes in pool `{pool}`; `opictl status` lists the pools\n"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use opi_proto::v1::{Connectivity, Maintenance};

    use super::view::fixtures::*;
    use super::*;
    use crate::cli::{Cli, Command};

    fn nodes_args(line: &[&str]) -> NodesArgs {
        let cli = Cli::try_parse_from(line).unwrap();
        let Command::Nodes(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        args
    }

    #[test]
    fn node_table_shows_last_seen_relative_to_now() {
        let view = view(node(Connectivity::Online, Some(1_000)));
        let now = at(1_004);

        let text = table(&[view], now).render();
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("web-1"), "{text}");
        assert!(row.contains("online"), "{text}");
        assert!(row.contains("4s ago"), "{text}");
        assert!(row.contains("6.1.0-18-amd64"), "{text}");
    }

    #[test]
    fn node_table_shows_health_marks_maintenance_and_names_problems() {
        let mut node = degraded_node();
        node.maintenance = Some(Maintenance {
            on: true,
            ..Maintenance::default()
        });

        let text = table(&[view(node)], at(1_700_000_240)).render();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert!(
            header.starts_with("NAME    POOL      CONNECTIVITY   HEALTH             PROBLEMS"),
            "{text}"
        );
        let row = lines.next().unwrap();
        assert!(
            row.contains(
                "   online         degraded (maint)   DiskPressure,ClockUnsynchronised +1   "
            ),
            "{text}"
        );
    }

    #[test]
    fn node_table_shows_no_problem_as_a_dash() {
        let text = table(&[view(node(Connectivity::Online, None))], at(0)).render();

        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains("   unknown   -          -        active   "),
            "{text}"
        );
    }

    #[test]
    fn filters_reach_the_request_as_the_manager_names_them() {
        let args = nodes_args(&[
            "opictl",
            "nodes",
            "--pool",
            "db",
            "--health",
            "degraded",
            "--connectivity",
            "online",
            "--condition",
            "DiskPressure",
        ]);

        let request = list_request(args);
        assert_eq!(request.pool, "db");
        assert_eq!(request.health, "degraded");
        assert_eq!(request.connectivity, "online");
        assert_eq!(request.condition, "DiskPressure");
        assert_eq!(
            list_request(nodes_args(&["opictl", "nodes"])),
            ListNodesRequest::default()
        );
    }

    #[test]
    fn invalid_filters_are_usage_errors_naming_the_valid_values() {
        let cases = [
            (
                ["opictl", "nodes", "--health", "sick"],
                "healthy, degraded, unknown",
            ),
            (
                ["opictl", "nodes", "--connectivity", "up"],
                "online, offline",
            ),
            (
                ["opictl", "nodes", "--condition", "disk pressure"],
                "CamelCase",
            ),
        ];
        for (line, expected) in cases {
            let error = Cli::try_parse_from(line).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{line:?}");
            assert!(error.to_string().contains(expected), "{line:?}: {error}");
        }
    }

    #[test]
    fn empty_list_says_whether_filters_or_the_pool_left_nothing() {
        let filtered = ListNodesRequest {
            health: "degraded".into(),
            ..ListNodesRequest::default()
        };
        let pool = ListNodesRequest {
            pool: "db".into(),
            ..ListNodesRequest::default()
        };

        assert_eq!(empty_message(&filtered), "no nodes match these filters\n");
        assert!(empty_message(&pool).starts_with("no nodes in pool `db`"));
    }
}
