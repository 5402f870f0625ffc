//! The Agent service: each node's long-lived session, and certificate renewal.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opi_proto::v1::agent_message::Body as AgentBody;
use opi_proto::v1::agent_server::Agent;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{
    AgentMessage, ManagerMessage, RecordingRequest, RecordingResponse, RenewRequest, RenewResponse,
    Welcome,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info_span, warn, Instrument};

use super::convert::{self, facts_from_proto};
use super::peer::{self, Caller};
use crate::fleet::{recording_message, Fleet, FleetError, Outgoing, Session, SessionHello};
use crate::records::{rfc3339, Facts, GenerationId};
use crate::versions;

/// Time an agent has to say hello after opening its session.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Why a session ends or is refused at shutdown.
const SHUTTING_DOWN: &str = "the manager is shutting down; reconnect";
/// Messages queued towards one agent at most.
const OUTBOUND_QUEUE: usize = 16;

type Outbound = Pin<Box<dyn Stream<Item = Result<ManagerMessage, Status>> + Send>>;

/// Serves agent sessions and renewals.
pub struct AgentService {
    pub fleet: Arc<Fleet>,
}

#[tonic::async_trait]
impl Agent for AgentService {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = self.caller(&request).await?;
        if self.fleet.is_stopping() {
            return Err(Status::unavailable(SHUTTING_DOWN));
        }
        let remote = peer::peer_info(&request).remote;
        let mut inbound = request.into_inner();
        let hello = read_hello(&mut inbound, &caller).await?;

        let (outbound, receiver) = mpsc::channel(OUTBOUND_QUEUE);
        let session = self
            .fleet
            .attach(&caller.cert, hello, remote, outbound.clone())
            .await?;
        let _ = outbound
            .send(Box::new(Ok(welcome(&self.fleet, &session))))
            .await;
        if let Some(replica) = self.fleet.replica().filter(|r| !r.records_sessions()) {
            let recording = recording_message(false, replica.name());
            let _ = outbound.send(Box::new(Ok(recording))).await;
        }
        self.fleet.send_desired(&session.node).await;
        self.fleet.ask_pending_rotation(&session.node);
        self.fleet.send_trust_bundle_if_stale(&session.node);

        let span = info_span!("session", node = %session.node, session = session.id);
        let fleet = self.fleet.clone();
        let not_after = caller.cert.not_after;
        tokio::spawn(serve_session(fleet, session, inbound, outbound, not_after).instrument(span));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(receiver).map(|m| *m),
        )))
    }

    async fn recording(
        &self,
        request: Request<RecordingRequest>,
    ) -> Result<Response<RecordingResponse>, Status> {
        self.caller(&request).await?;
        let replica = self.fleet.replica();
        let recorded = match replica {
            Some(replica) => replica.confirm_recording().await,
            None => true,
        };
        Ok(Response::new(RecordingResponse {
            recorded,
            replica: replica.map(|r| r.name().to_string()).unwrap_or_default(),
        }))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let caller = peer::renewing_node(&request, &self.fleet)?;
        let csr = request.into_inner().csr_der;
        let chain = self.fleet.renew(&caller.cert, &csr, &caller.remote).await?;
        Ok(Response::new(RenewResponse {
            cert_chain_pem: chain,
            ca_bundle_pem: self.fleet.trust().bundle_pem.clone(),
        }))
    }
}

impl AgentService {
    /// The calling node, read from the store if another replica enrolled it since this one
    /// last did.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        match peer::node(request, &self.fleet) {
            Err(FleetError::UnknownNode { name }) => {
                self.fleet.learn_node(&name).await?;
                Ok(peer::node(request, &self.fleet)?)
            }
            other => Ok(other?),
        }
    }
}

async fn read_hello(
    inbound: &mut Streaming<AgentMessage>,
    caller: &Caller,
) -> Result<SessionHello, Status> {
    let name = &caller.cert.identity.name;
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "node {name} sent no hello within {HELLO_TIMEOUT:?}"
            ))
        })??;
    match first.and_then(|m| m.body) {
        Some(AgentBody::Hello(hello)) => Ok(SessionHello {
            facts: accepted_facts(name, &hello.agent_version, hello.facts.clone())?,
            boot_id: hello.boot_id,
            trust_bundle_digest: hello.trust_bundle_digest,
            summary: hello.summary,
            applied: (hello.applied_generation > 0).then_some(GenerationId {
                epoch: hello.applied_epoch,
                generation: hello.applied_generation,
            }),
            report: match hello.report {
                Some(report) => Some(convert::conditions_from_proto(report.conditions).map_err(
                    |why| {
                        FleetError::InvalidArgument(format!(
                            "node {name} sent an invalid health report: {why}"
                        ))
                    },
                )?),
                None => None,
            },
        }),
        _ => Err(FleetError::InvalidArgument(format!(
            "node {name} must open its session with a hello"
        ))
        .into()),
    }
}

/// The node's facts, with the agent version of its hello, if this manager accepts that version.
fn accepted_facts(
    node: &str,
    agent_version: &str,
    facts: Option<opi_proto::v1::NodeFacts>,
) -> Result<Facts, FleetError> {
    if let Err(refused) = versions::check(agent_version) {
        warn!(node = %node, agent_version = %agent_version, reason = %refused, "agent session refused");
        return Err(FleetError::UnsupportedAgent {
            node: node.to_string(),
            refused,
        });
    }
    let mut facts = facts_from_proto(facts.unwrap_or_default());
    facts.agent_version = agent_version.to_string();
    Ok(facts)
}

fn welcome(fleet: &Fleet, session: &Session) -> ManagerMessage {
    let record = fleet.node(&session.node).map(|v| v.record);
    ManagerMessage {
        body: Some(ManagerBody::Welcome(Welcome {
            node_name: session.node.clone(),
            pool: record.map(|r| r.pool).unwrap_or_default(),
            heartbeat_interval_secs: fleet.settings().heartbeat.as_secs() as u32,
            manager_endpoints: fleet.settings().endpoints.clone(),
        })),
    }
}

/// Reads heartbeats until the agent leaves, the manager closes the session, or the
/// certificate the session was opened with expires.
///
/// Every session's task holds this future for as long as the session lasts, so the rare
/// calls that go to the store are boxed while they run: inline, their state made the future
/// 4.4 KiB instead of 1.7.
async fn serve_session(
    fleet: Arc<Fleet>,
    session: Session,
    mut inbound: Streaming<AgentMessage>,
    outbound: mpsc::Sender<Outgoing>,
    not_after: OffsetDateTime,
) {
    let _open = fleet.counters().session_opened();
    let expires_in = (not_after - OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    // Also ends a session attached while the manager was already stopping.
    let stopping = fleet.stopping();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(AgentMessage { body: Some(AgentBody::Heartbeat(beat)) })) => {
                    let started = Instant::now();
                    let observed_at = beat.conditions_observed_at.and_then(convert::time_from);
                    let live = fleet.heartbeat(&session, beat.summary, observed_at);
                    fleet.counters().observe_heartbeat(started.elapsed());
                    if !live {
                        break;
                    }
                }
                Ok(Some(AgentMessage { body: Some(AgentBody::Report(report)) })) => {
                    match convert::conditions_from_proto(report.conditions) {
                        Ok(conditions) => {
                            if let Err(error) = Box::pin(fleet.report(&session, conditions)).await {
                                warn!(error = %error, "cannot apply health report");
                            }
                        }
                        Err(why) => warn!(reason = %why, "invalid health report ignored"),
                    }
                }
                Ok(Some(AgentMessage { body: Some(AgentBody::Apply(report)) })) => {
                    match convert::apply_report_from_proto(report) {
                        Ok(report) => {
                            let applied = Box::pin(fleet.apply_report(&session, report));
                            if let Err(error) = applied.await {
                                warn!(error = %error, "cannot record apply report");
                            }
                        }
                        Err(why) => warn!(reason = %why, "invalid apply report ignored"),
                    }
                }
                Ok(Some(AgentMessage { body: Some(AgentBody::BundleStored(stored)) })) => {
                    let stored = Box::pin(fleet.trust_bundle_stored(&session, stored.digest));
                    if let Err(error) = stored.await {
                        warn!(error = %error, "cannot record the trust bundle the node stored");
                    }
                }
                Ok(Some(AgentMessage { body: Some(AgentBody::Compliance(report)) })) => {
                    let received = crate::compliance::receive(&fleet, &session.node, report);
                    if let Err(error) = Box::pin(received).await {
                        warn!(error = %error, "cannot record compliance evidence");
                    }
                }
                Ok(Some(_)) => debug!("ignored unexpected message"),
                Ok(None) => break,
                Err(status) => {
                    debug!(error = %status, "session stream ended with an error");
                    break;
                }
            },
            _ = session.closed.notified() => break,
            () = &mut stopping => {
                let _ = outbound.try_send(Box::new(Ok(fleet.going_away())));
                let _ = outbound.try_send(Box::new(Err(Status::unavailable(SHUTTING_DOWN))));
                break;
            }
            _ = &mut expiry => {
                let message = format!("certificate of node {} expired at {}; renew it", session.node, rfc3339(not_after));
                let _ = outbound.send(Box::new(Err(Status::unauthenticated(message)))).await;
                break;
            }
        }
    }
    Box::pin(fleet.detach(&session)).await;
}
