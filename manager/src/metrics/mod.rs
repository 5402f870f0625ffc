//! The manager's Prometheus metrics, served by `serve --metrics-listen` in text format 0.0.4.
//!
//! The fleet counts enrollments, heartbeats and sessions in [`FleetCounters`]; the store is
//! measured by [`crate::store::MeasuredStore`]; the alert reconciler counts its deliveries in
//! [`crate::alerts::AlertMetrics`]. The page reads all of them, and the fleet's nodes, at
//! each scrape: nothing is computed between scrapes.

pub mod counters;
pub mod histogram;
mod render;
mod server;
pub mod text;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use counters::{FleetCounters, OpenSession, RefusalReason};
pub use server::{MetricsError, MetricsServer, METRICS_PATH};

use crate::alerts::AlertMetrics;
use crate::fleet::Fleet;
use crate::store::StoreMetrics;

/// Name of the run file that holds the metrics listener's bound address.
pub const ADDR_FILE: &str = "metrics-addr";

/// What the metrics page reads besides the fleet.
#[derive(Clone, Debug)]
pub struct Registry {
    pub store: Arc<StoreMetrics>,
    pub alerts: Arc<AlertMetrics>,
    /// When `serve` started.
    pub started_at: SystemTime,
}

/// Renders the metrics page of a fleet.
pub struct Exporter {
    fleet: Arc<Fleet>,
    registry: Registry,
    per_node: bool,
}

impl Registry {
    /// Empty metrics, started now.
    pub fn new() -> Self {
        Self {
            store: Arc::default(),
            alerts: Arc::default(),
            started_at: SystemTime::now(),
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Exporter {
    /// An exporter of `fleet`'s metrics; `per_node` adds one set of series per node.
    pub fn new(fleet: Arc<Fleet>, registry: Registry, per_node: bool) -> Self {
        Self {
            fleet,
            registry,
            per_node,
        }
    }

    /// The metrics page as of now.
    pub fn render(&self) -> String {
        let mut page = text::Page::new();
        // Only the per-node series need a copy of every node; the counts are taken in place,
        // so that a scrape of a large fleet stays cheap.
        if self.per_node {
            let nodes = self.fleet.nodes(None);
            let pools = render::count_pools(nodes.iter().map(|n| &n.record));
            render::write_nodes(&mut page, &pools);
            render::write_per_node(&mut page, &nodes);
        } else {
            let pools = self
                .fleet
                .with_records(|records| render::count_pools(records));
            render::write_nodes(&mut page, &pools);
        }
        let revision = self.fleet.events().last_revision();
        render::write_fleet(&mut page, self.fleet.counters(), revision);
        render::write_store(&mut page, &self.registry.store);
        render::write_alerts(&mut page, &self.registry.alerts);
        render::write_manager(&mut page, self.fleet.fleet_name(), &self.registry);
        if let Some(replica) = self.fleet.replica() {
            render::write_leader(&mut page, replica.name(), replica.is_leader());
        }
        let expiries = self
            .fleet
            .manager_certs()
            .expiries(time::OffsetDateTime::now_utc());
        render::write_certificates(&mut page, &expiries);
        page.finish()
    }
}

/// The run file holding the metrics address, beside `listen_file` (`run/listen-addr`).
pub fn addr_file(listen_file: &Path) -> PathBuf {
    listen_file.with_file_name(ADDR_FILE)
}
