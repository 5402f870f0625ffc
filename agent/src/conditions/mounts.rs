//! The mounted file systems, from the kernel's mountinfo, and the ones worth checking.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::config::HealthConfig;
use super::NodeFiles;

/// The kernel's list of mounts seen by this process: the mounts of a `--root` other than `/`.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// The mounts of the node itself (`--root /`), as its init sees them. Not this process's own:
/// under its systemd sandbox (`ProtectSystem=strict`) the agent sees the node's file systems
/// through read-only bind mounts, which say nothing of the node's.
pub const NODE_MOUNTINFO: &str = "/proc/1/mountinfo";

/// File system types that hold no data of the node's: never checked.
pub const PSEUDO_FILESYSTEMS: [&str; 24] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nfsd",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// The file system type, e.g. `ext4`.
    pub fs_type: String,
    /// What is mounted, e.g. `/dev/vda1`.
    pub source: String,
    /// Options of this mount, e.g. `rw,relatime`.
    pub mount_options: String,
    /// Options of the file system itself, e.g. `rw,errors=remount-ro`.
    pub super_options: String,
}

/// Why mountinfo could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    /// The file cannot be read.
    #[error("cannot read the mount list {path}")]
    ReadMountinfo {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl Mount {
    /// Whether the mount or its file system is read-only.
    pub fn read_only(&self) -> bool {
        let has_ro = |options: &str| options.split(',').any(|option| option == "ro");
        has_ro(&self.mount_options) || has_ro(&self.super_options)
    }

    /// Whether the file system holds no data of the node's.
    pub fn is_pseudo(&self) -> bool {
        PSEUDO_FILESYSTEMS.contains(&self.fs_type.as_str())
    }
}

/// Parses mountinfo text; lines that do not have its shape are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL…] - TYPE SOURCE SUPER_OPTIONS`.
fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let before: Vec<&str> = before.split(' ').collect();
    let mut after = after.split(' ');
    Some(Mount {
        point: PathBuf::from(unescape(before.get(4)?)),
        mount_options: before.get(5)?.to_string(),
        fs_type: after.next()?.to_string(),
        source: unescape(after.next()?),
        super_options: after.next().unwrap_or_default().to_string(),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a mountinfo field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes.get(at + 1..at + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[at], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                at += 4;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts to check among `mounts`: those at one of `wanted`, not pseudo file systems,
/// the topmost one when several are stacked at the same point, in the order of `wanted`.
pub fn select<'a>(mounts: &'a [Mount], wanted: &[PathBuf]) -> Vec<&'a Mount> {
    let mut seen = BTreeSet::new();
    wanted
        .iter()
        .filter(|point| seen.insert(point.as_path()))
        .filter_map(|point| mounts.iter().rev().find(|mount| &mount.point == point))
        .filter(|mount| !mount.is_pseudo())
        .collect()
}

/// The mount points `config` asks to check.
pub fn wanted(config: &HealthConfig) -> Vec<PathBuf> {
    let disk = &config.disk;
    disk.mounts
        .iter()
        .chain(&disk.extra_mounts)
        .cloned()
        .collect()
}

/// Reads mountinfo (under the root when staged there) and selects the mounts to check.
///
/// Wanted mount points are matched as the kernel names them, not under `--root`: with a root
/// other than `/`, list them by their full path.
pub fn checked(files: &NodeFiles, wanted: &[PathBuf]) -> Result<Vec<Mount>, MountsError> {
    let table = if files.root() == Path::new("/") {
        NODE_MOUNTINFO
    } else {
        MOUNTINFO
    };
    let path = files.kernel(table);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| MountsError::ReadMountinfo { path, source })?;
    let mounts = parse(&text);
    Ok(select(&mounts, wanted).into_iter().cloned().collect())
}

/// How a mount is described in messages: `/var (ext4 on /dev/vdb1)`.
pub fn describe(mount: &Mount) -> String {
    format!(
        "{} ({} on {})",
        display(&mount.point),
        mount.fs_type,
        mount.source
    )
}

/// A mount point as a subject.
pub fn display(point: &Path) -> String {
    point.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines in the kernel's format, as a node with separate `/var` and kubelet mounts has.
    const FIXTURE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 27 254:16 / /var rw,nodev,relatime shared:2 - xfs /dev/vdb1 rw,attr2,inode64
31 30 254:32 / /var/lib/kubelet ro,relatime shared:3 master:1 - ext4 /dev/vdc rw
32 27 0:40 / /mnt/my\\040disk rw,relatime - ext4 /dev/vdd rw
33 30 0:41 / /var/lib/containerd rw,relatime - ext4 /dev/vde ro,errors=remount-ro
34 30 0:42 / /var/lib/containerd rw,relatime - tmpfs tmpfs rw,size=1024k
";

    fn points(mounts: &[&Mount]) -> Vec<String> {
        mounts.iter().map(|mount| display(&mount.point)).collect()
    }

    #[test]
    fn mountinfo_lines_are_parsed_with_optional_fields_and_escapes() {
        let mounts = parse(FIXTURE);
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[3],
            Mount {
                point: PathBuf::from("/var/lib/kubelet"),
                fs_type: "ext4".into(),
                source: "/dev/vdc".into(),
                mount_options: "ro,relatime".into(),
                super_options: "rw".into(),
            }
        );
        assert_eq!(mounts[4].point, Path::new("/mnt/my disk"));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse("garbage\n1 2 3\n").is_empty());
    }

    #[test]
    fn read_only_comes_from_the_mount_or_its_file_system() {
        let mounts = parse(FIXTURE);
        let ro: Vec<String> = mounts
            .iter()
            .filter(|mount| mount.read_only())
            .map(|mount| display(&mount.point))
            .collect();
        // The kubelet mount is read-only itself; the first containerd file system was
        // remounted read-only by the kernel after errors.
        assert_eq!(ro, ["/var/lib/kubelet", "/var/lib/containerd"]);
    }

    #[test]
    fn selection_keeps_wanted_real_mounts_and_the_topmost_of_a_stack() {
        let mounts = parse(FIXTURE);
        let wanted: Vec<PathBuf> = ["/", "/var", "/var/lib/kubelet", "/var/lib/containerd"]
            .iter()
            .chain(&["/proc", "/srv", "/var"])
            .map(PathBuf::from)
            .collect();
        let selected = select(&mounts, &wanted);
        assert_eq!(
            points(&selected),
            ["/", "/var", "/var/lib/kubelet", "/var/lib/containerd"]
        );
        assert_eq!(selected[3].fs_type, "tmpfs");
    }

    #[test]
    fn mountinfo_staged_under_the_root_is_read() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("proc/self/mountinfo");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, FIXTURE).unwrap();
        let files = NodeFiles::new(root.path());
        let checked = checked(&files, &[PathBuf::from("/var")]).unwrap();
        assert_eq!(checked[0].source, "/dev/vdb1");
    }
}
