//! Evidence against a directory tree (`--root` other than `/`): every item of a freshly
//! applied baseline passes, a hand edit fails the item naming what is seen, exceptions show
//! with their reason and expire.

use std::fs;
use std::path::Path;

use opi_profile::{Floor, Profile};
use time::macros::date;

use super::*;
use crate::apply::engine;
use crate::apply::node::Node;
use crate::apply::verify::Verifier;
use crate::conditions::config::HealthConfig;
use crate::conditions::NodeFiles;
use crate::paths::StatePaths;

fn node(root: &Path) -> Node {
    let paths = StatePaths::new(root, Path::new(crate::paths::DEFAULT_STATE_DIR));
    Node::new(
        &paths,
        Path::new("/proc/sys"),
        Path::new("/nonexistent/bus"),
    )
}

fn verifier(root: &Path) -> Verifier {
    let health =
        HealthConfig::parse(Path::new("health.toml"), "version = 1\nchecks = []\n").unwrap();
    Verifier {
        health,
        files: NodeFiles::new(root),
        manager: None,
    }
}

/// A root with the files a Debian node has and the agent only re-owns or edits.
fn debian_like(root: &Path) {
    let files = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("etc/group", "root:x:0:\nshadow:x:42:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/login.defs", "UMASK\t\t022\nENCRYPT_METHOD SHA512\n"),
    ];
    for (path, text) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
}

async fn apply(root: &Path, profile: &str) {
    let desired = Profile::from_yaml(profile)
        .unwrap()
        .desired_state(&Floor::default())
        .unwrap();
    engine::apply(&node(root), &desired, "sha", &verifier(root))
        .await
        .unwrap();
}

fn profile(hardening: &str) -> String {
    format!("apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n{hardening}")
}

fn item<'a>(evidence: &'a Evidence, id: &str) -> &'a ItemEvidence {
    evidence
        .rules
        .iter()
        .flat_map(|r| &r.items)
        .find(|i| i.id == id)
        .unwrap_or_else(|| panic!("{id} in the evidence"))
}

#[tokio::test]
async fn every_item_of_a_fresh_enhanced_apply_passes_from_its_files() {
    let dir = tempfile::tempdir().unwrap();
    debian_like(dir.path());
    let text = profile("  baseline: anssi-bp028-enhanced\napply: {allowReboot: true}\n");
    apply(dir.path(), &text).await;

    let evidence = collect(&node(dir.path()), OffsetDateTime::now_utc())
        .unwrap()
        .expect("a baseline was applied");
    let failing: Vec<&ItemEvidence> = evidence
        .rules
        .iter()
        .flat_map(|r| &r.items)
        .filter(|i| i.status != Status::Pass)
        .collect();
    assert!(failing.is_empty(), "{failing:#?}");
    assert_eq!(
        evidence.rules.len(),
        58,
        "minimal, intermediary and enhanced"
    );
    assert!(!evidence.live);
    let umask = item(&evidence, "login.defs/UMASK");
    assert_eq!(
        (umask.observed.as_str(), umask.source),
        ("077", Source::File)
    );
    let shadow = item(&evidence, "file/etc/shadow");
    assert_eq!(shadow.observed, "0640 root:shadow");
    assert_eq!(evidence.summary.fail, 0);
}

#[tokio::test]
async fn a_hand_edit_fails_the_item_with_what_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    debian_like(dir.path());
    apply(
        dir.path(),
        &profile("  baseline: anssi-bp028-intermediary\n"),
    )
    .await;
    let sudo = dir.path().join("etc/sudoers.d/opi-fleet");
    let text = fs::read_to_string(&sudo).unwrap();
    fs::write(
        &sudo,
        text.replace("Defaults use_pty\n", "Defaults !use_pty\n"),
    )
    .unwrap();
    let sysctls = dir.path().join("etc/sysctl.d/90-opi-fleet.conf");
    let text = fs::read_to_string(&sysctls).unwrap();
    fs::write(
        &sysctls,
        text.replace("kernel.sysrq = 0", "kernel.sysrq = 1"),
    )
    .unwrap();

    let evidence = collect(&node(dir.path()), OffsetDateTime::now_utc())
        .unwrap()
        .unwrap();
    let pty = item(&evidence, "sudo/use_pty");
    assert_eq!((pty.status, pty.observed.as_str()), (Status::Fail, "false"));
    let sysrq = item(&evidence, "sysctl/kernel.sysrq");
    assert_eq!((sysrq.status, sysrq.observed.as_str()), (Status::Fail, "1"));
    let rules: Vec<&str> = evidence
        .rules
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| r.number.as_str())
        .collect();
    assert_eq!(rules, ["R9", "R39"]);
}

#[tokio::test]
async fn exceptions_show_their_reason_and_count_as_failures_once_expired() {
    let dir = tempfile::tempdir().unwrap();
    debian_like(dir.path());
    let text = profile(
        "  baseline: anssi-bp028-intermediary
  exceptions:
    - {item: sudo/requiretty, reason: automation runs sudo without a terminal, approver: secops, expires: \"2030-01-31\"}
",
    );
    apply(dir.path(), &text).await;
    let node = node(dir.path());
    let record = crate::apply::record::AppliedRecord::load(&node)
        .unwrap()
        .unwrap();
    let promise = record.promise.unwrap();

    let before = evaluate(&node, &promise, date!(2030 - 01 - 31)).unwrap();
    let tty = item(&before, "sudo/requiretty");
    assert_eq!(tty.status, Status::Exception);
    assert_eq!(tty.observed, "absent", "excepted: not written");
    assert_eq!(
        tty.exception.as_ref().unwrap().approver.as_deref(),
        Some("secops")
    );
    let r39 = before.rules.iter().find(|r| r.number == "R39").unwrap();
    assert_eq!(r39.status, Status::Exception);

    let after = evaluate(&node, &promise, date!(2030 - 02 - 01)).unwrap();
    assert_eq!(
        item(&after, "sudo/requiretty").status,
        Status::ExpiredException
    );
    assert_eq!(after.summary.expired_exceptions, 1);
    assert_eq!(
        after.expired_exceptions(),
        ["R39 sudo/requiretty (expired 2030-01-31)"]
    );
}

/// Twice as many items as the high baseline has, every text ten thousand characters long.
#[test]
fn a_report_stays_below_its_bound_with_long_texts() {
    let long = "x".repeat(10_000);
    let rule = RuleEvidence {
        number: "R1".into(),
        title: long.clone(),
        level: Level::Minimal,
        status: Status::Fail,
        reason: Some(long.clone()),
        items: vec![
            ItemEvidence {
                id: long.clone(),
                what: long.clone(),
                expected: long.clone(),
                observed: long.clone(),
                source: Source::File,
                status: Status::Fail,
                scope: "live".into(),
                deviation: None,
                exception: None,
                note: Some(long.clone()),
            };
            2
        ],
    };
    let evidence = Evidence {
        baseline: "anssi-bp028-high".into(),
        level: Level::High,
        observed_at: String::new(),
        applied_at: String::new(),
        profile_sha256: String::new(),
        live: false,
        summary: Summary::default(),
        rules: vec![rule; 80],
    };
    let report = proto::report(&evidence);
    assert!(prost::Message::encoded_len(&report) <= proto::MAX_REPORT_BYTES);
    assert!(report.rules[0].items[0].observed.chars().count() <= proto::MAX_TEXT + 1);
}
