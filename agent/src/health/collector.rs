//! The health summary sent with each heartbeat, from one long-lived `sysinfo` handle:
//! CPU and memory are refreshed at each call, disks at most once per [`DISK_REFRESH`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opi_proto::v1::HealthSummary;
use sysinfo::{Disks, System};

/// Shortest interval between two refreshes of the disk list and usage.
pub const DISK_REFRESH: Duration = Duration::from_secs(60);

/// Collects [`HealthSummary`] values.
pub struct HealthCollector {
    system: System,
    disks: Disks,
    disks_refreshed: Instant,
    root: PathBuf,
}

/// A mounted file system's size and free space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    /// Where it is mounted.
    pub point: &'a Path,
    /// Size in bytes.
    pub total: u64,
    /// Bytes available.
    pub available: u64,
}

impl HealthCollector {
    /// A collector reporting on the file system that holds `root`.
    pub fn new(root: &Path) -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        system.refresh_memory();
        Self {
            system,
            disks: Disks::new_with_refreshed_list(),
            disks_refreshed: Instant::now(),
            root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
        }
    }

    /// The summary right now. CPU usage is measured since the previous call.
    pub fn summary(&mut self) -> HealthSummary {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        if self.disks_refreshed.elapsed() >= DISK_REFRESH {
            self.disks.refresh(true);
            self.disks_refreshed = Instant::now();
        }

        let mounts = self.disks.list().iter().map(|disk| Mount {
            point: disk.mount_point(),
            total: disk.total_space(),
            available: disk.available_space(),
        });
        let (disk_used, disk_total) = disk_usage(&self.root, mounts);
        let load = System::load_average();
        HealthSummary {
            cpu_percent: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            disk_used_bytes: disk_used,
            disk_total_bytes: disk_total,
            load1: load.one as f32,
            load5: load.five as f32,
            load15: load.fifteen as f32,
            uptime_secs: System::uptime(),
        }
    }
}

/// Used and total bytes of the mount holding `path`: the longest mount point it lies under.
/// `(0, 0)` when no mount holds it.
///
/// Shortcoming: blocks reserved for root count as used here, unlike in `DiskPressure` (and
/// `df`), so the two figures differ on a file system with a large reservation.
pub fn disk_usage<'a>(path: &Path, mounts: impl Iterator<Item = Mount<'a>>) -> (u64, u64) {
    mounts
        .filter(|mount| path.starts_with(mount.point))
        .max_by_key(|mount| mount.point.components().count())
        .map(|mount| {
            let used = mount.total.saturating_sub(mount.available);
            (used, mount.total)
        })
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &str, total: u64, available: u64) -> Mount<'_> {
        Mount {
            point: Path::new(point),
            total,
            available,
        }
    }

    #[test]
    fn disk_usage_comes_from_the_longest_mount_prefix() {
        let mounts = [
            mount("/", 100, 60),
            mount("/var", 50, 10),
            mount("/var/lib", 9, 1),
        ];
        let usage = disk_usage(Path::new("/var/log"), mounts.clone().into_iter());
        assert_eq!(usage, (40, 50));
        let usage = disk_usage(Path::new("/var/lib/opi"), mounts.clone().into_iter());
        assert_eq!(usage, (8, 9));
        assert_eq!(
            disk_usage(Path::new("/home"), mounts.into_iter()),
            (40, 100)
        );
    }

    #[test]
    fn mount_prefixes_match_whole_components() {
        let mounts = [mount("/", 100, 60), mount("/var", 50, 10)];
        assert_eq!(
            disk_usage(Path::new("/variable"), mounts.into_iter()),
            (40, 100)
        );
    }

    #[test]
    fn path_outside_every_mount_reports_nothing() {
        assert_eq!(
            disk_usage(Path::new("relative"), std::iter::empty()),
            (0, 0)
        );
    }

    #[test]
    fn summary_reports_memory_of_this_host() {
        let mut collector = HealthCollector::new(Path::new("/"));
        let summary = collector.summary();
        assert!(summary.memory_total_bytes > 0);
        assert!(summary.memory_used_bytes <= summary.memory_total_bytes);
    }
}
