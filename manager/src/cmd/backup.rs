//! `opi-manager backup` and `opi-manager restore`: the store's keys, the CA material and
//! `manager.toml` in one 0600 file, and back; a restore moves the store's epoch up.

use std::path::PathBuf;

use clap::Args;

use crate::backup::{self, BackupFile};
use crate::datadir::DataDir;

/// Arguments of `opi-manager backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Manager data directory whose `manager.toml` and `pki/` are backed up.
    #[arg(long, env = "OPI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Fleet store to back up, as `serve --store` [default: sqlite:DATA_DIR/fleet.db].
    #[arg(long, env = "OPI_STORE")]
    pub store: Option<String>,
    /// Backup file to write (mode 0600: it holds the CA keys).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `opi-manager restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Manager data directory to restore `manager.toml` and `pki/` into.
    #[arg(long, env = "OPI_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Fleet store to restore the keys into, as `serve --store`
    /// [default: sqlite:DATA_DIR/fleet.db].
    #[arg(long, env = "OPI_STORE")]
    pub store: Option<String>,
    /// Backup file written by `opi-manager backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// Overwrite a data directory that holds a manager and a store that holds keys.
    #[arg(long)]
    pub force: bool,
}

/// Runs `backup`: reads the store at one revision, then writes the file.
pub async fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let dir = DataDir::new(&args.data_dir);
    dir.load_config()?;
    let url = args.store.unwrap_or_else(|| dir.default_store_url());
    let store = crate::store::open(&url).await?;
    let backup = backup::create(&dir, &*store).await?;
    backup.write(&args.out)?;
    let manifest = &backup.body.manifest;
    println!(
        "backed up {} keys of {} (revision {}, epoch {}) and {} files of {} to {}",
        manifest.keys,
        manifest.store,
        manifest.store_revision,
        manifest.epoch,
        manifest.files.len(),
        dir.root().display(),
        args.out.display()
    );
    println!("backup digest: {}", backup.digest);
    Ok(())
}

/// Runs `restore`: checks the file, writes files and keys, moves the epoch up.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let backup = BackupFile::read(&args.from)?;
    let dir = DataDir::new(&args.data_dir);
    let url = args.store.unwrap_or_else(|| dir.default_store_url());
    let store = crate::store::open(&url).await?;
    let restored = backup::restore(&backup, &dir, &*store, args.force).await?;
    println!(
        "restored {} keys into {} and {} files into {} from {} (taken {})",
        restored.keys,
        store.describe(),
        restored.files,
        dir.root().display(),
        args.from.display(),
        crate::records::rfc3339(backup.body.manifest.created_at)
    );
    println!(
        "store epoch moved from {} (in the backup) to {}: agents take the next profile generation",
        restored.backup_epoch, restored.epoch
    );
    Ok(())
}
