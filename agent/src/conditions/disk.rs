//! `DiskPressure` and `InodePressure`: space and inodes used on each checked mount, from
//! `statvfs`.

use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::statvfs::{statvfs, Statvfs};
use opi_proto::v1::Severity;

use super::config::HealthConfig;
use super::mounts::{self, Mount};
use super::{blocking, grade_at_least, CollectFuture, Collector, NodeFiles, Observation};
use crate::output::human_bytes;

/// The condition type of space.
pub const DISK_PRESSURE: &str = "DiskPressure";
/// The condition type of inodes.
pub const INODE_PRESSURE: &str = "InodePressure";

/// Checks space and inodes of the configured mounts.
#[derive(Debug)]
pub struct DiskCollector {
    files: NodeFiles,
    wanted: Vec<PathBuf>,
    space: Option<Limits>,
    inodes: Option<Limits>,
}

/// Percentages used at which a mount is a warning, then critical.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Warning at or above this.
    pub warning: f64,
    /// Critical at or above this.
    pub critical: f64,
}

/// How much of a file system's space or inodes is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Units in use.
    pub used: u64,
    /// Units usable in all: used plus those available to ordinary users.
    pub total: u64,
}

impl DiskCollector {
    /// The checks `config` enables; `None` when neither space nor inodes is checked.
    pub fn new(config: &HealthConfig, files: &NodeFiles) -> Option<Self> {
        let disk = &config.disk;
        let space = config.enabled(DISK_PRESSURE).then_some(Limits {
            warning: disk.warning_used_percent,
            critical: disk.critical_used_percent,
        });
        let inodes = config.enabled(INODE_PRESSURE).then_some(Limits {
            warning: disk.inode_warning_used_percent,
            critical: disk.inode_critical_used_percent,
        });
        (space.is_some() || inodes.is_some()).then(|| Self {
            files: files.clone(),
            wanted: mounts::wanted(config),
            space,
            inodes,
        })
    }

    /// Checks every selected mount now.
    pub fn observe(&self) -> Result<Vec<Observation>, super::CollectError> {
        let checked = mounts::checked(&self.files, &self.wanted)?;
        Ok(checked
            .iter()
            .flat_map(|mount| self.observe_mount(mount))
            .collect())
    }

    fn observe_mount(&self, mount: &Mount) -> Vec<Observation> {
        let subject = mounts::display(&mount.point);
        let stats = match statvfs(&mount.point) {
            Ok(stats) => stats,
            Err(error) => {
                let message = format!("cannot read the usage of {}: {error}", describe(mount));
                return self
                    .kinds()
                    .into_iter()
                    .map(|kind| {
                        Observation::unknown(kind, &subject, "StatvfsFailed", message.clone())
                    })
                    .collect();
            }
        };
        let mut seen = Vec::new();
        if let Some(limits) = self.space {
            seen.push(space_observation(mount, space_usage(&stats), limits));
        }
        if let Some(limits) = self.inodes {
            seen.push(inode_observation(mount, inode_usage(&stats), limits));
        }
        seen
    }
}

impl Collector for DiskCollector {
    fn kinds(&self) -> Vec<&'static str> {
        let space = self.space.map(|_| DISK_PRESSURE);
        let inodes = self.inodes.map(|_| INODE_PRESSURE);
        space.into_iter().chain(inodes).collect()
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        blocking(move || self.observe())
    }
}

impl Usage {
    /// Percentage used; 0 for an empty file system.
    pub fn percent(&self) -> f64 {
        match self.total {
            0 => 0.0,
            total => self.used as f64 * 100.0 / total as f64,
        }
    }
}

/// Space as `df` counts it: blocks reserved for root count neither as used nor as usable,
/// so that a disk full for ordinary users shows 100 %.
pub fn space_from_blocks(blocks: u64, free: u64, available: u64, block_size: u64) -> Usage {
    let used = blocks.saturating_sub(free);
    Usage {
        used: used.saturating_mul(block_size),
        total: used.saturating_add(available).saturating_mul(block_size),
    }
}

/// Inodes used; `None` when the file system has no fixed count (btrfs reports zero).
pub fn inodes_from_counts(files: u64, free: u64) -> Option<Usage> {
    (files > 0).then(|| Usage {
        used: files.saturating_sub(free),
        total: files,
    })
}

#[allow(clippy::useless_conversion)] // statvfs field types differ between targets.
fn space_usage(stats: &Statvfs) -> Usage {
    space_from_blocks(
        u64::from(stats.blocks()),
        u64::from(stats.blocks_free()),
        u64::from(stats.blocks_available()),
        u64::from(stats.fragment_size()),
    )
}

#[allow(clippy::useless_conversion)] // statvfs field types differ between targets.
fn inode_usage(stats: &Statvfs) -> Option<Usage> {
    inodes_from_counts(u64::from(stats.files()), u64::from(stats.files_free()))
}

fn space_observation(mount: &Mount, usage: Usage, limits: Limits) -> Observation {
    let subject = mounts::display(&mount.point);
    let percent = usage.percent();
    let message = format!(
        "{} is {percent:.1} % full ({} used of {}); warning at {} %, critical at {} %",
        describe(mount),
        human_bytes(usage.used),
        human_bytes(usage.total),
        limits.warning,
        limits.critical,
    );
    match grade_at_least(percent, limits.warning, limits.critical) {
        None => Observation::ok(DISK_PRESSURE, &subject, "SpaceAvailable", message),
        Some(severity) => {
            let reason = match severity {
                Severity::Critical => "DiskAlmostFull",
                _ => "DiskFillingUp",
            };
            Observation::problem(DISK_PRESSURE, &subject, severity, reason, message)
        }
    }
}

fn inode_observation(mount: &Mount, usage: Option<Usage>, limits: Limits) -> Observation {
    let subject = mounts::display(&mount.point);
    let Some(usage) = usage else {
        let message = format!("{} has no fixed number of inodes", describe(mount));
        return Observation::ok(INODE_PRESSURE, &subject, "InodesUnlimited", message);
    };
    let percent = usage.percent();
    let message = format!(
        "{} uses {percent:.1} % of its inodes ({} of {}); warning at {} %, critical at {} %",
        describe(mount),
        usage.used,
        usage.total,
        limits.warning,
        limits.critical,
    );
    match grade_at_least(percent, limits.warning, limits.critical) {
        None => Observation::ok(INODE_PRESSURE, &subject, "InodesAvailable", message),
        Some(severity) => {
            let reason = match severity {
                Severity::Critical => "InodesAlmostExhausted",
                _ => "InodesRunningOut",
            };
            Observation::problem(INODE_PRESSURE, &subject, severity, reason, message)
        }
    }
}

fn describe(mount: &Mount) -> String {
    mounts::describe(mount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;

    fn collector(warning: f64, critical: f64) -> DiskCollector {
        let mut config = HealthConfig::default();
        config.disk.mounts = vec![PathBuf::from("/")];
        config.disk.warning_used_percent = warning;
        config.disk.critical_used_percent = critical;
        config.disk.inode_warning_used_percent = warning;
        config.disk.inode_critical_used_percent = critical;
        DiskCollector::new(&config, &NodeFiles::new(std::path::Path::new("/"))).unwrap()
    }

    fn of_kind<'a>(seen: &'a [Observation], kind: &str) -> &'a Observation {
        seen.iter()
            .find(|o| o.kind == kind)
            .expect("condition reported")
    }

    #[test]
    fn root_file_system_is_a_critical_problem_at_a_zero_threshold() {
        let seen = collector(0.0, 0.0).observe().unwrap();
        let space = of_kind(&seen, DISK_PRESSURE);
        assert_eq!(space.subject, "/");
        assert_eq!(space.status, ConditionStatus::Problem, "{}", space.message);
        assert_eq!(space.severity, Severity::Critical);
        assert_eq!(space.reason, "DiskAlmostFull");
        assert!(space.message.contains("% full"), "{}", space.message);
    }

    #[test]
    fn root_file_system_is_fine_at_a_full_threshold() {
        let seen = collector(100.0, 100.0).observe().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        for observation in &seen {
            assert_eq!(
                observation.status,
                ConditionStatus::Ok,
                "{}",
                observation.message
            );
        }
    }

    #[test]
    fn reserved_blocks_count_neither_as_used_nor_usable() {
        // 1000 blocks of 4 KiB: 900 free, of which 850 available to users.
        let usage = space_from_blocks(1000, 900, 850, 4096);
        assert_eq!(usage.used, 100 * 4096);
        assert_eq!(usage.total, 950 * 4096);
        assert!((usage.percent() - 100.0 * 100.0 / 950.0).abs() < 1e-9);
        let full_for_users = space_from_blocks(1000, 50, 0, 4096);
        assert_eq!(full_for_users.percent(), 100.0);
    }

    #[test]
    fn usage_is_graded_against_each_threshold() {
        let mount = mounts::parse("1 0 8:1 / /var rw - ext4 /dev/vdb rw\n").remove(0);
        let limits = Limits {
            warning: 85.0,
            critical: 95.0,
        };
        let graded = |used| space_observation(&mount, Usage { used, total: 100 }, limits);
        assert_eq!(graded(84).status, ConditionStatus::Ok);
        assert_eq!(graded(85).severity, Severity::Warning);
        assert_eq!(graded(85).reason, "DiskFillingUp");
        assert_eq!(graded(95).severity, Severity::Critical);
        assert!(graded(90)
            .message
            .starts_with("/var (ext4 on /dev/vdb) is 90.0 % full"));
    }

    #[test]
    fn file_systems_without_an_inode_count_are_fine() {
        assert_eq!(inodes_from_counts(0, 0), None);
        let mount = mounts::parse("1 0 8:1 / /data rw - btrfs /dev/vdb rw\n").remove(0);
        let limits = Limits {
            warning: 0.0,
            critical: 0.0,
        };
        let seen = inode_observation(&mount, None, limits);
        assert_eq!(seen.status, ConditionStatus::Ok);
        assert_eq!(seen.reason, "InodesUnlimited");
    }
}
