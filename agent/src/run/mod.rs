//! `opi-agent run`: keeps one mTLS session open to a manager, fails over between the
//! endpoints with backoff, renews the node certificate late in its life, and keeps the node
//! conditions evaluated and reported.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use opi_pki::channel;
use opi_pki::tls::{client_config, ManagerVerifier, TlsError};
use opi_proto::v1::NodeFacts;
use rustls::ClientConfig;
use time::OffsetDateTime;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tonic::transport::Channel;
use tracing::{error, info, info_span, warn, Instrument};

use crate::backoff::Backoff;
use crate::conditions::{ConfigError, Validity};
use crate::health::HealthCollector;
use crate::output::timestamp;
use crate::paths::{LocationArgs, StatePaths};
use crate::store::{self, NodeState, StoreError};
use crate::{facts, ErrorChain, EXIT_RUNTIME};

pub mod applier;
pub mod compliance;
pub mod evaluation;
pub mod probe;
pub mod profile_state;
pub mod readiness;
pub mod reconnect;
pub mod renewal;
mod session;
pub mod signatures;

use applier::Applier;
use evaluation::Checks;
use probe::{SessionProbe, Target};
use readiness::Readiness;
use reconnect::Reconnect;

use session::{SessionEnd, SessionError};

/// Ceiling of the first reconnection delay.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between two connection attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A session that stayed up this long resets the reconnection backoff.
pub const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Arguments of `opi-agent run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where the node's files are.
    #[command(flatten)]
    pub location: LocationArgs,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The node's files cannot be loaded.
    #[error("cannot load the node's state from {state_dir}")]
    LoadState {
        /// The state directory.
        state_dir: PathBuf,
        /// The cause.
        #[source]
        source: Box<StoreError>,
    },
    /// The TLS configuration could not be built.
    #[error("cannot build the TLS configuration from the node's certificate and trust bundle in {state_dir}")]
    BuildTls {
        /// The state directory.
        state_dir: PathBuf,
        /// The cause.
        #[source]
        source: TlsError,
    },
    /// `health.toml` cannot be used.
    #[error(transparent)]
    LoadHealthConfig(ConfigError),
    /// Signal handlers cannot be installed.
    #[error("cannot install the SIGINT and SIGTERM handlers")]
    InstallSignalHandlers(#[source] io::Error),
}

impl RunError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::LoadState { source, .. } => match source.as_ref() {
                StoreError::LoadConfig(error) => error.exit_code(),
                _ => EXIT_RUNTIME,
            },
            RunError::LoadHealthConfig(error) => error.exit_code(),
            RunError::BuildTls { .. } | RunError::InstallSignalHandlers(_) => EXIT_RUNTIME,
        }
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let paths = args.location.resolve();
    crate::apply::recover_at_start(&paths).await;
    let state = store::load(&paths).map_err(|source| RunError::LoadState {
        state_dir: paths.dir.clone(),
        source: Box::new(source),
    })?;
    let span = info_span!("agent", node = %state.config.node, fleet = %state.config.fleet);
    let heartbeat = Duration::from_secs(state.config.heartbeat_secs().into());
    let checks = Checks::start(&paths, &state.leaf, heartbeat)
        .instrument(span.clone())
        .await
        .map_err(RunError::LoadHealthConfig)?;
    let notifier = Arc::new(opi_systemd::Notifier::from_env());
    let readiness = Readiness::new(notifier.clone(), state.config.managers.len());
    let agent = span.in_scope(|| Agent::new(paths, state, checks, readiness))?;
    let mut signals = Signals::install().map_err(RunError::InstallSignalHandlers)?;
    agent
        .readiness
        .spawn_offline_deadline(readiness::OFFLINE_READY_AFTER);

    tokio::select! {
        never = agent.serve().instrument(span) => match never {},
        name = signals.recv() => {
            info!(signal = name, "shutting down");
            notifier.stopping();
        }
    }
    Ok(())
}

/// The running agent: its state and what the reconnection loop keeps between sessions.
struct Agent {
    paths: StatePaths,
    state: NodeState,
    health: HealthCollector,
    checks: Checks,
    applier: Applier,
    /// The latest compliance evidence.
    compliance: tokio::sync::watch::Receiver<compliance::LatestEvidence>,
    /// The manager the apply verification probes: the one of the current session.
    probe_target: tokio::sync::watch::Sender<Option<Target>>,
    facts: NodeFacts,
    boot_id: String,
    heartbeat: Duration,
    renew_at: OffsetDateTime,
    renew_retry: Backoff,
    reconnect: Reconnect,
    next_endpoint: usize,
    session_opened: Option<Instant>,
    /// The replica of the current session said it cannot record the session in the fleet
    /// store: look for one that can.
    unrecorded: bool,
    /// The replica records the session again after it could not: report the latest again.
    report_again: bool,
    readiness: Readiness,
}

impl Agent {
    fn new(
        paths: StatePaths,
        state: NodeState,
        checks: Checks,
        readiness: Readiness,
    ) -> Result<Self, RunError> {
        let (probe_target, target) = tokio::sync::watch::channel(None);
        let probe = Arc::new(SessionProbe::new(target));
        let applier = Applier::start(&paths, checks.latest.clone(), probe);
        let compliance =
            compliance::start(&paths, checks.interval.subscribe(), applier.reports.clone());
        let mut agent = Self {
            health: HealthCollector::new(&paths.root),
            checks,
            applier,
            compliance,
            probe_target,
            facts: facts::collect(&paths.root),
            boot_id: facts::boot_id(),
            heartbeat: Duration::from_secs(state.config.heartbeat_secs().into()),
            renew_at: renewal::planned_at(&state.leaf, OffsetDateTime::now_utc()),
            renew_retry: Backoff::new(renewal::RETRY_BASE, renewal::RETRY_CAP),
            reconnect: Reconnect::new(BACKOFF_BASE, BACKOFF_CAP),
            next_endpoint: 0,
            session_opened: None,
            unrecorded: false,
            report_again: false,
            readiness,
            paths,
            state,
        };
        // Fail now, not at every connection attempt, if the stored material is unusable.
        agent.tls().map_err(|source| RunError::BuildTls {
            state_dir: agent.paths.dir.clone(),
            source,
        })?;
        agent.plan_renewal();
        Ok(agent)
    }

    /// Connects, serves sessions and reconnects, forever.
    async fn serve(mut self) -> Infallible {
        loop {
            let endpoint = self.endpoint();
            self.session_opened = None;
            let mut until_renewal = Duration::ZERO;
            let why = match self.connect_and_serve(&endpoint).await {
                Ok(SessionEnd::Renewed) => continue,
                Ok(SessionEnd::Moved(to)) => {
                    info!(from = %endpoint, to = %to, "moving the session to a manager replica that records it");
                    let managers = &self.state.config.managers;
                    if let Some(index) = managers.iter().position(|m| *m == to) {
                        self.next_endpoint = index;
                    }
                    self.reconnect.reset();
                    continue;
                }
                Ok(SessionEnd::GoingAway) => "the manager is going away".to_string(),
                Ok(SessionEnd::Closed) => {
                    info!(endpoint = %endpoint, "the manager closed the session");
                    "the manager closed the session".to_string()
                }
                Err(failure) => {
                    log_failure(&endpoint, &failure);
                    if matches!(failure, SessionError::CertificateExpired { .. }) {
                        // Nothing to do before the next renewal attempt.
                        until_renewal = (self.renew_at - OffsetDateTime::now_utc())
                            .try_into()
                            .unwrap_or_default();
                    }
                    ErrorChain(&failure).to_string()
                }
            };

            if self
                .session_opened
                .is_some_and(|at| at.elapsed() >= STABLE_SESSION)
            {
                self.reconnect.reset();
            }
            self.next_endpoint = self.next_endpoint.wrapping_add(1);
            let delay = self.reconnect.next_delay().max(until_renewal);
            self.readiness.session_lost(&endpoint, &why, delay);
            self.readiness.sleep(delay).await;
        }
    }

    async fn connect_and_serve(&mut self, endpoint: &str) -> Result<SessionEnd, SessionError> {
        let channel = self.connect(endpoint).await?;
        if OffsetDateTime::now_utc() >= self.renew_at && self.renew(endpoint, channel.clone()).await
        {
            return Ok(SessionEnd::Renewed);
        }
        // Only the renewal call accepts an expired certificate: a session would be refused.
        if self.state.leaf.expired_at(OffsetDateTime::now_utc()) {
            return Err(SessionError::CertificateExpired {
                expired_at: timestamp(self.state.leaf.not_after),
                retry_at: timestamp(self.renew_at),
            });
        }
        self.session(endpoint, channel).await
    }

    /// Opens an mTLS channel to `endpoint`, telling a refused manager from a transport failure.
    async fn connect(&self, endpoint: &str) -> Result<Channel, SessionError> {
        let (verifier, tls) = self.tls().map_err(SessionError::BuildTls)?;
        self.probe_target.send_replace(Some(Target {
            endpoint: endpoint.to_string(),
            tls: tls.clone(),
        }));
        channel::connect(endpoint, tls)
            .await
            .map_err(|source| match verifier.last_outcome() {
                Some(Err(refused)) => SessionError::RefuseManager {
                    endpoint: endpoint.to_string(),
                    source: refused,
                },
                Some(Ok(_)) | None => SessionError::Connect(source),
            })
    }

    /// A fresh verifier (so that its outcome is this attempt's) and the client configuration.
    fn tls(&self) -> Result<(Arc<ManagerVerifier>, Arc<ClientConfig>), TlsError> {
        let state = &self.state;
        let verifier = ManagerVerifier::with_roots(&state.ca_bundle_pem, &state.config.fleet)?;
        let config = client_config(verifier.clone(), Some((&state.chain_pem, &state.key)))?;
        Ok((verifier, config))
    }

    fn endpoint(&self) -> String {
        let managers = &self.state.config.managers;
        managers[self.next_endpoint % managers.len()].clone()
    }

    /// Renews the certificate over `channel`; on failure, plans a retry. Returns whether the
    /// certificate changed, in which case the caller reconnects with it at once.
    async fn renew(&mut self, endpoint: &str, channel: Channel) -> bool {
        let identity = self.state.leaf.identity.clone();
        info!(
            endpoint = %endpoint,
            serial = %self.state.leaf.serial,
            "renewing the node certificate",
        );
        match renewal::renew(channel, endpoint, &self.paths, &identity).await {
            Ok(renewed) => {
                let _ = std::fs::remove_file(self.paths.renewal_refused());
                self.state.key = renewed.key;
                self.state.chain_pem = renewed.chain_pem;
                self.state.leaf = renewed.leaf;
                let validity = Validity::of(&self.state.leaf);
                self.checks.certificate.send_replace(Some(validity));
                self.renew_retry.reset();
                self.plan_renewal();
                true
            }
            Err(failure) => {
                let delay = self.renew_retry.next_delay();
                self.renew_at = OffsetDateTime::now_utc() + delay;
                if self.state.leaf.expired_at(OffsetDateTime::now_utc()) && failure.is_refusal() {
                    self.record_expired_refusal(&failure);
                }
                warn!(
                    endpoint = %endpoint,
                    error = %ErrorChain(&failure),
                    retry_in = ?delay,
                    "certificate renewal failed",
                );
                false
            }
        }
    }

    /// Picks the renewal time of the current certificate and says so.
    fn plan_renewal(&mut self) {
        let leaf = &self.state.leaf;
        self.renew_at = renewal::planned_at(leaf, OffsetDateTime::now_utc());
        if leaf.expired_at(OffsetDateTime::now_utc()) {
            // The manager renews an expired certificate within a window after its expiry (7
            // days by default), on proof of the old key: try at once.
            self.renew_at = OffsetDateTime::now_utc();
            warn!(
                expired_at = %timestamp(leaf.not_after),
                "the node certificate has expired; renewing it now with proof of its key (the manager allows this for a while after expiry; past that, the node must re-enroll with `opi-agent enroll --reenroll`)"
            );
            return;
        }
        info!(
            serial = %leaf.serial,
            not_after = %timestamp(leaf.not_after),
            renew_at = %timestamp(self.renew_at),
            "certificate renewal planned",
        );
    }
}

impl Agent {
    /// Says loudly, and for `opi-agent status`, that the manager refuses to renew the expired
    /// certificate; the agent keeps retrying, at most every [`renewal::RETRY_CAP`].
    fn record_expired_refusal(&self, failure: &renewal::RenewError) {
        let why = ErrorChain(failure).to_string();
        error!(
            expired_at = %timestamp(self.state.leaf.not_after),
            error = %why,
            "the manager refuses to renew the expired node certificate; an operator must allow a re-enrollment (`opictl node allow-reenroll NODE`), then run `opi-agent enroll --reenroll --token-file FILE` on this node",
        );
        let path = self.paths.renewal_refused();
        if let Err(failure) = opi_pki::files::write_public(&path, why.as_bytes()) {
            warn!(path = %path.display(), error = %failure, "cannot record the renewal refusal for `opi-agent status`");
        }
    }
}

/// Logs a failed session once, at error level when an operator must act on the manager's side.
fn log_failure(endpoint: &str, failure: &SessionError) {
    if failure.is_refusal() {
        error!(
            endpoint = %endpoint,
            error = %ErrorChain(failure),
            "the manager refuses this node; an operator must act",
        );
    } else {
        warn!(
            endpoint = %endpoint,
            error = %ErrorChain(failure),
            "session with the manager failed",
        );
    }
}

/// SIGINT and SIGTERM.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal and returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
