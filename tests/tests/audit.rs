//! The audit log end to end: filtered listings, one JSON log line per entry without secrets,
//! and tamper evidence: entries edited or deleted in the SQLite file itself are named by
//! `opictl audit verify`, and truncation shows against an exported checkpoint.

use std::path::Path;
use std::time::Duration;

use opi_tests::{fails, ok, Manager, Opictl};
use serde_json::Value;
use tempfile::TempDir;

/// A started manager with a few audited changes: three tokens made, one revoked.
fn manager_with_history(dir: &Path, extra: &[&str]) -> (Manager, Opictl, String) {
    let mut manager = Manager::init(dir, "audit").with_args(extra);
    manager.start();
    let opictl = manager.opictl();
    let mut secret = String::new();
    for _ in 0..3 {
        secret = opictl.create_token("workers", 1, &[]).1;
    }
    let id = secret.split('.').next().expect("token id").to_string();
    ok(opictl.run(&["token", "revoke", &id]));
    (manager, opictl, secret)
}

fn sqlite(manager: &Manager) -> rusqlite::Connection {
    rusqlite::Connection::open(manager.data_dir.join("fleet.db")).expect("fleet.db opens")
}

/// The audit entries as `opictl audit -o json` prints them, oldest first.
fn entries(opictl: &Opictl, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "--limit", "500"];
    args.extend(extra);
    let listed = opictl.json(&args);
    listed.as_array().expect("audit entries").clone()
}

#[test]
fn an_untouched_log_verifies_and_entries_are_chained_in_order() {
    let dir = TempDir::new().unwrap();
    let (_manager, opictl, _) = manager_with_history(dir.path(), &[]);

    let all = entries(&opictl, &[]);
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{all:?}");
    let verified = opictl.json(&["audit", "verify"]);
    assert_eq!(verified["entries"], seqs.len() as u64);
    assert_eq!(verified["last"], seqs.len() as u64);
}

#[test]
fn audit_filters_by_action_actor_and_time() {
    let dir = TempDir::new().unwrap();
    let (_manager, opictl, _) = manager_with_history(dir.path(), &[]);

    let tokens = entries(&opictl, &["--action", "token"]);
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    let revoked = entries(&opictl, &["--action", "token.revoke"]);
    assert_eq!(revoked.len(), 1);
    let by_admin = entries(
        &opictl,
        &["--actor", "operator/admin", "--action", "token.create"],
    );
    assert_eq!(by_admin.len(), 3);
    assert!(entries(&opictl, &["--actor", "nobody"]).is_empty());
    assert_eq!(
        entries(&opictl, &["--since", "1h"]).len(),
        entries(&opictl, &[]).len()
    );
    assert!(entries(&opictl, &["--since", "2099-01-01T00:00:00Z"]).is_empty());
    let refused = fails(opictl.run(&["audit", "--since", "yesterday-ish"]));
    assert!(refused.contains("neither a duration"), "{refused}");
}

#[test]
fn every_entry_is_one_json_log_line_without_token_secrets() {
    let dir = TempDir::new().unwrap();
    let (manager, _opictl, secret) = manager_with_history(dir.path(), &["--log-format", "json"]);

    let log = manager.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "opi_audit")
        .collect();
    let created: Vec<&Value> = lines
        .iter()
        .filter(|line| line["fields"]["action"] == "token.create")
        .collect();
    assert_eq!(created.len(), 3, "{log}");
    let line = created[0];
    for field in [
        "seq",
        "at",
        "actor",
        "subject",
        "outcome",
        "remote_addr",
        "hash",
    ] {
        assert!(
            !line["fields"][field].is_null(),
            "{field} missing in {line}"
        );
    }
    let token_secret = secret.split('.').nth(1).expect("secret part");
    assert!(
        !log.contains(token_secret),
        "a token secret reached the log"
    );
}

#[test]
fn an_entry_edited_in_the_store_file_is_named_by_verify() {
    let dir = TempDir::new().unwrap();
    let (_manager, opictl, _) = manager_with_history(dir.path(), &[]);
    let revoke = entries(&opictl, &["--action", "token.revoke"]);
    let seq = revoke[0]["seq"].as_u64().unwrap();

    let changed = sqlite(&_manager)
        .execute(
            "UPDATE kv SET value = CAST(replace(CAST(value AS TEXT), 'token.revoke', \
             'token.create') AS BLOB) WHERE key LIKE 'audit/%' AND CAST(value AS TEXT) LIKE \
             '%token.revoke%'",
            [],
        )
        .expect("edit the entry");
    assert_eq!(changed, 1);

    let refused = fails(opictl.run(&["audit", "verify"]));
    assert!(refused.contains("tampered"), "{refused}");
    let named = format!("entry {seq} (token.create");
    assert!(
        refused.contains(&named) && refused.contains("was edited"),
        "{refused}"
    );
}

#[test]
fn a_deleted_entry_is_named_and_truncation_shows_against_an_exported_checkpoint() {
    let dir = TempDir::new().unwrap();
    let (manager, opictl, _) = manager_with_history(dir.path(), &[]);
    let file = dir.path().join("checkpoint.json");
    let exported = opictl.json(&["audit", "checkpoint", "--out", file.to_str().unwrap()]);
    let last = exported["seq"].as_u64().unwrap();
    assert!(last >= 5, "{exported}");
    ok(opictl.run(&["audit", "verify", "--checkpoint", file.to_str().unwrap()]));

    // One entry from the middle: its number goes missing.
    let db = sqlite(&manager);
    let key: String = db
        .query_row(
            "SELECT key FROM kv WHERE key LIKE 'audit/%' AND CAST(value AS TEXT) LIKE '%\"seq\":2,%'",
            [],
            |row| row.get(0),
        )
        .expect("entry 2");
    db.execute("DELETE FROM kv WHERE key = ?1", [&key]).unwrap();
    let refused = fails(opictl.run(&["audit", "verify"]));
    assert!(
        refused.contains("entry 2 is missing (deleted)"),
        "{refused}"
    );
}

#[test]
fn a_cut_tail_passes_alone_but_not_against_the_exported_checkpoint() {
    let dir = TempDir::new().unwrap();
    let (manager, opictl, _) = manager_with_history(dir.path(), &[]);
    let file = dir.path().join("checkpoint.json");
    let exported = opictl.json(&["audit", "checkpoint", "--out", file.to_str().unwrap()]);
    let last = exported["seq"].as_u64().unwrap();

    // Whoever holds the store removes the last entry and the checkpoints kept in it.
    let db = sqlite(&manager);
    let pattern = format!("%\"seq\":{last},%");
    let removed = db
        .execute(
            "DELETE FROM kv WHERE (key LIKE 'audit/%' AND CAST(value AS TEXT) LIKE ?1) OR key \
             LIKE 'audit-checkpoints/%'",
            [&pattern],
        )
        .unwrap();
    assert!(removed >= 2);
    // The documented limit: without an exported checkpoint, a cut tail is a shorter log.
    ok(opictl.run(&["audit", "verify"]));
    let refused = fails(opictl.run(&["audit", "verify", "--checkpoint", file.to_str().unwrap()]));
    let deleted = format!("entries {last} to {last} were deleted");
    assert!(refused.contains(&deleted), "{refused}");
}

#[test]
fn the_manager_signs_checkpoints_by_itself_when_the_log_moved() {
    let dir = TempDir::new().unwrap();
    let (_manager, opictl, _) =
        manager_with_history(dir.path(), &["--audit-checkpoint-every", "1s"]);
    let every = opi_tests::POLL_OPICTL;
    opi_tests::wait_until_every(
        every,
        Duration::from_secs(10),
        "a periodic checkpoint",
        || {
            let verified = opictl.json(&["audit", "verify"]);
            verified["checkpoints"].as_u64() >= Some(1)
                && verified["covered_up_to"] == verified["last"]
        },
    );
}
