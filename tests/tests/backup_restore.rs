//! `opi-manager backup` and `restore` on both store backends: a live backup, changes made after
//! it, a restore into the stopped manager's data directory, and then the epoch has moved up so
//! that the agent, which applied a later generation than the backup knows, takes the next one.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use opi_tests::etcd::Etcd;
use opi_tests::{bin, fails, mode, node, ok, run, wait_until_every, Agent, Manager};
use opi_tests::{POLL_OPICTL, WAIT};
use tempfile::TempDir;

/// The worker profile shipped in the repository.
const WORKER: &str = include_str!("../../deploy/profiles/worker.yaml");
/// kubelet's configuration, under the agent's root.
const KUBELET_FILE: &str = "var/lib/kubelet/config.yaml";
/// Bound for an apply and its report to reach the manager.
const APPLY_WAIT: Duration = Duration::from_secs(20);

#[test]
fn restore_on_sqlite_moves_the_epoch_up_and_the_agent_takes_the_next_generation() {
    backup_change_restore(None);
}

#[test]
fn restore_on_etcd_moves_the_epoch_up_and_the_agent_takes_the_next_generation() {
    let etcd = Etcd::single();
    backup_change_restore(Some(&etcd.url()));
}

fn backup_change_restore(store: Option<&str>) {
    let dir = TempDir::new().expect("temp dir");
    let store_args: Vec<&str> = store.map(|url| vec!["--store", url]).unwrap_or_default();
    let mut serve_args = vec!["--heartbeat", "1s"];
    serve_args.extend(&store_args);
    let mut manager = Manager::init_with(dir.path(), "backup", &store_args).with_args(&serve_args);
    manager.start();
    let agent = agent(&dir, &manager, "worker-1");
    let first = set_profile(&manager, &dir, WORKER);
    wait_in_sync(&manager, first, &agent, "maxPods: 110");

    let backup = dir.path().join("fleet.backup");
    let out = ok(opi_manager(
        &manager.data_dir,
        &store_args,
        "backup",
        &backup,
    ));
    assert!(out.contains("epoch 1"), "{out}");
    assert_eq!(mode(&backup), 0o600, "the backup holds the CA keys");

    let changed = set_profile(
        &manager,
        &dir,
        &WORKER.replace("maxPods: 110", "maxPods: 120"),
    );
    wait_in_sync(&manager, changed, &agent, "maxPods: 120");
    let (late_token, _) = manager.opictl().create_token("late", 1, &[]);
    manager.terminate(WAIT);

    let refused = fails(opi_manager(
        &manager.data_dir,
        &store_args,
        "restore",
        &backup,
    ));
    assert!(refused.contains("pass --force"), "{refused}");
    let mut forced = store_args.clone();
    forced.push("--force");
    let out = ok(opi_manager(&manager.data_dir, &forced, "restore", &backup));
    assert!(
        out.contains("store epoch moved from 1 (in the backup) to"),
        "{out}"
    );

    manager.start();
    let opictl = manager.opictl();
    let profile = opictl.json(&["profile", "show", "workers"]);
    assert_eq!(
        profile["generation"], first,
        "the store is back at the backup: {profile}"
    );
    let tokens = opictl.json(&["token", "list"]);
    assert!(
        !tokens.to_string().contains(&late_token),
        "a token made after the backup is gone: {tokens}"
    );

    // The agent applied generation `changed` at epoch 1; the store only knows `first`, so the
    // next generation reuses the number `changed` had. Only the new epoch makes it newer.
    let next = set_profile(
        &manager,
        &dir,
        &WORKER.replace("maxPods: 110", "maxPods: 130"),
    );
    assert_eq!(
        next, changed,
        "the generation counter came back with the store"
    );
    wait_in_sync(&manager, next, &agent, "maxPods: 130");
    let shown = opictl.json(&["profile", "show", "workers"]);
    let epoch = shown["epoch"].as_u64().expect("epoch");
    assert!(epoch > 1, "epoch moved up: {shown}");
    let nodes = opictl.nodes();
    assert!(
        node(&nodes, "worker-1").is_some(),
        "the node enrolled before the backup is kept"
    );
}

/// `opi-manager COMMAND --data-dir DIR [STORE ARGS] --out|--from FILE`.
fn opi_manager(
    data_dir: &Path,
    store_args: &[&str],
    command: &str,
    file: &Path,
) -> std::process::Output {
    let file_flag = if command == "backup" {
        "--out"
    } else {
        "--from"
    };
    run(Command::new(bin("opi-manager"))
        .arg(command)
        .arg("--data-dir")
        .arg(data_dir)
        .args(store_args)
        .arg(file_flag)
        .arg(file))
}

/// An enrolled, running agent of pool `workers` whose only check is drift.
fn agent(dir: &TempDir, manager: &Manager, name: &str) -> Agent {
    let mut agent = Agent::new(dir.path(), name);
    let settings = agent.root.join("etc/opi-agent");
    std::fs::create_dir_all(&settings).expect("agent settings");
    std::fs::write(
        settings.join("health.toml"),
        "version = 1\nchecks = [\"ConfigDrift\"]\n",
    )
    .expect("health.toml");
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent.start();
    wait_until_every(POLL_OPICTL, WAIT, "the agent online", || {
        opi_tests::all_online(&manager.opictl(), &[name])
    });
    agent
}

fn set_profile(manager: &Manager, dir: &TempDir, text: &str) -> u64 {
    let path = dir.path().join("profile.yaml");
    std::fs::write(&path, text).expect("profile file");
    let path = path.to_str().expect("UTF-8 path");
    let set = manager
        .opictl()
        .json(&["profile", "set", "workers", "-f", path]);
    set["generation"].as_u64().expect("a generation number")
}

/// Waits until the node reports generation `generation` in sync and its kubelet file holds
/// `expected`.
fn wait_in_sync(manager: &Manager, generation: u64, agent: &Agent, expected: &str) {
    let what = format!("generation {generation} in sync with `{expected}`");
    wait_until_every(POLL_OPICTL, APPLY_WAIT, &what, || {
        let nodes = manager.opictl().nodes();
        let config = &node(&nodes, &agent.name).expect("node listed")["config"];
        let file = std::fs::read_to_string(agent.root.join(KUBELET_FILE)).unwrap_or_default();
        config["state"] == "in-sync"
            && config["applied_generation"] == generation
            && file.contains(expected)
    });
}
