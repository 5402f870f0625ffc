//! `opi-manager store migrate` from the default SQLite store to a real etcd: every key copied
//! and verified, a non-empty target refused unless forced, and the manager then serving the
//! same fleet from etcd.

use std::process::{Command, Output};

use opi_manager::store::{copy, EtcdStore, SqliteStore, Store};
use opi_tests::etcd::Etcd;
use opi_tests::{all_online, bin, fails, node, ok, run, wait_until, Agent, Manager, WAIT};

#[test]
fn migrate_copies_a_fleet_from_sqlite_to_etcd_and_the_manager_serves_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::cluster();
    let url = etcd.url();
    let mut manager = Manager::init(dir.path(), "move");
    manager.start();
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", 2, &[]);
    let mut agent = Agent::new(dir.path(), "mover");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent.start();
    wait_until(WAIT, "the node online", || all_online(&opictl, &["mover"]));
    manager.terminate(WAIT);

    let sqlite = format!("sqlite:{}", manager.data_dir.join("fleet.db").display());
    let out = ok(migrate(&sqlite, &url, false));
    assert!(out.contains("copied "), "{out}");
    let (source_keys, source_digest) = contents(&sqlite);
    let (target_keys, target_digest) = contents(&url);
    assert_eq!(target_keys, source_keys);
    assert_eq!(target_digest, source_digest);
    assert!(out.contains(&format!("copied {source_keys} keys")), "{out}");
    assert!(out.contains(&source_digest), "{out}");

    let refused = fails(migrate(&sqlite, &url, false));
    assert!(refused.contains("is not empty"), "{refused}");
    assert!(refused.contains("--force"), "{refused}");
    ok(migrate(&sqlite, &url, true));
    assert_eq!(contents(&url), (source_keys, source_digest));

    let mut manager = manager.with_args(&["--store", &url]);
    manager.start();
    let opictl = manager.opictl();
    wait_until(WAIT, "the agent back, served from etcd", || {
        all_online(&opictl, &["mover"])
    });
    assert_eq!(
        node(&opictl.nodes(), "mover").expect("node")["pool"],
        "workers"
    );
    let tokens = opictl.json(&["token", "list"]);
    assert_eq!(tokens[0]["used"], 1, "{tokens}");
}

#[test]
fn migrate_to_an_unreachable_etcd_fails_naming_the_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = Manager::init(dir.path(), "stuck");
    let sqlite = format!("sqlite:{}", manager.data_dir.join("fleet.db").display());
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let error = fails(migrate(
        &sqlite,
        &format!("etcd://{closed}?timeout=1s"),
        false,
    ));
    assert!(error.contains("is unavailable"), "{error}");
    assert!(error.contains(&closed), "{error}");
}

fn migrate(from: &str, to: &str, force: bool) -> Output {
    let mut command = Command::new(bin("opi-manager"));
    command.args(["store", "migrate", "--from", from, "--to", to]);
    if force {
        command.arg("--force");
    }
    run(&mut command)
}

/// Keys and digest of the store at `url`, read directly.
fn contents(url: &str) -> (usize, String) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store: Box<dyn Store> = match url.strip_prefix("sqlite:") {
        Some(path) => Box::new(SqliteStore::open(path.as_ref()).expect("open sqlite")),
        None => Box::new(EtcdStore::open(url).expect("open etcd")),
    };
    let keys = runtime.block_on(store.list("")).expect("list");
    (keys.len(), copy::digest(&keys))
}
