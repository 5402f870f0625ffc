//! `opi-manager init`: creates the fleet root CA, this replica's issuing CA, the server
//! certificate, the store and the admin operator bundle.
//!
//! Everything is written into a temporary directory first and moved into place at the end,
//! so an interrupted init leaves no half-made CA behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use opi_pki::ca::{self, CertifiedKey};
use opi_pki::files::{self, write_public, write_secret};
use opi_pki::{CaPin, Issuer, Role};

use crate::audit;
use crate::bundles;
use crate::datadir::{self, DataDir, ManagerConfig, CONFIG_VERSION};
use crate::records::rfc3339;

/// Arguments of `opi-manager init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Data directory to create (configuration, CA material, store).
    #[arg(long, env = "OPI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Fleet name: a DNS label, part of every identity (`spiffe://FLEET/...`).
    #[arg(long)]
    pub fleet: String,
    /// This manager replica's name [default: "manager"].
    #[arg(long, default_value = "manager")]
    pub replica: String,
    /// Extra host name or IP address the server certificate must cover (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Address `serve` listens on unless told otherwise.
    #[arg(long, default_value = datadir::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// URL agents and operators use to reach this manager (repeatable).
    #[arg(long)]
    pub advertise: Vec<String>,
    /// Lifetime of the server certificate (`serve` renews it when a third is left).
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    pub server_cert_ttl: Duration,
    /// Lifetime of the admin operator certificate.
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    pub admin_ttl: Duration,
    /// Fleet store the init is audited in, as `serve --store` [default: sqlite:DATA_DIR/fleet.db].
    #[arg(long, env = "OPI_STORE")]
    pub store: Option<String>,
    /// Prepare another replica of the fleet whose data directory (or a copy holding its root CA
    /// key) is this: a new issuing CA signed by its root, its trust bundle, no root key. Needs
    /// `--store etcd://…` (the store the replicas share) and a `--replica` name of its own.
    #[arg(long, value_name = "DATA_DIR")]
    pub join: Option<PathBuf>,
}

/// The fleet a replica joins: the root that signs its issuing CA, and the trust bundle.
struct Joined {
    root: CertifiedKey,
    bundle: String,
}

/// Reads the root CA and trust bundle of the replica at `first`, checking that it serves
/// `config`'s fleet under another replica name.
fn joined(
    first: &std::path::Path,
    config: &ManagerConfig,
    store: Option<&str>,
) -> anyhow::Result<Joined> {
    if !store.is_some_and(|url| url.starts_with("etcd://")) {
        bail!("--join needs --store etcd://…: the etcd store the fleet's replicas share");
    }
    let first = DataDir::new(first);
    let theirs = first.load_config().with_context(|| {
        format!(
            "--join {}: not a manager data directory",
            first.root().display()
        )
    })?;
    if theirs.fleet != config.fleet {
        bail!(
            "--join {}: that data directory serves fleet {:?}, not {:?}",
            first.root().display(),
            theirs.fleet,
            config.fleet
        );
    }
    if theirs.replica == config.replica {
        bail!(
            "--replica {:?} is the name of the replica at {}: give this replica a name of its own",
            config.replica,
            first.root().display()
        );
    }
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "--join: cannot read {} (the root CA key must be there while joining)",
                path.display()
            )
        })
    };
    Ok(Joined {
        root: CertifiedKey {
            cert_pem: read(first.root_ca_cert())?,
            key_pem: opi_pki::SecretPem::new(read(first.pki().join("root-ca.key"))?),
        },
        bundle: read(first.trust_bundle())?,
    })
}

/// Runs `init` and prints what was created.
pub async fn run(args: InitArgs) -> anyhow::Result<()> {
    let dir = DataDir::new(&args.data_dir);
    let config = ManagerConfig {
        version: CONFIG_VERSION,
        fleet: args.fleet.clone(),
        replica: args.replica.clone(),
        listen: args.listen.to_string(),
        advertise: args.advertise.clone(),
    };
    let problems = config.problems();
    if !problems.is_empty() {
        bail!("invalid init arguments: {}", problems.join("; "));
    }
    if dir.pki().exists() || dir.config().exists() {
        bail!(
            "refusing to overwrite the fleet CA: {} already holds a manager data directory; \
             choose another --data-dir or remove it if this fleet is to be discarded",
            dir.root().display()
        );
    }

    let joined = match &args.join {
        Some(first) => Some(joined(first, &config, args.store.as_deref())?),
        None => None,
    };

    files::create_dir(dir.root(), 0o750)?;
    let pin = write_pki(
        &dir,
        &config,
        &args.sans,
        args.server_cert_ttl,
        joined.as_ref(),
    )?;
    write_config(&dir, &config)?;
    let endpoint = datadir::endpoints(&config.advertise, args.listen).remove(0);
    let url = args
        .store
        .clone()
        .unwrap_or_else(|| dir.default_store_url());
    let store = crate::store::open(&url).await?;
    let store = crate::audit::chain::ChainedStore::wrap(store);
    let (action, target) = match joined {
        Some(_) => ("fleet.join", config.replica.as_str()),
        None => ("fleet.init", config.fleet.as_str()),
    };
    audit::Entry::ok(&local_actor(), action, target, "local")
        .write(&*store)
        .await;
    write_admin_bundle(&dir, &config, &endpoint, args.admin_ttl, &*store).await?;

    println!(
        "fleet {} initialised in {}",
        config.fleet,
        dir.root().display()
    );
    println!("fleet CA pin:  {pin}");
    println!(
        "admin bundle:  {} (valid {})",
        dir.admin_bundle().display(),
        humantime::format_duration(args.admin_ttl)
    );
    println!(
        "start the manager with: opi-manager serve --data-dir {}",
        dir.root().display()
    );
    Ok(())
}

/// The actor recorded for commands run on the manager host.
pub fn local_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| format!("uid-{}", nix::unistd::getuid()));
    format!("local:{user}")
}

/// Creates root CA (or takes the joined fleet's), issuing CA and server certificate in a
/// staging dir, then moves it in. A joining replica gets the root certificate, not its key.
fn write_pki(
    dir: &DataDir,
    config: &ManagerConfig,
    sans: &[String],
    server_ttl: Duration,
    joined: Option<&Joined>,
) -> anyhow::Result<CaPin> {
    let staging = dir
        .root()
        .join(format!(".pki.staging{}", std::process::id()));
    files::create_dir(&staging, 0o700)?;

    let root = match joined {
        Some(joined) => joined.root.clone(),
        None => ca::create_root_ca(&config.fleet)?,
    };
    let issuing = ca::create_issuing_ca(&config.fleet, &config.replica, &root)?;
    let issuer = Issuer::new(&config.fleet, &issuing)?;
    let (server, server_key) =
        issuer.issue_server(&config.replica, &server_names(sans), server_ttl)?;

    let bundle = match joined {
        Some(joined) => {
            write_public(&staging.join("root-ca.pem"), root.cert_pem.as_bytes())?;
            joined.bundle.clone()
        }
        None => {
            write_pair(&staging, "root-ca", &root)?;
            root.cert_pem.clone()
        }
    };
    write_pair(&staging, "issuing-ca", &issuing)?;
    write_public(&staging.join("server.pem"), server.chain_pem.as_bytes())?;
    write_secret(&staging.join("server.key"), server_key.expose().as_bytes())?;
    write_public(&staging.join("trust-bundle.pem"), bundle.as_bytes())?;
    std::fs::rename(&staging, dir.pki()).with_context(|| {
        format!(
            "cannot move {} to {}",
            staging.display(),
            dir.pki().display()
        )
    })?;

    let root_der = opi_pki::tls::parse_certs(&root.cert_pem, "root CA")?;
    Ok(CaPin::of_cert_der(&root_der[0])?)
}

fn write_pair(dir: &std::path::Path, stem: &str, pair: &CertifiedKey) -> anyhow::Result<()> {
    write_public(&dir.join(format!("{stem}.pem")), pair.cert_pem.as_bytes())?;
    write_secret(
        &dir.join(format!("{stem}.key")),
        pair.key_pem.expose().as_bytes(),
    )?;
    Ok(())
}

fn write_config(dir: &DataDir, config: &ManagerConfig) -> anyhow::Result<()> {
    let text = toml::to_string(config).context("cannot encode manager.toml")?;
    write_public(&dir.config(), text.as_bytes())?;
    Ok(())
}

async fn write_admin_bundle(
    dir: &DataDir,
    config: &ManagerConfig,
    endpoint: &str,
    ttl: Duration,
    store: &dyn crate::store::Store,
) -> anyhow::Result<()> {
    let authority = dir.load_authority(config)?;
    let (bundle, cert) = bundles::issue(
        &authority.issuer,
        &authority.trust_bundle_pem,
        endpoint,
        "admin",
        Role::Admin,
        ttl,
    )?;
    bundle.write(&dir.admin_bundle())?;
    audit::Entry::ok(&local_actor(), "operator.issue", "admin", "local")
        .detail(format!(
            "role admin, serial {}, until {}",
            cert.serial,
            rfc3339(cert.not_after)
        ))
        .write(store)
        .await;
    Ok(())
}

/// Names the server certificate covers: loopback, the host name, and any `--san`.
fn server_names(sans: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = hostname::get() {
        names.push(host.to_string_lossy().into_owned());
    }
    for san in sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    names
}
