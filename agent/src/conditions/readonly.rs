//! `ReadOnlyFilesystem`: a checked mount, which the node needs writable, is read-only (by
//! its mount options, or because the kernel remounted its file system read-only after
//! errors).

use std::path::PathBuf;
use std::sync::Arc;

use opi_proto::v1::Severity;

use super::config::HealthConfig;
use super::mounts::{self, Mount};
use super::{blocking, CollectFuture, Collector, NodeFiles, Observation};

/// The condition type.
pub const READ_ONLY_FILESYSTEM: &str = "ReadOnlyFilesystem";

/// Checks that the configured mounts are writable.
#[derive(Debug)]
pub struct ReadOnlyCollector {
    files: NodeFiles,
    wanted: Vec<PathBuf>,
}

impl ReadOnlyCollector {
    /// A check of the mounts `config` names.
    pub fn new(config: &HealthConfig, files: &NodeFiles) -> Self {
        Self {
            files: files.clone(),
            wanted: mounts::wanted(config),
        }
    }

    /// Checks every selected mount now.
    pub fn observe(&self) -> Result<Vec<Observation>, super::CollectError> {
        let checked = mounts::checked(&self.files, &self.wanted)?;
        Ok(checked.iter().map(judge).collect())
    }
}

impl Collector for ReadOnlyCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![READ_ONLY_FILESYSTEM]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        blocking(move || self.observe())
    }
}

/// The condition of one mount.
pub fn judge(mount: &Mount) -> Observation {
    let subject = mounts::display(&mount.point);
    let options = format!(
        "mount options {}, file system options {}",
        mount.mount_options, mount.super_options
    );
    if mount.read_only() {
        let message = format!(
            "{} is read-only ({options}); writes to it fail",
            mounts::describe(mount)
        );
        let severity = Severity::Critical;
        return Observation::problem(
            READ_ONLY_FILESYSTEM,
            &subject,
            severity,
            "MountedReadOnly",
            message,
        );
    }
    let message = format!("{} is writable ({options})", mounts::describe(mount));
    Observation::ok(READ_ONLY_FILESYSTEM, &subject, "MountedReadWrite", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;

    const FIXTURE: &str = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 27 254:16 / /var rw,relatime shared:2 - ext4 /dev/vdb1 ro,errors=remount-ro
31 30 254:32 / /var/lib/kubelet ro,nosuid,relatime - xfs /dev/vdc rw
40 27 0:50 / /usr ro,relatime - ext4 /dev/vdd ro
";

    fn staged_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("proc/self/mountinfo");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, FIXTURE).unwrap();
        root
    }

    #[test]
    fn read_only_checked_mounts_are_critical_problems() {
        let root = staged_root();
        let collector =
            ReadOnlyCollector::new(&HealthConfig::default(), &NodeFiles::new(root.path()));
        let seen = collector.observe().unwrap();
        let status: Vec<(&str, ConditionStatus)> = seen
            .iter()
            .map(|o| (o.subject.as_str(), o.status))
            .collect();
        // /usr is read-only by design and not among the checked mounts.
        assert_eq!(
            status,
            [
                ("/", ConditionStatus::Ok),
                ("/var", ConditionStatus::Problem),
                ("/var/lib/kubelet", ConditionStatus::Problem),
            ]
        );
        assert_eq!(seen[1].severity, Severity::Critical);
        assert_eq!(seen[1].reason, "MountedReadOnly");
        assert!(
            seen[1]
                .message
                .contains("file system options ro,errors=remount-ro"),
            "{}",
            seen[1].message
        );
    }

    #[test]
    fn mounts_added_in_the_settings_are_checked_too() {
        let root = staged_root();
        let mut config = HealthConfig::default();
        config.disk.extra_mounts = vec![PathBuf::from("/usr")];
        let seen = ReadOnlyCollector::new(&config, &NodeFiles::new(root.path()))
            .observe()
            .unwrap();
        assert_eq!(seen.last().unwrap().subject, "/usr");
        assert_eq!(seen.last().unwrap().status, ConditionStatus::Problem);
    }
}
