//! From an operator bundle to a connected `Operator` client, and one method per RPC that turns
//! a refusal into an error naming what was asked.

use std::path::Path;
use std::time::Duration;

use opi_pki::bundle::OperatorBundle;
use opi_pki::channel::{self, ChannelError};
use opi_pki::tls::{self, ManagerVerifier};
use opi_proto::v1::operator_client::OperatorClient;
use opi_proto::v1::{
    AuditEntry, CreateTokenRequest, CreateTokenResponse, GetNodeRequest, ListAuditRequest,
    ListNodesRequest, ListTokensRequest, Node, RemoveNodeRequest, RevokeNodeRequest,
    RevokeTokenRequest, StatusRequest, StatusResponse, Token, WhoAmIRequest, WhoAmIResponse,
};
use tonic::transport::Channel;
use tracing::debug;

use crate::error::Error;

/// How long one request may take before it is given up, so on-call never waits forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one manager, authenticated both ways.
#[derive(Debug)]
pub struct Client {
    inner: OperatorClient<Channel>,
    endpoint: String,
}

impl Client {
    /// Connects to `endpoint` with the credentials of the bundle read from `path`, trusting
    /// only a manager of the bundle's fleet.
    pub async fn connect(
        bundle: &OperatorBundle,
        path: &Path,
        endpoint: &str,
    ) -> Result<Self, Error> {
        let tls_error = |source| Error::BundleTls {
            path: path.to_path_buf(),
            source,
        };
        let verifier = ManagerVerifier::with_roots(&bundle.ca, &bundle.fleet).map_err(tls_error)?;
        let config = tls::client_config(verifier.clone(), Some((&bundle.cert, &bundle.key())))
            .map_err(tls_error)?;

        debug!(%endpoint, fleet = %bundle.fleet, "connecting to the manager");
        let channel = channel::connect(endpoint, config)
            .await
            .map_err(|error| match error {
                ChannelError::BadEndpoint(url) => Error::BadEndpoint(url),
                ChannelError::Connect { endpoint, source } => match verifier.last_outcome() {
                    Some(Err(reason)) => Error::ServerRefused { endpoint, reason },
                    _ => Error::Connect { endpoint, source },
                },
            })?;

        Ok(Self {
            inner: OperatorClient::new(channel),
            endpoint: endpoint.to_string(),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Fleet totals and per-pool counts.
    pub async fn status(&mut self) -> Result<StatusResponse, Error> {
        let answer = self.inner.status(request(StatusRequest {})).await;
        self.answer("to show the fleet status", answer)
    }

    /// Nodes of `pool`, or of every pool when it is empty.
    pub async fn list_nodes(&mut self, pool: &str) -> Result<Vec<Node>, Error> {
        let message = ListNodesRequest { pool: pool.into() };
        let answer = self.inner.list_nodes(request(message)).await;
        Ok(self.answer("to list nodes", answer)?.nodes)
    }

    /// One node.
    pub async fn get_node(&mut self, name: &str) -> Result<Node, Error> {
        let message = GetNodeRequest { name: name.into() };
        let answer = self.inner.get_node(request(message)).await;
        self.answer(format!("to show node `{name}`"), answer)
    }

    /// Revokes a node and returns it as revoked.
    pub async fn revoke_node(&mut self, name: &str, reason: &str) -> Result<Node, Error> {
        let message = RevokeNodeRequest {
            name: name.into(),
            reason: reason.into(),
        };
        let answer = self.inner.revoke_node(request(message)).await;
        self.answer(format!("to revoke node `{name}`"), answer)
    }

    /// Forgets a node.
    pub async fn remove_node(&mut self, name: &str) -> Result<(), Error> {
        let message = RemoveNodeRequest { name: name.into() };
        let answer = self.inner.remove_node(request(message)).await;
        self.answer(format!("to remove node `{name}`"), answer)?;
        Ok(())
    }

    /// Creates a token; the answer holds its secret.
    pub async fn create_token(
        &mut self,
        message: CreateTokenRequest,
    ) -> Result<CreateTokenResponse, Error> {
        let what = format!("to create a token for pool `{}`", message.pool);
        let answer = self.inner.create_token(request(message)).await;
        self.answer(what, answer)
    }

    /// Every token, without secrets.
    pub async fn list_tokens(&mut self) -> Result<Vec<Token>, Error> {
        let answer = self.inner.list_tokens(request(ListTokensRequest {})).await;
        Ok(self.answer("to list tokens", answer)?.tokens)
    }

    /// Revokes a token and returns it as revoked.
    pub async fn revoke_token(&mut self, id: &str) -> Result<Token, Error> {
        let message = RevokeTokenRequest { id: id.into() };
        let answer = self.inner.revoke_token(request(message)).await;
        self.answer(format!("to revoke token `{id}`"), answer)
    }

    /// The latest `limit` audit entries.
    pub async fn list_audit(&mut self, limit: u32) -> Result<Vec<AuditEntry>, Error> {
        let answer = self
            .inner
            .list_audit(request(ListAuditRequest { limit }))
            .await;
        Ok(self.answer("to show the audit log", answer)?.entries)
    }

    /// The caller's identity as the manager sees it.
    pub async fn who_am_i(&mut self) -> Result<WhoAmIResponse, Error> {
        let answer = self.inner.who_am_i(request(WhoAmIRequest {})).await;
        self.answer("to say who you are", answer)
    }

    /// The message of an answer, or the failure of a request asking `what`.
    fn answer<T>(
        &self,
        what: impl Into<String>,
        answer: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, Error> {
        answer
            .map(tonic::Response::into_inner)
            .map_err(|status| Error::failed(what, &self.endpoint, status))
    }
}

/// A request bounded by [`REQUEST_TIMEOUT`].
fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}
