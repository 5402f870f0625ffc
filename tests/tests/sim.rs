//! The fleet simulator against a real manager: a small fleet enrolls, holds its sessions and
//! heartbeats, as the manager's own metrics and the simulator's report both show.

use std::process::{Command, Stdio};
use std::time::Duration;

use opi_tests::sim::Report;
use opi_tests::{bin, sample, wait_until, Manager};

const AGENTS: usize = 20;

#[test]
fn simulated_agents_enroll_go_online_and_heartbeat() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut manager = Manager::init(dir.path(), "simfleet").with_args(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--heartbeat",
        "1s",
    ]);
    manager.start();

    let agents = AGENTS.to_string();
    let mut sim = Command::new(bin("opi-fleet-sim"))
        .args(["--manager", &manager.endpoint(), "--agents", &agents])
        .args([
            "--heartbeat",
            "1s",
            "--duration",
            "3s",
            "--json",
            "--data-dir",
        ])
        .arg(&manager.data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("opi-fleet-sim starts");

    wait_until(Duration::from_secs(20), "20 agent sessions", || {
        let exited = sim.try_wait().expect("simulator status").is_some();
        exited || sample(&manager.scrape(), "opi_agent_sessions") == Some(AGENTS as f64)
    });
    if let Some(status) = sim.try_wait().expect("simulator status") {
        let output = sim.wait_with_output().expect("simulator output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        panic!("simulator exited early ({status}): {stderr}");
    }
    let online = manager.opictl().json(&["status"])["online"].as_u64();
    assert_eq!(online, Some(AGENTS as u64));

    wait_until(Duration::from_secs(30), "the simulator to finish", || {
        sim.try_wait().expect("simulator status").is_some()
    });
    let output = sim.wait_with_output().expect("simulator output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "simulator failed: {stderr}");
    let report: Report = serde_json::from_slice(&output.stdout).expect("JSON report");

    assert_eq!(
        (report.enrolled, report.connected),
        (AGENTS, AGENTS),
        "{stderr}"
    );
    assert_eq!(report.sessions_seen, AGENTS as f64);
    assert!(report.sent > 0 && report.accepted > 0, "{report:?}");
    assert!(report.p50_seconds.is_some(), "{report:?}");
    let total = sample(&manager.scrape(), "opi_heartbeats_total").expect("heartbeats counted");
    assert!(total >= report.accepted as f64, "{total} < {report:?}");
}
