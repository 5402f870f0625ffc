//! One simulated agent: its own TCP+TLS connection, a hello, then heartbeats at the planned
//! interval with a random phase, and now and then a changed health report. A lost session is
//! opened again as the real agent does: after the manager's going-away notice, at the delay it
//! drew then at short intervals; after any other loss, with the real agent's backoff.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opi_agent::run::reconnect::Reconnect;
use opi_agent::run::{BACKOFF_BASE, BACKOFF_CAP};
use opi_pki::tls::{client_config, ManagerVerifier};
use opi_proto::v1::agent_client::AgentClient;
use opi_proto::v1::agent_message::Body;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{
    AgentMessage, Condition, ConditionStatus, HealthReport, HealthSummary, Heartbeat, Hello,
    ManagerMessage, Severity,
};
use rustls::ClientConfig;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::identity::{facts, Credentials};
use super::Config;

/// Messages queued towards the session stream at most.
const QUEUE: usize = 4;
/// How long a session whose sending side closed waits for the rest of what the manager sent.
const LAST_WORD_WAIT: Duration = Duration::from_secs(5);
/// The conditions every simulated node reports; the first one flips on a report change.
const CONDITIONS: [&str; 3] = ["DiskPressure", "MemoryPressure", "KubeletHealthy"];

/// What every agent shares: where to connect, how often to beat.
#[derive(Debug)]
pub struct Plan {
    endpoint: String,
    verifier: Option<Arc<ManagerVerifier>>,
    /// Digest of the fleet's trust bundle, which a real agent stores at its first session and
    /// states in every hello after; empty when not known, and the manager sends the bundle.
    bundle_digest: String,
    interval: Duration,
    /// Chance that a heartbeat is replaced by a changed health report.
    change_chance: f64,
    error: std::sync::Mutex<Option<String>>,
}

/// Fleet-wide tallies, read by the simulation.
#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
    pub reports: AtomicU64,
    /// Sessions that the target ended while the agent still ran.
    pub lost: AtomicU64,
    /// Sessions opened again after one was lost.
    pub reconnected: AtomicU64,
    /// Attempts to open a lost session again that failed.
    pub failed_attempts: AtomicU64,
    /// Those of `failed_attempts` that found nobody listening: cheap, unlike a timed-out
    /// handshake.
    pub refused_attempts: AtomicU64,
}

impl Plan {
    /// The plan of `config`'s fleet.
    pub fn new(config: &Config) -> Self {
        let verifier = super::identity::fleet_verifier(config);
        let per_minute = config.agents as f64 * 60.0 / config.heartbeat.as_secs_f64();
        let bundle = std::fs::read_to_string(config.data_dir.join("pki/trust-bundle.pem"));
        Self {
            endpoint: config.endpoint.clone(),
            bundle_digest: bundle
                .map_or_else(|_| String::new(), |pem| opi_pki::bundle_digest(&pem)),
            error: std::sync::Mutex::new(verifier.as_ref().err().map(|e| format!("{e:#}"))),
            verifier: verifier.ok(),
            interval: config.heartbeat,
            change_chance: (config.changes_per_min / per_minute).clamp(0.0, 1.0),
        }
    }

    /// The plan of one agent outside a simulation, beating every `interval`.
    pub fn single(endpoint: &str, verifier: Arc<ManagerVerifier>, interval: Duration) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            verifier: Some(verifier),
            bundle_digest: String::new(),
            interval,
            change_chance: 0.0,
            error: std::sync::Mutex::new(None),
        }
    }

    /// The first failure of any agent, if one failed.
    pub fn first_error(&self) -> Option<String> {
        self.error.lock().expect("error lock").clone()
    }
}

impl Counters {
    /// Agents that opened their session or gave up.
    pub fn settled(&self) -> u64 {
        self.connected.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// Runs one agent until `stopped` turns true. `permit` bounds the connections being opened and
/// is released once the first session is open. An agent whose first session fails gives up; a
/// lost session is opened again, after the real agent's backoff, until `stopped`.
pub async fn run(
    plan: Arc<Plan>,
    creds: Credentials,
    source: Option<IpAddr>,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let tls = tls(&plan, &creds);
    let opened = match &tls {
        Ok(tls) => open_with(&plan, tls.clone(), &creds, source).await,
        Err(error) => Err(anyhow::anyhow!("{error:#}")),
    };
    drop(permit);
    let (mut sender, mut responses) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = plan.error.lock().expect("error lock");
            first.get_or_insert_with(|| format!("session of {}: {error:#}", creds.name));
            return;
        }
    };
    counters.connected.fetch_add(1, Ordering::Relaxed);
    let mut reconnect = Reconnect::new(BACKOFF_BASE, BACKOFF_CAP);
    loop {
        match beat(&plan, sender, responses, &counters, stopped.clone()).await {
            Ended::Stopped => return,
            // Sessions here last long enough for the real agent to reset its backoff.
            Ended::Lost => reconnect.reset(),
            Ended::GoingAway { after, spread } => reconnect.going_away(after, spread),
        }
        let tls = tls
            .as_ref()
            .expect("the first session opened with it")
            .clone();
        match reopen(
            &plan,
            tls,
            &creds,
            source,
            &counters,
            &mut stopped,
            &mut reconnect,
        )
        .await
        {
            Some(opened) => (sender, responses) = opened,
            None => return,
        }
        counters.reconnected.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens the session again after a loss, waiting as the real agent does between attempts;
/// `None` once `stopped`.
async fn reopen(
    plan: &Plan,
    tls: Arc<ClientConfig>,
    creds: &Credentials,
    source: Option<IpAddr>,
    counters: &Counters,
    stopped: &mut watch::Receiver<bool>,
    reconnect: &mut Reconnect,
) -> Option<Opened> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(reconnect.next_delay()) => {}
            _ = stopped.changed() => return None,
        }
        match open_with(plan, tls.clone(), creds, source).await {
            Ok(opened) => {
                reconnect.opened();
                return Some(opened);
            }
            Err(error) => {
                counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                if refused(&error) {
                    counters.refused_attempts.fetch_add(1, Ordering::Relaxed);
                } else if FAILURES_SHOWN.fetch_add(1, Ordering::Relaxed) < SHOW_FAILURES {
                    eprintln!(
                        "opi-fleet-sim: {} {} could not reopen its session: {error:#}",
                        time::OffsetDateTime::now_utc(),
                        creds.name
                    );
                }
            }
        };
    }
}

/// Failed attempts other than refusals printed, with the time, to tell what failed and when.
const SHOW_FAILURES: u64 = 5;
static FAILURES_SHOWN: AtomicU64 = AtomicU64::new(0);

/// Whether an attempt failed because nobody listened at the target.
fn refused(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Why a session's heartbeat loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Stopped,
    Lost,
    /// The manager said it is going away, and to come back after a delay drawn within a
    /// spread.
    GoingAway {
        after: Duration,
        spread: Duration,
    },
}

/// The sending side and the answers of an open session.
pub type Opened = (
    mpsc::Sender<AgentMessage>,
    Streaming<opi_proto::v1::ManagerMessage>,
);

/// Connects, sends the hello and waits for the session to be accepted.
pub async fn open(
    plan: &Plan,
    creds: &Credentials,
    source: Option<IpAddr>,
) -> anyhow::Result<Opened> {
    open_with(plan, tls(plan, creds)?, creds, source).await
}

/// The TLS client configuration of one agent, built once: the key and certificate are parsed
/// (and the key checked, a P-256 multiplication) once per agent rather than at every attempt,
/// since the simulator shares the machine with the managers it measures.
pub fn tls(plan: &Plan, creds: &Credentials) -> anyhow::Result<Arc<ClientConfig>> {
    let verifier = plan
        .verifier
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no trust bundle for the fleet"))?;
    Ok(client_config(
        verifier,
        Some((&creds.chain_pem, &creds.key)),
    )?)
}

/// [`open`] with the agent's TLS configuration already built.
async fn open_with(
    plan: &Plan,
    tls: Arc<ClientConfig>,
    creds: &Credentials,
    source: Option<IpAddr>,
) -> anyhow::Result<Opened> {
    let channel = opi_pki::channel::connect_from(&plan.endpoint, tls, source).await?;

    let (sender, receiver) = mpsc::channel(QUEUE);
    sender.send(hello(&creds.name, &plan.bundle_digest)).await?;
    let responses = AgentClient::new(channel)
        .session(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok((sender, responses))
}

/// Heartbeats on one session until it is lost or the simulation stops.
async fn beat(
    plan: &Plan,
    sender: mpsc::Sender<AgentMessage>,
    mut responses: Streaming<opi_proto::v1::ManagerMessage>,
    counters: &Counters,
    mut stopped: watch::Receiver<bool>,
) -> Ended {
    let phase = rand::random_range(0.0..1.0) * plan.interval.as_secs_f64();
    let mut next = Instant::now() + Duration::from_secs_f64(phase);
    let mut seq = 0;
    let mut problem = false;
    loop {
        tokio::select! {
            // What the manager sent goes first, as in the real agent's session.
            biased;
            message = responses.message() => match ended(message) {
                Some(ended) => {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    return ended;
                }
                None => continue,
            },
            _ = stopped.changed() => return Ended::Stopped,
            _ = sleep_until(next) => {}
        }
        next += plan.interval;
        seq += 1;
        let message = if rand::random_bool(plan.change_chance) {
            problem = !problem;
            counters.reports.fetch_add(1, Ordering::Relaxed);
            report_message(problem)
        } else {
            counters.sent.fetch_add(1, Ordering::Relaxed);
            heartbeat(seq)
        };
        if sender.send(message).await.is_err() {
            counters.lost.fetch_add(1, Ordering::Relaxed);
            return last_word(responses).await;
        }
    }
}

/// How a message (or the stream's end) ends the session, if it does.
fn ended(message: Result<Option<ManagerMessage>, Status>) -> Option<Ended> {
    match message {
        Ok(Some(ManagerMessage {
            body: Some(ManagerBody::GoingAway(notice)),
        })) => Some(Ended::GoingAway {
            after: Duration::from_millis(notice.reconnect_after_ms.into()),
            spread: Duration::from_millis(notice.spread_ms.into()),
        }),
        Ok(Some(_)) => None,
        _ => Some(Ended::Lost),
    }
}

/// Why a session whose sending side closed ended: the manager's going-away notice may be
/// waiting in the stream before its end, and the real agent, which never ends a session on a
/// failed send, reads it. Ending here as lost put about 300 of 50,000 simulated agents in the
/// backoff after failures at each restart.
async fn last_word(mut responses: Streaming<ManagerMessage>) -> Ended {
    loop {
        match tokio::time::timeout(LAST_WORD_WAIT, responses.message()).await {
            Ok(message) => match ended(message) {
                Some(ended) => return ended,
                None => continue,
            },
            Err(_) => return Ended::Lost,
        }
    }
}

fn hello(name: &str, bundle_digest: &str) -> AgentMessage {
    AgentMessage {
        body: Some(Body::Hello(Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            trust_bundle_digest: bundle_digest.into(),
            boot_id: boot_id(name),
            facts: Some(facts(name)),
            summary: Some(summary()),
            report: Some(report(false)),
            ..Hello::default()
        })),
    }
}

/// The simulated node's boot id: the same at every session, as a real node's is until it
/// reboots (a new one at each session would read as a reboot).
fn boot_id(name: &str) -> String {
    let half = |salt: u8| {
        let mut hasher = std::hash::DefaultHasher::new();
        (salt, name).hash(&mut hasher);
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(0), half(1))
}

fn heartbeat(seq: u64) -> AgentMessage {
    AgentMessage {
        body: Some(Body::Heartbeat(Heartbeat {
            seq,
            summary: Some(summary()),
            conditions_observed_at: Some(SystemTime::now().into()),
        })),
    }
}

/// A health report whose first condition is a problem when `problem` is set.
pub fn report_message(problem: bool) -> AgentMessage {
    AgentMessage {
        body: Some(Body::Report(report(problem))),
    }
}

fn summary() -> HealthSummary {
    HealthSummary {
        cpu_percent: rand::random_range(1.0..60.0),
        memory_used_bytes: 3 << 30,
        memory_total_bytes: 16 << 30,
        disk_used_bytes: 40 << 30,
        disk_total_bytes: 100 << 30,
        load1: 0.5,
        load5: 0.4,
        load15: 0.3,
        uptime_secs: 86_400,
    }
}

/// The node's conditions; the first one is a problem when `problem` is set.
fn report(problem: bool) -> HealthReport {
    let now = SystemTime::now();
    let conditions = CONDITIONS
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let bad = problem && i == 0;
            Condition {
                r#type: kind.to_string(),
                subject: String::new(),
                status: if bad {
                    ConditionStatus::Problem
                } else {
                    ConditionStatus::Ok
                } as i32,
                severity: if bad {
                    Severity::Warning
                } else {
                    Severity::Unspecified
                } as i32,
                reason: if bad {
                    "SimulatedPressure"
                } else {
                    "Simulated"
                }
                .into(),
                message: "simulated condition".into(),
                last_transition: Some(now.into()),
                last_observed: Some(now.into()),
            }
        })
        .collect();
    HealthReport { conditions }
}
