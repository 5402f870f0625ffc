//! What the manager stores, as JSON values under typed keys.
//!
//! Keys: `tokens/ID`, `token-enrollments/ID/SPKI-SHA256`, `nodes/NAME`, `audit/TIME-RAND`
//! (time-ordered), `events/REVISION`, `profiles/POOL/GENERATION`, `rollouts/POOL` (see
//! [`crate::rollout`]), and `meta/…` for the store's epoch and generation counter.
//! Records keep their upstream-neutral shape so that both store backends hold the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Key prefix of bootstrap tokens.
pub const TOKENS: &str = "tokens/";
/// Key prefix of the answers given with bootstrap tokens, one key per enrollment.
pub const TOKEN_ENROLLMENTS: &str = "token-enrollments/";
/// Key prefix of enrolled nodes.
pub const NODES: &str = "nodes/";
/// Key prefix of audit entries.
pub const AUDIT: &str = "audit/";
/// Key prefix of signed audit checkpoints.
pub const AUDIT_CHECKPOINTS: &str = "audit-checkpoints/";
/// Key prefix of one-time operator login codes.
pub const LOGIN_CODES: &str = "login-codes/";

/// Key of a token.
pub fn token_key(id: &str) -> String {
    format!("{TOKENS}{id}")
}

/// Key prefix of the answers given with token `id`.
pub fn token_enrollments_prefix(id: &str) -> String {
    format!("{TOKEN_ENROLLMENTS}{id}/")
}

/// Key of the answer given with token `id` to the node key whose SubjectPublicKeyInfo has the
/// SHA-256 `spki_sha256` (hex).
pub fn token_enrollment_key(id: &str, spki_sha256: &str) -> String {
    format!("{}{spki_sha256}", token_enrollments_prefix(id))
}

/// Key of a node.
pub fn node_key(name: &str) -> String {
    format!("{NODES}{name}")
}

/// A new, time-ordered audit key.
pub fn audit_key(at: OffsetDateTime) -> String {
    let nanos = at.unix_timestamp_nanos().max(0);
    format!("{AUDIT}{nanos:020}-{:08x}", rand::random::<u32>())
}

/// Key of the checkpoint at chain position `seq`; zero-padded so key order is chain order.
pub fn audit_checkpoint_key(seq: u64) -> String {
    format!("{AUDIT_CHECKPOINTS}{seq:020}")
}

/// The first audit key at or after `at`.
pub fn audit_key_from(at: OffsetDateTime) -> String {
    let nanos = at.unix_timestamp_nanos().max(0);
    format!("{AUDIT}{nanos:020}")
}

/// A bootstrap token. The secret itself is never stored, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub uses: u32,
    pub used: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub revoked: bool,
    pub created_by: String,
    pub description: String,
    /// Answers already given, so a retried enrollment gets the same answer. Each is stored
    /// under its own key ([`token_enrollment_key`]) so that using a token rewrites a record
    /// of constant size; the store's record holds only answers written before that change,
    /// and [`crate::fleet::Fleet::tokens`] fills in the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrollments: Vec<TokenEnrollment>,
}

/// Key of a login code.
pub fn login_code_key(id: &str) -> String {
    format!("{LOGIN_CODES}{id}")
}

/// A one-time operator login code. Like a token, only the secret's SHA-256 is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginCodeRecord {
    pub id: String,
    pub secret_sha256: String,
    /// The operator the certificate will name, and its role.
    pub name: String,
    pub role: String,
    /// Lifetime of the certificate the login gets.
    pub cert_ttl_secs: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub created_by: String,
    /// When it was used, once.
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
}

/// One enrollment made with a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEnrollment {
    /// SHA-256 of the node key's SubjectPublicKeyInfo, hex.
    pub spki_sha256: String,
    pub node: String,
    pub cert_chain_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What a node said about itself at enrollment and at its last hello.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub machine_id: String,
    pub arch: String,
    pub agent_version: String,
}

/// Whether a node may still authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Active,
    Revoked,
}

/// An enrolled node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub facts: Facts,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    pub token_id: String,
    pub state: NodeState,
    pub revoked_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Serials (hex) of the certificates this node may authenticate with, newest first.
    pub serials: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub cert_not_after: OffsetDateTime,
    /// Written at connect and disconnect only; heartbeats stay in memory.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    pub boot_id: String,
    pub remote_addr: String,
    /// Supervised state, persisted so that each transition is one event, across restarts.
    #[serde(default)]
    pub supervision: Supervision,
    /// The profile generation the node should run and what it reported of it.
    #[serde(default)]
    pub config: ConfigRecord,
    /// An operator asked the node to renew now (`opictl node rotate`); cleared by its renewal.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub rotation_requested: Option<OffsetDateTime>,
    /// An operator allowed the node to re-enroll under its name (`opictl node allow-reenroll`).
    #[serde(default)]
    pub reenroll: Option<ReenrollGrant>,
    /// Digest of the trust bundle the node's agent stored, as it last said.
    #[serde(default)]
    pub trust_bundle_digest: String,
}

/// A one-shot permission to re-enroll a node under its name, keeping its pool and history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReenrollGrant {
    /// The operator who allowed it.
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// Connectivity of a node, after the grace period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connectivity {
    Online,
    #[default]
    Offline,
}

/// Health of a node, from its last fresh report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    #[default]
    Unknown,
}

/// Status of one condition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConditionStatus {
    Ok,
    Problem,
    #[default]
    Unknown,
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    None,
    Info,
    Warning,
    Critical,
}

/// A condition as last reported by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionRecord {
    pub kind: String,
    pub subject: String,
    pub status: ConditionStatus,
    pub severity: Severity,
    pub reason: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_transition: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_observed: Option<OffsetDateTime>,
}

/// Who put a node in maintenance, why and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRecord {
    pub by: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// The supervised axes of a node and its last known conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervision {
    pub connectivity: Connectivity,
    #[serde(with = "time::serde::rfc3339::option")]
    pub connectivity_since: Option<OffsetDateTime>,
    pub health: Health,
    #[serde(with = "time::serde::rfc3339::option")]
    pub health_since: Option<OffsetDateTime>,
    pub conditions: Vec<ConditionRecord>,
    /// When the conditions were last observed, as of the last persisted report.
    #[serde(with = "time::serde::rfc3339::option")]
    pub conditions_observed_at: Option<OffsetDateTime>,
    pub maintenance: Option<MaintenanceRecord>,
}

impl ConditionRecord {
    /// `Type` or `Type:subject`: how events and filters name the condition.
    pub fn key(&self) -> String {
        if self.subject.is_empty() {
            self.kind.clone()
        } else {
            format!("{}:{}", self.kind, self.subject)
        }
    }

    /// Whether this condition makes the node degraded.
    pub fn degrades(&self) -> bool {
        self.status == ConditionStatus::Problem && self.severity >= Severity::Warning
    }
}

/// Key prefix of events.
pub const EVENTS: &str = "events/";

/// Key prefix of the last-seen times managers saved when they stopped, a few keys per manager
/// (its replica name), each holding up to a few thousand nodes.
pub const SHUTDOWNS: &str = "shutdowns/";

/// Key of part `part` of what manager `holder` saved when it last stopped.
pub fn shutdown_key(holder: &str, part: usize) -> String {
    format!("{SHUTDOWNS}{holder}/{part:06}")
}

/// Nodes whose sessions a stopping manager ended, each with when it last heard from the node
/// (Unix seconds). Times saved this way only ever move a node's last-seen time forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub stopped_at: OffsetDateTime,
    pub last_seen: BTreeMap<String, i64>,
}

/// Key of the event with `revision`; zero-padded so key order is revision order.
pub fn event_key(revision: u64) -> String {
    format!("{EVENTS}{revision:020}")
}

/// One change of a node's supervised state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub revision: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub node: String,
    pub pool: String,
    /// `connectivity`, `health`, `condition`, `flapping`, `maintenance`, `lifecycle`,
    /// `config`, `rollout` (empty `node` for a rollout event about the whole pool) or
    /// `compliance`.
    pub kind: String,
    pub subject: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub message: String,
    pub severity: Severity,
}

/// One audit entry: who did what, when, from where, with what outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Certificate identity of the caller, `token:ID` for enrollments, `local:USER` for CLI.
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// `ok` or `refused`.
    pub outcome: String,
    pub detail: String,
    pub remote_addr: String,
    /// Position in the audit chain, from 1; set by [`crate::audit::chain`] on commit, 0 for
    /// entries written before the chain existed.
    #[serde(default)]
    pub seq: u64,
    /// Hash of the entry before (hex).
    #[serde(default)]
    pub prev_hash: String,
    /// This entry's hash (hex), over its fields and `prev_hash`.
    #[serde(default)]
    pub hash: String,
}

impl AuditRecord {
    /// The fields the entry's chain hash covers.
    pub fn link(&self) -> opi_pki::chain::Link<'_> {
        opi_pki::chain::Link {
            seq: self.seq,
            prev_hash: &self.prev_hash,
            at_unix_nanos: self.at.unix_timestamp_nanos(),
            actor: &self.actor,
            action: &self.action,
            subject: &self.subject,
            outcome: &self.outcome,
            detail: &self.detail,
            remote_addr: &self.remote_addr,
        }
    }
}

impl NodeRecord {
    /// Whether `serial` is one of the certificates this node may use now.
    pub fn accepts_serial(&self, serial: &str) -> bool {
        self.state == NodeState::Active && self.serials.iter().any(|s| s == serial)
    }
}

/// A time as RFC 3339 in UTC to the second, as shown to operators.
pub fn rfc3339(at: OffsetDateTime) -> String {
    let at = at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Key prefix of profiles.
pub const PROFILES: &str = "profiles/";
/// Key of the store's epoch: bumped when a backup is restored, so that generations made after
/// a restore always rank above those made before it.
pub const EPOCH_KEY: &str = "meta/epoch";
/// Key of the last profile generation given out, fleet-wide.
pub const GENERATION_KEY: &str = "meta/generation";

/// Key prefix of the profiles of `pool`.
pub fn pool_profiles(pool: &str) -> String {
    format!("{PROFILES}{pool}/")
}

/// Key of one generation of a pool's profile; zero-padded so key order is generation order.
pub fn profile_key(pool: &str, generation: u64) -> String {
    format!("{PROFILES}{pool}/{generation:020}")
}

/// One generation of a pool's profile, as the operator gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    pub pool: String,
    /// Fleet-wide and increasing, so a node moved to another pool never sees a lower one.
    pub generation: u64,
    pub epoch: u64,
    /// The document as given, secrets included; only agents of the pool receive it whole.
    pub yaml: String,
    /// `sha256:` and the hex digest of `yaml`.
    pub digest: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    /// Signatures of `yaml` by operators' signer keys, passed on to the agents.
    #[serde(default)]
    pub signatures: Vec<SignatureRecord>,
}

/// A signature of a profile document: the signer's public key and the signature, both hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRecord {
    /// DER SubjectPublicKeyInfo, hex.
    pub public_key: String,
    /// ECDSA P-256 SHA-256, ASN.1 DER, hex.
    pub signature: String,
}

/// A profile generation as nodes compare them: epoch first, then generation.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct GenerationId {
    pub epoch: u64,
    pub generation: u64,
}

/// The config axis of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigStatus {
    /// The node's pool has no profile.
    #[default]
    None,
    /// The node has a newer generation to apply, or is applying it.
    Applying,
    /// The node runs its desired generation.
    InSync,
    /// The node refused the desired generation or rolled it back.
    Failed,
    /// What the applied generation owns changed on the node.
    Drifted,
}

/// The profile a node should run, and what it last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub status: ConfigStatus,
    /// The generation the node should run; `None` while its pool has no profile.
    pub desired: Option<GenerationId>,
    /// The last generation the node applied.
    pub applied: Option<GenerationId>,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    pub drifted: Vec<String>,
    pub reboot_required: bool,
}

impl ConfigStatus {
    /// The name operators type and read: none, applying, in-sync, failed, drifted.
    pub fn name(self) -> &'static str {
        match self {
            ConfigStatus::None => "none",
            ConfigStatus::Applying => "applying",
            ConfigStatus::InSync => "in-sync",
            ConfigStatus::Failed => "failed",
            ConfigStatus::Drifted => "drifted",
        }
    }
}
