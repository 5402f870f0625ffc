//! ANSSI-BP-028 evidence end to end. Each level applied by `opi-agent apply` to a fresh
//! Debian 12 root (the `/etc` and `/boot` of the cached node root, so that the real
//! `/etc/shadow`, `/etc/login.defs` and their owners are there) and observed back item by
//! item with `opi-agent compliance`; an exception without a reason refused by agent and
//! manager; a hand edit failing its recommendation and showing as drift; and a real manager
//! receiving the evidence, rolling it up fleet-wide (table, JSON, CSV), raising an event when
//! a verdict changes, and signing a report that `opictl compliance verify` and openssl both
//! check offline against the fleet root CA.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use opi_proto::v1::Event;
use opi_tests::{
    bin, fails, node, ok, run, system_bin, wait_until_every, Agent, Manager, Opictl, POLL_OPICTL,
};
use serde_json::Value;
use tempfile::TempDir;

/// The worker profile shipped in the repository.
const WORKER: &str = include_str!("../../deploy/profiles/worker.yaml");
/// The control-plane profile shipped in the repository.
const CONTROL_PLANE: &str = include_str!("../../deploy/profiles/control-plane.yaml");
/// Checks of these roots: nothing runs under them, so only drift and exceptions.
const HEALTH: &str = "version = 1\nchecks = [\"ConfigDrift\", \"HardeningExceptionExpired\"]\n";
/// Bound for an apply, its evidence and its events to reach the manager.
const EVIDENCE_WAIT: Duration = Duration::from_secs(30);

/// A fresh Debian 12 root under `dir`: `/etc` and `/boot` of the cached node root.
fn debian_root(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(name);
    fs::create_dir_all(&root).unwrap();
    let cached = opi_tests::node::root::cached();
    for part in ["etc", "boot"] {
        ok(run(Command::new("cp")
            .arg("-a")
            .arg(cached.join(part))
            .arg(&root)));
    }
    fs::create_dir_all(root.join("etc/opi-agent")).unwrap();
    fs::write(root.join("etc/opi-agent/health.toml"), HEALTH).unwrap();
    root
}

fn agent(root: &Path, args: &[&str]) -> Output {
    run(Command::new(bin("opi-agent"))
        .args(args)
        .arg("--root")
        .arg(root))
}

fn profile_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn evidence(root: &Path) -> Value {
    let text = ok(agent(root, &["compliance", "-o", "json"]));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Every item of `evidence`, by name, with its recommendation.
fn items(evidence: &Value) -> BTreeMap<String, (String, Value)> {
    let mut items = BTreeMap::new();
    for rule in evidence["rules"].as_array().expect("rules") {
        for item in rule["items"].as_array().expect("items") {
            let id = item["id"].as_str().expect("item id").to_string();
            let number = rule["number"].as_str().expect("rule number").to_string();
            items.insert(id, (number, item.clone()));
        }
    }
    items
}

#[test]
fn each_level_applied_to_a_fresh_debian_root_shows_every_item_it_sets() {
    let dir = TempDir::new().unwrap();
    let levels = [
        ("anssi-bp028-minimal", 11),
        ("anssi-bp028-intermediary", 40),
        ("anssi-bp028-enhanced", 58),
        ("anssi-bp028-high", 80),
    ];
    for (baseline, rules) in levels {
        let root = debian_root(dir.path(), baseline);
        let text = format!(
            "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening: {{baseline: {baseline}}}\napply: {{allowReboot: true}}\n"
        );
        let profile = profile_file(dir.path(), &format!("{baseline}.yaml"), &text);
        ok(agent(
            &root,
            &["apply", "--profile", profile.to_str().unwrap()],
        ));

        let evidence = evidence(&root);
        assert_eq!(evidence["baseline"], baseline);
        assert_eq!(evidence["live"], false, "files only under --root");
        assert_eq!(
            evidence["rules"].as_array().unwrap().len(),
            rules,
            "{baseline}"
        );
        let items = items(&evidence);
        let expected = opi_profile::hardening::baseline::resolve(baseline).unwrap();
        assert_eq!(
            items.len(),
            expected.len(),
            "{baseline}: every baseline item observed"
        );
        for (id, (rule, item)) in &items {
            assert_eq!(item["status"], "pass", "{baseline} {rule} {id}: {item}");
            let wanted = &expected[&opi_profile::hardening::ItemId(id.clone())];
            assert_eq!(
                Some(rule.as_str()),
                wanted.guide.as_ref().map(|g| g.rule.as_str()),
                "{id} reported under its recommendation"
            );
        }
        // Observed values, as the node's own files hold them.
        assert_eq!(items["login.defs/ENCRYPT_METHOD"].1["observed"], "YESCRYPT");
        assert_eq!(items["module/usb-storage"].1["observed"], "blacklisted");
        assert_eq!(items["pwquality/minlen"].1["observed"], "15");
        if baseline != "anssi-bp028-minimal" {
            assert_eq!(items["file/etc/shadow"].1["observed"], "0640 root:shadow");
            assert_eq!(items["sysctl/net.ipv4.ip_forward"].1["source"], "file");
            assert!(items["sysctl/net.ipv4.ip_forward"].1["deviation"]["reason"]
                .as_str()
                .unwrap()
                .contains("pod"));
            assert_eq!(items["sudo/use_pty"].1["observed"], "true");
            assert_eq!(items["file/etc/sudoers.d"].1["observed"], "0750 root:root");
        }
        if baseline == "anssi-bp028-enhanced" || baseline == "anssi-bp028-high" {
            assert_eq!(items["login.defs/UMASK"].1["observed"], "077");
            assert_eq!(items["file/boot"].1["observed"], "0700 root:root");
            let login_defs = fs::read_to_string(root.join("etc/login.defs")).unwrap();
            assert!(login_defs.contains("\nUMASK\t077\n"), "edited in place");
            assert!(
                login_defs.contains("MAIL_DIR"),
                "the image's other keys kept"
            );
        }
    }
}

#[test]
fn an_exception_without_a_reason_is_refused_by_the_agent_and_the_manager() {
    let dir = TempDir::new().unwrap();
    let root = debian_root(dir.path(), "node");
    let text = "apiVersion: opi.fleet/v1
kind: NodeProfile
hardening:
  baseline: anssi-bp028-intermediary
  exceptions:
    - {item: sudo/requiretty, approver: secops@example.gouv.fr, expires: \"2027-06-30\"}
";
    let profile = profile_file(dir.path(), "no-reason.yaml", text);
    let output = agent(&root, &["apply", "--profile", profile.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("hardening.exceptions[0].reason: missing: every exception needs a reason"),
        "{error}"
    );
    assert!(
        !root.join("etc/sudoers.d/opi-fleet").exists(),
        "nothing applied"
    );

    let mut manager = Manager::init(dir.path(), "reasons");
    manager.start();
    let refused = fails(manager.opictl().run(&[
        "profile",
        "set",
        "workers",
        "-f",
        profile.to_str().unwrap(),
    ]));
    assert!(
        refused.contains("every exception needs a reason"),
        "{refused}"
    );
}

#[test]
fn a_hand_edit_of_a_hardened_file_fails_its_recommendation_and_shows_as_drift() {
    let dir = TempDir::new().unwrap();
    let root = debian_root(dir.path(), "node");
    let profile = profile_file(dir.path(), "control-plane.yaml", CONTROL_PLANE);
    ok(agent(
        &root,
        &["apply", "--profile", profile.to_str().unwrap()],
    ));
    assert!(items(&evidence(&root))
        .values()
        .all(|(_, item)| item["status"] == "pass"));

    let login_defs = root.join("etc/login.defs");
    let text = fs::read_to_string(&login_defs).unwrap();
    fs::write(
        &login_defs,
        text.replace("ENCRYPT_METHOD\tYESCRYPT", "ENCRYPT_METHOD MD5"),
    )
    .unwrap();
    let evidence = evidence(&root);
    let (rule, item) = &items(&evidence)["login.defs/ENCRYPT_METHOD"];
    assert_eq!(
        (rule.as_str(), &item["status"], &item["observed"]),
        ("R68", &"fail".into(), &"MD5".into())
    );
    let r68 = evidence["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["number"] == "R68")
        .unwrap();
    assert_eq!(r68["status"], "fail");

    let health: Value = serde_json::from_str(&ok(agent(&root, &["health", "-o", "json"]))).unwrap();
    let drift = health["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ConfigDrift")
        .expect("ConfigDrift checked")
        .clone();
    assert_eq!(drift["status"], "PROBLEM", "{drift}");
    let message = drift["message"].as_str().unwrap();
    assert!(
        message.contains("/etc/login.defs: ENCRYPT_METHOD is MD5, applied YESCRYPT"),
        "{message}"
    );
}

/// The compliance events of `name` after revision `since`, until `done` says enough.
fn compliance_events(
    manager: &Manager,
    name: &str,
    since: u64,
    done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    manager.node_events(name, "compliance", since, EVIDENCE_WAIT, done)
}

fn fleet_evidence(opictl: &Opictl, name: &str) -> Value {
    let nodes = opictl.json(&["compliance"]);
    let found = nodes.as_array().unwrap().iter().find(|n| n["node"] == name);
    found.cloned().unwrap_or(Value::Null)
}

#[test]
fn evidence_reaches_the_manager_rolls_up_fleet_wide_and_a_signed_report_verifies_offline() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "audit").with_args(&["--heartbeat", "1s"]);
    manager.start();
    let opictl = manager.opictl();
    let mut agent = Agent::new(dir.path(), "worker-1");
    fs::remove_dir(&agent.root).unwrap();
    agent.root = debian_root(dir.path(), "worker-1");
    let (_, token) = opictl.create_token("workers", 1, &[]);
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent.start();
    let worker = profile_file(dir.path(), "worker.yaml", WORKER);
    ok(opictl.run(&["profile", "set", "workers", "-f", worker.to_str().unwrap()]));

    wait_until_every(POLL_OPICTL, EVIDENCE_WAIT, "the worker's evidence", || {
        fleet_evidence(&opictl, "worker-1")["baseline"] == "anssi-bp028-intermediary"
    });
    let seen = fleet_evidence(&opictl, "worker-1");
    assert_eq!(seen["counts"]["fail"], 0, "{seen}");
    assert_eq!(
        seen["counts"]["exception"], 2,
        "R12 and R39 are excepted: {seen}"
    );
    assert_eq!(seen["generation"], 1);
    let r39 = seen["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "R39")
        .unwrap();
    let tty = r39["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["item"] == "sudo/requiretty")
        .unwrap();
    assert_eq!(tty["exception"]["approver"], "secops@example.gouv.fr");
    assert_eq!(tty["exception"]["expires"], "2027-06-30");

    let table = ok(opictl.run(&["compliance"]));
    assert!(
        table.contains("worker-1   workers   anssi-bp028-intermediary"),
        "{table}"
    );
    let csv = ok(opictl.run(&["compliance", "-o", "csv", "--pool", "workers"]));
    assert!(
        csv.starts_with("node,pool,baseline,since,rule,level,status,"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().count(),
        41,
        "a header and a row per recommendation: {csv}"
    );
    assert!(
        csv.contains(",R39,intermediary,exception,sudo/requiretty,"),
        "{csv}"
    );
    let refused = fails(opictl.run(&["nodes", "-o", "csv"]));
    assert!(
        refused.contains("-o csv is only for `opictl compliance`"),
        "{refused}"
    );

    // A hand edit shows within the drift interval as a condition and as an event.
    let since = opictl.json(&["status"])["event_revision"].as_u64().unwrap();
    let sudo = agent.root.join("etc/sudoers.d/opi-fleet");
    let text = fs::read_to_string(&sudo).unwrap();
    fs::write(&sudo, text.replace("Defaults use_pty", "Defaults !use_pty")).unwrap();
    let events = compliance_events(&manager, "worker-1", since, |events| {
        events.iter().any(|e| e.subject == "R39" && e.to == "fail")
    });
    let failed = events
        .iter()
        .find(|e| e.subject == "R39")
        .expect("an R39 event");
    assert_eq!(failed.from, "exception");
    assert!(
        failed
            .message
            .contains("sudo/use_pty observed false, expected true"),
        "{}",
        failed.message
    );
    wait_until_every(
        POLL_OPICTL,
        EVIDENCE_WAIT,
        "the ConfigDrift condition",
        || {
            let nodes = opictl.nodes();
            let conditions = node(&nodes, "worker-1").unwrap()["conditions"].clone();
            conditions.as_array().unwrap().iter().any(|c| {
                c["type"] == "ConfigDrift"
                    && c["status"] == "problem"
                    && c["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("/etc/sudoers.d/opi-fleet")
            })
        },
    );

    // The signed report, verified offline with the root CA by opictl and by openssl.
    let viewer = manager.operator(dir.path(), "vera", "viewer");
    assert!(viewer.json(&["compliance"]).as_array().unwrap().len() == 1);
    let out = dir.path().join("report");
    let denied = fails(viewer.run(&["compliance", "report", "--out", out.to_str().unwrap()]));
    assert!(
        denied.contains("role viewer may not sign compliance reports"),
        "{denied}"
    );
    let written = ok(opictl.run(&["compliance", "report", "--out", out.to_str().unwrap()]));
    assert!(written.contains("spiffe://audit/manager/"), "{written}");
    let document = out.join("compliance-report.json");
    let root_ca = manager.data_dir.join("pki/root-ca.pem");
    let verified = ok(opictl.run(&[
        "compliance",
        "verify",
        document.to_str().unwrap(),
        "--ca",
        root_ca.to_str().unwrap(),
    ]));
    assert!(
        verified.contains("1 (1 with evidence, 0 compliant, 2 exception(s), 0 expired)"),
        "{verified}"
    );
    let report: Value = serde_json::from_slice(&fs::read(&document).unwrap()).unwrap();
    assert_eq!(report["summary"]["failing"]["worker-1"][0], "R39");
    assert_eq!(
        report["nodes"][0]["history"].as_array().unwrap().len(),
        2,
        "before and after the edit"
    );
    let markdown = fs::read_to_string(out.join("compliance-report.md")).unwrap();
    assert!(markdown.contains("| worker-1 | R39 | `sudo/requiretty` | the node's automation runs sudo without a terminal | secops@example.gouv.fr | 2027-06-30 |"), "{markdown}");

    openssl_verifies(&out, &root_ca, &report);
    let tampered = String::from_utf8(fs::read(&document).unwrap())
        .unwrap()
        .replace("\"compliant\": 0", "\"compliant\": 1");
    fs::write(&document, tampered).unwrap();
    let output = opictl.run(&[
        "compliance",
        "verify",
        document.to_str().unwrap(),
        "--ca",
        root_ca.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("the signature does not match the document"));
    let openssl = run(Command::new(system_bin("openssl", "openssl"))
        .args(["dgst", "-sha256", "-verify"])
        .arg(out.join("signer.pub"))
        .arg("-signature")
        .arg(out.join("compliance-report.json.sig"))
        .arg(&document));
    assert!(
        !openssl.status.success(),
        "openssl refuses the edited document too"
    );
    agent.stop();
}

/// The README's openssl commands: the chain against the root at the report's time, then the
/// signature with the signer's public key.
fn openssl_verifies(out: &Path, root_ca: &Path, report: &Value) {
    let openssl = system_bin("openssl", "openssl");
    let chain = out.join("compliance-report.chain.pem");
    let generated = humantime::parse_rfc3339(report["generated_at"].as_str().unwrap()).unwrap();
    let at = generated
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let verify = ok(run(Command::new(&openssl)
        .arg("verify")
        .arg("-CAfile")
        .arg(root_ca)
        .arg("-untrusted")
        .arg(&chain)
        .args(["-attime", &at])
        .arg(&chain)));
    assert!(verify.contains(": OK"), "{verify}");
    let key = ok(run(Command::new(&openssl)
        .arg("x509")
        .arg("-in")
        .arg(&chain)
        .args(["-pubkey", "-noout"])));
    fs::write(out.join("signer.pub"), key).unwrap();
    let dgst = ok(run(Command::new(&openssl)
        .args(["dgst", "-sha256", "-verify"])
        .arg(out.join("signer.pub"))
        .arg("-signature")
        .arg(out.join("compliance-report.json.sig"))
        .arg(out.join("compliance-report.json"))));
    assert_eq!(dgst.trim(), "Verified OK");
}
