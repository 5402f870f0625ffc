//! `opi-agent enroll --reenroll`: an enrolled node whose certificate expired past the
//! manager's renewal window takes back its name with a new bootstrap token and a fresh key.
//!
//! The manager is trusted through the node's stored trust bundle (or `--ca-pin`); the new
//! key and certificate replace the old ones crash-safely, as a renewal does.

use opi_pki::tls::parse_certs;
use opi_pki::{CaPin, SecretPem};
use tracing::info;

use super::{answer, build_request, request, EnrollArgs, EnrollError};
use crate::output::timestamp;
use crate::paths::StatePaths;
use crate::store;
use crate::token::Token;

/// Re-enrolls the node stored under `paths`.
pub async fn run(args: &EnrollArgs, token: &Token, paths: &StatePaths) -> Result<(), EnrollError> {
    let state = store::load(paths).map_err(|source| EnrollError::NotEnrolled {
        state_dir: paths.dir.clone(),
        source: Box::new(source),
    })?;
    let node = state.config.node.clone();
    if let Some(asked) = args.name.as_ref().filter(|asked| **asked != node) {
        return Err(EnrollError::ReenrollOtherName {
            node,
            asked: asked.clone(),
        });
    }
    let managers = match args.managers.is_empty() {
        true => state.config.managers.clone(),
        false => args.managers.clone(),
    };
    let pin = match args.ca_pin {
        Some(pin) => pin,
        None => stored_pin(paths, &state.ca_bundle_pem)?,
    };

    let (key, reused) =
        store::reenroll_key(paths).map_err(|e| EnrollError::PrepareKey(Box::new(e)))?;
    if reused {
        info!(path = %paths.reenroll_key().display(), "reusing the key of an interrupted re-enrollment");
    }
    let mut request = build_request(token, &key, Some(&node), paths)?;
    request.reenroll = true;
    let answered = request::send(&managers, pin, &request).await?;
    let leaf =
        answer::check(&answered.response, &answered.fleet, &key, &pin).map_err(|source| {
            EnrollError::CheckAnswer {
                endpoint: answered.endpoint.clone(),
                source,
            }
        })?;

    let response = &answered.response;
    let mut config = state.config.clone();
    config.pool = response.pool.clone();
    if !response.manager_endpoints.is_empty() {
        config.managers = response.manager_endpoints.clone();
    }
    let key = SecretPem::new(key.serialize_pem());
    store::commit_reenrollment(
        paths,
        &key,
        &response.cert_chain_pem,
        &response.ca_bundle_pem,
        &config,
    )
    .map_err(|source| EnrollError::StoreEnrollment {
        state_dir: paths.dir.clone(),
        source: Box::new(source),
    })?;

    info!(node = %config.node, pool = %config.pool, fleet = %config.fleet, "node re-enrolled");
    println!(
        "re-enrolled as node {} in pool {} of fleet {}; certificate valid until {}; restart the agent (opi-agent run{}) if it runs",
        config.node,
        config.pool,
        config.fleet,
        timestamp(leaf.not_after),
        args.location.as_flags()
    );
    Ok(())
}

/// The pin of the stored trust bundle's first root, the one the node pinned at enrollment.
fn stored_pin(paths: &StatePaths, bundle_pem: &str) -> Result<CaPin, EnrollError> {
    let unusable = |reason: String| EnrollError::StoredBundle {
        path: paths.ca_bundle(),
        reason,
    };
    let roots =
        parse_certs(bundle_pem, "stored trust bundle").map_err(|e| unusable(e.to_string()))?;
    CaPin::of_cert_der(&roots[0]).map_err(|e| unusable(e.to_string()))
}
