//! PEM files on disk. Secrets are written 0600, and every write is atomic (temp file, fsync,
//! rename), so a crash never leaves a half-written key or certificate behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of files holding private keys or tokens.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of files holding public material.
pub const PUBLIC_MODE: u32 = 0o644;

/// A file operation that failed, with its path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is readable by others (mode {mode:o}); make it 0600")]
    TooOpen { path: PathBuf, mode: u32 },
}

/// Writes `contents` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    // The mode given to open() is filtered by the umask; set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Writes a secret (private key, token) 0600.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_atomic(path, contents, SECRET_MODE)
}

/// Writes public material 0644.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_atomic(path, contents, PUBLIC_MODE)
}

/// Reads a text file.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a secret file, refusing one that others can read.
pub fn read_secret(path: &Path) -> Result<String, FileError> {
    let meta = fs::metadata(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_text(path)
}

/// Creates a directory and its parents with the given mode for the leaf.
pub fn create_dir(path: &Path, mode: u32) -> Result<(), FileError> {
    let err = |source| FileError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(path).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_written_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_secret(&path, b"first").unwrap();
        write_secret(&path, b"second").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret(&path).unwrap(), "second");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
    }

    #[test]
    fn refuses_secret_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open.key");
        write_public(&path, b"key").unwrap();
        assert!(matches!(read_secret(&path), Err(FileError::TooOpen { .. })));
    }
}
