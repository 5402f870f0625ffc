//! Supervision end to end: connectivity after the grace period, events in a watch, and a
//! watch resumed from a revision across a manager restart without gap or duplicate.

use std::time::{Duration, Instant};

use opi_proto::v1::{Event, SetMaintenanceRequest, WatchRequest};
use opi_tests::{grpc, ok, wait_until, Agent, Manager, WAIT};
use tempfile::TempDir;

/// Grace period used by these tests, short so that they run fast.
const GRACE: &str = "3s";

fn fleet_with(dir: &TempDir, names: &[&str]) -> (Manager, Vec<Agent>) {
    let mut manager = Manager::init(dir.path(), "e2e").with_args(&[
        "--offline-after",
        GRACE,
        "--heartbeat",
        "1s",
    ]);
    manager.start();
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", names.len() as u32, &[]);
    let agents = names
        .iter()
        .map(|name| {
            let mut agent = Agent::new(dir.path(), name);
            ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
            agent.start();
            agent
        })
        .collect();
    (manager, agents)
}

fn is(event: &Event, node: &str, kind: &str, to: &str) -> bool {
    event.node == node && event.kind == kind && event.to == to
}

#[test]
fn killed_agent_goes_offline_after_the_grace_period_and_back_online() {
    let dir = TempDir::new().unwrap();
    let (manager, mut agents) = fleet_with(&dir, &["n1"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    let watch = WatchRequest {
        nodes: vec!["n1".into()],
        kinds: vec!["connectivity".into()],
        replay_last: 100,
        ..Default::default()
    };

    runtime.block_on(grpc::collect_events(
        &mut client,
        watch.clone(),
        WAIT,
        |events| events.iter().any(|e| is(e, "n1", "connectivity", "online")),
    ));

    let killed = Instant::now();
    agents[0].stop();
    let events = runtime.block_on(grpc::collect_events(
        &mut client,
        watch.clone(),
        Duration::from_secs(3 + 5),
        |events| {
            events
                .iter()
                .any(|e| is(e, "n1", "connectivity", "offline"))
        },
    ));
    let offline_after = killed.elapsed();
    println!("offline event {offline_after:?} after SIGKILL");
    assert!(
        offline_after >= Duration::from_secs(2),
        "no offline before the grace period: {events:?}"
    );
    let offline = events
        .iter()
        .find(|e| is(e, "n1", "connectivity", "offline"))
        .unwrap();
    assert_eq!(
        (offline.from.as_str(), offline.pool.as_str()),
        ("online", "workers")
    );

    let nodes = manager.opictl().nodes();
    let node = opi_tests::node(&nodes, "n1").unwrap();
    assert_eq!(node["connectivity"], "offline");
    assert_eq!(
        node["health"], "unknown",
        "health is unknown while offline: {node}"
    );

    let since = WatchRequest {
        since_revision: offline.revision,
        ..watch
    };
    agents[0].start();
    runtime.block_on(grpc::collect_events(&mut client, since, WAIT, |events| {
        events.iter().any(|e| is(e, "n1", "connectivity", "online"))
    }));
}

#[test]
fn reconnecting_within_the_grace_period_makes_no_event() {
    let dir = TempDir::new().unwrap();
    let (mut manager, _agents) = fleet_with(&dir, &["n1"]);
    let opictl = manager.opictl();
    wait_until(WAIT, "n1 online", || {
        opi_tests::all_online(&opictl, &["n1"])
    });
    let before = opictl.json(&["status"])["event_revision"].as_u64().unwrap();

    manager.kill();
    manager.start();
    wait_until(WAIT, "n1 reconnected", || {
        manager.log_text().matches("session open").count() >= 2
    });
    std::thread::sleep(Duration::from_secs(4)); // longer than the grace period: an offline event would show
    let after = manager.opictl().json(&["status"])["event_revision"]
        .as_u64()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    let request = WatchRequest {
        since_revision: before,
        kinds: vec!["connectivity".into()],
        ..Default::default()
    };
    let events = if after > before {
        runtime.block_on(grpc::collect_events(&mut client, request, WAIT, |e| {
            !e.is_empty()
        }))
    } else {
        Vec::new()
    };
    assert!(
        events.iter().all(|e| e.to != "offline"),
        "a restart within the grace period is not an outage: {events:?}"
    );
}

#[test]
fn watch_resumes_from_a_revision_across_a_manager_restart_without_gap() {
    let dir = TempDir::new().unwrap();
    let (mut manager, mut agents) = fleet_with(&dir, &["n1", "n2"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    let all = WatchRequest {
        replay_last: 1000,
        ..Default::default()
    };
    let first = runtime.block_on(grpc::collect_events(&mut client, all, WAIT, |events| {
        ["n1", "n2"]
            .iter()
            .all(|n| events.iter().any(|e| is(e, n, "connectivity", "online")))
    }));
    let resume_at = first.last().unwrap().revision;

    agents[1].stop();
    manager.kill();
    manager.start();
    // n2 stays away: its offline event happens after the restart, past the grace period.
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    let resumed = WatchRequest {
        since_revision: resume_at,
        ..Default::default()
    };
    let after = runtime.block_on(grpc::collect_events(
        &mut client,
        resumed,
        Duration::from_secs(15),
        |events| {
            events
                .iter()
                .any(|e| is(e, "n2", "connectivity", "offline"))
        },
    ));

    let revisions: Vec<u64> = first.iter().chain(&after).map(|e| e.revision).collect();
    let expected: Vec<u64> = (revisions[0]..revisions[0] + revisions.len() as u64).collect();
    assert_eq!(
        revisions, expected,
        "no gap and no duplicate across the restart"
    );
    assert!(after.iter().all(|e| e.revision > resume_at));
}

#[test]
fn watch_from_a_pruned_revision_says_so() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e").with_args(&["--event-retention", "2"]);
    manager.start();
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", 4, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    // Four maintenance events, revisions 1 to 4; a retention of 2 keeps 3 and 4.
    for name in ["a", "b", "c", "d"] {
        ok(Agent::new(dir.path(), name).enroll(&manager.endpoint(), &manager.ca_pin(), &token));
        let request = SetMaintenanceRequest {
            name: name.into(),
            on: true,
            reason: "test".into(),
        };
        runtime.block_on(client.set_maintenance(request)).unwrap();
    }
    // Pruning runs when the manager starts, then every minute.
    manager.kill();
    manager.start();
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    let status = runtime
        .block_on(client.watch(WatchRequest {
            since_revision: 1,
            ..Default::default()
        }))
        .expect_err("revision 1 was pruned");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
    assert!(status.message().contains("pruned"), "{status}");
    let kept = runtime.block_on(grpc::collect_events(
        &mut client,
        WatchRequest {
            since_revision: 2,
            ..Default::default()
        },
        WAIT,
        |events| events.len() == 2,
    ));
    let revisions: Vec<u64> = kept.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, vec![3, 4], "the newest events are kept");
}

#[test]
fn manager_stops_promptly_on_sigterm_with_agents_and_watchers_connected() {
    let dir = TempDir::new().unwrap();
    let (mut manager, _agents) = fleet_with(&dir, &["n1"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    let request = WatchRequest {
        replay_last: 10,
        ..Default::default()
    };
    let mut stream = runtime.block_on(async {
        let mut stream = client.watch(request).await.unwrap().into_inner();
        stream.message().await.unwrap().expect("a first event");
        stream
    });
    let took = manager.terminate(Duration::from_secs(5));
    println!("manager exited {took:?} after SIGTERM");
    let end = runtime.block_on(async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    });
    let status = end.expect_err("the watch ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
}

#[test]
fn opictl_watch_prints_one_json_object_per_line_with_every_field() {
    use std::io::{BufRead, BufReader};

    let dir = TempDir::new().unwrap();
    let (manager, mut agents) = fleet_with(&dir, &["n1"]);
    let opictl = manager.opictl();
    opi_tests::wait_until(WAIT, "n1 online", || {
        opi_tests::all_online(&opictl, &["n1"])
    });
    let mut watch = std::process::Command::new(opi_tests::bin("opictl"))
        .arg("--config")
        .arg(&opictl.config)
        .args([
            "--manager",
            &opictl.endpoint,
            "watch",
            "--node",
            "n1",
            "--last",
            "50",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    agents[0].stop();

    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let line = lines.next().expect("a line").expect("utf-8");
        let event: serde_json::Value =
            serde_json::from_str(&line).expect("each line is one JSON object");
        let offline = event["kind"] == "connectivity" && event["to"] == "offline";
        events.push(event);
        if offline {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let offline = events.last().unwrap();
    assert_eq!(offline["to"], "offline", "{events:?}");
    for key in [
        "revision", "time", "node", "pool", "kind", "from", "to", "reason",
    ] {
        assert!(!offline[key].is_null(), "{key} missing in {offline}");
    }
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "in order: {revisions:?}"
    );
}
