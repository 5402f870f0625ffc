//! Watching a key prefix from a store revision on, for replicas that follow each other's
//! writes: every change after the revision, in order, or an error saying which were lost.

use opi_proto::etcd::event::EventType;
use opi_proto::etcd::watch_client::WatchClient;
use opi_proto::etcd::watch_request::RequestUnion;
use opi_proto::etcd::{WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

use super::client::{EtcdError, Retry, MAX_RESPONSE_BYTES};
use super::{from_etcd, prefix_end, to_etcd, EtcdStore};
use crate::store::{KeyValue, Revision, StoreError};

/// A change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key was created or written; it carries its new value and revisions.
    Put(KeyValue),
    /// The key was deleted at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The revision of the transaction that deleted it.
        revision: Revision,
    },
}

/// An open watch on a prefix; dropping it ends the watch.
pub struct PrefixWatch<'a> {
    store: &'a EtcdStore,
    prefix: String,
    // Kept open: etcd ends the watch when the request side closes.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
    /// Changes of a fragmented revision received so far: kept here rather than in `next`, so
    /// that a `next` dropped in a `select!` loses nothing.
    partial: Vec<Change>,
}

impl Change {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }
}

impl EtcdStore {
    /// Watches every key starting with `prefix` for changes after store revision `after`.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<PrefixWatch<'_>, StoreError> {
        let key = self.full_key(prefix);
        let create = WatchCreateRequest {
            range_end: prefix_end(&key),
            key,
            start_revision: to_etcd(after + 1),
            // A watch catching up sends many revisions at once: split, they stay under the
            // largest message accepted, and `next` joins them again.
            fragment: true,
            ..WatchCreateRequest::default()
        };
        let subject = format!("a watch on `{prefix}`");
        let (requests, responses) = self
            .client
            .call("Watch", Retry::Always, move |channel| {
                let create = create.clone();
                async move { open_watch(channel, create).await }
            })
            .await
            .map_err(|error| self.read_error(&subject, error))?;
        Ok(PrefixWatch {
            store: self,
            prefix: prefix.into(),
            _requests: requests,
            responses,
            partial: Vec::new(),
        })
    }
}

impl PrefixWatch<'_> {
    /// The next changes, of one or more whole revisions in order; `None` when etcd ended the
    /// stream. A start revision that etcd compacted away is an error naming the oldest one
    /// kept. Cancel-safe: a call dropped before it completes loses no change.
    pub async fn next(&mut self) -> Result<Option<Vec<Change>>, StoreError> {
        let subject = format!("a watch on `{}`", self.prefix);
        loop {
            let response = match self.responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Ok(None),
                Err(status) => {
                    let error = EtcdError::WatchCancelled {
                        reason: status.message().into(),
                        compact_revision: 0,
                    };
                    return Err(self.store.read_error(&subject, error));
                }
            };
            if response.canceled {
                let error = EtcdError::WatchCancelled {
                    reason: cancel_reason(&response),
                    compact_revision: response.compact_revision,
                };
                return Err(self.store.read_error(&subject, error));
            }
            for event in response.events {
                let change = self.change(event)?;
                self.partial.extend(change);
            }
            // A fragment's revisions go on in the next response.
            if !response.fragment && !self.partial.is_empty() {
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
        }
    }

    fn change(&self, event: opi_proto::etcd::Event) -> Result<Option<Change>, StoreError> {
        let Some(kv) = event.kv else {
            return Ok(None);
        };
        let kv = self.store.decode(kv)?;
        Ok(Some(match EventType::try_from(event.r#type) {
            Ok(EventType::Delete) => Change::Delete {
                key: kv.key,
                revision: kv.mod_revision,
            },
            _ => Change::Put(kv),
        }))
    }
}

/// Whether `error` says a watch started at a revision etcd compacted away: what it would have
/// delivered is lost, and the watcher must read the keys again.
pub fn is_compacted(error: &StoreError) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(next) = cause {
        if let Some(EtcdError::WatchCancelled {
            compact_revision, ..
        }) = next.downcast_ref::<EtcdError>()
        {
            return *compact_revision > 0;
        }
        cause = next.source();
    }
    false
}

/// Opens a Watch stream on `channel`, sends `create` and waits until etcd confirms it.
async fn open_watch(
    channel: tonic::transport::Channel,
    create: WatchCreateRequest,
) -> Result<tonic::Response<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>)>, tonic::Status>
{
    let (requests, outgoing) = mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    };
    requests
        .send(create)
        .await
        .map_err(|_| tonic::Status::internal("watch request channel closed"))?;
    let mut responses = WatchClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .watch(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    match responses.message().await? {
        Some(first) if first.created => Ok(tonic::Response::new((requests, responses))),
        Some(first) => Err(tonic::Status::failed_precondition(cancel_reason(&first))),
        None => Err(tonic::Status::unavailable(
            "watch stream closed before it was created",
        )),
    }
}

fn cancel_reason(response: &WatchResponse) -> String {
    match (response.cancel_reason.as_str(), response.compact_revision) {
        ("", 0) => "cancelled by etcd".into(),
        ("", compacted) => format!(
            "revisions up to {} were compacted away",
            from_etcd(compacted)
        ),
        (reason, _) => reason.into(),
    }
}
