//! Compliance evidence while `opi-agent run` runs: one task observes the node every
//! evaluation interval and as soon as an apply ends, and publishes the evidence when it
//! differs from the last one (the time of observation aside). Sessions send it when they open
//! and whenever it changes.

use std::time::Duration;

use opi_proto::v1::agent_message::Body as AgentBody;
use opi_proto::v1::{AgentMessage, ComplianceReport};
use prost::Message;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use super::applier::Reports;
use crate::apply::kinds::sysctl::DEFAULT_PROC_SYS;
use crate::apply::node::{Node, DEFAULT_DBUS_SOCKET};
use crate::compliance::{self, proto};
use crate::paths::StatePaths;
use crate::ErrorChain;

/// The latest evidence, as sessions see it.
#[derive(Clone, Debug, Default)]
pub struct LatestEvidence {
    /// The report; `None` while no profile with a baseline was applied.
    pub report: Option<ComplianceReport>,
    /// Increased by each evidence that differs from the one before.
    pub revision: u64,
}

/// Starts the task for the node at `paths`; it observes every `interval` and whenever
/// `applied` changes.
pub fn start(
    paths: &StatePaths,
    interval: watch::Receiver<Duration>,
    applied: watch::Receiver<Reports>,
) -> watch::Receiver<LatestEvidence> {
    let proc_sys = std::path::PathBuf::from(DEFAULT_PROC_SYS);
    let dbus = std::path::PathBuf::from(DEFAULT_DBUS_SOCKET);
    let node = Node::new(paths, &proc_sys, &dbus);
    let (sender, latest) = watch::channel(LatestEvidence::default());
    let task = observe_forever(node, sender, interval, applied);
    tokio::spawn(task.instrument(info_span!("compliance")));
    latest
}

/// Queues the latest evidence if it is newer than revision `sent` (`None`: nothing sent on
/// this session yet); returns the revision the manager now has.
pub fn send_if_due(
    outbox: &mpsc::Sender<AgentMessage>,
    latest: &watch::Receiver<LatestEvidence>,
    sent: Option<u64>,
) -> Option<u64> {
    let latest = latest.borrow();
    let Some(report) = &latest.report else {
        return sent;
    };
    if sent == Some(latest.revision) {
        return sent;
    }
    let message = AgentMessage {
        body: Some(AgentBody::Compliance(report.clone())),
    };
    match outbox.try_send(message) {
        Ok(()) => {
            debug!(revision = latest.revision, "compliance evidence queued");
            Some(latest.revision)
        }
        Err(_) => {
            debug!("compliance evidence delayed: the stream is not draining");
            sent
        }
    }
}

async fn observe_forever(
    node: Node,
    latest: watch::Sender<LatestEvidence>,
    mut interval: watch::Receiver<Duration>,
    mut applied: watch::Receiver<Reports>,
) {
    let mut digest = String::new();
    let mut applying = true;
    loop {
        let observed = observe(node.clone()).await;
        if let Some((report, new_digest)) = observed.filter(|(_, d)| *d != digest) {
            log_change(&report);
            digest = new_digest;
            latest.send_modify(|latest| {
                latest.report = Some(report);
                latest.revision += 1;
            });
        }
        let period = *interval.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            changed = interval.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(period).await;
                }
            }
            changed = applied.changed(), if applying => {
                // The applier only ends with the runtime.
                applying = changed.is_ok();
            }
        }
    }
}

/// The evidence now and its digest, the time of observation left out.
async fn observe(node: Node) -> Option<(ComplianceReport, String)> {
    let collected =
        tokio::task::spawn_blocking(move || compliance::collect(&node, OffsetDateTime::now_utc()))
            .await;
    let evidence = match collected {
        Ok(Ok(evidence)) => evidence?,
        Ok(Err(error)) => {
            warn!(error = %ErrorChain(&error), "cannot observe the node's compliance");
            return None;
        }
        Err(error) => {
            warn!(error = %error, "the compliance observation did not finish");
            return None;
        }
    };
    let report = proto::report(&evidence);
    let unstamped = ComplianceReport {
        observed_at: None,
        ..report.clone()
    };
    let digest = Sha256::digest(unstamped.encode_to_vec())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some((report, digest))
}

fn log_change(report: &ComplianceReport) {
    let failing: Vec<&str> = report
        .rules
        .iter()
        .filter(|r| {
            matches!(
                r.status(),
                opi_proto::v1::ComplianceStatus::Fail
                    | opi_proto::v1::ComplianceStatus::ExpiredException
            )
        })
        .map(|r| r.rule.as_str())
        .collect();
    info!(baseline = %report.baseline, failing = ?failing, "compliance evidence changed");
}
