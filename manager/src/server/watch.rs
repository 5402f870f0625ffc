//! The Watch call: events matching a filter, resumable from a revision without gaps.

use std::pin::Pin;
use std::sync::Arc;

use opi_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::convert::{event_to_proto, severity_from_proto};
use crate::events::{WatchError, WatchFilter};
use crate::fleet::{Fleet, FleetError};

/// Event kinds a watcher may ask for.
pub const KINDS: [&str; 9] = [
    "connectivity",
    "health",
    "condition",
    "flapping",
    "maintenance",
    "lifecycle",
    "config",
    "rollout",
    crate::compliance::EVENT_KIND,
];
/// Events buffered towards one watcher.
const WATCH_QUEUE: usize = 256;
/// What a watcher is told when the manager stops; it resumes from its last revision.
const SHUTTING_DOWN: &str = "the manager is shutting down; resume from the last revision received";
/// Most events a watch may replay with `replay_last`.
const MAX_REPLAY: u32 = 10_000;

/// The stream a watcher receives.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Starts a watch: checks the request, then follows the log in a task of its own.
pub async fn start(fleet: Arc<Fleet>, request: pb::WatchRequest) -> Result<EventStream, Status> {
    let filter = filter(&request)?;
    let replay = u64::from(request.replay_last.min(MAX_REPLAY));
    let cursor = fleet
        .events()
        .watch_start(request.since_revision, replay)
        .await
        .map_err(|e| match e {
            WatchError::Compacted { .. } => Status::failed_precondition(e.to_string()),
            WatchError::Store(store) => Status::from(FleetError::Store(store)),
        })?;
    let (sink, mut events) = mpsc::channel(WATCH_QUEUE);
    let (out, stream) = mpsc::channel(WATCH_QUEUE);
    let follower = fleet.clone();
    tokio::spawn(async move { follower.events().follow(cursor, filter, sink).await });
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                item = events.recv() => match item {
                    Some(Ok(event)) => Ok(event_to_proto(&event)),
                    Some(Err(error)) => Err(Status::from(FleetError::Store(error))),
                    None => return,
                },
                () = fleet.stopping() => Err(Status::unavailable(SHUTTING_DOWN)),
            };
            let last = item.is_err();
            if out.send(item).await.is_err() || last {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(stream)))
}

fn filter(request: &pb::WatchRequest) -> Result<WatchFilter, Status> {
    let unknown: Vec<&String> = request
        .kinds
        .iter()
        .filter(|k| !KINDS.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        let message = format!(
            "unknown event kinds {unknown:?}; known kinds: {}",
            KINDS.join(", ")
        );
        return Err(Status::invalid_argument(message));
    }
    Ok(WatchFilter {
        pools: request.pools.clone(),
        nodes: request.nodes.clone(),
        kinds: request.kinds.clone(),
        min_severity: severity_from_proto(request.min_severity()),
    })
}
