//! Enrollment: a bootstrap token and a CSR in, a node certificate out.
//!
//! The token is read from the store on every attempt and consumed with a compare-and-swap in
//! the same transaction that records the node and the audit entry, so a single-use token can
//! never enroll two nodes and a refused attempt changes nothing but the audit log. Enrollments
//! through the same token at the same time are committed together (see [`super::lanes`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use opi_pki::csr::check_node_csr;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::lanes::Claim;
use super::{Fleet, FleetError};
use crate::audit;
use crate::records::{
    node_key, rfc3339, token_enrollment_key, token_key, ConfigRecord, Facts, NodeRecord, NodeState,
    Supervision, TokenEnrollment, TokenRecord,
};
use crate::store::{get_json, to_json, Revision, Txn, TxnOutcome, Versioned};
use crate::tokens::BootstrapToken;

/// An enrollment request, as received.
#[derive(Clone, Debug)]
pub struct EnrollInput {
    /// The presented token; never logged.
    pub token: String,
    pub csr_der: Vec<u8>,
    /// Requested name; empty means the node's host name.
    pub name: String,
    /// The node asks to take back its name (`opi-agent enroll --reenroll`).
    pub reenroll: bool,
    pub facts: Facts,
    pub remote: SocketAddr,
}

/// A granted enrollment.
#[derive(Clone, Debug)]
pub struct EnrollOutput {
    pub node: String,
    pub pool: String,
    pub cert_chain_pem: String,
}

impl Fleet {
    /// Enrolls a node, or says precisely why not. Refusals are audited and rate-limited.
    pub async fn enroll(self: &Arc<Self>, input: EnrollInput) -> Result<EnrollOutput, FleetError> {
        let ip = input.remote.ip();
        if !self
            .limiter
            .lock()
            .expect("limiter lock poisoned")
            .allows(ip, Instant::now())
        {
            warn!(remote = %input.remote, "enrollment refused: too many failed attempts");
            let refusal = FleetError::TooManyFailures {
                addr: ip.to_string(),
            };
            self.counters.count_enrollment(Some(&refusal));
            let first = self
                .limiter
                .lock()
                .expect("limiter lock poisoned")
                .refuse(ip);
            if first {
                let remote = input.remote.to_string();
                let (actor, subject) = (token_actor(&input.token), requested_name(&input));
                let why = format!("{refusal} (later refusals in this minute are not audited)");
                audit::Entry::refused(&actor, "node.enroll", &subject, &remote, &why)
                    .write(self.store())
                    .await;
            }
            return Err(refusal);
        }
        let result = self.try_enroll(&input).await;
        self.counters.count_enrollment(result.as_ref().err());
        if let Err(error) = &result {
            if error.is_failed_attempt() {
                self.limiter
                    .lock()
                    .expect("limiter lock poisoned")
                    .record_failure(ip, Instant::now());
            }
            let actor = token_actor(&input.token);
            let subject = requested_name(&input);
            warn!(remote = %input.remote, %actor, node = %subject, error = %error, "enrollment refused");
            audit::Entry::refused(
                &actor,
                "node.enroll",
                &subject,
                &input.remote.to_string(),
                &error.to_string(),
            )
            .write(self.store())
            .await;
        }
        result
    }

    async fn try_enroll(self: &Arc<Self>, input: &EnrollInput) -> Result<EnrollOutput, FleetError> {
        let token: BootstrapToken = input.token.parse()?;
        // The token is checked before anything else, so that guessing costs a failed attempt.
        let first = self.load_token(&token).await?.value;
        let name = requested_name(input);
        opi_pki::identity::validate_name(&name).map_err(|source| FleetError::InvalidName {
            what: "node name",
            source,
        })?;
        // Before anything is written: a refused agent version leaves the token's uses intact.
        crate::versions::check(&input.facts.agent_version).map_err(|refused| {
            FleetError::UnsupportedAgent {
                node: name.clone(),
                refused,
            }
        })?;
        let csr = check_node_csr(&input.csr_der, self.fleet_name(), &name)?;
        let spki_sha256 = data_encoding::HEXLOWER.encode(&Sha256::digest(&csr.spki_der));
        if let Some(previous) = self.previous_answer(&first, &spki_sha256).await? {
            return self.answer_retry(&first, &previous, input).await;
        }
        check_token_usable(&first)?;
        if input.reenroll {
            return self.reenroll(&token, &name, &csr, spki_sha256, input).await;
        }
        self.check_name_free(&name)?;

        // Signed once, outside the compare-and-swap loop, so that the loop's window between
        // reading the token and committing its new use count stays short.
        let issued =
            self.trust()
                .issuer
                .issue_node(&name, &csr.public_key, self.settings.node_cert_ttl)?;
        let answer = TokenEnrollment {
            spki_sha256,
            node: name.clone(),
            cert_chain_pem: issued.chain_pem.clone(),
            at: OffsetDateTime::now_utc(),
        };
        let claim = Claim {
            token,
            answer,
            issued,
            input: input.clone(),
        };
        self.claim_token_use(claim).await
    }

    /// Commits one use of the claim's token on its own, reading the token again after each
    /// conflict: the path of a claim that could not be committed with others.
    pub(super) async fn commit_alone(&self, claim: &Claim) -> Result<EnrollOutput, FleetError> {
        let Claim {
            token,
            answer,
            issued,
            input,
        } = claim;
        for _ in 0..super::CAS_ATTEMPTS {
            let current = self.load_token(token).await?;
            if let Some(previous) = self
                .previous_answer(&current.value, &answer.spki_sha256)
                .await?
            {
                return self.answer_retry(&current.value, &previous, input).await;
            }
            check_token_usable(&current.value)?;
            if let Some(granted) = self
                .commit_enrollment(current, answer, issued, input)
                .await?
            {
                return Ok(granted);
            }
        }
        Err(FleetError::Conflict {
            what: format!("bootstrap token {}", token.id()),
        })
    }

    /// Refuses a name that an enrolled node already has.
    fn check_name_free(&self, name: &str) -> Result<(), FleetError> {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        if nodes.contains_key(name) {
            return Err(FleetError::NameTaken { name: name.into() });
        }
        Ok(())
    }

    /// The answer already given with `token` to the key `spki_sha256`, if any.
    pub(super) async fn previous_answer(
        &self,
        token: &TokenRecord,
        spki_sha256: &str,
    ) -> Result<Option<TokenEnrollment>, FleetError> {
        // Records written before answers had keys of their own still hold them inline.
        if let Some(legacy) = token
            .enrollments
            .iter()
            .find(|e| e.spki_sha256 == spki_sha256)
        {
            return Ok(Some(legacy.clone()));
        }
        let key = token_enrollment_key(&token.id, spki_sha256);
        Ok(get_json::<TokenEnrollment>(self.store(), &key)
            .await?
            .map(|v| v.value))
    }

    /// Commits one use of `token`, the node and the answer in one transaction; `None` when
    /// the token changed since it was read, so that the caller reads it again.
    async fn commit_enrollment(
        &self,
        token: Versioned<TokenRecord>,
        answer: &TokenEnrollment,
        issued: &opi_pki::IssuedCert,
        input: &EnrollInput,
    ) -> Result<Option<EnrollOutput>, FleetError> {
        let (record, name) = (token.value, &answer.node);
        let mut used = record.clone();
        used.used += 1;
        let key = token_key(&record.id);
        let txn = Txn::new()
            .when_revision(&key, token.mod_revision)
            .put(&key, to_json(&used));
        let (txn, node) = add_enrollment(txn, &record, answer, issued, input);
        match self.store.txn(txn).await? {
            TxnOutcome::Committed(revision) => Ok(Some(self.granted(node, revision, answer))),
            TxnOutcome::Conflict { key } if key == node_key(name) => {
                Err(FleetError::NameTaken { name: name.clone() })
            }
            TxnOutcome::Conflict { .. } => {
                debug!(token = %record.id, node = %name, "token changed since it was read; reading it again");
                Ok(None)
            }
        }
    }

    /// Takes a committed enrollment into memory and builds its answer.
    pub(super) fn granted(
        &self,
        node: NodeRecord,
        revision: Revision,
        answer: &TokenEnrollment,
    ) -> EnrollOutput {
        let (name, pool) = (node.name.clone(), node.pool.clone());
        info!(node = %name, pool = %pool, token = %node.token_id, remote = %node.remote_addr, "node enrolled");
        self.replace_record(node, revision);
        EnrollOutput {
            node: name,
            pool,
            cert_chain_pem: answer.cert_chain_pem.clone(),
        }
    }

    /// Reads a token and checks its secret and revocation.
    pub(super) async fn load_token(
        &self,
        token: &BootstrapToken,
    ) -> Result<Versioned<TokenRecord>, FleetError> {
        let current = get_json::<TokenRecord>(self.store(), &token_key(token.id()))
            .await?
            .ok_or_else(|| FleetError::UnknownToken {
                id: token.id().into(),
            })?;
        check_token(token, &current.value)?;
        Ok(current)
    }

    /// Answers a retried enrollment (same token, same key) with the certificate already issued.
    pub(super) async fn answer_retry(
        &self,
        token: &TokenRecord,
        previous: &TokenEnrollment,
        input: &EnrollInput,
    ) -> Result<EnrollOutput, FleetError> {
        let node = self.node(&previous.node)?;
        if node.record.state == NodeState::Revoked {
            let reason = node.record.revoked_reason.unwrap_or_default();
            return Err(FleetError::NodeRevoked {
                name: previous.node.clone(),
                reason,
            });
        }
        audit::Entry::ok(
            &token_actor(&input.token),
            "node.enroll",
            &previous.node,
            &input.remote.to_string(),
        )
        .detail("retry with the same key: same certificate returned, no token use consumed")
        .write(self.store())
        .await;
        info!(node = %previous.node, token = %token.id, "enrollment retried; same answer returned");
        Ok(EnrollOutput {
            node: previous.node.clone(),
            pool: token.pool.clone(),
            cert_chain_pem: previous.cert_chain_pem.clone(),
        })
    }
}

fn check_token(token: &BootstrapToken, record: &TokenRecord) -> Result<(), FleetError> {
    if !token.matches(&record.secret_sha256) {
        return Err(FleetError::TokenSecretMismatch {
            id: record.id.clone(),
        });
    }
    if record.revoked {
        return Err(FleetError::TokenRevoked {
            id: record.id.clone(),
        });
    }
    Ok(())
}

pub(super) fn check_token_usable(record: &TokenRecord) -> Result<(), FleetError> {
    if OffsetDateTime::now_utc() >= record.expires_at {
        return Err(FleetError::TokenExpired {
            id: record.id.clone(),
            at: record.expires_at,
        });
    }
    if record.used >= record.uses {
        return Err(FleetError::TokenUsedUp {
            id: record.id.clone(),
            uses: record.uses,
        });
    }
    Ok(())
}

/// Adds to `txn` what one granted use of `token` writes, with its compares: the node record,
/// the answer kept for retries and the audit entry. Returns the node record written.
pub(super) fn add_enrollment(
    txn: Txn,
    token: &TokenRecord,
    answer: &TokenEnrollment,
    issued: &opi_pki::IssuedCert,
    input: &EnrollInput,
) -> (Txn, NodeRecord) {
    let name = &answer.node;
    let node = new_node_record(name, token, input, issued, answer.at);
    let answer_key = token_enrollment_key(&token.id, &answer.spki_sha256);
    let txn = txn
        .when_absent(node_key(name))
        .when_absent(&answer_key)
        .put(&answer_key, to_json(answer))
        .put(node_key(name), to_json(&node));
    let entry = audit::Entry::ok(
        &token_actor(&input.token),
        "node.enroll",
        name,
        &input.remote.to_string(),
    )
    .detail(format!(
        "pool {}, serial {}, until {}",
        token.pool,
        issued.serial,
        rfc3339(issued.not_after)
    ));
    (entry.into_txn(txn), node)
}

fn new_node_record(
    name: &str,
    token: &TokenRecord,
    input: &EnrollInput,
    issued: &opi_pki::IssuedCert,
    now: OffsetDateTime,
) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        pool: token.pool.clone(),
        labels: token.labels.clone(),
        facts: input.facts.clone(),
        enrolled_at: now,
        token_id: token.id.clone(),
        state: NodeState::Active,
        revoked_reason: None,
        revoked_at: None,
        serials: vec![issued.serial.clone()],
        cert_not_after: issued.not_after,
        last_seen: None,
        boot_id: String::new(),
        remote_addr: input.remote.to_string(),
        supervision: Supervision {
            connectivity_since: Some(now),
            health_since: Some(now),
            ..Supervision::default()
        },
        config: ConfigRecord::default(),
        rotation_requested: None,
        reenroll: None,
        trust_bundle_digest: String::new(),
    }
}

/// The name a request asks for: explicit, else the host name in lowercase.
fn requested_name(input: &EnrollInput) -> String {
    if input.name.is_empty() {
        input.facts.hostname.to_lowercase()
    } else {
        input.name.clone()
    }
}

/// Audit actor of an enrollment: the token id, never its secret.
pub(super) fn token_actor(token: &str) -> String {
    match token.parse::<BootstrapToken>() {
        Ok(token) => format!("token:{}", token.id()),
        Err(_) => "token:malformed".into(),
    }
}
