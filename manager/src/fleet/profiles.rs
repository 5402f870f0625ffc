//! Pool profiles: validated whole before they are stored, each a new fleet-wide generation
//! carrying the store's epoch, stored with the rollout that hands it to the nodes of the pool
//! wave by wave (`fleet::rollouts`).
//!
//! Generations are counted fleet-wide rather than per pool, so that a node moved to another
//! pool never receives a generation lower than the one it applied (its agent would refuse it).

use std::collections::HashMap;

use opi_profile::Profile;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{DesiredProfile, ManagerMessage, ProfileSignature};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::config_axis;
use super::{Fleet, FleetError};
use crate::audit;
use crate::records::{
    pool_profiles, profile_key, GenerationId, ProfileRecord, EPOCH_KEY, GENERATION_KEY, PROFILES,
};
use crate::rollout::{rollout_key, RolloutRecord, Strategy};
use crate::store::{decode, get_json, list_json, to_json, Store, Txn, TxnOutcome};

/// Largest profile document stored; each agent of the pool receives it whole.
pub const MAX_PROFILE_BYTES: usize = 256 * 1024;

/// The latest profile of each pool and the store's epoch, as loaded at start and re-read when
/// the generation counter moves (another replica stored a generation).
pub(super) struct ProfileCache {
    pub epoch: u64,
    pub latest: HashMap<String, ProfileRecord>,
    /// Mod revision of the generation counter when `latest` was read (0: no counter yet).
    counter_revision: u64,
}

/// A new generation of a pool's profile, with the rollout that gives it to the pool.
pub(super) struct NewGeneration<'a> {
    pub pool: &'a str,
    pub yaml: &'a str,
    pub strategy: Strategy,
    pub actor: &'a str,
    pub from: &'a str,
    /// For an undo: the generation whose content this one repeats.
    pub reverts_to: Option<u64>,
    /// Another audit entry committed with the generation (the undo that made it).
    pub extra_audit: Option<audit::Entry>,
    /// Signatures of `yaml` by operators' signer keys.
    pub signatures: Vec<crate::records::SignatureRecord>,
}

/// What `set_profile` did.
#[derive(Clone, Debug)]
pub struct SetOutcome {
    pub profile: ProfileRecord,
    /// False when the document equals the pool's latest generation: nothing was stored.
    pub changed: bool,
}

impl ProfileCache {
    /// Reads the epoch (making it 1 in a new store) and the latest generation of each pool.
    pub(super) async fn load(store: &dyn Store) -> Result<Self, FleetError> {
        let epoch = load_epoch(store).await?;
        let mut cache = Self {
            epoch,
            latest: HashMap::new(),
            counter_revision: 0,
        };
        cache.counter_revision = counter_revision(store).await?;
        for versioned in list_json::<ProfileRecord>(store, PROFILES).await? {
            cache.take(versioned.value);
        }
        Ok(cache)
    }

    /// Keeps `profile` as its pool's latest unless a later generation is known.
    fn take(&mut self, profile: ProfileRecord) {
        let newer = self
            .latest
            .get(&profile.pool)
            .is_none_or(|p| p.generation < profile.generation);
        if newer {
            self.latest.insert(profile.pool.clone(), profile);
        }
    }
}

/// The generation counter's mod revision, 0 before the first generation.
async fn counter_revision(store: &dyn Store) -> Result<u64, FleetError> {
    Ok(store
        .get(GENERATION_KEY)
        .await?
        .map_or(0, |kv| kv.mod_revision))
}

impl Fleet {
    /// The store's epoch.
    pub fn epoch(&self) -> u64 {
        self.profiles.read().expect("profile lock poisoned").epoch
    }

    /// Re-reads the pools' latest profiles if another replica stored a generation since they
    /// were read: one read of the generation counter when none did.
    pub(super) async fn refresh_profiles(&self) -> Result<(), FleetError> {
        let store = self.store();
        let known = self
            .profiles
            .read()
            .expect("profile lock poisoned")
            .counter_revision;
        let now = counter_revision(store).await?;
        if now == known {
            return Ok(());
        }
        let stored = list_json::<ProfileRecord>(store, PROFILES).await?;
        let mut cache = self.profiles.write().expect("profile lock poisoned");
        for versioned in stored {
            cache.take(versioned.value);
        }
        cache.counter_revision = cache.counter_revision.max(now);
        Ok(())
    }

    /// The latest profile of `pool`, if it has one.
    pub fn latest_profile(&self, pool: &str) -> Option<ProfileRecord> {
        let profiles = self.profiles.read().expect("profile lock poisoned");
        profiles.latest.get(pool).cloned()
    }

    /// One generation of `pool`'s profile, the latest when `generation` is 0.
    pub async fn profile(&self, pool: &str, generation: u64) -> Result<ProfileRecord, FleetError> {
        let missing = || FleetError::UnknownProfile {
            pool: pool.into(),
            generation,
        };
        if generation == 0 {
            return self.latest_profile(pool).ok_or_else(missing);
        }
        let stored =
            get_json::<ProfileRecord>(self.store(), &profile_key(pool, generation)).await?;
        stored.map(|v| v.value).ok_or_else(missing)
    }

    /// The generation of `pool`'s profile made before `generation`, if any.
    pub async fn previous_profile(
        &self,
        pool: &str,
        generation: u64,
    ) -> Result<Option<ProfileRecord>, FleetError> {
        let store = self.store();
        let older = store
            .list(&pool_profiles(pool))
            .await?
            .into_iter()
            .take_while(|kv| kv.key < profile_key(pool, generation))
            .last();
        Ok(match older {
            Some(kv) => Some(decode::<ProfileRecord>(store, &kv)?.value),
            None => None,
        })
    }

    /// Validates `yaml` and stores it as `pool`'s next generation, with the rollout that gives
    /// it to the pool's nodes wave by wave (the supervisor steps it). A document equal to the
    /// latest generation makes no new one.
    pub async fn set_profile(
        &self,
        pool: &str,
        yaml: &str,
        strategy: Strategy,
        actor: &str,
        from: &str,
        signatures: Vec<crate::records::SignatureRecord>,
    ) -> Result<SetOutcome, FleetError> {
        let new = NewGeneration {
            pool,
            yaml,
            strategy,
            actor,
            from,
            reverts_to: None,
            extra_audit: None,
            signatures,
        };
        self.store_new_generation(new).await
    }

    /// Checks and stores a new generation with its rollout, replacing the pool's current
    /// rollout, in one transaction.
    pub(super) async fn store_new_generation(
        &self,
        new: NewGeneration<'_>,
    ) -> Result<SetOutcome, FleetError> {
        let parsed = self
            .check_profile(new.pool, new.yaml, new.actor, new.from)
            .await?;
        self.check_signatures(&new).await?;
        self.check_strategy(&new).await?;
        let _writers = self.rollouts.write_lock().await;
        if let Some(latest) = self.latest_profile(new.pool) {
            if same_document(&latest.yaml, &parsed) {
                return Ok(SetOutcome {
                    profile: latest,
                    changed: false,
                });
            }
        }

        let (profile, rollout, revision) = self.store_generation(&new).await?;
        info!(pool = %new.pool, generation = profile.generation, epoch = profile.epoch, actor = %new.actor, "profile generation stored");
        self.profiles
            .write()
            .expect("profile lock poisoned")
            .take(profile.clone());
        self.rollout_started(rollout, revision);
        Ok(SetOutcome {
            profile,
            changed: true,
        })
    }

    /// Refuses a document no configured signer key signed, when signer keys are configured:
    /// the agents enrolled with them would refuse it anyway.
    async fn check_signatures(&self, new: &NewGeneration<'_>) -> Result<(), FleetError> {
        let signers = &self.settings.profile_signers;
        if signers.is_empty() {
            return Ok(());
        }
        let hex = |text: &str| {
            data_encoding::HEXLOWER
                .decode(text.as_bytes())
                .unwrap_or_default()
        };
        let signed = new.signatures.iter().any(|s| {
            let key = hex(&s.public_key);
            signers.contains(&key)
                && opi_pki::profile_sig::verifies(&key, new.yaml.as_bytes(), &hex(&s.signature))
        });
        if signed {
            return Ok(());
        }
        let error = FleetError::UnsignedProfile {
            pool: new.pool.into(),
        };
        audit::Entry::refused(
            new.actor,
            "profile.set",
            new.pool,
            new.from,
            &error.to_string(),
        )
        .write(self.store())
        .await;
        Err(error)
    }

    /// Refuses a strategy with problems, auditing the refusal.
    async fn check_strategy(&self, new: &NewGeneration<'_>) -> Result<(), FleetError> {
        let problems = new.strategy.problems();
        if problems.is_empty() {
            return Ok(());
        }
        let error = FleetError::InvalidStrategy {
            pool: new.pool.into(),
            problems: problems.join("; "),
        };
        audit::Entry::refused(
            new.actor,
            "profile.set",
            new.pool,
            new.from,
            &error.to_string(),
        )
        .write(self.store())
        .await;
        Err(error)
    }

    /// Parses and validates a profile, auditing a refusal with every problem found.
    async fn check_profile(
        &self,
        pool: &str,
        yaml: &str,
        actor: &str,
        from: &str,
    ) -> Result<Profile, FleetError> {
        opi_pki::identity::validate_name(pool).map_err(|source| FleetError::InvalidName {
            what: "pool name",
            source,
        })?;
        if yaml.len() > MAX_PROFILE_BYTES {
            return Err(FleetError::InvalidProfile {
                pool: pool.into(),
                problems: format!("the document is larger than {MAX_PROFILE_BYTES} bytes"),
            });
        }
        match Profile::from_yaml(yaml) {
            Ok(profile) => Ok(profile),
            Err(errors) => {
                let error = FleetError::InvalidProfile {
                    pool: pool.into(),
                    problems: errors.to_string(),
                };
                audit::Entry::refused(actor, "profile.set", pool, from, &error.to_string())
                    .write(self.store())
                    .await;
                Err(error)
            }
        }
    }

    /// Takes the next fleet-wide generation and stores the profile under it, with its rollout,
    /// its events and its audit entries, in one transaction.
    async fn store_generation(
        &self,
        new: &NewGeneration<'_>,
    ) -> Result<(ProfileRecord, RolloutRecord, u64), FleetError> {
        let pool = new.pool;
        for _ in 0..super::CAS_ATTEMPTS {
            let counter = self.store().get(GENERATION_KEY).await?;
            let (last, revision) = match &counter {
                Some(kv) => (decode::<u64>(self.store(), kv)?.value, kv.mod_revision),
                None => (0, 0),
            };
            let profile = ProfileRecord {
                pool: pool.into(),
                generation: last + 1,
                epoch: self.epoch(),
                yaml: new.yaml.into(),
                digest: digest(new.yaml),
                created_at: OffsetDateTime::now_utc(),
                created_by: new.actor.into(),
                signatures: new.signatures.clone(),
            };
            let started = self.start_rollout(new, generation_id(&profile));
            let key = rollout_key(pool);
            let txn = Txn::new()
                .when_revision(GENERATION_KEY, revision)
                .when_revision(&key, started.revision)
                .put(GENERATION_KEY, to_json(&profile.generation))
                .put(profile_key(pool, profile.generation), to_json(&profile))
                .put(&key, to_json(&started.record));
            let txn = audit_entries(new, &profile)
                .into_iter()
                .fold(txn, |txn, entry| entry.into_txn(txn));
            match self.events.commit(txn, started.events).await? {
                TxnOutcome::Committed(revision) => return Ok((profile, started.record, revision)),
                TxnOutcome::Conflict { key: conflict } if conflict == key => {
                    self.reload_rollout(pool).await?
                }
                TxnOutcome::Conflict { .. } => {}
            }
        }
        Err(FleetError::Conflict {
            what: format!("profile generation of pool {pool}"),
        })
    }

    /// Makes `profile` the generation node `name` should run, and sends it if connected.
    pub async fn target(&self, name: &str, profile: &ProfileRecord) -> Result<(), FleetError> {
        let id = generation_id(profile);
        let now = OffsetDateTime::now_utc();
        self.update_node(name, None, |record, drafts| {
            config_axis::on_target(record, id, now, drafts);
            Ok(())
        })
        .await?;
        self.send_profile(name, profile);
        Ok(())
    }

    /// Sends the node's desired profile when it has not applied it yet.
    pub async fn send_desired(&self, name: &str) {
        let Ok(view) = self.node(name) else { return };
        let config = &view.record.config;
        let Some(desired) = config.desired else {
            return;
        };
        if config.applied >= Some(desired) {
            return;
        }
        let pool = &view.record.pool;
        match self.profile(pool, desired.generation).await {
            Ok(profile) => self.send_profile(name, &profile),
            Err(error) => {
                let generation = desired.generation;
                warn!(node = %name, pool = %pool, generation, error = %error, "cannot read the node's desired profile");
            }
        }
    }

    /// Queues `profile` on the node's session, if it has one.
    fn send_profile(&self, name: &str, profile: &ProfileRecord) {
        let message = ManagerMessage {
            body: Some(ManagerBody::Profile(DesiredProfile {
                pool: profile.pool.clone(),
                generation: profile.generation,
                epoch: profile.epoch,
                yaml: profile.yaml.clone(),
                digest: profile.digest.clone(),
                signatures: profile
                    .signatures
                    .iter()
                    .filter_map(signature_to_proto)
                    .collect(),
            })),
        };
        if self.send(name, message) {
            info!(node = %name, pool = %profile.pool, generation = profile.generation, "profile sent");
        }
    }
}

/// The audit entries of a new generation: `profile.set`, and the undo that made it, if any.
fn audit_entries(new: &NewGeneration<'_>, profile: &ProfileRecord) -> Vec<audit::Entry> {
    let detail = format!("generation {} ({})", profile.generation, profile.digest);
    let mut entries =
        vec![audit::Entry::ok(new.actor, "profile.set", new.pool, new.from).detail(detail)];
    if let Some(extra) = &new.extra_audit {
        let copy_of = new.reverts_to.unwrap_or_default();
        let detail = format!(
            "generation {} repeats generation {copy_of}",
            profile.generation
        );
        entries.push(extra.clone().detail(detail));
    }
    entries
}

/// Whether `stored` and `candidate` are the same profile, whatever their formatting.
fn same_document(stored: &str, candidate: &Profile) -> bool {
    Profile::from_yaml(stored).is_ok_and(|p| p.to_yaml() == candidate.to_yaml())
}

/// The (epoch, generation) pair agents compare.
pub fn generation_id(profile: &ProfileRecord) -> GenerationId {
    GenerationId {
        epoch: profile.epoch,
        generation: profile.generation,
    }
}

/// `sha256:` and the hex digest of a document.
pub fn digest(yaml: &str) -> String {
    let hash = Sha256::digest(yaml.as_bytes());
    format!("sha256:{}", data_encoding::HEXLOWER.encode(&hash))
}

/// Reads the store's epoch, creating it as 1 in a store that has none.
async fn load_epoch(store: &dyn Store) -> Result<u64, FleetError> {
    for _ in 0..super::CAS_ATTEMPTS {
        if let Some(kv) = store.get(EPOCH_KEY).await? {
            return Ok(decode::<u64>(store, &kv)?.value);
        }
        let txn = Txn::new()
            .when_absent(EPOCH_KEY)
            .put(EPOCH_KEY, to_json(&1u64));
        // On a conflict another replica created it first: read theirs.
        if let TxnOutcome::Committed(_) = store.txn(txn).await? {
            return Ok(1);
        }
    }
    Err(FleetError::Conflict {
        what: "the store epoch".into(),
    })
}

/// A stored signature as the agent receives it; `None` for one that is not hex (never
/// written so).
fn signature_to_proto(record: &crate::records::SignatureRecord) -> Option<ProfileSignature> {
    let hex = |text: &str| data_encoding::HEXLOWER.decode(text.as_bytes()).ok();
    Some(ProfileSignature {
        public_key: hex(&record.public_key)?,
        signature: hex(&record.signature)?,
    })
}
