//! Node conditions end to end: raised and cleared from what the node really sees, and kept
//! across an agent restart.

use std::path::Path;
use std::time::Duration;

use opi_proto::v1::{Event, WatchRequest};
use opi_tests::{grpc, node, ok, wait_until_every, Agent, Manager, POLL_OPICTL, WAIT};
use serde_json::Value;
use tempfile::TempDir;

fn manager(dir: &TempDir) -> Manager {
    let mut manager =
        Manager::init(dir.path(), "e2e").with_args(&["--offline-after", "5s", "--heartbeat", "1s"]);
    manager.start();
    manager
}

/// An enrolled agent whose only check is disk pressure on `mount`, with tight thresholds.
fn disk_agent(dir: &TempDir, manager: &Manager, name: &str, mount: &Path, warning: f64) -> Agent {
    let agent = Agent::new(dir.path(), name);
    let config = format!(
        "version = 1\nchecks = [\"DiskPressure\"]\n[disk]\nmounts = []\nextra_mounts = [{mount:?}]\nwarning_used_percent = {warning}\ncritical_used_percent = 99.9\n"
    );
    std::fs::create_dir_all(agent.root.join("etc/opi-agent")).unwrap();
    std::fs::write(agent.root.join("etc/opi-agent/health.toml"), config).unwrap();
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent
}

fn condition(manager: &Manager, node_name: &str, key: &str) -> Option<Value> {
    let nodes = manager.opictl().nodes();
    let node = node(&nodes, node_name)?;
    node["conditions"]
        .as_array()?
        .iter()
        .find(|c| {
            let subject = c["subject"].as_str().unwrap_or_default();
            let full = if subject.is_empty() {
                c["type"].as_str().unwrap().to_string()
            } else {
                format!("{}:{subject}", c["type"].as_str().unwrap())
            };
            full == key
        })
        .cloned()
}

fn condition_events(events: &[Event], key: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.kind == "condition" && e.subject == key)
        .map(|e| (e.from.clone(), e.to.clone()))
        .collect()
}

#[test]
fn disk_pressure_on_a_small_filesystem_is_raised_then_cleared() {
    let dir = TempDir::new().unwrap();
    let manager = manager(&dir);
    let mount = dir.path().join("filler/data");
    let mut agent = disk_agent(&dir, &manager, "filler", &mount, 50.0);
    std::fs::create_dir_all(&mount).unwrap();
    agent.start_with_tmpfs("data", "4m");
    let key = format!("DiskPressure:{}", mount.display());
    wait_until_every(POLL_OPICTL, WAIT, "disk pressure reported ok", || {
        condition(&manager, "filler", &key).is_some_and(|c| c["status"] == "ok")
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    let since = manager.opictl().json(&["status"])["event_revision"]
        .as_u64()
        .unwrap();
    let fill = mount.join("fill");
    ok(agent.in_mount_namespace(&[
        "dd",
        "if=/dev/zero",
        &format!("of={}", fill.display()),
        "bs=1M",
        "count=3",
    ]));
    let request = WatchRequest {
        since_revision: since,
        nodes: vec!["filler".into()],
        ..Default::default()
    };
    let raised = runtime.block_on(grpc::collect_events(&mut client, request, WAIT, |events| {
        !condition_events(events, &key).is_empty()
            && events
                .iter()
                .any(|e| e.kind == "health" && e.to == "degraded")
    }));
    assert_eq!(
        condition_events(&raised, &key),
        vec![("ok".to_string(), "problem".to_string())]
    );
    let problem = condition(&manager, "filler", &key).unwrap();
    assert_eq!(problem["severity"], "warning");
    assert!(
        problem["message"].as_str().unwrap().contains('%'),
        "message has figures: {problem}"
    );

    ok(agent.in_mount_namespace(&["rm", &fill.display().to_string()]));
    let since = raised.last().unwrap().revision;
    let request = WatchRequest {
        since_revision: since,
        nodes: vec!["filler".into()],
        ..Default::default()
    };
    let cleared = runtime.block_on(grpc::collect_events(&mut client, request, WAIT, |events| {
        events
            .iter()
            .any(|e| e.kind == "health" && e.to == "healthy")
    }));
    assert_eq!(
        condition_events(&cleared, &key),
        vec![("problem".to_string(), "ok".to_string())]
    );
    assert!(
        !mount.join("fill").exists(),
        "the host never saw the test's tmpfs"
    );
}

#[test]
fn conditions_keep_their_transition_time_across_an_agent_restart() {
    let dir = TempDir::new().unwrap();
    let manager = manager(&dir);
    let mut agent = disk_agent(&dir, &manager, "steady", Path::new("/"), 0.001);
    agent.start();
    let key = "DiskPressure:/";
    let first = {
        let mut seen = None;
        wait_until_every(POLL_OPICTL, WAIT, "disk pressure on / reported", || {
            seen = condition(&manager, "steady", key).filter(|c| c["status"] == "problem");
            seen.is_some()
        });
        seen.unwrap()
    };
    let since = manager.opictl().json(&["status"])["event_revision"]
        .as_u64()
        .unwrap();

    agent.stop();
    agent.start();
    opi_tests::wait_until(
        Duration::from_secs(15),
        "a second session after the restart",
        || {
            manager
                .log_text()
                .matches("session open node=steady")
                .count()
                >= 2
        },
    );
    let again = condition(&manager, "steady", key).unwrap();
    assert_eq!(
        again["last_transition"], first["last_transition"],
        "the condition did not reset: {again}"
    );
    assert_eq!(again["status"], "problem");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .unwrap();
    let status = manager.opictl().json(&["status"]);
    let now = status["event_revision"].as_u64().unwrap();
    let events = if now > since {
        let request = WatchRequest {
            since_revision: since,
            nodes: vec!["steady".into()],
            ..Default::default()
        };
        runtime.block_on(grpc::collect_events(&mut client, request, WAIT, |e| {
            e.len() as u64 >= now - since
        }))
    } else {
        Vec::new()
    };
    assert!(
        condition_events(&events, key).is_empty(),
        "no condition event from a restart: {events:?}"
    );
}

/// A real containerd 1.6 as a plain process, with everything under `dir`.
struct Containerd {
    child: std::process::Child,
}

impl Containerd {
    fn start(dir: &Path, socket: &Path) -> Self {
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("containerd.toml");
        let text = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n[grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            dir.join("root"),
            dir.join("state"),
            socket,
            socket.with_extension("ttrpc"),
        );
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = std::process::Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd is installed (scripts/install-test-deps installs it)");
        opi_tests::wait_until(WAIT, "containerd's socket", || socket.exists());
        Self { child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn container_runtime_health_follows_a_real_containerd() {
    let dir = TempDir::new().unwrap();
    let manager = manager(&dir);
    let agent = Agent::new(dir.path(), "runtime");
    let socket = agent.root.join("run/containerd/containerd.sock");
    let mut containerd = Containerd::start(&dir.path().join("containerd"), &socket);
    std::fs::create_dir_all(agent.root.join("etc/opi-agent")).unwrap();
    std::fs::write(
        agent.root.join("etc/opi-agent/health.toml"),
        "version = 1\nchecks = [\"ContainerRuntimeHealthy\"]\n",
    )
    .unwrap();
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    let mut agent = agent;
    agent.start();

    wait_until_every(POLL_OPICTL, WAIT, "containerd reported healthy", || {
        condition(&manager, "runtime", "ContainerRuntimeHealthy")
            .is_some_and(|c| c["status"] == "ok")
    });
    let healthy = condition(&manager, "runtime", "ContainerRuntimeHealthy").unwrap();
    assert!(
        healthy["message"].as_str().unwrap().contains("1.6"),
        "names the version: {healthy}"
    );
    let nodes = manager.opictl().nodes();
    assert_eq!(node(&nodes, "runtime").unwrap()["health"], "healthy");

    containerd.stop();
    wait_until_every(POLL_OPICTL, WAIT, "containerd reported down", || {
        condition(&manager, "runtime", "ContainerRuntimeHealthy")
            .is_some_and(|c| c["status"] == "problem")
    });
    let down = condition(&manager, "runtime", "ContainerRuntimeHealthy").unwrap();
    assert_eq!(down["severity"], "critical");
    let opictl = manager.opictl();
    wait_until_every(POLL_OPICTL, WAIT, "the node degraded", || {
        node(&opictl.nodes(), "runtime").is_some_and(|n| n["health"] == "degraded")
    });

    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["nodes"];
        all.extend(args);
        let listed = opictl.json(&all);
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&["--health", "degraded"]), vec!["runtime"]);
    assert!(names(&["--health", "healthy"]).is_empty());
    assert_eq!(
        names(&["--condition", "ContainerRuntimeHealthy"]),
        vec!["runtime"]
    );
    assert!(names(&["--condition", "DiskPressure"]).is_empty());
    let shown = opictl.json(&["node", "show", "runtime"]);
    let events = shown["events"]
        .as_array()
        .expect("node show lists the node's last events");
    assert!(
        events
            .iter()
            .any(|e| e["subject"] == "ContainerRuntimeHealthy" && e["to"] == "problem"),
        "{events:?}"
    );
}
