//! The intermediary baseline on a real node (a Debian 12 root booted with systemd-nspawn,
//! tests/src/node), applied by `opi-agent apply --root /` inside it: the `net.*` items are
//! set in the node's own network namespace and the evidence reads them live. `kernel.*`,
//! `vm.*` and `fs.*` sysctls are read-only inside a container (and host-wide `net.core`
//! ones absent), so this node's floor holds a `net.*` bound only and its profile lifts those
//! items with an exception saying so: their evidence is `exception`, with the host's value
//! observed. Needs root (as CI has).

use std::collections::BTreeMap;

use opi_tests::hardening::{container_profile, settable, READ_ONLY};
use opi_tests::node::{Node, AGENT_PATH};
use serde_json::Value;

/// The profile file inside the node.
const PROFILE_PATH: &str = "/root/profile.yaml";

/// The intermediary baseline with an exception for every sysctl the node cannot set.
fn profile() -> String {
    container_profile("anssi-bp028-intermediary", "apply: {verifyTimeout: 30s}\n")
}

#[test]
fn the_intermediary_baseline_on_a_real_node_shows_its_net_sysctls_live() {
    let node = Node::boot("compliance-live");
    node.install_agent();
    node.write(
        "/etc/opi-agent/floor.toml",
        b"version = 1\n[sysctls.\"net.ipv4.conf.all.accept_redirects\"]\nmax = 0\n",
    );
    node.write(
        "/etc/opi-agent/health.toml",
        b"version = 1\nchecks = [\"ConfigDrift\"]\n",
    );
    node.write(PROFILE_PATH, profile().as_bytes());
    let applied = node.exec_ok(&[
        AGENT_PATH,
        "apply",
        "--profile",
        PROFILE_PATH,
        "--root",
        "/",
    ]);
    assert!(applied.contains("live sysctls:"), "{applied}");
    assert!(
        applied.contains("restart ssh.service (not installed on this node)"),
        "{applied}"
    );

    let text = node.exec_ok(&[AGENT_PATH, "compliance", "--root", "/", "-o", "json"]);
    let evidence: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(evidence["live"], true);
    let mut net = BTreeMap::new();
    for rule in evidence["rules"].as_array().unwrap() {
        for item in rule["items"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            let Some(key) = id.strip_prefix("sysctl/") else {
                continue;
            };
            if settable(key) {
                assert_eq!(item["status"], "pass", "{id}: {item}");
                assert_eq!(item["source"], "live", "{id}: {item}");
                net.insert(
                    key.to_string(),
                    item["observed"].as_str().unwrap().to_string(),
                );
            } else {
                assert_eq!(item["status"], "exception", "{id}: {item}");
                assert_eq!(item["exception"]["reason"], READ_ONLY);
                if item["scope"] == "live" {
                    assert_eq!(item["source"], "live", "the host's value, observed: {item}");
                }
            }
        }
    }
    assert!(net.len() >= 30, "{net:?}");
    // What the node's own sysctl reads, not only what the agent says.
    for key in [
        "net.ipv4.conf.all.accept_redirects",
        "net.ipv4.tcp_rfc1337",
        "net.ipv6.conf.all.max_addresses",
        "net.ipv4.ip_local_port_range",
    ] {
        let live = node.exec_ok(&["sysctl", "-n", key]);
        let live = live.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(net[key], live, "{key}");
    }
    assert_eq!(net["net.ipv4.ip_forward"], "1", "the Kubernetes deviation");

    // A live change by hand fails its recommendation.
    node.exec_ok(&["sysctl", "-w", "net.ipv4.tcp_syncookies=0"]);
    let text = node.exec_ok(&[AGENT_PATH, "compliance", "--root", "/", "-o", "json"]);
    let evidence: Value = serde_json::from_str(&text).unwrap();
    let r12 = evidence["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["number"] == "R12")
        .unwrap();
    assert_eq!(r12["status"], "fail");
    let syncookies = r12["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "sysctl/net.ipv4.tcp_syncookies")
        .unwrap();
    assert_eq!(syncookies["observed"], "0");
}
