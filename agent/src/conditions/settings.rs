//! The sections of `health.toml` and their defaults, one per group of checks.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::config::DEFAULT_PROBE_TIMEOUT_MS;
use super::config::{DEFAULT_CONTAINERD_SOCKET, DEFAULT_KUBELET_URL, DEFAULT_MOUNTS};

/// How kubelet is probed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KubeletSettings {
    /// kubelet's healthz URL, plain `http://`.
    pub healthz_url: String,
    /// Time kubelet has to answer, in milliseconds.
    pub timeout_ms: u64,
}

/// How containerd is reached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdSettings {
    /// containerd's gRPC socket, absolute, resolved under `--root`.
    pub socket: PathBuf,
    /// Time containerd has to answer, in milliseconds.
    pub timeout_ms: u64,
}

/// Which mounts are checked and when they are too full.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DiskSettings {
    /// Mount points checked when they are mounts of their own; [`DEFAULT_MOUNTS`] by default.
    pub mounts: Vec<PathBuf>,
    /// More mount points to check, beside `mounts`.
    pub extra_mounts: Vec<PathBuf>,
    /// Space used, in percent, at which a mount is a warning.
    pub warning_used_percent: f64,
    /// Space used, in percent, at which a mount is critical.
    pub critical_used_percent: f64,
    /// Inodes used, in percent, at which a mount is a warning.
    pub inode_warning_used_percent: f64,
    /// Inodes used, in percent, at which a mount is critical.
    pub inode_critical_used_percent: f64,
}

/// When available memory is too low.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Available memory, in percent of the total, below which it is a warning.
    pub warning_available_percent: f64,
    /// Available memory, in percent of the total, below which it is critical.
    pub critical_available_percent: f64,
}

/// When the node runs out of process ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PidSettings {
    /// Tasks, in percent of the kernel's limit, at which it is a warning.
    pub warning_used_percent: f64,
    /// Tasks, in percent of the kernel's limit, at which it is critical.
    pub critical_used_percent: f64,
}

/// When the clock is too far off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClockSettings {
    /// Largest error the kernel may estimate for its clock, in milliseconds.
    pub max_error_ms: u64,
}

/// When the node certificate is close to its end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CertificateSettings {
    /// Lifetime left, in percent, below which it is a warning.
    pub warning_remaining_percent: f64,
    /// Lifetime left, in percent, below which it is critical.
    pub critical_remaining_percent: f64,
}

impl Default for KubeletSettings {
    fn default() -> Self {
        Self {
            healthz_url: DEFAULT_KUBELET_URL.to_string(),
            timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
        }
    }
}

impl Default for ContainerdSettings {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
        }
    }
}

impl Default for DiskSettings {
    fn default() -> Self {
        Self {
            mounts: DEFAULT_MOUNTS.iter().map(PathBuf::from).collect(),
            extra_mounts: Vec::new(),
            warning_used_percent: 85.0,
            critical_used_percent: 95.0,
            inode_warning_used_percent: 85.0,
            inode_critical_used_percent: 95.0,
        }
    }
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            warning_available_percent: 10.0,
            critical_available_percent: 5.0,
        }
    }
}

impl Default for PidSettings {
    fn default() -> Self {
        Self {
            warning_used_percent: 80.0,
            critical_used_percent: 95.0,
        }
    }
}

impl Default for ClockSettings {
    fn default() -> Self {
        Self { max_error_ms: 500 }
    }
}

impl Default for CertificateSettings {
    fn default() -> Self {
        Self {
            warning_remaining_percent: 20.0,
            critical_remaining_percent: 5.0,
        }
    }
}
