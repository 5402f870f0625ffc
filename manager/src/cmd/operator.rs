//! `opi-manager operator issue`: writes an operator bundle signed by this replica's issuing CA.
//! It runs on the manager host, next to the CA key, and needs no running server.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use opi_pki::Role;

use crate::audit;
use crate::bundles;
use crate::cmd::init::local_actor;
use crate::datadir::{self, DataDir};
use crate::records::rfc3339;

/// `opi-manager operator …`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Issue an operator bundle (certificate with a role, key, endpoint) for `opictl --config`.
    Issue(IssueArgs),
}

/// Arguments of `opi-manager operator issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Operator name, recorded in the audit log for every call made with the bundle.
    pub name: String,
    /// What the operator may do: admin, operator, viewer or alerting.
    #[arg(long)]
    pub role: Role,
    /// Certificate lifetime.
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Manager data directory.
    #[arg(long, env = "OPI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where to write the bundle [default: DATA_DIR/opictl-NAME.toml].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Endpoint written into the bundle [default: the advertised or listen address].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Fleet store the issue is audited in, as `serve --store` [default: sqlite:DATA_DIR/fleet.db].
    #[arg(long, env = "OPI_STORE")]
    pub store: Option<String>,
}

/// Runs an operator subcommand.
pub async fn run(command: OperatorCommand) -> anyhow::Result<()> {
    match command {
        OperatorCommand::Issue(args) => issue(args).await,
    }
}

async fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let dir = DataDir::new(&args.data_dir);
    let config = dir.load_config()?;
    let authority = dir.load_authority(&config)?;
    let endpoint = match args.endpoint {
        Some(endpoint) => endpoint,
        None => datadir::endpoints(&config.advertise, config.listen.parse()?).remove(0),
    };
    let out = args
        .out
        .unwrap_or_else(|| dir.root().join(format!("opictl-{}.toml", args.name)));

    let (bundle, cert) = bundles::issue(
        &authority.issuer,
        &authority.trust_bundle_pem,
        &endpoint,
        &args.name,
        args.role,
        args.ttl,
    )?;
    bundle.write(&out)?;
    let url = args.store.unwrap_or_else(|| dir.default_store_url());
    let store = crate::store::open(&url).await?;
    let store = crate::audit::chain::ChainedStore::wrap(store);
    audit::Entry::ok(&local_actor(), "operator.issue", &args.name, "local")
        .detail(format!(
            "role {}, serial {}, until {}",
            args.role,
            cert.serial,
            rfc3339(cert.not_after)
        ))
        .write(&*store)
        .await;
    println!(
        "operator bundle for {} (role {}) written to {}; valid until {}",
        args.name,
        args.role,
        out.display(),
        rfc3339(cert.not_after)
    );
    Ok(())
}
