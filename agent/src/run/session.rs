//! One session with a manager: hello with the full set of conditions, heartbeats at the
//! interval the manager asks for, a report whenever a condition changes, and the manager's
//! messages (welcome, renew now, profile generations) on the same stream, and what became of
//! each generation as soon as the applier knows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opi_pki::channel::{self, ChannelError};
use opi_pki::tls::{ManagerRefused, TlsError};
use opi_proto::v1::agent_client::AgentClient;
use opi_proto::v1::agent_message::Body as AgentBody;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{
    AgentMessage, Heartbeat, Hello, ManagerMessage, RecordingRequest, TrustBundle,
    TrustBundleStored, Welcome,
};
use rustls::ClientConfig;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{interval_at, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;
use tracing::{debug, info, warn};

use super::evaluation::{self, Latest};
use super::{applier, compliance, Agent};
use crate::conditions::to_timestamp;
use crate::rpc::{self, RpcError};
use crate::ErrorChain;

/// Messages queued for the manager before heartbeats are skipped rather than piled up.
pub const OUTBOX_CAPACITY: usize = 4;
/// Time allowed for the manager to accept the stream.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an agent whose replica cannot record its session asks the other replicas
/// whether they can; the first ask comes at a point of this period set by when the session
/// opened, so agents of one replica do not all ask at once.
pub const LOOK_ELSEWHERE_EVERY: Duration = Duration::from_secs(2);
/// Time one other replica has to connect and answer whether it records sessions.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// How a session ended without failing.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The certificate was renewed: reconnect at once with the new one.
    Renewed,
    /// The manager ended the stream.
    Closed,
    /// The replica could not record the session and the one at this endpoint can: connect
    /// there at once.
    Moved(String),
    /// The manager said it is going away, and when to come back.
    GoingAway,
}

/// Why a session could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The TLS configuration could not be built.
    #[error("cannot build the TLS configuration")]
    BuildTls(#[source] TlsError),
    /// The manager's certificate failed verification.
    #[error("refusing manager {endpoint}")]
    RefuseManager {
        /// The manager endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: ManagerRefused,
    },
    /// TCP or TLS failed.
    #[error(transparent)]
    Connect(ChannelError),
    /// The manager did not accept the stream.
    #[error("cannot open the session with {endpoint}")]
    OpenSession {
        /// The manager endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: RpcError,
    },
    /// The certificate expired and could not be renewed: no session can open with it.
    #[error("the node certificate expired at {expired_at} and is not renewed yet; next renewal attempt at {retry_at}")]
    CertificateExpired {
        /// When it expired, RFC 3339.
        expired_at: String,
        /// When renewal is tried again, RFC 3339.
        retry_at: String,
    },
    /// The stream broke.
    #[error("the session with {endpoint} broke")]
    ReceiveMessage {
        /// The manager endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: RpcError,
    },
}

impl SessionError {
    /// Whether the manager refused this node itself (revoked, unknown): an operator must act.
    pub fn is_refusal(&self) -> bool {
        match self {
            SessionError::OpenSession { source, .. }
            | SessionError::ReceiveMessage { source, .. } => source.is_refusal(),
            SessionError::CertificateExpired { .. } => true,
            SessionError::BuildTls(_)
            | SessionError::RefuseManager { .. }
            | SessionError::Connect(_) => false,
        }
    }
}

impl Agent {
    /// Serves one session on `channel` until it ends, fails, or the certificate is renewed.
    pub(super) async fn session(
        &mut self,
        endpoint: &str,
        channel: Channel,
    ) -> Result<SessionEnd, SessionError> {
        // An evaluation landing between this read and the hello makes the first report repeat
        // the hello's set: harmless, the manager sees no change in it.
        let mut latest = self.checks.latest.clone();
        let mut reported = latest.borrow_and_update().revision;
        let mut reports = self.applier.reports.clone();
        let (outbox, mut inbound) = self.open(endpoint, &channel).await?;
        self.session_opened = Some(Instant::now());
        self.reconnect.opened();
        info!(endpoint = %endpoint, "session open");
        self.readiness.session_open(endpoint);
        // The manager learns what became of the last generation, even if it ended offline.
        let mut applied_sent = applier::send_report_if_due(&outbox, &reports, None);
        let mut evidence = self.compliance.clone();
        let mut evidence_sent = compliance::send_if_due(&outbox, &evidence, None);
        let mut observing = true;

        let mut heartbeat = heartbeat_timer(self.heartbeat);
        let mut watchdog = self.readiness.watchdog_timer();
        let mut seq = 0u64;
        let mut evaluating = true;
        let mut applying = true;
        self.unrecorded = false;
        let mut look_elsewhere = heartbeat_timer(LOOK_ELSEWHERE_EVERY);
        let mut looking: Option<JoinHandle<Option<String>>> = None;
        loop {
            tokio::select! {
                _ = watchdog.tick() => self.readiness.watchdog(),
                _ = look_elsewhere.tick(), if self.unrecorded && looking.is_none() => {
                    let asked = self.endpoints_to_ask(endpoint);
                    if let Ok((_, tls)) = self.tls() {
                        looking = Some(tokio::spawn(first_recording(asked, tls)));
                    }
                }
                found = async { looking.as_mut().expect("guarded by is_some").await },
                    if looking.is_some() =>
                {
                    looking = None;
                    match found {
                        Ok(Some(same)) if same == endpoint => {
                            info!(endpoint = %endpoint, "the manager replica records this session again");
                            self.report_again |= self.unrecorded;
                            self.unrecorded = false;
                        }
                        Ok(Some(other)) if self.unrecorded => {
                            return Ok(SessionEnd::Moved(other));
                        }
                        _ => {}
                    }
                    if std::mem::take(&mut self.report_again) {
                        reported = evaluation::NOTHING_REPORTED;
                    }
                }
                _ = heartbeat.tick() => {
                    seq += 1;
                    // Also retries a report the full outbox could not take.
                    reported = evaluation::send_report_if_due(&outbox, &latest, reported);
                    applied_sent = applier::send_report_if_due(&outbox, &reports, applied_sent);
                    evidence_sent = compliance::send_if_due(&outbox, &evidence, evidence_sent);
                    self.send_heartbeat(&outbox, seq, &latest);
                }
                changed = evidence.changed(), if observing => {
                    // The compliance task only ends with the runtime.
                    observing = changed.is_ok();
                    evidence_sent = compliance::send_if_due(&outbox, &evidence, evidence_sent);
                }
                changed = reports.changed(), if applying => {
                    // The applier task only ends with the runtime (or a panic): stop polling
                    // it then, or this branch would be ready forever.
                    applying = changed.is_ok();
                    applied_sent = applier::send_report_if_due(&outbox, &reports, applied_sent);
                }
                evaluated = latest.changed(), if evaluating => {
                    // The evaluation task only ends with the runtime.
                    evaluating = evaluated.is_ok();
                    reported = evaluation::send_report_if_due(&outbox, &latest, reported);
                }
                received = inbound.message() => {
                    let received = received.map_err(|status| SessionError::ReceiveMessage {
                        endpoint: endpoint.to_string(),
                        source: RpcError::from_status(status),
                    })?;
                    let Some(message) = received else {
                        return Ok(SessionEnd::Closed);
                    };
                    if self.on_message(endpoint, &channel, &outbox, message, &mut heartbeat).await {
                        return Ok(SessionEnd::Renewed);
                    }
                    if std::mem::take(&mut self.report_again) {
                        reported = evaluation::NOTHING_REPORTED;
                    }
                    if self.reconnect.notice_pending() {
                        return Ok(SessionEnd::GoingAway);
                    }
                }
                () = sleep_until(self.renew_at) => {
                    if self.renew(endpoint, channel.clone()).await {
                        return Ok(SessionEnd::Renewed);
                    }
                }
            }
        }
    }

    /// Opens the stream, the hello queued first with the latest conditions.
    async fn open(
        &mut self,
        endpoint: &str,
        channel: &Channel,
    ) -> Result<(mpsc::Sender<AgentMessage>, Streaming<ManagerMessage>), SessionError> {
        let (outbox, queue) = mpsc::channel(OUTBOX_CAPACITY);
        outbox
            .try_send(self.hello())
            .expect("a new queue has room for the hello");
        let mut client = AgentClient::new(channel.clone());
        let inbound = rpc::with_deadline(OPEN_TIMEOUT, client.session(ReceiverStream::new(queue)))
            .await
            .map_err(|source| SessionError::OpenSession {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Ok((outbox, inbound))
    }

    fn hello(&mut self) -> AgentMessage {
        let applied = self.applier.reports.borrow().applied;
        AgentMessage {
            body: Some(AgentBody::Hello(Hello {
                agent_version: crate::AGENT_VERSION.to_string(),
                boot_id: self.boot_id.clone(),
                applied_generation: applied.map_or(0, |id| id.generation),
                facts: Some(self.facts.clone()),
                summary: Some(self.health.summary()),
                report: Some(self.checks.latest.borrow().report()),
                applied_epoch: applied.map_or(0, |id| id.epoch),
                trust_bundle_digest: opi_pki::bundle_digest(&self.state.ca_bundle_pem),
            })),
        }
    }

    /// Queues a heartbeat, stamped with the time of the latest evaluation; skips it if the
    /// stream is not draining (keep-alives will notice a dead manager).
    fn send_heartbeat(
        &mut self,
        outbox: &mpsc::Sender<AgentMessage>,
        seq: u64,
        latest: &watch::Receiver<Latest>,
    ) {
        let observed_at = latest.borrow().observed_at;
        let message = AgentMessage {
            body: Some(AgentBody::Heartbeat(Heartbeat {
                seq,
                summary: Some(self.health.summary()),
                conditions_observed_at: Some(to_timestamp(observed_at)),
            })),
        };
        if outbox.try_send(message).is_err() {
            debug!(seq, "heartbeat skipped: the stream is not draining");
        }
    }

    /// Handles a manager message. Returns whether the certificate was renewed.
    async fn on_message(
        &mut self,
        endpoint: &str,
        channel: &Channel,
        outbox: &mpsc::Sender<AgentMessage>,
        message: ManagerMessage,
        heartbeat: &mut Interval,
    ) -> bool {
        match message.body {
            Some(ManagerBody::Welcome(welcome)) => {
                self.on_welcome(endpoint, welcome, heartbeat);
                false
            }
            Some(ManagerBody::RenewNow(renew)) => {
                info!(
                    endpoint = %endpoint,
                    reason = %renew.reason,
                    "the manager asks for a certificate renewal now",
                );
                self.renew(endpoint, channel.clone()).await
            }
            Some(ManagerBody::Profile(profile)) => {
                debug!(endpoint = %endpoint, pool = %profile.pool, generation = profile.generation, "profile generation received");
                // The applier takes the newest; one arriving during an apply waits for it.
                self.applier.desired.send_replace(Some(profile));
                false
            }
            Some(ManagerBody::TrustBundle(bundle)) => {
                self.on_trust_bundle(endpoint, outbox, bundle);
                false
            }
            Some(ManagerBody::Recording(recording)) => {
                match recording.recorded {
                    false => {
                        warn!(endpoint = %endpoint, replica = %recording.replica, "the manager replica cannot record this session in the fleet store; looking for one that can")
                    }
                    true => {
                        info!(endpoint = %endpoint, replica = %recording.replica, "the manager replica records this session again")
                    }
                }
                // Reports sent while unrecorded may be lost: the next heartbeat sends the
                // latest again.
                self.report_again |= self.unrecorded && recording.recorded;
                self.unrecorded = !recording.recorded;
                false
            }
            Some(ManagerBody::GoingAway(notice)) => {
                let after = Duration::from_millis(notice.reconnect_after_ms.into());
                let spread = Duration::from_millis(notice.spread_ms.into());
                info!(endpoint = %endpoint, reason = %notice.reason, after = ?after, spread = ?spread, "the manager is going away; reconnecting after the delay it drew for this node");
                self.reconnect.going_away(after, spread);
                false
            }
            None => {
                debug!(endpoint = %endpoint, "ignoring an empty or unknown manager message");
                false
            }
        }
    }

    /// Stores the fleet's trust bundle the manager sent, trusted from the next connection on,
    /// and says so; a bundle that does not parse or match its digest is refused.
    fn on_trust_bundle(
        &mut self,
        endpoint: &str,
        outbox: &mpsc::Sender<AgentMessage>,
        bundle: TrustBundle,
    ) {
        if opi_pki::bundle_digest(&bundle.pem) != bundle.digest {
            warn!(endpoint = %endpoint, digest = %bundle.digest, "ignoring a trust bundle that does not match its digest");
            return;
        }
        if let Err(failure) = opi_pki::tls::root_store(&bundle.pem) {
            warn!(endpoint = %endpoint, error = %ErrorChain(&failure), "ignoring an unusable trust bundle");
            return;
        }
        if !keeps_a_root(&self.state.ca_bundle_pem, &bundle.pem) {
            warn!(endpoint = %endpoint, digest = %bundle.digest, "ignoring a trust bundle that keeps none of the roots this node trusts: a rollover adds a root, then drops the old one");
            return;
        }
        if let Err(failure) = crate::store::store_bundle(&self.paths, &bundle.pem) {
            warn!(endpoint = %endpoint, error = %ErrorChain(&failure), "cannot store the trust bundle; the manager sends it again at the next session");
            return;
        }
        self.state.ca_bundle_pem = bundle.pem;
        info!(endpoint = %endpoint, digest = %bundle.digest, "trust bundle stored");
        let stored = AgentMessage {
            body: Some(AgentBody::BundleStored(TrustBundleStored {
                digest: bundle.digest,
            })),
        };
        if outbox.try_send(stored).is_err() {
            debug!("trust bundle acknowledgement skipped: the stream is not draining; the next hello says it");
        }
    }

    /// `current` first (its replica may record again: then the agent stays), then the other
    /// manager endpoints in the order the agent tries them.
    fn endpoints_to_ask(&self, current: &str) -> Vec<String> {
        let managers = &self.state.config.managers;
        let start = self.next_endpoint % managers.len().max(1);
        let others = managers
            .iter()
            .cycle()
            .skip(start + 1)
            .take(managers.len())
            .filter(|m| m.as_str() != current)
            .cloned();
        std::iter::once(current.to_string()).chain(others).collect()
    }

    fn on_welcome(&mut self, endpoint: &str, welcome: Welcome, heartbeat: &mut Interval) {
        info!(endpoint = %endpoint, pool = %welcome.pool, "welcomed by the manager");
        let asked = Duration::from_secs(welcome.heartbeat_interval_secs.into());
        if !asked.is_zero() && asked != self.heartbeat {
            info!(interval = ?asked, "heartbeat interval set by the manager");
            self.heartbeat = asked;
            *heartbeat = heartbeat_timer(asked);
            self.checks.interval.send_replace(asked);
        }
        let endpoints = welcome.manager_endpoints;
        if !endpoints.is_empty() && endpoints != self.state.config.managers {
            self.update_endpoints(endpoints);
        }
    }

    /// Stores the manager endpoints the fleet announced, if they are all usable.
    fn update_endpoints(&mut self, endpoints: Vec<String>) {
        if let Some(bad) = endpoints
            .iter()
            .find(|endpoint| opi_pki::channel::host_port(endpoint).is_err())
        {
            warn!(
                endpoint = %bad,
                "ignoring announced manager endpoints: one is not an https://HOST:PORT URL",
            );
            return;
        }
        let mut config = self.state.config.clone();
        config.managers = endpoints;
        let path = self.paths.config();
        match config.store(&path) {
            Ok(()) => {
                info!(
                    managers = ?config.managers,
                    path = %path.display(),
                    "manager endpoints updated",
                );
                self.state.config = config;
            }
            Err(failure) => {
                warn!(
                    path = %path.display(),
                    error = %ErrorChain(&failure),
                    "cannot store the announced manager endpoints",
                );
            }
        }
    }
}

/// Whether `next` keeps at least one root of `current`: a bundle may add roots or drop some,
/// never replace them all at once.
fn keeps_a_root(current: &str, next: &str) -> bool {
    let parse = |pem| opi_pki::tls::parse_certs(pem, "trust bundle").unwrap_or_default();
    let current = parse(current);
    parse(next).iter().any(|root| current.contains(root))
}

/// A heartbeat timer whose first tick is one period from now.
/// The first of `endpoints` whose replica says it records sessions, asking each in turn.
async fn first_recording(endpoints: Vec<String>, tls: Arc<ClientConfig>) -> Option<String> {
    for endpoint in endpoints {
        let ask = async {
            let channel = channel::connect(&endpoint, tls.clone()).await.ok()?;
            let answer = AgentClient::new(channel)
                .recording(RecordingRequest {})
                .await
                .ok()?;
            Some(answer.into_inner().recorded)
        };
        match tokio::time::timeout(ASK_TIMEOUT, ask).await {
            Ok(Some(true)) => return Some(endpoint),
            answer => {
                debug!(endpoint = %endpoint, recorded = ?answer.ok().flatten(), "replica cannot take the session")
            }
        }
    }
    None
}

fn heartbeat_timer(period: Duration) -> Interval {
    let mut timer = interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Sleeps until a wall-clock time; returns at once if it has passed.
fn sleep_until(at: OffsetDateTime) -> tokio::time::Sleep {
    let remaining = (at - OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trust_bundle_may_add_or_drop_roots_but_not_replace_them_all() {
        let root = |fleet| opi_pki::ca::create_root_ca(fleet).unwrap().cert_pem;
        let (old, new, evil) = (root("prod"), root("prod"), root("prod"));
        let both = format!("{old}{new}");
        assert!(keeps_a_root(&old, &both), "a rollover adds the new root");
        assert!(keeps_a_root(&both, &new), "retirement drops the old one");
        assert!(
            !keeps_a_root(&old, &evil),
            "a wholesale replacement is refused"
        );
        assert!(!keeps_a_root(&old, "not a bundle"));
    }
}
