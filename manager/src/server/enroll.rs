//! The Enrollment service: the only call answered without a client certificate.

use std::sync::Arc;

use opi_proto::v1::enrollment_server::Enrollment;
use opi_proto::v1::{EnrollRequest, EnrollResponse};
use tonic::{Request, Response, Status};

use super::convert::facts_from_proto;
use super::peer::peer_info;
use crate::fleet::{EnrollInput, Fleet};

/// Serves enrollments.
pub struct EnrollmentService {
    pub fleet: Arc<Fleet>,
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let remote = peer_info(&request).remote;
        let body = request.into_inner();
        let input = EnrollInput {
            token: body.token,
            csr_der: body.csr_der,
            name: body.name,
            reenroll: body.reenroll,
            facts: facts_from_proto(body.facts.unwrap_or_default()),
            remote,
        };
        let output = self.fleet.enroll(input).await?;
        let authority = self.fleet.authority();
        let settings = self.fleet.settings();
        Ok(Response::new(EnrollResponse {
            node_name: output.node,
            pool: output.pool,
            fleet: authority.fleet.clone(),
            cert_chain_pem: output.cert_chain_pem,
            ca_bundle_pem: self.fleet.trust().bundle_pem.clone(),
            manager_endpoints: settings.endpoints.clone(),
            heartbeat_interval_secs: settings.heartbeat.as_secs() as u32,
            profile_signers: settings.profile_signers.clone(),
        }))
    }
}
