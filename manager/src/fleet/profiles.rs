//! Pool profiles: validated whole before they are stored, each a new fleet-wide generation
//! carrying the store's epoch, and handed to the nodes of the pool.
//!
//! Generations are counted fleet-wide rather than per pool, so that a node moved to another
//! pool never receives a generation lower than the one it applied (its agent would refuse it).

use std::collections::HashMap;

use opi_profile::Profile;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{DesiredProfile, ManagerMessage};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::config_axis;
use super::{Fleet, FleetError};
use crate::audit;
use crate::records::{
    pool_profiles, profile_key, GenerationId, NodeState, ProfileRecord, EPOCH_KEY, GENERATION_KEY,
    PROFILES,
};
use crate::store::{decode, get_json, list_json, to_json, Store, Txn, TxnOutcome};

/// Largest profile document stored; each agent of the pool receives it whole.
pub const MAX_PROFILE_BYTES: usize = 256 * 1024;

/// The latest profile of each pool and the store's epoch, as loaded at start.
pub(super) struct ProfileCache {
    pub epoch: u64,
    pub latest: HashMap<String, ProfileRecord>,
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
        let mut latest: HashMap<String, ProfileRecord> = HashMap::new();
        for versioned in list_json::<ProfileRecord>(store, PROFILES).await? {
            let profile = versioned.value;
            let newer = latest
                .get(&profile.pool)
                .is_none_or(|p| p.generation < profile.generation);
            if newer {
                latest.insert(profile.pool.clone(), profile);
            }
        }
        Ok(Self { epoch, latest })
    }
}

impl Fleet {
    /// The store's epoch.
    pub fn epoch(&self) -> u64 {
        self.profiles.read().expect("profile lock poisoned").epoch
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

    /// Validates `yaml` and stores it as `pool`'s next generation, then targets every node of
    /// the pool at it. A document equal to the latest generation makes no new one.
    pub async fn set_profile(
        &self,
        pool: &str,
        yaml: &str,
        actor: &str,
        from: &str,
    ) -> Result<SetOutcome, FleetError> {
        let parsed = self.check_profile(pool, yaml, actor, from).await?;
        if let Some(latest) = self.latest_profile(pool) {
            if same_document(&latest.yaml, &parsed) {
                return Ok(SetOutcome {
                    profile: latest,
                    changed: false,
                });
            }
        }

        let profile = self.store_generation(pool, yaml, actor, from).await?;
        info!(pool = %pool, generation = profile.generation, epoch = profile.epoch, actor = %actor, "profile generation stored");
        self.profiles
            .write()
            .expect("profile lock poisoned")
            .latest
            .insert(pool.to_string(), profile.clone());
        self.target_pool(&profile).await;
        Ok(SetOutcome {
            profile,
            changed: true,
        })
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

    /// Takes the next fleet-wide generation and stores the profile under it, with its audit
    /// entry, in one transaction.
    async fn store_generation(
        &self,
        pool: &str,
        yaml: &str,
        actor: &str,
        from: &str,
    ) -> Result<ProfileRecord, FleetError> {
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
                yaml: yaml.into(),
                digest: digest(yaml),
                created_at: OffsetDateTime::now_utc(),
                created_by: actor.into(),
            };
            let detail = format!("generation {} ({})", profile.generation, profile.digest);
            let entry = audit::Entry::ok(actor, "profile.set", pool, from).detail(detail);
            let txn = Txn::new()
                .when_revision(GENERATION_KEY, revision)
                .put(GENERATION_KEY, to_json(&profile.generation))
                .put(profile_key(pool, profile.generation), to_json(&profile));
            if let TxnOutcome::Committed(_) = self.store().txn(entry.into_txn(txn)).await? {
                return Ok(profile);
            }
        }
        Err(FleetError::Conflict {
            what: format!("profile generation of pool {pool}"),
        })
    }

    /// Targets every active node of the profile's pool at its generation.
    async fn target_pool(&self, profile: &ProfileRecord) {
        let names: Vec<String> = self
            .nodes(Some(&profile.pool))
            .into_iter()
            .filter(|v| v.record.state == NodeState::Active)
            .map(|v| v.record.name)
            .collect();
        for name in names {
            if let Err(error) = self.target(&name, profile).await {
                warn!(node = %name, pool = %profile.pool, error = %error, "cannot target node at the new profile generation");
            }
        }
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
            })),
        };
        if self.send(name, message) {
            info!(node = %name, pool = %profile.pool, generation = profile.generation, "profile sent");
        }
    }
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
