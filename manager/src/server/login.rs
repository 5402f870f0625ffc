//! The Login service: served without a client certificate, like enrollment; an operator
//! trades a one-time login code and a CSR for a certificate (`opictl login`).

use std::sync::Arc;

use opi_proto::v1::login_server::Login;
use opi_proto::v1::{LoginRequest, LoginResponse};
use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::peer::peer_info;
use crate::fleet::Fleet;

/// Serves logins.
pub struct LoginService {
    pub fleet: Arc<Fleet>,
}

#[tonic::async_trait]
impl Login for LoginService {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let remote = peer_info(&request).remote;
        let body = request.into_inner();
        let granted = self.fleet.login(&body.code, &body.csr_der, remote).await?;
        let authority = self.fleet.authority();
        Ok(Response::new(LoginResponse {
            cert_chain_pem: granted.cert.chain_pem,
            ca_bundle_pem: authority.trust_bundle_pem.clone(),
            fleet: authority.fleet.clone(),
            name: granted.name,
            role: granted.role.to_string(),
            not_after: Some(timestamp(granted.cert.not_after)),
        }))
    }
}
