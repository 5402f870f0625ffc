//! Rollouts across two manager replicas on a real 3-member etcd, half of the agents connected
//! to each: a profile set at the follower reaches every node, including those whose session the
//! follower holds while the leader steps the rollout; and a rollout the leader was stepping when
//! it died is finished by the other replica, with every node on the new generation.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{events, leader_at, serve_as, session_nodes};
use opi_tests::etcd::Etcd;
use opi_tests::rollout::{worker, worker_with_max_pods, KUBELET_FILE, ROLLOUT_WAIT};
use opi_tests::{all_online, node, ok, wait_until, wait_until_every, Agent, Manager, Opictl};
use opi_tests::{free_port, POLL_OPICTL, WAIT};
use serde_json::Value;

/// Nodes enrolled at "b", which hands out "a" first: their sessions are at the leader.
const AT_A: [&str; 2] = ["r1", "r2"];
/// Nodes enrolled at "a", which hands out "b" first: their sessions are at the follower.
const AT_B: [&str; 2] = ["r3", "r4"];
const ALL: [&str; 4] = ["r1", "r2", "r3", "r4"];

#[test]
fn rollouts_reach_nodes_at_every_replica_and_survive_the_leaders_death() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::cluster();
    let url = etcd.url();
    let addrs: Vec<String> = (0..2).map(|_| free_port()).collect();
    let first = Manager::init_with(dir.path(), "replica-rollouts", &["--store", &url]);
    let copy = first.copy_to(&dir.path().join("b"));
    let mut replicas: Vec<Manager> = [first, copy]
        .into_iter()
        .zip(["a", "b"])
        .enumerate()
        .map(|(i, (replica, name))| {
            let advertise = [&addrs[1 - i], &addrs[i]];
            let serve = ["--leader-lease", "3s", "--heartbeat", "1s"];
            serve_as(replica, name, &url, &serve, &advertise, &addrs[i])
        })
        .collect();
    replicas[0].start();
    wait_until(WAIT, "a to lead", || {
        leader_at(&replicas[0]).as_deref() == Some("a")
    });
    replicas[1].start();

    let mut agents = Vec::new();
    for (enrolling, names) in [(1, AT_A), (0, AT_B)] {
        let replica = &replicas[enrolling];
        let (_, token) = replica.opictl().create_token("workers", 2, &[]);
        for name in names {
            let mut agent = drift_only_agent(dir.path(), name);
            ok(agent.enroll(&replica.endpoint(), &replica.ca_pin(), &token));
            agent.start();
            agents.push(agent);
        }
    }
    wait_until(WAIT, "the sessions split between a and b", || {
        session_nodes(&etcd, "a") == AT_A && session_nodes(&etcd, "b") == AT_B
    });
    for replica in &replicas {
        let opictl = replica.opictl();
        wait_until_every(POLL_OPICTL, WAIT, "every node online", || {
            all_online(&opictl, &ALL)
        });
    }

    // Set at the follower; stepped by the leader; r3 and r4 get it through b.
    let options = ["--max-unavailable", "2", "--settle", "1s"];
    let first = set_profile(&replicas[1], dir.path(), "g1.yaml", &worker(), &options);
    let started = Instant::now();
    wait_state(&replicas[0].opictl(), first, "completed");
    eprintln!(
        "generation {first} set at the follower reached all 4 nodes in {:?}",
        started.elapsed()
    );
    for replica in &replicas {
        let nodes = replica.opictl().nodes();
        for name in ALL {
            let config = &node(&nodes, name).expect("node listed")["config"];
            assert_eq!(config["applied_generation"], first, "{name}: {config}");
            assert_eq!(config["state"], "in-sync", "{name}: {config}");
        }
    }
    for agent in &agents {
        let kubelet = std::fs::read_to_string(agent.root.join(KUBELET_FILE)).expect("kubelet");
        assert!(
            kubelet.contains("maxPods: 110"),
            "{}: {kubelet}",
            agent.name
        );
    }

    // The leader read back the generation the follower stored: the same document again is no
    // new generation there.
    let path = dir.path().join("g1-again.yaml");
    std::fs::write(&path, worker()).expect("profile file");
    let args = [
        "profile",
        "set",
        "workers",
        "-f",
        path.to_str().expect("path"),
    ];
    let again = replicas[0].opictl().json(&args);
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["generation"], first, "{again}");

    // The leader dies after the canary wave of the next generation; b leads and finishes it.
    let options = ["--max-unavailable", "1", "--settle", "2s"];
    let second = set_profile(
        &replicas[0],
        dir.path(),
        "g2.yaml",
        &worker_with_max_pods(90),
        &options,
    );
    wait_until_every(POLL_OPICTL, ROLLOUT_WAIT, "the canary wave done", || {
        let status = rollout_status(&replicas[0].opictl());
        status["to_generation"] == second && waves_done(&status) >= 1
    });
    let before = rollout_status(&replicas[0].opictl());
    replicas[0].kill();
    let killed = Instant::now();
    let done = match try_wait_state(&replicas[1].opictl(), second, "completed") {
        Some(done) => done,
        None => {
            for agent in &agents {
                eprintln!("--- {}\n{}", agent.name, tail(&agent.log_text(), 40));
            }
            eprintln!("--- b\n{}", tail(&replicas[1].log_text(), 200));
            panic!("the rollout to {second} did not complete at b after the leader died");
        }
    };
    eprintln!(
        "generation {second} completed at b {:?} after the leader died mid-rollout \
         ({} of 4 nodes done before)",
        killed.elapsed(),
        waves_done(&before)
    );
    assert_eq!(leader_at(&replicas[1]).as_deref(), Some("b"));
    let nodes = replicas[1].opictl().nodes();
    for name in ALL {
        let config = &node(&nodes, name).expect("node listed")["config"];
        assert_eq!(config["applied_generation"], second, "{name}: {config}");
    }
    for agent in &agents {
        let kubelet = std::fs::read_to_string(agent.root.join(KUBELET_FILE)).expect("kubelet");
        assert!(kubelet.contains("maxPods: 90"), "{}: {kubelet}", agent.name);
    }
    assert_eq!(waves_done(&done), 4, "{done}");

    // Each node came in sync once per generation, whichever replica held it.
    let history = events(&etcd);
    let revisions: Vec<u64> = history.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "event revisions are gapless and unique: {revisions:?}"
    );
    for generation in [first, second] {
        for name in ALL {
            let applied = history
                .iter()
                .filter(|e| e.node == name && e.kind == "config" && e.to == "in-sync")
                .filter(|e| e.subject == format!("generation {generation}"))
                .count();
            assert_eq!(applied, 1, "{name} in sync with {generation}: {history:?}");
        }
    }
    for agent in &mut agents {
        agent.stop();
    }
}

/// An agent whose only check is drift, so that its health depends on nothing else.
fn drift_only_agent(dir: &Path, name: &str) -> Agent {
    let agent = Agent::new(dir, name);
    let settings = agent.root.join("etc/opi-agent");
    std::fs::create_dir_all(&settings).expect("settings dir");
    std::fs::write(
        settings.join("health.toml"),
        "version = 1\nchecks = [\"ConfigDrift\"]\n",
    )
    .expect("health.toml");
    agent
}

/// `opictl profile set workers` at `replica`; the new generation.
fn set_profile(replica: &Manager, dir: &Path, file: &str, text: &str, options: &[&str]) -> u64 {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("profile file");
    let mut args = vec![
        "profile",
        "set",
        "workers",
        "-f",
        path.to_str().expect("path"),
    ];
    args.extend(options);
    let set = replica.opictl().json(&args);
    assert_eq!(set["changed"], true, "{set}");
    set["generation"].as_u64().expect("generation")
}

/// `opictl rollout status workers -o json`; `Null` while the replica asked has no rollout yet
/// (it reads other replicas' rollouts back every second).
fn rollout_status(opictl: &Opictl) -> Value {
    let output = opictl.run(&["rollout", "status", "workers", "-o", "json"]);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("no rollout for pool workers"), "{stderr}");
        return Value::Null;
    }
    serde_json::from_slice(&output.stdout).expect("rollout status JSON")
}

/// Waits until the pool's rollout to `generation` is in `state`; its status then.
fn wait_state(opictl: &Opictl, generation: u64, state: &str) -> Value {
    let what = format!("the rollout to {generation} {state}");
    let mut last = Value::Null;
    wait_until_every(POLL_OPICTL, ROLLOUT_WAIT, &what, || {
        let status = rollout_status(opictl);
        if status != last {
            eprintln!("rollout status: {status}");
            last = status.clone();
        }
        status["to_generation"] == generation && status["state"] == state
    });
    rollout_status(opictl)
}

/// Like [`wait_state`], but `None` on a timeout.
fn try_wait_state(opictl: &Opictl, generation: u64, state: &str) -> Option<Value> {
    let deadline = Instant::now() + ROLLOUT_WAIT;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let status = rollout_status(opictl);
        if status != last {
            eprintln!("rollout status: {status}");
            last = status.clone();
        }
        if status["to_generation"] == generation && status["state"] == state {
            return Some(status);
        }
        std::thread::sleep(POLL_OPICTL);
    }
    None
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Nodes done over all waves of a rollout status.
fn waves_done(status: &Value) -> u64 {
    status["waves"]
        .as_array()
        .map(|waves| waves.iter().filter_map(|w| w["done"].as_u64()).sum())
        .unwrap_or(0)
}
