//! The node's key and certificate on disk.
//!
//! Every replacement is crash-safe, so that `node.key` always matches `node.pem`:
//! - enrollment writes the key as `node.key.pending` first and reuses it on a rerun, so a
//!   retried enrollment sends the same key and gets the same certificate back;
//! - renewal writes `node.key.next` then `node.pem.next`, then renames the key, then the
//!   certificate; [`load`] finishes or discards whatever a crash left half done.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use opi_pki::files::{self, FileError};
use opi_pki::identity::Identity;
use opi_pki::SecretPem;
use rcgen::KeyPair;
use tracing::{info, warn};

use crate::cert::{CertError, LeafInfo};
use crate::config::{AgentConfig, ConfigError};
use crate::paths::{StatePaths, STATE_DIR_MODE};

/// Everything the agent knows about itself once enrolled.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// `agent.toml`.
    pub config: AgentConfig,
    /// The node's private key, PEM.
    pub key: SecretPem,
    /// The node's certificate followed by its issuing CA, PEM.
    pub chain_pem: String,
    /// The fleet trust bundle, PEM.
    pub ca_bundle_pem: String,
    /// What the node's certificate says.
    pub leaf: LeafInfo,
}

/// Why the node's files could not be read, checked or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `agent.toml` cannot be loaded.
    #[error(transparent)]
    LoadConfig(ConfigError),
    /// `agent.toml` cannot be written.
    #[error("cannot store the agent settings")]
    StoreConfig(#[source] ConfigError),
    /// The state directory cannot be created.
    #[error("cannot create the state directory")]
    CreateStateDir(#[source] FileError),
    /// A credential file cannot be read.
    #[error("cannot read the node's credentials")]
    ReadFile(#[source] FileError),
    /// A credential file cannot be written.
    #[error("cannot write the node's credentials")]
    WriteFile(#[source] FileError),
    /// The key file holds no usable key.
    #[error("{path} does not hold a usable private key; restore it or re-enroll the node")]
    ParseKey {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// `node.pem` cannot be parsed.
    #[error("{path} does not hold a usable node certificate; restore it or re-enroll the node")]
    ParseCert {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: CertError,
    },
    /// Key and certificate do not belong together.
    #[error("the key in {key} does not match the certificate in {cert}; restore the matching pair or re-enroll the node")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The certificate names another node than `agent.toml`.
    #[error("{cert} names {got}, but {config} says this node is {expected}; restore the matching files or re-enroll the node")]
    IdentityMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The settings file.
        config: PathBuf,
        /// The identity expected.
        expected: String,
        /// The identity found.
        got: String,
    },
    /// The key could not be generated.
    #[error("cannot generate the node's key")]
    GenerateKey(#[source] opi_pki::ca::CaError),
    /// A rename failed.
    #[error("cannot rename {from} to {to}")]
    Rename {
        /// Where the token was read from.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A leftover file cannot be removed.
    #[error("cannot remove the leftover {path}")]
    Remove {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Loads the node's state, first finishing or discarding an interrupted renewal.
pub fn load(paths: &StatePaths) -> Result<NodeState, StoreError> {
    let config = AgentConfig::load(&paths.config()).map_err(StoreError::LoadConfig)?;
    recover_renewal(paths)?;

    let key = files::read_secret(&paths.node_key()).map_err(StoreError::ReadFile)?;
    let key = SecretPem::new(key);
    let chain_pem = files::read_text(&paths.node_cert()).map_err(StoreError::ReadFile)?;
    let ca_bundle_pem = files::read_text(&paths.ca_bundle()).map_err(StoreError::ReadFile)?;
    let leaf = read_leaf(&paths.node_cert(), &chain_pem)?;

    if !leaf.matches_key(&parse_key(&paths.node_key(), &key)?) {
        return Err(StoreError::KeyMismatch {
            key: paths.node_key(),
            cert: paths.node_cert(),
        });
    }
    let expected = Identity::node(&config.fleet, &config.node);
    if leaf.identity != expected {
        return Err(StoreError::IdentityMismatch {
            cert: paths.node_cert(),
            config: paths.config(),
            expected: expected.uri(),
            got: leaf.identity.uri(),
        });
    }
    Ok(NodeState {
        config,
        key,
        chain_pem,
        ca_bundle_pem,
        leaf,
    })
}

/// Reads the leaf of a PEM chain stored at `path`.
pub fn read_leaf(path: &Path, chain_pem: &str) -> Result<LeafInfo, StoreError> {
    LeafInfo::from_chain(chain_pem).map_err(|source| StoreError::ParseCert {
        path: path.to_path_buf(),
        source,
    })
}

/// The key of an enrollment in progress: the pending one if a previous attempt left it,
/// otherwise a fresh one written as `node.key.pending`. Returns whether it was reused.
pub fn pending_key(paths: &StatePaths) -> Result<(KeyPair, bool), StoreError> {
    files::create_dir(&paths.dir, STATE_DIR_MODE).map_err(StoreError::CreateStateDir)?;

    // A crash after the key was moved in place but before agent.toml was written leaves
    // `node.key` behind: it is the key the manager already certified, so take it back.
    if !paths.pending_key().exists() && paths.node_key().exists() {
        rename(&paths.node_key(), &paths.pending_key())?;
    }
    if paths.pending_key().exists() {
        let pem = files::read_secret(&paths.pending_key()).map_err(StoreError::ReadFile)?;
        let key = parse_key(&paths.pending_key(), &SecretPem::new(pem))?;
        return Ok((key, true));
    }

    let key = opi_pki::ca::generate_key().map_err(StoreError::GenerateKey)?;
    files::write_secret(&paths.pending_key(), key.serialize_pem().as_bytes())
        .map_err(StoreError::WriteFile)?;
    Ok((key, false))
}

/// Stores an enrollment's outcome: certificate, trust bundle, key, and `agent.toml` last.
pub fn commit_enrollment(
    paths: &StatePaths,
    chain_pem: &str,
    ca_bundle_pem: &str,
    config: &AgentConfig,
) -> Result<(), StoreError> {
    files::write_public(&paths.node_cert(), chain_pem.as_bytes()).map_err(StoreError::WriteFile)?;
    files::write_public(&paths.ca_bundle(), ca_bundle_pem.as_bytes())
        .map_err(StoreError::WriteFile)?;
    rename(&paths.pending_key(), &paths.node_key())?;
    config
        .store(&paths.config())
        .map_err(StoreError::StoreConfig)
}

/// The key of a re-enrollment: the one an interrupted attempt left, so that a retry sends the
/// same key and the manager answers it again, else a fresh one written 0600 first.
pub fn reenroll_key(paths: &StatePaths) -> Result<(KeyPair, bool), StoreError> {
    let path = paths.reenroll_key();
    if path.exists() {
        let pem = files::read_secret(&path).map_err(StoreError::ReadFile)?;
        return Ok((parse_key(&path, &SecretPem::new(pem))?, true));
    }
    let key = opi_pki::ca::generate_key().map_err(StoreError::GenerateKey)?;
    files::write_secret(&path, key.serialize_pem().as_bytes()).map_err(StoreError::WriteFile)?;
    Ok((key, false))
}

/// Stores a re-enrollment's outcome like a renewal (crash-safe key and certificate swap), then
/// the trust bundle and the settings, and forgets the re-enrollment key and past refusals.
pub fn commit_reenrollment(
    paths: &StatePaths,
    key: &SecretPem,
    chain_pem: &str,
    ca_bundle_pem: &str,
    config: &AgentConfig,
) -> Result<(), StoreError> {
    store_renewed(paths, key, chain_pem)?;
    files::write_public(&paths.ca_bundle(), ca_bundle_pem.as_bytes())
        .map_err(StoreError::WriteFile)?;
    config
        .store(&paths.config())
        .map_err(StoreError::StoreConfig)?;
    for leftover in [paths.reenroll_key(), paths.renewal_refused()] {
        if leftover.exists() {
            remove(&leftover)?;
        }
    }
    Ok(())
}

/// Pins the profile signer keys the manager named at enrollment (hex DER, one per line).
pub fn store_signers(paths: &StatePaths, keys: &[Vec<u8>]) -> Result<(), StoreError> {
    let text: String = keys
        .iter()
        .map(|key| format!("{}\n", opi_pki::ca::hex(key)))
        .collect();
    files::write_public(&paths.profile_signers(), text.as_bytes()).map_err(StoreError::WriteFile)
}

/// The profile signer keys pinned at enrollment; none when the node pinned none.
pub fn load_signers(paths: &StatePaths) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(paths.profile_signers()).unwrap_or_default();
    text.lines()
        .filter_map(|line| data_encoding::HEXLOWER.decode(line.trim().as_bytes()).ok())
        .filter(|key| !key.is_empty())
        .collect()
}

/// Replaces the trust bundle, crash-safely: written beside it, then renamed over it.
pub fn store_bundle(paths: &StatePaths, bundle_pem: &str) -> Result<(), StoreError> {
    let next = paths.dir.join(format!("{}.next", crate::paths::CA_BUNDLE));
    files::write_public(&next, bundle_pem.as_bytes()).map_err(StoreError::WriteFile)?;
    rename(&next, &paths.ca_bundle())
}

/// Replaces the node's key and certificate with renewed ones, crash-safely.
pub fn store_renewed(
    paths: &StatePaths,
    key: &SecretPem,
    chain_pem: &str,
) -> Result<(), StoreError> {
    files::write_secret(&paths.next_key(), key.expose().as_bytes())
        .map_err(StoreError::WriteFile)?;
    files::write_public(&paths.next_cert(), chain_pem.as_bytes()).map_err(StoreError::WriteFile)?;
    rename(&paths.next_key(), &paths.node_key())?;
    rename(&paths.next_cert(), &paths.node_cert())
}

/// Finishes or discards a renewal a crash interrupted, so that the key matches the
/// certificate. Returns whether anything was left over.
pub fn recover_renewal(paths: &StatePaths) -> Result<bool, StoreError> {
    let (next_key, next_cert) = (paths.next_key(), paths.next_cert());
    let had_key = next_key.exists();
    let had_cert = next_cert.exists();

    if had_key && had_cert && pair_matches(&next_key, &next_cert) {
        // Both halves were written in full before the crash: finish the renewal.
        rename(&next_key, &paths.node_key())?;
    } else if had_key {
        // The certificate never reached the disk: the current pair is still whole.
        warn!(path = %next_key.display(), "discarding a renewed key without its certificate");
        remove(&next_key)?;
    }
    if had_cert {
        if pair_matches(&paths.node_key(), &next_cert) {
            rename(&next_cert, &paths.node_cert())?;
            info!(
                cert = %paths.node_cert().display(),
                "finished an interrupted certificate renewal",
            );
        } else {
            warn!(
                path = %next_cert.display(),
                "discarding a renewed certificate that does not match node.key",
            );
            remove(&next_cert)?;
        }
    }
    Ok(had_key || had_cert)
}

/// Whether the key at `key_path` belongs to the certificate at `cert_path`.
fn pair_matches(key_path: &Path, cert_path: &Path) -> bool {
    let key = files::read_secret(key_path).ok().map(SecretPem::new);
    let key = key.and_then(|pem| KeyPair::from_pem(pem.expose()).ok());
    let leaf = files::read_text(cert_path)
        .ok()
        .and_then(|pem| LeafInfo::from_chain(&pem).ok());
    matches!((key, leaf), (Some(key), Some(leaf)) if leaf.matches_key(&key))
}

fn parse_key(path: &Path, pem: &SecretPem) -> Result<KeyPair, StoreError> {
    KeyPair::from_pem(pem.expose()).map_err(|source| StoreError::ParseKey {
        path: path.to_path_buf(),
        source,
    })
}

/// Renames atomically and makes the rename durable.
fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(|source| StoreError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })?;
    sync_parent(to);
    Ok(())
}

fn remove(path: &Path) -> Result<(), StoreError> {
    fs::remove_file(path).map_err(|source| StoreError::Remove {
        path: path.to_path_buf(),
        source,
    })?;
    sync_parent(path);
    Ok(())
}

/// Flushes a directory entry change; best effort, as some file systems refuse it.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().and_then(|dir| fs::File::open(dir).ok()) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
