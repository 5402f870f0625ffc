//! The operator bundle: one TOML file holding what `opictl` needs to reach the manager.
//!
//! ```toml
//! endpoint = "https://manager.example:7443"
//! fleet = "prod"
//! name = "alice"
//! role = "admin"
//! ca = "-----BEGIN CERTIFICATE-----..."
//! cert = "-----BEGIN CERTIFICATE-----..."
//! key = "-----BEGIN PRIVATE KEY-----..."
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::files::{self, FileError};
use crate::SecretPem;

/// An operator's endpoint, trust bundle and client credentials.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorBundle {
    /// Manager URL, `https://HOST:PORT`.
    pub endpoint: String,
    pub fleet: String,
    pub name: String,
    pub role: String,
    /// Fleet trust bundle, PEM.
    pub ca: String,
    /// Operator certificate chain, PEM.
    pub cert: String,
    /// Operator private key, PEM.
    pub key: String,
}

/// Why a bundle could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} is not a valid operator bundle")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot encode the operator bundle")]
    Encode(#[source] toml::ser::Error),
}

impl OperatorBundle {
    /// Reads a bundle, refusing one that others can read.
    pub fn read(path: &Path) -> Result<Self, BundleError> {
        let text = files::read_secret(path)?;
        toml::from_str(&text).map_err(|source| BundleError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes the bundle 0600.
    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        let text = toml::to_string(self).map_err(BundleError::Encode)?;
        files::write_secret(path, text.as_bytes())?;
        Ok(())
    }

    /// The private key, wrapped so it cannot be logged by accident.
    pub fn key(&self) -> SecretPem {
        SecretPem::new(self.key.clone())
    }
}

impl std::fmt::Debug for OperatorBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorBundle")
            .field("endpoint", &self.endpoint)
            .field("fleet", &self.fleet)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_round_trips_and_hides_key_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        let bundle = OperatorBundle {
            endpoint: "https://127.0.0.1:7443".into(),
            fleet: "f".into(),
            name: "alice".into(),
            role: "admin".into(),
            ca: "CA".into(),
            cert: "CERT".into(),
            key: "PRIVATE-KEY-MATERIAL".into(),
        };
        bundle.write(&path).unwrap();
        let back = OperatorBundle::read(&path).unwrap();
        assert_eq!(back.key, "PRIVATE-KEY-MATERIAL");
        assert!(!format!("{back:?}").contains("PRIVATE-KEY-MATERIAL"));
    }
}
