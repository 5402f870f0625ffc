//! Every `opictl` command prints one JSON document with `-o json` (`watch` and `rollout status
//! --watch` print JSON Lines, tested in `fleet.rs` and `rollouts.rs`), and exits 0 on success, 1 when the manager refuses, 2 on a usage
//! or configuration error; against a real manager with a real agent.

use std::path::Path;

use opi_tests::{all_online, ok, wait_until, Agent, Manager, WAIT};
use serde_json::Value;
use tempfile::TempDir;

/// The worker profile shipped in `deploy/profiles/`.
fn worker_profile() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/profiles/worker.yaml")
        .display()
        .to_string()
}

#[test]
fn every_command_prints_json_with_o_json() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "json");
    manager.start();
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", 1, &[]);
    let mut agent = Agent::new(dir.path(), "json-node");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent.start();
    wait_until(WAIT, "json-node online", || {
        all_online(&opictl, &["json-node"])
    });
    let profile = worker_profile();

    let report = dir.path().join("report");
    let report = report.to_str().unwrap();
    let document = format!("{report}/compliance-report.json");
    let root_ca = manager.data_dir.join("pki/root-ca.pem");
    let root_ca = root_ca.to_str().unwrap();
    let commands: [&[&str]; 21] = [
        &["status"],
        &["nodes"],
        &["node", "show", "json-node"],
        &[
            "node",
            "maintenance",
            "on",
            "json-node",
            "--reason",
            "disk swap",
        ],
        &["node", "maintenance", "off", "json-node"],
        &["node", "move", "json-node", "--pool", "db"],
        &["token", "create", "--pool", "workers"],
        &["token", "list"],
        &["profile", "set", "db", "-f", &profile],
        &["profile", "show", "db"],
        &["profile", "diff", "db", "-f", &profile],
        // Its steering commands (pause, resume, abort, undo) print through the same code.
        &["rollout", "status", "db"],
        &["compliance", "--pool", "db"],
        &["compliance", "report", "--out", report],
        &["compliance", "verify", &document, "--ca", root_ca],
        &["audit", "--limit", "5"],
        &["whoami"],
        &["node", "revoke", "json-node", "--reason", "test"],
        &["node", "remove", "json-node"],
        &["token", "revoke", "PLACEHOLDER"],
        &["node", "delete", "nobody"],
    ];
    let mut token_id = String::new();
    for command in commands {
        let mut args: Vec<&str> = command.to_vec();
        if args == ["token", "revoke", "PLACEHOLDER"] {
            args[2] = &token_id;
        }
        if args.starts_with(&["node", "delete"]) {
            // Refused: the node does not exist; the error is on stderr, stdout stays empty.
            let output = opictl.run(&[&args[..], &["-o", "json"]].concat());
            assert_eq!(output.status.code(), Some(1), "{args:?}");
            assert!(output.stdout.is_empty(), "{args:?}");
            continue;
        }
        let value: Value = opictl.json(&args);
        assert!(value.is_object() || value.is_array(), "{args:?}: {value}");
        if args.starts_with(&["token", "create"]) {
            token_id = value["id"].as_str().expect("token id").to_string();
        }
    }
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "exit");
    manager.start();
    let opictl = manager.opictl();

    let bad_option = opictl.run(&["nodes", "--health", "sick"]);
    assert_eq!(bad_option.status.code(), Some(2));
    let missing_bundle =
        opi_tests::run(std::process::Command::new(opi_tests::bin("opictl")).args([
            "--config",
            "/nonexistent/opictl.toml",
            "status",
        ]));
    assert_eq!(missing_bundle.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing_bundle.stderr);
    assert!(
        stderr.contains("no operator bundle at /nonexistent/opictl.toml"),
        "{stderr}"
    );
}
