//! etcd leases: grant, keep alive, revoke, and transactions whose puts are bound to a lease, so
//! that keys (a replica's sessions, a leader's claim) vanish when their holder stops renewing.

use std::time::Duration;

use opi_proto::etcd::lease_client::LeaseClient;
use opi_proto::etcd::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};

use super::client::{EtcdError, Retry};
use super::EtcdStore;
use crate::store::{StoreError, Txn, TxnOutcome};

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// etcd's ID of the lease.
    pub id: i64,
    /// How long it lives without a keep-alive, as etcd granted it.
    pub ttl: Duration,
}

impl EtcdStore {
    /// Grants a lease of `ttl` (whole seconds, at least one).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let request = LeaseGrantRequest {
            ttl: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            id: 0,
        };
        let granted = self
            .client
            .call("LeaseGrant", Retry::IfUnsent, move |channel| async move {
                LeaseClient::new(channel).lease_grant(request).await
            })
            .await
            .map_err(|error| self.lease_error("a new lease", error))?;
        if !granted.error.is_empty() {
            let refused = EtcdError::Lease {
                id: granted.id,
                problem: granted.error,
            };
            return Err(self.lease_error("a new lease", refused));
        }
        Ok(Lease {
            id: granted.id,
            ttl: Duration::from_secs(u64::try_from(granted.ttl).unwrap_or(0)),
        })
    }

    /// Renews `lease` for its TTL again; returns the TTL granted. An expired or revoked lease
    /// is an error: its keys are gone, and whoever held it must start over.
    pub async fn keep_alive(&self, lease: i64) -> Result<Duration, StoreError> {
        let renewed = self
            .client
            .call("LeaseKeepAlive", Retry::Always, move |channel| async move {
                let requests = tokio_stream::once(LeaseKeepAliveRequest { id: lease });
                let mut answers = LeaseClient::new(channel)
                    .lease_keep_alive(requests)
                    .await?
                    .into_inner();
                match answers.message().await? {
                    Some(answer) => Ok(tonic::Response::new(answer)),
                    None => Err(tonic::Status::unavailable("keep-alive stream closed")),
                }
            })
            .await
            .map_err(|error| self.lease_error(&format!("lease {lease:x}"), error))?;
        if renewed.ttl <= 0 {
            let gone = EtcdError::Lease {
                id: lease,
                problem: "expired or revoked".into(),
            };
            return Err(self.lease_error(&format!("lease {lease:x}"), gone));
        }
        Ok(Duration::from_secs(u64::try_from(renewed.ttl).unwrap_or(0)))
    }

    /// Revokes `lease`, deleting every key put with it.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.client
            .call("LeaseRevoke", Retry::Always, move |channel| async move {
                LeaseClient::new(channel)
                    .lease_revoke(LeaseRevokeRequest { id: lease })
                    .await
            })
            .await
            .map_err(|error| self.lease_error(&format!("lease {lease:x}"), error))?;
        Ok(())
    }

    /// [`crate::store::Store::txn`] with every put bound to `lease`.
    pub async fn txn_with_lease(&self, txn: Txn, lease: i64) -> Result<TxnOutcome, StoreError> {
        self.commit(txn, lease).await
    }

    fn lease_error(&self, subject: &str, error: EtcdError) -> StoreError {
        self.read_error(subject, error)
    }
}
