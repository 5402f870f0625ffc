//! File operations of the apply engine: reading a file with its mode and owner, and replacing
//! one atomically (temporary file, fsync, rename, fsync of the directory) with the mode and
//! owner it must have.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Mode of directories the engine creates for a new file.
pub const NEW_DIR_MODE: u32 = 0o755;

/// A file as found on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its bytes.
    pub content: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// Mode and owner of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// Reads the file at `path`; `None` when it does not exist.
pub fn read(path: &Path) -> io::Result<Option<Found>> {
    let content = match fs::read(path) {
        Ok(content) => content,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let meta = meta(path)?.expect("a file just read exists");
    Ok(Some(Found {
        content,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
    }))
}

/// Mode and owner of `path`; `None` when it does not exist.
pub fn meta(path: &Path) -> io::Result<Option<Meta>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(Meta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        })),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replaces `path` with `content`, mode and owner `meta`, atomically, creating its directory.
/// When the directory is read-only but the file is not (the sandboxed agent's
/// `ReadWritePaths=-/etc/login.defs`), the file is rewritten in place instead.
///
/// Shortcoming: that in-place rewrite is not atomic; a crash in it is undone by the journal's
/// last-known-good at the next start.
pub fn write_atomic(path: &Path, content: &[u8], meta: Meta) -> io::Result<()> {
    match replace(path, content, meta) {
        Err(error) if error.raw_os_error() == Some(nix::libc::EROFS) && path.is_file() => {
            rewrite_in_place(path, content, meta)
        }
        done => done,
    }
}

/// The temporary file, fsync, rename and directory fsync of [`write_atomic`].
fn replace(path: &Path, content: &[u8], meta: Meta) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(NEW_DIR_MODE))?;
    }
    let tmp = temporary_name(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = (|| {
        file.write_all(content)?;
        std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))?;
        // The mode given to open() is filtered by the umask and chown may clear set-id bits.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Truncates and writes the existing file at `path`, keeping its inode, then sets `meta`.
fn rewrite_in_place(path: &Path, content: &[u8], meta: Meta) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(content)?;
    std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))?;
    file.set_permissions(fs::Permissions::from_mode(meta.mode))?;
    file.sync_all()
}

/// Sets mode and owner of an existing file.
pub fn set_meta(path: &Path, meta: Meta) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(meta.uid), Some(meta.gid))?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
}

/// Removes `path` if it exists, and syncs its directory.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/"))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Flushes a directory's entries to disk, so that a rename survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The uid of user `name` in `ROOT/etc/passwd`; `root` is 0 even without the file.
pub fn uid_of(root: &Path, name: &str) -> Option<u32> {
    id_in(&root.join("etc/passwd"), name).or((name == "root").then_some(0))
}

/// The gid of group `name` in `ROOT/etc/group`; `root` is 0 even without the file.
pub fn gid_of(root: &Path, name: &str) -> Option<u32> {
    id_in(&root.join("etc/group"), name).or((name == "root").then_some(0))
}

/// The name of user `uid` in `ROOT/etc/passwd`.
pub fn user_name(root: &Path, uid: u32) -> Option<String> {
    name_in(&root.join("etc/passwd"), uid).or((uid == 0).then(|| "root".to_string()))
}

/// The name of group `gid` in `ROOT/etc/group`.
pub fn group_name(root: &Path, gid: u32) -> Option<String> {
    name_in(&root.join("etc/group"), gid).or((gid == 0).then(|| "root".to_string()))
}

/// The first field of the line of `file` whose third field is `id`.
fn name_in(file: &Path, id: u32) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.get(2).and_then(|f| f.parse().ok()) == Some(id))
        .and_then(|fields| fields.first().map(|name| name.to_string()))
}

/// The third field of the line of `file` whose first field is `name`.
fn id_in(file: &Path, name: &str) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
        .and_then(|fields| fields.get(2)?.parse().ok())
}

fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.opi-tmp{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_owner_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/containerd/config.toml");
        let me = meta(dir.path()).unwrap().unwrap();
        write_atomic(&path, b"version = 2\n", Meta { mode: 0o600, ..me }).unwrap();
        let found = read(&path).unwrap().unwrap();
        assert_eq!(found.content, b"version = 2\n");
        assert_eq!(found.mode, 0o600);
        let entries: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1, "temporary file left behind");
    }

    #[test]
    fn owners_are_resolved_in_the_roots_own_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\nshadow:x:42:\n").unwrap();
        assert_eq!(gid_of(dir.path(), "shadow"), Some(42));
        assert_eq!(gid_of(dir.path(), "nobody"), None);
        assert_eq!(uid_of(dir.path(), "root"), Some(0));
    }
}
