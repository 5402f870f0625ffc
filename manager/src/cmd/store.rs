//! `opi-manager store migrate`: copies every key of one fleet store into another, typically
//! from the embedded SQLite file to etcd, and checks that both then hold the same.

use clap::{Args, Subcommand};

use crate::store::copy;

/// `opi-manager store …`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every key of a store into an empty one (e.g. SQLite to etcd) and verify the copy.
    /// Stop every manager using either store first.
    Migrate(MigrateArgs),
}

/// Arguments of `opi-manager store migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Store to copy from, e.g. `sqlite:/var/lib/opi-manager/fleet.db`.
    #[arg(long)]
    pub from: String,
    /// Store to copy into, e.g. `etcd://h1:2379,h2:2379,h3:2379`; must be empty unless --force.
    #[arg(long)]
    pub to: String,
    /// Delete whatever the target holds (under its prefix) before copying.
    #[arg(long)]
    pub force: bool,
}

/// Runs a store subcommand.
pub async fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Migrate(args) => migrate(args).await,
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    if args.from == args.to {
        anyhow::bail!("--from and --to are the same store `{}`", args.from);
    }
    let source = crate::store::open(&args.from).await?;
    let target = crate::store::open(&args.to).await?;
    let started = std::time::Instant::now();
    let summary = copy::copy_all(&*source, &*target, args.force).await?;
    println!(
        "copied {} keys ({} bytes of values) from {} to {} in {:.1?}; both hold {}",
        summary.keys,
        summary.bytes,
        source.describe(),
        target.describe(),
        started.elapsed(),
        summary.digest
    );
    println!(
        "start the manager with: opi-manager serve --store '{}' …",
        args.to
    );
    Ok(())
}
