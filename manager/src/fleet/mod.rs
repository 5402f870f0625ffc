//! The fleet as the manager holds it: node records from the store, plus live sessions and
//! heartbeats in memory. Every change goes to the store first (compare-and-swap, with its
//! audit entry in the same transaction), then to memory.

pub mod config_axis;
mod conflicts;
mod enroll;
mod error;
mod follow;
pub mod going_away;
mod identity;
mod lanes;
mod limiter;
pub mod login;
mod nodes;
pub mod profiles;
mod reenroll;
pub mod rollouts;
mod sessions;
mod shutdowns;
pub mod supervise;
mod tick;
mod tokens;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use opi_proto::v1::{HealthSummary, ManagerMessage};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tonic::Status;

use crate::datadir::Authority;
use crate::events::{EventLog, FlapDetector};
use crate::metrics::FleetCounters;
use crate::records::{Connectivity, NodeRecord, NODES};
use crate::store::{list_json, Revision, Store};

pub use enroll::{EnrollInput, EnrollOutput};
pub use error::FleetError;
pub use identity::{RotateSelection, Rotation};
pub use limiter::FailureLimiter;
pub use login::{LoggedIn, LoginCodeSpec};
pub use profiles::SetOutcome;
pub use sessions::{recording_message, Session, SessionHello};
pub use tick::Pass;
pub use tokens::{NewToken, TokenSpec};

/// Compare-and-swap attempts before a concurrent update is reported to the caller.
const CAS_ATTEMPTS: usize = 8;

/// Default interval between agent heartbeats.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Default time after its expiry during which a node certificate may still renew itself.
pub const DEFAULT_EXPIRED_RENEWAL_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Settings the fleet runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_cert_ttl: Duration,
    pub heartbeat: Duration,
    /// No contact for this long makes a node offline.
    pub offline_after: Duration,
    /// Conditions observed longer ago than this make a node's health unknown.
    pub freshness: Duration,
    /// Endpoints handed to agents and printed in enrollment lines.
    pub endpoints: Vec<String>,
    /// Events kept in the store.
    pub event_retention: usize,
    /// A node certificate that expired less than this long ago may still renew itself.
    pub expired_renewal_window: Duration,
    /// Public keys (DER SubjectPublicKeyInfo) agents pin at enrollment and require profile
    /// signatures from; empty means unsigned profiles.
    pub profile_signers: Vec<Vec<u8>>,
    /// Sessions this manager takes back per second after a restart: the spread of the
    /// agents' reconnection delays grows with the sessions it held at this rate.
    pub reconnect_rate: u32,
}

/// The manager's view of its fleet.
pub struct Fleet {
    store: Arc<dyn Store>,
    authority: Authority,
    settings: Settings,
    /// Every node this manager knows. Each replica holds every node's full record, about 6 KiB
    /// in memory, so over three replicas the records take half as much memory as the sessions
    /// (36 KiB each).
    nodes: RwLock<HashMap<String, NodeEntry>>,
    next_session: AtomicU64,
    limiter: Mutex<FailureLimiter>,
    events: Arc<EventLog>,
    flaps: Mutex<FlapDetector>,
    /// Live sessions replaced, to tell two peers with one certificate from a half-open one.
    conflicts: Mutex<conflicts::ConflictTracker>,
    /// Set when the manager shuts down, so that long-lived streams end: to the spread of the
    /// agents' reconnection delays.
    stopping: tokio::sync::watch::Sender<Option<Duration>>,
    /// Enrollments, heartbeats and sessions, for the metrics page.
    counters: Arc<FleetCounters>,
    /// The store's epoch and each pool's latest profile.
    profiles: RwLock<profiles::ProfileCache>,
    /// Each pool's latest rollout.
    rollouts: rollouts::RolloutCache,
    /// Enrollments waiting to be committed, by token.
    lanes: lanes::Lanes,
    /// Nodes whose session the shutdown ended here, whose last-seen time
    /// [`Fleet::save_last_seen`] writes.
    ended_by_shutdown: Mutex<Vec<String>>,
    /// Keys [`Fleet::save_last_seen`] wrote during this shutdown.
    shutdown_parts: std::sync::atomic::AtomicUsize,
    /// Last-seen times managers saved when they stopped, for the supervisor.
    saved_times: Mutex<shutdowns::SavedTimes>,
    /// The manager's server certificate and CAs.
    certs: Arc<crate::identity::ManagerCerts>,
    /// The issuing CA and trust bundle in force; replaced during a CA rollover.
    trust: RwLock<Arc<Trust>>,
    /// This manager among replicas (set once by `serve`; absent: a single manager).
    replica: std::sync::OnceLock<Arc<crate::replica::Replica>>,
}

/// What the manager issues with and hands out, replaced as a whole during a CA rollover.
pub struct Trust {
    pub issuer: Arc<opi_pki::Issuer>,
    /// The fleet's trust bundle (roots), PEM.
    pub bundle_pem: String,
    /// [`opi_pki::bundle_digest`] of `bundle_pem`.
    pub bundle_digest: String,
    /// Pin of the root that signs `issuer`, printed in enrollment lines.
    pub pin: opi_pki::CaPin,
}

/// A node record with its store revision and, when connected, its live session. The record
/// and the session are boxed: every replica keeps an entry for every node, and the map keeps
/// a slot for about one node in three more, so inline they cost 928 bytes a slot.
#[derive(Clone)]
struct NodeEntry {
    record: Box<NodeRecord>,
    revision: Revision,
    live: Option<Box<Live>>,
    /// Last heartbeat or session end; the grace period runs from here once the session is gone.
    last_contact: OffsetDateTime,
}

/// What only memory knows about a connected node.
#[derive(Clone)]
struct Live {
    session: u64,
    last_seen: OffsetDateTime,
    summary: Option<HealthSummary>,
    /// When the agent last observed its conditions, from heartbeats.
    conditions_observed_at: Option<OffsetDateTime>,
    remote_addr: String,
    outbound: mpsc::Sender<Outgoing>,
    closed: Arc<Notify>,
    /// Set when the session opened while the store was unreachable: its opening is recorded
    /// once the store is back.
    unrecorded: Option<Box<sessions::Arrival>>,
}

/// One message towards an agent, boxed: tokio's channel allocates its slots 32 at a time, so a
/// session's queue holds 32 pointers (256 bytes) instead of 32 messages (3.6 KiB).
pub type Outgoing = Box<Result<ManagerMessage, Status>>;

/// A node as operators see it: its record plus live state.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub record: NodeRecord,
    pub online: bool,
    pub last_seen: Option<OffsetDateTime>,
    pub summary: Option<HealthSummary>,
    pub remote_addr: String,
    /// When the conditions were last observed, live or as last persisted.
    pub conditions_observed_at: Option<OffsetDateTime>,
}

impl Fleet {
    /// Loads every node record, profile and rollout from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        authority: Authority,
        settings: Settings,
        certs: Arc<crate::identity::ManagerCerts>,
    ) -> Result<Arc<Self>, FleetError> {
        let records = list_json::<NodeRecord>(&*store, NODES).await?;
        // Nodes that were online get the grace period from now on to reconnect.
        let now = OffsetDateTime::now_utc();
        let mut nodes: HashMap<String, NodeEntry> = records
            .into_iter()
            .map(|v| {
                let entry = NodeEntry {
                    record: Box::new(v.value),
                    revision: v.mod_revision,
                    live: None,
                    last_contact: now,
                };
                (entry.record.name.clone(), entry)
            })
            .collect();
        shutdowns::apply_saved(&mut nodes, &shutdowns::read_saved(&*store).await?);
        let events = Arc::new(EventLog::open(store.clone(), settings.event_retention).await?);
        let profiles = profiles::ProfileCache::load(&*store).await?;
        let rollouts = rollouts::RolloutCache::load(&*store).await?;
        let trust = Trust {
            issuer: authority.issuer.clone(),
            bundle_digest: opi_pki::bundle_digest(&authority.trust_bundle_pem),
            bundle_pem: authority.trust_bundle_pem.clone(),
            pin: authority.pin,
        };
        Ok(Arc::new(Self {
            store,
            authority,
            settings,
            nodes: RwLock::new(nodes),
            next_session: AtomicU64::new(1),
            limiter: Mutex::new(FailureLimiter::default()),
            events,
            flaps: Mutex::new(FlapDetector::default()),
            conflicts: Mutex::default(),
            stopping: tokio::sync::watch::channel(None).0,
            counters: Arc::default(),
            profiles: RwLock::new(profiles),
            rollouts,
            lanes: lanes::Lanes::default(),
            ended_by_shutdown: Mutex::default(),
            shutdown_parts: Default::default(),
            saved_times: Mutex::default(),
            certs,
            trust: RwLock::new(Arc::new(trust)),
            replica: std::sync::OnceLock::new(),
        }))
    }

    pub fn fleet_name(&self) -> &str {
        &self.authority.fleet
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The issuing CA and trust bundle in force now.
    pub fn trust(&self) -> Arc<Trust> {
        self.trust.read().expect("trust lock poisoned").clone()
    }

    /// Issues and hands out `trust` from now on.
    pub fn set_trust(&self, trust: Trust) {
        *self.trust.write().expect("trust lock poisoned") = Arc::new(trust);
    }

    /// The manager's server certificate and CAs.
    pub fn manager_certs(&self) -> &crate::identity::ManagerCerts {
        &self.certs
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Makes this fleet one replica among others: its sessions are recorded, and sessions
    /// other replicas hold keep their nodes online.
    pub fn set_replica(&self, replica: Arc<crate::replica::Replica>) {
        let _ = self.replica.set(replica);
    }

    /// This manager among replicas, once `serve` set it.
    pub fn replica(&self) -> Option<&Arc<crate::replica::Replica>> {
        self.replica.get()
    }

    /// Since when this replica cannot reach the fleet store (see
    /// [`crate::replica::Replica::store_lost_since`]).
    pub fn store_lost_since(&self) -> Option<OffsetDateTime> {
        self.replica.get().and_then(|r| r.store_lost_since())
    }

    /// Whether this manager leads its replicas (a single manager always does).
    pub fn leads(&self) -> bool {
        self.replica.get().is_none_or(|r| r.is_leader())
    }

    /// Re-reads what other replicas wrote that this one keeps in memory and does not follow
    /// through a watch ([`Fleet::follow`]): events (published to this replica's watchers) and
    /// the pools' latest profiles. `taking_lead` also starts every disconnected node's grace
    /// period now, as at start.
    pub async fn read_back(&self, taking_lead: bool) -> Result<(), FleetError> {
        self.events.read_back().await?;
        self.refresh_profiles().await?;
        if taking_lead {
            let now = OffsetDateTime::now_utc();
            let mut nodes = self.nodes.write().expect("fleet lock poisoned");
            for entry in nodes.values_mut().filter(|e| e.live.is_none()) {
                entry.last_contact = now;
            }
        }
        Ok(())
    }

    /// Reads every node record again and takes in those other replicas changed (see
    /// [`follow::take_record`]).
    pub async fn reload_nodes(&self) -> Result<(), FleetError> {
        let records = list_json::<NodeRecord>(&*self.store, NODES).await?;
        let retargeted: Vec<String> = {
            let mut nodes = self.nodes.write().expect("fleet lock poisoned");
            records
                .into_iter()
                .filter_map(|v| {
                    let name = v.value.name.clone();
                    follow::take_record(&mut nodes, v).then_some(name)
                })
                .collect()
        };
        for name in retargeted {
            self.send_desired(&name).await;
        }
        Ok(())
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// What the fleet counts for the metrics page.
    pub fn counters(&self) -> &Arc<FleetCounters> {
        &self.counters
    }

    /// Runs `visit` over every node record, in no order, under the fleet's read lock: for
    /// counts over a large fleet without copying it. Keep `visit` short.
    pub fn with_records<R>(
        &self,
        visit: impl FnOnce(&mut dyn Iterator<Item = &NodeRecord>) -> R,
    ) -> R {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        visit(&mut nodes.values().map(|entry| &*entry.record))
    }

    /// Every node, sorted by name, optionally only those of `pool`.
    pub fn nodes(&self, pool: Option<&str>) -> Vec<NodeView> {
        self.nodes_where(|record| pool.is_none_or(|p| record.pool == p))
    }

    /// The nodes whose record passes `filter`, sorted by name; only those are copied.
    pub fn nodes_where(&self, filter: impl Fn(&NodeRecord) -> bool) -> Vec<NodeView> {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        let mut views: Vec<NodeView> = nodes
            .values()
            .filter(|e| filter(&e.record))
            .map(NodeEntry::view)
            .collect();
        drop(nodes);
        views.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        views
    }

    /// One node.
    pub fn node(&self, name: &str) -> Result<NodeView, FleetError> {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        nodes
            .get(name)
            .map(NodeEntry::view)
            .ok_or_else(|| FleetError::UnknownNode { name: name.into() })
    }

    fn replace_record(&self, record: NodeRecord, revision: Revision) {
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        match nodes.get_mut(&record.name) {
            Some(entry) => {
                *entry.record = record;
                entry.revision = revision;
            }
            None => {
                let entry = NodeEntry {
                    record: Box::new(record),
                    revision,
                    live: None,
                    last_contact: OffsetDateTime::now_utc(),
                };
                nodes.insert(entry.record.name.clone(), entry);
            }
        }
    }
}

impl NodeEntry {
    fn view(&self) -> NodeView {
        let live = self.live.as_deref();
        NodeView {
            record: (*self.record).clone(),
            online: self.record.supervision.connectivity == Connectivity::Online,
            conditions_observed_at: live
                .and_then(|l| l.conditions_observed_at)
                .or(self.record.supervision.conditions_observed_at),
            last_seen: live.map(|l| l.last_seen).or(self.record.last_seen),
            summary: live.and_then(|l| l.summary),
            remote_addr: live
                .map(|l| l.remote_addr.clone())
                .unwrap_or_else(|| self.record.remote_addr.clone()),
        }
    }
}
