//! Verification after an apply: kubelet and containerd healthy again within the deadline,
//! through the same checks as their node conditions, and the manager reachable when the agent
//! is managed (a hook the stream integration fills in).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use opi_profile::Service;
use tokio::time::Instant;

use super::kinds;
use crate::conditions::config::HealthConfig;
use crate::conditions::containerd::CONTAINER_RUNTIME_HEALTHY;
use crate::conditions::kubelet::KUBELET_HEALTHY;
use crate::conditions::NodeFiles;

/// Pause between two probes of a service that is not healthy yet.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The answer of a probe: what was seen, or why it failed.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Whether the manager can still be reached once the node changed; given by the stream loop
/// when the agent is managed.
pub trait ManagerProbe: Send + Sync {
    /// Probes the manager once.
    fn reachable(&self) -> ProbeFuture<'_>;
}

/// The checks run after an apply.
#[derive(Clone)]
pub struct Verifier {
    /// Where kubelet and containerd answer, and which checks are enabled.
    pub health: HealthConfig,
    /// The node's files, for the containerd socket under `--root`.
    pub files: NodeFiles,
    /// The manager check, when managed.
    pub manager: Option<Arc<dyn ManagerProbe>>,
}

impl Verifier {
    /// Waits until every service of `changed` that has a health check is healthy, each within
    /// `deadline`; returns one line per check, or why verification failed.
    pub async fn verify(
        &self,
        changed: &BTreeSet<Service>,
        deadline: Duration,
    ) -> Result<Vec<String>, String> {
        let mut seen = Vec::new();
        let checks = [
            (Service::Containerd, CONTAINER_RUNTIME_HEALTHY),
            (Service::Kubelet, KUBELET_HEALTHY),
        ];
        for (service, check) in checks.into_iter().filter(|(s, _)| changed.contains(s)) {
            if !self.health.enabled(check) {
                seen.push(format!("{check}: not checked, disabled in health.toml"));
                continue;
            }
            let line = self.until_healthy(service, deadline).await.map_err(|why| {
                format!(
                    "{} was not healthy within {}s: {why}",
                    service.unit(),
                    deadline.as_secs()
                )
            })?;
            seen.push(format!("{check}: {line}"));
        }
        if let Some(manager) = &self.manager {
            let line = manager
                .reachable()
                .await
                .map_err(|why| format!("the manager is unreachable: {why}"))?;
            seen.push(format!("manager: {line}"));
        }
        Ok(seen)
    }

    async fn until_healthy(&self, service: Service, deadline: Duration) -> Result<String, String> {
        let end = Instant::now() + deadline;
        loop {
            let probe = match service {
                Service::Containerd => kinds::containerd::healthy(&self.health, &self.files).await,
                Service::Kubelet => kinds::kubelet::healthy(&self.health).await,
                Service::Sshd | Service::ModulesLoad => return Ok("no health check".to_string()),
            };
            match probe {
                Ok(line) => return Ok(line),
                Err(why) if Instant::now() + PROBE_INTERVAL >= end => return Err(why),
                Err(_) => tokio::time::sleep(PROBE_INTERVAL).await,
            }
        }
    }
}
