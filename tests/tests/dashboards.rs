//! The Grafana dashboard and the Prometheus rules shipped in `deploy/` use only metrics the
//! manager really exports, and the rules pass `promtool check rules` and their unit tests;
//! every alert, pushed by the manager or raised by the rules, has its runbook section, which
//! its `runbook_url` names.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use opi_tests::{ok, run, system_bin, Manager};
use tempfile::TempDir;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Metric families named in PromQL text: identifiers starting with `opi_` or `process_`, with
/// histogram suffixes folded into their family.
fn metric_names(promql: &str) -> BTreeSet<String> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("opi_") || word.starts_with("process_"))
        .map(|word| word.trim_end_matches("_bucket").to_string())
        .collect()
}

fn exported_families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn dashboard_and_rules_use_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/opi-fleet.json")).unwrap())
            .unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            used.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    used.extend(metric_names(
        &std::fs::read_to_string(deploy("prometheus/opi-manager.rules.yml")).unwrap(),
    ));
    assert!(
        used.len() >= 8,
        "the dashboard and rules name the manager's metrics: {used:?}"
    );

    let dir = TempDir::new().unwrap();
    let mut manager =
        Manager::init(dir.path(), "e2e").with_args(&["--metrics-listen", "127.0.0.1:0"]);
    manager.start();
    let exported = exported_families(&manager.scrape());
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "not exported by the manager: {missing:?}"
    );
}

#[test]
fn prometheus_rules_are_valid_and_fire_when_they_should() {
    let promtool = system_bin("promtool", "prometheus");
    ok(run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(deploy("prometheus/opi-manager.rules.yml"))));
    ok(run(Command::new(&promtool)
        .arg("test")
        .arg("rules")
        .arg(deploy("prometheus/opi-manager.rules.test.yml"))));
}

/// The alerts the manager pushes itself (`manager/src/alerts/model.rs`).
const PUSHED_ALERTS: [&str; 9] = [
    "OpiNodeOffline",
    "OpiPoolNodesOffline",
    "OpiManagerLostMostAgents",
    "OpiNodeDegraded",
    "OpiNodeCertificateExpiring",
    "OpiRolloutHalted",
    "OpiManagerStoreErrors",
    "OpiManagerCertificateExpiring",
    "OpiManagerHeartbeat",
];

#[test]
fn every_alert_has_a_runbook_section_and_rules_link_to_it() {
    let runbooks_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/runbooks.md");
    let runbooks = std::fs::read_to_string(runbooks_path).unwrap();
    let sections: BTreeSet<&str> = runbooks
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .collect();
    let rules = std::fs::read_to_string(deploy("prometheus/opi-manager.rules.yml")).unwrap();
    let mut rule_alerts = Vec::new();
    let mut links = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            rule_alerts.push(name.to_string());
        }
        if let Some(url) = line.strip_prefix("runbook_url: ") {
            links.push(url.trim_matches('"').to_string());
        }
    }
    assert_eq!(rule_alerts.len(), 5, "{rules}");

    for alert in PUSHED_ALERTS
        .iter()
        .copied()
        .chain(rule_alerts.iter().map(String::as_str))
    {
        assert!(
            sections.contains(alert),
            "docs/runbooks.md has no `## {alert}`"
        );
    }
    assert_eq!(links.len(), rule_alerts.len(), "one runbook_url per rule");
    for (alert, link) in rule_alerts.iter().zip(&links) {
        let wanted = format!(
            "/usr/share/doc/opi-manager/runbooks.md#{}",
            alert.to_lowercase()
        );
        assert_eq!(link, &wanted);
    }
}

#[test]
fn pushed_alerts_link_to_their_runbook_section() {
    let dir = TempDir::new().unwrap();
    let am = opi_tests::alertmanager::Alertmanager::start(dir.path());
    let mut manager = Manager::init(dir.path(), "runbooks").with_args(&[
        "--alertmanager",
        &am.url(),
        "--runbooks",
        "https://docs.example/opi/runbooks.md",
    ]);
    manager.start();

    let mut heartbeat = None;
    opi_tests::wait_until(
        opi_tests::WAIT,
        "the heartbeat alert in Alertmanager",
        || {
            heartbeat = am.alerts().into_iter().find(|alert| {
                opi_tests::alertmanager::has_label(alert, "alertname", "OpiManagerHeartbeat")
            });
            heartbeat.is_some()
        },
    );
    let alert = heartbeat.expect("found above");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "https://docs.example/opi/runbooks.md#opimanagerheartbeat"
    );
}
