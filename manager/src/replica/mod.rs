//! Manager replicas on one etcd: each holds a lease, records the agent sessions it holds under
//! it (`replicas/sessions/REPLICA/NODE`), and campaigns for the leader key
//! (`replicas/leader`), created under its lease only if absent. Only the leader supervises,
//! delivers alerts and steps rollouts.
//!
//! The leader checks before each supervision pass that it still leads, which means its last
//! keep-alive was *sent* less than two thirds of the lease TTL ago (etcd counts the TTL from
//! when it received it, so the lease outlives that window) and the leader key still has the
//! create revision it wrote. The pass's writes are fenced by that revision ([`fence`]), so a
//! pass that stalls past the lease while another replica takes the lead writes nothing.
//!
//! With the SQLite store there is a single manager, always the leader.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::store::etcd::Lease;
use crate::store::{EtcdStore, Op, Store, Txn, TxnOutcome, MAX_TXN_OPS};

pub mod fence;
mod keys;

pub use fence::{as_leader, FencedStore, Lead};

/// Keys that live only under replicas' leases: never copied, backed up or restored.
pub const LEASED: &str = "replicas/";
/// The leader's key, under the fleet's store prefix.
pub const LEADER_KEY: &str = "replicas/leader";
/// Where each replica records the sessions it holds.
const SESSIONS: &str = "replicas/sessions/";

/// Drops the keys that live under replicas' leases (see [`LEASED`]).
pub fn durable(mut keys: Vec<crate::store::KeyValue>) -> Vec<crate::store::KeyValue> {
    keys.retain(|kv| !kv.key.starts_with(LEASED));
    keys
}

/// This manager's part among replicas.
pub struct Replica {
    name: String,
    etcd: Option<EtcdStore>,
    ttl: Duration,
    state: Mutex<State>,
    leading: watch::Sender<bool>,
    /// Since when lease rounds fail, so that etcd is unreachable from this replica and the
    /// sessions it holds are not recorded under a live lease; `None` while they succeed (and
    /// always for the single manager).
    lost: watch::Sender<Option<OffsetDateTime>>,
    /// Taken while [`Replica::confirm_recording`] asks etcd.
    confirming: tokio::sync::Mutex<()>,
    /// Session keys waiting to be written ([`keys`]).
    keys: Mutex<keys::KeyQueue>,
}

#[derive(Default)]
struct State {
    lease: Option<Lease>,
    /// When the last successful keep-alive (or the grant) was sent.
    renewed_at: Option<Instant>,
    /// Create revision of our leader key, while we lead.
    leader_revision: Option<u64>,
    /// Nodes whose session this replica holds.
    held: HashSet<String>,
    /// Nodes whose session another replica holds, as last listed.
    elsewhere: HashSet<String>,
    /// When the listing of `elsewhere` that succeeded last was sent.
    listed_at: Option<Instant>,
    /// The leader key's value (a replica name) as last read; `None` when absent or unread.
    leader: Option<String>,
    /// When the last keep-alive sent for an agent asking was sent, and whether it succeeded.
    confirmed: Option<(Instant, bool)>,
}

impl Replica {
    /// The single manager of a SQLite store: always the leader.
    pub fn single(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            etcd: None,
            ttl: Duration::ZERO,
            state: Mutex::default(),
            leading: watch::channel(true).0,
            lost: watch::channel(None).0,
            confirming: tokio::sync::Mutex::new(()),
            keys: Mutex::default(),
        })
    }

    /// A replica on etcd at `url`, holding a lease of `ttl`; call [`Replica::run`] to campaign.
    pub fn on_etcd(name: &str, url: &str, ttl: Duration) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            name: name.into(),
            etcd: Some(EtcdStore::open(url)?),
            ttl,
            state: Mutex::default(),
            leading: watch::channel(false).0,
            lost: watch::channel(None).0,
            confirming: tokio::sync::Mutex::new(()),
            keys: Mutex::default(),
        }))
    }

    /// Whether this is the single manager of a SQLite store.
    pub fn is_single(&self) -> bool {
        self.etcd.is_none()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this replica leads now (checked before each leader step, see the module doc).
    pub fn is_leader(&self) -> bool {
        self.lead().is_some()
    }

    /// How this replica leads now, with the fence its leader passes run under
    /// ([`as_leader`]); `None` while it does not lead.
    pub fn lead(&self) -> Option<Lead> {
        if self.etcd.is_none() {
            return Some(Lead { fence: None });
        }
        let state = self.state.lock().expect("replica lock poisoned");
        let fresh = state
            .renewed_at
            .is_some_and(|at| at.elapsed() < self.ttl * 2 / 3);
        let revision = state.leader_revision?;
        (*self.leading.borrow() && fresh).then_some(Lead {
            fence: Some(revision),
        })
    }

    /// The replica that leads, as this one last read it: its own name while it leads, `None`
    /// when no replica leads or etcd did not answer the last check.
    pub fn leader(&self) -> Option<String> {
        if self.is_leader() {
            return Some(self.name.clone());
        }
        self.state
            .lock()
            .expect("replica lock poisoned")
            .leader
            .clone()
    }

    /// Changes of leadership.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Whether this replica can record a session right now, for an agent that asks before
    /// moving here, or whose session is here and was told it was not recorded: proven by a
    /// keep-alive of its lease sent after the agent asked (bounded by a third of the lease).
    /// Agents of a replica that lost etcd ask together, so askers that wait while a check runs
    /// take the next one's answer rather than each sending their own.
    pub async fn confirm_recording(&self) -> bool {
        let Some(etcd) = &self.etcd else { return true };
        let asked = Instant::now();
        let _one_at_a_time = self.confirming.lock().await;
        let (lease, confirmed) = {
            let state = self.state.lock().expect("replica lock poisoned");
            (state.lease, state.confirmed)
        };
        if let Some((_, ok)) = confirmed.filter(|(sent, _)| *sent >= asked) {
            return ok && self.records_sessions();
        }
        let Some(lease) = lease else { return false };
        let sent = Instant::now();
        let renewed = tokio::time::timeout(self.ttl / 3, etcd.keep_alive(lease.id)).await;
        let ok = matches!(renewed, Ok(Ok(_)));
        {
            let mut state = self.state.lock().expect("replica lock poisoned");
            state.confirmed = Some((sent, ok));
            if ok {
                state.renewed_at = Some(sent);
            }
        }
        // The lease lives, so the sessions held under it are recorded again: the agents of a
        // replica that recovers are told at once, rather than move away from it meanwhile.
        if ok {
            self.round_succeeded();
        }
        ok && self.records_sessions()
    }

    /// Changes of [`Replica::store_lost_since`]: from a failed lease round (the leader would
    /// count this replica's nodes offline once its lease lapses) until the next successful
    /// one, the sessions it holds are not recorded, and agents told so move to a replica that
    /// records them.
    pub fn store_lost(&self) -> watch::Receiver<Option<OffsetDateTime>> {
        self.lost.subscribe()
    }

    /// Since when this replica cannot reach etcd (its lease rounds fail): its answers come
    /// from memory and may be stale. Always `None` for the single manager.
    pub fn store_lost_since(&self) -> Option<OffsetDateTime> {
        *self.lost.borrow()
    }

    /// Whether the sessions this replica holds are recorded under a live lease now.
    pub fn records_sessions(&self) -> bool {
        self.lost.borrow().is_none()
    }

    /// Keeps the lease alive and campaigns, every third of the TTL, and lists the sessions
    /// other replicas hold, until aborted.
    pub fn run(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        self.etcd.as_ref()?;
        let replica = self.clone();
        Some(tokio::spawn(async move {
            // Listed once first, so that the first round may lead.
            if let Err(error) = replica.list_sessions().await {
                debug!(replica = %replica.name, error = %error, "cannot list the sessions other replicas hold");
            }
            tokio::join!(replica.keep_lease(), replica.follow_sessions());
        }))
    }

    /// The lease rounds.
    async fn keep_lease(&self) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let step = tokio::time::timeout(self.ttl / 3, self.step());
            match step.await.unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "etcd did not answer within {:?}",
                    self.ttl / 3
                ))
            }) {
                Ok(()) => self.round_succeeded(),
                Err(error) => self.round_failed(&format!("{error:#}")),
            }
        }
    }

    /// Lists the sessions the other replicas hold, every third of the TTL. Beside the lease
    /// rounds rather than in them: with tens of thousands of sessions the listing takes longer
    /// than a round may, and a slow listing says nothing about the lease.
    async fn follow_sessions(&self) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: `run` has just listed them.
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(error) = self.list_sessions().await {
                debug!(replica = %self.name, error = %error, "cannot list the sessions other replicas hold");
            }
        }
    }

    /// Lists the sessions the other replicas hold.
    async fn list_sessions(&self) -> Result<(), crate::store::StoreError> {
        let etcd = self.etcd.as_ref().expect("run only on etcd");
        let mine = format!("{SESSIONS}{}/", self.name);
        let sent = Instant::now();
        let others = etcd.list(SESSIONS).await?;
        let elsewhere = others
            .iter()
            .filter(|kv| !kv.key.starts_with(&mine))
            .filter_map(|kv| kv.key.rsplit('/').next().map(str::to_owned))
            .collect();
        let mut state = self.state.lock().expect("replica lock poisoned");
        state.elsewhere = elsewhere;
        state.listed_at = Some(sent);
        Ok(())
    }

    fn round_succeeded(&self) {
        if self.lost.send_if_modified(|lost| lost.take().is_some()) {
            info!(replica = %self.name, "lease renewed: sessions recorded again");
        }
    }

    fn round_failed(&self, error: &str) {
        self.state.lock().expect("replica lock poisoned").leader = None;
        self.step_down(error);
        self.lost.send_if_modified(|lost| {
            let first = lost.is_none();
            lost.get_or_insert_with(OffsetDateTime::now_utc);
            first
        });
        warn!(replica = %self.name, error, "replica lease or leader check failed; its agents look for a replica that can record their sessions");
    }

    /// One round: renew (or regrant) the lease, then check or claim the leader key.
    async fn step(&self) -> anyhow::Result<()> {
        let etcd = self.etcd.as_ref().expect("run only on etcd");
        let lease = self.state.lock().expect("replica lock poisoned").lease;
        let sent = Instant::now();
        let lease = match lease {
            Some(lease) => match etcd.keep_alive(lease.id).await {
                Ok(_) => lease,
                Err(error) => {
                    self.state.lock().expect("replica lock poisoned").lease = None;
                    return Err(error.into());
                }
            },
            None => self.grant(etcd).await?,
        };
        self.state.lock().expect("replica lock poisoned").renewed_at = Some(sent);

        let ours = self
            .state
            .lock()
            .expect("replica lock poisoned")
            .leader_revision;
        let current = etcd.get_now(LEADER_KEY).await?;
        self.state.lock().expect("replica lock poisoned").leader = current
            .as_ref()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        // A leader counts a node whose session is at another replica online by that listing:
        // with none recent, it would count them offline, so it does not lead meanwhile.
        let listed = self.state.lock().expect("replica lock poisoned").listed_at;
        if listed.is_none_or(|at| at.elapsed() > self.ttl) {
            self.step_down("the sessions other replicas hold were not listed within a lease");
            return Ok(());
        }
        match (ours, current) {
            (Some(revision), Some(kv)) if kv.create_revision == revision => {}
            (Some(_), _) => self.step_down("the leader key is gone or another replica's"),
            // Ours from before a failed round (etcd was away but the lease lived on): lead
            // again under it rather than wait for a lease this replica keeps alive to expire.
            (None, Some(kv)) if kv.value == self.name.as_bytes() => self.lead_at(
                kv.create_revision,
                "the leader key this replica wrote outlived a failed lease round",
            ),
            (None, Some(_)) => {}
            (None, None) => {
                let txn = Txn::new()
                    .when_absent(LEADER_KEY)
                    .put(LEADER_KEY, self.name.clone().into_bytes());
                if let TxnOutcome::Committed(revision) = etcd.txn_with_lease(txn, lease.id).await? {
                    self.lead_at(revision, "the leader key was free");
                }
            }
        }
        Ok(())
    }

    /// Grants a new lease and records again every session held under it.
    async fn grant(&self, etcd: &EtcdStore) -> anyhow::Result<Lease> {
        let lease = etcd.grant_lease(self.ttl).await?;
        let held: Vec<String> = {
            let state = self.state.lock().expect("replica lock poisoned");
            state.held.iter().cloned().collect()
        };
        // In transactions etcd takes: a replica may hold tens of thousands of sessions.
        for chunk in held.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|node| Op::Put {
                    key: self.session_key(node),
                    value: Vec::new(),
                })
                .collect();
            let txn = Txn {
                compares: Vec::new(),
                ops,
            };
            etcd.txn_with_lease(txn, lease.id).await?;
        }
        info!(replica = %self.name, lease = %format!("{:x}", lease.id), ttl = ?lease.ttl, "replica lease granted");
        self.state.lock().expect("replica lock poisoned").lease = Some(lease);
        Ok(lease)
    }

    /// Leads under the leader key created at `revision`.
    fn lead_at(&self, revision: u64, why: &str) {
        {
            let mut state = self.state.lock().expect("replica lock poisoned");
            state.leader_revision = Some(revision);
            state.leader = Some(self.name.clone());
        }
        info!(replica = %self.name, ttl = ?self.ttl, reason = why, "leading: this replica supervises, delivers alerts and steps rollouts");
        self.leading.send_replace(true);
    }

    /// Stops leading, saying why in the log if it led.
    pub fn step_down(&self, why: &str) {
        let was = {
            let mut state = self.state.lock().expect("replica lock poisoned");
            state.leader_revision.take().is_some()
        };
        self.leading.send_replace(false);
        if was {
            warn!(replica = %self.name, reason = why, "stopped leading");
        }
    }

    fn session_key(&self, node: &str) -> String {
        format!("{SESSIONS}{}/{node}", self.name)
    }

    /// Records that this replica holds `node`'s session.
    pub async fn hold(self: &Arc<Self>, node: &str) {
        if self.etcd.is_none() {
            return;
        }
        let recorded = {
            let mut state = self.state.lock().expect("replica lock poisoned");
            state.held.insert(node.into());
            state.lease.is_some()
        };
        // Without a lease yet, the next grant records it.
        if recorded {
            self.write_key(node, true).await;
        }
    }

    /// Records that this replica no longer holds `node`'s session.
    pub async fn release(self: &Arc<Self>, node: &str) {
        if self.etcd.is_none() {
            return;
        }
        self.state
            .lock()
            .expect("replica lock poisoned")
            .held
            .remove(node);
        self.write_key(node, false).await;
    }

    /// Whether another replica held `node`'s session when last listed.
    pub fn held_elsewhere(&self, node: &str) -> bool {
        self.state
            .lock()
            .expect("replica lock poisoned")
            .elsewhere
            .contains(node)
    }
}
