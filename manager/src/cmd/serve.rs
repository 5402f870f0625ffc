//! `opi-manager serve`: loads the data directory and store, and serves the fleet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use opi_pki::serving::{swappable_server_config, ServingCert};
use opi_pki::tls::ClientAuth;
use opi_pki::{ca, files};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use super::leader::{announce, supervise, SUPERVISE_EVERY};
use crate::alerts::{AlertSettings, Alerting, AlertmanagerUrl, RuleSettings};
use crate::datadir::{self, DataDir};
use crate::fleet::going_away::RECONNECTS_PER_SEC;
use crate::fleet::{Fleet, Settings};
use crate::identity::ManagerCerts;
use crate::metrics::{Exporter, MetricsServer, Registry};
use crate::replica::{FencedStore, Replica};
use crate::server::{self, ServeError};
use crate::store::{MeasuredStore, Store};
use opi_systemd::Notifier;

/// Shortest node certificate lifetime accepted (renewal happens at 60–80 % of it).
pub const MIN_NODE_CERT_TTL: Duration = Duration::from_secs(10);
/// Shortest server certificate lifetime accepted (it renews when a third is left).
pub const MIN_SERVER_CERT_TTL: Duration = Duration::from_secs(3);
/// How long a stopping manager waits for its connections to close before it drops them; every
/// state change is already in the store, so nothing is lost by dropping them.
/// Sessions end at once at shutdown (each agent told when to come back), sessions opening
/// meanwhile are refused and the listener closes, so this is only reached by a stalled peer.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest node certificate lifetime accepted.
pub const MAX_NODE_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest and longest `--alert-resend` accepted.
const ALERT_RESEND_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// Arguments of `opi-manager serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Manager data directory, made by `opi-manager init`.
    #[arg(long, env = "OPI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on [default: from manager.toml]; port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serve the operator API (and operator login) on this address alone, e.g. on the admin
    /// network; the agents' port then answers no operator call. Port 0 picks a free port,
    /// written to DATA_DIR/run/operator-listen-addr.
    #[arg(long, value_name = "ADDR:PORT")]
    pub operator_listen: Option<SocketAddr>,
    /// Time a client has to complete its TLS handshake before the connection is dropped.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Time any call has to be answered (a stream: to be opened).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
    /// Interval between signed checkpoints of the audit chain (made only when it moved).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub audit_checkpoint_every: Duration,
    /// URL agents and operators use to reach this manager (repeatable) [default: manager.toml's].
    #[arg(long)]
    pub advertise: Vec<String>,
    /// Fleet store: `sqlite:PATH`, `etcd://HOST:PORT[,HOST:PORT…][?prefix=/P/&timeout=5s]`, or
    /// `etcds://…?ca=FILE[&cert=FILE&key=FILE]` for etcd's client TLS
    /// [default: sqlite:DATA_DIR/fleet.db].
    #[arg(long, env = "OPI_STORE")]
    pub store: Option<String>,
    /// Lifetime of node certificates.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub node_cert_ttl: Duration,
    /// A node whose certificate expired (offline during a manager outage, say) may still renew
    /// it, proving possession of its key, for this long after expiry; past it, the node
    /// re-enrolls (`opictl node allow-reenroll`).
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    pub expired_renewal_window: Duration,
    /// Public key (PEM) of an operator signer key (repeatable): agents enrolled from now on pin
    /// these keys and apply only profiles signed by one of them, two when a profile lowers
    /// the hardening level; `opictl profile set --sign-key` signs.
    #[arg(long, value_name = "FILE")]
    pub profile_signer: Vec<PathBuf>,
    /// Lifetime of the server certificates this manager issues itself: it renews its own
    /// when a third of its life is left, without a restart.
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    pub server_cert_ttl: Duration,
    /// Warn (log, `opictl status`, metric, alert) when the issuing or root CA expires within
    /// this long.
    #[arg(long, default_value = "180days", value_parser = humantime::parse_duration)]
    pub ca_expiry_warning: Duration,
    /// Interval between agent heartbeats.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// No contact with a node for this long makes it offline (the grace period).
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub offline_after: Duration,
    /// Conditions observed longer ago than this make a node's health unknown.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub report_freshness: Duration,
    /// Events kept in the store; older ones are pruned.
    #[arg(long, default_value_t = crate::events::DEFAULT_RETENTION)]
    pub event_retention: usize,
    /// Sessions this manager takes back per second after a restart, which sizes the spread
    /// of the reconnection delays it gives its agents when it stops (at most 60s). Lower it
    /// where replicas share a machine: each takes its share of what the machine takes.
    #[arg(long, value_name = "SESSIONS", default_value_t = RECONNECTS_PER_SEC)]
    pub reconnect_rate: u32,
    /// Serve Prometheus metrics over plain HTTP at ADDR:PORT/metrics [default: no metrics];
    /// port 0 picks a free port, written to DATA_DIR/run/metrics-addr.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Add one set of metrics series per node (many series in a large fleet).
    #[arg(long)]
    pub metrics_per_node: bool,
    /// Push alerts to this Alertmanager, http://HOST:PORT (repeatable); HTTPS is not
    /// supported yet.
    #[arg(long, value_name = "URL", value_parser = AlertmanagerUrl::parse)]
    pub alertmanager: Vec<AlertmanagerUrl>,
    /// Where the runbooks are, a URL of docs/runbooks.md as published: every alert gets the
    /// annotation runbook_url=RUNBOOKS#alertname (lower case)
    #[arg(long, value_name = "URL", default_value = crate::alerts::DEFAULT_RUNBOOKS)]
    pub runbooks: String,
    /// Interval between two pushes of unchanged alerts; firing alerts stay valid for three.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub alert_resend: Duration,
    /// More offline nodes than this in one pool are summarised in one alert.
    #[arg(long, default_value_t = crate::alerts::DEFAULT_STORM_THRESHOLD)]
    pub storm_threshold: usize,
    /// With an etcd store: TTL of this replica's etcd lease, under which it records its
    /// sessions and holds the leader key; a dead leader is replaced within about 4/3 of it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub leader_lease: Duration,
    /// With an etcd store: this replica's name, unique among replicas [default: HOSTNAME-PORT].
    #[arg(long)]
    pub replica_name: Option<String>,
}

/// A running manager.
pub struct Running {
    pub addr: SocketAddr,
    /// Address of the operator API's own listener, when it has one.
    pub operator_addr: Option<SocketAddr>,
    pub fleet: Arc<Fleet>,
    pub endpoints: Vec<String>,
    /// Address of the metrics listener, when serving metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// Closed first when stopping.
    listeners: server::Listeners,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
    supervisor: JoinHandle<()>,
    certificates: JoinHandle<()>,
    /// The replica's lease keep-alive and campaign, on etcd.
    campaign: Option<JoinHandle<()>>,
    /// What tells agents whether this replica records their sessions, on etcd.
    announcer: Option<JoinHandle<()>>,
    /// The watch on other replicas' node records and rollouts, on etcd.
    follower: Option<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
    alerting: Option<Alerting>,
}

/// Runs `serve` until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let notifier = Arc::new(Notifier::from_env());
    let starting = std::time::Instant::now();
    let running = start_notifying(&args, notifier.clone()).await?;
    info!(after = ?starting.elapsed(), addr = %running.addr, "serving");
    notifier.ready(&format!(
        "serving fleet {} on {}",
        running.fleet.fleet_name(),
        running.addr
    ));
    crate::signals::terminated().await;
    info!("shutting down");
    notifier.stopping();
    running.stop().await
}

/// Starts serving in the background.
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    start_notifying(args, Arc::new(Notifier::from_env())).await
}

/// Starts serving in the background; the supervisor loop feeds `notifier`'s watchdog.
async fn start_notifying(args: &ServeArgs, notifier: Arc<Notifier>) -> anyhow::Result<Running> {
    check_args(args)?;
    let dir = DataDir::new(&args.data_dir);
    let config = dir.load_config()?;
    let authority = dir.load_authority(&config)?;
    let client_auth = ClientAuth::new(&authority.trust_bundle_pem)?;
    let serving = ServingCert::new(
        &authority.server_chain_pem,
        &authority.server_key,
        client_auth.clone(),
    )?;
    let tls = swappable_server_config(serving.clone(), client_auth.clone())?;
    let certs = ManagerCerts::load(
        &dir,
        &config.replica,
        serving,
        args.server_cert_ttl,
        args.ca_expiry_warning,
    )?;
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| dir.default_store_url());
    let registry = Registry::new();
    let store = crate::store::open(&store_url).await?;
    let store: Arc<dyn Store> = Arc::new(MeasuredStore::new(store, registry.store.clone()));
    let store = crate::audit::chain::ChainedStore::wrap(store);
    info!(store = %store.describe(), "fleet store open");

    let listen = match args.listen {
        Some(addr) => addr,
        None => config
            .listen
            .parse()
            .context("manager.toml: invalid listen address")?,
    };
    let listener = server::bind(listen).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let advertise = if args.advertise.is_empty() {
        &config.advertise
    } else {
        &args.advertise
    };
    let endpoints = datadir::endpoints(advertise, addr);
    let operators = match args.operator_listen {
        Some(addr) => Some(server::bind(addr).await?),
        None => None,
    };
    let operator_addr = match &operators {
        Some(listener) => Some(
            listener
                .local_addr()
                .context("cannot read the bound address")?,
        ),
        None => None,
    };

    let settings = Settings {
        offline_after: args.offline_after,
        freshness: args.report_freshness,
        event_retention: args.event_retention,
        expired_renewal_window: args.expired_renewal_window,
        profile_signers: read_signers(&args.profile_signer)?,
        node_cert_ttl: args.node_cert_ttl,
        heartbeat: args.heartbeat,
        endpoints: endpoints.clone(),
        reconnect_rate: args.reconnect_rate,
    };
    let replica = open_replica(args, &store_url, addr)?;
    let store = match replica.is_single() {
        true => store,
        false => FencedStore::wrap(store, replica.clone()),
    };
    // Where the watches of a replica start: before the load, so that they miss nothing.
    let follow_from = match replica.is_single() {
        true => None,
        false => {
            let etcd = crate::store::EtcdStore::open(&store_url)?;
            Some((etcd.revision().await?, etcd))
        }
    };
    let fleet = Fleet::load(store, authority, settings, Arc::new(certs)).await?;
    fleet.set_replica(replica.clone());
    let campaign = replica.run();
    let announcer =
        (!replica.is_single()).then(|| tokio::spawn(announce(fleet.clone(), replica.clone())));
    let follower = follow_from.map(|(loaded_at, etcd)| {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.follow(etcd, loaded_at).await })
    });
    let metrics = start_metrics(args, &dir, &fleet, &registry).await?;
    let alerting = start_alerting(args, &fleet, &registry);
    let (shutdown, stopped) = oneshot::channel::<()>();
    let checkpoints = args.audit_checkpoint_every;
    let supervisor = tokio::spawn(supervise(
        fleet.clone(),
        replica.clone(),
        notifier,
        checkpoints,
    ));
    let certificates = tokio::spawn(crate::identity::watch(fleet.clone()));
    let limits = server::Limits {
        handshake: args.handshake_timeout,
        call: args.call_timeout,
    };
    let listeners = server::Listeners {
        agents: Arc::new(listener),
        operators: operators.map(Arc::new),
    };
    let task = tokio::spawn(server::serve(
        fleet.clone(),
        listeners.clone(),
        tls,
        client_auth,
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    let operator_file = dir
        .listen_addr_file()
        .with_file_name("operator-listen-addr");
    match operator_addr {
        Some(addr) => write_run_file(&operator_file, addr)?,
        None => {
            let _ = std::fs::remove_file(&operator_file);
        }
    }
    // Written last, so that whoever waits for it finds everything started.
    write_listen_addr(&dir, addr)?;
    Ok(Running {
        addr,
        operator_addr,
        fleet,
        endpoints,
        metrics_addr: metrics.as_ref().map(|m| m.addr),
        listeners,
        shutdown,
        task,
        supervisor,
        certificates,
        campaign,
        announcer,
        follower,
        metrics,
        alerting,
    })
}

/// This manager's replica: on etcd, a campaigning one; otherwise the single, leading one.
fn open_replica(
    args: &ServeArgs,
    store_url: &str,
    addr: SocketAddr,
) -> anyhow::Result<Arc<Replica>> {
    let name = match &args.replica_name {
        Some(name) => name.clone(),
        None => {
            let host = hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "manager".into());
            format!("{host}-{}", addr.port())
        }
    };
    let on_etcd = store_url.starts_with(crate::store::etcd::SCHEME)
        || store_url.starts_with(crate::store::etcd::TLS_SCHEME);
    if !on_etcd {
        return Ok(Replica::single(&name));
    }
    info!(replica = %name, lease = ?args.leader_lease, "replica on etcd; campaigning for leader");
    Replica::on_etcd(&name, store_url, args.leader_lease)
}

impl Running {
    /// Stops serving and waits for the server to finish, at most [`DRAIN_TIMEOUT`].
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // Before agents are told to come back later, so that none comes back to this process.
        self.listeners.close();
        if let Some(alerting) = self.alerting {
            alerting.stop().await;
        }
        if let Some(metrics) = self.metrics {
            metrics.stop().await;
        }
        self.supervisor.abort();
        self.certificates.abort();
        if let Some(follower) = self.follower {
            follower.abort();
        }
        for task in [self.campaign, self.announcer].into_iter().flatten() {
            task.abort();
        }
        let stopping = std::time::Instant::now();
        self.fleet.shut_down();
        let _ = self.shutdown.send(());
        let task = &mut self.task;
        let drain = async move {
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut *task).await {
                Ok(finished) => finished
                    .context("server task panicked")?
                    .map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!(after = ?DRAIN_TIMEOUT, "connections still open at shutdown; closing them");
                    task.abort();
                    Ok(())
                }
            }
        };
        // The last-seen times are saved while the connections close: sessions end (their
        // agents told) long before a large fleet's connections are all gone.
        let fleet = &self.fleet;
        let save = async move {
            fleet.sessions_ended(DRAIN_TIMEOUT).await;
            info!(after = ?stopping.elapsed(), "sessions ended");
            fleet.save_last_seen().await;
            info!(after = ?stopping.elapsed(), "last-seen times saved");
        };
        let (drained, ()) = tokio::join!(drain, save);
        drained?;
        info!(after = ?stopping.elapsed(), "connections closed");
        // Sessions that ended after the first save: attached meanwhile, or slow to end.
        self.fleet.save_last_seen().await;
        info!(after = ?stopping.elapsed(), "stopped");
        Ok(())
    }
}

fn check_args(args: &ServeArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if args.node_cert_ttl < MIN_NODE_CERT_TTL || args.node_cert_ttl > MAX_NODE_CERT_TTL {
        problems.push("--node-cert-ttl must be between 10s and 30days".to_string());
    }
    if args.heartbeat < Duration::from_secs(1) || args.heartbeat > Duration::from_secs(300) {
        problems.push("--heartbeat must be between 1s and 5m".to_string());
    }
    if args.offline_after <= args.heartbeat {
        problems.push("--offline-after must be longer than --heartbeat".to_string());
    }
    if args.report_freshness <= args.heartbeat {
        problems.push("--report-freshness must be longer than --heartbeat".to_string());
    }
    if args.server_cert_ttl < MIN_SERVER_CERT_TTL || args.server_cert_ttl > ca::ISSUING_CA_TTL {
        problems.push("--server-cert-ttl must be between 3s and 5years".to_string());
    }
    if args.event_retention == 0 {
        problems.push("--event-retention must be at least 1".to_string());
    }
    if !(1..=1_000_000).contains(&args.reconnect_rate) {
        problems.push("--reconnect-rate must be between 1 and 1000000 sessions a second".into());
    }
    let (shortest, longest) = ALERT_RESEND_RANGE;
    if args.alert_resend < shortest || args.alert_resend > longest {
        problems.push("--alert-resend must be between 1s and 1h".to_string());
    }
    if args.handshake_timeout.is_zero() || args.handshake_timeout > Duration::from_secs(300) {
        problems.push("--handshake-timeout must be between 1ms and 5m".to_string());
    }
    if args.call_timeout < Duration::from_secs(1) || args.call_timeout > Duration::from_secs(3600) {
        problems.push("--call-timeout must be between 1s and 1h".to_string());
    }
    if args.audit_checkpoint_every < Duration::from_secs(1) {
        problems.push("--audit-checkpoint-every must be at least 1s".to_string());
    }
    let same = matches!((args.operator_listen, args.listen), (Some(a), Some(b)) if a == b);
    if same && args.listen.is_some_and(|a| a.port() != 0) {
        problems.push("--operator-listen must differ from --listen".to_string());
    }
    let lease = args.leader_lease;
    if lease < Duration::from_secs(2)
        || lease > Duration::from_secs(300)
        || lease.subsec_nanos() != 0
    {
        problems.push("--leader-lease must be whole seconds between 2s and 5m".to_string());
    }
    if args.replica_name.as_ref().is_some_and(|n| {
        n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    }) {
        problems.push("--replica-name must be letters, digits, '-' or '.'".to_string());
    }
    if args.storm_threshold == 0 {
        problems.push("--storm-threshold must be at least 1".to_string());
    }
    for url in &args.advertise {
        if opi_pki::channel::host_port(url).is_err() {
            problems.push(format!(
                "--advertise `{url}` is not an https://HOST:PORT URL"
            ));
        }
    }
    if !problems.is_empty() {
        bail!("invalid serve arguments: {}", problems.join("; "));
    }
    Ok(())
}

/// The signer public keys of `--profile-signer`, DER.
fn read_signers(paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    for path in paths {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("--profile-signer: cannot read {}", path.display()))?;
        let key = opi_pki::profile_sig::public_key_der(&pem, &path.display().to_string())?;
        info!(path = %path.display(), key = %opi_pki::profile_sig::key_pin(&key), "profile signer key");
        keys.push(key);
    }
    Ok(keys)
}

/// Records the bound address, for scripts and tests that listen on port 0.
fn write_listen_addr(dir: &DataDir, addr: SocketAddr) -> anyhow::Result<()> {
    write_run_file(&dir.listen_addr_file(), addr)
}

fn write_run_file(path: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    files::create_dir(path.parent().expect("run file has a parent"), 0o755)?;
    files::write_public(path, format!("{addr}\n").as_bytes())?;
    Ok(())
}

/// Starts the metrics listener if asked, recording its address in `run/metrics-addr`.
async fn start_metrics(
    args: &ServeArgs,
    dir: &DataDir,
    fleet: &Arc<Fleet>,
    registry: &Registry,
) -> anyhow::Result<Option<MetricsServer>> {
    let path = crate::metrics::addr_file(&dir.listen_addr_file());
    let Some(listen) = args.metrics_listen else {
        // A file left by an earlier run would point scrapers at nothing.
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    };
    let exporter = Exporter::new(fleet.clone(), registry.clone(), args.metrics_per_node);
    let server = MetricsServer::start(listen, Arc::new(exporter)).await?;
    write_run_file(&path, server.addr)?;
    Ok(Some(server))
}

/// Starts pushing alerts if at least one Alertmanager is given.
fn start_alerting(args: &ServeArgs, fleet: &Arc<Fleet>, registry: &Registry) -> Option<Alerting> {
    if args.alertmanager.is_empty() {
        return None;
    }
    let rules = RuleSettings {
        fleet: fleet.fleet_name().to_string(),
        storm_threshold: args.storm_threshold,
        // Nodes that lose contact together go offline within a heartbeat interval and one
        // supervisor pass (a pass stamps every node it turns offline with the same time).
        grouping_window: args.heartbeat + SUPERVISE_EVERY,
        offline_after: args.offline_after,
        node_cert_ttl: args.node_cert_ttl,
        runbooks: args.runbooks.clone(),
    };
    let settings = AlertSettings {
        alertmanagers: args.alertmanager.clone(),
        resend: args.alert_resend,
        rules,
    };
    Some(Alerting::start(
        fleet.clone(),
        settings,
        registry.store.clone(),
        registry.alerts.clone(),
        time::OffsetDateTime::from(registry.started_at),
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn checked(extra: &[&str]) -> anyhow::Result<()> {
        let args = ["serve", "--data-dir", "/nonexistent"].iter().chain(extra);
        check_args(&Command::parse_from(args).serve)
    }

    #[test]
    fn leader_lease_and_replica_name_are_checked() {
        checked(&["--leader-lease", "3s", "--replica-name", "m-a.1"]).expect("valid");
        let error = checked(&["--leader-lease", "1500ms"]).expect_err("fractional lease");
        assert!(error.to_string().contains("--leader-lease"), "{error}");
        let error = checked(&["--leader-lease", "1s"]).expect_err("too short");
        assert!(error.to_string().contains("--leader-lease"), "{error}");
        let error = checked(&["--replica-name", "a/b"]).expect_err("slash in name");
        assert!(error.to_string().contains("--replica-name"), "{error}");
    }
}
