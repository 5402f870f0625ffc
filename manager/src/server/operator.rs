//! The Operator service: what `opictl` calls, authorised by role.

use std::sync::Arc;
use std::time::Duration;

use opi_proto::v1 as pb;
use opi_proto::v1::operator_server::Operator;
use tonic::{Request, Response, Status};

use super::authz::Action;
use super::convert::{event_to_proto, node_to_proto, timestamp, token_to_proto};
use super::peer;
use super::{audit, identity, profiles, query, rollouts, watch};
use crate::compliance;
use crate::fleet::login::DEFAULT_LOGIN_CERT_TTL;
use crate::fleet::{Fleet, FleetError, LoginCodeSpec, TokenSpec};
use crate::store::StoreError;

/// Serves operators.
pub struct OperatorService {
    pub fleet: Arc<Fleet>,
}

#[tonic::async_trait]
impl Operator for OperatorService {
    type WatchStream = watch::EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        peer::operator(&request, &self.fleet, Action::Watch)?;
        Ok(Response::new(
            watch::start(self.fleet.clone(), request.into_inner()).await?,
        ))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        peer::operator(&request, &self.fleet, Action::ListEvents)?;
        let body = request.into_inner();
        self.fleet.node(&body.node)?;
        let limit = if body.limit == 0 {
            10
        } else {
            body.limit as usize
        };
        let events = self
            .fleet
            .events()
            .recent(&body.node, limit)
            .await
            .map_err(crate::fleet::FleetError::from)?
            .iter()
            .map(event_to_proto)
            .collect();
        Ok(Response::new(pb::ListEventsResponse { events }))
    }

    async fn set_maintenance(
        &self,
        request: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::Maintenance)?;
        let body = request.into_inner();
        let actor = caller.cert.identity.uri();
        let view = self
            .fleet
            .set_maintenance(&body.name, body.on, &body.reason, &actor, &caller.remote)
            .await?;
        Ok(Response::new(node_to_proto(&view)))
    }

    async fn delete_node(
        &self,
        request: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::RemoveNode)?;
        let body = request.into_inner();
        let actor = caller.cert.identity.uri();
        self.fleet
            .remove(&body.name, &body.reason, &actor, &caller.remote)
            .await?;
        Ok(Response::new(pb::DeleteNodeResponse {}))
    }

    async fn move_node(
        &self,
        request: Request<pb::MoveNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::MoveNode)?;
        let body = request.into_inner();
        let actor = caller.cert.identity.uri();
        let view = self
            .fleet
            .move_to(&body.name, &body.pool, &actor, &caller.remote)
            .await?;
        Ok(Response::new(node_to_proto(&view)))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        peer::operator(&request, &self.fleet, Action::Status)?;
        // Counted in place under the fleet's read lock: no node record is copied.
        let (pools, agent_versions) = self.fleet.with_records(|records| {
            let records: Vec<_> = records.collect();
            (
                query::pool_counts(records.iter().copied()),
                crate::versions::counts(records.iter().copied()),
            )
        });
        let replica = self.fleet.replica();
        let lost_since = self.fleet.store_lost_since();
        Ok(Response::new(pb::StatusResponse {
            fleet: self.fleet.fleet_name().into(),
            nodes: pools.iter().map(|p| p.nodes).sum(),
            online: pools.iter().map(|p| p.online).sum(),
            offline: pools.iter().map(|p| p.offline).sum(),
            revoked: pools.iter().map(|p| p.revoked).sum(),
            healthy: pools.iter().map(|p| p.healthy).sum(),
            degraded: pools.iter().map(|p| p.degraded).sum(),
            unknown: pools.iter().map(|p| p.unknown).sum(),
            maintenance: pools.iter().map(|p| p.maintenance).sum(),
            event_revision: self.fleet.events().last_revision(),
            pools,
            manager_version: crate::versions::MANAGER_VERSION.into(),
            agent_versions,
            certificates: identity::expiries(&self.fleet),
            replica: replica.map(|r| r.name().to_string()).unwrap_or_default(),
            leader: replica.and_then(|r| r.leader()).unwrap_or_default(),
            store: self.fleet.store().describe(),
            store_unavailable_since: lost_since.map(timestamp),
            store_revision: store_revision(&self.fleet, lost_since.is_some()).await?,
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        peer::operator(&request, &self.fleet, Action::ListNodes)?;
        let query = query::NodeQuery::parse(request.into_inner())?;
        let nodes = self
            .fleet
            .nodes_where(|record| query.matches(record))
            .iter()
            .map(node_to_proto)
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        peer::operator(&request, &self.fleet, Action::ShowNode)?;
        let view = self.fleet.node(&request.into_inner().name)?;
        Ok(Response::new(node_to_proto(&view)))
    }

    async fn revoke_node(
        &self,
        request: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::RevokeNode)?;
        let body = request.into_inner();
        let actor = caller.cert.identity.uri();
        let view = self
            .fleet
            .revoke(&body.name, &body.reason, &actor, &caller.remote)
            .await?;
        Ok(Response::new(node_to_proto(&view)))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::RemoveNode)?;
        let name = request.into_inner().name;
        self.fleet
            .remove(&name, "", &caller.cert.identity.uri(), &caller.remote)
            .await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::CreateToken)?;
        let body = request.into_inner();
        let spec = TokenSpec {
            pool: body.pool,
            ttl: Duration::from_secs(body.ttl_secs),
            uses: body.uses,
            labels: body.labels.into_iter().collect(),
            description: body.description,
        };
        let created = self
            .fleet
            .create_token(spec, &caller.cert.identity.uri(), &caller.remote)
            .await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_to_proto(&created.record)),
            secret: created.token.expose(),
            manager_endpoints: self.fleet.settings().endpoints.clone(),
            ca_pin: self.fleet.trust().pin.to_string(),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        peer::operator(&request, &self.fleet, Action::ListTokens)?;
        let tokens = self
            .fleet
            .tokens()
            .await?
            .iter()
            .map(token_to_proto)
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::RevokeToken)?;
        let id = request.into_inner().id;
        let record = self
            .fleet
            .revoke_token(&id, &caller.cert.identity.uri(), &caller.remote)
            .await?;
        Ok(Response::new(token_to_proto(&record)))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        peer::operator(&request, &self.fleet, Action::ListAudit)?;
        let listing = audit::list(&self.fleet, request.into_inner()).await?;
        Ok(Response::new(listing))
    }

    async fn create_audit_checkpoint(
        &self,
        request: Request<pb::CreateAuditCheckpointRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        peer::operator(&request, &self.fleet, Action::AuditCheckpoint)?;
        Ok(Response::new(audit::create_checkpoint(&self.fleet).await?))
    }

    async fn list_audit_checkpoints(
        &self,
        request: Request<pb::ListAuditCheckpointsRequest>,
    ) -> Result<Response<pb::ListAuditCheckpointsResponse>, Status> {
        peer::operator(&request, &self.fleet, Action::ListAudit)?;
        Ok(Response::new(audit::list_checkpoints(&self.fleet).await?))
    }

    async fn create_login_code(
        &self,
        request: Request<pb::CreateLoginCodeRequest>,
    ) -> Result<Response<pb::CreateLoginCodeResponse>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::InviteOperator)?;
        let body = request.into_inner();
        let cert_ttl = match body.cert_ttl_secs {
            0 => DEFAULT_LOGIN_CERT_TTL,
            secs => Duration::from_secs(secs),
        };
        let spec = LoginCodeSpec {
            name: body.name,
            role: body.role,
            ttl: Duration::from_secs(body.ttl_secs),
            cert_ttl,
        };
        let (code, record) = self
            .fleet
            .create_login_code(spec, &caller.cert.identity.uri(), &caller.remote)
            .await?;
        Ok(Response::new(pb::CreateLoginCodeResponse {
            code: code.expose(),
            expires_at: Some(timestamp(record.expires_at)),
            manager_endpoints: self.fleet.settings().endpoints.clone(),
            ca_pin: self.fleet.authority().pin.to_string(),
        }))
    }

    async fn set_profile(
        &self,
        request: Request<pb::SetProfileRequest>,
    ) -> Result<Response<pb::ProfileInfo>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::SetProfile)?;
        let actor = caller.cert.identity.uri();
        let body = request.into_inner();
        let info = profiles::set(&self.fleet, body, &actor, &caller.remote).await?;
        Ok(Response::new(info))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::ProfileInfo>, Status> {
        peer::operator(&request, &self.fleet, Action::ShowProfile)?;
        let info = profiles::get(&self.fleet, request.into_inner()).await?;
        Ok(Response::new(info))
    }

    async fn diff_profile(
        &self,
        request: Request<pb::DiffProfileRequest>,
    ) -> Result<Response<pb::DiffProfileResponse>, Status> {
        peer::operator(&request, &self.fleet, Action::ShowProfile)?;
        let diff = profiles::diff(&self.fleet, request.into_inner()).await?;
        Ok(Response::new(diff))
    }

    async fn rollout_status(
        &self,
        request: Request<pb::RolloutStatusRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        peer::operator(&request, &self.fleet, Action::RolloutStatus)?;
        let rollout = rollouts::status(&self.fleet, request.into_inner())?;
        Ok(Response::new(rollout))
    }

    async fn rollout_action(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::RolloutAction)?;
        let actor = caller.cert.identity.uri();
        let body = request.into_inner();
        let rollout = rollouts::act(&self.fleet, body, &actor, &caller.remote).await?;
        Ok(Response::new(rollout))
    }

    async fn get_compliance(
        &self,
        request: Request<pb::GetComplianceRequest>,
    ) -> Result<Response<pb::GetComplianceResponse>, Status> {
        peer::operator(&request, &self.fleet, Action::ShowCompliance)?;
        let nodes = compliance::listing(&self.fleet, &request.into_inner().pool).await?;
        Ok(Response::new(pb::GetComplianceResponse { nodes }))
    }

    async fn get_compliance_report(
        &self,
        request: Request<pb::GetComplianceReportRequest>,
    ) -> Result<Response<pb::SignedComplianceReport>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::ComplianceReport)?;
        let actor = caller.cert.identity.uri();
        let body = request.into_inner();
        let subject = match body.pool.is_empty() {
            true => "every pool".to_string(),
            false => format!("pool {}", body.pool),
        };
        let signed = compliance::report::signed(&self.fleet, body, &actor).await?;
        let digest = compliance::report::sha256(&signed.document);
        crate::audit::Entry::ok(&actor, "compliance.report", &subject, &caller.remote)
            .detail(format!("document sha256:{digest}"))
            .write(self.fleet.store())
            .await;
        Ok(Response::new(signed))
    }

    async fn rotate_nodes(
        &self,
        request: Request<pb::RotateNodesRequest>,
    ) -> Result<Response<pb::RotateNodesResponse>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::RotateNode)?;
        identity::rotate(&self.fleet, &caller, request.into_inner()).await
    }

    async fn allow_reenroll(
        &self,
        request: Request<pb::AllowReenrollRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let (caller, _) = peer::operator(&request, &self.fleet, Action::AllowReenroll)?;
        identity::allow_reenroll(&self.fleet, &caller, request.into_inner()).await
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let (caller, role) = peer::operator(&request, &self.fleet, Action::WhoAmI)?;
        Ok(Response::new(pb::WhoAmIResponse {
            identity: caller.cert.identity.uri(),
            role: role.to_string(),
            not_after: Some(timestamp(caller.cert.not_after)),
        }))
    }
}

/// The store's revision for `status`; 0 when the store is known lost or does not answer,
/// since the rest of the answer comes from memory anyway.
async fn store_revision(fleet: &Fleet, lost: bool) -> Result<u64, FleetError> {
    if lost {
        return Ok(0);
    }
    match fleet.store().revision().await {
        Err(StoreError::Unavailable { .. }) => Ok(0),
        other => Ok(other?),
    }
}
