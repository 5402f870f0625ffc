//! From an operator bundle to a connected `Operator` client, and one method per RPC that turns
//! a refusal into an error naming what was asked.

use std::path::Path;
use std::time::Duration;

use opi_pki::bundle::OperatorBundle;
use opi_pki::channel::{self, ChannelError};
use opi_pki::tls::{self, ManagerVerifier};
use opi_proto::v1::operator_client::OperatorClient;
use opi_proto::v1::{AllowReenrollRequest, RotateNodesRequest, RotateNodesResponse};
use opi_proto::v1::{
    AuditCheckpoint, CreateAuditCheckpointRequest, CreateLoginCodeRequest, CreateLoginCodeResponse,
    ListAuditCheckpointsRequest, ListAuditResponse,
};
use opi_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, DeleteNodeRequest, DiffProfileRequest,
    DiffProfileResponse, Event, GetNodeRequest, GetProfileRequest, ListAuditRequest,
    ListEventsRequest, ListNodesRequest, ListTokensRequest, MoveNodeRequest, Node, ProfileInfo,
    RemoveNodeRequest, RevokeNodeRequest, RevokeTokenRequest, Rollout, RolloutActionKind,
    RolloutActionRequest, RolloutStatusRequest, RolloutStrategy, SetMaintenanceRequest,
    SetProfileRequest, StatusRequest, StatusResponse, Token, WatchRequest, WhoAmIRequest,
    WhoAmIResponse,
};
use opi_proto::v1::{
    GetComplianceReportRequest, GetComplianceRequest, NodeCompliance, SignedComplianceReport,
};
use tonic::transport::Channel;
use tonic::Streaming;
use tracing::{debug, warn};

use crate::error::Error;

/// How long one request may take before it is given up, so on-call never waits forever.
/// A watch has no such bound: HTTP/2 keep-alive pings detect a dead manager instead.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The metadata key of an answer the manager gave from memory while its store was
/// unreachable, with the RFC 3339 time since when.
pub const STALE_SINCE: &str = "opi-stale-since";
/// What a failed watch was asking, as in errors.
const WATCH: &str = "to watch events";

/// A connection to one manager, authenticated both ways.
#[derive(Debug)]
pub struct Client {
    inner: OperatorClient<Channel>,
    endpoint: String,
}

/// The events of an open watch, as the manager sends them.
#[derive(Debug)]
pub struct EventStream {
    inner: Streaming<Event>,
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

    /// The nodes that pass the filters of `message`; empty filters pass every node.
    pub async fn list_nodes(&mut self, message: ListNodesRequest) -> Result<Vec<Node>, Error> {
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

    /// Asks nodes to renew their certificate now.
    pub async fn rotate_nodes(
        &mut self,
        message: RotateNodesRequest,
    ) -> Result<RotateNodesResponse, Error> {
        let answer = self.inner.rotate_nodes(request(message)).await;
        self.answer("to rotate node certificates", answer)
    }

    /// Lets a node re-enroll under its name, once, for `ttl_secs`.
    pub async fn allow_reenroll(&mut self, name: &str, ttl_secs: u64) -> Result<Node, Error> {
        let message = AllowReenrollRequest {
            name: name.into(),
            ttl_secs,
        };
        let answer = self.inner.allow_reenroll(request(message)).await;
        self.answer(format!("to allow node `{name}` to re-enroll"), answer)
    }

    /// Forgets a node.
    pub async fn remove_node(&mut self, name: &str) -> Result<(), Error> {
        let message = RemoveNodeRequest { name: name.into() };
        let answer = self.inner.remove_node(request(message)).await;
        self.answer(format!("to remove node `{name}`"), answer)?;
        Ok(())
    }

    /// Revokes a node and forgets it, keeping its audit entries and events.
    pub async fn delete_node(&mut self, name: &str, reason: &str) -> Result<(), Error> {
        let message = DeleteNodeRequest {
            name: name.into(),
            reason: reason.into(),
        };
        let answer = self.inner.delete_node(request(message)).await;
        self.answer(format!("to delete node `{name}`"), answer)?;
        Ok(())
    }

    /// Starts (`on`) or ends a node's maintenance and returns the node as it is now.
    pub async fn set_maintenance(
        &mut self,
        name: &str,
        on: bool,
        reason: &str,
    ) -> Result<Node, Error> {
        let message = SetMaintenanceRequest {
            name: name.into(),
            on,
            reason: reason.into(),
        };
        let answer = self.inner.set_maintenance(request(message)).await;
        let what = match on {
            true => format!("to put node `{name}` in maintenance"),
            false => format!("to take node `{name}` out of maintenance"),
        };
        self.answer(what, answer)
    }

    /// Moves a node to `pool` and returns it as moved.
    pub async fn move_node(&mut self, name: &str, pool: &str) -> Result<Node, Error> {
        let message = MoveNodeRequest {
            name: name.into(),
            pool: pool.into(),
        };
        let answer = self.inner.move_node(request(message)).await;
        self.answer(format!("to move node `{name}` to pool `{pool}`"), answer)
    }

    /// The last `limit` events of a node, oldest first.
    pub async fn list_events(&mut self, node: &str, limit: u32) -> Result<Vec<Event>, Error> {
        let message = ListEventsRequest {
            node: node.into(),
            limit,
        };
        let answer = self.inner.list_events(request(message)).await;
        Ok(self
            .answer(format!("to list the events of node `{node}`"), answer)?
            .events)
    }

    /// Opens a watch. It has no deadline: it lasts until the manager ends it or the
    /// connection breaks.
    pub async fn watch(&mut self, message: WatchRequest) -> Result<EventStream, Error> {
        let answer = self.inner.watch(tonic::Request::new(message)).await;
        Ok(EventStream {
            inner: self.answer(WATCH, answer)?,
            endpoint: self.endpoint.clone(),
        })
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

    /// Audit entries as `message` asks.
    pub async fn list_audit(
        &mut self,
        message: ListAuditRequest,
    ) -> Result<ListAuditResponse, Error> {
        let answer = self.inner.list_audit(request(message)).await;
        self.answer("to show the audit log", answer)
    }

    /// Has the manager sign the audit chain's head now.
    pub async fn create_audit_checkpoint(&mut self) -> Result<AuditCheckpoint, Error> {
        let message = CreateAuditCheckpointRequest {};
        let answer = self.inner.create_audit_checkpoint(request(message)).await;
        self.answer("to sign an audit checkpoint", answer)
    }

    /// The audit checkpoints the manager keeps.
    pub async fn list_audit_checkpoints(&mut self) -> Result<Vec<AuditCheckpoint>, Error> {
        let message = ListAuditCheckpointsRequest {};
        let answer = self.inner.list_audit_checkpoints(request(message)).await;
        Ok(self
            .answer("to list audit checkpoints", answer)?
            .checkpoints)
    }

    /// A one-time login code for an operator.
    pub async fn create_login_code(
        &mut self,
        message: CreateLoginCodeRequest,
    ) -> Result<CreateLoginCodeResponse, Error> {
        let answer = self.inner.create_login_code(request(message)).await;
        self.answer("to invite an operator", answer)
    }

    /// Stores a pool's profile, rolled out with `strategy`; answers with the generation in
    /// force.
    pub async fn set_profile(
        &mut self,
        pool: &str,
        yaml: String,
        strategy: RolloutStrategy,
        signatures: Vec<opi_proto::v1::ProfileSignature>,
    ) -> Result<ProfileInfo, Error> {
        let message = SetProfileRequest {
            pool: pool.into(),
            yaml,
            strategy: Some(strategy),
            signatures,
        };
        let answer = self.inner.set_profile(request(message)).await;
        self.answer(format!("to set the profile of pool `{pool}`"), answer)
    }

    /// One generation of a pool's profile (0: the latest), secrets redacted.
    pub async fn get_profile(&mut self, pool: &str, generation: u64) -> Result<ProfileInfo, Error> {
        let message = GetProfileRequest {
            pool: pool.into(),
            generation,
        };
        let answer = self.inner.get_profile(request(message)).await;
        self.answer(format!("to show the profile of pool `{pool}`"), answer)
    }

    /// A diff between generations of a pool's profile, or from its latest to a draft.
    pub async fn diff_profile(
        &mut self,
        message: DiffProfileRequest,
    ) -> Result<DiffProfileResponse, Error> {
        let what = format!("to diff the profile of pool `{}`", message.pool);
        let answer = self.inner.diff_profile(request(message)).await;
        self.answer(what, answer)
    }

    /// The latest rollout of a pool.
    pub async fn rollout_status(&mut self, pool: &str) -> Result<Rollout, Error> {
        let message = RolloutStatusRequest { pool: pool.into() };
        let answer = self.inner.rollout_status(request(message)).await;
        self.answer(format!("to show the rollout of pool `{pool}`"), answer)
    }

    /// Pauses, resumes, aborts or undoes a pool's rollout; answers with the rollout in force.
    pub async fn rollout_action(
        &mut self,
        pool: &str,
        action: RolloutActionKind,
    ) -> Result<Rollout, Error> {
        let message = RolloutActionRequest {
            pool: pool.into(),
            action: action as i32,
        };
        let answer = self.inner.rollout_action(request(message)).await;
        let verb = match action {
            RolloutActionKind::Pause => "pause",
            RolloutActionKind::Resume => "resume",
            RolloutActionKind::Abort => "abort",
            RolloutActionKind::Undo => "undo",
            RolloutActionKind::Unspecified => "act on",
        };
        self.answer(format!("to {verb} the rollout of pool `{pool}`"), answer)
    }

    /// The latest compliance evidence of every node of `pool` (every pool when empty).
    pub async fn get_compliance(&mut self, pool: &str) -> Result<Vec<NodeCompliance>, Error> {
        let message = GetComplianceRequest { pool: pool.into() };
        let answer = self.inner.get_compliance(request(message)).await;
        Ok(self.answer("to show compliance evidence", answer)?.nodes)
    }

    /// A compliance report of `pool` (every pool when empty) signed by the manager, with
    /// `history` snapshots per node (0: the manager's default).
    pub async fn get_compliance_report(
        &mut self,
        pool: &str,
        history: u32,
    ) -> Result<SignedComplianceReport, Error> {
        let message = GetComplianceReportRequest {
            pool: pool.into(),
            history,
        };
        let answer = self.inner.get_compliance_report(request(message)).await;
        self.answer("to sign a compliance report", answer)
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
        let response = answer.map_err(|status| Error::failed(what, &self.endpoint, status))?;
        if let Some(since) = response.metadata().get(STALE_SINCE) {
            let since = since.to_str().unwrap_or("an unreadable time");
            warn!(
                endpoint = %self.endpoint,
                since,
                "the manager cannot reach its fleet store: this answer comes from its memory and may be stale"
            );
        }
        Ok(response.into_inner())
    }
}

impl EventStream {
    /// The endpoint the events come from.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The next event; `None` when the manager ended the watch.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        self.inner
            .message()
            .await
            .map_err(|status| Error::failed(WATCH, &self.endpoint, status))
    }
}

/// A request bounded by [`REQUEST_TIMEOUT`].
pub(crate) fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}
