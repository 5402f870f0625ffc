//! Operator identity end to end: an admin invites, `opictl login` trades the one-time code and
//! a CSR for a short-lived certificate of the invited role, every call is authorised by that
//! role, logins are audited, and `--operator-listen` moves the operator API to its own port.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use opi_tests::{bin, fails, ok, run, Agent, Manager, Opictl};
use serde_json::Value;
use tempfile::TempDir;

/// `opictl operator invite NAME --role ROLE` as the admin; returns the code.
fn invite(admin: &Opictl, name: &str, role: &str, cert_ttl: &str) -> String {
    let invited = admin.json(&[
        "operator",
        "invite",
        name,
        "--role",
        role,
        "--cert-ttl",
        cert_ttl,
    ]);
    assert!(
        invited["login_command"]
            .as_str()
            .unwrap()
            .contains("--ca-pin sha256:"),
        "{invited}"
    );
    invited["code"].as_str().expect("code").to_string()
}

/// `opictl login` with `code` written to a file; returns opictl's output.
fn login(manager: &Manager, dir: &Path, code: &str, out: &Path) -> std::process::Output {
    let code_file = dir.join("code");
    fs::write(&code_file, code).unwrap();
    run(Command::new(bin("opictl"))
        .args([
            "login",
            "--manager",
            &manager.endpoint(),
            "--ca-pin",
            &manager.ca_pin(),
        ])
        .arg("--code-file")
        .arg(&code_file)
        .arg("--out")
        .arg(out)
        .args(["-o", "json"]))
}

fn as_bundle(manager: &Manager, config: PathBuf) -> Opictl {
    Opictl {
        config,
        endpoint: manager.endpoint(),
    }
}

#[test]
fn login_with_a_one_time_code_gets_a_short_certificate_of_the_invited_role() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "ops");
    manager.start();
    let admin = manager.opictl();
    let code = invite(&admin, "alice", "viewer", "2h");

    let bundle = dir.path().join("alice.toml");
    let logged = ok(login(&manager, dir.path(), &code, &bundle));
    let logged: Value = serde_json::from_str(&logged).unwrap();
    assert_eq!(logged["role"], "viewer");
    assert_eq!(opi_tests::mode(&bundle), 0o600);
    let alice = as_bundle(&manager, bundle.clone());
    let who = alice.json(&["whoami"]);
    assert_eq!(who["identity"], "spiffe://ops/operator/alice");
    let not_after = time::OffsetDateTime::parse(
        who["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = not_after - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::hours(2) && left > time::Duration::minutes(110),
        "{left}"
    );

    // The role is the invited one: a viewer reads but cannot create tokens.
    ok(alice.run(&["nodes"]));
    let refused = fails(alice.run(&["token", "create", "--pool", "p"]));
    assert!(
        refused.contains("role viewer may not create tokens"),
        "{refused}"
    );

    // Once only, and audited both ways with where the login came from.
    let again = fails(login(
        &manager,
        dir.path(),
        &code,
        &dir.path().join("again.toml"),
    ));
    assert!(
        again.contains("unknown, used, revoked or expired"),
        "{again}"
    );
    let logins = admin.json(&["audit", "--action", "operator.login"]);
    let outcomes: Vec<&str> = logins
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "refused"], "{logins}");
    assert!(logins[0]["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let invites = admin.json(&["audit", "--action", "operator.invite"]);
    assert_eq!(invites.as_array().unwrap().len(), 1);
    // The key was made here: no line of it is in the manager's store or log.
    let key = opi_pki::bundle::OperatorBundle::read(&bundle).unwrap().key;
    let key_line = key.lines().nth(1).expect("a base64 line of the key");
    let store = fs::read(manager.data_dir.join("fleet.db")).unwrap();
    let store = String::from_utf8_lossy(&store);
    assert!(!store.contains(key_line) && !manager.log_text().contains(key_line));
}

#[test]
fn invites_are_for_admins_and_lifetimes_are_capped() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "ops");
    manager.start();
    let operator = manager.operator(dir.path(), "bob", "operator");
    let refused = fails(operator.run(&["operator", "invite", "eve", "--role", "admin"]));
    assert!(
        refused.contains("role operator may not invite operators"),
        "{refused}"
    );

    let admin = manager.opictl();
    let too_long = fails(admin.run(&[
        "operator",
        "invite",
        "eve",
        "--role",
        "viewer",
        "--cert-ttl",
        "30days",
    ]));
    assert!(
        too_long.contains("cert ttl: must be more than 0 and at most 7 days"),
        "{too_long}"
    );
    let bad_role = fails(admin.run(&["operator", "invite", "eve", "--role", "root"]));
    assert!(bad_role.contains("role `root`"), "{bad_role}");
    let forged = "0123456789ab.abcdefghijklmnopqrstuvwxyz234567";
    let unknown = fails(login(
        &manager,
        dir.path(),
        forged,
        &dir.path().join("x.toml"),
    ));
    assert!(
        unknown.contains("login code 0123456789ab is unknown"),
        "{unknown}"
    );
}

#[test]
fn operator_listen_serves_operators_apart_from_the_agents_port() {
    let dir = TempDir::new().unwrap();
    let mut manager =
        Manager::init(dir.path(), "split").with_args(&["--operator-listen", "127.0.0.1:0"]);
    manager.start();
    let text = fs::read_to_string(manager.data_dir.join("run/operator-listen-addr")).unwrap();
    let operator_endpoint = format!("https://{}", text.trim());
    let on_operator_port = Opictl {
        config: manager.admin_bundle(),
        endpoint: operator_endpoint.clone(),
    };
    let on_agents_port = manager.opictl();

    ok(on_operator_port.run(&["status"]));
    let refused = fails(on_agents_port.run(&["status"]));
    assert!(refused.contains("Unimplemented"), "{refused}");

    // Agents enroll and connect on their port, and only there.
    let (_, token) = on_operator_port.create_token("workers", 2, &[]);
    let agent = Agent::new(dir.path(), "w1");
    let wrong_port = fails(agent.enroll(&operator_endpoint, &manager.ca_pin(), &token));
    assert!(
        wrong_port.contains("Unimplemented") || wrong_port.contains("unimplemented"),
        "{wrong_port}"
    );
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    let mut agent = agent;
    agent.start();
    opi_tests::wait_until_every(
        opi_tests::POLL_OPICTL,
        Duration::from_secs(10),
        "the agent online",
        || opi_tests::all_online(&on_operator_port, &["w1"]),
    );
}
