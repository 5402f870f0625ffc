//! Backups of a manager: every key of its store, its CA material (`pki/`) and `manager.toml`,
//! in one JSON file with a manifest and a digest, for either store backend.
//!
//! A restore writes the files and keys back and then moves the store's epoch above both the
//! backed-up one and the one it replaces (and at least to the current Unix time), so that the
//! next profile generation outranks every (epoch, generation) an agent may have applied since
//! the backup was taken: agents refuse older pairs and never take one back.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::datadir::DataDir;
use crate::records::EPOCH_KEY;
use crate::store::copy::{self, CopyError};
use crate::store::{decode, to_json, KeyValue, Store, StoreError, Txn, TxnOutcome};

/// The `format` field of a backup file.
pub const FORMAT: &str = "opi-manager-backup";
/// The backup format version this binary writes and reads.
pub const VERSION: u32 = 1;
/// Directories of the data directory whose files a backup holds, besides `manager.toml`.
const DIRECTORIES: [&str; 1] = ["pki"];

/// A backup as stored: the body and the digest of its JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    /// `sha256:` and the hex SHA-256 of the body's JSON as written.
    pub digest: String,
    /// What the backup holds.
    pub body: Body,
}

/// The content of a backup.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// What, when and from where.
    pub manifest: Manifest,
    /// `manager.toml` and the CA material, relative to the data directory.
    pub files: Vec<FileEntry>,
    /// Every key of the store.
    pub keys: Vec<KeyEntry>,
}

/// The manifest of a backup.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written.
    pub version: u32,
    /// When the backup was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The store it was read from, as `Store::describe` puts it.
    pub store: String,
    /// The store's revision the keys were read at (or after).
    pub store_revision: u64,
    /// The store's epoch when backed up (0 if it had none).
    pub epoch: u64,
    /// How many keys.
    pub keys: usize,
    /// [`copy::digest`] of the keys.
    pub keys_digest: String,
    /// Paths of the files, relative to the data directory.
    pub files: Vec<String>,
}

/// One file of the data directory; its `Debug` hides the content (CA keys among them).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the data directory.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Content, base64.
    pub base64: String,
}

impl std::fmt::Debug for FileEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEntry")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field(
                "base64",
                &format_args!("<{} bytes hidden>", self.base64.len()),
            )
            .finish()
    }
}

/// One key of the store.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The key.
    pub key: String,
    /// The value, base64.
    pub base64: String,
}

/// What a restore did.
#[derive(Debug, PartialEq, Eq)]
pub struct Restored {
    /// Keys written to the store.
    pub keys: usize,
    /// Files written to the data directory.
    pub files: usize,
    /// The epoch in the backup.
    pub backup_epoch: u64,
    /// The store's epoch after the restore.
    pub epoch: u64,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file of the data directory could not be read.
    #[error("cannot read {path} for the backup")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backup file could not be written or read.
    #[error("cannot use backup file {path}")]
    File {
        /// The backup file.
        path: PathBuf,
        /// Why.
        #[source]
        source: opi_pki::files::FileError,
    },
    /// The backup file is not a backup this binary reads.
    #[error("{path} is not an opi-manager backup: {problem}")]
    Invalid {
        /// The backup file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The data directory already holds a manager.
    #[error("{path} already holds a manager data directory; pass --force to overwrite it")]
    DataDirInUse {
        /// Its `manager.toml`.
        path: PathBuf,
    },
    /// Writing the keys to the store failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads `dir`'s files and every key of `store` into a backup.
pub async fn create(dir: &DataDir, store: &dyn Store) -> Result<BackupFile, BackupError> {
    let files = read_files(dir)?;
    let store_revision = store.revision().await?;
    let kvs = crate::replica::durable(store.list("").await?);
    let epoch = epoch_of(store, &kvs)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created_at: OffsetDateTime::now_utc(),
        store: store.describe(),
        store_revision,
        epoch,
        keys: kvs.len(),
        keys_digest: copy::digest(&kvs),
        files: files.iter().map(|f| f.path.clone()).collect(),
    };
    let keys = kvs
        .into_iter()
        .map(|kv| KeyEntry {
            key: kv.key,
            base64: BASE64.encode(&kv.value),
        })
        .collect();
    let body = Body {
        manifest,
        files,
        keys,
    };
    Ok(BackupFile {
        digest: body_digest(&body),
        body,
    })
}

impl BackupFile {
    /// Writes the backup to `path`, mode 0600 (it holds the CA keys).
    pub fn write(&self, path: &Path) -> Result<(), BackupError> {
        let json = serde_json::to_vec(self).expect("a backup serialises to JSON");
        opi_pki::files::write_secret(path, &json).map_err(|source| BackupError::File {
            path: path.into(),
            source,
        })
    }

    /// Reads and checks a backup: format, version, digest, and every key and file count.
    pub fn read(path: &Path) -> Result<Self, BackupError> {
        let text = opi_pki::files::read_secret(path).map_err(|source| BackupError::File {
            path: path.into(),
            source,
        })?;
        let invalid = |problem: String| BackupError::Invalid {
            path: path.into(),
            problem,
        };
        let backup: Self = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let manifest = &backup.body.manifest;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(invalid(format!(
                "format {} version {}, this opi-manager reads {FORMAT} version {VERSION}",
                manifest.format, manifest.version
            )));
        }
        let digest = body_digest(&backup.body);
        if digest != backup.digest {
            return Err(invalid(format!(
                "digest {digest} differs from the recorded {}: the file was changed or damaged",
                backup.digest
            )));
        }
        let kvs = backup.key_values().map_err(invalid)?;
        if kvs.len() != manifest.keys || copy::digest(&kvs) != manifest.keys_digest {
            return Err(invalid("its keys do not match its manifest".into()));
        }
        Ok(backup)
    }

    /// The store keys, decoded.
    fn key_values(&self) -> Result<Vec<KeyValue>, String> {
        self.body
            .keys
            .iter()
            .map(|entry| {
                let value = BASE64
                    .decode(entry.base64.as_bytes())
                    .map_err(|e| format!("key `{}`: {e}", entry.key))?;
                Ok(KeyValue {
                    key: entry.key.clone(),
                    value,
                    create_revision: 0,
                    mod_revision: 0,
                })
            })
            .collect()
    }
}

/// Writes `backup`'s files into `dir` and its keys into `store`, then moves the epoch up.
///
/// Refuses a data directory that holds a manager, or a store that holds keys, unless `force`.
/// Every manager using `dir` or `store` must be stopped: a running one keeps its old state.
pub async fn restore(
    backup: &BackupFile,
    dir: &DataDir,
    store: &dyn Store,
    force: bool,
) -> Result<Restored, BackupError> {
    if dir.config().exists() && !force {
        return Err(BackupError::DataDirInUse { path: dir.config() });
    }
    let replaced_epoch = match store.get(EPOCH_KEY).await? {
        Some(kv) => decode::<u64>(store, &kv)?.value,
        None => 0,
    };
    let kvs = backup
        .key_values()
        .map_err(|problem| BackupError::Invalid {
            path: dir.root().into(),
            problem,
        })?;
    let files = prepare_files(dir, &backup.body.files)?;
    copy::write_all(&kvs, store, force).await?;
    write_files(dir, &files)?;

    let backup_epoch = backup.body.manifest.epoch;
    let epoch = next_epoch(backup_epoch, replaced_epoch, OffsetDateTime::now_utc());
    set_epoch(store, epoch).await?;
    Ok(Restored {
        keys: kvs.len(),
        files: backup.body.files.len(),
        backup_epoch,
        epoch,
    })
}

/// The epoch after a restore: above the backed-up and the replaced one, and at least the Unix
/// time, so that even a restore into a new, empty store outranks earlier restores.
pub fn next_epoch(backup: u64, replaced: u64, now: OffsetDateTime) -> u64 {
    let clock = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    (backup.max(replaced) + 1).max(clock)
}

/// Writes `epoch` as the store's epoch.
async fn set_epoch(store: &dyn Store, epoch: u64) -> Result<(), BackupError> {
    let current = store.get(EPOCH_KEY).await?;
    let txn = Txn::new()
        .when_revision(EPOCH_KEY, current.map_or(0, |kv| kv.mod_revision))
        .put(EPOCH_KEY, to_json(&epoch));
    match store.txn(txn).await? {
        TxnOutcome::Committed(_) => Ok(()),
        TxnOutcome::Conflict { key } => Err(CopyError::Concurrent {
            target: store.describe(),
            key,
        }
        .into()),
    }
}

/// The epoch among `kvs` (0 when the store has none yet).
fn epoch_of(store: &dyn Store, kvs: &[KeyValue]) -> Result<u64, StoreError> {
    match kvs.iter().find(|kv| kv.key == EPOCH_KEY) {
        Some(kv) => Ok(decode::<u64>(store, kv)?.value),
        None => Ok(0),
    }
}

/// `manager.toml` and every file of [`DIRECTORIES`], in path order.
fn read_files(dir: &DataDir) -> Result<Vec<FileEntry>, BackupError> {
    let mut paths = vec![PathBuf::from("manager.toml")];
    for sub in DIRECTORIES {
        let listing =
            std::fs::read_dir(dir.root().join(sub)).map_err(|source| BackupError::ReadFile {
                path: dir.root().join(sub),
                source,
            })?;
        for entry in listing {
            let entry = entry.map_err(|source| BackupError::ReadFile {
                path: dir.root().join(sub),
                source,
            })?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                paths.push(Path::new(sub).join(entry.file_name()));
            }
        }
    }
    paths.sort();
    paths
        .iter()
        .map(|relative| read_file(dir, relative))
        .collect()
}

fn read_file(dir: &DataDir, relative: &Path) -> Result<FileEntry, BackupError> {
    let path = dir.root().join(relative);
    let err = |source| BackupError::ReadFile {
        path: path.clone(),
        source,
    };
    let content = std::fs::read(&path).map_err(err)?;
    let mode = std::fs::metadata(&path).map_err(err)?.permissions().mode() & 0o777;
    Ok(FileEntry {
        path: relative.to_string_lossy().into_owned(),
        mode,
        base64: BASE64.encode(&content),
    })
}

/// A file ready to be written: where, what, with which mode.
struct Prepared {
    path: PathBuf,
    content: Vec<u8>,
    mode: u32,
}

/// Decodes every file and checks its path stays inside `dir`, before anything is written.
fn prepare_files(dir: &DataDir, files: &[FileEntry]) -> Result<Vec<Prepared>, BackupError> {
    files
        .iter()
        .map(|file| {
            let relative = Path::new(&file.path);
            let path = dir.root().join(relative);
            let invalid = |problem: String| BackupError::Invalid {
                path: path.clone(),
                problem,
            };
            let escapes = relative.is_absolute()
                || relative
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if escapes {
                return Err(invalid("path leaves the data directory".into()));
            }
            let content = BASE64
                .decode(file.base64.as_bytes())
                .map_err(|e| invalid(e.to_string()))?;
            Ok(Prepared {
                path,
                content,
                mode: file.mode & 0o777,
            })
        })
        .collect()
}

/// Writes each file with its recorded mode, creating its directory.
fn write_files(dir: &DataDir, files: &[Prepared]) -> Result<(), BackupError> {
    for file in files {
        if let Some(parent) = file.path.parent() {
            // The data directory itself is 0750 as init makes it; the CA directory 0700.
            let mode = if parent == dir.root() { 0o750 } else { 0o700 };
            opi_pki::files::create_dir(parent, mode).map_err(|source| BackupError::File {
                path: parent.into(),
                source,
            })?;
        }
        opi_pki::files::write_atomic(&file.path, &file.content, file.mode).map_err(|source| {
            BackupError::File {
                path: file.path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

fn body_digest(body: &Body) -> String {
    let json = serde_json::to_vec(body).expect("a backup serialises to JSON");
    format!(
        "sha256:{}",
        data_encoding::HEXLOWER.encode(&Sha256::digest(&json))
    )
}

#[cfg(test)]
mod tests;
