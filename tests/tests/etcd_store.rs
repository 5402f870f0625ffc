//! The etcd store backend against a real etcd: the conformance suite on one member, on three
//! and over client TLS; failover when a member dies; clear errors when none answers; prefixes
//! that keep two stores apart in one etcd; leases and prefix watches for the replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opi_manager::store::etcd::Change;
use opi_manager::store::{conformance, EtcdStore, Store, StoreError, Txn, TxnOutcome};
use opi_tests::etcd::{Etcd, TlsFiles};
use opi_tests::free_port;

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
async fn a_write_as_its_member_dies_commits_elsewhere_or_is_reported_uncertain() {
    let mut etcd = Etcd::cluster();
    let store = open(&format!("{}?timeout=2s", etcd.url()));
    committed(store.txn(Txn::new().put("dead/a", b"1".to_vec())).await);

    // Most often the write finds member 0's connection refused and commits on member 1. If it
    // was on its way when member 0 died (broken pipe), or member 1 handed it to member 0 as
    // the leader before noticing its death (etcd times it out), it may or may not have been
    // applied: it is reported so, never sent twice, and the next write goes elsewhere.
    etcd.kill(0);
    let started = Instant::now();
    let txn = Txn::new().put("dead/b", b"2".to_vec());
    match store.txn(txn).await {
        Ok(TxnOutcome::Committed(_)) => {
            eprintln!("committed {:?} after the kill", started.elapsed())
        }
        Ok(conflict) => panic!("no compare, no conflict: {conflict:?}"),
        Err(error) => {
            let chain = chain(&error);
            assert!(chain.contains("it may have been applied"), "{chain}");
            // Either member 0 broke the write it had taken, or member 1 took it and timed out.
            let named =
                [0, 1].map(|i| format!("etcd endpoint {} did not answer", etcd.members[i].client));
            assert!(
                named.iter().any(|n| chain.contains(n)),
                "the member that had the write is named: {chain}"
            );
            eprintln!("uncertain {:?} after the kill: {chain}", started.elapsed());
        }
    }

    let txn = Txn::new()
        .when_absent("dead/c")
        .put("dead/c", b"3".to_vec());
    committed(store.txn(txn).await);
    eprintln!(
        "next write committed {:?} after the kill",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_read_back_and_reported_committed() {
    let etcd = Etcd::single();
    let member = etcd.members[0].client.clone();
    let proxy = MutingProxy::start(&member);
    let store = open(&format!("etcd://{},{member}?timeout=1s", proxy.addr));
    committed(store.txn(Txn::new().put("lost/warm", vec![])).await);

    // etcd applies the write; its answer never comes back through the proxy.
    proxy.mute();
    let txn = Txn::new()
        .when_absent("lost/k")
        .put("lost/k", b"v".to_vec());
    let revision = committed(store.txn(txn).await);
    let stored = store.get("lost/k").await.expect("get").expect("written");
    assert_eq!(
        (stored.value, stored.mod_revision),
        (b"v".to_vec(), revision)
    );

    // One that etcd refused (its compare failed) cannot be shown applied: it stays uncertain.
    let proxy = MutingProxy::start(&member);
    let store = open(&format!("etcd://{},{member}?timeout=1s", proxy.addr));
    committed(store.txn(Txn::new().put("lost/warm", vec![1])).await);
    proxy.mute();
    let txn = Txn::new()
        .when_absent("lost/k")
        .put("lost/k", b"other".to_vec());
    let error = store.txn(txn).await.expect_err("answer lost, not applied");
    assert!(
        chain(&error).contains("it may have been applied"),
        "{}",
        chain(&error)
    );
    assert_eq!(
        store.get("lost/k").await.expect("get").map(|kv| kv.value),
        Some(b"v".to_vec())
    );
}

/// A TCP proxy that relays both ways until muted, then drops what the server sends while the
/// client's bytes still reach it: answers lost on their way back.
struct MutingProxy {
    addr: String,
    muted: Arc<AtomicBool>,
}

impl MutingProxy {
    fn start(target: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let muted = Arc::new(AtomicBool::new(false));
        let (target, flag) = (target.to_owned(), muted.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let server = std::net::TcpStream::connect(&target).expect("proxy connects");
                let (mut up_from, mut up_to) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || std::io::copy(&mut up_from, &mut up_to));
                let (mut down_from, mut down_to, flag) = (server, client, flag.clone());
                std::thread::spawn(move || relay_unless_muted(&mut down_from, &mut down_to, &flag));
            }
        });
        Self { addr, muted }
    }

    fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }
}

fn relay_unless_muted(
    from: &mut std::net::TcpStream,
    to: &mut std::net::TcpStream,
    muted: &AtomicBool,
) {
    use std::io::{Read, Write};
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer) {
        if read == 0 {
            return;
        }
        if !muted.load(Ordering::SeqCst) && to.write_all(&buffer[..read]).is_err() {
            return;
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_put_with_a_lease_live_while_it_is_kept_alive_and_go_with_it() {
    let etcd = Etcd::single();
    let store = EtcdStore::open(&etcd.url()).expect("open");
    let lease = store
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant");
    assert_eq!(lease.ttl, Duration::from_secs(2));
    let txn = Txn::new()
        .when_absent("sessions/replica-a")
        .put("sessions/replica-a", b"n1".to_vec());
    let outcome = store
        .txn_with_lease(txn, lease.id)
        .await
        .expect("put with lease");
    assert!(matches!(outcome, TxnOutcome::Committed(_)), "{outcome:?}");

    // Kept alive past its TTL, the key stays.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let ttl = store.keep_alive(lease.id).await.expect("keep alive");
        assert_eq!(ttl, Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(store
        .get("sessions/replica-a")
        .await
        .expect("get")
        .is_some());

    // Left alone, it expires with its key, and keeping it alive then says so.
    let started = Instant::now();
    while store
        .get("sessions/replica-a")
        .await
        .expect("get")
        .is_some()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lease did not expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "leased key gone {:?} after the last keep-alive",
        started.elapsed()
    );
    let error = store.keep_alive(lease.id).await.expect_err("expired");
    assert!(
        chain(&error).contains("expired or revoked"),
        "{}",
        chain(&error)
    );

    // Revoking deletes at once.
    let lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    let txn = Txn::new().put("sessions/replica-b", b"n2".to_vec());
    store.txn_with_lease(txn, lease.id).await.expect("put");
    store.revoke_lease(lease.id).await.expect("revoke");
    assert_eq!(store.get("sessions/replica-b").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_watch_resumes_from_a_revision_with_every_change_in_order() {
    let etcd = Etcd::single();
    let store = EtcdStore::open(&etcd.url()).expect("open");
    let put = |key: &str, value: &str| Txn::new().put(key, value.as_bytes().to_vec());
    let first = committed(store.txn(put("events/1", "a")).await);
    let second = committed(store.txn(put("events/2", "b")).await);
    committed(store.txn(put("other/x", "not watched")).await);
    let third = committed(store.txn(Txn::new().delete("events/1")).await);

    // From after the first commit: the second and the delete, nothing outside the prefix.
    let mut watch = store.watch_prefix("events/", first).await.expect("watch");
    let mut changes = Vec::new();
    while changes.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("changes within 5 s")
            .expect("watch")
            .expect("stream open");
        changes.extend(batch);
    }
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        matches!(&changes[0], Change::Put(kv) if kv.key == "events/2" && kv.value == b"b" && kv.mod_revision == second),
        "{changes:?}"
    );
    assert_eq!(
        changes[1],
        Change::Delete {
            key: "events/1".into(),
            revision: third
        }
    );

    // A change made while watching arrives too.
    let fourth = committed(store.txn(put("events/3", "c")).await);
    let live = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("live change within 5 s")
        .expect("watch")
        .expect("stream open");
    assert_eq!(
        live.iter().map(Change::revision).collect::<Vec<_>>(),
        [fourth]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_far_behind_gets_every_change_even_past_one_message() {
    let etcd = Etcd::single();
    let store = EtcdStore::open(&etcd.url()).expect("open");
    // Twelve values of 512 KiB: 6 MiB of changes, past tonic's 4 MiB message default, which
    // etcd sends at once to a watch that starts before them.
    let value = vec![b'x'; 512 * 1024];
    let mut revisions = Vec::new();
    for i in 0..12 {
        let txn = Txn::new().put(format!("nodes/big-{i:02}"), value.clone());
        revisions.push(committed(store.txn(txn).await));
    }

    let mut watch = store.watch_prefix("nodes/", 0).await.expect("watch");
    let mut seen = Vec::new();
    while seen.len() < revisions.len() {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("changes within 10 s")
            .unwrap_or_else(|error| panic!("watch: {}", chain(&error)))
            .expect("stream open");
        seen.extend(batch.iter().map(Change::revision));
    }
    assert_eq!(seen, revisions, "every change once, in order");
}

fn committed(outcome: Result<TxnOutcome, StoreError>) -> u64 {
    match outcome.expect("txn") {
        TxnOutcome::Committed(revision) => revision,
        TxnOutcome::Conflict { key } => panic!("conflict on {key}"),
    }
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
