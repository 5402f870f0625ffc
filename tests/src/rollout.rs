//! The harness of the rollout tests (`tests/tests/rollouts.rs`): ten real agents of pool
//! `workers` under their own `--root`, each checking a real containerd (the canary `n01`
//! through a [`Gate`]), a real manager, and `opictl watch --kind rollout -o json` as a process
//! whose events the tests read.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::containerd::{Containerd, Gate};
use crate::{bin, node, ok, wait_until_every, Agent, Manager, Opictl, POLL_OPICTL, WAIT};

/// The worker profile shipped in the repository.
pub const WORKER: &str = include_str!("../../deploy/profiles/worker.yaml");
/// The nodes of every test, in name order: `n01` is the canary.
pub const NODES: [&str; 10] = [
    "n01", "n02", "n03", "n04", "n05", "n06", "n07", "n08", "n09", "n10",
];
/// The text of the breaking profile that the canary's containerd cannot run with.
pub const BROKEN_IMAGE: &str = "registry.invalid/pause:broken";
/// kubelet's configuration, under a root.
pub const KUBELET_FILE: &str = "var/lib/kubelet/config.yaml";
/// containerd's configuration, under a root.
pub const CONTAINERD_FILE: &str = "etc/containerd/config.toml";
/// The agents' `health.toml`: containerd only, on the node's socket.
pub const HEALTH: &str =
    "version = 1\nchecks = [\"ContainerRuntimeHealthy\"]\n[containerd]\ntimeout_ms = 300\n";
/// Bound for a whole rollout over ten nodes.
pub const ROLLOUT_WAIT: Duration = Duration::from_secs(120);

/// A manager, a real containerd and ten enrolled, running agents of pool `workers`.
pub struct Fleet {
    pub dir: TempDir,
    pub manager: Manager,
    pub agents: Vec<Agent>,
    containerd: Containerd,
    _gate: Gate,
}

impl Fleet {
    /// The fleet in a new temporary directory.
    pub fn start() -> Self {
        Self::start_in(TempDir::new().unwrap(), &[])
    }

    /// The fleet in `dir`, its manager served with `extra` arguments.
    pub fn start_in(dir: TempDir, extra: &[&str]) -> Self {
        let mut args = vec!["--heartbeat", "1s"];
        args.extend(extra);
        let mut manager = Manager::init(dir.path(), "rollouts").with_args(&args);
        manager.start();
        let containerd = Containerd::start(&dir.path().join("containerd"));
        let opictl = manager.opictl();
        let (_, token) = opictl.create_token("workers", NODES.len() as u32, &[]);
        let mut agents = Vec::new();
        let mut gate = None;
        for name in NODES {
            let mut agent = Agent::new(dir.path(), name);
            let settings = agent.root.join("etc/opi-agent");
            std::fs::create_dir_all(&settings).unwrap();
            std::fs::write(settings.join("health.toml"), HEALTH).unwrap();
            match name {
                "n01" => gate = Some(Gate::start(&agent.root, &containerd.socket, BROKEN_IMAGE)),
                _ => containerd.serve_node(&agent.root),
            }
            ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
            agent.start();
            agents.push(agent);
        }
        wait_until_every(POLL_OPICTL, WAIT, "ten healthy nodes", || {
            let nodes = opictl.nodes();
            NODES.iter().all(|name| {
                node(&nodes, name)
                    .is_some_and(|n| n["connectivity"] == "online" && n["health"] == "healthy")
            })
        });
        Self {
            dir,
            manager,
            agents,
            containerd,
            _gate: gate.expect("n01 has its gate"),
        }
    }

    /// `opictl` with the admin bundle.
    pub fn opictl(&self) -> Opictl {
        self.manager.opictl()
    }

    /// Enrolls and starts one more agent of pool `workers`, and waits until it is healthy.
    pub fn join(&mut self, name: &str) {
        let mut agent = Agent::new(self.dir.path(), name);
        let settings = agent.root.join("etc/opi-agent");
        std::fs::create_dir_all(&settings).unwrap();
        std::fs::write(settings.join("health.toml"), HEALTH).unwrap();
        self.containerd.serve_node(&agent.root);
        let (_, token) = self.opictl().create_token("workers", 1, &[]);
        ok(agent.enroll(&self.manager.endpoint(), &self.manager.ca_pin(), &token));
        agent.start();
        self.agents.push(agent);
        wait_until_every(POLL_OPICTL, WAIT, "the new node healthy", || {
            let nodes = self.opictl().nodes();
            node(&nodes, name).is_some_and(|n| n["health"] == "healthy")
        });
    }

    /// `opictl profile set workers` with `text` and the strategy `options`; the generation.
    pub fn set(&self, file: &str, text: &str, options: &[&str]) -> u64 {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let mut args = vec!["profile", "set", "workers", "-f", path.to_str().unwrap()];
        args.extend(options);
        let set = self.opictl().json(&args);
        assert_eq!(set["changed"], true, "{set}");
        set["generation"].as_u64().expect("generation")
    }

    /// `opictl rollout status workers --watch -o json`, running.
    pub fn follow_status(&self) -> Child {
        let opictl = self.opictl();
        Command::new(bin("opictl"))
            .arg("--config")
            .arg(&opictl.config)
            .args(["--manager", &opictl.endpoint])
            .args(["rollout", "status", "workers", "--watch", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("opictl rollout status --watch starts")
    }

    /// `opictl rollout status workers -o json`.
    pub fn status(&self) -> Value {
        self.opictl().json(&["rollout", "status", "workers"])
    }

    /// Waits until the pool's rollout is in `state`; its status then.
    pub fn wait_state(&self, state: &str) -> Value {
        let what = format!("the rollout {state}");
        wait_until_every(POLL_OPICTL, ROLLOUT_WAIT, &what, || {
            self.status()["state"] == state
        });
        self.status()
    }

    /// The fleet's last event revision, for a watch to start after.
    pub fn event_revision(&self) -> u64 {
        self.opictl().json(&["status"])["event_revision"]
            .as_u64()
            .expect("event revision")
    }

    /// A node's config axis, as `opictl nodes -o json` shows it.
    pub fn config(&self, name: &str) -> Value {
        let nodes = self.opictl().nodes();
        node(&nodes, name).expect("node listed")["config"].clone()
    }

    /// The agent of node `name`.
    pub fn agent(&self, name: &str) -> &Agent {
        self.agents.iter().find(|a| a.name == name).expect("agent")
    }

    /// A file of node `name`, `path` being under its root.
    pub fn read(&self, name: &str, path: &str) -> String {
        let file = self.agent(name).root.join(path);
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }
}

/// `opictl watch --kind rollout --since REV -o json` as a process, its events as they come.
pub struct Watch {
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// The events read so far.
    pub events: Vec<Value>,
}

impl Watch {
    /// Starts the watch after `revision`.
    pub fn since(opictl: &Opictl, revision: u64) -> Self {
        let mut child = Command::new(bin("opictl"))
            .arg("--config")
            .arg(&opictl.config)
            .args(["--manager", &opictl.endpoint])
            .args([
                "watch", "--kind", "rollout", "--pool", "workers", "-o", "json",
            ])
            .args(["--since", &revision.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("opictl watch starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line).expect("a JSON event per line");
                if sender.send(event).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            events: Vec::new(),
        }
    }

    /// Reads events until `done` holds for those read so far, or panics after `timeout`.
    pub fn until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.events) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(event) => self.events.push(event),
                Err(_) => panic!("timed out waiting for {what}; events: {:#?}", self.events),
            }
        }
    }

    /// Reads events until the pool's rollout of `generation` reaches `state`.
    pub fn until_state(&mut self, generation: u64, state: &str) {
        let subject = format!("generation {generation}");
        let what = format!("the rollout of {subject} {state}");
        self.until(ROLLOUT_WAIT, &what, |events| {
            events
                .iter()
                .any(|e| e["node"] == "" && e["to"] == state && e["subject"] == subject)
        });
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The waves of `generation` as the event stream shows them: each `WaveStarted` pool event,
/// then the nodes targeted after it.
pub fn waves(events: &[Value], generation: u64) -> Vec<Vec<String>> {
    let subject = format!("generation {generation}");
    let mut waves: Vec<Vec<String>> = Vec::new();
    for event in events.iter().filter(|e| e["subject"] == subject) {
        if event["reason"] == "WaveStarted" {
            waves.push(Vec::new());
        } else if event["to"] == "updating" {
            let wave = waves
                .last_mut()
                .expect("a node targeted after its wave started");
            wave.push(event["node"].as_str().unwrap().to_string());
        }
    }
    waves
}

/// Checks that every node of a wave was done before the next wave started.
pub fn each_wave_waits_for_the_one_before(events: &[Value], generation: u64) {
    let subject = format!("generation {generation}");
    let mut done: Vec<&str> = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    for event in events.iter().filter(|e| e["subject"] == subject) {
        if event["to"] == "done" {
            done.push(event["node"].as_str().unwrap());
        }
        if event["reason"] == "WaveStarted" {
            let waiting: Vec<&String> = previous
                .iter()
                .filter(|n| !done.contains(&n.as_str()))
                .collect();
            assert!(
                waiting.is_empty(),
                "a wave started before {waiting:?} were done: {events:#?}"
            );
            previous.clear();
        }
        if event["to"] == "updating" {
            previous.push(event["node"].as_str().unwrap().to_string());
        }
    }
}

/// Node names as owned strings, to compare with [`waves`].
pub fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

/// The worker profile, verified within 3 s.
pub fn worker() -> String {
    WORKER.replace("verifyTimeout: 90s", "verifyTimeout: 3s")
}

/// The worker profile with `maxPods: N`.
pub fn worker_with_max_pods(pods: u32) -> String {
    worker().replace("maxPods: 110", &format!("maxPods: {pods}"))
}
