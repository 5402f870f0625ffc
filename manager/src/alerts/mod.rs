//! Alerts pushed to Alertmanager (API v2), level-based: a reconciler computes the alerts that
//! should fire from the fleet's state (see [`nodes`], [`rollouts`] and [`manager`] for the
//! rules), and one worker per Alertmanager pushes that whole set whenever it changes and every
//! resend interval, with `endsAt` three resend intervals ahead, and resolves the alerts that
//! cleared.
//!
//! Nothing is lost when an Alertmanager is down: the next successful push carries the current
//! truth. Alerts that cleared while the manager itself was down are not resolved explicitly;
//! Alertmanager resolves them when their `endsAt` passes. HTTPS Alertmanager endpoints are not
//! supported yet.

mod deliver;
mod manager;
mod model;
mod nodes;
mod reconcile;
mod rollouts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, info_span, Instrument};

pub use deliver::{AlertmanagerUrl, DeliveryError, FIRST_RETRY, MAX_RETRY, POST_TIMEOUT};
pub use manager::STORE_ERRORS_HOLD;
pub use model::{
    Alert, Labels, MANAGER_CERTIFICATE_EXPIRING, MANAGER_HEARTBEAT, MANAGER_LOST_MOST_AGENTS,
    MANAGER_STORE_ERRORS, NODE_CERTIFICATE_EXPIRING, NODE_DEGRADED, NODE_OFFLINE,
    POOL_NODES_OFFLINE, ROLLOUT_HALTED,
};
pub use nodes::{RuleSettings, NAMES_LISTED};
pub use reconcile::EVALUATE_EVERY;

use crate::fleet::Fleet;
use crate::store::StoreMetrics;

/// Default interval between two pushes of unchanged alerts.
pub const DEFAULT_RESEND: Duration = Duration::from_secs(60);
/// Default number of offline nodes of one pool above which they are summarised.
pub const DEFAULT_STORM_THRESHOLD: usize = 5;

/// Why alerting could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The URL does not parse.
    #[error("`{url}` is not a valid Alertmanager URL; use http://HOST:PORT")]
    ParseUrl {
        url: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// The URL is HTTPS.
    #[error("`{url}`: HTTPS Alertmanager endpoints are not supported yet; use http://HOST:PORT")]
    UnsupportedScheme { url: String },
    /// The URL is not an HTTP URL with a host.
    #[error("`{url}` is not an http://HOST:PORT URL")]
    NotHttp { url: String },
}

/// Where `--runbooks` points by default: the copy the opi-manager package installs.
pub const DEFAULT_RUNBOOKS: &str = "/usr/share/doc/opi-manager/runbooks.md";

/// How alerting runs.
#[derive(Clone, Debug)]
pub struct AlertSettings {
    pub alertmanagers: Vec<AlertmanagerUrl>,
    /// Interval between two pushes of unchanged alerts.
    pub resend: Duration,
    pub rules: RuleSettings,
}

/// Counts of pushes and of firing alerts, for the metrics page.
#[derive(Debug, Default)]
pub struct AlertMetrics {
    delivered: AtomicU64,
    failed: AtomicU64,
    active: AtomicU64,
}

/// The alerts that should fire, as of `at`.
#[derive(Debug)]
pub struct Snapshot {
    pub at: OffsetDateTime,
    pub firing: Vec<Alert>,
}

/// Running alerting: the reconciler and one delivery worker per Alertmanager.
pub struct Alerting {
    tasks: Vec<JoinHandle<()>>,
}

impl AlertMetrics {
    /// Pushes that succeeded, and pushes that failed.
    pub fn deliveries(&self) -> (u64, u64) {
        let delivered = self.delivered.load(Ordering::Relaxed);
        (delivered, self.failed.load(Ordering::Relaxed))
    }

    /// Alerts firing now, not counting the heartbeat.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    fn count_delivery(&self, ok: bool) {
        let counter = if ok { &self.delivered } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn set_active(&self, firing: usize) {
        self.active.store(firing as u64, Ordering::Relaxed);
    }
}

impl Alerting {
    /// Starts the reconciler over `fleet` and a worker per Alertmanager of `settings`.
    pub fn start(
        fleet: Arc<Fleet>,
        settings: AlertSettings,
        store: Arc<StoreMetrics>,
        metrics: Arc<AlertMetrics>,
        started_at: OffsetDateTime,
    ) -> Self {
        let empty = Snapshot {
            at: started_at,
            firing: Vec::new(),
        };
        let (desired, _) = watch::channel(Arc::new(empty));
        let mut tasks = Vec::new();
        for url in &settings.alertmanagers {
            let leader = fleet.clone();
            let worker = deliver::Worker::new(url.clone(), settings.resend, metrics.clone())
                .gated(Arc::new(move || leader.leads()));
            let span = info_span!("alertmanager", url = %url);
            tasks.push(tokio::spawn(
                worker.run(desired.subscribe()).instrument(span),
            ));
        }
        let span = info_span!("alerts", fleet = %settings.rules.fleet);
        let reconciler = reconcile::Reconciler {
            fleet,
            rules: settings.rules.clone(),
            store,
            metrics,
            started_at,
            desired,
            store_errors: Default::default(),
        };
        tasks.push(tokio::spawn(reconciler.run().instrument(span)));
        let urls: Vec<String> = settings
            .alertmanagers
            .iter()
            .map(|u| u.to_string())
            .collect();
        info!(alertmanagers = ?urls, resend = ?settings.resend, "pushing alerts");
        Self { tasks }
    }

    /// Stops pushing. Nothing is resolved: Alertmanager resolves the alerts, the heartbeat
    /// included, when their `endsAt` passes.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
