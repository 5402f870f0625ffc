//! The serving side of a CA rollover (`opi-manager ca rotate`, then `ca retire`): the running
//! manager follows the data directory's PKI files.
//!
//! 1. `ca rotate` puts a new root and issuing CA in `pki/next/` and adds the new root to the
//!    trust bundle. The manager trusts the new bundle at once and sends it to every agent over
//!    its stream; agents store it and say so.
//! 2. Once every active node stored it, the manager switches issuing to the new CA (the old
//!    ones move to `pki/retired/`), re-issues its server certificate from it and asks every
//!    node to renew: the fleet ends with certificates from the new CA, none disconnected.
//! 3. `ca retire` drops the old root from the bundle; the manager sends the bundle again and
//!    refuses certificates of the old CA from then on.

use std::path::Path;
use std::time::Duration;

use opi_pki::ca::CertifiedKey;
use opi_pki::files::FileError;
use opi_pki::tls::{parse_certs, TlsError};
use opi_pki::{CaPin, Issuer, SecretPem};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use crate::datadir::DataDir;
use crate::fleet::{Fleet, FleetError, RotateSelection, Trust};

/// Interval between two checks of the data directory's PKI files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Why the manager could not follow a CA rollover.
#[derive(Debug, thiserror::Error)]
pub enum RolloverError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the trust bundle or CA in the data directory is unusable")]
    Tls(#[from] TlsError),
    #[error("the next issuing CA in pki/next is unusable")]
    Ca(#[from] opi_pki::ca::CaError),
    #[error("the next root CA in pki/next is unusable")]
    Pin(#[from] opi_pki::pin::PinError),
    #[error("cannot move {from} to {to}")]
    Move {
        from: String,
        to: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot renew the server certificate from the new issuing CA")]
    Server(#[from] crate::identity::CertsError),
    #[error("cannot ask the nodes to renew from the new issuing CA")]
    Rotate(#[from] FleetError),
}

/// Follows the data directory: a new trust bundle is trusted and distributed, and a pending
/// issuing CA is switched to once every active node stored the bundle.
pub async fn follow(fleet: &Fleet, dir: &DataDir) -> Result<(), RolloverError> {
    let bundle = read(&dir.trust_bundle())?;
    if bundle != fleet.trust().bundle_pem {
        trust_bundle(fleet, &bundle)?;
    }
    if !dir.next_pki().exists() {
        return Ok(());
    }
    let missing = fleet.nodes_without_trust_bundle();
    if !missing.is_empty() {
        debug!(waiting_for = missing.len(), first = %missing[0], "CA rollover: waiting for nodes to store the trust bundle");
        return Ok(());
    }
    switch(fleet, dir).await
}

/// Trusts `bundle` from now on, serves it after the server chain and sends it to the agents.
fn trust_bundle(fleet: &Fleet, bundle: &str) -> Result<(), RolloverError> {
    let certs = fleet.manager_certs();
    certs.client_auth().set_roots(bundle)?;
    certs.refresh_roots()?;
    let current = fleet.trust();
    fleet.set_trust(Trust {
        issuer: current.issuer.clone(),
        bundle_pem: bundle.to_string(),
        bundle_digest: opi_pki::bundle_digest(bundle),
        pin: current.pin,
    });
    let roots = parse_certs(bundle, "trust bundle")?.len();
    info!(roots, digest = %fleet.trust().bundle_digest, "trust bundle changed; sending it to every agent");
    fleet.distribute_trust_bundle();
    Ok(())
}

/// Issues from the next CA from now on: moves it in place, re-issues the server certificate
/// and asks every node to renew.
async fn switch(fleet: &Fleet, dir: &DataDir) -> Result<(), RolloverError> {
    let next = dir.next_pki();
    let issuing = CertifiedKey {
        cert_pem: read(&next.join("issuing-ca.pem"))?,
        key_pem: SecretPem::new(read(&next.join("issuing-ca.key"))?),
    };
    let issuer = Issuer::new(fleet.fleet_name(), &issuing)?;
    let root = read(&next.join("root-ca.pem"))?;
    let pin = CaPin::of_cert_der(&parse_certs(&root, "next root CA")?[0])?;
    let bundle = fleet.trust().bundle_pem.clone();
    let trusted = parse_certs(&bundle, "trust bundle")?;
    if !trusted.iter().any(|cert| pin.matches(cert)) {
        warn!(pin = %pin, "CA rollover: the trust bundle lacks the next root; not switching (restore trust-bundle.pem or run `opi-manager ca rotate` again)");
        return Ok(());
    }

    retire_current(dir)?;
    for file in [
        "issuing-ca.key",
        "issuing-ca.pem",
        "root-ca.key",
        "root-ca.pem",
    ] {
        let from = next.join(file);
        if from.exists() {
            rename(&from, &dir.pki().join(file))?;
        }
    }
    std::fs::remove_dir(&next).map_err(|source| RolloverError::Move {
        from: next.display().to_string(),
        to: "nothing".into(),
        source,
    })?;

    let issuer = std::sync::Arc::new(issuer);
    fleet.set_trust(Trust {
        issuer: issuer.clone(),
        bundle_digest: opi_pki::bundle_digest(&bundle),
        bundle_pem: bundle,
        pin,
    });
    fleet.manager_certs().reload_cas(dir)?;
    fleet.manager_certs().renew_server(&issuer)?;
    let actor = format!(
        "spiffe://{}/manager/{}",
        fleet.fleet_name(),
        fleet.authority().replica
    );
    let reason = "CA rollover: renew from the new issuing CA";
    let rotation = fleet
        .rotate(&RotateSelection::All, reason, &actor, "local")
        .await?;
    info!(pin = %pin, asked = rotation.asked.len(), pending = rotation.pending.len(), "CA rollover: issuing from the new CA; every node asked to renew; run `opi-manager ca retire` once they did");
    Ok(())
}

/// Keeps copies of the CAs being replaced in `pki/retired/`.
fn retire_current(dir: &DataDir) -> Result<(), RolloverError> {
    let retired = dir.retired_pki();
    opi_pki::files::create_dir(&retired, 0o700)?;
    let stamp = OffsetDateTime::now_utc().unix_timestamp();
    for file in [
        "issuing-ca.key",
        "issuing-ca.pem",
        "root-ca.key",
        "root-ca.pem",
    ] {
        let from = dir.pki().join(file);
        if from.exists() {
            let to = retired.join(format!("{stamp}-{file}"));
            std::fs::copy(&from, &to).map_err(|source| RolloverError::Move {
                from: from.display().to_string(),
                to: to.display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, RolloverError> {
    std::fs::read_to_string(path).map_err(|source| RolloverError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), RolloverError> {
    std::fs::rename(from, to).map_err(|source| RolloverError::Move {
        from: from.display().to_string(),
        to: to.display().to_string(),
        source,
    })
}
