//! The optional `apply` section: how the agent applies the profile.

use serde::Serialize;
use serde_norway::Value;

use crate::errors::{join, ProfileErrors};
use crate::yaml;

/// Keys of the `apply` section.
pub const APPLY_KEYS: [&str; 4] = [
    "restartServices",
    "allowReboot",
    "driftRemediation",
    "verifyTimeout",
];
/// Time kubelet and containerd have to be healthy again after an apply, by default.
pub const DEFAULT_VERIFY_TIMEOUT_SECS: u64 = 60;
/// Longest `verifyTimeout` accepted.
pub const MAX_VERIFY_TIMEOUT_SECS: u64 = 600;

/// What the agent does when a managed item drifted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftRemediation {
    /// Report it only.
    Report,
    /// Report it and apply the profile again.
    Reapply,
}

/// The `apply` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyOptions {
    /// Restart the services whose configuration changed (default true).
    pub restart_services: bool,
    /// Accept changes that need a reboot to take effect (default false). `opi-agent apply`
    /// only marks the node as needing one; `opi-agent run` reboots it through systemd once it
    /// has reported a generation from the manager applied, when its root is `/`.
    pub allow_reboot: bool,
    /// What drift leads to (default `report`).
    pub drift_remediation: DriftRemediation,
    /// Seconds kubelet and containerd have to be healthy again (default 60).
    pub verify_timeout_secs: u64,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            restart_services: true,
            allow_reboot: false,
            drift_remediation: DriftRemediation::Report,
            verify_timeout_secs: DEFAULT_VERIFY_TIMEOUT_SECS,
        }
    }
}

impl ApplyOptions {
    /// Reads the section at `path`.
    pub fn parse(value: &Value, path: &str, errors: &mut ProfileErrors) -> Self {
        let found = yaml::entries(value, path, errors);
        yaml::refuse_unknown(&found, &APPLY_KEYS, path, errors);
        let mut options = Self::default();
        if let Some(v) = yaml::get(&found, "restartServices") {
            options.restart_services =
                yaml::boolean(v, &join(path, "restartServices"), errors).unwrap_or(true);
        }
        if let Some(v) = yaml::get(&found, "allowReboot") {
            options.allow_reboot =
                yaml::boolean(v, &join(path, "allowReboot"), errors).unwrap_or(false);
        }
        if let Some(v) = yaml::get(&found, "driftRemediation") {
            let at = join(path, "driftRemediation");
            match yaml::string(v, &at, errors).as_deref() {
                Some("report") => options.drift_remediation = DriftRemediation::Report,
                Some("reapply") => options.drift_remediation = DriftRemediation::Reapply,
                Some(other) => errors.push(at, format!("{other:?} is neither report nor reapply")),
                None => {}
            }
        }
        if let Some(v) = yaml::get(&found, "verifyTimeout") {
            let at = join(path, "verifyTimeout");
            if let Some(text) = yaml::string(v, &at, errors) {
                let allowed = 1..=MAX_VERIFY_TIMEOUT_SECS;
                match parse_seconds(&text) {
                    Some(secs) if allowed.contains(&secs) => options.verify_timeout_secs = secs,
                    _ => errors.push(at, format!("{text:?} is not a duration between 1s and {MAX_VERIFY_TIMEOUT_SECS}s, such as 90s or 2m")),
                }
            }
        }
        options
    }
}

/// `90s` or `2m` in seconds.
fn parse_seconds(text: &str) -> Option<u64> {
    if let Some(secs) = text.strip_suffix('s') {
        return secs.parse().ok();
    }
    text.strip_suffix('m')?.parse::<u64>().ok().map(|m| m * 60)
}
