//! The manager's data directory: its configuration, CA material, store and run files.
//!
//! ```text
//! DIR/manager.toml          fleet, replica, listen address, advertised endpoints
//! DIR/pki/root-ca.pem       fleet root CA (agents pin its key)
//! DIR/pki/root-ca.key       root key, 0600; may be moved offline after init
//! DIR/pki/issuing-ca.pem    this replica's issuing CA, signed by the root
//! DIR/pki/issuing-ca.key    0600
//! DIR/pki/server.pem        server certificate + issuing CA
//! DIR/pki/server.key        0600
//! DIR/pki/trust-bundle.pem  roots the fleet trusts
//! DIR/pki/next/             the next root and issuing CA while a CA rollover distributes them
//! DIR/pki/retired/          CAs a rollover replaced
//! DIR/fleet.db              embedded SQLite store (default)
//! DIR/opictl-admin.toml     admin operator bundle written by init, 0600
//! DIR/run/listen-addr       address actually bound by `serve` (useful with port 0)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use opi_pki::ca::CertifiedKey;
use opi_pki::files::{self, FileError};
use opi_pki::{CaPin, Issuer, SecretPem};
use serde::{Deserialize, Serialize};

/// Version of `manager.toml` this binary writes and reads.
pub const CONFIG_VERSION: u32 = 1;
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path} not found: is this a manager data directory? create one with `opi-manager init --data-dir DIR --fleet NAME`")]
    NotInitialised { path: PathBuf },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} is not a valid manager configuration")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path} is invalid: {problems}")]
    InvalidConfig { path: PathBuf, problems: String },
    #[error("CA material in {path} is unusable")]
    Ca {
        path: PathBuf,
        #[source]
        source: opi_pki::ca::CaError,
    },
    #[error("the fleet root CA in {path} is unreadable")]
    Pin {
        path: PathBuf,
        #[source]
        source: opi_pki::pin::PinError,
    },
    #[error("the fleet root CA in {path} is unreadable")]
    Tls {
        path: PathBuf,
        #[source]
        source: opi_pki::tls::TlsError,
    },
}

/// `manager.toml`, written by `opi-manager init` in the data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// Format version: 1.
    pub version: u32,
    /// The fleet's name, in every identity it issues (`spiffe://FLEET/…`).
    pub fleet: String,
    /// This replica's name, in its identity (`spiffe://FLEET/manager/REPLICA`).
    pub replica: String,
    /// Address `serve` listens on unless `--listen` is given (`HOST:PORT`).
    pub listen: String,
    /// URLs agents and operators use to reach this manager; empty means the listen address.
    #[serde(default)]
    pub advertise: Vec<String>,
}

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

/// What the manager signs and verifies with, loaded from the data directory.
pub struct Authority {
    pub fleet: String,
    pub replica: String,
    pub issuer: std::sync::Arc<Issuer>,
    pub trust_bundle_pem: String,
    pub pin: CaPin,
    pub server_chain_pem: String,
    pub server_key: SecretPem,
}

impl DataDir {
    /// A data directory at `root` (not checked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("manager.toml")
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn root_ca_cert(&self) -> PathBuf {
        self.pki().join("root-ca.pem")
    }
    pub fn issuing_ca_cert(&self) -> PathBuf {
        self.pki().join("issuing-ca.pem")
    }
    pub fn issuing_ca_key(&self) -> PathBuf {
        self.pki().join("issuing-ca.key")
    }
    pub fn server_chain(&self) -> PathBuf {
        self.pki().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.pki().join("server.key")
    }
    pub fn trust_bundle(&self) -> PathBuf {
        self.pki().join("trust-bundle.pem")
    }
    /// The next root and issuing CA of a rollover in progress (`opi-manager ca rotate`).
    pub fn next_pki(&self) -> PathBuf {
        self.pki().join("next")
    }
    /// CAs a rollover replaced, kept for the record.
    pub fn retired_pki(&self) -> PathBuf {
        self.pki().join("retired")
    }
    pub fn admin_bundle(&self) -> PathBuf {
        self.root.join("opictl-admin.toml")
    }
    pub fn listen_addr_file(&self) -> PathBuf {
        self.root.join("run").join("listen-addr")
    }

    /// The default store URL: SQLite inside the data directory.
    pub fn default_store_url(&self) -> String {
        format!("sqlite:{}", self.root.join("fleet.db").display())
    }

    /// Reads and validates `manager.toml`.
    pub fn load_config(&self) -> Result<ManagerConfig, DataDirError> {
        let path = self.config();
        if !path.exists() {
            return Err(DataDirError::NotInitialised { path });
        }
        let text = files::read_text(&path)?;
        let config: ManagerConfig =
            toml::from_str(&text).map_err(|source| DataDirError::ParseConfig {
                path: path.clone(),
                source,
            })?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(DataDirError::InvalidConfig {
                path,
                problems: problems.join("; "),
            });
        }
        Ok(config)
    }

    /// Loads the issuing CA, the trust bundle and the server credentials.
    pub fn load_authority(&self, config: &ManagerConfig) -> Result<Authority, DataDirError> {
        let issuing = CertifiedKey {
            cert_pem: self.read_existing(&self.issuing_ca_cert())?,
            key_pem: SecretPem::new(self.read_existing_secret(&self.issuing_ca_key())?),
        };
        let issuer = Issuer::new(&config.fleet, &issuing).map_err(|source| DataDirError::Ca {
            path: self.issuing_ca_cert(),
            source,
        })?;
        let trust_bundle_pem = self.read_existing(&self.trust_bundle())?;
        // The root that signs the issuing CA, which may be the second root of the bundle
        // during a CA rollover.
        let pin = match std::fs::read_to_string(self.root_ca_cert()) {
            Ok(root) => root_pin(&root, &self.root_ca_cert())?,
            Err(_) => root_pin(&trust_bundle_pem, &self.trust_bundle())?,
        };
        Ok(Authority {
            fleet: config.fleet.clone(),
            replica: config.replica.clone(),
            issuer: std::sync::Arc::new(issuer),
            trust_bundle_pem,
            pin,
            server_chain_pem: self.read_existing(&self.server_chain())?,
            server_key: SecretPem::new(self.read_existing_secret(&self.server_key())?),
        })
    }

    fn read_existing(&self, path: &Path) -> Result<String, DataDirError> {
        if !path.exists() {
            return Err(DataDirError::NotInitialised {
                path: path.to_path_buf(),
            });
        }
        Ok(files::read_text(path)?)
    }

    fn read_existing_secret(&self, path: &Path) -> Result<String, DataDirError> {
        if !path.exists() {
            return Err(DataDirError::NotInitialised {
                path: path.to_path_buf(),
            });
        }
        Ok(files::read_secret(path)?)
    }
}

impl ManagerConfig {
    /// Every problem of the configuration, empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.version != CONFIG_VERSION {
            problems.push(format!(
                "version: {} is not supported, expected {CONFIG_VERSION}",
                self.version
            ));
        }
        if let Err(e) = opi_pki::identity::validate_name(&self.fleet) {
            problems.push(format!("fleet: {e}"));
        }
        if let Err(e) = opi_pki::identity::validate_name(&self.replica) {
            problems.push(format!("replica: {e}"));
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!("listen: `{}` is not ADDRESS:PORT", self.listen));
        }
        for url in &self.advertise {
            if opi_pki::channel::host_port(url).is_err() {
                problems.push(format!(
                    "advertise: `{url}` is not an https://HOST:PORT URL"
                ));
            }
        }
        problems
    }
}

/// Endpoints to hand to agents and operators: the advertised ones, else one built from the
/// bound address (a wildcard address is replaced by the host name).
pub fn endpoints(advertise: &[String], bound: SocketAddr) -> Vec<String> {
    if !advertise.is_empty() {
        return advertise.to_vec();
    }
    let host = if bound.ip().is_unspecified() {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into())
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    vec![format!("https://{host}:{}", bound.port())]
}

fn root_pin(bundle_pem: &str, path: &Path) -> Result<CaPin, DataDirError> {
    let certs = opi_pki::tls::parse_certs(bundle_pem, "trust bundle").map_err(|source| {
        DataDirError::Tls {
            path: path.to_path_buf(),
            source,
        }
    })?;
    CaPin::of_cert_der(&certs[0]).map_err(|source| DataDirError::Pin {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ManagerConfig {
        ManagerConfig {
            version: 1,
            fleet: "prod".into(),
            replica: "m1".into(),
            listen: "127.0.0.1:7443".into(),
            advertise: vec![],
        }
    }

    #[test]
    fn valid_config_has_no_problems() {
        assert!(config().problems().is_empty());
    }

    #[test]
    fn invalid_config_lists_every_problem() {
        let bad = ManagerConfig {
            version: 9,
            fleet: "Prod".into(),
            listen: "nowhere".into(),
            advertise: vec!["http://x".into()],
            ..config()
        };
        let problems = bad.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn endpoints_prefer_advertised_then_bound_address() {
        let bound: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            endpoints(&[], bound),
            vec!["https://127.0.0.1:9000".to_string()]
        );
        let adv = vec!["https://m.example:7443".to_string()];
        assert_eq!(endpoints(&adv, bound), adv);
    }
}
