//! The etcd store backend against a real etcd: the conformance suite on one member, on three
//! and over client TLS; failover when a member dies; clear errors when none answers; prefixes
//! that keep two stores apart in one etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opi_manager::store::{conformance, EtcdStore, Store, StoreError, Txn, TxnOutcome};
use opi_tests::etcd::{Etcd, TlsFiles};

fn open(url: &str) -> Arc<dyn Store> {
    Arc::new(EtcdStore::open(url).unwrap_or_else(|e| panic!("open {url}: {e}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_passes_conformance_on_one_member() {
    let etcd = Etcd::single();
    let started = Instant::now();
    conformance::run_all(open(&etcd.url())).await;
    eprintln!("conformance on one etcd member: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_passes_conformance_on_three_members() {
    let etcd = Etcd::cluster();
    let started = Instant::now();
    conformance::run_all(open(&etcd.url())).await;
    eprintln!("conformance on three etcd members: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_passes_conformance_over_client_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::create(dir.path());
    let etcd = Etcd::single_tls(&tls);
    let url = format!(
        "etcds://{}?ca={}&cert={}&key={}",
        etcd.endpoints(),
        tls.ca.display(),
        tls.client.0.display(),
        tls.client.1.display()
    );
    conformance::run_all(open(&url)).await;

    // Without a client certificate, etcd's --client-cert-auth refuses the handshake.
    let anonymous = open(&format!(
        "etcds://{}?ca={}",
        etcd.endpoints(),
        tls.ca.display()
    ));
    let error = anonymous.get("x").await.expect_err("no client certificate");
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
    let chain = chain(&error);
    assert!(chain.contains(&etcd.endpoints()), "{chain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_fails_over_to_the_next_member_when_one_dies() {
    let mut etcd = Etcd::cluster();
    let store = open(&etcd.url());
    let written = store
        .txn(Txn::new().put("failover/a", b"1".to_vec()))
        .await
        .expect("write through the first member");

    etcd.kill(0);
    let started = Instant::now();
    let value = store.get("failover/a").await.expect("read after failover");
    assert_eq!(value.map(|kv| kv.value), Some(b"1".to_vec()));
    let outcome = store
        .txn(
            Txn::new()
                .when_absent("failover/b")
                .put("failover/b", b"2".to_vec()),
        )
        .await
        .expect("write after failover");
    assert!(
        matches!(outcome, TxnOutcome::Committed(r) if r > match written {
            TxnOutcome::Committed(w) => w,
            TxnOutcome::Conflict { .. } => unreachable!("a plain put commits"),
        }),
        "{outcome:?}"
    );
    eprintln!(
        "read and write after killing member 0: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_names_every_endpoint_when_none_answers() {
    let closed = [free_port(), free_port()];
    let url = format!("etcd://{},{}?timeout=1s", closed[0], closed[1]);
    let store = open(&url);

    let started = Instant::now();
    let error = store.revision().await.expect_err("nothing listens");
    let elapsed = started.elapsed();
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
    let chain = chain(&error);
    for endpoint in &closed {
        assert!(
            chain.contains(endpoint.as_str()),
            "{endpoint} missing: {chain}"
        );
    }
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");

    let write = Txn::new().put("k", b"v".to_vec());
    let error = store.txn(write).await.expect_err("nothing listens");
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_times_out_on_a_member_that_never_answers() {
    // A listener that accepts connections and never speaks: the call must not hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "etcd://{}?timeout=500ms",
        silent.local_addr().expect("addr")
    );
    let store = open(&url);

    let started = Instant::now();
    let error = store.get("k").await.expect_err("no answer");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let chain = chain(&error);
    assert!(chain.contains("500ms"), "{chain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_under_different_prefixes_share_one_etcd_without_seeing_each_other() {
    let etcd = Etcd::single();
    let first = open(&format!("{}?prefix=/fleet-a/", etcd.url()));
    let second = open(&format!("{}?prefix=/fleet-b/", etcd.url()));

    first
        .txn(Txn::new().put("nodes/n1", b"a".to_vec()))
        .await
        .expect("write a");
    second
        .txn(Txn::new().put("nodes/n2", b"b".to_vec()))
        .await
        .expect("write b");

    let keys = |kvs: Vec<opi_manager::store::KeyValue>| -> Vec<String> {
        kvs.into_iter().map(|kv| kv.key).collect()
    };
    assert_eq!(keys(first.list("").await.expect("list a")), ["nodes/n1"]);
    assert_eq!(
        keys(second.list("nodes/").await.expect("list b")),
        ["nodes/n2"]
    );
    assert_eq!(second.get("nodes/n1").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_more_keys_than_one_range_returns() {
    let etcd = Etcd::single();
    let store = open(&etcd.url());
    let count = 2_345;
    for batch in (0..count).collect::<Vec<_>>().chunks(100) {
        let txn = batch.iter().fold(Txn::new(), |txn, i| {
            txn.put(format!("many/{i:05}"), i.to_string().into_bytes())
        });
        store.txn(txn).await.expect("write batch");
    }

    let started = Instant::now();
    let all = store.list("many/").await.expect("list");
    let listed = started.elapsed();
    assert_eq!(all.len(), count);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "in key order");
    let last = store.list_last("many/", 3).await.expect("list_last");
    let last: Vec<&str> = last.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(last, ["many/02342", "many/02343", "many/02344"]);
    let page = store
        .list_page("many/", Some("many/01000"), 2)
        .await
        .expect("list_page");
    let page: Vec<&str> = page.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(page, ["many/01001", "many/01002"]);
    eprintln!("listed {count} keys in {listed:?}");
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}
