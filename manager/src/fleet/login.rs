//! Operator login: an admin makes a one-time code naming the operator, its role and its
//! certificate's lifetime; the operator's `opictl login` trades it with a CSR for a key made
//! on its own machine. The code works like a bootstrap token (`ID.SECRET`, stored hashed,
//! compared in constant time, expiring) but once only, and failed attempts count against the
//! caller's address with the enrollment failures.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opi_pki::csr::check_operator_csr;
use opi_pki::{IssuedCert, Role};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{Fleet, FleetError};
use crate::audit;
use crate::records::{login_code_key, rfc3339, LoginCodeRecord};
use crate::store::{get_json, to_json, Txn, TxnOutcome, Versioned};
use crate::tokens::BootstrapToken;

/// Longest time a login code may stay usable.
pub const MAX_CODE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a certificate got by login.
pub const DEFAULT_LOGIN_CERT_TTL: Duration = Duration::from_secs(8 * 3600);
/// Longest lifetime of a certificate got by login.
pub const MAX_LOGIN_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an admin asks for.
#[derive(Clone, Debug)]
pub struct LoginCodeSpec {
    pub name: String,
    pub role: String,
    pub ttl: Duration,
    pub cert_ttl: Duration,
}

/// A granted login.
#[derive(Debug)]
pub struct LoggedIn {
    pub name: String,
    pub role: Role,
    pub cert: IssuedCert,
}

impl LoginCodeSpec {
    /// Every problem of the request, empty when valid.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = opi_pki::identity::validate_name(&self.name) {
            problems.push(format!("name: {e}"));
        }
        if self.role.parse::<Role>().is_err() {
            problems.push(format!(
                "role `{}`: must be admin, operator, viewer or alerting",
                self.role
            ));
        }
        if self.ttl.is_zero() || self.ttl > MAX_CODE_TTL {
            problems.push("ttl: must be more than 0 and at most 24h".into());
        }
        if self.cert_ttl.is_zero() || self.cert_ttl > MAX_LOGIN_CERT_TTL {
            problems.push("cert ttl: must be more than 0 and at most 7 days".into());
        }
        problems
    }
}

impl Fleet {
    /// Makes a login code for `spec`, on behalf of `actor`.
    pub async fn create_login_code(
        &self,
        spec: LoginCodeSpec,
        actor: &str,
        from: &str,
    ) -> Result<(BootstrapToken, LoginCodeRecord), FleetError> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(FleetError::InvalidArgument(problems.join("; ")));
        }
        let code = BootstrapToken::generate();
        let now = OffsetDateTime::now_utc();
        let record = LoginCodeRecord {
            id: code.id().into(),
            secret_sha256: code.secret_sha256(),
            name: spec.name,
            role: spec.role,
            cert_ttl_secs: spec.cert_ttl.as_secs(),
            created_at: now,
            expires_at: now + spec.ttl,
            created_by: actor.into(),
            used_at: None,
        };
        let key = login_code_key(&record.id);
        let entry = audit::Entry::ok(actor, "operator.invite", &record.name, from).detail(format!(
            "code {}, role {}, certificate for {}, code expires {}",
            record.id,
            record.role,
            humantime::format_duration(spec.cert_ttl),
            rfc3339(record.expires_at)
        ));
        let txn = Txn::new().when_absent(&key).put(&key, to_json(&record));
        match self.store.txn(entry.into_txn(txn)).await? {
            TxnOutcome::Committed(_) => {}
            TxnOutcome::Conflict { key } => return Err(FleetError::Conflict { what: key }),
        }
        info!(code = %record.id, operator = %record.name, role = %record.role, actor, "login code created");
        Ok((code, record))
    }

    /// Trades a login code and a CSR for an operator certificate; every attempt is audited,
    /// refusals with their reason, and failures are rate-limited per source address.
    pub async fn login(
        &self,
        code: &str,
        csr_der: &[u8],
        remote: SocketAddr,
    ) -> Result<LoggedIn, FleetError> {
        let ip = remote.ip();
        let allowed = self
            .limiter
            .lock()
            .expect("limiter lock poisoned")
            .allows(ip, Instant::now());
        if !allowed {
            let first = self
                .limiter
                .lock()
                .expect("limiter lock poisoned")
                .refuse(ip);
            let refusal = FleetError::TooManyLoginFailures {
                addr: ip.to_string(),
            };
            if first {
                let why = format!("{refusal} (later refusals in this minute are not audited)");
                audit::Entry::refused(
                    &code_actor(code),
                    "operator.login",
                    "",
                    &remote.to_string(),
                    &why,
                )
                .write(self.store())
                .await;
            }
            return Err(refusal);
        }
        let result = self.try_login(code, csr_der, remote).await;
        if let Err(error) = &result {
            if error.is_failed_attempt() {
                self.limiter
                    .lock()
                    .expect("limiter lock poisoned")
                    .record_failure(ip, Instant::now());
            }
            let actor = code_actor(code);
            warn!(%remote, %actor, error = %error, "operator login refused");
            audit::Entry::refused(
                &actor,
                "operator.login",
                "",
                &remote.to_string(),
                &error.to_string(),
            )
            .write(self.store())
            .await;
        }
        result
    }

    async fn try_login(
        &self,
        code: &str,
        csr_der: &[u8],
        remote: SocketAddr,
    ) -> Result<LoggedIn, FleetError> {
        let code: BootstrapToken = code.parse()?;
        let current = self.usable_code(&code).await?;
        let record = current.value.clone();
        let role: Role = record
            .role
            .parse()
            .map_err(|_| FleetError::LoginCodeRefused {
                id: record.id.clone(),
            })?;
        let csr = check_operator_csr(csr_der, self.fleet_name(), &record.name)?;
        let ttl = Duration::from_secs(record.cert_ttl_secs);
        let cert =
            self.authority
                .issuer
                .issue_operator_for(&record.name, role, &csr.public_key, ttl)?;

        let mut used = record.clone();
        used.used_at = Some(OffsetDateTime::now_utc());
        let key = login_code_key(&record.id);
        let actor = opi_pki::Identity::operator(self.fleet_name(), &record.name, role).uri();
        let entry = audit::Entry::ok(&actor, "operator.login", &record.name, &remote.to_string())
            .detail(format!(
                "code {}, role {role}, serial {}, until {}",
                record.id,
                cert.serial,
                rfc3339(cert.not_after)
            ));
        let txn = Txn::new()
            .when_revision(&key, current.mod_revision)
            .put(&key, to_json(&used));
        match self.store.txn(entry.into_txn(txn)).await? {
            TxnOutcome::Committed(_) => {}
            // Another login used the code in between: this one is refused.
            TxnOutcome::Conflict { .. } => {
                return Err(FleetError::LoginCodeRefused { id: record.id })
            }
        }
        info!(operator = %record.name, %role, %remote, serial = %cert.serial, "operator logged in");
        Ok(LoggedIn {
            name: record.name,
            role,
            cert,
        })
    }

    /// The code's record if its secret matches and it is unused and unexpired. Every refusal
    /// gives the caller the same answer, so that it learns nothing about which codes exist.
    async fn usable_code(
        &self,
        code: &BootstrapToken,
    ) -> Result<Versioned<LoginCodeRecord>, FleetError> {
        let refused = || FleetError::LoginCodeRefused {
            id: code.id().into(),
        };
        let current = get_json::<LoginCodeRecord>(self.store(), &login_code_key(code.id()))
            .await?
            .ok_or_else(refused)?;
        let record = &current.value;
        let fresh = OffsetDateTime::now_utc() < record.expires_at;
        if !code.matches(&record.secret_sha256) || record.used_at.is_some() || !fresh {
            return Err(refused());
        }
        Ok(current)
    }
}

/// `login:ID` for a well-formed code, `login:?` otherwise; never the secret.
fn code_actor(code: &str) -> String {
    match code.parse::<BootstrapToken>() {
        Ok(code) => format!("login:{}", code.id()),
        Err(_) => "login:?".into(),
    }
}
