//! Creating, listing and revoking bootstrap tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::info;

use super::{Fleet, FleetError};
use crate::audit;
use crate::records::{
    rfc3339, token_enrollments_prefix, token_key, TokenEnrollment, TokenRecord, TOKENS,
};
use crate::store::{get_json, list_json, to_json, Txn, TxnOutcome};
use crate::tokens::BootstrapToken;

/// Longest token lifetime accepted.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most uses one token may allow.
pub const MAX_TOKEN_USES: u32 = 10_000;

/// What an operator asks for.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    pub pool: String,
    pub ttl: Duration,
    pub uses: u32,
    pub labels: BTreeMap<String, String>,
    pub description: String,
}

/// A created token: its record, and the secret shown once.
#[derive(Debug)]
pub struct NewToken {
    pub record: TokenRecord,
    pub token: BootstrapToken,
}

impl TokenSpec {
    /// Every problem of the request, empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = opi_pki::identity::validate_name(&self.pool) {
            problems.push(format!("pool: {e}"));
        }
        if self.ttl.is_zero() || self.ttl > MAX_TOKEN_TTL {
            problems.push("ttl: must be more than 0 and at most 7 days".into());
        }
        if self.uses == 0 || self.uses > MAX_TOKEN_USES {
            problems.push(format!("uses: must be between 1 and {MAX_TOKEN_USES}"));
        }
        for (key, value) in &self.labels {
            if !valid_label_key(key) {
                problems.push(format!("label `{key}`: keys are 1-63 of [a-zA-Z0-9._/-]"));
            }
            if value.len() > 253 {
                problems.push(format!("label `{key}`: value longer than 253 characters"));
            }
        }
        problems
    }
}

impl Fleet {
    /// Creates a token for `spec`, on behalf of `actor`.
    pub async fn create_token(
        &self,
        spec: TokenSpec,
        actor: &str,
        from: &str,
    ) -> Result<NewToken, FleetError> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(FleetError::InvalidArgument(problems.join("; ")));
        }
        let token = BootstrapToken::generate();
        let now = OffsetDateTime::now_utc();
        let record = TokenRecord {
            id: token.id().into(),
            secret_sha256: token.secret_sha256(),
            pool: spec.pool,
            labels: spec.labels,
            uses: spec.uses,
            used: 0,
            created_at: now,
            expires_at: now + spec.ttl,
            revoked: false,
            created_by: actor.into(),
            description: spec.description,
            enrollments: Vec::new(),
        };
        let entry = audit::Entry::ok(actor, "token.create", &record.id, from).detail(format!(
            "pool {}, {} use(s), expires {}",
            record.pool,
            record.uses,
            rfc3339(record.expires_at)
        ));
        let txn = Txn::new()
            .when_absent(token_key(&record.id))
            .put(token_key(&record.id), to_json(&record));
        match self.store.txn(entry.into_txn(txn)).await? {
            TxnOutcome::Committed(_) => {}
            TxnOutcome::Conflict { key } => return Err(FleetError::Conflict { what: key }),
        }
        info!(token = %record.id, pool = %record.pool, uses = record.uses, actor, "bootstrap token created");
        Ok(NewToken { record, token })
    }

    /// Every token, oldest first, with every enrollment made with it.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, FleetError> {
        let mut tokens: Vec<TokenRecord> = list_json::<TokenRecord>(self.store(), TOKENS)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect();
        for token in &mut tokens {
            let prefix = token_enrollments_prefix(&token.id);
            let answers = list_json::<TokenEnrollment>(self.store(), &prefix).await?;
            token
                .enrollments
                .extend(answers.into_iter().map(|v| v.value));
            token.enrollments.sort_by_key(|e| e.at);
        }
        tokens.sort_by_key(|t| t.created_at);
        Ok(tokens)
    }

    /// Revokes a token so it can no longer enroll anything.
    pub async fn revoke_token(
        &self,
        id: &str,
        actor: &str,
        from: &str,
    ) -> Result<TokenRecord, FleetError> {
        let key = token_key(id);
        let current = get_json::<TokenRecord>(self.store(), &key)
            .await?
            .ok_or_else(|| FleetError::NoSuchToken { id: id.into() })?;
        let mut record = current.value;
        record.revoked = true;
        let txn = Txn::new()
            .when_revision(&key, current.mod_revision)
            .put(&key, to_json(&record));
        let txn = audit::Entry::ok(actor, "token.revoke", id, from).into_txn(txn);
        match self.store.txn(txn).await? {
            TxnOutcome::Committed(_) => {}
            TxnOutcome::Conflict { key } => return Err(FleetError::Conflict { what: key }),
        }
        info!(token = %id, actor, "bootstrap token revoked");
        Ok(record)
    }
}

fn valid_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 63
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}
