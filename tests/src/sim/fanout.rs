//! Watch fan-out: a probe node changes a condition, and the benchmark times how long the event
//! takes to reach every one of many `Watch` streams, each on its own operator connection.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use opi_pki::tls::{client_config, ManagerVerifier};
use opi_proto::v1::{CreateTokenRequest, Event, WatchRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::agent::{self, Plan};
use super::identity;

/// Name of the probe node.
pub const PROBE: &str = "fanout-probe";
/// Changes of the probe's condition timed; flap damping mutes a condition from its fifth
/// change in ten minutes, and the hello may count as one.
pub const ROUNDS: usize = 3;
/// Longest wait for one change to reach every watcher.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// The condition the probe flips (the first one a simulated node reports).
const CONDITION: &str = "DiskPressure";

/// Times from the probe's report to the last of `watchers` receiving its event, one per round.
pub async fn measure(
    endpoint: &str,
    data_dir: &Path,
    watchers: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (arrivals, mut arrived) = mpsc::unbounded_channel();
    let mut streams = JoinSet::new();
    for _ in 0..watchers {
        let mut admin = crate::grpc::admin(endpoint, data_dir).await?;
        let events = admin
            .watch(WatchRequest::default())
            .await
            .context("open a watch")?
            .into_inner();
        streams.spawn(forward(events, arrivals.clone()));
    }

    let (sender, _responses) = probe_session(endpoint, data_dir).await?;
    let mut times = Vec::new();
    for round in 1..=ROUNDS {
        let problem = round % 2 == 1;
        let started = Instant::now();
        sender
            .send(agent::report_message(problem))
            .await
            .context("probe session ended")?;
        let to = if problem { "problem" } else { "ok" };
        let last = wait_all(&mut arrived, watchers, to).await?;
        times.push(last.duration_since(started));
    }
    streams.abort_all();
    Ok(times)
}

/// Enrolls the probe with a token of its own and opens its session.
async fn probe_session(endpoint: &str, data_dir: &Path) -> anyhow::Result<agent::Opened> {
    let mut admin = crate::grpc::admin(endpoint, data_dir).await?;
    let created = admin
        .create_token(CreateTokenRequest {
            pool: "probe".into(),
            ttl_secs: 600,
            uses: 1,
            labels: HashMap::new(),
            description: "watch fan-out probe".into(),
        })
        .await
        .context("create the probe's token")?
        .into_inner();
    let pin = created.ca_pin.parse().context("CA pin from the manager")?;
    let tls = client_config(ManagerVerifier::with_pin(pin), None)?;
    let creds = identity::enroll_named(endpoint, tls, None, PROBE, &created.secret).await?;

    let bundle = std::fs::read_to_string(data_dir.join("pki/trust-bundle.pem"))?;
    let fleet = opi_pki::bundle::OperatorBundle::read(&data_dir.join("opictl-admin.toml"))?.fleet;
    let verifier = ManagerVerifier::with_roots(&bundle, &fleet)?;
    let plan = Plan::single(endpoint, verifier, Duration::from_secs(10));
    agent::open(&plan, &creds, None).await
}

/// Sends the arrival time of every event about the probe's condition, with its new status.
async fn forward(
    mut events: tonic::Streaming<Event>,
    arrivals: mpsc::UnboundedSender<(String, Instant)>,
) {
    while let Ok(Some(event)) = events.message().await {
        let about_probe = event.node == PROBE && event.kind == "condition";
        if about_probe && event.subject == CONDITION && event.from != "none" {
            let _ = arrivals.send((event.to, Instant::now()));
        }
    }
}

/// Waits for `watchers` arrivals of a change to `to`; returns the last arrival's time.
async fn wait_all(
    arrived: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    watchers: usize,
    to: &str,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
    let (mut count, mut last) = (0, None);
    while count < watchers {
        let next = tokio::time::timeout_at(deadline, arrived.recv()).await;
        let (status, at) = next
            .map_err(|_| anyhow::anyhow!("{count} of {watchers} watchers saw the change to {to}"))?
            .context("every watch ended")?;
        if status == to {
            count += 1;
            last = Some(at);
        }
    }
    last.context("no watcher")
}
