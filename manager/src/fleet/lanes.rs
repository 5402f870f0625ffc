//! Enrollments through one bootstrap token, committed together.
//!
//! Every use of a token rewrites the token's record under a compare-and-swap, so enrollments
//! through the same token at once would mostly conflict and retry. Instead, each token has a
//! lane: claims queue in it, and one task at a time commits everything queued in a single
//! transaction that adds all their uses to the token, with each node, answer and audit entry.
//! The compare-and-swap still guards the token against other processes and replicas.
//!
//! Anything unusual (a name or key claimed twice, a conflict on a node's own keys, a token that
//! cannot take every claim, a failed read) sends the claims concerned down the one-at-a-time
//! path, which gives each its own precise answer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::debug;

use super::enroll::{add_enrollment, check_token_usable, EnrollInput, EnrollOutput};
use super::{Fleet, FleetError};
use crate::records::{node_key, token_enrollment_key, token_key, TokenEnrollment, TokenRecord};
use crate::store::{to_json, Txn, TxnOutcome, Versioned, MAX_TXN_OPS};
use crate::tokens::BootstrapToken;

/// Compares and ops one claim adds to its batch's transaction: the node and its answer must be
/// absent (two compares), then the answer, the node and the audit entry are written.
const OPS_PER_CLAIM: usize = 3;
/// Most enrollments committed in one transaction: the token's compare and put, then the
/// claims, within what every backend takes (etcd refuses the whole transaction otherwise).
const MAX_CLAIMS: usize = (MAX_TXN_OPS - 1) / OPS_PER_CLAIM;

/// A use of a token, its certificate already signed, waiting to be committed.
pub(super) struct Claim {
    pub token: BootstrapToken,
    pub answer: TokenEnrollment,
    pub issued: opi_pki::IssuedCert,
    pub input: EnrollInput,
}

/// Each token's queue of claims, while some are waiting or being committed.
#[derive(Default)]
pub(super) struct Lanes {
    lanes: Mutex<HashMap<String, Vec<Waiting>>>,
}

/// A claim and where its answer goes.
struct Waiting {
    claim: Claim,
    done: oneshot::Sender<Result<EnrollOutput, FleetError>>,
}

impl Fleet {
    /// Commits one use of the claim's token, together with the other claims of that token
    /// queued meanwhile, and returns this claim's answer.
    pub(super) async fn claim_token_use(
        self: &Arc<Self>,
        claim: Claim,
    ) -> Result<EnrollOutput, FleetError> {
        let id = claim.token.id().to_owned();
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut lanes = self.lanes.lanes.lock().expect("lane lock poisoned");
            let lead = !lanes.contains_key(&id);
            lanes
                .entry(id.clone())
                .or_default()
                .push(Waiting { claim, done });
            lead
        };
        // The lane runs as a task of its own, so that a caller that goes away does not leave
        // the others waiting.
        if lead {
            tokio::spawn(Arc::clone(self).run_lane(id.clone()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(FleetError::Conflict {
                what: format!("bootstrap token {id}"),
            })
        })
    }

    /// Commits the lane's claims, a batch at a time, until none is left; then removes it.
    async fn run_lane(self: Arc<Self>, id: String) {
        loop {
            let batch = {
                let mut lanes = self.lanes.lanes.lock().expect("lane lock poisoned");
                let Some(queued) = lanes.get_mut(&id) else {
                    return;
                };
                if queued.is_empty() {
                    lanes.remove(&id);
                    return;
                }
                let n = queued.len().min(MAX_CLAIMS);
                queued.drain(..n).collect::<Vec<_>>()
            };
            self.commit_batch(batch).await;
        }
    }

    /// Commits `batch` in one transaction, or as much of it as can be, and answers each claim.
    async fn commit_batch(&self, batch: Vec<Waiting>) {
        let (mut batch, mut alone) = split_repeats(batch);
        for _ in 0..super::CAS_ATTEMPTS {
            if batch.is_empty() {
                break;
            }
            let token = &batch[0].claim.token;
            let Ok(current) = self.load_token(token).await else {
                break;
            };
            if check_token_usable(&current.value).is_err() {
                break;
            }
            let room = (current.value.uses - current.value.used) as usize;
            if batch.len() > room {
                alone.extend(batch.drain(room..));
            }
            let (txn, nodes) = batch_txn(&current, &batch);
            if txn.duplicate_key().is_some() {
                break;
            }
            match self.store.txn(txn).await {
                Ok(TxnOutcome::Committed(revision)) => {
                    for (waiting, node) in batch.drain(..).zip(nodes) {
                        let granted = self.granted(node, revision, &waiting.claim.answer);
                        // A caller that went away is answered from the token's record if
                        // it retries.
                        let _ = waiting.done.send(Ok(granted));
                    }
                }
                Ok(TxnOutcome::Conflict { key }) if key == token_key(&current.value.id) => {
                    let (token, claims) = (&current.value.id, batch.len());
                    debug!(%token, claims, "token changed since it was read; reading it again");
                }
                Ok(TxnOutcome::Conflict { key }) => {
                    let Some(at) = batch.iter().position(|w| owns_key(w, &key)) else {
                        break;
                    };
                    alone.push(batch.remove(at));
                }
                Err(_) => break,
            }
        }
        // What is left, and every claim set aside, is committed one at a time, each getting
        // its own answer or error.
        for waiting in batch.into_iter().chain(alone) {
            let result = self.commit_alone(&waiting.claim).await;
            let _ = waiting.done.send(result);
        }
    }
}

/// Splits off the claims that repeat a node name or a key already in the batch: a
/// transaction writes each key once, and the one-at-a-time path answers them properly (a
/// retry, or a name taken) once the first is committed.
fn split_repeats(batch: Vec<Waiting>) -> (Vec<Waiting>, Vec<Waiting>) {
    let (mut names, mut keys) = (HashSet::new(), HashSet::new());
    batch.into_iter().partition(|waiting| {
        let answer = &waiting.claim.answer;
        let fresh_name = names.insert(answer.node.clone());
        keys.insert(answer.spki_sha256.clone()) && fresh_name
    })
}

/// One transaction for every claim of `batch`, against the token as read; also returns the
/// node records it writes, in batch order.
fn batch_txn(
    token: &Versioned<TokenRecord>,
    batch: &[Waiting],
) -> (Txn, Vec<crate::records::NodeRecord>) {
    let record = &token.value;
    let mut used = record.clone();
    used.used += batch.len() as u32;
    let key = token_key(&record.id);
    let mut txn = Txn::new()
        .when_revision(&key, token.mod_revision)
        .put(&key, to_json(&used));
    let mut nodes = Vec::with_capacity(batch.len());
    for waiting in batch {
        let claim = &waiting.claim;
        let (next, node) = add_enrollment(txn, record, &claim.answer, &claim.issued, &claim.input);
        txn = next;
        nodes.push(node);
    }
    (txn, nodes)
}

/// Whether `key` is one of the keys only this claim writes.
fn owns_key(waiting: &Waiting, key: &str) -> bool {
    let answer = &waiting.claim.answer;
    let id = waiting.claim.token.id();
    key == node_key(&answer.node) || key == token_enrollment_key(id, &answer.spki_sha256)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use time::OffsetDateTime;
    use tokio::sync::oneshot;

    use super::{batch_txn, Claim, Waiting, MAX_CLAIMS};
    use crate::fleet::enroll::EnrollInput;
    use crate::records::{Facts, TokenEnrollment, TokenRecord};
    use crate::store::Versioned;
    use crate::tokens::BootstrapToken;

    fn waiting(token: &BootstrapToken, i: usize) -> Waiting {
        let node = format!("node-{i}");
        let issued = opi_pki::IssuedCert {
            cert_pem: String::new(),
            chain_pem: String::new(),
            serial: format!("{i:x}"),
            not_after: OffsetDateTime::now_utc(),
        };
        let claim = Claim {
            token: token.clone(),
            answer: TokenEnrollment {
                spki_sha256: format!("{i:064x}"),
                node: node.clone(),
                cert_chain_pem: String::new(),
                at: OffsetDateTime::now_utc(),
            },
            issued,
            input: EnrollInput {
                token: token.to_string(),
                csr_der: Vec::new(),
                name: node,
                reenroll: false,
                facts: Facts::default(),
                remote: "127.0.0.1:1".parse().expect("address"),
            },
        };
        Waiting {
            claim,
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn a_full_batch_fits_in_one_transaction_every_backend_takes() {
        let token = BootstrapToken::generate();
        let record = TokenRecord {
            id: token.id().into(),
            secret_sha256: String::new(),
            pool: "workers".into(),
            labels: BTreeMap::new(),
            uses: 1000,
            used: 0,
            created_at: OffsetDateTime::now_utc(),
            expires_at: OffsetDateTime::now_utc(),
            revoked: false,
            created_by: "test".into(),
            description: String::new(),
            enrollments: Vec::new(),
        };
        let versioned = Versioned {
            value: record,
            mod_revision: 1,
            create_revision: 1,
        };

        let full: Vec<Waiting> = (0..MAX_CLAIMS).map(|i| waiting(&token, i)).collect();
        let (txn, nodes) = batch_txn(&versioned, &full);
        assert_eq!(nodes.len(), MAX_CLAIMS);
        assert!(
            txn.within_limit(),
            "{} compares, {} ops",
            txn.compares.len(),
            txn.ops.len()
        );

        let over: Vec<Waiting> = (0..=MAX_CLAIMS).map(|i| waiting(&token, i)).collect();
        let (txn, _) = batch_txn(&versioned, &over);
        assert!(
            !txn.within_limit(),
            "one more claim must not fit: MAX_CLAIMS is too small"
        );
    }
}
