//! Fencing of the leader's writes by its leader key's revision, on a real etcd: a replica whose
//! leader pass stalled past its lease, while another replica took the lead, writes nothing
//! and stops leading; the new leader's writes and everybody's unfenced writes go on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opi_manager::replica::{as_leader, FencedStore, Lead, Replica};
use opi_manager::store::{EtcdStore, Store, StoreError, Txn, TxnOutcome};
use opi_tests::etcd::Etcd;

/// The replicas' lease.
const TTL: Duration = Duration::from_secs(2);
/// Bound of every wait for a replica to lead.
const LEAD_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_writes_nothing_once_another_replica_leads() {
    let etcd = Etcd::single();
    let url = etcd.url();
    let plain = EtcdStore::open(&url).expect("etcd store");

    let a = Replica::on_etcd("a", &url, TTL).expect("replica a");
    let campaign = a.run().expect("a campaigns on etcd");
    let lead_a = lead_of(&a).await;
    let store_a = fenced(&url, &a);
    let committed = as_leader(lead_a, store_a.txn(put("nodes/before"))).await;
    assert!(
        matches!(committed, Ok(TxnOutcome::Committed(_))),
        "a leads: {committed:?}"
    );

    // a stalls: no more keep-alives, so its lease and leader key expire and b takes the lead.
    campaign.abort();
    let b = Replica::on_etcd("b", &url, TTL).expect("replica b");
    let _campaign_b = b.run().expect("b campaigns on etcd");
    let lead_b = lead_of(&b).await;
    assert_ne!(lead_a, lead_b, "b's leader key is a new one");

    // The pass a started before it stalled still carries a's old lead: refused, nothing written.
    let refused = as_leader(lead_a, store_a.txn(put("nodes/after"))).await;
    match &refused {
        Err(StoreError::Fenced {
            replica, revision, ..
        }) => {
            assert_eq!(replica, "a");
            assert_eq!(Some(*revision), lead_a.fence);
        }
        other => panic!("a stale leader's write must be fenced, got {other:?}"),
    }
    let message = refused.expect_err("fenced").to_string();
    assert!(message.contains("no longer leads"), "{message}");
    assert_eq!(plain.get("nodes/after").await.expect("read"), None);
    assert!(a.lead().is_none(), "a stepped down");

    // The new leader's fenced writes commit, and writes outside a leader pass (operator calls,
    // sessions) are not fenced at any replica.
    let store_b = fenced(&url, &b);
    let committed = as_leader(lead_b, store_b.txn(put("nodes/after"))).await;
    assert!(
        matches!(committed, Ok(TxnOutcome::Committed(_))),
        "{committed:?}"
    );
    let unfenced = store_a.txn(put("nodes/operator")).await;
    assert!(
        matches!(unfenced, Ok(TxnOutcome::Committed(_))),
        "{unfenced:?}"
    );
}

fn put(key: &str) -> Txn {
    Txn::new().put(key, b"{}".to_vec())
}

fn fenced(url: &str, replica: &Arc<Replica>) -> Arc<dyn Store> {
    let store = Arc::new(EtcdStore::open(url).expect("etcd store"));
    FencedStore::wrap(store, replica.clone())
}

/// Waits until `replica` leads, and returns its lead.
async fn lead_of(replica: &Replica) -> Lead {
    let started = Instant::now();
    loop {
        if let Some(lead) = replica.lead() {
            eprintln!("{} leads after {:?}", replica.name(), started.elapsed());
            return lead;
        }
        assert!(
            started.elapsed() < LEAD_WITHIN,
            "{} did not lead within {LEAD_WITHIN:?}",
            replica.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
