//! The manager's metrics page end to end: a real manager scraped over loopback HTTP, the page
//! linted by `promtool check metrics`, its figures checked against what the test did.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opi_tests::admin::Admin;
use opi_tests::{fails, http, ok, sample, system_bin, wait_until, Agent, Manager, WAIT};
use tempfile::TempDir;

/// Sum of `opi_nodes` over the three healths, for one pool and connectivity.
fn nodes(page: &str, pool: &str, connectivity: &str) -> f64 {
    ["healthy", "degraded", "unknown"]
        .iter()
        .map(|health| {
            let series = format!(
                "opi_nodes{{pool=\"{pool}\",connectivity=\"{connectivity}\",health=\"{health}\"}}"
            );
            sample(page, &series).unwrap_or_else(|| panic!("{series} missing from:\n{page}"))
        })
        .sum()
}

/// Runs `promtool check metrics` on `page`; panics with its findings unless it is clean.
fn assert_promtool_accepts(page: &str) {
    let mut child = Command::new(system_bin("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin
        .write_all(page.as_bytes())
        .expect("page written to promtool");
    drop(stdin);
    let output = child.wait_with_output().expect("promtool finishes");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool check metrics ({}): {findings}\npage:\n{page}",
        output.status
    );
}

fn manager(dir: &TempDir, extra: &[&str]) -> Manager {
    let mut args = vec!["--metrics-listen", "127.0.0.1:0", "--heartbeat", "1s"];
    args.extend(extra);
    let mut manager = Manager::init(dir.path(), "e2e").with_args(&args);
    manager.start();
    manager
}

#[test]
fn metrics_page_passes_promtool_and_counts_nodes_sessions_and_refused_enrollments() {
    let dir = TempDir::new().unwrap();
    let manager = manager(&dir, &["--offline-after", "3s"]);
    let token = Admin::connect(&manager).create_token("workers", 1);
    let (endpoint, pin) = (manager.endpoint(), manager.ca_pin());
    let mut agent = Agent::new(dir.path(), "node-a");
    ok(agent.enroll(&endpoint, &pin, &token));
    let late = Agent::new(dir.path(), "node-b");
    fails(late.enroll(&endpoint, &pin, &token));

    agent.start();
    wait_until(WAIT, "the node online and beating in the metrics", || {
        let page = manager.scrape();
        nodes(&page, "workers", "online") == 1.0
            && sample(&page, "opi_heartbeats_total").is_some_and(|beats| beats >= 1.0)
    });

    let page = manager.scrape();
    assert_promtool_accepts(&page);
    assert_eq!(nodes(&page, "workers", "offline"), 0.0);
    assert_eq!(
        page.matches("opi_nodes{pool=\"workers\"").count(),
        6,
        "{page}"
    );
    let enrolled = r#"opi_enrollments_total{outcome="ok",reason="none"}"#;
    assert_eq!(sample(&page, enrolled), Some(1.0));
    let used_up = r#"opi_enrollments_total{outcome="refused",reason="token_used_up"}"#;
    assert_eq!(sample(&page, used_up), Some(1.0), "{page}");
    let unknown = r#"opi_enrollments_total{outcome="refused",reason="token_unknown"}"#;
    assert_eq!(sample(&page, unknown), Some(0.0));
    assert_eq!(sample(&page, "opi_agent_sessions"), Some(1.0));
    assert!(
        sample(&page, "opi_event_revision").is_some_and(|r| r >= 2.0),
        "{page}"
    );
    let txns = r#"opi_store_operation_duration_seconds_count{operation="txn"}"#;
    assert!(sample(&page, txns).is_some_and(|n| n >= 3.0), "{page}");
    assert_eq!(sample(&page, "opi_store_errors_total"), Some(0.0));
    let info = format!(
        "opi_manager_info{{version=\"{}\",fleet=\"e2e\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&page, &info), Some(1.0), "{page}");
    // A single manager always leads.
    let leader = page
        .lines()
        .find(|line| line.starts_with("opi_manager_leader{replica=\""))
        .unwrap_or_else(|| panic!("no opi_manager_leader: {page}"));
    assert!(leader.ends_with(" 1"), "{leader}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&page, "process_start_time_seconds").expect("start time");
    assert!(
        now - started > 0.0 && now - started < 600.0,
        "{started} vs {now}"
    );
    assert!(
        !page.contains("node=\""),
        "no per-node series by default:\n{page}"
    );

    agent.stop();
    wait_until(
        Duration::from_secs(15),
        "the node offline in the metrics",
        || {
            let page = manager.scrape();
            nodes(&page, "workers", "offline") == 1.0
                && sample(&page, "opi_agent_sessions") == Some(0.0)
        },
    );
}

#[test]
fn metrics_listener_serves_format_0_0_4_at_metrics_and_404_elsewhere() {
    let dir = TempDir::new().unwrap();
    let manager = manager(&dir, &[]);

    let elsewhere = http::get(manager.metrics_addr(), "/").expect("answer");
    assert_eq!(elsewhere.status, 404);
    assert!(elsewhere.body.contains("/metrics"), "{}", elsewhere.body);
    let page = http::get(manager.metrics_addr(), "/metrics").expect("answer");
    assert!(
        page.head
            .to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        page.head
    );
}

#[test]
fn per_node_series_appear_with_metrics_per_node() {
    let dir = TempDir::new().unwrap();
    let manager = manager(&dir, &["--metrics-per-node"]);
    let token = Admin::connect(&manager).create_token("workers", 1);
    let mut agent = Agent::new(dir.path(), "node-a");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));

    agent.start();
    let online = r#"opi_node_online{node="node-a",pool="workers"}"#;
    wait_until(WAIT, "the node's own series", || {
        sample(&manager.scrape(), online) == Some(1.0)
    });

    let page = manager.scrape();
    assert_promtool_accepts(&page);
    let expiry = r#"opi_node_certificate_expiry_timestamp_seconds{node="node-a",pool="workers"}"#;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(sample(&page, expiry).is_some_and(|at| at > now), "{page}");
    let healths: f64 = ["healthy", "degraded", "unknown"]
        .iter()
        .filter_map(|h| {
            let series = format!(r#"opi_node_health{{node="node-a",pool="workers",health="{h}"}}"#);
            sample(&page, &series)
        })
        .sum();
    assert_eq!(healths, 1.0, "exactly one health is current:\n{page}");
}
