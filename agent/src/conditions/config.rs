//! `health.toml`: which checks run, their thresholds, and where kubelet and containerd
//! answer. Optional: a missing file means the defaults; a present one must be whole and valid.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::http::HttpUrl;
pub use super::settings::{
    CertificateSettings, ClockSettings, ContainerdSettings, DiskSettings, KubeletSettings,
    MemorySettings, PidSettings,
};
use super::NodeFiles;

/// The settings file, under `--root`.
pub const HEALTH_CONFIG: &str = "/etc/opi-agent/health.toml";
/// The only `version` this agent reads.
pub const HEALTH_CONFIG_VERSION: u32 = 1;
/// Time each collector has per round before its conditions become `UNKNOWN`.
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 2_000;
/// Shortest and longest collector timeouts accepted.
pub const CHECK_TIMEOUT_RANGE_MS: (u64, u64) = (100, 60_000);
/// Where kubelet answers its health probe.
pub const DEFAULT_KUBELET_URL: &str = "http://127.0.0.1:10248/healthz";
/// Time kubelet or containerd has to answer, shorter than the collector's so that silence is
/// reported as a problem of theirs and not as a failed check.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 1_000;
/// containerd's gRPC socket, under `--root`.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Mount points checked by default, when they are mounts of their own.
pub const DEFAULT_MOUNTS: [&str; 4] = ["/", "/var", "/var/lib/kubelet", "/var/lib/containerd"];

/// Every check that can be enabled, by the condition type it reports.
pub const CHECKS: [&str; 13] = [
    super::kubelet::KUBELET_HEALTHY,
    super::containerd::CONTAINER_RUNTIME_HEALTHY,
    super::disk::DISK_PRESSURE,
    super::disk::INODE_PRESSURE,
    super::memory::MEMORY_PRESSURE,
    super::pids::PID_PRESSURE,
    super::readonly::READ_ONLY_FILESYSTEM,
    super::clock::CLOCK_UNSYNCHRONISED,
    super::certificate::CERTIFICATE_EXPIRING,
    super::reboot::REBOOT_REQUIRED,
    super::hardware::HARDWARE_ERRORS,
    super::drift::CONFIG_DRIFT,
    super::exceptions::HARDENING_EXCEPTION_EXPIRED,
];

/// `health.toml`. Every section and key but `version` may be left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Format version: 1 ([`HEALTH_CONFIG_VERSION`]).
    pub version: u32,
    /// The checks to run, by condition type; all of them ([`CHECKS`]) by default.
    #[serde(default = "all_checks")]
    pub checks: Vec<String>,
    /// Time each collector has per round, in milliseconds.
    #[serde(default = "default_check_timeout")]
    pub check_timeout_ms: u64,
    /// `KubeletHealthy`.
    #[serde(default)]
    pub kubelet: KubeletSettings,
    /// `ContainerRuntimeHealthy`.
    #[serde(default)]
    pub containerd: ContainerdSettings,
    /// `DiskPressure`, `InodePressure` and `ReadOnlyFilesystem`.
    #[serde(default)]
    pub disk: DiskSettings,
    /// `MemoryPressure`.
    #[serde(default)]
    pub memory: MemorySettings,
    /// `PidPressure`.
    #[serde(default)]
    pub pids: PidSettings,
    /// `ClockUnsynchronised`.
    #[serde(default)]
    pub clock: ClockSettings,
    /// `CertificateExpiring`.
    #[serde(default)]
    pub certificate: CertificateSettings,
}

/// Why `health.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read the health settings {path}")]
    ReadHealthConfig {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("{path} is not a valid health settings file; fix it or remove it to use the defaults")]
    ParseHealthConfig {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The values break rules.
    #[error("{path} is invalid: {}; fix it or remove it to use the defaults", problems.join("; "))]
    ValidateHealthConfig {
        /// The file concerned.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// The process exit code: a bad file is a configuration error, failing I/O a runtime one.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::ReadHealthConfig { .. } => crate::EXIT_RUNTIME,
            ConfigError::ParseHealthConfig { .. } | ConfigError::ValidateHealthConfig { .. } => {
                crate::EXIT_USAGE
            }
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            version: HEALTH_CONFIG_VERSION,
            checks: all_checks(),
            check_timeout_ms: DEFAULT_CHECK_TIMEOUT_MS,
            kubelet: KubeletSettings::default(),
            containerd: ContainerdSettings::default(),
            disk: DiskSettings::default(),
            memory: MemorySettings::default(),
            pids: PidSettings::default(),
            clock: ClockSettings::default(),
            certificate: CertificateSettings::default(),
        }
    }
}

impl HealthConfig {
    /// Reads `health.toml` under the root of `files`; the defaults when it does not exist.
    pub fn load(files: &NodeFiles) -> Result<Self, ConfigError> {
        let path = files.node(HEALTH_CONFIG);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::ReadHealthConfig { path, source }),
        };
        Self::parse(&path, &text)
    }

    /// Parses and validates the text of the file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            toml::from_str(text).map_err(|source| ConfigError::ParseHealthConfig {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::ValidateHealthConfig {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(config)
    }

    /// Whether the check reporting `kind` runs.
    pub fn enabled(&self, kind: &str) -> bool {
        self.checks.iter().any(|check| check == kind)
    }

    /// Every problem with these settings, each naming its key; empty when usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.version != HEALTH_CONFIG_VERSION {
            problems.push(format!(
                "version is {}, this agent reads version {HEALTH_CONFIG_VERSION}",
                self.version
            ));
        }
        self.check_checks(&mut problems);
        self.check_timeouts(&mut problems);
        if let Err(error) = HttpUrl::parse(&self.kubelet.healthz_url) {
            problems.push(format!("kubelet.healthz_url: {error}"));
        }
        self.check_paths(&mut problems);
        self.check_thresholds(&mut problems);
        problems
    }

    fn check_checks(&self, problems: &mut Vec<String>) {
        let mut seen = BTreeSet::new();
        for check in &self.checks {
            if !CHECKS.contains(&check.as_str()) {
                problems.push(format!(
                    "checks: unknown check `{check}`; known checks are {}",
                    CHECKS.join(", ")
                ));
            } else if !seen.insert(check) {
                problems.push(format!("checks: `{check}` is listed twice"));
            }
        }
    }

    fn check_timeouts(&self, problems: &mut Vec<String>) {
        let (shortest, longest) = CHECK_TIMEOUT_RANGE_MS;
        if !(shortest..=longest).contains(&self.check_timeout_ms) {
            problems.push(format!(
                "check_timeout_ms is {}, not between {shortest} and {longest}",
                self.check_timeout_ms
            ));
        }
        let probes = [
            ("kubelet.timeout_ms", self.kubelet.timeout_ms),
            ("containerd.timeout_ms", self.containerd.timeout_ms),
        ];
        for (key, timeout) in probes {
            if timeout == 0 || timeout >= self.check_timeout_ms {
                problems.push(format!(
                    "{key} is {timeout}, it must be above 0 and below check_timeout_ms ({})",
                    self.check_timeout_ms
                ));
            }
        }
        if self.clock.max_error_ms == 0 {
            problems.push("clock.max_error_ms must be above 0".to_string());
        }
    }

    fn check_paths(&self, problems: &mut Vec<String>) {
        if !self.containerd.socket.is_absolute() {
            problems.push(format!(
                "containerd.socket: {} is not an absolute path",
                self.containerd.socket.display()
            ));
        }
        let mounts = self.disk.mounts.iter().map(|m| ("disk.mounts", m));
        let extra = self
            .disk
            .extra_mounts
            .iter()
            .map(|m| ("disk.extra_mounts", m));
        for (key, mount) in mounts.chain(extra) {
            if !mount.is_absolute() {
                problems.push(format!(
                    "{key}: {} is not an absolute path",
                    mount.display()
                ));
            }
        }
    }

    fn check_thresholds(&self, problems: &mut Vec<String>) {
        let (disk, memory, pids) = (&self.disk, &self.memory, &self.pids);
        let certificate = &self.certificate;
        let rising = [
            ("disk.", "warning_used_percent", disk.warning_used_percent),
            ("disk.", "critical_used_percent", disk.critical_used_percent),
            (
                "disk.",
                "inode_warning_used_percent",
                disk.inode_warning_used_percent,
            ),
            (
                "disk.",
                "inode_critical_used_percent",
                disk.inode_critical_used_percent,
            ),
            ("pids.", "warning_used_percent", pids.warning_used_percent),
            ("pids.", "critical_used_percent", pids.critical_used_percent),
        ];
        let falling = [
            (
                "memory.",
                "warning_available_percent",
                memory.warning_available_percent,
            ),
            (
                "memory.",
                "critical_available_percent",
                memory.critical_available_percent,
            ),
            (
                "certificate.",
                "warning_remaining_percent",
                certificate.warning_remaining_percent,
            ),
            (
                "certificate.",
                "critical_remaining_percent",
                certificate.critical_remaining_percent,
            ),
        ];
        for pair in rising.chunks(2) {
            check_pair(
                problems,
                pair,
                |warning, critical| warning <= critical,
                "at most",
            );
        }
        for pair in falling.chunks(2) {
            check_pair(
                problems,
                pair,
                |warning, critical| warning >= critical,
                "at least",
            );
        }
    }
}

/// Checks a `[warning, critical]` pair of percentages: each within 0–100, in order.
fn check_pair(
    problems: &mut Vec<String>,
    pair: &[(&str, &str, f64)],
    ordered: impl Fn(f64, f64) -> bool,
    relation: &str,
) {
    for (section, key, value) in pair {
        if !(0.0..=100.0).contains(value) {
            problems.push(format!("{section}{key} is {value}, not between 0 and 100"));
        }
    }
    let [(section, warning_key, warning), (_, critical_key, critical)] = pair else {
        return;
    };
    if !ordered(*warning, *critical) {
        problems.push(format!(
            "{section}{warning_key} ({warning}) must be {relation} {section}{critical_key} ({critical})"
        ));
    }
}

fn all_checks() -> Vec<String> {
    CHECKS.iter().map(|check| check.to_string()).collect()
}

fn default_check_timeout() -> u64 {
    DEFAULT_CHECK_TIMEOUT_MS
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
