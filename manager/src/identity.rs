//! The manager's own certificates: its server certificate renews itself before it expires,
//! swapped into the running TLS listener without a restart, and the issuing and root CAs raise
//! warnings (log, `opictl status`, metric, alert) long before theirs.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use opi_pki::files::{write_public, write_secret, FileError};
use opi_pki::serving::{CertFacts, ServingCert};
use opi_pki::tls::TlsError;
use opi_pki::Issuer;
use time::OffsetDateTime;
use tracing::{error, info, info_span, warn, Instrument};

use crate::datadir::DataDir;

/// Default warning threshold of the issuing and root CAs' expiry.
pub const DEFAULT_CA_EXPIRY_WARNING: Duration = Duration::from_secs(180 * 24 * 3600);
/// The server certificate renews when less than this fraction of its life is left.
pub const SERVER_RENEW_LEFT: f64 = 1.0 / 3.0;
/// Longest interval between two checks of the manager's certificates.
const CHECK_EVERY: Duration = Duration::from_secs(60);
/// Interval between two log warnings about an expiring CA.
const CA_WARN_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Why the manager's certificates could not be read or renewed.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("the {what} in the data directory is unreadable")]
    Read {
        what: &'static str,
        #[source]
        source: TlsError,
    },
    #[error("cannot issue a new server certificate")]
    Issue(#[source] opi_pki::ca::CaError),
    #[error("cannot store the renewed server certificate")]
    Store(#[source] FileError),
    #[error("cannot serve the renewed server certificate")]
    Serve(#[source] TlsError),
}

/// How long one of the manager's certificates has left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// `server`, `issuing-ca` or `root-ca`.
    pub what: &'static str,
    pub subject: String,
    pub not_after: OffsetDateTime,
    /// It expires within its warning threshold.
    pub warning: bool,
}

/// The manager's server certificate (live) and CAs, with their warning thresholds.
pub struct ManagerCerts {
    dir: DataDir,
    replica: String,
    serving: Arc<ServingCert>,
    server: RwLock<CertFacts>,
    issuing: RwLock<CertFacts>,
    root: RwLock<CertFacts>,
    server_ttl: Duration,
    ca_warning: Duration,
}

impl ManagerCerts {
    /// Reads the certificates of `dir`'s PKI, `serving` presenting the server's.
    pub fn load(
        dir: &DataDir,
        replica: &str,
        serving: Arc<ServingCert>,
        server_ttl: Duration,
        ca_warning: Duration,
    ) -> Result<Self, CertsError> {
        let read = |path: std::path::PathBuf, what: &'static str| {
            let pem = std::fs::read_to_string(&path).unwrap_or_default();
            CertFacts::of_pem(&pem, what).map_err(|source| CertsError::Read { what, source })
        };
        Ok(Self {
            server: RwLock::new(read(dir.server_chain(), "server certificate")?),
            issuing: RwLock::new(read(dir.issuing_ca_cert(), "issuing CA")?),
            root: RwLock::new(read_root(dir)?),
            dir: dir.clone(),
            replica: replica.to_string(),
            serving,
            server_ttl,
            ca_warning,
        })
    }

    /// The server certificate and the CAs, with their expiry and whether it is near.
    pub fn expiries(&self, now: OffsetDateTime) -> Vec<Expiry> {
        let server = self
            .server
            .read()
            .expect("server facts lock poisoned")
            .clone();
        let issuing = self.issuing.read().expect("CA facts lock poisoned").clone();
        let root = self.root.read().expect("CA facts lock poisoned").clone();
        let near = |facts: &CertFacts, threshold: Duration| facts.not_after - now < threshold;
        vec![
            Expiry {
                what: "server",
                warning: server.past(SERVER_RENEW_LEFT, now),
                subject: server.subject.clone(),
                not_after: server.not_after,
            },
            Expiry {
                what: "issuing-ca",
                warning: near(&issuing, self.ca_warning),
                subject: issuing.subject,
                not_after: issuing.not_after,
            },
            Expiry {
                what: "root-ca",
                warning: near(&root, self.ca_warning),
                subject: root.subject,
                not_after: root.not_after,
            },
        ]
    }

    /// Renews the server certificate if a third of its life or less is left: a fresh key, the
    /// same names, stored in the data directory, then served from the next handshake on.
    pub fn renew_server_if_due(
        &self,
        issuer: &Issuer,
        now: OffsetDateTime,
    ) -> Result<bool, CertsError> {
        let current = self
            .server
            .read()
            .expect("server facts lock poisoned")
            .clone();
        if !current.past(SERVER_RENEW_LEFT, now) {
            return Ok(false);
        }
        self.renew_server(issuer)?;
        Ok(true)
    }

    /// Renews the server certificate now, from `issuer`.
    pub fn renew_server(&self, issuer: &Issuer) -> Result<(), CertsError> {
        let current = self
            .server
            .read()
            .expect("server facts lock poisoned")
            .clone();
        let (issued, key) = issuer
            .issue_server(&self.replica, &current.host_names, self.server_ttl)
            .map_err(CertsError::Issue)?;
        // The key first: a crash between the two writes leaves a pair the next start refuses
        // loudly rather than one that silently fails handshakes.
        write_secret(&self.dir.server_key(), key.expose().as_bytes()).map_err(CertsError::Store)?;
        write_public(&self.dir.server_chain(), issued.chain_pem.as_bytes())
            .map_err(CertsError::Store)?;
        self.serving
            .replace(&issued.chain_pem, &key)
            .map_err(CertsError::Serve)?;
        let facts =
            CertFacts::of_pem(&issued.chain_pem, "server certificate").map_err(|source| {
                CertsError::Read {
                    what: "server certificate",
                    source,
                }
            })?;
        *self.server.write().expect("server facts lock poisoned") = facts;
        info!(serial = %issued.serial, not_after = %crate::records::rfc3339(issued.not_after), previous_not_after = %crate::records::rfc3339(current.not_after), "server certificate renewed");
        Ok(())
    }

    /// The client verifier of the manager's port.
    pub fn client_auth(&self) -> &Arc<opi_pki::tls::ClientAuth> {
        self.serving.client_auth()
    }

    /// Serves the server certificate followed by the roots now trusted.
    pub fn refresh_roots(&self) -> Result<(), TlsError> {
        self.serving.refresh_roots()
    }

    /// Reads the issuing and root CAs again, after a rollover switched them.
    pub fn reload_cas(&self, dir: &DataDir) -> Result<(), CertsError> {
        let pem = std::fs::read_to_string(dir.issuing_ca_cert()).unwrap_or_default();
        let issuing = CertFacts::of_pem(&pem, "issuing CA").map_err(|source| CertsError::Read {
            what: "issuing CA",
            source,
        })?;
        *self.issuing.write().expect("CA facts lock poisoned") = issuing;
        *self.root.write().expect("CA facts lock poisoned") = read_root(dir)?;
        Ok(())
    }

    /// How often to check: a tenth of the server certificate's life, at most a minute.
    fn check_every(&self) -> Duration {
        let server = self.server.read().expect("server facts lock poisoned");
        let lifetime: Duration = (server.not_after - server.not_before)
            .try_into()
            .unwrap_or(CHECK_EVERY);
        (lifetime / 10).clamp(Duration::from_millis(200), CHECK_EVERY)
    }
}

/// The root that signs the issuing CA: `root-ca.pem`, else the bundle's first root.
fn read_root(dir: &DataDir) -> Result<CertFacts, CertsError> {
    let pem = std::fs::read_to_string(dir.root_ca_cert())
        .or_else(|_| std::fs::read_to_string(dir.trust_bundle()))
        .unwrap_or_default();
    CertFacts::of_pem(&pem, "root CA").map_err(|source| CertsError::Read {
        what: "root CA",
        source,
    })
}

/// Renews the server certificate when due, follows CA rollovers and warns about expiring
/// CAs, until aborted.
pub async fn watch(fleet: Arc<crate::fleet::Fleet>) {
    let span = info_span!("manager_certificates");
    async move {
        let certs = fleet.manager_certs();
        let mut last_ca_warning: Option<std::time::Instant> = None;
        loop {
            let now = OffsetDateTime::now_utc();
            if let Err(failure) = certs.renew_server_if_due(&fleet.trust().issuer, now) {
                let error = anyhow::Error::from(failure);
                error!(
                    error = format!("{error:#}"),
                    "cannot renew the server certificate; it is retried at the next check"
                );
            }
            if let Err(failure) = crate::rollover::follow(&fleet, &certs.dir).await {
                let error = anyhow::Error::from(failure);
                error!(
                    error = format!("{error:#}"),
                    "cannot follow the CA rollover; retried at the next check"
                );
            }
            let due = last_ca_warning.is_none_or(|at| at.elapsed() >= CA_WARN_EVERY);
            if due && warn_expiring_cas(&certs.expiries(now)) {
                last_ca_warning = Some(std::time::Instant::now());
            }
            let pause = certs.check_every().min(crate::rollover::RELOAD_EVERY);
            tokio::time::sleep(pause).await;
        }
    }
    .instrument(span)
    .await
}

/// Logs a warning per CA that expires within its threshold; whether any did.
fn warn_expiring_cas(expiries: &[Expiry]) -> bool {
    let mut warned = false;
    for expiry in expiries.iter().filter(|e| e.warning && e.what != "server") {
        warn!(ca = expiry.what, subject = %expiry.subject, not_after = %crate::records::rfc3339(expiry.not_after), "a fleet CA expires soon; roll it over before then (docs/ca-rollover.md)");
        warned = true;
    }
    warned
}
