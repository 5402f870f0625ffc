//! Following the event log: catch up from the store, then follow live events, and go back to
//! the store whenever the live feed skipped something. A watcher never sees a gap or a
//! duplicate, across reconnects too, since it resumes from the last revision it received.

use tokio::sync::{broadcast, mpsc};

use super::EventLog;
use crate::records::{EventRecord, Severity};
use crate::store::StoreError;

/// Where a watch sends its events; a store failure ends it.
pub type Sink = mpsc::Sender<Result<EventRecord, StoreError>>;

/// Events read from the store per page while catching up.
const CATCH_UP_PAGE: usize = 500;

/// Which events a watcher wants; empty lists mean "all".
#[derive(Clone, Debug, Default)]
pub struct WatchFilter {
    pub pools: Vec<String>,
    pub nodes: Vec<String>,
    pub kinds: Vec<String>,
    pub min_severity: Severity,
}

/// Why a watch cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("revision {asked} is older than the oldest event kept ({oldest}): the events between were pruned; resume with --since {} to continue from the oldest kept, knowing some were lost", oldest - 1)]
    Compacted { asked: u64, oldest: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WatchFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &EventRecord) -> bool {
        let has = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        has(&self.pools, &event.pool)
            && has(&self.nodes, &event.node)
            && has(&self.kinds, &event.kind)
            && (self.min_severity == Severity::None || event.severity >= self.min_severity)
    }
}

impl EventLog {
    /// The revision a watch starts after: `since` if still kept, or the current revision
    /// minus `replay_last` when `since` is 0.
    pub async fn watch_start(&self, since: u64, replay_last: u64) -> Result<u64, WatchError> {
        if since == 0 {
            return Ok(self.last_revision().saturating_sub(replay_last));
        }
        if let Some(oldest) = self.oldest_revision().await? {
            if since + 1 < oldest {
                return Err(WatchError::Compacted {
                    asked: since,
                    oldest,
                });
            }
        }
        Ok(since)
    }

    /// Sends every event after `cursor` that matches `filter` to `sink`, in order, until the
    /// sink is closed; a store failure is sent as the last item.
    pub async fn follow(&self, cursor: u64, filter: WatchFilter, sink: Sink) {
        if let Err(error) = self.follow_from(cursor, &filter, &sink).await {
            let _ = sink.send(Err(error)).await;
        }
    }

    async fn follow_from(
        &self,
        mut cursor: u64,
        filter: &WatchFilter,
        sink: &Sink,
    ) -> Result<(), StoreError> {
        let mut live = self.subscribe();
        loop {
            cursor = match self.catch_up(cursor, filter, sink).await? {
                Some(cursor) => cursor,
                None => return Ok(()),
            };
            match follow_live(&mut live, cursor, filter, sink).await {
                Live::Behind(at) => cursor = at,
                Live::Done => return Ok(()),
            }
        }
    }

    /// Sends stored events after `cursor`; returns the new cursor, or None if the sink closed.
    async fn catch_up(
        &self,
        mut cursor: u64,
        filter: &WatchFilter,
        sink: &Sink,
    ) -> Result<Option<u64>, StoreError> {
        loop {
            let page = self.read_after(cursor, CATCH_UP_PAGE).await?;
            if page.is_empty() {
                return Ok(Some(cursor));
            }
            for event in page {
                cursor = event.revision;
                if filter.matches(&event) && sink.send(Ok(event)).await.is_err() {
                    return Ok(None);
                }
            }
        }
    }
}

enum Live {
    /// The live feed skipped events after this revision: catch up from the store.
    Behind(u64),
    /// The sink or the log closed.
    Done,
}

async fn follow_live(
    live: &mut broadcast::Receiver<EventRecord>,
    mut cursor: u64,
    filter: &WatchFilter,
    sink: &Sink,
) -> Live {
    loop {
        let event = tokio::select! {
            received = live.recv() => received,
            () = sink.closed() => return Live::Done,
        };
        match event {
            Ok(event) if event.revision <= cursor => continue,
            Ok(event) if event.revision > cursor + 1 => return Live::Behind(cursor),
            Ok(event) => {
                cursor = event.revision;
                if filter.matches(&event) && sink.send(Ok(event)).await.is_err() {
                    return Live::Done;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => return Live::Behind(cursor),
            Err(broadcast::error::RecvError::Closed) => return Live::Done,
        }
    }
}
