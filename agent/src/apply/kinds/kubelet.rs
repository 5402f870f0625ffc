//! kubelet: its configuration has no offline checker, so the allowlist is the check; its
//! health after a restart is the healthz probe of [`crate::conditions::kubelet`].

use opi_proto::v1::ConditionStatus;

use crate::conditions::config::HealthConfig;
use crate::conditions::kubelet::KubeletCollector;

/// Whether kubelet answers `ok` on the healthz URL `health.toml` names.
pub async fn healthy(config: &HealthConfig) -> Result<String, String> {
    let seen = KubeletCollector::new(config)
        .observe()
        .await
        .map_err(|e| e.to_string())?;
    match seen.status {
        ConditionStatus::Ok => Ok(seen.message),
        _ => Err(seen.message),
    }
}
