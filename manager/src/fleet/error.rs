//! What can go wrong in fleet operations, worded for the caller who must act on it.

use time::OffsetDateTime;

use crate::store::StoreError;

/// A fleet operation that was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    MalformedToken(#[from] crate::tokens::MalformedToken),
    #[error("bootstrap token {id} is unknown; create one with `opictl token create`")]
    UnknownToken { id: String },
    #[error("bootstrap token {id} has a wrong secret; copy the whole token again from `opictl token create`")]
    TokenSecretMismatch { id: String },
    #[error("bootstrap token {id} was revoked; create a new one with `opictl token create`")]
    TokenRevoked { id: String },
    #[error("bootstrap token {id} expired at {}; create a new one with `opictl token create`", crate::records::rfc3339(*at))]
    TokenExpired { id: String, at: OffsetDateTime },
    #[error("bootstrap token {id} is used up ({uses} of {uses} uses); create a new one with `opictl token create`")]
    TokenUsedUp { id: String, uses: u32 },
    #[error("too many failed enrollment attempts from {addr}; wait a minute before trying again")]
    TooManyFailures { addr: String },
    #[error("invalid CSR: {0}")]
    BadCsr(#[from] opi_pki::csr::CsrError),
    #[error("invalid {what}: {source}")]
    InvalidName {
        what: &'static str,
        #[source]
        source: opi_pki::identity::IdentityError,
    },
    #[error("node name {name} is already enrolled; pick another --name, or free it with `opictl node remove {name}`")]
    NameTaken { name: String },
    #[error("node {name} is not enrolled in this fleet")]
    UnknownNode { name: String },
    #[error("node {name} was revoked ({reason}); to bring it back, `opictl node remove {name}` and enroll it again with a new token")]
    NodeRevoked { name: String, reason: String },
    #[error("certificate {serial} is not a current certificate of node {name} (renewed, or the node was removed); re-enroll the node")]
    StaleCertificate { name: String, serial: String },
    #[error("the certificate of node {name} expired at {} and the manager renews expired certificates only within {} of their expiry; an operator must run `opictl node allow-reenroll {name}`, then re-enroll the node with `opi-agent enroll --reenroll --token-file FILE` and a new token", crate::records::rfc3339(*expired_at), humantime::format_duration(*window))]
    ExpiredPastWindow {
        name: String,
        expired_at: OffsetDateTime,
        window: std::time::Duration,
    },
    #[error("node {name} is already enrolled and no operator allowed it to re-enroll; an operator must run `opictl node allow-reenroll {name}` first{}", reenroll_hint(expired_at))]
    ReenrollNotAllowed {
        name: String,
        /// Until when an earlier permission lasted, if one ran out.
        expired_at: Option<OffsetDateTime>,
    },
    #[error("{0}")]
    RotateSelection(String),
    #[error("profile for pool {pool} refused, nothing stored: no signer key this fleet's agents pinned signed it; sign it with `opictl profile set {pool} -f FILE --sign-key KEY`")]
    UnsignedProfile { pool: String },
    #[error("this call needs a client certificate: an operator bundle (`opictl --config`) or an enrolled node's certificate")]
    NoClientCertificate,
    #[error("{0}")]
    CertificateRefused(String),
    #[error("this call needs {expected} certificate, but the caller presented {got}")]
    WrongIdentity { expected: &'static str, got: String },
    #[error("role {role} may not {action}; ask an admin for a bundle with a role that may (see the role table in the README)")]
    Forbidden { role: String, action: &'static str },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("bootstrap token {id} does not exist")]
    NoSuchToken { id: String },
    #[error("profile for pool {pool} refused, nothing stored:\n{problems}")]
    InvalidProfile { pool: String, problems: String },
    #[error("pool {pool} has no profile{}; set one with `opictl profile set {pool} -f FILE`", generation_suffix(*generation))]
    UnknownProfile { pool: String, generation: u64 },
    #[error("rollout strategy for pool {pool} refused, nothing stored: {problems}")]
    InvalidStrategy { pool: String, problems: String },
    #[error("no rollout for pool {pool}; `opictl profile set {pool} -f FILE` starts one")]
    NoRollout { pool: String },
    #[error("the rollout of pool {pool} has no previous generation to go back to (it rolled out the pool's first profile); set the profile you want with `opictl profile set {pool} -f FILE`")]
    NothingToUndo { pool: String },
    #[error("cannot {action} the rollout of pool {pool}: it is {state}; {hint} (`opictl rollout status {pool}` shows it)")]
    RolloutActionRefused {
        pool: String,
        action: &'static str,
        state: &'static str,
        hint: &'static str,
    },
    #[error("{what} changed concurrently; try again")]
    Conflict { what: String },
    // The refusal is part of the message, not a source: audit entries keep messages only.
    #[error("node {node} runs an agent version this manager does not accept: {refused}")]
    UnsupportedAgent {
        node: String,
        refused: crate::versions::VersionRefused,
    },
    #[error("fleet store error")]
    Store(#[from] StoreError),
    #[error("cannot issue a certificate")]
    Issue(#[from] opi_pki::ca::CaError),
    #[error("cannot sign the compliance report")]
    SignReport(#[from] opi_pki::signature::SignError),
    #[error("cannot sign the audit checkpoint")]
    SignCheckpoint(#[from] opi_pki::chain::CheckpointError),
    #[error("login code {id} is unknown, used, revoked or expired; ask an admin for a new one (`opictl operator invite`)")]
    LoginCodeRefused { id: String },
    #[error("too many failed logins from {addr}; wait a minute before trying again")]
    TooManyLoginFailures { addr: String },
}

impl FleetError {
    /// Whether the failure counts against the caller's enrollment attempts.
    pub fn is_failed_attempt(&self) -> bool {
        matches!(
            self,
            FleetError::MalformedToken(_)
                | FleetError::UnknownToken { .. }
                | FleetError::TokenSecretMismatch { .. }
                | FleetError::TokenRevoked { .. }
                | FleetError::TokenExpired { .. }
                | FleetError::TokenUsedUp { .. }
                | FleetError::LoginCodeRefused { .. }
        )
    }
}

/// Says when an earlier re-enrollment permission ran out, if one did.
fn reenroll_hint(expired_at: &Option<OffsetDateTime>) -> String {
    match expired_at {
        Some(at) => format!(
            " (the last permission ran out at {})",
            crate::records::rfc3339(*at)
        ),
        None => String::new(),
    }
}

/// " generation N", or nothing for the latest.
fn generation_suffix(generation: u64) -> String {
    match generation {
        0 => String::new(),
        n => format!(" generation {n}"),
    }
}
