//! `opi-manager serve`: loads the data directory and store, and serves the fleet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use opi_pki::files;
use opi_pki::tls::{server_config, ClientAuth};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::datadir::{self, DataDir};
use crate::fleet::{Fleet, Settings};
use crate::server::{self, ServeError};

/// Shortest node certificate lifetime accepted (renewal happens at 60–80 % of it).
pub const MIN_NODE_CERT_TTL: Duration = Duration::from_secs(10);
/// Longest node certificate lifetime accepted.
pub const MAX_NODE_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Arguments of `opi-manager serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Manager data directory, made by `opi-manager init`.
    #[arg(long, env = "OPI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on [default: from manager.toml]; port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// URL agents and operators use to reach this manager (repeatable) [default: manager.toml's].
    #[arg(long)]
    pub advertise: Vec<String>,
    /// Fleet store [default: sqlite:DATA_DIR/fleet.db].
    #[arg(long)]
    pub store: Option<String>,
    /// Lifetime of node certificates.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub node_cert_ttl: Duration,
    /// Interval between agent heartbeats.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
}

/// A running manager.
pub struct Running {
    pub addr: SocketAddr,
    pub fleet: Arc<Fleet>,
    pub endpoints: Vec<String>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

/// Runs `serve` until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let running = start(&args).await?;
    crate::signals::terminated().await;
    info!("shutting down");
    running.stop().await
}

/// Starts serving in the background.
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    check_args(args)?;
    let dir = DataDir::new(&args.data_dir);
    let config = dir.load_config()?;
    let authority = dir.load_authority(&config)?;
    let client_auth = ClientAuth::new(&authority.trust_bundle_pem)?;
    let tls = server_config(
        &authority.server_chain_pem,
        &authority.server_key,
        client_auth.clone(),
    )?;
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| dir.default_store_url());
    let store = crate::store::open(&store_url).await?;
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
    write_listen_addr(&dir, addr)?;

    let settings = Settings {
        node_cert_ttl: args.node_cert_ttl,
        heartbeat: args.heartbeat,
        endpoints: endpoints.clone(),
    };
    let fleet = Fleet::load(store, authority, settings).await?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        fleet.clone(),
        listener,
        tls,
        client_auth,
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Running {
        addr,
        fleet,
        endpoints,
        shutdown,
        task,
    })
}

impl Running {
    /// Stops serving and waits for the server to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.task.await.context("server task panicked")??;
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

/// Records the bound address, for scripts and tests that listen on port 0.
fn write_listen_addr(dir: &DataDir, addr: SocketAddr) -> anyhow::Result<()> {
    let path = dir.listen_addr_file();
    files::create_dir(path.parent().expect("run file has a parent"), 0o755)?;
    files::write_public(&path, format!("{addr}\n").as_bytes())?;
    Ok(())
}
