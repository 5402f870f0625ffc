//! `opi-manager ca rotate|retire`: rolls the fleet over to a new root and issuing CA while it
//! runs. Both work on the data directory, next to the CA keys; the running manager follows
//! (see `crate::rollover` and docs/ca-rollover.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use opi_pki::bundle::OperatorBundle;
use opi_pki::ca::{self, CertifiedKey};
use opi_pki::files::{self, write_public, write_secret};
use opi_pki::tls::parse_certs;
use opi_pki::{CaPin, Role};

use crate::audit;
use crate::bundles;
use crate::cmd::init::local_actor;
use crate::datadir::DataDir;
use crate::records::rfc3339;

/// Lifetime of the admin bundle `ca retire` re-issues.
pub const RETIRE_ADMIN_TTL: Duration = Duration::from_secs(8 * 3600);

/// `opi-manager ca …`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Start a CA rollover: make a new root and issuing CA and add the new root to the trust
    /// bundle. The running manager sends the bundle to every agent, switches issuing to the new
    /// CA once every active node stored it, and has every node renew from it.
    Rotate(CaArgs),
    /// End a CA rollover: drop the old root from the trust bundle, so that certificates of
    /// the old CA are refused, and re-issue the admin bundle from the new CA.
    Retire(CaArgs),
}

/// Arguments of `opi-manager ca rotate|retire`.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Manager data directory.
    #[arg(long, env = "OPI_DATA_DIR")]
    pub data_dir: PathBuf,
}

/// Runs a CA subcommand.
pub async fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Rotate(args) => rotate(&DataDir::new(&args.data_dir)).await,
        CaCommand::Retire(args) => retire(&DataDir::new(&args.data_dir)).await,
    }
}

async fn rotate(dir: &DataDir) -> anyhow::Result<()> {
    let config = dir.load_config()?;
    if dir.next_pki().exists() {
        bail!(
            "a CA rollover is already in progress ({} exists): the manager switches to it once every active node stored the trust bundle",
            dir.next_pki().display()
        );
    }
    let bundle = std::fs::read_to_string(dir.trust_bundle())
        .with_context(|| format!("cannot read {}", dir.trust_bundle().display()))?;
    if parse_certs(&bundle, "trust bundle")?.len() > 1 {
        bail!(
            "{} already holds more than one root: finish the previous rollover with `opi-manager ca retire` first",
            dir.trust_bundle().display()
        );
    }

    let root = ca::create_root_ca(&config.fleet)?;
    let issuing = ca::create_issuing_ca(&config.fleet, &config.replica, &root)?;
    let staging = dir
        .pki()
        .join(format!(".next.staging{}", std::process::id()));
    files::create_dir(&staging, 0o700)?;
    write_pair(&staging, "root-ca", &root)?;
    write_pair(&staging, "issuing-ca", &issuing)?;
    std::fs::rename(&staging, dir.next_pki())
        .with_context(|| format!("cannot move {} in place", staging.display()))?;

    let both = format!("{}\n{}", bundle.trim_end_matches('\n'), root.cert_pem);
    write_public(&dir.trust_bundle(), both.as_bytes())?;
    update_admin_bundle_trust(dir, &both)?;
    let pin = CaPin::of_cert_der(&parse_certs(&root.cert_pem, "new root CA")?[0])?;
    audit_entry(dir, "ca.rotate", &config.fleet, format!("new root {pin}")).await?;

    println!(
        "new root CA {pin} added to the trust bundle {}",
        dir.trust_bundle().display()
    );
    println!("the running manager sends the bundle to every agent, switches issuing to the new CA once every active node stored it, and asks every node to renew from it");
    println!("once `opictl audit` shows every node renewed, finish with: opi-manager ca retire --data-dir {}", dir.root().display());
    Ok(())
}

async fn retire(dir: &DataDir) -> anyhow::Result<()> {
    let config = dir.load_config()?;
    if dir.next_pki().exists() {
        bail!(
            "the manager has not switched to the new CA yet ({} still exists): some nodes have not stored the trust bundle; `opi-manager serve` logs which it waits for at debug level",
            dir.next_pki().display()
        );
    }
    let bundle = std::fs::read_to_string(dir.trust_bundle())?;
    if parse_certs(&bundle, "trust bundle")?.len() < 2 {
        bail!("no CA rollover to finish: the trust bundle holds one root; start one with `opi-manager ca rotate`");
    }
    let root = std::fs::read_to_string(dir.root_ca_cert())
        .with_context(|| format!("cannot read {}", dir.root_ca_cert().display()))?;
    write_public(&dir.trust_bundle(), root.as_bytes())?;

    let authority = dir.load_authority(&config)?;
    if let Ok(admin) = OperatorBundle::read(&dir.admin_bundle()) {
        let (bundle, cert) = bundles::issue(
            &authority.issuer,
            &root,
            &admin.endpoint,
            &admin.name,
            Role::Admin,
            RETIRE_ADMIN_TTL,
        )?;
        bundle.write(&dir.admin_bundle())?;
        let detail = format!(
            "role admin, serial {}, until {}",
            cert.serial,
            rfc3339(cert.not_after)
        );
        audit_entry(dir, "operator.issue", &admin.name, detail).await?;
    }
    audit_entry(
        dir,
        "ca.retire",
        &config.fleet,
        format!("trust bundle is {}", authority.pin),
    )
    .await?;
    println!("old root CA dropped from {}: certificates of the old CA are refused from now on; the running manager sends the bundle to every agent", dir.trust_bundle().display());
    println!("operator bundles issued before the rollover stop working: issue new ones with `opi-manager operator issue`; the admin bundle {} was re-issued", dir.admin_bundle().display());
    Ok(())
}

/// Lets the admin bundle trust the new root too, so that `opictl` still verifies the manager
/// once it serves a certificate of the new CA.
fn update_admin_bundle_trust(dir: &DataDir, bundle: &str) -> anyhow::Result<()> {
    let path = dir.admin_bundle();
    if !path.exists() {
        return Ok(());
    }
    let mut admin = OperatorBundle::read(&path)?;
    admin.ca = bundle.to_string();
    admin.write(&path)?;
    Ok(())
}

fn write_pair(dir: &std::path::Path, stem: &str, pair: &CertifiedKey) -> anyhow::Result<()> {
    write_public(&dir.join(format!("{stem}.pem")), pair.cert_pem.as_bytes())?;
    write_secret(
        &dir.join(format!("{stem}.key")),
        pair.key_pem.expose().as_bytes(),
    )?;
    Ok(())
}

async fn audit_entry(
    dir: &DataDir,
    action: &str,
    subject: &str,
    detail: String,
) -> anyhow::Result<()> {
    let store = crate::store::open(&dir.default_store_url()).await?;
    audit::Entry::ok(&local_actor(), action, subject, "local")
        .detail(detail)
        .write(&*store)
        .await;
    Ok(())
}
