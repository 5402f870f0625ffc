//! Rollouts as the fleet runs them: stored with the generation they roll out, stepped by the
//! supervisor every second (see [`crate::rollout`] for the rules), and driven by operators
//! (pause, resume, abort, undo). Every step that changes something is stored with its events
//! in one compare-and-swap transaction before any node is targeted, so a restarted manager
//! continues where the last one stopped (and targets again what it had not yet targeted).

use std::collections::HashMap;
use std::sync::RwLock;

use time::OffsetDateTime;
use tracing::{info, warn};

use super::profiles::NewGeneration;
use super::{Fleet, FleetError, NodeView};
use crate::audit;
use crate::events::Draft;
use crate::records::{GenerationId, NodeState, Severity};
use crate::rollout::{
    act, rollout_key, step, Action, NodeFacts, RolloutRecord, RolloutState, ROLLOUTS,
};
use crate::store::{get_json, list_json, to_json, Store, Txn, TxnOutcome, Versioned};

/// Each pool's latest rollout with its store revision, and the lock that serialises the
/// writers (the supervisor's steps, operators' actions, new generations). Readers (hellos,
/// status, alerts) never wait for a store write.
pub(super) struct RolloutCache {
    records: RwLock<HashMap<String, Versioned<RolloutRecord>>>,
    writers: tokio::sync::Mutex<()>,
}

/// What a pool's new generation starts: its rollout record and the events saying so.
pub(super) struct Started {
    pub record: RolloutRecord,
    /// The store revision of the pool's rollout key it replaces (0: none), for the
    /// compare-and-swap.
    pub revision: u64,
    /// `Superseded` for a rollout it replaces, then `Started`.
    pub events: Vec<Draft>,
}

impl RolloutCache {
    /// Reads every pool's latest rollout.
    pub(super) async fn load(store: &dyn Store) -> Result<Self, FleetError> {
        let records = list_json::<RolloutRecord>(store, ROLLOUTS)
            .await?
            .into_iter()
            .map(|v| (v.value.pool.clone(), v))
            .collect();
        Ok(Self {
            records: RwLock::new(records),
            writers: tokio::sync::Mutex::new(()),
        })
    }

    /// Takes in the rollouts other replicas wrote since they were read.
    pub(super) async fn refresh(&self, store: &dyn Store) -> Result<(), FleetError> {
        for v in list_json::<RolloutRecord>(store, ROLLOUTS).await? {
            self.take(v);
        }
        Ok(())
    }

    /// Keeps `v` unless memory holds a later write of the pool's rollout.
    pub(super) fn take(&self, v: Versioned<RolloutRecord>) {
        let mut records = self.records.write().expect("rollout lock poisoned");
        let newer = records
            .get(&v.value.pool)
            .is_none_or(|known| known.mod_revision < v.mod_revision);
        if newer {
            records.insert(v.value.pool.clone(), v);
        }
    }

    /// Holds off every other writer of rollouts until the guard is dropped.
    pub(super) async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writers.lock().await
    }

    fn get(&self, pool: &str) -> Option<Versioned<RolloutRecord>> {
        let records = self.records.read().expect("rollout lock poisoned");
        records.get(pool).cloned()
    }

    pub(super) fn put(&self, record: RolloutRecord, revision: u64) {
        let versioned = Versioned {
            mod_revision: revision,
            create_revision: revision,
            value: record,
        };
        let mut records = self.records.write().expect("rollout lock poisoned");
        records.insert(versioned.value.pool.clone(), versioned);
    }
}

impl Fleet {
    /// The latest rollout of `pool`.
    pub fn rollout(&self, pool: &str) -> Result<RolloutRecord, FleetError> {
        self.rollouts
            .get(pool)
            .map(|v| v.value)
            .ok_or_else(|| FleetError::NoRollout { pool: pool.into() })
    }

    /// The latest rollout of every pool that has one, sorted by pool.
    pub fn rollouts(&self) -> Vec<RolloutRecord> {
        let records = self.rollouts.records.read().expect("rollout lock poisoned");
        let mut all: Vec<RolloutRecord> = records.values().map(|v| v.value.clone()).collect();
        all.sort_by(|a, b| a.pool.cmp(&b.pool));
        all
    }

    /// The generation node `name` of `pool` should run now: what the pool's rollout has
    /// reached for it, else the pool's latest generation (pools set before rollouts existed).
    pub(super) fn generation_wanted(&self, pool: &str, name: &str) -> Option<GenerationId> {
        match self.rollouts.get(pool) {
            Some(rollout) => rollout.value.generation_for(name),
            None => self
                .latest_profile(pool)
                .map(|p| super::profiles::generation_id(&p)),
        }
    }

    /// The rollout a new generation of a pool starts, replacing the pool's current one; the
    /// caller holds the writers' lock and commits it with the generation.
    pub(super) fn start_rollout(&self, new: &NewGeneration<'_>, to: GenerationId) -> Started {
        let previous = self.rollouts.get(new.pool);
        let from = match &previous {
            Some(old) => old.value.settled_generation(),
            None => self
                .latest_profile(new.pool)
                .map(|p| super::profiles::generation_id(&p)),
        };
        let members = self
            .nodes(Some(new.pool))
            .into_iter()
            .filter(|v| v.record.state == NodeState::Active)
            .map(|v| v.record.name);
        let now = OffsetDateTime::now_utc();
        let strategy = new.strategy.clone();
        let mut record = RolloutRecord::new(new.pool, to, from, strategy, members, new.actor, now);
        record.reverts_to = new.reverts_to;

        let mut events = Vec::new();
        if let Some(old) = previous.as_ref().filter(|v| v.value.state.is_active()) {
            events.push(superseded(&old.value, to.generation));
        }
        events.push(started(&record));
        Started {
            record,
            revision: previous.map_or(0, |v| v.mod_revision),
            events,
        }
    }

    /// Records the rollout a committed generation started.
    pub(super) fn rollout_started(&self, record: RolloutRecord, revision: u64) {
        info!(pool = %record.pool, generation = record.to.generation, from = ?record.from.map(|f| f.generation), strategy = %record.strategy.describe(), "rollout started");
        self.rollouts.put(record, revision);
    }

    /// Reads a pool's rollout again from the store, after a write lost a compare-and-swap.
    pub(super) async fn reload_rollout(&self, pool: &str) -> Result<(), FleetError> {
        if let Some(current) = get_json::<RolloutRecord>(self.store(), &rollout_key(pool)).await? {
            self.rollouts.put(current.value, current.mod_revision);
        }
        Ok(())
    }

    /// Steps every running rollout once; called by the supervisor about once a second.
    pub async fn advance_rollouts(&self) {
        let pools: Vec<String> = self
            .rollouts()
            .into_iter()
            .filter(|r| r.state.is_active())
            .map(|r| r.pool)
            .collect();
        for pool in pools {
            if let Err(error) = self.advance(&pool).await {
                warn!(pool = %pool, error = %error, "cannot advance the pool's rollout");
            }
        }
    }

    async fn advance(&self, pool: &str) -> Result<(), FleetError> {
        let guard = self.rollouts.write_lock().await;
        let Some(current) = self.rollouts.get(pool) else {
            return Ok(());
        };
        let before = current.value.state;
        let mut record = current.value;
        let facts = self.pool_facts(pool, record.strategy.failure_domain.as_deref());
        let decision = step(&mut record, &facts, OffsetDateTime::now_utc());
        if decision.changed {
            let txn = Txn::new();
            self.commit_rollout(txn, &record, current.mod_revision, decision.events)
                .await?;
            if record.state != before {
                log_state(&record);
            }
        }
        drop(guard);
        self.target_all(pool, decision.target).await;
        Ok(())
    }

    /// Pauses, resumes, aborts or undoes the pool's rollout; every action is audited, the
    /// refused ones too.
    pub async fn rollout_action(
        &self,
        pool: &str,
        action: Action,
        actor: &str,
        from: &str,
    ) -> Result<RolloutRecord, FleetError> {
        let name = format!("rollout.{}", action.name());
        let result = match action {
            Action::Undo => self.undo(pool, actor, from, &name).await,
            _ => self.change_state(pool, action, actor, from, &name).await,
        };
        if let Err(error) = &result {
            if is_refusal(error) {
                audit::Entry::refused(actor, &name, pool, from, &error.to_string())
                    .write(self.store())
                    .await;
            }
        }
        result
    }

    async fn change_state(
        &self,
        pool: &str,
        action: Action,
        actor: &str,
        from: &str,
        audit_action: &str,
    ) -> Result<RolloutRecord, FleetError> {
        let _guard = self.rollouts.write_lock().await;
        let current = self
            .rollouts
            .get(pool)
            .ok_or_else(|| FleetError::NoRollout { pool: pool.into() })?;
        let mut record = current.value.clone();
        let decision =
            act(&mut record, action, actor, OffsetDateTime::now_utc()).map_err(|refusal| {
                FleetError::RolloutActionRefused {
                    pool: pool.into(),
                    action: action.name(),
                    state: refusal.state.name(),
                    hint: refusal.hint,
                }
            })?;
        let detail = format!(
            "generation {}: {} -> {}",
            record.to.generation,
            current.value.state.name(),
            record.state.name()
        );
        let txn = audit::Entry::ok(actor, audit_action, pool, from)
            .detail(detail)
            .into_txn(Txn::new());
        self.commit_rollout(txn, &record, current.mod_revision, decision.events)
            .await?;
        info!(pool = %pool, action = action.name(), actor = %actor, state = record.state.name(), "rollout action taken");
        Ok(record)
    }

    /// Rolls the pool back to the generation its rollout started from, as a new generation
    /// with the same content and strategy, rolled out with the same gating.
    async fn undo(
        &self,
        pool: &str,
        actor: &str,
        from: &str,
        audit_action: &str,
    ) -> Result<RolloutRecord, FleetError> {
        let current = self.rollout(pool)?;
        let previous = current
            .from
            .ok_or_else(|| FleetError::NothingToUndo { pool: pool.into() })?;
        let old = self.profile(pool, previous.generation).await?;
        let new = NewGeneration {
            pool,
            yaml: &old.yaml,
            strategy: current.strategy.clone(),
            actor,
            from,
            reverts_to: Some(previous.generation),
            extra_audit: Some(audit::Entry::ok(actor, audit_action, pool, from)),
            // The same document: its signatures still hold.
            signatures: old.signatures.clone(),
        };
        let outcome = self.store_new_generation(new).await?;
        if !outcome.changed {
            return Err(FleetError::NothingToUndo { pool: pool.into() });
        }
        info!(pool = %pool, generation = outcome.profile.generation, copy_of = previous.generation, actor = %actor, "rollout undone with a new generation");
        self.rollout(pool)
    }

    /// Stores a changed rollout with `txn` and its events, compare-and-swap on its key; on a
    /// conflict the cache is read again from the store and the caller told to retry.
    async fn commit_rollout(
        &self,
        txn: Txn,
        record: &RolloutRecord,
        revision: u64,
        events: Vec<Draft>,
    ) -> Result<(), FleetError> {
        let key = rollout_key(&record.pool);
        let txn = txn.when_revision(&key, revision).put(&key, to_json(record));
        match self.events.commit(txn, events).await? {
            TxnOutcome::Committed(new_revision) => {
                self.rollouts.put(record.clone(), new_revision);
                Ok(())
            }
            TxnOutcome::Conflict { .. } => {
                self.reload_rollout(&record.pool).await?;
                Err(FleetError::Conflict {
                    what: format!("rollout of pool {}", record.pool),
                })
            }
        }
    }

    /// Targets nodes at the generations the step chose.
    async fn target_all(&self, pool: &str, targets: Vec<(String, GenerationId)>) {
        for (name, id) in targets {
            let profile = match self.profile(pool, id.generation).await {
                Ok(profile) => profile,
                Err(error) => {
                    warn!(pool = %pool, node = %name, error = %error, "cannot read the generation to target");
                    continue;
                }
            };
            if let Err(error) = self.target(&name, &profile).await {
                warn!(pool = %pool, node = %name, error = %error, "cannot target node");
            }
        }
    }

    /// What the rollout step needs of each active node of the pool. Nodes in maintenance are
    /// rolled out like the others.
    fn pool_facts(&self, pool: &str, domain_label: Option<&str>) -> Vec<NodeFacts> {
        self.nodes(Some(pool))
            .into_iter()
            .filter(|v| v.record.state == NodeState::Active)
            .map(|v| node_facts(v, domain_label))
            .collect()
    }
}

fn node_facts(view: NodeView, domain_label: Option<&str>) -> NodeFacts {
    let record = view.record;
    let problems = record
        .supervision
        .conditions
        .iter()
        .filter(|c| c.degrades())
        .map(|c| c.key())
        .collect();
    NodeFacts {
        domain: domain_label.and_then(|label| record.labels.get(label).cloned()),
        name: record.name,
        online: view.online,
        health: record.supervision.health,
        config: record.config,
        boot_id: record.boot_id,
        problems,
    }
}

/// Logs a change of the rollout's state: warn when it halted, as an operator must act.
fn log_state(record: &RolloutRecord) {
    let pool = &record.pool;
    let generation = record.to.generation;
    match record.state {
        RolloutState::Halted => {
            warn!(pool = %pool, generation, reason = %record.reason, "rollout halted")
        }
        state => {
            info!(pool = %pool, generation, state = state.name(), reason = %record.reason, "rollout state changed")
        }
    }
}

/// Whether a failed action was refused for the caller's reasons (audited as refused), rather
/// than failing in the store.
fn is_refusal(error: &FleetError) -> bool {
    matches!(
        error,
        FleetError::NoRollout { .. }
            | FleetError::NothingToUndo { .. }
            | FleetError::RolloutActionRefused { .. }
            | FleetError::UnknownProfile { .. }
    )
}

/// The event of a new rollout.
fn started(record: &RolloutRecord) -> Draft {
    let from = match record.from {
        Some(from) => format!("from generation {}", from.generation),
        None => "as the pool's first profile".into(),
    };
    let undo = record
        .reverts_to
        .map(|g| format!(", undo: the content of generation {g}"))
        .unwrap_or_default();
    let message = format!(
        "rollout of generation {} started {from}{undo}; {}; {} node(s)",
        record.to.generation,
        record.strategy.describe(),
        record.nodes.len()
    );
    Draft::new("", &record.pool, "rollout", "none", "progressing")
        .subject(format!("generation {}", record.to.generation))
        .because("Started", message)
        .severity(Severity::Info)
}

/// The event of a running rollout replaced by a newer generation's.
fn superseded(old: &RolloutRecord, generation: u64) -> Draft {
    Draft::new("", &old.pool, "rollout", old.state.name(), "aborted")
        .subject(format!("generation {}", old.to.generation))
        .because(
            "Superseded",
            format!("superseded by generation {generation}; nodes not yet targeted wait for it"),
        )
        .severity(Severity::Info)
}
