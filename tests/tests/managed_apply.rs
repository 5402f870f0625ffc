//! Profiles from the manager to the node, end to end: `opictl profile set` on a real manager,
//! a real `opi-agent run` under its own `--root` (files only) that applies the generation it
//! receives on its stream and reports it, the config axis in `opictl nodes`, drift reported as
//! a condition and re-applied when the profile says so, and refusals that leave the node as it
//! was and are not retried at every reconnection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opi_proto::v1::Event;
use opi_tests::{node, ok, wait_until_every, Agent, Manager, POLL_OPICTL, WAIT};
use serde_json::Value;
use tempfile::TempDir;

/// The worker profile shipped in the repository.
const WORKER: &str = include_str!("../../deploy/profiles/worker.yaml");
/// The file the agent writes the profile's sysctls to, under the root.
const SYSCTL_FILE: &str = "etc/sysctl.d/90-opi-fleet.conf";
/// kubelet's configuration, under the root.
const KUBELET_FILE: &str = "var/lib/kubelet/config.yaml";
/// Bound for an apply and its report to reach the manager.
const APPLY_WAIT: Duration = Duration::from_secs(20);

fn manager(dir: &TempDir) -> Manager {
    let mut manager = Manager::init(dir.path(), "apply").with_args(&["--heartbeat", "1s"]);
    manager.start();
    manager
}

/// An enrolled, running agent whose only check is drift, with the node's own `floor.toml`
/// when given.
fn agent(dir: &TempDir, manager: &Manager, name: &str, floor: Option<&str>) -> Agent {
    let mut agent = Agent::new(dir.path(), name);
    let settings = agent.root.join("etc/opi-agent");
    std::fs::create_dir_all(&settings).unwrap();
    std::fs::write(
        settings.join("health.toml"),
        "version = 1\nchecks = [\"ConfigDrift\"]\n",
    )
    .unwrap();
    if let Some(floor) = floor {
        std::fs::write(settings.join("floor.toml"), floor).unwrap();
    }
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent.start();
    wait_until_every(POLL_OPICTL, WAIT, "the agent online", || {
        opi_tests::all_online(&manager.opictl(), &[name])
    });
    agent
}

fn set_profile(manager: &Manager, dir: &TempDir, name: &str, text: &str) -> u64 {
    let path: PathBuf = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let set = manager
        .opictl()
        .json(&["profile", "set", "workers", "-f", path.to_str().unwrap()]);
    set["generation"].as_u64().expect("a generation number")
}

fn config(manager: &Manager, name: &str) -> Value {
    let nodes = manager.opictl().nodes();
    node(&nodes, name).expect("node listed")["config"].clone()
}

fn wait_config(manager: &Manager, name: &str, state: &str, applied: u64) -> Value {
    let what = format!("{name} config {state} at generation {applied}");
    wait_until_every(POLL_OPICTL, APPLY_WAIT, &what, || {
        let config = config(manager, name);
        config["state"] == state && config["applied_generation"] == applied
    });
    config(manager, name)
}

fn drift_condition(manager: &Manager, name: &str) -> Value {
    let nodes = manager.opictl().nodes();
    let conditions = node(&nodes, name).expect("node listed")["conditions"].clone();
    conditions
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "ConfigDrift")
        .cloned()
        .unwrap_or_else(|| panic!("no ConfigDrift condition in {conditions}"))
}

fn read(agent: &Agent, path: &str) -> String {
    std::fs::read_to_string(agent.root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hand_edit(agent: &Agent, path: &str) {
    let mut text = read(agent, path);
    text.push_str("# edited by hand\n");
    std::fs::write(agent.root.join(path), text).unwrap();
}

/// The config events of `name` after revision `since`, until `done` says enough.
fn config_events(
    manager: &Manager,
    name: &str,
    since: u64,
    done: impl FnMut(&[Event]) -> bool,
) -> Vec<(String, String)> {
    let events = manager.node_events(name, "config", since, APPLY_WAIT, done);
    events.into_iter().map(|e| (e.from, e.to)).collect()
}

fn event_revision(manager: &Manager) -> u64 {
    manager.opictl().json(&["status"])["event_revision"]
        .as_u64()
        .expect("event revision")
}

fn reaches(state: &'static str) -> impl FnMut(&[Event]) -> bool {
    move |events| events.last().is_some_and(|e| e.to == state)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn the_agent_applies_its_pools_generation_reports_drift_and_reapplies_when_asked() {
    let dir = TempDir::new().unwrap();
    let manager = manager(&dir);
    let mut agent = agent(&dir, &manager, "worker-1", None);
    let before = event_revision(&manager);

    let first = set_profile(&manager, &dir, "worker.yaml", WORKER);
    let applied = wait_config(&manager, "worker-1", "in-sync", first);
    assert_eq!(applied["desired_generation"], first);
    assert!(read(&agent, KUBELET_FILE).contains("maxPods: 110"));
    assert!(read(&agent, "etc/containerd/config.toml").contains("mirror.registry.example.gouv.fr"));
    assert!(read(&agent, SYSCTL_FILE).contains("net.ipv4.ip_forward"));
    let events = config_events(&manager, "worker-1", before, reaches("in-sync"));
    assert_eq!(
        events,
        pairs(&[("none", "applying"), ("applying", "in-sync")])
    );

    // A hand edit is drift: the condition names the file and the config axis says drifted.
    let since = event_revision(&manager);
    hand_edit(&agent, SYSCTL_FILE);
    let drifted = wait_config(&manager, "worker-1", "drifted", first);
    let listed = drifted["drifted"].to_string();
    assert!(
        listed.contains("/etc/sysctl.d/90-opi-fleet.conf"),
        "{drifted}"
    );
    let condition = drift_condition(&manager, "worker-1");
    assert_eq!(condition["status"], "problem", "{condition}");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("/etc/sysctl.d/90-opi-fleet.conf: the content was edited"),
        "{message}"
    );
    let events = config_events(&manager, "worker-1", since, reaches("drifted"));
    assert_eq!(events, pairs(&[("in-sync", "drifted")]));
    assert!(
        read(&agent, SYSCTL_FILE).contains("# edited by hand"),
        "report only: kept"
    );

    // A new generation asking for remediation replaces the edit, and then keeps it away.
    let reapplying = WORKER
        .replace("driftRemediation: report", "driftRemediation: reapply")
        .replace("maxPods: 110", "maxPods: 90");
    assert_ne!(reapplying, WORKER);
    let second = set_profile(&manager, &dir, "worker-2.yaml", &reapplying);
    wait_config(&manager, "worker-1", "in-sync", second);
    assert!(read(&agent, KUBELET_FILE).contains("maxPods: 90"));
    assert!(!read(&agent, SYSCTL_FILE).contains("# edited by hand"));
    wait_until_every(POLL_OPICTL, APPLY_WAIT, "drift cleared", || {
        drift_condition(&manager, "worker-1")["status"] == "ok"
    });

    let since = event_revision(&manager);
    hand_edit(&agent, KUBELET_FILE);
    let events = config_events(&manager, "worker-1", since, |events| {
        events.len() >= 2 && events.last().is_some_and(|e| e.to == "in-sync")
    });
    assert_eq!(
        events,
        pairs(&[("in-sync", "drifted"), ("drifted", "in-sync")])
    );
    assert!(!read(&agent, KUBELET_FILE).contains("# edited by hand"));
    assert!(read(&agent, KUBELET_FILE).contains("maxPods: 90"));

    // A restarted agent says hello with the generation it runs and applies nothing again.
    let applies = agent.log_text().matches("applying profile").count();
    agent.stop();
    agent.start();
    wait_until_every(POLL_OPICTL, WAIT, "the agent back online", || {
        opi_tests::all_online(&manager.opictl(), &["worker-1"])
    });
    let config = wait_config(&manager, "worker-1", "in-sync", second);
    assert_eq!(config["desired_generation"], second);
    assert_eq!(
        agent.log_text().matches("applying profile").count(),
        applies
    );
}

#[test]
fn a_generation_below_the_nodes_floor_is_refused_leaves_the_node_as_it_was_and_is_not_retried() {
    let dir = TempDir::new().unwrap();
    let manager = manager(&dir);
    let floor = "version = 1\n[sysctls.\"kernel.kptr_restrict\"]\nmin = 2\n";
    let mut agent = agent(&dir, &manager, "worker-1", Some(floor));
    let files_before = files(&agent.root);

    let lowering = "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  baseline: anssi-bp028-intermediary\n  overrides:\n    sysctls:\n      kernel.kptr_restrict: 1\n  exceptions:\n    - item: sysctl/kernel.kptr_restrict\n      reason: the test asks for less than the node's floor\n";
    let generation = set_profile(&manager, &dir, "lowering.yaml", lowering);
    wait_until_every(POLL_OPICTL, APPLY_WAIT, "the generation refused", || {
        config(&manager, "worker-1")["state"] == "failed"
    });
    let failed = config(&manager, "worker-1");
    assert_eq!(failed["desired_generation"], generation);
    assert_eq!(failed["applied_generation"], 0);
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("kernel.kptr_restrict"), "{reason}");
    assert!(reason.contains("floor"), "{reason}");
    assert_eq!(
        files(&agent.root),
        files_before,
        "nothing changed on the node"
    );

    // The manager sends the generation again at every hello; the agent answers from memory.
    agent.stop();
    agent.start();
    wait_until_every(POLL_OPICTL, WAIT, "the agent back online", || {
        opi_tests::all_online(&manager.opictl(), &["worker-1"])
    });
    wait_until_every(
        POLL_OPICTL,
        APPLY_WAIT,
        "the outcome reported again",
        || {
            agent
                .log_text()
                .contains("generation already tried; reporting its outcome again")
        },
    );
    assert_eq!(config(&manager, "worker-1")["state"], "failed");
    assert_eq!(files(&agent.root), files_before);
}

/// Every file under `root` but the agent's own state, with its content.
fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.starts_with(root.join("var/lib/opi-agent")) {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}
