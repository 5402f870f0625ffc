//! What the tests of manager replicas on etcd share: starting replicas of one fleet, reading
//! what etcd holds, and the end-of-run check that nothing acknowledged was lost.

#![allow(dead_code)] // Each test file uses its own part.

use std::collections::BTreeSet;
use std::path::Path;

use opi_manager::records::{EventRecord, NodeRecord, NodeState, EVENTS, NODES, TOKENS};
use opi_manager::store::{EtcdStore, KeyValue, Store, StoreError};
use opi_tests::etcd::Etcd;
use opi_tests::{free_port, node, Manager, Opictl};

/// What a replica logs when it takes the lead.
pub const LEADING: &str = "leading: this replica supervises";

/// Replicas of one fleet named `names`, each on the store URL of the same index (a replica
/// may reach etcd through its own proxy), with `serve` arguments `extra` and every replica
/// advertised to agents in `names` order. The first one's data directory is made with `init`,
/// the others are copies of it. None is started.
pub fn replicas(
    dir: &Path,
    fleet: &str,
    names: &[&str],
    stores: &[String],
    extra: &[&str],
) -> Vec<Manager> {
    let addrs: Vec<String> = names.iter().map(|_| free_port()).collect();
    let addrs: Vec<&String> = addrs.iter().collect();
    let first = Manager::init_with(dir, fleet, &["--store", &stores[0]]);
    let copies: Vec<Manager> = names[1..]
        .iter()
        .map(|name| first.copy_to(&dir.join(name)))
        .collect();
    std::iter::once(first)
        .chain(copies)
        .enumerate()
        .map(|(i, replica)| serve_as(replica, names[i], &stores[i], extra, &addrs, addrs[i]))
        .collect()
}

/// `replica`'s `serve` arguments: replica `name` on store URL `store`, with `extra`, the
/// replica URLs agents learn (`advertise`, in the order they try them), listening at `listen`.
pub fn serve_as(
    replica: Manager,
    name: &str,
    store: &str,
    extra: &[&str],
    advertise: &[&String],
    listen: &str,
) -> Manager {
    let mut args: Vec<String> = vec![
        "--store".into(),
        store.into(),
        "--replica-name".into(),
        name.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    for addr in advertise {
        args.extend(["--advertise".to_string(), format!("https://{addr}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    replica
        .with_args(&args)
        .with_listen(listen.parse().expect("address"))
}

/// The leader `opictl status -o json` names at `replica`.
pub fn leader_at(replica: &Manager) -> Option<String> {
    let status = replica.opictl().json(&["status"]);
    status["leader"].as_str().map(str::to_owned)
}

/// The connectivity `opictl nodes` shows for node `name`.
pub fn connectivity(opictl: &Opictl, name: &str) -> String {
    let nodes = opictl.nodes();
    node(&nodes, name)
        .map(|n| n["connectivity"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// Nodes whose session etcd records at replica `name`, in name order.
/// None while etcd does not answer.
pub fn session_nodes(etcd: &Etcd, name: &str) -> Vec<String> {
    try_list(etcd, &format!("replicas/sessions/{name}/"))
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| kv.key.rsplit('/').next().map(str::to_owned))
        .collect()
}

/// Every event of the fleet, as the store holds them, in revision order.
pub fn events(etcd: &Etcd) -> Vec<EventRecord> {
    list(etcd, EVENTS)
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).expect("event JSON"))
        .collect()
}

/// What operators were told was done during a run, to be found in the store at its end.
#[derive(Debug, Default)]
pub struct Acknowledged {
    /// Nodes whose enrollment was answered.
    pub enrolled: BTreeSet<String>,
    /// Nodes whose revocation was answered.
    pub revoked: BTreeSet<String>,
    /// Ids of the tokens whose creation was answered.
    pub tokens: BTreeSet<String>,
}

/// The end-of-run check of every fault test: the event history has revisions 1, 2, … with
/// none missing or repeated, and every acknowledged enrollment, revocation and token is in
/// the store. Returns the history for the test's own checks.
pub fn assert_nothing_lost(etcd: &Etcd, acknowledged: &Acknowledged) -> Vec<EventRecord> {
    let history = events(etcd);
    let revisions: Vec<u64> = history.iter().map(|e| e.revision).collect();
    let expected: Vec<u64> = (1..=revisions.len() as u64).collect();
    assert_eq!(
        revisions, expected,
        "event revisions are gapless and unique"
    );

    let nodes: Vec<NodeRecord> = list(etcd, NODES)
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).expect("node JSON"))
        .collect();
    for name in &acknowledged.enrolled {
        assert!(
            nodes.iter().any(|n| &n.name == name),
            "acknowledged enrollment of {name} is in the store"
        );
    }
    for name in &acknowledged.revoked {
        let state = nodes.iter().find(|n| &n.name == name).map(|n| n.state);
        assert_eq!(
            state,
            Some(NodeState::Revoked),
            "revocation of {name} is stored"
        );
    }
    let tokens = list(etcd, TOKENS);
    for id in &acknowledged.tokens {
        assert!(
            tokens.iter().any(|kv| kv.key.ends_with(id.as_str())),
            "acknowledged token {id} is in the store"
        );
    }
    eprintln!(
        "nothing lost: {} events, {} nodes, {} tokens",
        history.len(),
        nodes.len(),
        tokens.len()
    );
    history
}

fn list(etcd: &Etcd, prefix: &str) -> Vec<KeyValue> {
    try_list(etcd, prefix).unwrap_or_else(|error| panic!("list {prefix} in etcd: {error}"))
}

fn try_list(etcd: &Etcd, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
    let store = EtcdStore::open(&etcd.url()).expect("open etcd store");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(store.list(prefix))
}
