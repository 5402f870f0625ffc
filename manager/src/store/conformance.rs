//! Behaviour every [`Store`] backend must show, as checks a backend's tests run.
//!
//! Each check writes under its own key prefix, so all of them can share one store; only the
//! first needs the store empty. A check that fails panics with a message saying what the store
//! did wrong, naming the store.

use std::fmt::Write as _;
use std::sync::Arc;

use super::{KeyValue, Revision, Store, StoreError, Txn, TxnOutcome};

/// Prefix of every key the checks write.
const ROOT: &str = "conformance/";

/// How many tasks race in [`concurrent_txns_serialise`].
const RACERS: usize = 20;

/// Runs every check on `store`, which must be empty; panics at the first that fails.
pub async fn run_all(store: Arc<dyn Store>) {
    let plain = store.as_ref();
    revision_starts_at_zero_and_increases_by_one_per_commit(plain).await;
    txn_that_changes_nothing_keeps_the_revision(plain).await;
    put_sets_create_and_mod_revision(plain).await;
    compare_absent_refuses_existing_key(plain).await;
    failed_txn_writes_nothing(plain).await;
    txn_writing_a_key_twice_is_refused(plain).await;
    delete_removes_key_and_bumps_revision(plain).await;
    list_is_prefix_exact_and_ordered(plain).await;
    list_page_and_list_last_paginate(plain).await;
    values_round_trip_binary(plain).await;
    compare_mod_revision_detects_concurrent_update(&store).await;
    concurrent_txns_serialise(&store).await;
}

/// An empty store is at revision 0; each committed txn adds one, however many keys it writes.
pub async fn revision_starts_at_zero_and_increases_by_one_per_commit(store: &dyn Store) {
    let probe = Probe(store);
    let [a, b, c] = ["a", "b", "c"].map(|name| format!("{ROOT}revision/{name}"));
    probe.expect("revision of an empty store", probe.revision().await, 0);
    probe.expect(
        "keys of an empty store",
        probe.keys("").await,
        Vec::<String>::new(),
    );

    let first = probe.commit(Txn::new().put(a, b"1".to_vec())).await;
    probe.expect("revision of the first commit", first, 1);
    let second = probe
        .commit(Txn::new().put(b, b"2".to_vec()).put(c, vec![]))
        .await;
    probe.expect("revision of a two-key commit", second, 2);
    probe.expect("revision after two commits", probe.revision().await, 2);
}

/// A txn with no ops, or only deletes of absent keys, commits at the current revision.
pub async fn txn_that_changes_nothing_keeps_the_revision(store: &dyn Store) {
    let probe = Probe(store);
    let before = probe.revision().await;
    let absent = format!("{ROOT}unchanged/absent");

    let empty = probe.commit(Txn::new()).await;
    probe.expect("revision of an empty txn", empty, before);
    let compare_only = probe.commit(Txn::new().when_absent(&absent)).await;
    probe.expect("revision of a compare-only txn", compare_only, before);
    let delete_absent = probe.commit(Txn::new().delete(&absent)).await;
    probe.expect("revision of deleting nothing", delete_absent, before);
    probe.expect("revision after no-op txns", probe.revision().await, before);
}

/// A new key gets the txn's revision as both revisions; an update changes only `mod_revision`.
pub async fn put_sets_create_and_mod_revision(store: &dyn Store) {
    let probe = Probe(store);
    let key = format!("{ROOT}put/key");
    probe.expect("absent key", probe.get(&key).await, None);

    let created = probe.commit(Txn::new().put(&key, b"one".to_vec())).await;
    let expected = kv(&key, b"one", created, created);
    probe.expect("created key", probe.get(&key).await, Some(expected));

    let updated = probe.commit(Txn::new().put(&key, b"two".to_vec())).await;
    let expected = kv(&key, b"two", created, updated);
    probe.expect("updated key", probe.get(&key).await, Some(expected));
}

/// `when_absent` fails on an existing key and holds on a missing one.
pub async fn compare_absent_refuses_existing_key(store: &dyn Store) {
    let probe = Probe(store);
    let [taken, free] = ["taken", "free"].map(|name| format!("{ROOT}absent/{name}"));
    let first = Txn::new().put(&taken, b"first".to_vec());
    probe.commit(first).await;

    let second = Txn::new()
        .when_absent(&taken)
        .put(&taken, b"second".to_vec());
    let outcome = probe.outcome(second).await;
    let conflict = TxnOutcome::Conflict { key: taken.clone() };
    probe.expect("outcome of creating a taken key", outcome, conflict);
    let value = probe.value(&taken).await;
    probe.expect("value of the taken key", value, Some(b"first".to_vec()));

    let fresh = Txn::new().when_absent(&free).put(&free, vec![]);
    probe.commit(fresh).await;
}

/// Two writers read the same revision and race: one commits, the other gets a conflict naming
/// the key, and nothing of the loser's txn is written.
pub async fn compare_mod_revision_detects_concurrent_update(store: &Arc<dyn Store>) {
    let probe = Probe(store.as_ref());
    let key = format!("{ROOT}race/key");
    let read_at = probe.commit(Txn::new().put(&key, b"base".to_vec())).await;

    let racers = ["left", "right"].map(|name| {
        let side = format!("{ROOT}race/{name}");
        let txn = Txn::new()
            .when_revision(&key, read_at)
            .put(&key, name.into());
        let store = Arc::clone(store);
        tokio::spawn(async move {
            (
                name,
                Probe(store.as_ref()).outcome(txn.put(side, vec![])).await,
            )
        })
    });
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await.expect("racing writer task panicked") {
            (name, TxnOutcome::Committed(_)) => winners.push(name),
            (name, TxnOutcome::Conflict { key: failed }) => {
                probe.expect("key named by the losing txn", &failed, &key);
                let side = probe.get(&format!("{ROOT}race/{name}")).await;
                probe.expect("side key of the losing txn", side, None);
            }
        }
    }

    probe.expect("number of winning writers", winners.len(), 1);
    let value = probe.value(&key).await;
    probe.expect("value after the race", value, Some(winners[0].into()));
}

/// A txn with one failing compare among several writes nothing; the conflict names the first
/// failing compare.
pub async fn failed_txn_writes_nothing(store: &dyn Store) {
    let probe = Probe(store);
    let [kept, new, other] = ["kept", "new", "other"].map(|name| format!("{ROOT}failed/{name}"));
    let kept_at = probe.commit(Txn::new().put(&kept, b"kept".to_vec())).await;
    let before = probe.revision().await;

    let doomed = Txn::new()
        .when_absent(&new)
        .when_revision(&kept, kept_at + 1000)
        .when_revision(&other, 1)
        .put(&new, vec![])
        .put(&other, vec![])
        .delete(&kept);
    let conflict = TxnOutcome::Conflict { key: kept.clone() };
    probe.expect(
        "outcome of the doomed txn",
        probe.outcome(doomed).await,
        conflict,
    );

    let left = probe.list(&format!("{ROOT}failed/")).await;
    probe.expect(
        "keys after the doomed txn",
        left,
        vec![kv(&kept, b"kept", kept_at, kept_at)],
    );
    probe.expect(
        "revision after the doomed txn",
        probe.revision().await,
        before,
    );
}

/// A txn that writes one key twice is refused whole.
pub async fn txn_writing_a_key_twice_is_refused(store: &dyn Store) {
    let probe = Probe(store);
    let key = format!("{ROOT}twice/key");
    let result = store.txn(Txn::new().put(&key, vec![]).delete(&key)).await;

    let refused = matches!(&result, Err(StoreError::DuplicateKey { key: named }) if *named == key);
    probe.expect(
        &format!("refusal of a key written twice ({result:?})"),
        refused,
        true,
    );
    probe.expect("key written twice", probe.get(&key).await, None);
}

/// Delete removes the key at a new revision; a key put again starts a new life.
pub async fn delete_removes_key_and_bumps_revision(store: &dyn Store) {
    let probe = Probe(store);
    let key = format!("{ROOT}delete/key");
    let created = probe.commit(Txn::new().put(&key, b"old".to_vec())).await;

    let deleted = probe.commit(Txn::new().delete(&key)).await;
    probe.expect("revision of the delete", deleted, created + 1);
    probe.expect("deleted key", probe.get(&key).await, None);

    let recreated = probe.commit(Txn::new().put(&key, b"new".to_vec())).await;
    let expected = kv(&key, b"new", recreated, recreated);
    probe.expect("recreated key", probe.get(&key).await, Some(expected));
}

/// A prefix matches keys that start with it, byte for byte (`%` and `_` included), and
/// listings come in key order.
pub async fn list_is_prefix_exact_and_ordered(store: &dyn Store) {
    let probe = Probe(store);
    let root = format!("{ROOT}list/");
    let names = "b a_ a/é a0 a/ a% a a/b m\u{10FFFF}x m\u{10FFFF} n".split(' ');
    let txn = names.fold(Txn::new(), |txn, name| {
        txn.put(format!("{root}{name}"), name.into())
    });
    probe.commit(txn).await;

    for (prefix, expected) in [
        ("a/", "a/ a/b a/é"),
        ("a%", "a%"),
        ("a_", "a_"),
        ("a", "a a% a/ a/b a/é a0 a_"),
        ("m\u{10FFFF}", "m\u{10FFFF} m\u{10FFFF}x"),
        ("z", ""),
    ] {
        let expected: Vec<String> = expected
            .split_whitespace()
            .map(|name| format!("{root}{name}"))
            .collect();
        let keys = probe.keys(&format!("{root}{prefix}")).await;
        probe.expect(&format!("keys under `{root}{prefix}`"), keys, expected);
    }
}

/// Pages resume after the last key seen and stay inside the prefix; `list_last` gives the tail.
pub async fn list_page_and_list_last_paginate(store: &dyn Store) {
    let probe = Probe(store);
    let prefix = format!("{ROOT}page/");
    let keys: Vec<String> = (0..10).map(|n| format!("{prefix}k{n:02}")).collect();
    let txn = keys
        .iter()
        .fold(Txn::new(), |txn, key| txn.put(key, vec![]));
    probe.commit(txn.put(format!("{ROOT}pagez"), vec![])).await;

    let mut pages = Vec::new();
    let mut after = Some(ROOT.to_owned());
    // Bounded, so that a store that does not move past `start_after` fails instead of hanging.
    while pages.len() <= keys.len() {
        let page = probe.ok(
            store.list_page(&prefix, after.as_deref(), 4).await,
            "list_page",
        );
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        pages.push(keys_of(&page));
    }
    let expected = [&keys[..4], &keys[4..8], &keys[8..]].map(<[String]>::to_vec);
    probe.expect("pages of four keys", pages, expected.to_vec());
    let empty = probe.ok(store.list_page(&prefix, None, 0).await, "list_page");
    probe.expect("page of zero keys", empty, vec![]);

    let tail = probe.ok(store.list_last(&prefix, 3).await, "list_last");
    probe.expect("last three keys", keys_of(&tail), keys[7..].to_vec());
    let all = probe.ok(store.list_last(&prefix, 50).await, "list_last");
    probe.expect("last fifty of ten keys", keys_of(&all), keys);
}

/// Values are bytes: every byte value, invalid UTF-8 and the empty value come back unchanged.
pub async fn values_round_trip_binary(store: &dyn Store) {
    let probe = Probe(store);
    let every_byte: Vec<u8> = (0..=255).collect();
    let values = [every_byte.repeat(1024), vec![0xff, 0xfe, 0, 0xc3], vec![]];
    let keys = ["0", "1", "2"].map(|name| format!("{ROOT}binary/{name}"));
    let txn = keys
        .iter()
        .zip(&values)
        .fold(Txn::new(), |txn, (k, v)| txn.put(k, v.clone()));
    probe.commit(txn).await;

    let listed = probe.list(&format!("{ROOT}binary/")).await;
    let listed: Vec<Vec<u8>> = listed.into_iter().map(|kv| kv.value).collect();
    probe.expect("listed binary values", listed, values.to_vec());
    let value = probe.value(&keys[0]).await;
    probe.expect("binary value read back", value, Some(values[0].clone()));
}

/// Racing read-modify-write loops lose no update and every commit bumps the revision once.
pub async fn concurrent_txns_serialise(store: &Arc<dyn Store>) {
    let probe = Probe(store.as_ref());
    let key = format!("{ROOT}counter");
    let before = probe.revision().await;

    let tasks = (0..RACERS).map(|_| {
        let (store, key) = (Arc::clone(store), key.clone());
        tokio::spawn(async move { increment(Probe(store.as_ref()), &key).await })
    });
    for task in tasks.collect::<Vec<_>>() {
        task.await.expect("counter task panicked");
    }

    let after = before + RACERS as Revision;
    let expected = kv(&key, RACERS.to_string().as_bytes(), before + 1, after);
    probe.expect(
        "counter after the race",
        probe.get(&key).await,
        Some(expected),
    );
    probe.expect("revision after the race", probe.revision().await, after);
}

/// Adds one to the decimal counter at `key` with a compare-and-swap retry loop.
async fn increment(probe: Probe<'_>, key: &str) {
    // Each conflict means another task committed, so no task needs more than RACERS attempts.
    for _ in 0..RACERS {
        let (count, read_at) = match probe.get(key).await {
            Some(kv) => (probe.count_in(&kv), kv.mod_revision),
            None => (0, 0),
        };
        let next = (count + 1).to_string().into_bytes();
        let txn = Txn::new().when_revision(key, read_at).put(key, next);
        if let TxnOutcome::Committed(_) = probe.outcome(txn).await {
            return;
        }
    }
    panic!("{}: counter increment kept conflicting", probe.0.describe());
}

fn kv(key: &str, value: &[u8], create_revision: Revision, mod_revision: Revision) -> KeyValue {
    let (key, value) = (key.to_owned(), value.to_vec());
    KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
    }
}

fn keys_of(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| kv.key.clone()).collect()
}

/// The store under check: calls that must succeed, and assertions naming the store.
#[derive(Clone, Copy)]
struct Probe<'a>(&'a dyn Store);

impl Probe<'_> {
    async fn get(self, key: &str) -> Option<KeyValue> {
        self.ok(self.0.get(key).await, "get")
    }

    async fn value(self, key: &str) -> Option<Vec<u8>> {
        self.get(key).await.map(|kv| kv.value)
    }

    async fn list(self, prefix: &str) -> Vec<KeyValue> {
        self.ok(self.0.list(prefix).await, "list")
    }

    async fn keys(self, prefix: &str) -> Vec<String> {
        keys_of(&self.list(prefix).await)
    }

    async fn revision(self) -> Revision {
        self.ok(self.0.revision().await, "revision")
    }

    async fn outcome(self, txn: Txn) -> TxnOutcome {
        self.ok(self.0.txn(txn).await, "txn")
    }

    /// Runs a txn that must commit; returns its revision.
    async fn commit(self, txn: Txn) -> Revision {
        match self.outcome(txn).await {
            TxnOutcome::Committed(revision) => revision,
            conflict @ TxnOutcome::Conflict { .. } => {
                panic!("{}: expected a commit, got {conflict:?}", self.0.describe())
            }
        }
    }

    fn count_in(self, kv: &KeyValue) -> usize {
        let text = String::from_utf8_lossy(&kv.value);
        let parsed = text.parse();
        parsed.unwrap_or_else(|_| panic!("{}: counter holds {text:?}", self.0.describe()))
    }

    /// The value of a call that must succeed; panics with the whole error chain otherwise.
    #[track_caller]
    fn ok<T>(self, result: Result<T, StoreError>, call: &str) -> T {
        let error = match result {
            Ok(value) => return value,
            Err(error) => error,
        };
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            write!(chain, ": {cause}").expect("writing to a String cannot fail");
            source = cause.source();
        }
        panic!("{}: {call} failed: {chain}", self.0.describe())
    }

    #[track_caller]
    fn expect<T: PartialEq + std::fmt::Debug>(self, what: &str, got: T, want: T) {
        assert_eq!(got, want, "{}: unexpected {what}", self.0.describe());
    }
}
