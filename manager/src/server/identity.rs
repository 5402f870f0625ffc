//! Operator calls on node identities (rotation, re-enrollment permission) and the manager's
//! own certificates in `opictl status`.

use std::time::Duration;

use opi_proto::v1 as pb;
use time::OffsetDateTime;
use tonic::{Response, Status};

use super::convert::{node_to_proto, timestamp};
use super::peer::Caller;
use crate::fleet::{Fleet, RotateSelection};

/// `opictl node rotate`: asks the selected nodes to renew now.
pub async fn rotate(
    fleet: &Fleet,
    caller: &Caller,
    body: pb::RotateNodesRequest,
) -> Result<Response<pb::RotateNodesResponse>, Status> {
    let selection = RotateSelection::new(body.names, &body.pool, body.all)?;
    let actor = caller.cert.identity.uri();
    let rotation = fleet
        .rotate(&selection, &body.reason, &actor, &caller.remote)
        .await?;
    Ok(Response::new(pb::RotateNodesResponse {
        asked: rotation.asked,
        pending: rotation.pending,
    }))
}

/// `opictl node allow-reenroll`: one re-enrollment under the node's name, within a deadline.
pub async fn allow_reenroll(
    fleet: &Fleet,
    caller: &Caller,
    body: pb::AllowReenrollRequest,
) -> Result<Response<pb::Node>, Status> {
    let actor = caller.cert.identity.uri();
    let ttl = Duration::from_secs(body.ttl_secs);
    let view = fleet
        .allow_reenroll(&body.name, ttl, &actor, &caller.remote)
        .await?;
    Ok(Response::new(node_to_proto(&view)))
}

/// The manager's server certificate and CAs, for `opictl status`.
pub fn expiries(fleet: &Fleet) -> Vec<pb::CertificateExpiry> {
    let now = OffsetDateTime::now_utc();
    fleet
        .manager_certs()
        .expiries(now)
        .into_iter()
        .map(|expiry| pb::CertificateExpiry {
            what: expiry.what.to_string(),
            subject: expiry.subject,
            not_after: Some(timestamp(expiry.not_after)),
            warning: expiry.warning,
        })
        .collect()
}
