//! Real nodes: a Debian 12 root booted with systemd-nspawn in a network namespace of its own,
//! containerd running as a systemd unit inside, the kubelet stand-in answering healthz, the
//! agent running inside with `--root /`, and the manager on the host, reached over the node's
//! veth pair. Needs root (as CI has); the first run builds the cached root with mmdebstrap.

use std::time::Duration;

use opi_tests::node::Node;
use opi_tests::{wait_until_every, POLL_OPICTL};
use serde_json::Value;
use tempfile::TempDir;

/// Bound for what happens over the network or through systemd inside a node.
const NODE_WAIT: Duration = Duration::from_secs(30);

/// The condition of type `kind` in `opi-agent health -o json` output.
fn condition<'a>(health: &'a Value, kind: &str) -> &'a Value {
    health["conditions"]
        .as_array()
        .expect("conditions array")
        .iter()
        .find(|condition| condition["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {health}"))
}

/// containerd's main pid, read over the node's systemd bus.
fn containerd_main_pid(node: &Node) -> String {
    let output = node.busctl(&[
        "get-property",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1/unit/containerd_2eservice",
        "org.freedesktop.systemd1.Service",
        "MainPID",
    ]);
    opi_tests::ok(output).trim().to_string()
}

#[test]
fn booted_node_runs_containerd_under_systemd_and_a_healthy_kubelet_stand_in() {
    let node = Node::boot("node-basic");

    assert_eq!(node.unit_state("containerd"), "active");
    let version = node.exec_ok(&["ctr", "version"]);
    assert!(
        version.contains("Server:") && version.contains("UUID:"),
        "containerd answers ctr: {version}"
    );

    node.wait_active("kubelet", NODE_WAIT);
    wait_until_every(POLL_OPICTL, NODE_WAIT, "kubelet healthz", || {
        node.http_get(10248, "/healthz").starts_with("HTTP/1.1 200")
    });
    let answer = node.http_get(10248, "/healthz");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");

    node.set_kubelet_healthy(false, "test says so");
    let answer = node.http_get(10248, "/healthz");
    assert!(
        answer.starts_with("HTTP/1.1 500") && answer.contains("test says so"),
        "{answer}"
    );
    assert_eq!(node.exec_ok(&["hostname"]).trim(), "node-basic");
}

#[test]
fn agent_inside_a_node_enrolls_with_the_manager_on_the_host_and_comes_online_healthy() {
    let dir = TempDir::new().unwrap();
    let node = Node::boot("node-agent");
    let mut manager = node.host_manager(dir.path(), "nodes");
    manager.start();
    assert_eq!(
        manager.addr.expect("started").ip(),
        node.host_addr(),
        "the manager listens on the host end of the node's veth pair"
    );
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", 1, &[]);

    node.install_agent();
    let enrolled = node.enroll(&manager.endpoint(), &manager.ca_pin(), &token, "worker-1");
    assert!(
        enrolled.status.success(),
        "enroll inside the node: {}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    node.start_agent();
    node.wait_active("opi-agent", NODE_WAIT);
    wait_until_every(POLL_OPICTL, NODE_WAIT, "worker-1 online", || {
        opi_tests::all_online(&opictl, &["worker-1"])
    });

    let nodes = opictl.nodes();
    let shown = opi_tests::node(&nodes, "worker-1").expect("worker-1 listed");
    assert_eq!(shown["pool"], "workers");
    let health = node.agent_health();
    for kind in ["ContainerRuntimeHealthy", "KubeletHealthy"] {
        assert_eq!(condition(&health, kind)["status"], "OK", "{kind}: {health}");
    }

    node.set_kubelet_healthy(false, "node test");
    let health = node.agent_health();
    let kubelet = condition(&health, "KubeletHealthy");
    assert_eq!(kubelet["status"], "PROBLEM", "{kubelet}");
    assert!(
        kubelet["message"].as_str().unwrap().contains("node test"),
        "{kubelet}"
    );
}

#[test]
fn containerd_restarts_through_the_nodes_systemd_bus_reached_from_the_host() {
    let node = Node::boot("node-dbus");
    let before = containerd_main_pid(&node);
    assert!(before.starts_with("u ") && before != "u 0", "{before}");

    let job = node.busctl(&[
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "RestartUnit",
        "ss",
        "containerd.service",
        "replace",
    ]);
    let job = opi_tests::ok(job);
    assert!(job.contains("/org/freedesktop/systemd1/job/"), "{job}");

    wait_until_every(POLL_OPICTL, NODE_WAIT, "containerd to run again", || {
        let now = containerd_main_pid(&node);
        now != before && now != "u 0" && node.unit_state("containerd") == "active"
    });
    let version = node.exec_ok(&["ctr", "version"]);
    assert!(version.contains("Server:"), "{version}");
    let journal = node.journal("containerd");
    assert!(
        journal.matches("containerd successfully booted").count() >= 2,
        "two starts in the journal:\n{journal}"
    );
}

#[test]
fn net_sysctl_written_inside_a_node_is_live_there_and_not_on_the_host() {
    let key = "net.ipv4.ip_forward";
    let proc_path = "/proc/sys/net/ipv4/ip_forward";
    let host_before = std::fs::read_to_string(proc_path).unwrap();
    let wanted = if host_before.trim() == "1" { "0" } else { "1" };
    let node = Node::boot("node-sysctl");

    node.exec_ok(&["sysctl", "-w", &format!("{key}={wanted}")]);

    assert_eq!(node.exec_ok(&["sysctl", "-n", key]).trim(), wanted);
    assert_eq!(node.exec_ok(&["cat", proc_path]).trim(), wanted);
    assert_eq!(std::fs::read_to_string(proc_path).unwrap(), host_before);
    let netns_view = opi_tests::ok(opi_tests::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &node.network().netns,
        "cat",
        proc_path,
    ])));
    assert_eq!(
        netns_view.trim(),
        wanted,
        "the node's namespace is the one made for it"
    );
}

#[test]
fn a_node_is_gone_from_the_host_after_drop() {
    let node = Node::boot("node-drop");
    let netns = node.network().netns.clone();
    let host_if = node.network().host_if.clone();
    let dir = node.dir().to_path_buf();
    let cgroups = node.cgroup().dirs().to_vec();
    assert!(cgroups.iter().all(|dir| dir.join("payload").exists()));
    drop(node);

    let links = opi_tests::ok(opi_tests::run(
        std::process::Command::new("ip").args(["-o", "link"]),
    ));
    assert!(!links.contains(&host_if), "{host_if} still on the host");
    let namespaces = opi_tests::ok(opi_tests::run(
        std::process::Command::new("ip").args(["netns", "list"]),
    ));
    assert!(
        !namespaces
            .lines()
            .any(|line| line.split_whitespace().next() == Some(&netns)),
        "{netns} still listed: {namespaces}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    for dir in cgroups {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
}

#[test]
fn node_root_build_names_the_mirror_it_cannot_reach() {
    let cache = TempDir::new().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-node-root");
    let output = opi_tests::run(
        std::process::Command::new(script)
            .env("OPI_NODE_CACHE", cache.path())
            .env("OPI_NODE_MIRROR", "http://mirror.invalid/debian"),
    );
    let stderr = opi_tests::fails(output);
    assert!(
        stderr.contains("cannot resolve mirror.invalid") && stderr.contains("OPI_NODE_MIRROR"),
        "{stderr}"
    );
}
