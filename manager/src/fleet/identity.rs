//! A node's identity over its life: renewal of a certificate that expired while the node was
//! offline, forced rotation, and the operator's permission to re-enroll under the same name.

use std::time::Duration;

use opi_pki::tls::PeerCert;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{ManagerMessage, RenewNow, TrustBundle};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{Fleet, FleetError, NodeView};
use crate::audit;
use crate::records::{rfc3339, NodeState, ReenrollGrant};

/// How long `opictl node allow-reenroll` lets a node re-enroll unless told otherwise.
pub const DEFAULT_REENROLL_TTL: Duration = Duration::from_secs(3600);
/// Longest re-enrollment permission.
pub const MAX_REENROLL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which nodes `opictl node rotate` asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotateSelection {
    Names(Vec<String>),
    Pool(String),
    All,
}

/// What a rotation request reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Asked over their live session.
    pub asked: Vec<String>,
    /// Offline: asked when they next open a session.
    pub pending: Vec<String>,
}

impl RotateSelection {
    /// The selection a request makes, refusing none or several kinds at once.
    pub fn new(names: Vec<String>, pool: &str, all: bool) -> Result<Self, FleetError> {
        let given =
            usize::from(!names.is_empty()) + usize::from(!pool.is_empty()) + usize::from(all);
        if given != 1 {
            return Err(FleetError::RotateSelection(
                "name the nodes to rotate: NAME…, --pool POOL or --all, exactly one of them".into(),
            ));
        }
        Ok(if all {
            RotateSelection::All
        } else if !pool.is_empty() {
            RotateSelection::Pool(pool.to_string())
        } else {
            RotateSelection::Names(names)
        })
    }
}

impl Fleet {
    /// Checks a node certificate that has expired (its chain verified as of its expiry): the
    /// renewal call accepts it within the renewal window, unless the node was revoked or the
    /// certificate superseded.
    pub fn check_expired_node_cert(&self, cert: &PeerCert) -> Result<(), FleetError> {
        self.check_node_cert(cert)?;
        let now = OffsetDateTime::now_utc();
        let window = self.settings.expired_renewal_window;
        if now - cert.not_after > window {
            let name = &cert.identity.name;
            warn!(node = %name, expired_at = %rfc3339(cert.not_after), window = ?window, "renewal of an expired certificate refused: past the window");
            return Err(FleetError::ExpiredPastWindow {
                name: name.clone(),
                expired_at: cert.not_after,
                window,
            });
        }
        info!(node = %cert.identity.name, expired_at = %rfc3339(cert.not_after), "renewing a certificate that expired within the window");
        Ok(())
    }

    /// Asks the selected nodes to renew now with a fresh key; the request is stored, so that
    /// offline nodes are asked at their next session, and it ends with their renewal.
    pub async fn rotate(
        &self,
        selection: &RotateSelection,
        reason: &str,
        actor: &str,
        from: &str,
    ) -> Result<Rotation, FleetError> {
        let names = self.select(selection)?;
        let reason = if reason.is_empty() {
            format!("rotation asked by {actor}")
        } else {
            reason.to_string()
        };
        let now = OffsetDateTime::now_utc();
        let mut rotation = Rotation::default();
        for name in names {
            let entry = audit::Entry::ok(actor, "node.rotate", &name, from).detail(reason.clone());
            self.update_node(&name, Some(entry), |record, _| {
                if record.state == NodeState::Revoked {
                    return Ok(());
                }
                record.rotation_requested = Some(now);
                Ok(())
            })
            .await?;
            if self.ask_renewal(&name, &reason) {
                rotation.asked.push(name);
            } else {
                rotation.pending.push(name);
            }
        }
        info!(
            actor,
            asked = rotation.asked.len(),
            pending = rotation.pending.len(),
            "node certificate rotation asked"
        );
        Ok(rotation)
    }

    /// Asks a node that just opened its session to renew, if a rotation is pending for it.
    pub fn ask_pending_rotation(&self, name: &str) {
        let pending = self
            .node(name)
            .is_ok_and(|view| view.record.rotation_requested.is_some());
        if pending && self.ask_renewal(name, "a rotation was asked while this node was offline") {
            info!(node = %name, "pending certificate rotation asked");
        }
    }

    /// Sends the trust bundle in force to a node whose agent stored another one.
    pub fn send_trust_bundle_if_stale(&self, name: &str) {
        let trust = self.trust();
        let stale = self
            .node(name)
            .is_ok_and(|view| view.record.trust_bundle_digest != trust.bundle_digest);
        if stale {
            let message = ManagerMessage {
                body: Some(ManagerBody::TrustBundle(TrustBundle {
                    pem: trust.bundle_pem.clone(),
                    digest: trust.bundle_digest.clone(),
                })),
            };
            if self.send(name, message) {
                info!(node = %name, digest = %trust.bundle_digest, "trust bundle sent");
            }
        }
    }

    /// Records that a node's agent stored the trust bundle of `digest`.
    pub async fn trust_bundle_stored(
        &self,
        session: &super::Session,
        digest: String,
    ) -> Result<(), FleetError> {
        self.update_node(&session.node, None, |record, _| {
            record.trust_bundle_digest = digest.clone();
            Ok(())
        })
        .await?;
        info!(node = %session.node, digest = %digest, "node stored the trust bundle");
        Ok(())
    }

    /// The active nodes whose agent has not stored the trust bundle in force.
    pub fn nodes_without_trust_bundle(&self) -> Vec<String> {
        let digest = self.trust().bundle_digest.clone();
        self.nodes(None)
            .into_iter()
            .filter(|view| view.record.state == NodeState::Active)
            .filter(|view| view.record.trust_bundle_digest != digest)
            .map(|view| view.record.name)
            .collect()
    }

    /// Sends the trust bundle in force to every connected node that lacks it.
    pub fn distribute_trust_bundle(&self) {
        for name in self.nodes_without_trust_bundle() {
            self.send_trust_bundle_if_stale(&name);
        }
    }

    /// Sends a renew-now to the node's session, if it has one.
    pub(super) fn ask_renewal(&self, name: &str, reason: &str) -> bool {
        let message = ManagerMessage {
            body: Some(ManagerBody::RenewNow(RenewNow {
                reason: reason.to_string(),
            })),
        };
        self.send(name, message)
    }

    /// Lets a node re-enroll once under its name, within `ttl`.
    pub async fn allow_reenroll(
        &self,
        name: &str,
        ttl: Duration,
        actor: &str,
        from: &str,
    ) -> Result<NodeView, FleetError> {
        let ttl = if ttl.is_zero() {
            DEFAULT_REENROLL_TTL
        } else {
            ttl
        };
        if ttl > MAX_REENROLL_TTL {
            return Err(FleetError::InvalidArgument(format!(
                "--ttl {} is too long: a re-enrollment permission lasts at most {}",
                humantime::format_duration(ttl),
                humantime::format_duration(MAX_REENROLL_TTL)
            )));
        }
        let until = OffsetDateTime::now_utc() + ttl;
        let detail = format!("until {}", rfc3339(until));
        let entry = audit::Entry::ok(actor, "node.allow-reenroll", name, from).detail(detail);
        self.update_node(name, Some(entry), |record, _| {
            if record.state == NodeState::Revoked {
                return Err(FleetError::NodeRevoked {
                    name: name.to_string(),
                    reason: record.revoked_reason.clone().unwrap_or_default(),
                });
            }
            record.reenroll = Some(ReenrollGrant {
                by: actor.to_string(),
                until,
            });
            Ok(())
        })
        .await?;
        info!(node = %name, actor, until = %rfc3339(until), "node allowed to re-enroll");
        self.node(name)
    }

    fn select(&self, selection: &RotateSelection) -> Result<Vec<String>, FleetError> {
        let views = match selection {
            RotateSelection::Names(names) => {
                let mut views = Vec::new();
                for name in names {
                    views.push(self.node(name)?);
                }
                views
            }
            RotateSelection::Pool(pool) => self.nodes(Some(pool)),
            RotateSelection::All => self.nodes(None),
        };
        Ok(views
            .into_iter()
            .filter(|view| view.record.state == NodeState::Active)
            .map(|view| view.record.name)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_names_exactly_one_kind_of_selection() {
        assert_eq!(
            RotateSelection::new(vec!["a".into()], "", false).unwrap(),
            RotateSelection::Names(vec!["a".into()])
        );
        assert_eq!(
            RotateSelection::new(vec![], "workers", false).unwrap(),
            RotateSelection::Pool("workers".into())
        );
        assert_eq!(
            RotateSelection::new(vec![], "", true).unwrap(),
            RotateSelection::All
        );
        for (names, pool, all) in [(vec![], "", false), (vec!["a".to_string()], "p", false)] {
            let error = RotateSelection::new(names, pool, all).unwrap_err();
            assert!(error.to_string().contains("exactly one"), "{error}");
        }
    }
}
